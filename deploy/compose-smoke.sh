#!/usr/bin/env bash
# Smoke test of docker-compose.yml on a host where Docker runs: build, bring the stack up, wait
# until the gateway is ready, send one inference, check it is answered with 200, tear everything
# down again (volumes included). Exits non-zero, with the stack's logs, when any step fails.
#
#   deploy/compose-smoke.sh            # uses host port 8000; LETMESH_HTTP_PORT=18000 to change it
#   READY_TIMEOUT_S=900 deploy/compose-smoke.sh
set -euo pipefail
cd "$(dirname "$0")/.."

PROJECT="${COMPOSE_PROJECT:-letmesh-smoke}"
PORT="${LETMESH_HTTP_PORT:-8000}"
READY_TIMEOUT_S="${READY_TIMEOUT_S:-900}"
export LETMESH_HTTP_PORT="$PORT"
compose() { docker compose -p "$PROJECT" -f docker-compose.yml "$@"; }

cleanup() {
  status=$?
  if [ "$status" -ne 0 ]; then
    echo "compose-smoke: FAILED; logs follow" >&2
    compose logs --no-color --tail 80 >&2 || true
  fi
  compose down --volumes --remove-orphans >/dev/null 2>&1 || true
  exit "$status"
}
trap cleanup EXIT

compose build
compose up -d

echo "compose-smoke: waiting up to ${READY_TIMEOUT_S} s for the gateway to be ready (the first start trains the demo models)"
deadline=$(( $(date +%s) + READY_TIMEOUT_S ))
until [ "$(docker inspect --format '{{.State.Health.Status}}' "$(compose ps -q gateway)" 2>/dev/null)" = healthy ]; do
  if [ "$(date +%s)" -ge "$deadline" ]; then
    echo "compose-smoke: the gateway was not ready within ${READY_TIMEOUT_S} s" >&2
    compose ps >&2
    exit 1
  fi
  sleep 5
done
for service in controller agent; do
  health="$(docker inspect --format '{{.State.Health.Status}}' "$(compose ps -q "$service")")"
  [ "$health" = healthy ] || { echo "compose-smoke: $service is $health" >&2; exit 1; }
done

body='{"inputs":[{"name":"x","datatype":"FP32","shape":[1,16],"data":[0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15]}]}'
code="$(curl -sS -o /tmp/letmesh-smoke-reply.json -w '%{http_code}' -H 'Content-Type: application/json' \
        -d "$body" "http://127.0.0.1:${PORT}/v2/models/identity/infer")"
echo "compose-smoke: POST /v2/models/identity/infer -> HTTP $code: $(head -c 300 /tmp/letmesh-smoke-reply.json)"
rm -f /tmp/letmesh-smoke-reply.json
[ "$code" = 200 ] || exit 1
echo "compose-smoke: OK"
