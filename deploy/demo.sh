#!/bin/sh
# make demo: everything a newcomer needs to see a Forge build pass on this
# machine. Puts Docker in swarm mode when it is not (saying so), builds the
# example image locally (FROM scratch + busybox, no registry), and runs
# `forge run examples/hello`.
#
# FORGE_DEMO_RESTORE=1 leaves swarm mode again afterwards when the demo
# turned it on (CI uses it to leave the engine as it found it).
set -eu
cd "$(dirname "$0")/.."

if ! docker info >/dev/null 2>&1; then
  echo "make demo: cannot reach the Docker engine (is it running, and may you use it?)" >&2
  exit 1
fi

inited=
if [ "$(docker info --format '{{.Swarm.LocalNodeState}}')" != active ]; then
  echo "make demo: Docker is not in swarm mode; every Forge build is a swarm service, so turning it on"
  echo "           for this machine only: docker swarm init --advertise-addr 127.0.0.1"
  echo "           (undo with: docker swarm leave --force)"
  docker swarm init --advertise-addr 127.0.0.1 --listen-addr 127.0.0.1:2377 >/dev/null
  inited=1
fi
restore() {
  if [ -n "$inited" ] && [ "${FORGE_DEMO_RESTORE:-}" = 1 ]; then
    docker swarm leave --force >/dev/null && echo "make demo: left swarm mode again"
  fi
}
trap restore EXIT

bb=/bin/busybox
if [ ! -x "$bb" ]; then
  echo "make demo: the example image needs Debian's static busybox: apt-get install busybox-static" >&2
  exit 1
fi
ctx=$(mktemp -d)
trap 'rm -rf "$ctx"; restore' EXIT
cp "$bb" "$ctx/busybox"
cat > "$ctx/Dockerfile" <<'DOCKERFILE'
FROM scratch
COPY busybox /bin/busybox
RUN ["/bin/busybox", "--install", "-s", "/bin"]
ENV PATH=/bin
DOCKERFILE
echo "make demo: building the example image forge-examples/busybox (FROM scratch + busybox)"
# The classic builder needs no buildx plugin; its output is shown only
# when the build fails.
if ! out=$(DOCKER_BUILDKIT=0 docker build -q -t forge-examples/busybox:latest "$ctx" 2>&1); then
  echo "$out" >&2
  exit 1
fi

echo "make demo: bin/forge run examples/hello"
bin/forge run examples/hello
