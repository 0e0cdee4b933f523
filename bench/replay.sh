#!/usr/bin/env bash
# Replay benchmark: how long `bourse replay` takes on a large ledger (issue 19: 10 million rows
# in under a minute), end to end through the binary, start-up included.
#
#   bash bench/replay.sh
#
# For each store it generates a ledger of BENCH_ROWS rows over the last 30 days with the report
# benchmark's generator (crates/bourse/examples/ledger_bench.rs, through Ledger::append), writes
# a config and two catalogs describing its models and routes (`ledger_bench replay-config`),
# then times `bourse replay --since 30d` under each scenario: nothing changed, `--policy no_cn`,
# `--route cheap`, and `--catalog catalog-next.toml` (BENCH_RUNS runs each, the median and the
# slowest), and prints the policy scenario's summary. Prints markdown (also saved in
# $BENCH_OUT_DIR/replay.md) to copy into bench/RESULTS.md.
#
# Environment:
#   BENCH_ROWS=10000000     rows generated per store
#   BENCH_RUNS=3            runs per scenario
#   BENCH_STORES="sqlite"   sqlite and/or postgres
#   BENCH_OUT_DIR=bench/out/replay   where the ledgers live; a ledger already there with
#                           BENCH_ROWS rows is reused (bench/reports.sh's, with BENCH_KEEP=1
#                           and the same BENCH_OUT_DIR, too)
#   BENCH_PG_URL=           a PostgreSQL database to use (must be empty on first run); without
#                           it the script starts its own cluster (as bench/reports.sh does)
#   BENCH_SKIP_BUILD=0      1 uses the binaries already in target/release
set -euo pipefail

BENCH_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$BENCH_DIR/.." && pwd)"
cd "$ROOT"
# shellcheck source=bench/common.sh
source "$BENCH_DIR/common.sh"

BENCH_ROWS="${BENCH_ROWS:-10000000}"
BENCH_RUNS="${BENCH_RUNS:-3}"
BENCH_STORES="${BENCH_STORES:-sqlite}"
BENCH_OUT_DIR="${BENCH_OUT_DIR:-$BENCH_DIR/out/replay}"
BENCH_PG_URL="${BENCH_PG_URL:-}"
BENCH_SKIP_BUILD="${BENCH_SKIP_BUILD:-0}"
TARGET="${CARGO_TARGET_DIR:-$ROOT/target}"
BOURSE="$TARGET/release/bourse"
TOOL="$TARGET/release/examples/ledger_bench"

mkdir -p "$BENCH_OUT_DIR"
BENCH_OUT_DIR="$(cd "$BENCH_OUT_DIR" && pwd)"
WORK="$(mktemp -d)"
PG_STOP=()
cleanup() {
  [ ${#PG_STOP[@]} -eq 0 ] || "${PG_STOP[@]}" >/dev/null 2>&1 || true
  rm -rf "$WORK"
}
trap cleanup EXIT
die() {
  echo "replay.sh: $*" >&2
  exit 1
}

if [ "$BENCH_SKIP_BUILD" != 1 ]; then
  cargo build --release -p bourse --bin bourse --example ledger_bench >&2
fi
[ -x "$BOURSE" ] && [ -x "$TOOL" ] || die "missing $BOURSE or $TOOL (build them, or unset BENCH_SKIP_BUILD)"

# times_ms CMD...: runs CMD BENCH_RUNS times (stdout discarded, stderr kept in $WORK/err);
# prints "median slowest" wall times in ms.
times_ms() {
  local i t0 t1 times=()
  for i in $(seq 1 "$BENCH_RUNS"); do
    t0=$(date +%s%N)
    "$@" >/dev/null 2>"$WORK/err" || die "$* failed: $(cat "$WORK/err")"
    t1=$(date +%s%N)
    times+=($(((t1 - t0) / 1000000)))
  done
  printf '%s\n' "${times[@]}" | sort -n | awk '{ a[NR] = $1 } END { print a[int((NR + 1) / 2)], a[NR] }'
}

REPORT="$BENCH_OUT_DIR/replay.md"
{
  echo "## Replay at scale ($(date -u +%Y-%m-%d), commit $(git rev-parse --short HEAD))"
  echo
  echo "\`bash bench/replay.sh\`: $BENCH_ROWS generated rows per store over 30 days; $(nproc) cores, $(awk '/MemTotal/ { printf "%.0f GB", $2 / 1048576 }' /proc/meminfo) RAM; load average before: $(cut -d' ' -f1-3 /proc/loadavg)."
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
    [ "$store" != postgres ] || "$TOOL" analyze --url "$url" >&2
    generated="$(cat "$WORK/generate.txt")"
  else
    generated="reused: $BENCH_ROWS rows already there"
  fi
  dir="$WORK/$store"
  "$TOOL" replay-config --dir "$dir" --url "$url" >&2
  cfg="$dir/bourse.toml"
  {
    echo
    echo "### $store"
    echo
    echo "Load: $generated."
    echo
    echo "| \`bourse replay --since 30d\` (the binary, start-up included) | median ms | slowest ms |"
    echo "|---|---:|---:|"
  } >>"$REPORT"
  for scenario in "" "--policy no_cn" "--route cheap" "--catalog $dir/catalog-next.toml"; do
    # shellcheck disable=SC2086
    read -r median slowest < <(times_ms "$BOURSE" replay --config "$cfg" --since 30d $scenario)
    echo "| ${scenario:-(nothing changed)} | $median | $slowest |" | sed "s|$dir/||" >>"$REPORT"
  done
  {
    echo
    echo "\`bourse replay --since 30d --policy no_cn\`:"
    echo
    echo '```'
    "$BOURSE" replay --config "$cfg" --since 30d --policy no_cn 2>/dev/null
    echo '```'
  } >>"$REPORT"
done

cat "$REPORT"
