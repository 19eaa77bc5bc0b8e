#!/usr/bin/env bash
# Build the step35 wheel with the latest pip and `build` (a fresh .venv-build;
# build/ and ccache are reused), install it into a FRESH virtual environment,
# and run the test suite against the installed wheel (never against the source
# tree). Extra arguments go to pytest, e.g.
#   bash scripts/test.sh -m "not slow"
# STEP35_CACHE=$(mktemp -d) makes the build fetch the pinned llama.cpp sdist
# from the package index (cold path); STEP35_BUILD_ARGS go to `python -m build`.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
export CCACHE_BASEDIR=${CCACHE_BASEDIR:-$PWD} CCACHE_NOHASHDIR=${CCACHE_NOHASHDIR:-1}
export CCACHE_MAXSIZE=${CCACHE_MAXSIZE:-5G}

t0=$(date +%s)
rm -rf dist/wheel && mkdir -p dist/wheel
BUILD_PY=$(bash scripts/build-env.sh --fresh)
echo "== build frontend: $("$BUILD_PY" -m pip --version | cut -d' ' -f1-2), build $("$BUILD_PY" -m build --version | cut -d' ' -f2)"
# shellcheck disable=SC2086
"$BUILD_PY" -m build --wheel -o dist/wheel . ${STEP35_BUILD_ARGS:-}
wheel=$(ls dist/wheel/step35-*.whl)
t1=$(date +%s)
echo "== wheel: $wheel ($(du -h "$wheel" | cut -f1)), built in $((t1 - t0)) s"

rm -rf .venv-test
"$PY" -m venv .venv-test
.venv-test/bin/python -m pip install -q --upgrade pip
.venv-test/bin/python -m pip install -q "$wheel" -r tests/requirements.txt
t2=$(date +%s)
echo "== fresh venv with the wheel installed in $((t2 - t1)) s"

# Run from tests/ so that nothing from the checkout shadows the installed package.
cd tests
../.venv-test/bin/python -m pytest -c ../pyproject.toml --rootdir .. "$@"
t3=$(date +%s)
echo "== tests ran in $((t3 - t2)) s"
