"""Text generation: sampling settings (:mod:`.params`), the stream and its results (:mod:`.stream`), MTP
drafting (:mod:`.mtp`), and grammar constraints (:mod:`.constraints`)."""

from __future__ import annotations

from .params import SamplingParams
from .stream import Completion, CompletionStream, DraftStats, GenerationStats

__all__ = ["SamplingParams", "GenerationStats", "DraftStats", "Completion", "CompletionStream"]
