#!/usr/bin/env bash
# Instructions redis-server spends per request on Bourse's shared counters (limit/batch.lua),
# counted by callgrind, so two builds of the script compare exactly on a noisy machine.
#
#   bash bench/redis-icount.sh [SCRIPT]     (SCRIPT: a batch.lua to measure; default the repo's)
#
# 1. Runs the release gateway with `[shared] redis_url` in front of upstream-sim, creates the
#    bench's tenant and virtual key (budget, rpm and tpm, like `bench/run.sh`'s bourse-redis)
#    and drives it with wrk at 64 connections; MONITOR captures the calls, and the largest
#    (the most decisions and settles in one call) is kept.
# 2. Replays that call REPEAT times (default 30) against a fresh redis-server under callgrind,
#    each time after putting the call's settled holds back in the holds ZSET (so every replay
#    settles outstanding holds, as the live call did), and subtracts a run of one call.
#    The ZADD that puts the holds back is counted too, and measured alone the same way
#    ("ZADD only") so it can be taken off.
# Prints instructions per call and per request (a request is one decision and one settle).
# Needs: target/release/{bourse,upstream-sim} (cargo build --release), redis-server,
# redis-cli, wrk, valgrind, python3.
set -euo pipefail
BENCH_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$BENCH_DIR/.." && pwd)"
BIN="${BIN:-$ROOT/target/release}"
SCRIPT="${1:-$ROOT/crates/bourse/src/limit/batch.lua}"
REPEAT="${REPEAT:-30}"
. "$BENCH_DIR/common.sh"
W=$(mktemp -d /tmp/bourse-redis-icount.XXXXXX)
PIDS=()
trap 'kill ${PIDS[@]+"${PIDS[@]}"} 2>/dev/null || true; rm -rf "$W"' EXIT

SIM_PORT=$(free_port)
"$BIN/upstream-sim" --listen "127.0.0.1:$SIM_PORT" --threads 1 >"$W/sim.log" 2>&1 &
PIDS+=($!)
wait_port "$SIM_PORT"
RP=$(free_port)
redis-server --port "$RP" --save '' --appendonly no --dir "$W" >"$W/redis.log" 2>&1 &
PIDS+=($!)
wait_port "$RP"
PORT=$(free_port)
bourse_config "$SIM_PORT" $'[server]\nadmin_keys = ["env:ADMIN_KEY"]\n[shared]\nredis_url = "redis://127.0.0.1:'"$RP"$'/"\n' \
  "$W/ledger.db" >"$W/bourse.toml"
ADMIN_KEY=adm "$BIN/bourse" serve --config "$W/bourse.toml" --listen "127.0.0.1:$PORT" >"$W/bourse.log" 2>&1 &
PIDS+=($!)
wait_port "$PORT"
admin() { curl -sf -H 'Authorization: Bearer adm' -H 'content-type: application/json' -d "$2" "http://127.0.0.1:$PORT$1"; }
admin /admin/v1/tenants '{"name":"bench","budget_day_usd":"1000000"}' >/dev/null
KEY=$(admin /admin/v1/keys '{"tenant":"bench","rpm":100000000,"tpm":100000000000,"budget_day_usd":"1000000"}' |
  python3 -c 'import json, sys; print(json.load(sys.stdin)["key"])')
cat >"$W/wrk.lua" <<LUA
wrk.method = "POST"
wrk.path = "/v1/chat/completions"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer $KEY"
wrk.body = '$(chat_body sim/sim-small false)'
LUA
wrk -t2 -c64 -d2s -s "$W/wrk.lua" "http://127.0.0.1:$PORT" >/dev/null
(timeout 1 redis-cli -p "$RP" monitor >"$W/monitor.txt" || true) &
MONITOR=$!
wrk -t2 -c64 -d2s -s "$W/wrk.lua" "http://127.0.0.1:$PORT" >/dev/null
wait "$MONITOR"

# The largest call, and a ZADD putting its settled holds back (ARGV[3] is their count).
python3 - "$W" "$REPEAT" <<'PY'
import re, sys
w, repeat = sys.argv[1], int(sys.argv[2])
calls = [l[l.index('"EVALSHA"'):].strip() for l in open(f"{w}/monitor.txt", errors="replace") if '"EVALSHA"' in l]
if not calls:
    sys.exit("no EVALSHA captured")
call = max(calls, key=len)
tokens = re.findall(r'"((?:[^"\\]|\\.)*)"', call)
nkeys = int(tokens[2])
holds, args = tokens[3], tokens[3 + nkeys:]
settled = args[3:3 + int(args[2])]
zadd = f'ZADD "{holds}" ' + " ".join(f'9999999999999 "{r}"' for r in settled) if settled else "PING"
open(f"{w}/replay.cmd", "w").write(f"{zadd}\n{call}\n" * (repeat + 1))
open(f"{w}/zadd.cmd", "w").write(f"{zadd}\nPING\n" * (repeat + 1))
open(f"{w}/shape", "w").write(f"{len(settled)} settles in the largest of {len(calls)} calls\n")
PY

# ir CMDS SCRIPT N: instructions redis-server spends on the first N call pairs of CMDS.
ir() {
  local port out
  port=$(free_port)
  out="$W/cg.$RANDOM"
  valgrind --tool=callgrind --callgrind-out-file="$out" redis-server --port "$port" --save '' --appendonly no \
    --dir "$W" >/dev/null 2>&1 &
  local pid=$!
  for _ in $(seq 100); do redis-cli -p "$port" ping >/dev/null 2>&1 && break; sleep 0.2; done
  local sha
  sha=$(redis-cli -p "$port" script load "$(cat "$2")")
  sed "s/\"EVALSHA\" \"[0-9a-f]*\"/EVALSHA $sha/" "$1" | head -n $((2 * $3)) | redis-cli -p "$port" >/dev/null
  redis-cli -p "$port" shutdown nosave >/dev/null 2>&1 || true
  wait "$pid" || true
  sed -n 's/^\(summary\|totals\): *\([0-9]*\).*/\2/p' "$out" | head -1
}
per_call() { echo $(($(ir "$1" "$2" $((REPEAT + 1))) - $(ir "$1" "$2" 1))) ; }
echo 'return 1' >"$W/empty.lua"
cat "$W/shape"
full=$(per_call "$W/replay.cmd" "$SCRIPT")
zadd=$(per_call "$W/zadd.cmd" "$W/empty.lua")
decisions=$(python3 -c "import sys; print(open('$W/shape').read().split()[0])")
python3 -c "
full, zadd, n = $full / $REPEAT, $zadd / $REPEAT, $decisions
print(f'instructions per call: {full - zadd:,.0f} (with the ZADD {full:,.0f}, ZADD only {zadd:,.0f})')
print(f'per request (one decision and one settle; {n} each): {(full - zadd) / max(n, 1):,.0f}')
"
