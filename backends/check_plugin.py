"""Post-build check of a plugin wheel in a clean environment (cibuildwheel's test-command).

    python backends/check_plugin.py vulkan|cuda

Passes when the plugin is found through its entry point and either loads (with
at least one device) or reports why it cannot run here (no driver, no runtime)
as a reason, never a crash; and when the tiny Step 3.5 model still generates
on the CPU. Build runners have no GPU, so "reported, CPU works" is the usual
outcome there; scripts/test-vulkan.sh runs the full parity test on lavapipe.
"""

from __future__ import annotations

import sys
import warnings


def main(name: str) -> int:
    warnings.simplefilter("default")
    import step35
    from step35.cli import main as cli

    report = step35.backends()
    cli(["info"])
    loaded = [b for b in report.loaded if b.source.endswith("(plugin)") and name in b.source]
    failed = [f for f in report.failed if f.name == name]
    if loaded:
        print(f"check: {name} plugin loaded with {len(loaded[0].devices)} device(s)")
        if not loaded[0].devices:
            print("check: FAIL: the plugin loaded but lists no device")
            return 1
    elif failed:
        print(f"check: {name} plugin found, not usable here: {failed[0].reason}")
        if "plugin failed to initialize" in failed[0].reason or "version skew" in failed[0].reason:
            print("check: FAIL: that is a packaging error, not a missing driver")
            return 1
    else:
        print(f"check: FAIL: no {name} plugin found through the step35.backends entry point")
        return 1
    with step35.Model(step35.testing.model_path("tiny"), n_gpu_layers=0) as m:
        out = m.generate("Once upon a time", max_tokens=8, temperature=0)
    print(f"check: CPU still generates: {len(out.tokens)} tokens")
    return 0 if len(out.tokens) == 8 else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
