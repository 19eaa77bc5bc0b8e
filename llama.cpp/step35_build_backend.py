"""PEP 517 backend: materialize the pinned llama.cpp, then hand over to scikit-build-core.

Materializing first means `pip install .` and `python -m build` work from a
fresh clone, and the sdist carries the trimmed, patched source so that
building a wheel from it needs no download (the stamp is already current).
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from materialize import MaterializeError, materialize  # noqa: E402
from scikit_build_core import build as _skbuild  # noqa: E402
from scikit_build_core.build import (  # noqa: E402,F401
    get_requires_for_build_editable,
    get_requires_for_build_sdist,
    get_requires_for_build_wheel,
    prepare_metadata_for_build_editable,
    prepare_metadata_for_build_wheel,
)


def _source() -> None:
    try:
        materialize(log=lambda msg: print(f"step35: {msg}", file=sys.stderr))
    except MaterializeError as e:
        raise SystemExit(f"step35: cannot prepare the llama.cpp source: {e}") from e


def build_wheel(wheel_directory, config_settings=None, metadata_directory=None):
    _source()
    return _skbuild.build_wheel(wheel_directory, config_settings, metadata_directory)


def build_editable(wheel_directory, config_settings=None, metadata_directory=None):
    _source()
    return _skbuild.build_editable(wheel_directory, config_settings, metadata_directory)


def build_sdist(sdist_directory, config_settings=None):
    _source()
    return _skbuild.build_sdist(sdist_directory, config_settings)
