#!/usr/bin/env bash
# Smoke-test the cross-built linux aarch64 wheel under qemu-user, with Debian's
# arm64 CPython 3.11 from the sysroot (scripts/cross-aarch64/setup.sh), and
# compare its greedy output with the x86_64 wheel's.
#
#   bash scripts/cross-aarch64/smoke.sh [WHEEL]   # WHEEL: default dist/cross-aarch64/step35-*linux_aarch64.whl
#   bash scripts/cross-aarch64/smoke.sh --x86     # only the x86_64 greedy ids (.venv-test)
#
# Steps (aarch64): a venv under qemu ($STEP35_CROSS_DIR/venv-arm64, reused;
# FRESH=1 recreates it), the wheel + test-requires installed into it (numpy etc. are
# PyPI's aarch64 wheels), `step35 info`, the tiny test model (built with
# step35.testing on x86_64 and under qemu: the two files must be identical),
# a greedy generate printing the token ids with the chosen CPU variant, the
# same with every other CPU variant this (emulated) CPU runs (STEP35_CPU_VARIANT),
# the same with the x86_64 wheel, the comparison, and then the not-slow tests
# in a directory holding only tests/ and pyproject.toml, with cibuildwheel's
# test-requires and test-command read from pyproject.toml (as the manylinux leg).
#
# Environment:
#   QEMU_CPU      emulated CPU (qemu-aarch64 reads it): max (default: SVE, SVE2,
#                 i8mm, SME -> armv9.2_2), neoverse-n1 / cortex-a76 (dotprod+fp16
#                 -> armv8.2_2), a64fx (SVE, no dotprod), cortex-a53 (-> armv8.0_1);
#                 SVE width e.g. QEMU_CPU=max,sve-default-vector-length=32 (256 bit)
#   PROMPT, N     prompt and number of greedy tokens (default "The capital of France is", 32)
#   VARIANTS=0    skip the per-variant runs; SKIP_TESTS=1 skip pytest
#   TEST_REQS=full  install tests/requirements.txt (less torch/transformers) instead
#                 of cibuildwheel's test-requires (pyproject.toml), so that the
#                 server/client tests run instead of skipping
#   PYTEST_ARGS   extra pytest arguments; TEST_TIMEOUT seconds (default 5400)
#   X86_PY        the x86_64 python with the x86_64 wheel (default .venv-test/bin/python)
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
ROOT=${AARCH64_ROOT:-/opt/aarch64-root}
CROSS=${STEP35_CROSS_DIR:-/opt/step35-cross}
V=${ARM_VENV:-$CROSS/venv-arm64}
W=${SMOKE_DIR:-$CROSS/smoke}
X86_PY=${X86_PY:-$REPO/.venv-test/bin/python}
PROMPT=${PROMPT:-"The capital of France is"}
N=${N:-32}
export QEMU_CPU=${QEMU_CPU:-max}
export PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONDONTWRITEBYTECODE=1
MODE=arm
if [ "${1:-}" = "--x86" ]; then MODE=x86; shift; fi

rm -rf "$W" && mkdir -p "$W"
stamp() { echo "== [$(date +%T)] $*"; }

# The greedy run: one JSON line (CPU variant, prompt ids, greedy ids, text).
cat > "$W/greedy.py" <<'EOF'
import json, platform, sys, time
import step35
path, prompt, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
t0 = time.time()
r = step35.backends()
with step35.Model(path) as m:
    ids = m.tokenize(prompt)
    out = m.generate(prompt, max_tokens=n, temperature=0)
print(json.dumps({"machine": platform.machine(), "cpu_variant": r.cpu_variant,
                  "scores": {v.name: v.score for v in r.cpu_variants},
                  "prompt_ids": ids, "greedy_ids": list(out.tokens), "text": out.text,
                  "finish": out.finish_reason, "seconds": round(time.time() - t0, 1)}))
EOF

# The tiny model: step35.testing's deterministic builder (GGUF is portable), in
# F32 with 32-wide heads, as tests/conftest.py's tiny32 (the variant the tests use
# for greedy equality across kernels): the F16 tiny model's random logits have
# near-ties that even two x86_64 CPU variants break differently.
build_model() {  # PY OUTDIR
  "$1" -c 'import dataclasses, sys; from step35.testing import SIZES, build_model
spec = dataclasses.replace(SIZES["tiny"], name="tiny32", dtype="f32", embd_dtype="f32", head_dim=32)
for f in build_model(sys.argv[1] + "/step35-tiny.gguf", spec, seed=0): print(f)' "$2" >/dev/null
}

x86_greedy() {
  [ -x "$X86_PY" ] || { echo "no x86_64 python with the wheel at $X86_PY (set X86_PY)" >&2; return 1; }
  stamp "x86_64 wheel: $("$X86_PY" -c 'import step35, platform; print(step35.__version__, platform.machine(), step35.__file__)')"
  [ -f "$W/model-x86/step35-tiny.gguf" ] || { mkdir -p "$W/model-x86" && build_model "$X86_PY" "$W/model-x86"; }
  (cd "$W" && "$X86_PY" greedy.py "${MODEL:-$W/model-x86/step35-tiny.gguf}" "$PROMPT" "$N") | tee "$W/x86.json"
}

if [ "$MODE" = x86 ]; then
  x86_greedy
  "$X86_PY" -c 'import json,sys; d=json.load(open(sys.argv[1])); print("x86_64 CPU variant:", d["cpu_variant"]); print("x86_64 greedy ids:", d["greedy_ids"])' "$W/x86.json"
  exit 0
fi

WHEEL=${1:-$(ls -t "$REPO"/dist/cross-aarch64/step35-*linux_aarch64.whl 2>/dev/null | head -1)}
[ -f "$WHEEL" ] || { echo "no aarch64 wheel (run scripts/cross-aarch64/build.sh first, or pass its path)" >&2; exit 1; }
[ -x "$ROOT/usr/bin/python3.11" ] || { echo "run scripts/cross-aarch64/setup.sh first" >&2; exit 1; }
stamp "wheel $WHEEL, QEMU_CPU=$QEMU_CPU"

# ---- the aarch64 venv ------------------------------------------------------------
# No binfmt_misc in this container: bin/python3.11 is a wrapper that runs the
# sysroot's python3.11 under qemu-aarch64 with argv[0] = the wrapper, so that
# sys.executable (subprocesses, pip's console scripts, whose shebang names it)
# and the venv (pyvenv.cfg beside it) are this venv's.
if [ "${FRESH:-0}" = 1 ] || [ ! -x "$V/bin/pip3" ]; then
  stamp "creating the aarch64 venv $V"
  rm -rf "$V"
  qemu-aarch64 -L "$ROOT" "$ROOT/usr/bin/python3.11" -m venv --without-pip "$V"
  rm "$V/bin/python3.11"
  cat > "$V/bin/python3.11" <<EOF
#!/bin/sh
# aarch64 CPython 3.11 (Debian, $ROOT) under qemu-user; argv[0] stays this path.
exec qemu-aarch64 -L $ROOT -0 "\$0" $ROOT/usr/bin/python3.11 "\$@"
EOF
  chmod +x "$V/bin/python3.11"
  "$V/bin/python" -m ensurepip >/dev/null
fi
PY=$V/bin/python
"$PY" -c 'import platform, sys; assert platform.machine() == "aarch64", platform.machine(); print("aarch64 python", sys.version.split()[0], sys.executable)'

stamp "installing the wheel (pip under qemu is slow)"
# cibuildwheel's test-requires and test-command, read from pyproject.toml
cibw() { python3 -c 'import sys, tomllib, shlex; c = tomllib.load(open(sys.argv[1], "rb"))["tool"]["cibuildwheel"]
print("\n".join(c["test-requires"]) if sys.argv[2] == "requires" else c["test-command"])' "$REPO/pyproject.toml" "$1"; }
mapfile -t reqs < <(cibw requires)
if [ "${TEST_REQS:-}" = full ]; then
  mapfile -t reqs < <(grep -vE '^\s*(#|$)|^(torch|transformers)\b' "$REPO/tests/requirements.txt")
fi
"$PY" -m pip install -q "$WHEEL" "${reqs[@]}"
"$PY" -m pip install -q --force-reinstall --no-deps "$WHEEL"   # the same version number rebuilt
t_inst=$(date +%s)

stamp "step35 info (console script; QEMU_CPU=$QEMU_CPU)"
(cd "$W" && "$V/bin/step35" info)

stamp "tiny model: built under qemu and on x86_64 (must be byte-identical)"
mkdir -p "$W/model-arm"
build_model "$PY" "$W/model-arm"
MODEL=$W/model-arm/step35-tiny.gguf
if [ -x "$X86_PY" ]; then
  mkdir -p "$W/model-x86" && build_model "$X86_PY" "$W/model-x86"
  if cmp -s "$MODEL" "$W/model-x86/step35-tiny.gguf"; then echo "model files identical ($(sha256sum "$MODEL" | cut -c1-16))"
  else echo "WARNING: the model files differ between aarch64 and x86_64 builders"; fi
fi

stamp "greedy generate, aarch64 (best variant)"
(cd "$W" && "$PY" greedy.py "$MODEL" "$PROMPT" "$N") | tee "$W/arm.json"

if [ "${VARIANTS:-1}" != 0 ]; then
  for v in $("$PY" -c 'import json,sys; d=json.load(open(sys.argv[1])); print(" ".join(k for k,s in d["scores"].items() if s > 0 and k != d["cpu_variant"]))' "$W/arm.json"); do
    stamp "greedy generate, aarch64, STEP35_CPU_VARIANT=$v"
    (cd "$W" && STEP35_CPU_VARIANT=$v "$PY" greedy.py "$MODEL" "$PROMPT" "$N") | tee "$W/arm-$v.json"
  done
fi

rc=0
if [ -x "$X86_PY" ]; then
  MODEL=$MODEL x86_greedy
  "$X86_PY" - "$W" <<'EOF' || rc=3
import json, pathlib, sys
w = pathlib.Path(sys.argv[1])
x = json.loads((w / "x86.json").read_text())
print(f"x86_64  {x['cpu_variant']:<12} {x['greedy_ids']}")
same = True
for f in sorted(w.glob("arm*.json")):
    a = json.loads(f.read_text())
    eq = a["greedy_ids"] == x["greedy_ids"] and a["prompt_ids"] == x["prompt_ids"]
    same &= eq
    first = next((i for i, (p, q) in enumerate(zip(a["greedy_ids"], x["greedy_ids"])) if p != q), None)
    print(f"aarch64 {a['cpu_variant']:<12} {'EQUAL' if eq else f'DIFFERENT (first at {first})'} {a['greedy_ids'] if not eq else ''}")
print("greedy output aarch64 == x86_64:", "yes" if same else "NO")
sys.exit(0 if same else 1)
EOF
fi

if [ "${SKIP_TESTS:-0}" != 1 ]; then
  # Only tests/ and pyproject.toml, like cibuildwheel's test-sources: nothing of
  # the checkout can shadow the installed package; tests that need the source
  # tree skip (tests/conftest.py source_file()).
  T=$W/testdir && mkdir -p "$T" && cp -r "$REPO/tests" "$REPO/pyproject.toml" "$T/"
  rm -rf "$T/tests/agents/node_modules"
  cmd=$(cibw command)   # python -m pytest -c pyproject.toml tests -m "not slow" ...
  [[ $cmd == "python "* ]] || { echo "unexpected test-command: $cmd" >&2; exit 1; }
  stamp "under qemu (timeout ${TEST_TIMEOUT:-5400} s): $cmd ${PYTEST_ARGS:-}"
  # shellcheck disable=SC2086
  (cd "$T" && eval "timeout ${TEST_TIMEOUT:-5400} \"\$PY\" ${cmd#python } ${PYTEST_ARGS:-}") || rc=$((rc ? rc : $?))
fi
stamp "done (rc $rc)"
exit $rc
