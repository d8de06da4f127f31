#!/bin/sh
# make images: the coordinator and agent images, FROM scratch, built
# locally from bin/forge and bin/forgexec (`make build`: static, CGO off).
#
#   forge/coordinator:$VERSION and :latest   forge, forgexec, the CA bundle
#   forge/agent:$VERSION and :latest         forge
#
# VERSION defaults to `git describe --always --dirty`. With FORGE_REGISTRY
# (e.g. registry.example.com:5000; from the environment or the state
# folder's forge.env, see make up) the images are named and pushed there, for
# the swarm's other nodes, which cannot get them from this machine.
# FORGE_CA_BUNDLE replaces the host's CA bundle.
set -eu
cd "$(dirname "$0")/.."

me="make images"
say() { printf '%s: %s\n' "$me" "$*"; }
die() {
  printf '%s: %s\n' "$me" "$*" >&2
  exit 1
}

version=${VERSION:-$(git describe --always --dirty 2>/dev/null || echo dev)}
# FORGE_REGISTRY from the environment, else from the state folder's
# forge.env, where make up keeps its settings.
registry=${FORGE_REGISTRY:-}
settings=${FORGE_STATE_DIR:-.forge}/forge.env
if [ -z "$registry" ] && [ -f "$settings" ]; then
  registry=$(sed -n 's/^FORGE_REGISTRY=//p' "$settings" | tail -n 1)
fi
prefix=
[ -z "$registry" ] || prefix=${registry%/}/
bundle=${FORGE_CA_BUNDLE:-/etc/ssl/certs/ca-certificates.crt}

command -v docker >/dev/null 2>&1 || die "the docker command is not installed"
docker info >/dev/null 2>&1 || die "cannot reach the Docker engine (is it running, and may you use it?)"
for f in bin/forge bin/forgexec; do
  [ -x "$f" ] || die "$f is missing: run make build (make images does)"
done
[ -r "$bundle" ] || die "no CA bundle at $bundle (Debian: apt-get install ca-certificates; or set FORGE_CA_BUNDLE)"

ctx=$(mktemp -d)
trap 'rm -rf "$ctx"' EXIT
# Directories with their modes and owners, as a tar that ADD unpacks:
# /tmp 1777 (GitHub sources are unpacked there), /data 0700 owned by the
# unprivileged user (a new named volume takes this owner and mode).
mkdir -p "$ctx/skel/tmp" "$ctx/skel/data" "$ctx/coordinator" "$ctx/agent"
chmod 1777 "$ctx/skel/tmp"
chmod 0700 "$ctx/skel/data"
tar -C "$ctx/skel" --numeric-owner --owner=0 --group=0 --mtime=@0 -cf "$ctx/agent/skel.tar" tmp
cp "$ctx/agent/skel.tar" "$ctx/coordinator/skel.tar"
tar -C "$ctx/skel" --numeric-owner --owner=65532 --group=65532 --mtime=@0 -rf "$ctx/coordinator/skel.tar" data
cp bin/forge bin/forgexec "$ctx/coordinator/"
cp "$bundle" "$ctx/coordinator/ca-certificates.crt"
cp bin/forge "$ctx/agent/"
cp deploy/coordinator.Dockerfile "$ctx/coordinator/Dockerfile"
cp deploy/agent.Dockerfile "$ctx/agent/Dockerfile"

for part in coordinator agent; do
  name=${prefix}forge/$part
  # The classic builder needs no buildx plugin; its output is shown only
  # when the build fails.
  if ! out=$(DOCKER_BUILDKIT=0 docker build -q \
      --label org.opencontainers.image.version="$version" \
      --label forge.component="$part" \
      -t "$name:$version" -t "$name:latest" "$ctx/$part" 2>&1); then
    echo "$out" >&2
    die "docker build of $name failed"
  fi
  if [ -n "$registry" ]; then
    for tag in "$version" latest; do
      docker push -q "$name:$tag" >/dev/null || die "docker push $name:$tag failed"
    done
    say "pushed $name:$version and :latest"
  fi
  say "image $name:$version (and :latest), $(docker image inspect -f '{{.Size}}' "$name:$version" | awk '{printf "%.1f MB", $1/1e6}')"
done
