#!/usr/bin/env python3
"""Write the fuzzers' seed corpus: small, valid Step 3.5 GGUFs made by step35.testing.

    python fuzz/make_corpus.py OUT_DIR

The seeds are the built-in model builder's own files, shrunk so that a fuzzer
runs thousands of inputs a second: a "micro" model (2 layers, 32-wide, 2
experts) whose vocabulary keeps the 256 byte tokens and the chat specials,
written as one file and as a 3-part split set, plus its header alone. A
complete tiny model would be 7 MB per input. Deterministic: the same bytes
every run.
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    out = Path(argv[1])
    out.mkdir(parents=True, exist_ok=True)
    from step35 import testing
    from step35.gguf import read_header

    full = testing.specs.vocab()
    # the 256 byte tokens and the chat specials, each text once (llama.cpp refuses repeated texts)
    specials = [i for i, t in enumerate(full.tokens) if t.startswith("<|") or t.startswith("<")][-16:]
    keep = list(dict.fromkeys(list(range(256)) + specials))
    index = {old: new for new, old in enumerate(keep)}
    micro = dataclasses.replace(
        full, tokens=tuple(full.tokens[i] for i in keep), token_type=tuple(full.token_type[i] for i in keep),
        merges=(), bos=index.get(full.bos, 0), eos=index.get(full.eos, 1), eot=index.get(full.eot, 1),
        pad=index.get(full.pad, 0), digest="micro")
    testing.build.vocab = lambda: micro  # type: ignore[attr-defined]  # the builder reads the vocabulary through this
    spec = dataclasses.replace(testing.SIZES["tiny"], name="micro", n_layer=2, n_embd=32, head_dim=8, embd_dtype="f16",
                               n_head_full=2, n_head_swa=2, n_head_kv_full=1, n_head_kv_swa=1, n_ff=32,
                               n_ff_exp=16, n_ff_shexp=16, n_expert=2, n_expert_used=1, n_dense_lead=1,
                               swiglu_clamp_exp=(0.0, 7.0), swiglu_clamp_shexp=(0.0, 7.0))
    single = testing.build_model(out / "micro.gguf", spec)[0]
    parts = testing.build_model(out / "split" / "micro.gguf", spec, n_split=3)
    for i, p in enumerate(parts, 1):
        (out / f"micro-part{i}.gguf").write_bytes(p.read_bytes())
    header = read_header(single)
    (out / "micro-header-only.gguf").write_bytes(single.read_bytes()[:header.header_size])
    for p in parts:
        p.unlink()
    (out / "split").rmdir()
    for p in sorted(out.glob("*.gguf")):
        print(f"{p.name}: {p.stat().st_size} bytes")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
