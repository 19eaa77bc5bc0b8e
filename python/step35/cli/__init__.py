"""The ``step35`` command line (:func:`main`); its flags are in :mod:`.flags`, its commands in
:mod:`.commands`."""

from __future__ import annotations

from .commands import build_parser, main

__all__ = ["build_parser", "main"]
