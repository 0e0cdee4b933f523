#!/usr/bin/env bash
# Context switches per request, per thread: how often the kernel switches each of a proxy's
# threads out under wrk load at 64 connections, voluntarily (it waited) or involuntarily (it
# was preempted), with its CPU per request — from /proc/PID/task/*/status and stat before and
# after a measured wrk run. On a 2-core machine shared by wrk, upstream-sim and the proxy, a
# proxy that wants more than its share of the cores is preempted at the others' wake-ups; this
# shows how much (see bench/README.md).
#
#   bash bench/switches.sh                 # bareproxy, then bourse (ledger on)
#   SWITCHES_EXTRA=$'[storage]\nledger = false' bash bench/switches.sh
#   SWITCHES_SECONDS=10 bash bench/switches.sh
#
# Needs wrk and release binaries in target/release (bareproxy as bench/run.sh builds it).
set -euo pipefail

BENCH_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
BIN="$(cd "$BENCH_DIR/.." && pwd)/target/release"
SECONDS_RUN="${SWITCHES_SECONDS:-5}"
EXTRA="${SWITCHES_EXTRA:-}"

command -v wrk >/dev/null || { echo "switches: wrk is not installed (apt-get install wrk)" >&2; exit 1; }
WORK="$(mktemp -d "${TMPDIR:-/tmp}/bourse-switches.XXXXXX")"
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  rm -rf "$WORK"
}
trap cleanup EXIT

# shellcheck source=bench/common.sh
. "$BENCH_DIR/common.sh"

cat >"$WORK/req.lua" <<LUA
wrk.method = "POST"
wrk.path = "/v1/chat/completions"
wrk.headers["Content-Type"] = "application/json"
wrk.body = '$(chat_body sim/sim-small false)'
LUA

SIM_PORT=$(free_port)
"$BIN/upstream-sim" --listen "127.0.0.1:$SIM_PORT" --threads 1 >"$WORK/sim.log" 2>&1 &
PIDS+=($!)
wait_port "$SIM_PORT"

# snapshot PID: "tid name voluntary involuntary cpu_ticks" per thread.
snapshot() {
  local t
  for t in /proc/"$1"/task/*; do
    printf '%s %s %s %s\n' "$(basename "$t")" "$(tr ' ' _ <"$t/comm")" \
      "$(awk '/^voluntary_ctxt/ {v = $2} /^nonvoluntary_ctxt/ {n = $2} END {print v, n}' "$t/status")" \
      "$(sed 's/.*) //' "$t/stat" | awk '{print $12 + $13}')"
  done | sort
}

# measure NAME CMD...: per-thread switches and CPU per request of CMD (listening on $PORT).
measure() {
  local name=$1; shift
  "$@" >"$WORK/$name.log" 2>&1 &
  local pid=$!
  PIDS+=("$pid")
  wait_port "$PORT"
  wrk -t2 -c64 -d1s -s "$WORK/req.lua" "http://127.0.0.1:$PORT" >/dev/null
  snapshot "$pid" >"$WORK/before"
  wrk -t2 -c64 -d"${SECONDS_RUN}s" -s "$WORK/req.lua" "http://127.0.0.1:$PORT" >"$WORK/wrk.out"
  snapshot "$pid" >"$WORK/after"
  kill "$pid"
  local n
  n=$(grep -oE '[0-9]+ requests in' "$WORK/wrk.out" | awk '{print $1}')
  printf '%s: %s req/s\n' "$name" "$(awk '/Requests\/sec/ {print $2}' "$WORK/wrk.out")"
  join "$WORK/before" "$WORK/after" | awk -v n="$n" -v tck="$(getconf CLK_TCK)" '{
    v = $7 - $3; i = $8 - $4; c = $9 - $5
    if (v + i + c > 0)
      printf "  thread %-8s %-16s voluntary %.3f  involuntary %.3f per request  CPU %.4f ms/request\n", $1, $2, v / n, i / n, c * 1000 / tck / n
  }'
}

PORT=$(free_port)
measure bareproxy "$BIN/bareproxy" "127.0.0.1:$PORT" "127.0.0.1:$SIM_PORT"
PORT=$(free_port)
bourse_config "$SIM_PORT" "$EXTRA" "$WORK/ledger.db" >"$WORK/bourse.toml"
measure bourse "$BIN/bourse" serve --config "$WORK/bourse.toml" --listen "127.0.0.1:$PORT"
