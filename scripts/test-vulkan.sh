#!/usr/bin/env bash
# The Vulkan plugin, end to end, without a GPU: build the step35-vulkan wheel,
# install it with the core wheel (dist/wheel, from scripts/test.sh; built here
# if missing) into a FRESH venv, and run tests/test_vulkan.py there on Mesa's
# lavapipe software driver: the plugin must load, put the weights on the
# Vulkan device, and match the CPU backend (greedy tokens equal, logits within
# tolerance). Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
export CCACHE_BASEDIR=${CCACHE_BASEDIR:-$PWD} CCACHE_NOHASHDIR=${CCACHE_NOHASHDIR:-1} CCACHE_MAXSIZE=${CCACHE_MAXSIZE:-5G}
t0=$(date +%s)

# shellcheck disable=SC2207
vk_args=($(bash scripts/vulkan-sdk.sh))
BUILD_PY=$(bash scripts/build-env.sh)
if ! ls dist/wheel/step35-*.whl >/dev/null 2>&1; then
  mkdir -p dist/wheel && "$BUILD_PY" -m build --wheel -o dist/wheel .
fi
core=$(ls dist/wheel/step35-*.whl)
mkdir -p dist/plugins && rm -f dist/plugins/step35_vulkan-*.whl
"$BUILD_PY" -m build --wheel -o dist/plugins backends/vulkan "${vk_args[@]}"
plugin=$(ls dist/plugins/step35_vulkan-*.whl)
t1=$(date +%s)
echo "== $plugin ($(du -h "$plugin" | cut -f1)) built in $((t1 - t0)) s"

rm -rf .venv-vulkan
"$PY" -m venv .venv-vulkan
.venv-vulkan/bin/python -m pip install -q --upgrade pip
.venv-vulkan/bin/python -m pip install -q "$core" "$plugin" -r tests/requirements.txt
# lavapipe is a CPU-type Vulkan device, which ggml skips unless it is named.
export GGML_VK_VISIBLE_DEVICES=${GGML_VK_VISIBLE_DEVICES:-0}
.venv-vulkan/bin/step35 info
cd tests
../.venv-vulkan/bin/python -m pytest -c ../pyproject.toml --rootdir .. test_vulkan.py test_backends.py -s "$@"
echo "== Vulkan plugin checked in $(( $(date +%s) - t0 )) s"
