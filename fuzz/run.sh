#!/usr/bin/env bash
# Run the fuzzers against the seed corpus (fuzz/make_corpus.py).
#   bash fuzz/run.sh [NATIVE_RUNS] [PY_RUNS]    # defaults: 10000000, 200000
# NATIVE: fuzz/gguf_load_fuzzer (libFuzzer, ASan+UBSan; built by fuzz/build.sh).
# PY: fuzz/gguf_py_fuzzer.py (atheris; in .venv-fuzz with the step35 wheel).
# The corpus starts from the seeds and fuzz/regressions (inputs on which a
# crash or undefined behaviour was once found; each stays fixed). Findings
# (crash-*, leak-*, timeout-*) land in build/fuzz/findings; the growing corpus
# in build/fuzz/corpus-*. A finding makes the run fail. Prints libFuzzer's final stats (executions,
# edges covered) for each.
set -euo pipefail
cd "$(dirname "$0")/.."
NATIVE_RUNS=${1:-10000000}
PY_RUNS=${2:-200000}
PY=${FUZZ_PYTHON:-.venv-fuzz/bin/python}
SEED=${FUZZ_SEED:-1}  # fixed: the same corpus and seed mutate the same way every run
B=$(bash fuzz/build.sh)
mkdir -p "$B/findings" "$B/seeds"
"$PY" fuzz/make_corpus.py "$B/seeds" >/dev/null
for c in native py; do mkdir -p "$B/corpus-$c"; cp -n "$B/seeds"/*.gguf fuzz/regressions/*.gguf "$B/corpus-$c/"; done
echo "== native: gguf parser + llama_model_load(no_alloc), $NATIVE_RUNS runs"
"$B/gguf_load_fuzzer" "$B/corpus-native" -runs="$NATIVE_RUNS" -seed="$SEED" -max_len=262144 -timeout=10 -rss_limit_mb=4096 \
  -artifact_prefix="$B/findings/" -print_final_stats=1 -close_fd_mask=3 2>&1 | grep -E "^(#|stat::|==|SUMMARY|INFO: (Loaded|seed))" | tail -25
echo "== python: step35.gguf, $PY_RUNS runs"
"$PY" fuzz/gguf_py_fuzzer.py "$B/corpus-py" -atheris_runs="$PY_RUNS" -seed="$SEED" -max_len=262144 \
  -artifact_prefix="$B/findings/" -print_final_stats=1 2>&1 | grep -E "^(#|stat::|Done|===|Uncaught)" | tail -12
