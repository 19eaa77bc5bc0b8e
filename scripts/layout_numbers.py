"""The package's size and shape at a git revision: modules, lines, the largest files,
function-level imports, and how many places state each of a few facts.

    python scripts/layout_numbers.py [REV ...]      # default: HEAD (and the working tree with --tree)

A "copy" of a fact is a line in python/step35 or csrc that states it literally (the
patterns below); one home per fact means a count of 1 (plus the places that import it).
"""

from __future__ import annotations

import argparse
import ast
import re
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

#: fact -> regex over source lines (comments and docstrings count: they restate it too)
FACTS = {
    "INT32 max (2147483647)": r"2147483647|2\*\*31 - 1|1 << 31\) - 1|INT32_MAX\s*=",
    "slot limit 256": r"\b256\b.*(slot|seq)|(slot|seq).*\b256\b|MAX_SEQ\s*=",
    "RPC port 50052": r"\b50052\b",
    "16 MiB body limit": r"16 \* 1024 \* 1024|16 << 20|1 << 24|16 MiB",
    "top_p default 0.95": r"top_p[^=\n]*=\s*0\.95|top_p = 0\.95f",
    "top_k default 40": r"top_k[^=\n]*=\s*40\b|top_k = 40;",
    "n_ctx default 4096": r"n_ctx[^=\n]*=\s*4096|n_ctx = 4096|ctx-size.*default=4096",
    "KV type list (iq4_nl)": r"[\"']iq4_nl[\"']|GGML_TYPE_IQ4_NL\)",
    "flash_attn ids (-1/0/1)": r"[\"']auto[\"']:\s*-1|LLAMA_FLASH_ATTN_TYPE_AUTO\)|int flash_attn = -1",
    "output modes (0/1/2)": r"[\"']last[\"']:\s*1|outputs == 1\b|Outputs::Last\)",
}


def files(rev: str | None) -> dict[str, str]:
    """path -> text of python/step35/**.py and csrc/* at ``rev`` (None: the working tree)."""
    if rev is None:
        paths = [p for p in (REPO / "python" / "step35").rglob("*.py")] + sorted((REPO / "csrc").iterdir())
        return {str(p.relative_to(REPO)): p.read_text(encoding="utf-8") for p in paths if p.is_file()}
    out = subprocess.run(["git", "-C", str(REPO), "ls-tree", "-r", "--name-only", rev, "python/step35", "csrc"],
                         capture_output=True, text=True, check=True).stdout.split()
    keep = [p for p in out if p.endswith(".py") or p.startswith("csrc/")]
    return {p: subprocess.run(["git", "-C", str(REPO), "show", f"{rev}:{p}"], capture_output=True, text=True,
                              check=True).stdout for p in keep}


def function_imports(text: str) -> int:
    tree = ast.parse(text)
    n = 0
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            n += sum(isinstance(x, (ast.Import, ast.ImportFrom)) for x in ast.walk(node))
    return n


def report(rev: str | None) -> None:
    fs = files(rev)
    py = {p: t for p, t in fs.items() if p.endswith(".py")}
    cc = {p: t for p, t in fs.items() if not p.endswith(".py")}
    lines = {p: t.count("\n") for p, t in fs.items()}
    print(f"## {rev or 'working tree'}")
    print(f"Python modules: {len(py)} ({sum(lines[p] for p in py)} lines); C++ files: {len(cc)} "
          f"({sum(lines[p] for p in cc)} lines)")
    for p in sorted(lines, key=lines.get, reverse=True)[:3]:
        print(f"  largest: {p} {lines[p]} lines")
    print(f"function-level imports: {sum(function_imports(t) for t in py.values())}")
    for fact, pattern in FACTS.items():
        rx = re.compile(pattern)
        where = [p for p, t in fs.items() for line in t.splitlines() if rx.search(line)]
        print(f"  {fact}: {len(where)} line(s) in {len(set(where))} file(s)")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("revs", nargs="*", default=["HEAD"])
    ap.add_argument("--tree", action="store_true", help="also the working tree")
    a = ap.parse_args()
    for rev in a.revs:
        report(rev)
    if a.tree:
        report(None)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
