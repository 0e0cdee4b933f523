#!/usr/bin/env bash
# The synthetic benchmark of routing on evidence (crates/bourse/tests/evidence_bench.rs), at
# bench size: four tasks, five scripted models with different per-task accuracy and prices,
# and the same items served three ways (always the reference model, the static `strong`
# floor, and per-task routes floored on evidence with cascades). Prints accuracy, cost (the
# ledgers' totals) and upstream attempts per strategy, the table bench/RESULTS.md records.
# Accuracy and cost do not depend on speed, so the debug test build serves.
#
#   bash bench/evidence.sh                 # 500 items per task, 300 evaluation items
#   ITEMS=2000 EVAL=500 bash bench/evidence.sh
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
BOURSE_BENCH_ITEMS="${ITEMS:-500}" BOURSE_BENCH_EVAL_ITEMS="${EVAL:-300}" \
  cargo test -q -p bourse --test evidence_bench -- --nocapture 2>&1 | grep -E '^\||items per strategy|test result'
