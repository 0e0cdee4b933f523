#!/usr/bin/env bash
# Instructions per request: a deterministic companion to bench/run.sh for comparing builds on
# a machine whose throughput swings with its neighbours. Runs a proxy under valgrind's
# callgrind in front of upstream-sim, sends warm-up requests, zeroes the counters, sends N
# non-streaming chat completions over 4 keep-alive connections, dumps, and prints user-space
# instructions per request over all of the proxy's threads (kernel time is not counted: use
# bench/run.sh for time). Start-up, warm-up and shutdown are excluded.
#
#   bash bench/icount.sh                      # bourse, ledger on, then bareproxy for scale
#   bash bench/icount.sh path/to/bourse       # another build of bourse
#   ICOUNT_EXTRA=$'[storage]\nledger = false' bash bench/icount.sh
#   ICOUNT_MODEL=auto bash bench/icount.sh    # a routed request (default: sim/sim-small)
#   ICOUNT_TOP=40 bash bench/icount.sh        # also bourse's 40 costliest functions (inclusive)
#   ICOUNT_SAVE=DIR bash bench/icount.sh      # keep the callgrind files (DIR/NAME.cg.*) for
#                                             # callgrind_annotate
#   ICOUNT_KEY=1 bash bench/icount.sh         # every request under a virtual key with a budget
#                                             # and rate limits, counters in process (path
#                                             # `bourse-key`, as bench/run.sh's bourse-limits)
#   ICOUNT_REDIS=1 bash bench/icount.sh       # the same with the counters in a redis-server of
#                                             # its own (path `bourse-redis`; implies ICOUNT_KEY)
#   ICOUNT_CONNS=64 bash bench/icount.sh      # connections (default 4; N is split among them):
#                                             # more fill the Redis counters' batches as load does
#   ICOUNT_EXTRA=$'[cache]\n[routes.cached]\ncache_sampled = true' ICOUNT_MODEL=cached \
#     bash bench/icount.sh                    # every request a response-cache hit (in memory)
#
# With ICOUNT_KEY, bourse gets `[server] admin_keys`, and the tenant and key are created through
# its admin API from BENCH_LIMITS_TENANT and BENCH_LIMITS_KEY (bench/run.sh's defaults, limits
# high enough never to refuse); ICOUNT_EXTRA must then have no [server] or [shared] table.
# ICOUNT_REDIS starts /usr/bin/redis-server (no persistence) and sets `[shared] redis_url`;
# redis-server itself is not counted (bench/redis-icount.sh counts the script's cost there).
#
# Needs valgrind (Debian: apt-get install valgrind) and release binaries in
# $CARGO_TARGET_DIR/release (default target/release; bareproxy as bench/run.sh builds it).
# Under callgrind the proxy runs ~50× slower, so the ledger writes smaller batches, and the
# Redis counters batch fewer decisions per script call, than under real load: their
# per-request shares here are upper bounds.
set -euo pipefail

BENCH_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$BENCH_DIR/.." && pwd)"
BIN="${CARGO_TARGET_DIR:-$ROOT/target}/release"
BOURSE="${1:-$BIN/bourse}"
N="${ICOUNT_N:-2000}"
TOP="${ICOUNT_TOP:-0}"
EXTRA="${ICOUNT_EXTRA:-}"
MODEL="${ICOUNT_MODEL:-sim/sim-small}"
SAVE="${ICOUNT_SAVE:-}"
CONNS="${ICOUNT_CONNS:-4}"
REDIS="${ICOUNT_REDIS:-0}"
KEY="${ICOUNT_KEY:-$REDIS}"
[ "$REDIS" = 0 ] || KEY=1
REDIS_SERVER=/usr/bin/redis-server
[ -n "${BENCH_LIMITS_TENANT:-}" ] || BENCH_LIMITS_TENANT='{"name":"bench","budget_day_usd":"1000000"}'
[ -n "${BENCH_LIMITS_KEY:-}" ] ||
  BENCH_LIMITS_KEY='{"tenant":"bench","rpm":100000000,"budget_day_usd":"1000000","tpm":100000000000}'

command -v valgrind >/dev/null || { echo "icount: valgrind is not installed (apt-get install valgrind)" >&2; exit 1; }
for b in "$BOURSE" "$BIN/upstream-sim"; do
  [ -x "$b" ] || { echo "icount: $b is missing (cargo build --release --workspace)" >&2; exit 1; }
done
if [ "$KEY" != 0 ]; then
  case "$EXTRA" in
    *"[server]"* | *"[shared]"*) echo "icount: ICOUNT_KEY needs an ICOUNT_EXTRA without [server] or [shared]" >&2; exit 1 ;;
  esac
  [ "$REDIS" = 0 ] || [ -x "$REDIS_SERVER" ] ||
    { echo "icount: $REDIS_SERVER is missing (bash scripts/redis installs it)" >&2; exit 1; }
fi

WORK="$(mktemp -d "${TMPDIR:-/tmp}/bourse-icount.XXXXXX")"
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill -9 "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT

# shellcheck source=bench/common.sh
. "$BENCH_DIR/common.sh"
SIM_PORT=$(free_port)
"$BIN/upstream-sim" --listen "127.0.0.1:$SIM_PORT" --threads 1 >"$WORK/sim.log" 2>&1 &
PIDS+=($!)
wait_port "$SIM_PORT"

# drive PORT COUNT: COUNT chat completions (model $MODEL) over $CONNS keep-alive connections, with
# the bearer $AUTH when set; fails on any non-200.
AUTH=""
drive() {
  python3 - "$1" "$2" "$(chat_body "$MODEL" false)" "$AUTH" "$CONNS" <<'PY'
import http.client, sys, threading
port, n, body, auth, conns = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3].encode(), sys.argv[4], int(sys.argv[5])
headers = {"Content-Type": "application/json"}
if auth:
    headers["Authorization"] = "Bearer " + auth
bad = []
def work(k):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    for _ in range(k):
        c.request("POST", "/v1/chat/completions", body, headers)
        r = c.getresponse(); r.read()
        if r.status != 200: bad.append(r.status)
threads = [threading.Thread(target=work, args=(n // conns,)) for _ in range(conns)]
[t.start() for t in threads]; [t.join() for t in threads]
if bad: sys.exit(f"icount: {len(bad)} requests failed, e.g. status {bad[0]}")
PY
}

# admin_post PATH JSON: POST to bourse's admin API (under callgrind: a generous timeout);
# prints the body, fails unless 201.
admin_post() {
  local out
  out=$(curl -sS --max-time 120 -H "authorization: Bearer $BOURSE_ADMIN_KEY" -H 'content-type: application/json' \
    -d "$2" -w '\n%{http_code}' "http://127.0.0.1:$PROXY_PORT$1") || { echo "icount: POST $1 failed" >&2; exit 1; }
  [ "${out##*$'\n'}" = 201 ] || { echo "icount: POST $1 $2 answered: $out" >&2; exit 1; }
  printf '%s' "${out%$'\n'*}"
}

# measure NAME CMD...: instructions per request of CMD (which must listen on $PROXY_PORT); with
# ICOUNT_KEY, creates the tenant and key first and sends every request with it.
measure() {
  local name=$1; shift
  local out="$WORK/$name.cg"
  valgrind --tool=callgrind --callgrind-out-file="$out" -q "$@" >"$WORK/$name.log" 2>&1 &
  local vp=$!
  PIDS+=("$vp")
  # Bourse says when it listens: a port that merely accepts may be another process's that
  # took the free port first (the proxy takes seconds to start under callgrind).
  if [ "$name" != bareproxy ]; then
    for _ in $(seq 1 600); do
      grep -qs "bourse listening on" "$WORK/$name.log" && break
      kill -0 "$vp" 2>/dev/null || { cat "$WORK/$name.log" >&2; echo "icount: $name exited" >&2; exit 1; }
      sleep 0.1
    done
  fi
  wait_port "$PROXY_PORT"
  if [ "$KEY" != 0 ] && [ "$name" != bareproxy ]; then
    admin_post /admin/v1/tenants "$BENCH_LIMITS_TENANT" >/dev/null
    AUTH=$(admin_post /admin/v1/keys "$BENCH_LIMITS_KEY" | python3 -c 'import json, sys; print(json.load(sys.stdin)["key"])')
  else
    AUTH=""
  fi
  drive "$PROXY_PORT" 200
  sleep 0.5
  callgrind_control -z "$vp" >/dev/null 2>&1
  drive "$PROXY_PORT" "$N"
  # Let the ledger writer flush what these requests queued (it flushes every 200 ms).
  sleep 0.5
  callgrind_control -d "$vp" >/dev/null 2>&1
  sleep 0.5
  kill -9 "$vp" 2>/dev/null || true
  wait "$vp" 2>/dev/null || true
  local total
  total=$(grep -h "^totals:" "$out".* | awk '{s += $2} END {print s}')
  printf '%-12s %9d instructions/request (%d requests)\n' "$name" $((total / N)) "$N"
  if [ -n "$SAVE" ]; then
    mkdir -p "$SAVE" && rm -f "$SAVE/$name.cg".* && cp "$out".* "$SAVE/"
  fi
  if [ "$TOP" -gt 0 ]; then
    callgrind_annotate --inclusive=yes --auto=no "$out".* 2>/dev/null | grep -E '^ *[0-9,]+ \(' | sed 's/,//g' |
      awk -v n="$N" '{c = $1; $1 = ""; $2 = ""; printf "  %8d %s\n", c / n, $0}' |
      sed -E 's|/root/.cargo/registry/src/[^/]+/||; s|/rustc/[0-9a-f]+/library/||' |
      grep -E 'bourse::|redis::|sqlite3_step|response_usage' | cut -c1-160 | head -n "$TOP" || true
  fi
}

NAME=bourse
if [ "$KEY" != 0 ]; then
  NAME=bourse-key
  BOURSE_ADMIN_KEY="icount-admin-$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')"
  export BOURSE_ADMIN_KEY
  EXTRA=$'[server]\nadmin_keys = ["env:BOURSE_ADMIN_KEY"]\n'"$EXTRA"
fi
if [ "$REDIS" != 0 ]; then
  NAME=bourse-redis
  REDIS_PORT=$(free_port)
  mkdir -p "$WORK/redis"
  "$REDIS_SERVER" --bind 127.0.0.1 --port "$REDIS_PORT" --save '' --appendonly no --dir "$WORK/redis" \
    --daemonize no >"$WORK/redis.log" 2>&1 &
  PIDS+=($!)
  wait_port "$REDIS_PORT"
  EXTRA=$'[shared]\nredis_url = "redis://127.0.0.1:'"$REDIS_PORT"$'/"\n'"$EXTRA"
fi
PROXY_PORT=$(free_port)
bourse_config "$SIM_PORT" "$EXTRA" "$WORK/ledger.db" >"$WORK/bourse.toml"
measure "$NAME" "$BOURSE" serve --config "$WORK/bourse.toml" --listen "127.0.0.1:$PROXY_PORT"

if [ -x "$BIN/bareproxy" ]; then
  PROXY_PORT=$(free_port)
  measure bareproxy "$BIN/bareproxy" "127.0.0.1:$PROXY_PORT" "127.0.0.1:$SIM_PORT"
fi
