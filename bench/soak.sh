#!/usr/bin/env bash
# Open-stream soak benchmark: how a path holds thousands of long-lived, paced SSE chat streams.
# Paths, all on 127.0.0.1: upstream-sim direct, bareproxy (the pass-through floor), bourse, and
# bourse with an upstream that reports no usage (bourse then estimates it). For each stream count
# and path, a fresh upstream-sim (stamping every chunk with its send time) and a fresh proxy are
# started and `soak hold` opens the streams, ramped, and holds them to the end; the proxy (or,
# direct, the sim) is sampled from /proc every 0.5 s by the generator. Then a churn case: 16
# workers sending short usage-less streams back to back. Writes a markdown section to SOAK_OUT.
#
#   bash bench/soak.sh
#
# Environment:
#   SOAK_STREAMS="1000 5000 10000"  concurrent streams per hold run
#   SOAK_TOKENS_PER_SEC=30   the sim's pacing: chunk_delay_ms = round(1000 / this)
#   SOAK_SECONDS=20          stream length: output_tokens = SOAK_TOKENS_PER_SEC * SOAK_SECONDS
#   SOAK_RAMP_SECONDS=5      each hold run opens its N streams over this long (N / this per second,
#                            at least SOAK_MIN_RAMP_RATE=100/s), so the listen backlog is not flooded
#                            and all N are open together for about SOAK_SECONDS - SOAK_RAMP_SECONDS
#   SOAK_DEADLINE=           seconds after which streams still open count as timeouts
#                            (default: ramp + 3 x SOAK_SECONDS + 60)
#   SOAK_PATHS="direct bareproxy bourse bourse-nousage"  hold paths, in run order
#   SOAK_CHURN_PATHS="bareproxy bourse"  churn paths ("" skips churn; direct works too)
#   SOAK_CHURN_WORKERS=16    concurrent churn workers
#   SOAK_CHURN_SECONDS=32    churn duration
#   SOAK_CHURN_TOKENS=16     tokens per churn answer (unpaced, usage omitted)
#   SOAK_SIM_THREADS=1       upstream-sim worker threads
#   SOAK_GEN_THREADS=1       load generator runtime threads (1: a current-thread runtime)
#   SOAK_NOFILE=200000       ulimit -n for everything started here (10,000 streams through a proxy
#                            take ~40,000 descriptors across the processes)
#   SOAK_LABEL=              free text naming this run, shown in the report
#   SOAK_EXTRA_BOURSE_CONFIG=  TOML appended to bourse's config (see bourse_config in common.sh)
#   SOAK_OUT=bench/SOAK.md   where the markdown section goes
#   SOAK_KEEP=0              1 keeps the scratch dir (logs, raw JSON per run)
#   SOAK_SKIP_BUILD=0        1 uses the binaries already built
#   BOURSE_BIN=target/release/bourse  the gateway binary (e.g. one built from a clean checkout)
set -euo pipefail

BENCH_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
export BENCH_DIR
ROOT="$(cd "$BENCH_DIR/.." && pwd)"
cd "$ROOT"

SOAK_STREAMS="${SOAK_STREAMS:-1000 5000 10000}"
SOAK_TOKENS_PER_SEC="${SOAK_TOKENS_PER_SEC:-30}"
SOAK_SECONDS="${SOAK_SECONDS:-20}"
SOAK_RAMP_SECONDS="${SOAK_RAMP_SECONDS:-5}"
SOAK_MIN_RAMP_RATE="${SOAK_MIN_RAMP_RATE:-100}"
SOAK_DEADLINE="${SOAK_DEADLINE:-$((SOAK_RAMP_SECONDS + 3 * SOAK_SECONDS + 60))}"
SOAK_PATHS="${SOAK_PATHS:-direct bareproxy bourse bourse-nousage}"
SOAK_CHURN_PATHS="${SOAK_CHURN_PATHS-bareproxy bourse}"
SOAK_CHURN_WORKERS="${SOAK_CHURN_WORKERS:-16}"
SOAK_CHURN_SECONDS="${SOAK_CHURN_SECONDS:-32}"
SOAK_CHURN_TOKENS="${SOAK_CHURN_TOKENS:-16}"
SOAK_SIM_THREADS="${SOAK_SIM_THREADS:-1}"
SOAK_GEN_THREADS="${SOAK_GEN_THREADS:-1}"
SOAK_NOFILE="${SOAK_NOFILE:-200000}"
SOAK_LABEL="${SOAK_LABEL:-}"
SOAK_EXTRA_BOURSE_CONFIG="${SOAK_EXTRA_BOURSE_CONFIG:-}"
SOAK_OUT="${SOAK_OUT:-$BENCH_DIR/SOAK.md}"
SOAK_KEEP="${SOAK_KEEP:-0}"
SOAK_SKIP_BUILD="${SOAK_SKIP_BUILD:-0}"
CLK_TCK=$(getconf CLK_TCK)
BAREPROXY_DIR="$ROOT/../shared/bench/bareproxy"
TARGET_DIR="$ROOT/target"
BIN="$TARGET_DIR/release"
BOURSE_BIN="${BOURSE_BIN:-$BIN/bourse}"

log() { printf '[soak] %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

# ---------------------------------------------------------------- cleanup
WORK="$(mktemp -d "${TMPDIR:-/tmp}/bourse-soak.XXXXXX")"
declare -a STARTED_PIDS=()
stop_pid() { # stop_pid PID: TERM, up to 10 s, then KILL
  local pid=$1
  kill "$pid" 2>/dev/null || return 0
  for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  kill -9 "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
}
cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  local pid
  for pid in "${STARTED_PIDS[@]}"; do
    kill "$pid" 2>/dev/null || true
  done
  for pid in "${STARTED_PIDS[@]}"; do
    for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$pid" 2>/dev/null || true
  done
  if [ "$SOAK_KEEP" = 1 ] || [ "$rc" != 0 ]; then
    log "scratch dir kept: $WORK"
  else
    rm -rf "$WORK"
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

command -v python3 >/dev/null 2>&1 || die "python3 is required"

# ---------------------------------------------------------------- build
if [ "$SOAK_SKIP_BUILD" != 1 ]; then
  log "building release binaries (cargo may wait for the build lock)"
  if [ "$BOURSE_BIN" = "$BIN/bourse" ]; then
    cargo build --release -p bourse -p upstream-sim -p soak
  else
    cargo build --release -p upstream-sim -p soak
  fi
fi
HAVE_BAREPROXY=0
if [ -f "$BAREPROXY_DIR/Cargo.toml" ]; then
  if [ "$SOAK_SKIP_BUILD" != 1 ]; then
    # Build a copy: ../shared is read-only on CI machines and cargo writes Cargo.lock next
    # to the manifest.
    rm -rf "$TARGET_DIR/bareproxy-src"
    cp -r "$BAREPROXY_DIR" "$TARGET_DIR/bareproxy-src"
    cargo build --release --manifest-path "$TARGET_DIR/bareproxy-src/Cargo.toml" --target-dir "$TARGET_DIR"
  fi
  HAVE_BAREPROXY=1
else
  log "../shared/bench/bareproxy not found: no bareproxy runs (no floor to compare with)"
fi
[ -x "$BOURSE_BIN" ] || die "$BOURSE_BIN is missing"
for b in upstream-sim soak $([ "$HAVE_BAREPROXY" = 0 ] || echo bareproxy); do
  [ -x "$BIN/$b" ] || die "$BIN/$b is missing"
done
drop_bareproxy() { # the path list without bareproxy when it is absent
  local p out=()
  for p in $1; do
    [ "$p" = bareproxy ] && [ "$HAVE_BAREPROXY" = 0 ] && continue
    out+=("$p")
  done
  printf '%s' "${out[*]}"
}
SOAK_PATHS=$(drop_bareproxy "$SOAK_PATHS")
SOAK_CHURN_PATHS=$(drop_bareproxy "$SOAK_CHURN_PATHS")

# ---------------------------------------------------------------- limits
max_n=0
for n in $SOAK_STREAMS; do [ "$n" -le "$max_n" ] || max_n=$n; done
if [ "$(ulimit -Hn)" != unlimited ] && [ "$(ulimit -Hn)" -lt "$SOAK_NOFILE" ]; then
  ulimit -Hn "$SOAK_NOFILE" 2>/dev/null || log "warning: cannot raise the hard descriptor limit to $SOAK_NOFILE (needs root with CAP_SYS_RESOURCE)"
fi
ulimit -Sn "$SOAK_NOFILE" 2>/dev/null || ulimit -Sn "$(ulimit -Hn)"
NOFILE=$(ulimit -n)
# A proxy holds two sockets per stream; keep some headroom for files, the ledger, epoll.
[ "$NOFILE" = unlimited ] || [ "$NOFILE" -ge $((2 * max_n + 1024)) ] ||
  log "warning: ulimit -n is $NOFILE; $max_n streams through a proxy need about $((2 * max_n + 1024)) (a hard limit needs CAP_SYS_RESOURCE to be raised)"
read -r PORT_LO PORT_HI </proc/sys/net/ipv4/ip_local_port_range
[ $((PORT_HI - PORT_LO)) -gt "$max_n" ] ||
  log "warning: ephemeral port range $PORT_LO-$PORT_HI is smaller than $max_n streams"
log "ulimit -n $NOFILE, ephemeral ports $PORT_LO-$PORT_HI, somaxconn $(cat /proc/sys/net/core/somaxconn)"

# ---------------------------------------------------------------- helpers
# shellcheck source=bench/common.sh
. "$BENCH_DIR/common.sh"

machine_busy_ticks() { awk '/^cpu / { print $2 + $3 + $4 + $7 + $8 + $9 }' /proc/stat; }

# start_sim NAME CONFIG_JSON: sets SIM_PORT, SIM_PID.
start_sim() {
  SIM_PORT=$(free_port)
  spawn "$1" "$BIN/upstream-sim" --listen "127.0.0.1:$SIM_PORT" --threads "$SOAK_SIM_THREADS" --config-json "$2"
  SIM_PID=$SPAWNED_PID
  wait_ready "$1" "$SIM_PID" "$SIM_PORT" "upstream-sim listening on"
}

# start_path PATH RUN_ID: the sim behind PATH is up (SIM_PORT); starts PATH's proxy and sets
# TARGET_PORT, TARGET_PID (the process measured) and MODEL_NAME.
start_path() {
  local p=$1 id=$2
  case $p in
    direct)
      TARGET_PORT=$SIM_PORT; TARGET_PID=$SIM_PID; MODEL_NAME=sim-small ;;
    bareproxy)
      TARGET_PORT=$(free_port)
      spawn "$id-bareproxy" "$BIN/bareproxy" "127.0.0.1:$TARGET_PORT" "127.0.0.1:$SIM_PORT"
      TARGET_PID=$SPAWNED_PID; MODEL_NAME=sim-small
      wait_ready "$id-bareproxy" "$TARGET_PID" "$TARGET_PORT" ;;
    bourse*)
      TARGET_PORT=$(free_port)
      bourse_config "$SIM_PORT" "$SOAK_EXTRA_BOURSE_CONFIG" "$WORK/$id.db" >"$WORK/$id.toml"
      spawn "$id-bourse" "$BOURSE_BIN" serve --config "$WORK/$id.toml" --listen "127.0.0.1:$TARGET_PORT"
      TARGET_PID=$SPAWNED_PID; MODEL_NAME=sim/sim-small
      wait_ready "$id-bourse" "$TARGET_PID" "$TARGET_PORT" "bourse listening on" ;;
    *) die "unknown path $p" ;;
  esac
}

# ledger_rows DB WANT: rows in bourse's SQLite ledger once the writer has caught up (the count
# reaches WANT or stops changing for 3 s; 30 s at most).
ledger_rows() {
  local db=$1 want=$2 n last=-1 still=0
  for _ in $(seq 1 60); do
    n=$(python3 -c 'import sqlite3, sys
try:
    print(sqlite3.connect(sys.argv[1]).execute("select count(*) from ledger").fetchone()[0])
except Exception:
    print(-1)' "$db")
    [ "$n" -lt "$want" ] || break
    if [ "$n" = "$last" ]; then still=$((still + 1)); [ "$still" -lt 6 ] || break; else still=0; fi
    last=$n
    sleep 0.5
  done
  printf '%s' "$n"
}

# warnings NAME: WARN/ERROR lines in a bourse log, as `count<TAB>first line`.
warnings() {
  local f="$WORK/$1.log" n first
  n=$(grep -cE ' (WARN|ERROR) ' "$f" || true)
  first=$(grep -m1 -E ' (WARN|ERROR) ' "$f" | cut -c1-300 || true)
  printf '%s\t%s' "$n" "$first"
}

RAW="$WORK/results.jsonl"
: >"$RAW"

# record KIND PATH N JSON_FILE ID: one line of $RAW with the generator's report, the machine's
# busy ticks during the run and, for bourse, ledger rows and log warnings.
record() {
  local kind=$1 p=$2 n=$3 json=$4 id=$5 rows=null warn_n=0 warn_first=""
  if [[ $p == bourse* ]]; then
    local started
    started=$(python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))["started"])' "$json")
    rows=$(ledger_rows "$WORK/$id.db" "$started")
    IFS=$'\t' read -r warn_n warn_first <<<"$(warnings "$id-bourse")" || true
  fi
  python3 - "$kind" "$p" "$n" "$json" "$rows" "$warn_n" "$warn_first" "$BG" "$BUSY_TICKS" "$SIM_CPU_NAME" >>"$RAW" <<'EOF'
import json, sys
kind, path, n, f, rows, warn_n, warn_first, bg, busy, sim = sys.argv[1:]
print(json.dumps({"kind": kind, "path": path, "n": int(n), "soak": json.load(open(f)),
                  "ledger_rows": None if rows == "null" else int(rows),
                  "warnings": int(warn_n or 0), "first_warning": warn_first,
                  "bg_cores": float(bg), "machine_busy_ticks": int(busy), "sim_watch": sim}))
EOF
}

# summary line of one run, from the generator's JSON
say() {
  python3 - "$1" "$2" <<'EOF' >&2
import json, sys
r = json.load(open(sys.argv[2]))
p = r["proc"]
def ms(x): return "-" if x is None else f"{x:.2f}"
proc = p.get("proxy") or p.get("sim") or {}
print(f"[soak] {sys.argv[1]}: completed {r['completed']}/{r['started']} errors {r['errors']['total']} "
      f"tokens {r['tokens']} ({r['events_per_s']:.0f}/s)  ttft p50 {ms(r['ttft_ms']['p50'])} p99 {ms(r['ttft_ms']['p99'])} ms  "
      f"transit p50 {ms(r['transit_ms']['p50'])} p99 {ms(r['transit_ms']['p99'])} ms  gap-int p99 {ms(r['gap_minus_interval_ms']['p99'])} ms  "
      f"proc rss {proc.get('rss_before_kb')}->{proc.get('rss_plateau_kb')} KB cpu {proc.get('cpu_s')} s threads {proc.get('threads_max')}  "
      f"soak cpu {p['soak']['cpu_s']} s")
EOF
}

# ---------------------------------------------------------------- hold runs
INTERVAL_MS=$(awk -v r="$SOAK_TOKENS_PER_SEC" 'BEGIN { printf "%d", 1000 / r + 0.5 }')
TOKENS=$((SOAK_TOKENS_PER_SEC * SOAK_SECONDS))
LOADAVG_START=$(cut -d' ' -f1-3 /proc/loadavg)
log "hold: streams {$SOAK_STREAMS} x paths {$SOAK_PATHS}; $TOKENS tokens every $INTERVAL_MS ms (~${SOAK_SECONDS}s per stream)"
# Every token is a write in the sim, a read and a write in a proxy and a read in the generator;
# on a 2-core VM each of those costs several µs (mostly the kernel's TCP path), so a 2-core
# machine moves some 30-60k tokens/s through a proxied path: beyond that a run measures saturation.
for n in $SOAK_STREAMS; do
  rate=$((n * 1000 / INTERVAL_MS))
  [ "$rate" -le $((25000 * $(nproc))) ] ||
    log "warning: $n streams x one token per $INTERVAL_MS ms = $rate tokens/s; expect a $(nproc)-core machine to saturate (lower SOAK_TOKENS_PER_SEC to measure the gateway rather than the machine)"
done

run_hold() { # run_hold PATH N
  local p=$1 n=$2 id="hold-$1-$2" usage=openai rate m0 m1
  [ "$p" != bourse-nousage ] || usage=omitted
  rate=$(awk -v n="$n" -v s="$SOAK_RAMP_SECONDS" -v m="$SOAK_MIN_RAMP_RATE" 'BEGIN { r = n / s; printf "%d", (r < m ? m : r) }')
  start_sim "$id-sim" "{\"stamp_chunks\":true,\"chunk_delay_ms\":$INTERVAL_MS,\"output_tokens\":$TOKENS,\"usage_style\":\"$usage\"}"
  start_path "$p" "$id"
  local watch=(--watch "proxy=$TARGET_PID")
  SIM_CPU_NAME=proxy
  if [ "$p" != direct ]; then watch+=(--watch "sim=$SIM_PID"); SIM_CPU_NAME=sim; fi
  BG=$(busy_cores)
  log "$id: $n streams at $rate/s to $p (others busy: $BG cores)"
  m0=$(machine_busy_ticks)
  "$BIN/soak" hold --target "127.0.0.1:$TARGET_PORT" --model "$MODEL_NAME" --streams "$n" --rate "$rate" \
    --deadline-secs "$SOAK_DEADLINE" --interval-ms "$INTERVAL_MS" --progress-secs 5 --clk-tck "$CLK_TCK" \
    --threads "$SOAK_GEN_THREADS" "${watch[@]}" >"$WORK/$id.json" 2> >(tee "$WORK/$id.soak.log" >&2)
  m1=$(machine_busy_ticks)
  BUSY_TICKS=$((m1 - m0))
  say "$id" "$WORK/$id.json"
  record hold "$p" "$n" "$WORK/$id.json" "$id"
  [ "$p" = direct ] || stop_pid "$TARGET_PID"
  stop_pid "$SIM_PID"
}

for n in $SOAK_STREAMS; do
  for p in $SOAK_PATHS; do
    run_hold "$p" "$n"
  done
done

# ---------------------------------------------------------------- churn
run_churn() { # run_churn PATH
  local p=$1 id="churn-$1" m0 m1
  start_sim "$id-sim" "{\"stamp_chunks\":true,\"output_tokens\":$SOAK_CHURN_TOKENS,\"usage_style\":\"omitted\"}"
  start_path "$p" "$id"
  local watch=(--watch "proxy=$TARGET_PID")
  SIM_CPU_NAME=proxy
  if [ "$p" != direct ]; then watch+=(--watch "sim=$SIM_PID"); SIM_CPU_NAME=sim; fi
  BG=$(busy_cores)
  log "$id: $SOAK_CHURN_WORKERS workers for ${SOAK_CHURN_SECONDS}s to $p (others busy: $BG cores)"
  m0=$(machine_busy_ticks)
  "$BIN/soak" churn --target "127.0.0.1:$TARGET_PORT" --model "$MODEL_NAME" --no-usage \
    --workers "$SOAK_CHURN_WORKERS" --seconds "$SOAK_CHURN_SECONDS" --progress-secs 5 --clk-tck "$CLK_TCK" \
    --threads "$SOAK_GEN_THREADS" "${watch[@]}" >"$WORK/$id.json" 2> >(tee "$WORK/$id.soak.log" >&2)
  m1=$(machine_busy_ticks)
  BUSY_TICKS=$((m1 - m0))
  say "$id" "$WORK/$id.json"
  record churn "$p" "$SOAK_CHURN_WORKERS" "$WORK/$id.json" "$id"
  [ "$p" = direct ] || stop_pid "$TARGET_PID"
  stop_pid "$SIM_PID"
}

for p in $SOAK_CHURN_PATHS; do
  run_churn "$p"
done

# ---------------------------------------------------------------- report
commit=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
[ -z "$(git status --porcelain 2>/dev/null)" ] || commit="$commit-dirty"
python3 - "$WORK/meta.json" <<EOF
import json, sys
json.dump({
    "date": "$(date -u '+%Y-%m-%d %H:%M UTC')",
    "nproc": $(nproc),
    "kernel": "$(uname -r)",
    "cpu_model": $(python3 -c 'import json; print(json.dumps(next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "unknown")))'),
    "loadavg_start": "$LOADAVG_START",
    "commit": "$commit",
    "bourse_bin": "$BOURSE_BIN",
    "default_bourse_bin": "$BIN/bourse" == "$BOURSE_BIN",
    "label": $(python3 -c 'import json, sys; print(json.dumps(sys.argv[1]))' "$SOAK_LABEL"),
    "extra_bourse_config": $(python3 -c 'import json, sys; print(json.dumps(sys.argv[1]))' "$SOAK_EXTRA_BOURSE_CONFIG"),
    "streams": "$SOAK_STREAMS".split(),
    "tokens_per_sec": $SOAK_TOKENS_PER_SEC,
    "interval_ms": $INTERVAL_MS,
    "output_tokens": $TOKENS,
    "seconds": $SOAK_SECONDS,
    "ramp_seconds": $SOAK_RAMP_SECONDS,
    "min_ramp_rate": $SOAK_MIN_RAMP_RATE,
    "deadline": $SOAK_DEADLINE,
    "churn_workers": $SOAK_CHURN_WORKERS,
    "churn_seconds": $SOAK_CHURN_SECONDS,
    "churn_tokens": $SOAK_CHURN_TOKENS,
    "sim_threads": $SOAK_SIM_THREADS,
    "gen_threads": $SOAK_GEN_THREADS,
    "nofile": "$NOFILE",
    "nofile_needed": $((2 * max_n + 1024)),
    "clk_tck": $CLK_TCK,
    "have_bareproxy": bool($HAVE_BAREPROXY),
}, open(sys.argv[1], "w"), indent=1)
EOF
python3 "$BENCH_DIR/soak_report.py" "$WORK/meta.json" "$RAW" >"$WORK/SOAK.md"
cp "$WORK/SOAK.md" "$SOAK_OUT"
cat "$SOAK_OUT"
log "wrote $SOAK_OUT"
