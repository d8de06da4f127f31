# Forge: continuous builds on Docker Swarm. See README.md.
GO       ?= go
BIN      ?= bin
VERSION  ?= $(shell git describe --always --dirty 2>/dev/null || echo dev)
LDFLAGS  := -s -w -X github.com/forge-ci/forge/internal/version.Version=$(VERSION)
GOBUILD  := CGO_ENABLED=0 $(GO) build -trimpath -ldflags '$(LDFLAGS)'
# Tests that use the Docker engine build images and start swarm tasks; the
# whole suite stays well inside CI's limit on 2 cores.
TESTFLAGS ?= -race -count=1 -timeout 30m
# A count, not a duration: Go 1.26's fuzz coordinator can fail a run that
# ends on a time limit with a bare "context deadline exceeded" and no
# failing input (golang/go#75804, fixed in Go 1.27).
FUZZTIME  ?= 100000x
# FuzzWebhook runs about 300 inputs a second (an HMAC and a JSON decode
# each), the others tens of thousands: it gets fewer.
FUZZTIME_WEBHOOK ?= 5000x
# FuzzCheckCSR verifies an ECDSA signature per input that parses.
FUZZTIME_CSR ?= 20000x
# FuzzPut writes every archive it keeps to disk (10,000 take about 15 s).
FUZZTIME_PUT ?= 10000x

.PHONY: all build test fuzz lint clean demo test-cluster

all: build

build:
	$(GOBUILD) -o $(BIN)/forge ./cmd/forge
	$(GOBUILD) -o $(BIN)/forgexec ./cmd/forgexec
	@ls -l $(BIN)/forge $(BIN)/forgexec

test: lint
	$(GO) test $(TESTFLAGS) ./...
	$(MAKE) fuzz

# A short run of every fuzz target; longer: make fuzz FUZZTIME=5000000x FUZZTIME_WEBHOOK=200000x.
fuzz:
	$(GO) test -run '^$$' -fuzz '^FuzzSplitWords$$' -fuzztime $(FUZZTIME) ./forgexec/
	$(GO) test -run '^$$' -fuzz '^FuzzReadFrame$$' -fuzztime $(FUZZTIME) ./wire/
	$(GO) test -run '^$$' -fuzz '^FuzzCheckCSR$$' -fuzztime $(FUZZTIME_CSR) ./wire/
	$(GO) test -run '^$$' -fuzz '^FuzzParse$$' -fuzztime $(FUZZTIME) ./coordinator/config/
	$(GO) test -run '^$$' -fuzz '^FuzzServiceName$$' -fuzztime $(FUZZTIME) ./coordinator/plan/
	$(GO) test -run '^$$' -fuzz '^FuzzWebhook$$' -fuzztime $(FUZZTIME_WEBHOOK) ./coordinator/github/
	$(GO) test -run '^$$' -fuzz '^FuzzPut$$' -fuzztime $(FUZZTIME_PUT) ./coordinator/artifacts/
	$(GO) test -run '^$$' -fuzz '^FuzzDecodeSecrets$$' -fuzztime $(FUZZTIME) ./forgexec/
	$(GO) test -run '^$$' -fuzz '^FuzzMasker$$' -fuzztime $(FUZZTIME) ./internal/redact/
	$(GO) test -run '^$$' -fuzz '^FuzzRenderLine$$' -fuzztime $(FUZZTIME) ./coordinator/web/
	$(GO) test -run '^$$' -fuzz '^FuzzCheckTar$$' -fuzztime $(FUZZTIME) ./coordinator/caches/

lint:
	@out=$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null || find . -name '*.go')); \
	  if [ -n "$$out" ]; then echo "gofmt would change:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...
	$(GO) vet -tags cluster ./internal/cluster/ ./cmd/forge/ ./deploy/

# The first command of the README: a build passing end to end on this machine.
demo: build
	./deploy/demo.sh

clean:
	rm -rf $(BIN)

# Forge across a swarm of three engines on this machine, each in a network
# namespace of its own (internal/cluster; README: Testing). Needs root;
# tears the cluster down and leaves the host as it found it. One package
# at a time: each starts a cluster of its own.
test-cluster:
	$(GO) test -tags cluster -p 1 -count=1 -timeout 20m -run '^TestCluster' -v ./internal/cluster/ ./cmd/forge/ ./deploy/

# Production deployment on this swarm (README: Deploying on a swarm):
# images FROM scratch, built here; the stack deploy/stack.yml; secrets and
# certificates made once and kept in .forge/ (FORGE_STATE_DIR).
.PHONY: images up down test-deploy

images: build
	VERSION='$(VERSION)' ./deploy/images.sh

up: images
	VERSION='$(VERSION)' $(BIN)/forge deploy up

# make down PURGE=1 also removes the secrets, the data volume and .forge/.
down: build
	PURGE='$(PURGE)' $(BIN)/forge deploy down

# The real-engine test of make up / a build through the deployed
# coordinator / make down (go test ./... runs it too).
test-deploy:
	$(GO) test -count=1 -timeout 10m -run '^TestDeployMakeUp$$' -v ./deploy/

# Benchmarks that compare Forge with a baseline in the same run
# (docs/benchmarks.md): results in bench-results.json, then a table.
# Needs the engine (swarm mode turned on if needed, left as found).
.PHONY: bench
BENCHFLAGS ?= -timeout 30m
bench: build
	rm -f bench-results.json
	FORGE_BENCH_OUT='$(CURDIR)/bench-results.json' FORGE_BENCH_FORGE='$(CURDIR)/$(BIN)/forge' \
	  $(GO) test -count=1 -run '^$$' -bench . -benchtime=1x $(BENCHFLAGS) ./internal/bench/
	$(GO) run ./cmd/forgebench bench-results.json
