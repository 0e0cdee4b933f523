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
#
# Needs valgrind (Debian: apt-get install valgrind) and release binaries in target/release
# (bareproxy as bench/run.sh builds it). Under callgrind the proxy runs ~50× slower, so the
# ledger writes smaller batches than under real load: its per-request share here is an upper
# bound.
set -euo pipefail

BENCH_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$BENCH_DIR/.." && pwd)"
BIN="$ROOT/target/release"
BOURSE="${1:-$BIN/bourse}"
N="${ICOUNT_N:-2000}"
TOP="${ICOUNT_TOP:-0}"
EXTRA="${ICOUNT_EXTRA:-}"
MODEL="${ICOUNT_MODEL:-sim/sim-small}"
SAVE="${ICOUNT_SAVE:-}"

command -v valgrind >/dev/null || { echo "icount: valgrind is not installed (apt-get install valgrind)" >&2; exit 1; }
for b in "$BOURSE" "$BIN/upstream-sim"; do
  [ -x "$b" ] || { echo "icount: $b is missing (cargo build --release --workspace)" >&2; exit 1; }
done

WORK="$(mktemp -d "${TMPDIR:-/tmp}/bourse-icount.XXXXXX")"
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill -9 "$p" 2>/dev/null || true; done
  rm -rf "$WORK"
}
trap cleanup EXIT

# shellcheck source=bench/common.sh
. "$BENCH_DIR/common.sh"
SIM_PORT=$(free_port)
"$BIN/upstream-sim" --listen "127.0.0.1:$SIM_PORT" --threads 1 >"$WORK/sim.log" 2>&1 &
PIDS+=($!)
wait_port "$SIM_PORT"

# drive PORT COUNT: COUNT chat completions (model $MODEL) over 4 keep-alive connections; fails on
# any non-200.
drive() {
  python3 - "$1" "$2" "$(chat_body "$MODEL" false)" <<'PY'
import http.client, sys, threading
port, n, body = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3].encode()
bad = []
def work(k):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    for _ in range(k):
        c.request("POST", "/v1/chat/completions", body, {"Content-Type": "application/json"})
        r = c.getresponse(); r.read()
        if r.status != 200: bad.append(r.status)
threads = [threading.Thread(target=work, args=(n // 4,)) for _ in range(4)]
[t.start() for t in threads]; [t.join() for t in threads]
if bad: sys.exit(f"icount: {len(bad)} requests failed, e.g. status {bad[0]}")
PY
}

# measure NAME CMD...: instructions per request of CMD (which must listen on $PROXY_PORT).
measure() {
  local name=$1; shift
  local out="$WORK/$name.cg"
  valgrind --tool=callgrind --callgrind-out-file="$out" -q "$@" >"$WORK/$name.log" 2>&1 &
  local vp=$!
  PIDS+=("$vp")
  wait_port "$PROXY_PORT"
  drive "$PROXY_PORT" 200
  sleep 0.5
  callgrind_control -z "$vp" >/dev/null 2>&1
  drive "$PROXY_PORT" "$N"
  # Let the ledger writer flush what these requests queued (it flushes every 200 ms).
  sleep 0.5
  callgrind_control -d "$vp" >/dev/null 2>&1
  sleep 0.5
  kill -9 "$vp" 2>/dev/null || true
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
      grep -E 'bourse::|sqlite3_step|response_usage' | cut -c1-160 | head -n "$TOP" || true
  fi
}

PROXY_PORT=$(free_port)
bourse_config "$SIM_PORT" "$EXTRA" "$WORK/ledger.db" >"$WORK/bourse.toml"
measure bourse "$BOURSE" serve --config "$WORK/bourse.toml" --listen "127.0.0.1:$PROXY_PORT"

if [ -x "$BIN/bareproxy" ]; then
  PROXY_PORT=$(free_port)
  measure bareproxy "$BIN/bareproxy" "127.0.0.1:$PROXY_PORT" "127.0.0.1:$SIM_PORT"
fi
