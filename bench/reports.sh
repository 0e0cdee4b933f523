#!/usr/bin/env bash
# Report benchmark: how long reports, /v1/bourse/usage and the dashboard's series take on a
# large ledger, in SQLite and in PostgreSQL. Not a throughput benchmark: one query at a time.
#
#   bash bench/reports.sh
#
# For each store it generates a ledger of BENCH_ROWS rows over the last 30 days
# (crates/bourse/examples/ledger_bench.rs, through Ledger::append: the batch writer's own code,
# aggregates included), then
#   - times every report grouping over 24 h, 7 d and the whole ledger (bounds not aligned to
#     minutes), one key's own report, and the series and breakdowns the dashboard's pages ask
#     for, in process: the median and slowest of BENCH_RUNS runs;
#   - checks that the aggregates' totals equal a scan of the raw rows to the nano-dollar and
#     that `requests` equals the distinct request ids, and times that raw scan;
#   - times `bourse report` (the binary, start-up included), GET /v1/bourse/usage and every
#     dashboard page that reads the ledger, for each of its windows, on a running
#     `bourse serve` (curl's total time, logged in with an admin key), each the median of
#     BENCH_RUNS runs.
# Prints markdown (also saved in $BENCH_OUT_DIR/reports.md) to copy into bench/RESULTS.md.
#
# Environment:
#   BENCH_ROWS=10000000     rows generated per store
#   BENCH_RUNS=5            runs per query
#   BENCH_STORES="sqlite postgres"
#   BENCH_OUT_DIR=bench/out/reports   where the ledgers live (per million rows, about 0.5 GB in
#                           SQLite and 1.3 GB in PostgreSQL); a ledger already there with
#                           BENCH_ROWS rows is reused
#   BENCH_KEEP=0            1 keeps each store's ledger for the next run; 0 deletes it (and the
#                           cluster the script started) once that store is measured
#   BENCH_PG_URL=           a PostgreSQL database to use (must be empty on first run); without
#                           it the script starts its own cluster from /usr/lib/postgresql/*/bin
#                           (fsync off: the load is disposable) in BENCH_OUT_DIR/pg
#   BENCH_SKIP_BUILD=0      1 uses the binaries already in target/release
set -euo pipefail

BENCH_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$BENCH_DIR/.." && pwd)"
cd "$ROOT"
# shellcheck source=bench/common.sh
source "$BENCH_DIR/common.sh"

BENCH_ROWS="${BENCH_ROWS:-10000000}"
BENCH_RUNS="${BENCH_RUNS:-5}"
BENCH_STORES="${BENCH_STORES:-sqlite postgres}"
BENCH_OUT_DIR="${BENCH_OUT_DIR:-$BENCH_DIR/out/reports}"
BENCH_PG_URL="${BENCH_PG_URL:-}"
BENCH_SKIP_BUILD="${BENCH_SKIP_BUILD:-0}"
BENCH_KEEP="${BENCH_KEEP:-0}"
TARGET="${CARGO_TARGET_DIR:-$ROOT/target}"
BOURSE="$TARGET/release/bourse"
TOOL="$TARGET/release/examples/ledger_bench"

mkdir -p "$BENCH_OUT_DIR"
BENCH_OUT_DIR="$(cd "$BENCH_OUT_DIR" && pwd)"
WORK="$(mktemp -d)"
STARTED_PIDS=()
PG_STOP=()
cleanup() {
  for pid in "${STARTED_PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  [ ${#PG_STOP[@]} -eq 0 ] || "${PG_STOP[@]}" >/dev/null 2>&1 || true
  rm -rf "$WORK"
}
trap cleanup EXIT
die() {
  echo "reports.sh: $*" >&2
  exit 1
}

if [ "$BENCH_SKIP_BUILD" != 1 ]; then
  cargo build --release -p bourse --bin bourse --example ledger_bench >&2
fi
[ -x "$BOURSE" ] && [ -x "$TOOL" ] || die "missing $BOURSE or $TOOL (build them, or unset BENCH_SKIP_BUILD)"

# median_ms CMD...: runs CMD BENCH_RUNS times (output discarded), prints the median wall time.
median_ms() {
  local i t0 t1 times=()
  for i in $(seq 1 "$BENCH_RUNS"); do
    t0=$(date +%s%N)
    "$@" >/dev/null
    t1=$(date +%s%N)
    times+=($(((t1 - t0) / 1000000)))
  done
  printf '%s\n' "${times[@]}" | sort -n | awk '{ a[NR] = $1 } END { print a[int((NR + 1) / 2)] }'
}

# curl_ms URL: median of curl's total time, in ms, over BENCH_RUNS requests (each must be 200;
# with the session cookie in CURL_AUTH when set).
CURL_AUTH=()
curl_ms() {
  local i times=() out
  for i in $(seq 1 "$BENCH_RUNS"); do
    out=$(curl -s "${CURL_AUTH[@]}" -o "$WORK/usage.json" -w '%{http_code} %{time_total}' "$1")
    [ "${out%% *}" = 200 ] || die "GET $1 answered ${out%% *}: $(head -c 300 "$WORK/usage.json")"
    times+=("$(awk -v s="${out#* }" 'BEGIN { printf "%d", s * 1000 }')")
  done
  printf '%s\n' "${times[@]}" | sort -n | awk '{ a[NR] = $1 } END { print a[int((NR + 1) / 2)] }'
}

REPORT="$BENCH_OUT_DIR/reports.md"
{
  echo "## Reports at scale ($(date -u +%Y-%m-%d), commit $(git rev-parse --short HEAD))"
  echo
  echo "\`bash bench/reports.sh\`: $BENCH_ROWS generated rows per store over 30 days; $(nproc) cores, $(awk '/MemTotal/ { printf "%.0f GB", $2 / 1048576 }' /proc/meminfo) RAM."
} >"$REPORT"

for store in $BENCH_STORES; do
  case "$store" in
    sqlite) url="sqlite:$BENCH_OUT_DIR/ledger-$BENCH_ROWS.db" ;;
    postgres)
      if [ -n "$BENCH_PG_URL" ]; then url="$BENCH_PG_URL"; else start_postgres; url="$PG_URL"; fi
      ;;
    *) die "unknown store $store (sqlite or postgres)" ;;
  esac
  have=$("$TOOL" count --url "$url")
  if [ "$have" != "$BENCH_ROWS" ]; then
    [ "$have" = 0 ] || die "$store: the ledger holds $have rows, not $BENCH_ROWS: remove it (or its database) first"
    echo "$store: generating $BENCH_ROWS rows" >&2
    "$TOOL" generate --url "$url" --rows "$BENCH_ROWS" | tee "$WORK/generate.txt" >&2
    if [ "$store" = postgres ]; then
      # What autovacuum does to a table that has grown: planner statistics.
      "$TOOL" analyze --url "$url" >&2
    fi
    generated="$(cat "$WORK/generate.txt")"
  else
    generated="reused: $BENCH_ROWS rows already there"
  fi
  {
    echo
    echo "### $store"
    echo
    echo "Load: $generated."
    echo
    "$TOOL" query --url "$url" --runs "$BENCH_RUNS" --verify
  } >>"$REPORT"

  # The binary end to end, and the HTTP endpoints (the dashboard behind an admin key).
  cfg="$WORK/bourse-$store.toml"
  port="$(free_port)"
  printf '[server]\nlisten = "127.0.0.1:%s"\nadmin_keys = ["env:BENCH_ADMIN_KEY"]\n\n[providers.sim]\nkind = "openai-compatible"\nbase_url = "http://127.0.0.1:9/v1"\n\n[storage]\nurl = "%s"\n' \
    "$port" "$url" >"$cfg"
  export BENCH_ADMIN_KEY="bench-admin-$RANDOM$RANDOM"
  {
    echo
    echo "| the binary (start-up included), and HTTP (curl's total time); median of $BENCH_RUNS | ms |"
    echo "|---|---:|"
    for by in model key tenant day; do
      echo "| \`bourse report --since 30d --by $by\` | $(median_ms "$BOURSE" report --config "$cfg" --since 30d --by "$by") |"
    done
  } >>"$REPORT"
  spawn "bourse-$store" "$BOURSE" serve --config "$cfg"
  wait_ready "bourse-$store" "$SPAWNED_PID" "$port"
  {
    echo "| \`GET /v1/bourse/usage?since=30d&by=model\` | $(curl_ms "http://127.0.0.1:$port/v1/bourse/usage?since=30d&by=model") |"
    echo "| \`GET /v1/bourse/usage?since=7d&by=provider\` | $(curl_ms "http://127.0.0.1:$port/v1/bourse/usage?since=7d&by=provider") |"
    echo "| \`GET /v1/bourse/usage?since=24h&by=key\` | $(curl_ms "http://127.0.0.1:$port/v1/bourse/usage?since=24h&by=key") |"
  } >>"$REPORT"
  # Log in as the form does (same-origin POST), then every page that reads the ledger.
  code=$(curl -s -o /dev/null -w '%{http_code}' -c "$WORK/cookies" -H 'Sec-Fetch-Site: same-origin' \
    --data-urlencode "key=$BENCH_ADMIN_KEY" "http://127.0.0.1:$port/dashboard/login")
  [ "$code" = 303 ] || die "dashboard login answered $code"
  CURL_AUTH=(-b "$WORK/cookies")
  for page in overview models tenants routing; do
    for w in 1h 24h 7d 30d; do
      echo "| \`GET /dashboard/$page?window=$w\` | $(curl_ms "http://127.0.0.1:$port/dashboard/$page?window=$w") |"
    done
  done >>"$REPORT"
  CURL_AUTH=()
  kill "$SPAWNED_PID"
  wait "$SPAWNED_PID" 2>/dev/null || true
  if [ "$BENCH_KEEP" != 1 ]; then
    case "$url" in
      sqlite:*) rm -f "${url#sqlite:}" "${url#sqlite:}-wal" "${url#sqlite:}-shm" ;;
      *)
        if [ ${#PG_STOP[@]} -gt 0 ]; then
          "${PG_STOP[@]}" >/dev/null 2>&1 || true
          PG_STOP=()
          rm -rf "$BENCH_OUT_DIR/pg"
        fi
        ;;
    esac
  fi
done

cat "$REPORT"
