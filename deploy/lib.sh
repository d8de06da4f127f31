# Helpers shared by deploy/images.sh, up.sh and down.sh (sourced, POSIX sh).
# Nothing here talks to Docker over TCP: every docker command uses the
# local socket (or whatever DOCKER_HOST/context the operator chose).

me="make $(basename "$0" .sh)"

say() { printf '%s: %s\n' "$me" "$*"; }
warn() { printf '%s: %s\n' "$me" "$*" >&2; }
die() {
  printf '%s: %s\n' "$me" "$*" >&2
  exit 1
}

need_docker() {
  command -v docker >/dev/null 2>&1 || die "the docker command is not installed"
  docker info >/dev/null 2>&1 || die "cannot reach the Docker engine (is it running, and may you use it?)"
}

# Where `make up` keeps what it made (CA, certificates, webhook secret,
# settings), and the stack's name. The test uses other values, so that a
# real deployment on the same machine is never touched.
stack=${FORGE_STACK:-forge}
state=${FORGE_STATE_DIR:-.forge}

# http_get URL: the body on stdout; fails on a connection error or an
# HTTP error status.
http_get() {
  if command -v curl >/dev/null 2>&1; then
    curl -fsS --max-time 5 "$1"
  else
    wget -q -T 5 -O - "$1"
  fi
}

# http_post URL: POST with an empty body, the answer on stdout.
http_post() {
  if command -v curl >/dev/null 2>&1; then
    curl -fsS --max-time 5 -X POST "$1"
  else
    wget -q -T 5 -O - --post-data= "$1"
  fi
}

# setting KEY: the value of FORGE_KEY from the environment, else from the
# state folder's forge.env, else empty.
setting() {
  eval "v=\${$1-}"
  if [ -z "$v" ] && [ -f "$state/forge.env" ]; then
    v=$(sed -n "s/^$1=//p" "$state/forge.env" | tail -n 1)
  fi
  printf '%s' "$v"
}

now() { date +%s; }
