"""GGUF files: a strict header reader (:mod:`.reader`), a small writer (:mod:`.writer`), and the
facts about model files on disk (:mod:`.files`)."""

from __future__ import annotations

from .files import model_files, split_name, split_paths, split_set
from .reader import GGUFHeader, TensorInfo, check_model_header, read_header
from .writer import KV, Tensor, write_gguf

__all__ = ["GGUFHeader", "TensorInfo", "read_header", "check_model_header", "model_files", "split_name",
           "split_paths", "split_set", "KV", "Tensor", "write_gguf"]
