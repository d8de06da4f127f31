#!/bin/sh
# make up: deploy Forge on this swarm (deploy/stack.yml), creating what is
# missing, and wait until it works. Safe to run again: what exists is kept,
# and an unchanged deployment is left running as it is.
#
#   state folder (FORGE_STATE_DIR, default .forge/):
#     certs/            the CA (ca.pem, ca-key.pem) and the coordinator's and
#                       agents' certificates (bin/forge certs)
#     webhook-secret    random; give it to the GitHub App as its webhook secret
#     github-app-key.pem  the App's private key, once given (FORGE_GITHUB_KEY_FILE)
#     forge.env         settings kept between runs
#   Docker secrets      <stack>_<what>_<hash of the content>, labelled forge.stack
#   the stack           FORGE_STACK (default forge): services coordinator and
#                       agent, network forge (overlay, attachable), volume data
#
# Settings (environment or make variables; kept in forge.env):
#   FORGE_HTTP_PORT      published port of the coordinator's HTTP (8080)
#   FORGE_PUBLIC_URL     base URL GitHub and commit statuses use
#   FORGE_GITHUB_APP_ID  the App's id; with FORGE_GITHUB_KEY_FILE=path once
#   FORGE_GITHUB_API     GitHub Enterprise: https://HOST/api/v3/
#   FORGE_REGISTRY       push the images there, for the swarm's other nodes
#   FORGE_USER, FORGE_AGENT_USER   uid:gid the services run as (default
#                        65532:<gid of /var/run/docker.sock on this node>)
# FORGE_UP_TIMEOUT (seconds, 180) bounds the wait.
set -eu
cd "$(dirname "$0")/.."
. deploy/lib.sh

timeout=${FORGE_UP_TIMEOUT:-180}
sock=/var/run/docker.sock

need_docker
swarm=$(docker info --format '{{.Swarm.LocalNodeState}}')
if [ "$swarm" != active ]; then
  die "Docker is not in swarm mode ($swarm), and make up does not turn it on for you.
  On the machine that is to be the manager:
      docker swarm init --advertise-addr <this machine's address on the cluster network>
  (a single machine: docker swarm init --advertise-addr 127.0.0.1); on every other node, the
  command that 'docker swarm join-token worker' prints. Then run make up again."
fi
[ "$(docker info --format '{{.Swarm.ControlAvailable}}')" = true ] ||
  die "this node is a swarm worker; run make up on a manager (docker node ls lists them)"
node=$(docker info --format '{{.Swarm.NodeID}}')
[ -x bin/forge ] || die "bin/forge is missing: run make build (make up does)"
[ -S "$sock" ] || die "$sock is not here: the coordinator uses the manager's local Docker socket"

# --- settings ---------------------------------------------------------------
mkdir -p "$state"
chmod 700 "$state"
port=$(setting FORGE_HTTP_PORT)
port=${port:-8080}
case $port in '' | *[!0-9]*) die "FORGE_HTTP_PORT=$port: want a port number" ;; esac
public_url=$(setting FORGE_PUBLIC_URL)
github_api=$(setting FORGE_GITHUB_API)
app_id=$(setting FORGE_GITHUB_APP_ID)
case $app_id in *[!0-9]*) die "FORGE_GITHUB_APP_ID=$app_id: want the App's number (App settings, About)" ;; esac
registry=$(setting FORGE_REGISTRY)
user=$(setting FORGE_USER)
agent_user=$(setting FORGE_AGENT_USER)

if [ -n "${FORGE_GITHUB_KEY_FILE:-}" ]; then
  [ -r "$FORGE_GITHUB_KEY_FILE" ] || die "FORGE_GITHUB_KEY_FILE=$FORGE_GITHUB_KEY_FILE: cannot read it"
  grep -q 'PRIVATE KEY-----' "$FORGE_GITHUB_KEY_FILE" ||
    die "FORGE_GITHUB_KEY_FILE=$FORGE_GITHUB_KEY_FILE is not a PEM private key (GitHub App settings, Private keys)"
  if ! cmp -s "$FORGE_GITHUB_KEY_FILE" "$state/github-app-key.pem"; then
    (umask 077 && cp "$FORGE_GITHUB_KEY_FILE" "$state/.github-app-key.tmp")
    mv "$state/.github-app-key.tmp" "$state/github-app-key.pem"
    say "copied the GitHub App key into $state/github-app-key.pem"
  fi
fi
if [ -n "$app_id" ] && [ ! -f "$state/github-app-key.pem" ]; then
  die "FORGE_GITHUB_APP_ID is set but there is no App private key: add FORGE_GITHUB_KEY_FILE=path/to/app.private-key.pem"
fi
if [ -z "$app_id" ] && [ -f "$state/github-app-key.pem" ]; then
  die "there is a GitHub App key ($state/github-app-key.pem) but no App id: add FORGE_GITHUB_APP_ID=<id>"
fi

# The services run as an unprivileged uid with the group that may use the
# docker socket, and nothing more (no capabilities). Swarm sets one user
# per service, so every node's socket must have that group id; nodes that
# differ need FORGE_AGENT_USER (or FORGE_AGENT_USER=0:0).
gid=$(stat -c %g "$sock")
[ -n "$user" ] || user=65532:$gid
[ -n "$agent_user" ] || agent_user=$user
case $user in *:*) ;; *) die "FORGE_USER=$user: want uid:gid" ;; esac
case $agent_user in *:*) ;; *) die "FORGE_AGENT_USER=$agent_user: want uid:gid" ;; esac
[ "${user%%:*}" = "${agent_user%%:*}" ] ||
  die "FORGE_USER and FORGE_AGENT_USER must have the same uid (the secrets are given to it)"

cat >"$state/forge.env" <<EOF
# Settings of make up (deploy/up.sh), kept between runs. Edit them here, or
# pass FORGE_...=value to make up, which saves them. Empty: the default.
FORGE_HTTP_PORT=$port
FORGE_PUBLIC_URL=$public_url
FORGE_GITHUB_APP_ID=$app_id
FORGE_GITHUB_API=$github_api
FORGE_REGISTRY=$registry
FORGE_USER=$(setting FORGE_USER)
FORGE_AGENT_USER=$(setting FORGE_AGENT_USER)
EOF

# --- certificates and the webhook secret ---------------------------------------
# A missing certificate is issued anew, its key too (--force replaces a
# key left without its certificate); a new CA re-issues both.
certs=$state/certs
newca=
if [ ! -f "$certs/ca.pem" ]; then
  bin/forge certs init --dir "$certs" >/dev/null
  newca=1
  say "made a new CA in $certs (ca-key.pem is only needed to issue certificates: keep it safe)"
fi
if [ -n "$newca" ] || [ ! -f "$certs/coordinator.pem" ]; then
  bin/forge certs issue --force --dir "$certs" --role coordinator --name coordinator --host coordinator >/dev/null
  say "issued $certs/coordinator.pem (agents dial it as coordinator:7443 on the stack's network)"
fi
if [ -n "$newca" ] || [ ! -f "$certs/agent.pem" ]; then
  bin/forge certs issue --force --dir "$certs" --role agent --name agent >/dev/null
  say "issued $certs/agent.pem (shared by the agents of every node)"
fi
if [ ! -s "$state/webhook-secret" ]; then
  (umask 077 && od -An -N32 -tx1 /dev/urandom | tr -d ' \n' >"$state/.webhook-secret.tmp")
  mv "$state/.webhook-secret.tmp" "$state/webhook-secret"
  say "made a random webhook secret: $state/webhook-secret"
fi

# secret WHAT FILE: the name of the Docker secret holding FILE, created when
# missing. Secrets cannot change, so the name carries a hash of the content.
secret() {
  name=${stack}_$1_$(sha256sum "$2" | cut -c1-12)
  if ! docker secret inspect "$name" >/dev/null 2>&1; then
    docker secret create --label forge.stack="$stack" --label forge.secret="$1" "$name" "$2" >/dev/null
    say "created the Docker secret $name" >&2
  fi
  printf '%s' "$name"
}
FORGE_SECRET_CA=$(secret ca "$certs/ca.pem")
FORGE_SECRET_COORDINATOR_CERT=$(secret coordinator_cert "$certs/coordinator.pem")
FORGE_SECRET_COORDINATOR_KEY=$(secret coordinator_key "$certs/coordinator-key.pem")
FORGE_SECRET_AGENT_CERT=$(secret agent_cert "$certs/agent.pem")
FORGE_SECRET_AGENT_KEY=$(secret agent_key "$certs/agent-key.pem")
FORGE_SECRET_WEBHOOK=$(secret webhook_secret "$state/webhook-secret")
secrets="$FORGE_SECRET_CA $FORGE_SECRET_COORDINATOR_CERT $FORGE_SECRET_COORDINATOR_KEY $FORGE_SECRET_AGENT_CERT $FORGE_SECRET_AGENT_KEY $FORGE_SECRET_WEBHOOK"
files="-c deploy/stack.yml"
FORGE_SECRET_GITHUB_KEY=
if [ -n "$app_id" ]; then
  FORGE_SECRET_GITHUB_KEY=$(secret github_app_key "$state/github-app-key.pem")
  secrets="$secrets $FORGE_SECRET_GITHUB_KEY"
  files="$files -c deploy/stack.github.yml"
fi

# --- images ----------------------------------------------------------------------
version=${VERSION:-$(git describe --always --dirty 2>/dev/null || echo dev)}
prefix=
resolve=never # the images are on this machine only
if [ -n "$registry" ]; then
  prefix=${registry%/}/
  resolve=always # pin the pushed images' digests, which every node pulls
fi
image_id() {
  docker image inspect --format '{{.Id}}' "$1" 2>/dev/null ||
    die "image $1 is missing: run make images (make up does)"
}
FORGE_COORDINATOR_IMAGE_ID=$(image_id "${prefix}forge/coordinator:$version")
FORGE_AGENT_IMAGE_ID=$(image_id "${prefix}forge/agent:$version")

# --- deploy ----------------------------------------------------------------------
began=$(date -u +%Y-%m-%dT%H:%M:%SZ)
FORGE_VERSION=$version FORGE_IMAGE_PREFIX=$prefix FORGE_COORDINATOR_NODE=$node
FORGE_HTTP_PORT=$port FORGE_PUBLIC_URL=$public_url FORGE_GITHUB_API=$github_api FORGE_GITHUB_APP_ID=$app_id
FORGE_USER=$user FORGE_AGENT_USER=$agent_user FORGE_UID=${user%%:*}
# What each service is deployed with, hashed into its forge.deployment
# label (see stack.yml).
digest() { printf '%s\n' "$@" | cat - deploy/stack.yml deploy/stack.github.yml | sha256sum | cut -c1-16; }
FORGE_AGENT_DEPLOYMENT=$(digest "$FORGE_AGENT_IMAGE_ID" "$agent_user" "$FORGE_SECRET_CA" \
  "$FORGE_SECRET_AGENT_CERT" "$FORGE_SECRET_AGENT_KEY")
FORGE_COORDINATOR_DEPLOYMENT=$(digest "$FORGE_COORDINATOR_IMAGE_ID" "$user" "$node" "$port" "$public_url" \
  "$github_api" "$app_id" $secrets)
export FORGE_VERSION FORGE_IMAGE_PREFIX FORGE_COORDINATOR_NODE FORGE_HTTP_PORT FORGE_PUBLIC_URL \
  FORGE_GITHUB_API FORGE_GITHUB_APP_ID FORGE_USER FORGE_AGENT_USER FORGE_UID \
  FORGE_COORDINATOR_DEPLOYMENT FORGE_AGENT_DEPLOYMENT FORGE_SECRET_CA FORGE_SECRET_COORDINATOR_CERT \
  FORGE_SECRET_COORDINATOR_KEY FORGE_SECRET_AGENT_CERT FORGE_SECRET_AGENT_KEY FORGE_SECRET_WEBHOOK \
  FORGE_SECRET_GITHUB_KEY

detach=
if docker stack deploy --help 2>/dev/null | grep -q -- '--detach'; then
  detach=--detach=true # we wait ourselves, with a deadline
fi
say "deploying stack $stack (${prefix}forge/coordinator and forge/agent:$version, as $user)"
# shellcheck disable=SC2086 # $files and $detach are lists of words
if ! out=$(docker stack deploy $detach --prune --resolve-image "$resolve" $files "$stack" 2>&1); then
  printf '%s\n' "$out" >&2
  die "docker stack deploy failed"
fi
printf '%s\n' "$out" | sed "s/^/$me: /"

if [ -z "$registry" ] && [ "$(docker node ls -q | wc -l)" -gt 1 ]; then
  say "note: the images exist on this machine only. Every other node needs forge/agent:$version:"
  say "      docker save forge/agent:$version | ssh NODE docker load   (or set FORGE_REGISTRY)"
fi

# --- wait --------------------------------------------------------------------------
url=http://127.0.0.1:$port
deadline=$(($(now) + timeout))

# converged SERVICE DEPLOYMENT: every task swarm wants running carries this
# deployment's label (tasks of an earlier one are being replaced) and runs.
converged() {
  tasks=$(docker service ps -q --filter desired-state=running "$1") || return 1
  [ -n "$tasks" ] || return 1
  # shellcheck disable=SC2086 # a list of task ids
  [ -z "$(docker inspect --format '{{.Status.State}} {{index .Spec.ContainerSpec.Labels "forge.deployment"}}' $tasks |
    grep -vx "running $2")" ]
}

# The nodes that must have an agent: ready, and taking tasks.
expected_nodes() {
  docker node ls --format '{{.ID}} {{.Status}} {{.Availability}}' | awk '$2 == "Ready" && $3 == "Active" { print $1 }' | sort
}

diagnose() {
  for s in coordinator agent; do
    warn "tasks of ${stack}_$s:"
    docker service ps --no-trunc --format '{{.Node}}: {{.CurrentState}} {{.Error}}' "${stack}_$s" 2>&1 | head -n 8 | sed 's/^/  /' >&2
    warn "its log since make up began:"
    docker service logs --no-task-ids --since "$began" --tail 10 "${stack}_$s" 2>&1 | sed 's/^/  /' >&2
  done
  if [ -n "${missing:-}" ]; then
    for n in $missing; do
      warn "no agent connected from node $n ($(docker node inspect --format '{{.Description.Hostname}}' "$n"))"
    done
  fi
  if docker service logs --since "$began" "${stack}_agent" 2>&1 | grep -q 'docker.sock.*permission denied'; then
    warn "an agent may not use its node's docker socket: that node's socket has another group;"
    warn "set FORGE_AGENT_USER=65532:<its gid> (stat -c %g /var/run/docker.sock there) or FORGE_AGENT_USER=0:0"
  fi
}

say "waiting (at most ${timeout}s) for the coordinator at $url and an agent on every node"
missing=
while :; do
  what="the services to converge"
  if converged "${stack}_coordinator" "$FORGE_COORDINATOR_DEPLOYMENT" &&
    converged "${stack}_agent" "$FORGE_AGENT_DEPLOYMENT"; then
    what="the coordinator to answer $url/healthz"
    if [ "$(http_get "$url/healthz" 2>/dev/null)" = ok ]; then
      agents=$(http_get "$url/api/agents" 2>/dev/null | grep -o '"node_id": *"[^"]*"' | sed 's/.*"\([^"]*\)"$/\1/' | sort -u || true)
      missing=
      for n in $(expected_nodes); do
        printf '%s\n' "$agents" | grep -qx "$n" || missing="$missing $n"
      done
      [ -z "$missing" ] && break
      what="an agent on every node (missing:$missing)"
    fi
  fi
  if [ "$(now)" -ge "$deadline" ]; then
    diagnose
    die "gave up after ${timeout}s waiting for $what"
  fi
  sleep 1
done

# Secrets of this stack that the deployment no longer uses (replaced
# certificates, an old webhook secret): removed now that the services run
# with the new ones. One still in use is left for the next run.
for s in $(docker secret ls --filter label=forge.stack="$stack" --format '{{.Name}}'); do
  case " $secrets " in *" $s "*) continue ;; esac
  docker secret rm "$s" >/dev/null 2>&1 && say "removed the unused secret $s"
done

addr=$(docker info --format '{{.Swarm.NodeAddr}}')
base=${public_url:-http://$addr:$port}
base=${base%/}
nodes=$(expected_nodes | wc -l | tr -d ' ')
say "Forge is up: the coordinator and $nodes agent(s), one on every node"
say "  UI and API      http://$addr:$port/   (GET /api/agents, /api/builds)"
say "  webhook URL     $base/webhook"
say "  webhook secret  $state/webhook-secret"
say "  certificates    $certs   settings $state/forge.env"
if [ -z "$app_id" ]; then
  say "next: create a GitHub App with that webhook URL and secret (permissions: contents read,"
  say "      commit statuses write, pull requests read; events: pull request, push), install it, then"
  say "      make up FORGE_GITHUB_APP_ID=<App id> FORGE_GITHUB_KEY_FILE=<the App's private key .pem>"
  say "      Until then the coordinator answers webhooks 503."
else
  say "GitHub App $app_id configured; its webhook must be $base/webhook with the secret above."
fi
[ -n "$public_url" ] || say "set FORGE_PUBLIC_URL (e.g. https://forge.example.com) for links in commit statuses"
say "stop: make down (make down PURGE=1 also deletes the secrets, the data volume and $state)"
