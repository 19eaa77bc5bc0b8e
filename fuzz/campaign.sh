#!/usr/bin/env bash
# A long native fuzzing campaign on every core (libFuzzer's fork mode): the
# same harness, corpus and flags as fuzz/run.sh, for a stated time instead of
# a number of runs. The running total of executions is the "#N" of each
# status line; the last one is the campaign's.
#   bash fuzz/campaign.sh [SECONDS] [JOBS]     # defaults: 5400 s, the number of cores
# Findings (crash-*, leak-*, timeout-*, slow-unit-*) land in build/fuzz/findings-campaign, the
# whole log in build/fuzz/campaign.log.
# A timeout is an input that took over 10 s; rerun it alone
# (build/fuzz/gguf_load_fuzzer FILE) before believing it: a starved or paused
# fuzzer produces them too.
set -euo pipefail
cd "$(dirname "$0")/.."
SECONDS_TOTAL=${1:-5400}
JOBS=${2:-$(nproc)}
PY=${FUZZ_PYTHON:-.venv-fuzz/bin/python}
SEED=${FUZZ_SEED:-1}
B=$(bash fuzz/build.sh)
mkdir -p "$B/findings-campaign" "$B/seeds" "$B/corpus-native"
"$PY" fuzz/make_corpus.py "$B/seeds" >/dev/null
cp -n "$B/seeds"/*.gguf fuzz/regressions/*.gguf "$B/corpus-native/"
echo "== native campaign: $JOBS jobs for $SECONDS_TOTAL s"
"$B/gguf_load_fuzzer" "$B/corpus-native" fuzz/regressions -fork="$JOBS" -max_total_time="$SECONDS_TOTAL" \
  -seed="$SEED" -max_len=262144 -timeout=10 -rss_limit_mb=4096 -artifact_prefix="$B/findings-campaign/" \
  -print_final_stats=1 -close_fd_mask=3 2>&1 | tee "$B/campaign.log" | grep -E "^(#|INFO: fuzzed|==|SUMMARY)" | tail -5
