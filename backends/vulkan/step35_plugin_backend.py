"""PEP 517 backend of this plugin wheel: the core's own backend, from the checkout.

It materializes the pinned, patched llama.cpp (llama.cpp/materialize.py), then
hands over to scikit-build-core. Plugin wheels are built from a checkout of the
step35 repository (cmake.source-dir is its root), so there is no plugin sdist.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "llama.cpp"))

from step35_build_backend import (  # noqa: E402,F401
    build_wheel,
    get_requires_for_build_wheel,
    prepare_metadata_for_build_wheel,
)
