#!/usr/bin/env bash
# Starts compose.yaml (PostgreSQL, hafe db install, three front-ends), sends
# one batch through a front-end with curl and checks that its stream ends
# with a done line in which every transaction committed, then removes the
# cluster and its volume. Every step is bounded; any failure exits non-zero.
# The images must exist (make images). CI runs this after make test.
#
# Environment: COMPOSE_PROJECT_NAME (default hafe-smoke), HAFE_SMOKE_PORT
# (front-end to send the batch to, default 8082: fe2).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/../.."
export COMPOSE_PROJECT_NAME="${COMPOSE_PROJECT_NAME:-hafe-smoke}"
port="${HAFE_SMOKE_PORT:-8082}"

log() { printf '[compose-smoke] %s\n' "$*" >&2; }

if timeout 20 docker compose version >/dev/null 2>&1; then
	compose=(docker compose)
elif command -v docker-compose >/dev/null; then
	compose=(docker-compose)
else
	log "neither 'docker compose' nor docker-compose is installed (Debian: apt-get install docker-compose)"
	exit 1
fi
log "using ${compose[*]} ($(timeout 20 "${compose[@]}" version --short 2>/dev/null || echo '?'))"

down() {
	timeout 120 "${compose[@]}" -f compose.yaml down -v --remove-orphans >/dev/null 2>&1 || log "compose down failed"
}
fail() {
	log "$*"
	timeout 30 "${compose[@]}" -f compose.yaml ps >&2 || true
	timeout 30 "${compose[@]}" -f compose.yaml logs --no-color --tail 40 >&2 || true
	exit 1
}
trap down EXIT
down # what an earlier, killed run left

t0=$(date +%s)
timeout 300 "${compose[@]}" -f compose.yaml up -d || fail "compose up failed"
for _ in $(seq 60); do
	if curl -fsS -m 2 "http://localhost:$port/readyz" >/dev/null 2>&1; then
		break
	fi
	sleep 1
done
curl -fsS -m 2 "http://localhost:$port/readyz" >/dev/null || fail "front-end on :$port not ready after 60s"
log "cluster ready in $(($(date +%s) - t0))s"

out="$(curl -sS -m 30 -N \
	-H 'Authorization: Bearer demo-secret' \
	-H "Idempotency-Key: smoke-$(date +%s)" \
	-H 'Content-Type: application/json' \
	"http://localhost:$port/v1/batches" -d '{
	  "isolation": "serializable",
	  "transactions": [
	    {"template": "transfer", "args": {"from": 1, "to": 2, "amount": 10.50}},
	    {"template": "balance",  "args": {"id": 1}}
	  ]}')" || fail "curl failed"
printf '%s\n' "$out" >&2
grep -q '^{"done":true,.*"transactions":2,"committed":2,"aborted":0}$' <<<"$out" ||
	fail "no done line with 2 committed transactions in the response"
log "batch done through :$port; removing the cluster"
