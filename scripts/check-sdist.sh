#!/usr/bin/env bash
# Build the sdist with the latest `build`, report its size, and build + import
# a wheel from it with uv (the other frontend users run) and the llama.cpp
# download made impossible (empty cache, bogus override path): the sdist must
# carry the trimmed, patched source itself.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
export CCACHE_BASEDIR=${CCACHE_BASEDIR:-$PWD} CCACHE_NOHASHDIR=${CCACHE_NOHASHDIR:-1}
rm -rf dist/sdist && mkdir -p dist/sdist
BUILD_PY=$(bash scripts/build-env.sh)
"$BUILD_PY" -m build --sdist -o dist/sdist . >/dev/null
sdist=$(ls dist/sdist/step35-*.tar.gz)
size=$(stat -c %s "$sdist")
echo "sdist: $sdist $((size / 1024)) KiB"
if [ "$size" -gt $((15 * 1024 * 1024)) ]; then echo "sdist is over 15 MiB" >&2; exit 1; fi
# List once into a file: `tar | grep -q` under pipefail fails when grep exits
# early and tar dies of SIGPIPE.
listing=$(mktemp)
tar -tzf "$sdist" >"$listing"
echo "sdist: $(wc -l <"$listing") files"
grep -q 'llama.cpp/source/.step35-stamp.json' "$listing" || { echo "sdist lacks the llama.cpp source" >&2; exit 1; }
if grep -qE '(^|/)\.venv|/build/' "$listing"; then echo "sdist carries build junk" >&2; exit 1; fi
rm -f "$listing"

empty=$(mktemp -d)
# uv unpacks the sdist in its cache: kept under the repo (CCACHE_BASEDIR), the
# compiler sees the same relative paths as in the wheel build and ccache hits.
UV_CACHE_DIR=${UV_CACHE_DIR:-$PWD/build/uv-cache} STEP35_CACHE="$empty" STEP35_LLAMA_SDIST="$empty/no-such-file.tar.gz" \
  "$(dirname "$BUILD_PY")/uv" build --python "$BUILD_PY" --wheel -o dist/sdist "$sdist"
rm -rf .venv-sdist && "$PY" -m venv .venv-sdist
.venv-sdist/bin/pip install -q dist/sdist/step35-*.whl
(cd "$empty" && "$OLDPWD/.venv-sdist/bin/step35" info >"$empty/info.txt")
head -5 "$empty/info.txt"
rm -rf "$empty" .venv-sdist
