#!/usr/bin/env bash
# Load benchmark: upstream-sim direct vs bareproxy (the pass-through floor) vs bourse, all on
# 127.0.0.1. Non-streaming throughput and latency with wrk, CPU per request and peak RSS of the
# proxies from /proc, streaming time-to-first-byte with bench/ttfb.py. Writes bench/RESULTS.md.
#
#   bash bench/run.sh
#
# Environment:
#   BENCH_SECONDS=10         measured wrk duration per (path, connections)
#   BENCH_WARMUP_SECONDS=2   wrk warm-up before each measured run
#   BENCH_ROUNDS=3           rounds over every (connections, path) cell, paths interleaved; the
#                            report takes each cell's median round (a shared machine has slow spells)
#   BENCH_CONNS="1 16 64"    connection counts
#   BENCH_TTFB_N=200         sequential streaming requests per path for TTFB
#   BENCH_LABEL=             free text naming this run (e.g. "ledger off"), shown in the report
#   BENCH_EXTRA_BOURSE_CONFIG=  TOML appended to bourse's config, e.g. $'[storage]\nledger = false'
#                            (the base config already has [providers.sim] and [models."sim/sim-small"])
#   BENCH_OUT=bench/RESULTS.md  where the report goes
#   BENCH_KEEP=0             1 keeps the scratch dir (logs, raw JSON results)
#   BENCH_SKIP_BUILD=0       1 uses the binaries already in target/release
#   BENCH_QUIET_WAIT=60      before each measurement, wait up to this many seconds for other
#                            processes to use < BENCH_QUIET_CORES (default 0.25) of the CPU; the
#                            load seen is reported either way (this machine may be shared)
#   BENCH_RETRIES=2          re-measure a cell up to this many times if other processes took more
#                            than BENCH_MAX_OTHER_CORES (default 0.4) during it
#   BENCH_LIMITS=1           0 skips the limited paths: `bourse-limits` (budget and rate-limit
#                            counters in process) and `bourse-redis` (the same counters in a
#                            redis-server of its own, /usr/bin/redis-server), each serving every
#                            request under a virtual key created through the admin API
#   BENCH_LIMITS_TENANT='{"name":"bench","budget_day_usd":"1000000"}'   the tenant created
#   BENCH_LIMITS_KEY='{"tenant":"bench","rpm":100000000,"budget_day_usd":"1000000","tpm":100000000000}'
#                            the virtual key created (limits high enough never to refuse)
#   BENCH_CACHE=1            0 skips `bourse-cache`: the response cache on, in memory, every request
#                            a hit (the preflight's first request of each kind is the one miss);
#                            its requests name a route, `cached`, with `cache_sampled = true`, since
#                            the benchmark's body sets no temperature
#
# Besides `bourse` as configured, the run measures variants of it (BENCH_NO_VARIANTS=1 skips the
# first three): `bourse-noledger` (ledger off), `bourse-auto` (every request `"model": "auto"`),
# `bourse-nometrics` (`[telemetry] metrics = false`: no /metrics, no counting; skipped when
# BENCH_EXTRA_BOURSE_CONFIG has its own [telemetry]), and the limited paths (BENCH_LIMITS).
#
# To compare gateway variants in one run, start another bourse with `start_bourse NAME "TOML"`
# in the "start the paths" section below (NAME must start with "bourse"); every path started
# is measured, and report.py compares each bourse* path with bareproxy and checks its targets.
# A path whose requests need a gateway key has it in AUTH[NAME]; a process whose CPU belongs
# to a path (bourse-redis's redis-server) has its PID in HELPER[NAME].
set -euo pipefail

BENCH_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
export BENCH_DIR
ROOT="$(cd "$BENCH_DIR/.." && pwd)"
cd "$ROOT"

BENCH_SECONDS="${BENCH_SECONDS:-10}"
BENCH_WARMUP_SECONDS="${BENCH_WARMUP_SECONDS:-2}"
BENCH_ROUNDS="${BENCH_ROUNDS:-3}"
BENCH_CONNS="${BENCH_CONNS:-1 16 64}"
BENCH_TTFB_N="${BENCH_TTFB_N:-200}"
BENCH_LABEL="${BENCH_LABEL:-}"
BENCH_EXTRA_BOURSE_CONFIG="${BENCH_EXTRA_BOURSE_CONFIG:-}"
BENCH_OUT="${BENCH_OUT:-$BENCH_DIR/RESULTS.md}"
BENCH_KEEP="${BENCH_KEEP:-0}"
BENCH_SKIP_BUILD="${BENCH_SKIP_BUILD:-0}"
BENCH_QUIET_WAIT="${BENCH_QUIET_WAIT:-60}"
BENCH_QUIET_CORES="${BENCH_QUIET_CORES:-0.25}"
BENCH_MAX_OTHER_CORES="${BENCH_MAX_OTHER_CORES:-0.4}"
BENCH_RETRIES="${BENCH_RETRIES:-2}"
BENCH_LIMITS="${BENCH_LIMITS:-1}"
BENCH_CACHE="${BENCH_CACHE:-1}"
[ -n "${BENCH_LIMITS_TENANT:-}" ] || BENCH_LIMITS_TENANT='{"name":"bench","budget_day_usd":"1000000"}'
[ -n "${BENCH_LIMITS_KEY:-}" ] ||
  BENCH_LIMITS_KEY='{"tenant":"bench","rpm":100000000,"budget_day_usd":"1000000","tpm":100000000000}'
REDIS_SERVER=/usr/bin/redis-server
CLK_TCK=$(getconf CLK_TCK)
BAREPROXY_DIR="$ROOT/../shared/bench/bareproxy"
TARGET_DIR="$ROOT/target"
BIN="$TARGET_DIR/release"

log() { printf '[bench] %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

# ---------------------------------------------------------------- cleanup
WORK="$(mktemp -d "${TMPDIR:-/tmp}/bourse-bench.XXXXXX")"
declare -a STARTED_PIDS=()
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
  if [ "$BENCH_KEEP" = 1 ] || [ "$rc" != 0 ]; then
    log "scratch dir kept: $WORK"
  else
    rm -rf "$WORK"
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# ---------------------------------------------------------------- tools
if ! command -v wrk >/dev/null 2>&1; then
  [ "$(id -u)" = 0 ] || die "wrk is missing; install it (apt-get install -y wrk) or run as root"
  log "installing wrk"
  apt-get install -y -qq wrk >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq wrk >/dev/null; }
fi
command -v python3 >/dev/null 2>&1 || die "python3 is required"
command -v curl >/dev/null 2>&1 || die "curl is required"

# ---------------------------------------------------------------- build
if [ "$BENCH_SKIP_BUILD" != 1 ]; then
  log "building release binaries (cargo may wait for the build lock)"
  cargo build --release -p bourse -p upstream-sim
fi
HAVE_BAREPROXY=0
if [ -f "$BAREPROXY_DIR/Cargo.toml" ]; then
  if [ "$BENCH_SKIP_BUILD" != 1 ]; then
    # Build a copy: ../shared is read-only on CI machines and cargo writes Cargo.lock next
    # to the manifest.
    rm -rf "$TARGET_DIR/bareproxy-src"
    cp -r "$BAREPROXY_DIR" "$TARGET_DIR/bareproxy-src"
    cargo build --release --manifest-path "$TARGET_DIR/bareproxy-src/Cargo.toml" --target-dir "$TARGET_DIR"
  fi
  HAVE_BAREPROXY=1
else
  log "../shared/bench/bareproxy not found: benchmarking direct and bourse only (no floor to compare with)"
fi
for b in bourse upstream-sim $([ "$HAVE_BAREPROXY" = 0 ] || echo bareproxy); do
  [ -x "$BIN/$b" ] || die "$BIN/$b is missing"
done
# The commit the binaries were built from, read now: others may commit while this runs.
commit=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
[ -z "$(git status --porcelain 2>/dev/null)" ] || commit="$commit (working tree has uncommitted changes)"
[ "$BENCH_SKIP_BUILD" != 1 ] ||
  commit="$commit (BENCH_SKIP_BUILD: bourse binary built $(date -u -r "$BIN/bourse" '+%H:%M UTC'))"

# ---------------------------------------------------------------- helpers
# shellcheck source=bench/common.sh
. "$BENCH_DIR/common.sh"

# Every path: base URL, model name as that path expects it, and the PID whose CPU/RSS we measure.
declare -a PATHS=()
declare -A URL=() MODEL=() PID=() AUTH=() HELPER=()
declare -a BOURSE_CONFIGS=()

start_bourse() { # start_bourse NAME EXTRA_TOML
  local name=$1 extra=$2 port
  port=$(free_port)
  bourse_config "$SIM_PORT" "$extra" "$WORK/$name.db" >"$WORK/$name.toml"
  BOURSE_CONFIGS+=("$name.toml")
  spawn "$name" "$BIN/bourse" serve --config "$WORK/$name.toml" --listen "127.0.0.1:$port"
  wait_ready "$name" "$SPAWNED_PID" "$port" "bourse listening on"
  PATHS+=("$name"); URL[$name]="http://127.0.0.1:$port"; MODEL[$name]="sim/sim-small"; PID[$name]=$SPAWNED_PID
}

# create_key NAME: a tenant and a virtual key (BENCH_LIMITS_TENANT, BENCH_LIMITS_KEY) on the
# gateway NAME through its admin API; its secret goes into AUTH[NAME].
admin_post() { # admin_post NAME PATH JSON -> prints the body; dies unless 201
  local out
  out=$(curl -sS --max-time 10 -H "authorization: Bearer $BOURSE_ADMIN_KEY" -H 'content-type: application/json' \
    -d "$3" -w '\n%{http_code}' "${URL[$1]}$2") || die "$1: POST $2 failed"
  [ "${out##*$'\n'}" = 201 ] || die "$1: POST $2 $3 answered: $out"
  printf '%s' "${out%$'\n'*}"
}
create_key() {
  local p=$1 out
  admin_post "$p" /admin/v1/tenants "$BENCH_LIMITS_TENANT" >/dev/null
  out=$(admin_post "$p" /admin/v1/keys "$BENCH_LIMITS_KEY")
  AUTH[$p]=$(python3 -c 'import json, sys; print(json.load(sys.stdin)["key"])' <<<"$out") ||
    die "$p: no key in $out"
}

# Bearer header arguments for curl when the path needs a key.
auth_args() { [ -z "${AUTH[$1]:-}" ] || printf '%s\n' -H "authorization: Bearer ${AUTH[$1]}"; }
helper_ticks() { if [ -n "${HELPER[$1]:-}" ]; then cpu_ticks "${HELPER[$1]}"; else echo 0; fi; }

# wait_quiet WHAT: sets BG to the background load finally seen (waits up to BENCH_QUIET_WAIT s).
wait_quiet() {
  local waited=0
  while :; do
    BG=$(busy_cores)
    awk -v b="$BG" -v t="$BENCH_QUIET_CORES" 'BEGIN { exit !(b > t) }' || return 0
    if [ "$waited" -ge "$BENCH_QUIET_WAIT" ]; then
      log "warning: other processes use $BG cores; measuring $1 anyway"
      return 0
    fi
    [ "$waited" -gt 0 ] || log "other processes use $BG cores; waiting up to ${BENCH_QUIET_WAIT}s before $1"
    sleep 2
    waited=$((waited + 3))
  done
}

# "busy total" CPU ticks, all CPUs. Busy counts irq and softirq too: a tick that lands in
# softirq (loopback delivery) is also charged to the current task's stime, so our processes'
# utime + stime cover it, and "other CPU" = busy - ours means other processes (or other VMs,
# via steal).
machine_ticks() {
  awk '/^cpu / { b = $2 + $3 + $4 + $7 + $8 + $9; print b, b + $5 + $6 }' /proc/stat
}

cpu_ticks() { # utime + stime of a process (all threads), in clock ticks
  sed 's/.*) //' "/proc/$1/stat" | awk '{ print $12 + $13 }'
}
vm_hwm_kb() { awk '/^VmHWM:/ { print $2 }' "/proc/$1/status"; }

# One request of each kind through a path before loading it: a path that answers 404 fast
# would otherwise post a splendid req/s.
preflight() {
  local p=$1 out auth
  mapfile -t auth < <(auth_args "$p")
  out=$(curl -sS --max-time 5 "${auth[@]}" -H 'content-type: application/json' -d "$(chat_body "${MODEL[$p]}" false)" \
    -w '\n%{http_code}' "${URL[$p]}/v1/chat/completions") || die "$p: request failed"
  [ "${out##*$'\n'}" = 200 ] && grep -q '"choices"' <<<"$out" || die "$p: bad non-streaming response: $out"
  out=$(curl -sS -N --max-time 5 "${auth[@]}" -H 'content-type: application/json' -d "$(chat_body "${MODEL[$p]}" true)" \
    "${URL[$p]}/v1/chat/completions") || die "$p: streaming request failed"
  grep -q '^data: \[DONE\]' <<<"$out" || die "$p: bad streaming response: ${out:0:500}"
}

write_lua() { # write_lua PATH_NAME -> prints the script's file name
  local f="$WORK/wrk-$1.lua"
  cat >"$f" <<EOF
wrk.method = "POST"
wrk.path = "/v1/chat/completions"
wrk.headers["Content-Type"] = "application/json"
wrk.body = '$(chat_body "${MODEL[$1]}" false)'
$([ -z "${AUTH[$1]:-}" ] || printf 'wrk.headers["Authorization"] = "Bearer %s"' "${AUTH[$1]}")

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'BENCH_RESULT {"requests":%d,"duration_us":%d,"p50_us":%d,"p90_us":%d,"p99_us":%d,"max_us":%d,' ..
    '"errors_connect":%d,"errors_read":%d,"errors_write":%d,"errors_status":%d,"errors_timeout":%d}\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(90),
    latency:percentile(99), latency.max, e.connect, e.read, e.write, e.status, e.timeout))
end
EOF
  printf '%s' "$f"
}

RAW="$WORK/results.jsonl"
: >"$RAW"

# run_wrk PATH CONNS: warm-up, then the measured run with CPU accounting; appends to $RAW.
# A cell during which other processes took more than BENCH_MAX_OTHER_CORES is measured again
# (up to BENCH_RETRIES times); the last attempt is kept either way.
run_wrk() {
  local p=$1 c=$2 threads=2 lua out res t0 t1 s0 s1 h0 h1 m0 m1 w0 w1 wrk_s wall other attempt=0
  [ "$c" -ge 2 ] || threads=1
  lua=$(write_lua "$p")
  while :; do
    timeout $((BENCH_WARMUP_SECONDS + 30)) wrk -t"$threads" -c"$c" -d"${BENCH_WARMUP_SECONDS}s" --timeout 5s \
      -s "$lua" "${URL[$p]}" >/dev/null
    wait_quiet "$p at $c connections"
    t0=$(cpu_ticks "${PID[$p]}"); s0=$(cpu_ticks "$SIM_PID"); h0=$(helper_ticks "$p"); m0=$(machine_ticks); w0=$(date +%s.%N)
    # `times` after wrk: the CPU time of this subshell's children, i.e. of wrk.
    out=$(timeout $((BENCH_SECONDS + 30)) wrk -t"$threads" -c"$c" -d"${BENCH_SECONDS}s" --timeout 5s --latency \
      -s "$lua" "${URL[$p]}"; times)
    w1=$(date +%s.%N); m1=$(machine_ticks); t1=$(cpu_ticks "${PID[$p]}"); s1=$(cpu_ticks "$SIM_PID"); h1=$(helper_ticks "$p")
    printf '%s\n' "$out" >"$WORK/wrk-$p-$c.txt"
    res=$(sed -n 's/^BENCH_RESULT //p' <<<"$out")
    [ -n "$res" ] || { printf '%s\n' "$out" >&2; die "wrk printed no result for $p at $c connections"; }
    wrk_s=$(tail -n1 <<<"$out" | awk '{ n = 0; for (i = 1; i <= 2; i++) { split($i, a, /[ms]/); n += a[1] * 60 + a[2] } print n }')
    wall=$(awk -v a="$w0" -v b="$w1" 'BEGIN { print b - a }')
    # Same formula as report.py's other_cores.
    other=$(awk -v busy=$((${m1% *} - ${m0% *})) -v proc=$((t1 - t0 + h1 - h0)) -v sim=$((s1 - s0)) -v direct="$([ "$p" = direct ] && echo 1 || echo 0)" \
      -v w="$wrk_s" -v tck="$CLK_TCK" -v wall="$wall" \
      'BEGIN { o = busy / tck - proc / tck - (direct ? 0 : sim / tck) - w; printf "%.2f", (o > 0 ? o : 0) / wall }')
    attempt=$((attempt + 1))
    if awk -v o="$other" -v m="$BENCH_MAX_OTHER_CORES" 'BEGIN { exit !(o > m) }' && [ "$attempt" -le "$BENCH_RETRIES" ]; then
      log "other processes took $other cores during $p at $c connections; measuring it again"
      continue
    fi
    break
  done
  printf '{"kind":"wrk","path":"%s","conns":%d,"threads":%d,"wrk":%s,"cpu_ticks":%d,"sim_cpu_ticks":%d,"helper_cpu_ticks":%d,"wrk_cpu_s":%s,"machine_busy_ticks":%d,"wall_s":%s,"bg_cores":%s,"attempts":%d}\n' \
    "$p" "$c" "$threads" "$res" $((t1 - t0)) $((s1 - s0)) $((h1 - h0)) "$wrk_s" $((${m1% *} - ${m0% *})) "$wall" "$BG" "$attempt" >>"$RAW"
  python3 - "$RAW" <<'EOF' >&2
import json, os, sys
sys.dont_write_bytecode = True
sys.path.insert(0, os.environ["BENCH_DIR"])
from report import wrk_metrics
r = json.loads(open(sys.argv[1]).read().splitlines()[-1])
m = wrk_metrics(r, os.sysconf("SC_CLK_TCK"))
helper = f"redis {m['helper_cores']:.2f}, " if r.get("helper_cpu_ticks") else ""
print(f"[bench] {r['path']:>10} c={r['conns']:<3} {m['rps']:>9.0f} req/s  p50 {m['p50']:.3f} ms  p99 {m['p99']:.3f} ms  "
      f"errors {m['errors']}  cores: process {m['cores']:.2f}, sim {m['sim_cores']:.2f}, wrk {m['wrk_cores']:.2f}, {helper}"
      f"others {m['other_cores']:.2f} (before: {r['bg_cores']})")
EOF
}

# ---------------------------------------------------------------- start the paths
SIM_PORT=$(free_port)
spawn upstream-sim "$BIN/upstream-sim" --listen "127.0.0.1:$SIM_PORT" --threads 1
SIM_PID=$SPAWNED_PID
wait_ready upstream-sim "$SIM_PID" "$SIM_PORT" "upstream-sim listening on"
PATHS+=(direct); URL[direct]="http://127.0.0.1:$SIM_PORT"; MODEL[direct]="sim-small"; PID[direct]=$SIM_PID

if [ "$HAVE_BAREPROXY" = 1 ]; then
  port=$(free_port)
  spawn bareproxy "$BIN/bareproxy" "127.0.0.1:$port" "127.0.0.1:$SIM_PORT"
  wait_ready bareproxy "$SPAWNED_PID" "$port"
  PATHS+=(bareproxy); URL[bareproxy]="http://127.0.0.1:$port"; MODEL[bareproxy]="sim-small"
  PID[bareproxy]=$SPAWNED_PID
fi

start_bourse bourse "$BENCH_EXTRA_BOURSE_CONFIG"
# The same gateway with the ledger off (issue: ledger on within 10% of off), asked for
# `"model": "auto"` so every request goes through the router (issue: no measurable loss), and
# with metrics off (issue 16: metrics on keeps ≥ 95% of the throughput of metrics off).
if [ -z "${BENCH_NO_VARIANTS:-}" ]; then
  start_bourse bourse-noledger $'[storage]\nledger = false\n'"$BENCH_EXTRA_BOURSE_CONFIG"
  start_bourse bourse-auto "$BENCH_EXTRA_BOURSE_CONFIG"
  MODEL[bourse-auto]="auto"
  case "$BENCH_EXTRA_BOURSE_CONFIG" in
    *"[telemetry]"*) log "BENCH_EXTRA_BOURSE_CONFIG has [telemetry]: skipping bourse-nometrics" ;;
    *) start_bourse bourse-nometrics $'[telemetry]\nmetrics = false\n'"$BENCH_EXTRA_BOURSE_CONFIG" ;;
  esac
fi
# The same gateway with every request under a virtual key that carries a budget and rate
# limits (issue: ≥ 90% of `bourse` with the counters in process, ≥ 75% with them in Redis).
# The admin API that creates the key needs the ledger's store and a [server] table of ours.
REDIS_PORT=""
if [ "$BENCH_LIMITS" != 0 ]; then
  case "$BENCH_EXTRA_BOURSE_CONFIG" in
    *"[server]"* | *"[shared]"* | *"ledger = false"*)
      log "BENCH_EXTRA_BOURSE_CONFIG has [server], [shared] or ledger = false: skipping the limited paths" ;;
    *)
      BOURSE_ADMIN_KEY="bench-admin-$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')"
      export BOURSE_ADMIN_KEY
      admin=$'[server]\nadmin_keys = ["env:BOURSE_ADMIN_KEY"]\n'
      start_bourse bourse-limits "$admin$BENCH_EXTRA_BOURSE_CONFIG"
      create_key bourse-limits
      if [ ! -x "$REDIS_SERVER" ]; then
        bash "$ROOT/scripts/redis" >&2 || log "no $REDIS_SERVER: skipping bourse-redis"
      fi
      if [ -x "$REDIS_SERVER" ]; then
        REDIS_PORT=$(free_port)
        mkdir -p "$WORK/redis"
        spawn redis "$REDIS_SERVER" --bind 127.0.0.1 --port "$REDIS_PORT" --save '' --appendonly no \
          --dir "$WORK/redis" --daemonize no
        REDIS_PID=$SPAWNED_PID
        wait_ready redis "$REDIS_PID" "$REDIS_PORT" "Ready to accept connections"
        start_bourse bourse-redis "$admin"$'[shared]\nredis_url = "redis://127.0.0.1:'"$REDIS_PORT"$'/"\n'"$BENCH_EXTRA_BOURSE_CONFIG"
        create_key bourse-redis
        HELPER[bourse-redis]=$REDIS_PID
      fi
      ;;
  esac
fi

# Every request a response-cache hit: what serving one adds, with no upstream behind it. Its
# model is a route (`cached`), so `bourse-auto` (routed, every request upstream) is its pair.
if [ "$BENCH_CACHE" != 0 ]; then
  start_bourse bourse-cache $'[cache]\nttl = "1h"\nmax_bytes = "64MiB"\n[routes.cached]\ncache_sampled = true\n'"$BENCH_EXTRA_BOURSE_CONFIG"
  MODEL[bourse-cache]="cached"
fi

for p in "${PATHS[@]}"; do preflight "$p"; done
# The preflight stored bourse-cache's answers: from here on its requests are hits.
if [ -n "${URL[bourse-cache]:-}" ]; then
  said=$(curl -sS --max-time 5 -o /dev/null -D - -H 'content-type: application/json' \
    -d "$(chat_body cached false)" "${URL[bourse-cache]}/v1/chat/completions" | tr -d '\r' |
    sed -n 's/^x-bourse-cache: //Ip')
  [ "$said" = hit ] || die "bourse-cache: a repeated request was not a cache hit (x-bourse-cache: ${said:-none})"
fi
log "paths: $(for p in "${PATHS[@]}"; do printf '%s=%s ' "$p" "${URL[$p]}"; done)"
LOADAVG_START=$(cut -d' ' -f1-3 /proc/loadavg)

# ---------------------------------------------------------------- measure
for round in $(seq 1 "$BENCH_ROUNDS"); do
  [ "$BENCH_ROUNDS" = 1 ] || log "round $round of $BENCH_ROUNDS"
  for c in $BENCH_CONNS; do
    for p in "${PATHS[@]}"; do
      run_wrk "$p" "$c"
    done
  done
done

for p in "${PATHS[@]}"; do
  wait_quiet "$p streaming TTFB"
  res=$(TTFB_KEY="${AUTH[$p]:-}" timeout 300 python3 "$BENCH_DIR/ttfb.py" "${URL[$p]#http://}" "${MODEL[$p]}" "$BENCH_TTFB_N")
  log "$(printf '%10s' "$p") streaming TTFB $res"
  printf '{"kind":"ttfb","path":"%s","ttfb":%s,"bg_cores":%s}\n' "$p" "$res" "$BG" >>"$RAW"
done

for p in "${PATHS[@]}"; do
  [ "$p" != direct ] || continue
  printf '{"kind":"rss","path":"%s","vm_hwm_kb":%d}\n' "$p" "$(vm_hwm_kb "${PID[$p]}")" >>"$RAW"
done
printf '{"kind":"rss","path":"upstream-sim","vm_hwm_kb":%d}\n' "$(vm_hwm_kb "$SIM_PID")" >>"$RAW"
[ -z "${HELPER[bourse-redis]:-}" ] ||
  printf '{"kind":"rss","path":"redis-server","vm_hwm_kb":%d}\n' "$(vm_hwm_kb "${HELPER[bourse-redis]}")" >>"$RAW"
for p in "${PATHS[@]}"; do # warnings the gateways logged under load (e.g. dropped ledger rows)
  case $p in bourse*)
    n=$(grep -cE ' (WARN|ERROR) ' "$WORK/$p.log" || true)
    first=$(grep -m1 -E ' (WARN|ERROR) ' "$WORK/$p.log" | cut -c1-300 || true)
    [ "$n" = 0 ] || log "$p logged $n warnings/errors; first: $first"
    python3 -c 'import json, sys; print(json.dumps({"kind": "log", "path": sys.argv[1], "warnings": int(sys.argv[2]), "first": sys.argv[3]}))' \
      "$p" "$n" "$first" >>"$RAW"
  esac
done

# ---------------------------------------------------------------- report
# The router's planner, alone: criterion over a 100-model catalog (target: < 20 µs).
CRITERION_DIR=""
if [ "${BENCH_PLANNER:-1}" != 0 ]; then
  log "planner benchmark (criterion)"
  if (cd "$ROOT" && cargo bench -q -p bourse --bench plan -- --noplot >"$WORK/criterion.log" 2>&1); then
    CRITERION_DIR="${CARGO_TARGET_DIR:-$ROOT/target}/criterion/plan_100_models"
  else
    log "planner benchmark failed; see $WORK/criterion.log"
  fi
fi

python3 - "$WORK/meta.json" <<EOF
import json, sys
json.dump({
    "date": "$(date -u '+%Y-%m-%d %H:%M UTC')",
    "nproc": $(nproc),
    "cpu_model": $(python3 -c 'import json; print(json.dumps(next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "unknown")))'),
    "loadavg_start": "$LOADAVG_START",
    "commit": "$commit",
    "label": $(python3 -c 'import json, sys; print(json.dumps(sys.argv[1]))' "$BENCH_LABEL"),
    "bourse_configs": {p[:-5]: open("$WORK/" + p).read().replace("$SIM_PORT", "SIM_PORT").replace("127.0.0.1:${REDIS_PORT:-NONE}/", "127.0.0.1:REDIS_PORT/") for p in "${BOURSE_CONFIGS[*]}".split()},
    "limits_tenant": $(python3 -c 'import json, sys; print(json.dumps(sys.argv[1]))' "$BENCH_LIMITS_TENANT"),
    "limits_key": $(python3 -c 'import json, sys; print(json.dumps(sys.argv[1]))' "$BENCH_LIMITS_KEY"),
    "redis_version": "$([ -z "$REDIS_PORT" ] || "$REDIS_SERVER" --version | sed -n 's/.* v=\([^ ]*\).*/\1/p')",
    "seconds": $BENCH_SECONDS,
    "warmup_seconds": $BENCH_WARMUP_SECONDS,
    "rounds": $BENCH_ROUNDS,
    "ttfb_n": $BENCH_TTFB_N,
    "clk_tck": $CLK_TCK,
    "quiet_cores": $BENCH_QUIET_CORES,
    "quiet_wait": $BENCH_QUIET_WAIT,
    "retries": $BENCH_RETRIES,
    "max_other_cores": $BENCH_MAX_OTHER_CORES,
    "wrk_version": "$(wrk -v 2>&1 | head -1 | awk '{ print $2 }')",
    "have_bareproxy": bool($HAVE_BAREPROXY),
    "criterion_dir": "$CRITERION_DIR",
    "paths": $(printf '%s\n' "${PATHS[@]}" | python3 -c 'import json, sys; print(json.dumps(sys.stdin.read().split()))'),
}, open(sys.argv[1], "w"), indent=1)
EOF
python3 "$BENCH_DIR/report.py" "$WORK/meta.json" "$RAW" >"$WORK/RESULTS.md"
cp "$WORK/RESULTS.md" "$BENCH_OUT"
cat "$BENCH_OUT"
log "wrote $BENCH_OUT"
