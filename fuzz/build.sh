#!/usr/bin/env bash
# Build the libFuzzer harnesses (clang, ASan + UBSan) against the pinned,
# patched llama.cpp (llama.cpp/source, materialized first) as static libraries
# in build/fuzz. Needs clang with libFuzzer (Debian: apt install clang).
# Prints the directory holding the fuzzer binaries.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 llama.cpp/materialize.py >&2
B=build/fuzz
# UBSan without its enum check: llama.cpp keeps some values read from a file in enums before it
# checks them (general.file_type -> llama_ftype, printed as "unknown" when out of range); the
# two such loads in the GGUF reader itself are fixed by patch 0005, the rest are benign.
SAN="-fsanitize=address,undefined -fno-sanitize=enum -fno-sanitize-recover=undefined -fno-omit-frame-pointer -g -O1"
launcher=()
command -v ccache >/dev/null && launcher=(-DCMAKE_C_COMPILER_LAUNCHER=ccache -DCMAKE_CXX_COMPILER_LAUNCHER=ccache)
cmake -S llama.cpp/source -B "$B/llama.cpp" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  -DCMAKE_C_COMPILER=clang -DCMAKE_CXX_COMPILER=clang++ "${launcher[@]}" \
  -DCMAKE_C_FLAGS="$SAN -fsanitize=fuzzer-no-link" -DCMAKE_CXX_FLAGS="$SAN -fsanitize=fuzzer-no-link" \
  -DBUILD_SHARED_LIBS=OFF -DGGML_NATIVE=OFF -DGGML_OPENMP=OFF -DGGML_BACKEND_DL=OFF -DGGML_CPU_ALL_VARIANTS=OFF \
  -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TOOLS=OFF -DLLAMA_BUILD_SERVER=OFF \
  -DLLAMA_BUILD_COMMON=OFF -DLLAMA_BUILD_APP=OFF -DLLAMA_OPENSSL=OFF >&2
cmake --build "$B/llama.cpp" --target llama ggml >&2
libs=$(find "$B/llama.cpp" -name 'libllama.a' -o -name 'libggml*.a' | sort -r | tr '\n' ' ')
for h in gguf_load; do
  clang++ -std=c++17 $SAN -fsanitize=fuzzer "fuzz/${h}_fuzzer.cpp" -o "$B/${h}_fuzzer" \
    -Illama.cpp/source/include -Illama.cpp/source/ggml/include \
    -Wl,--start-group $libs -Wl,--end-group -lpthread -ldl -lm >&2
done
echo "$B"
