#!/usr/bin/env python3
"""atheris harness over step35's own GGUF header reader and checks (step35/gguf/reader.py).

    python fuzz/gguf_py_fuzzer.py CORPUS_DIR -atheris_runs=200000

Every input goes through ``read_header`` (from a file object, as for a local
file or a byte range fetched from the Hub), ``check_model_header`` and each
tensor's size. The only acceptable failure is InvalidModelError; anything else
(an IndexError, a MemoryError, a hang) is a finding, and atheris stops with
the input that caused it.
"""

import io
import sys

import atheris

with atheris.instrument_imports(include=["step35.gguf"]):
    from step35 import gguf
    from step35.errors import InvalidModelError


def test_one_input(data: bytes) -> None:
    try:
        header = gguf.read_header(io.BytesIO(data), name="fuzz.gguf")
        gguf.check_model_header(header, "fuzz.gguf")
        for t in header.tensors:
            _ = t.nbytes
    except InvalidModelError:
        pass


def main() -> None:
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
