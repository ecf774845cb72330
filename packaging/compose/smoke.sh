#!/usr/bin/env bash
# Starts compose.yaml (PostgreSQL, hafe db install, three front-ends, the
# agent sidecar), sends one batch through a front-end with curl and checks
# that its stream ends with a done line in which every transaction
# committed; then sends a larger batch with curl through the agent, kills
# the front-end serving it (docker compose kill fe1) and checks that the one
# response still has every line once and its done line. Then removes the
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
log "batch done through :$port"

# Through the sidecar: the agent's first connection goes to fe1 (the first of
# its HAFE_SERVERS); fe1 is killed mid-batch and curl's response goes on.
for _ in $(seq 30); do
	curl -fsS -m 2 "http://localhost:9108/healthz" >/dev/null 2>&1 && break
	sleep 1
done
curl -fsS -m 2 "http://localhost:9108/healthz" >/dev/null || fail "agent not ready after 30s"
n=3000
work="$(mktemp -d)"
trap 'rm -rf "$work"; down' EXIT
{
	printf '{"transactions":['
	for i in $(seq $n); do
		((i > 1)) && printf ','
		printf '{"template":"transfer","args":{"from":%d,"to":%d,"amount":0.01}}' $((i % 100 + 1)) $(((i + 1) % 100 + 1))
	done
	printf ']}'
} >"$work/batch.json"
curl -sS -m 120 -N \
	-H 'Authorization: Bearer demo-secret' \
	-H 'Content-Type: application/json' \
	--data-binary @"$work/batch.json" \
	"http://localhost:8088/v1/batches" >"$work/out" 2>"$work/err" &
curl_pid=$!
for _ in $(seq 600); do
	(($(wc -l <"$work/out") >= 100)) && break
	kill -0 "$curl_pid" 2>/dev/null || break
	sleep 0.05
done
lines=$(wc -l <"$work/out")
((lines >= 100)) || fail "through the agent: $lines lines after 30s: $(cat "$work/err")"
timeout 60 "${compose[@]}" -f compose.yaml kill fe1 >/dev/null 2>&1 || fail "docker compose kill fe1 failed"
log "killed fe1 after $lines lines of the batch through the agent"
wait "$curl_pid" || fail "curl through the agent failed: $(cat "$work/err")"
tail -n 1 "$work/out" >&2
grep -q "^{\"done\":true,.*\"transactions\":$n,\"committed\":$n,\"aborted\":0}\$" "$work/out" ||
	fail "through the agent: no done line with $n committed transactions"
seqs=$(grep -o '^{"seq":[0-9]*' "$work/out" | sort -u | wc -l)
((seqs == n)) || fail "through the agent: $seqs distinct report lines, want $n"
moved="$(timeout 30 "${compose[@]}" -f compose.yaml logs --no-color agent 2>/dev/null | grep -c 'msg=migrated' || true)"
((moved >= 1)) || fail "the agent logged no migration"
log "batch of $n through the agent done, every line once, across the kill of fe1 ($moved migration logged); removing the cluster"
