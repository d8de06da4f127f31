#!/bin/sh
# make down: remove the Forge stack and wait (with a deadline) until its
# services, containers and network are gone, so that make up can follow at
# once. The Docker secrets, the coordinator's data volume and the state
# folder stay; PURGE=1 removes them too (after cancelling the builds still
# queued or running, whose record would otherwise be lost).
# FORGE_DOWN_TIMEOUT (seconds, 120) bounds the wait.
set -eu
cd "$(dirname "$0")/.."
. deploy/lib.sh

timeout=${FORGE_DOWN_TIMEOUT:-120}
purge=${PURGE:-}
deadline=$(($(now) + timeout))
ns=label=com.docker.stack.namespace=$stack

need_docker
swarm=$(docker info --format '{{.Swarm.LocalNodeState}}')
if [ "$swarm" = active ]; then
  [ "$(docker info --format '{{.Swarm.ControlAvailable}}')" = true ] ||
    die "this node is a swarm worker; run make down on a manager"
fi

leftover() {
  if [ "$swarm" = active ]; then
    docker service ls -q --filter "$ns"
  fi
  docker ps -aq --filter "$ns"
  docker network ls -q --filter "$ns"
}

port=$(setting FORGE_HTTP_PORT)
url=http://127.0.0.1:${port:-8080}

# build_ids STATE: the ids of the coordinator's builds in that state.
build_ids() {
  http_get "$url/api/builds?state=$1&limit=500" 2>/dev/null | grep -o '"id": *"[^"]*"' | sed 's/.*"\([^"]*\)"$/\1/' || true
}

if [ "$swarm" = active ] && docker service inspect "${stack}_coordinator" >/dev/null 2>&1; then
  running=$(build_ids queued; build_ids running)
  if [ -n "$running" ] && [ "$purge" = 1 ]; then
    say "cancelling $(printf '%s\n' "$running" | wc -l | tr -d ' ') build(s) still queued or running"
    for id in $running; do http_post "$url/api/builds/$id/cancel" >/dev/null 2>&1 || true; done
    while [ -n "$(build_ids queued; build_ids running)" ] && [ "$(now)" -lt "$deadline" ]; do sleep 1; done
    sleep 2 # the coordinator posts their error statuses to GitHub, queued at the cancel
  elif [ -n "$running" ]; then
    say "$(printf '%s\n' "$running" | wc -l | tr -d ' ') build(s) still queued or running: their services stay, and the next make up finishes them"
  fi
fi

if [ -n "$(leftover)" ]; then
  if [ "$swarm" = active ] && [ -n "$(docker service ls -q --filter "$ns")$(docker network ls -q --filter "$ns")" ]; then
    # It cannot remove the network while tasks are still on it; the loop
    # below does, once they are gone.
    docker stack rm "$stack" 2>&1 | grep -v 'Failed to remove network\|failed to remove some resources' |
      sed "s/^/$me: /"
  fi
  say "waiting (at most ${timeout}s) for the stack's containers and network to be gone"
  while [ -n "$(leftover)" ]; do
    # docker stack rm returns at once; the network goes when the last task
    # has left it, and may need asking again.
    if [ -z "$(docker ps -aq --filter "$ns")" ]; then
      for n in $(docker network ls -q --filter "$ns"); do docker network rm "$n" >/dev/null 2>&1 || true; done
    fi
    if [ "$(now)" -ge "$deadline" ]; then
      for n in $(docker network ls -q --filter "$ns"); do
        warn "network $(docker network inspect --format '{{.Name}}: attached: {{range .Containers}}{{.Name}} {{end}}' "$n")"
      done
      docker ps -a --filter "$ns" --format '{{.Names}} {{.Status}}' | sed "s/^/$me: left: /" >&2
      die "gave up after ${timeout}s: the stack $stack is not gone (docker stack ps $stack)"
    fi
    sleep 1
  done
  say "stack $stack removed"
else
  say "no stack $stack here"
fi

if [ "$purge" = 1 ]; then
  for s in $(docker secret ls --filter label=forge.stack="$stack" --format '{{.Name}}' 2>/dev/null); do
    docker secret rm "$s" >/dev/null && say "removed the secret $s"
  done
  for v in $(docker volume ls -q --filter "$ns"); do
    docker volume rm "$v" >/dev/null && say "removed the volume $v (the coordinator's database and logs)"
  done
  if [ -d "$state" ]; then
    rm -rf "$state"
    say "removed $state (CA, certificates, webhook secret, settings)"
  fi
else
  say "kept: the Docker secrets, the data volume ${stack}_data and $state (make down PURGE=1 removes them)"
fi
