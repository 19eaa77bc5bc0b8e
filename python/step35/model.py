"""`Model`: a loaded Step 3.5 GGUF (single file or split set)."""

from __future__ import annotations

import errno
import os
import re
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from .errors import InvalidModelError
from .gguf import GGUFHeader, read_header

__all__ = ["Model", "model_files"]

_SPLIT_RE = re.compile(r"^(?P<prefix>.*)-(?P<no>\d{5})-of-(?P<count>\d{5})\.gguf$")

# Keys written only by the early StepFun llama.cpp fork; upstream cannot load these files.
_FORK_ERA_KEYS = ("swiglu_limits", "swiglu_limits_shared", "rope.scaling.apply_mask")
_UPSTREAM_GGUFS = "stepfun-ai/Step-3.5-Flash-GGUF-Q4_K_S (Q4_K_S) or ubergarm/Step-3.5-Flash-GGUF (IQ4_XS)"

ProgressCallback = Callable[[float], "bool | None"]


def model_files(path: str | os.PathLike[str]) -> list[Path]:
    """All files of the model at ``path``: itself, or every part of a split set.

    Any part of a ``NAME-0000K-of-0000N.gguf`` set names the whole set. Raises
    :class:`FileNotFoundError` listing whatever is missing.
    """
    p = Path(os.fspath(path)).expanduser()
    m = _SPLIT_RE.match(p.name)
    if m:
        count = int(m["count"])
        files = [p.with_name(f"{m['prefix']}-{i:05d}-of-{count:05d}.gguf") for i in range(1, count + 1)]
        missing = [f for f in files if not f.is_file()]
        if missing:
            raise FileNotFoundError(
                errno.ENOENT,
                f"split model is incomplete: {len(missing)} of {count} parts missing "
                f"({', '.join(f.name for f in missing)})",
                str(p),
            )
        return files
    if p.is_dir():
        raise IsADirectoryError(errno.EISDIR, "expected a .gguf model file, got a directory", str(p))
    if not p.is_file():
        raise FileNotFoundError(errno.ENOENT, "no such model file", str(p))
    return [p]


def _check_family(header: GGUFHeader, path: Path) -> None:
    arch = header.architecture
    fork = [k for k in header.metadata if arch and any(k == f"{arch}.{suffix}" for suffix in _FORK_ERA_KEYS)]
    if fork:
        raise InvalidModelError(
            f"{path} was written by the early StepFun llama.cpp fork (it has {', '.join(fork)}), "
            f"which upstream llama.cpp cannot load. Download an upstream-format GGUF instead, "
            f"e.g. {_UPSTREAM_GGUFS}."
        )


class Model:
    """A GGUF model loaded into llama.cpp.

    Example::

        >>> with step35.Model("Step-3.5-Flash-Q4_K_S-00001-of-00003.gguf") as m:
        ...     print(m.architecture, m.n_params, m.n_expert)
        ...     ids = m.tokenize("Hello, 世界")
        ...     m.detokenize(ids)

    Args:
        path: a ``.gguf`` file, or any part of a split set (``-0000K-of-0000N.gguf``).
        n_gpu_layers: layers to offload to the GPU; ``-1`` means all (ignored on CPU-only machines).
        use_mmap: memory-map the weights instead of reading them into RAM.
        use_mlock: pin the weights in RAM.
        progress: called with the load fraction in [0, 1]; return ``False`` to cancel
            (raises :class:`~step35.errors.Cancelled`). Ctrl-C also stops the load.
        vocab_only: load only the tokenizer (fast; no weights).
        check_tensors: validate tensor data while loading (slow).
        main_gpu: the device index used when the whole model goes on one GPU.

    Raises:
        FileNotFoundError: the file, or part of a split set, is missing.
        InvalidModelError: not a GGUF file, corrupt, or an unsupported early-fork GGUF.
        ModelLoadError: llama.cpp refused the model (its reason is in the message).
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        n_gpu_layers: int = -1,
        use_mmap: bool = True,
        use_mlock: bool = False,
        progress: ProgressCallback | None = None,
        vocab_only: bool = False,
        check_tensors: bool = False,
        main_gpu: int = 0,
    ) -> None:
        self.files: list[Path] = model_files(path)
        """Every file of the model (one, or each part of a split set)."""
        self.path: Path = self.files[0]
        """The file llama.cpp opens (the first part of a split set)."""
        self._header = read_header(self.path)
        _check_family(self._header, self.path)
        if not isinstance(n_gpu_layers, int):
            raise ValueError(f"n_gpu_layers must be an int, got {n_gpu_layers!r}")
        from ._native import core

        self._handle = core().load_model(
            str(self.path),
            n_gpu_layers=n_gpu_layers,
            use_mmap=bool(use_mmap),
            use_mlock=bool(use_mlock),
            vocab_only=bool(vocab_only),
            check_tensors=bool(check_tensors),
            main_gpu=int(main_gpu),
            progress=progress,
        )

    # -- lifetime -------------------------------------------------------------
    def close(self) -> None:
        """Free the weights now (idempotent, safe from any thread). Later use raises ClosedError."""
        handle = getattr(self, "_handle", None)
        if handle is not None:
            handle.close()

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` has been called."""
        return self._handle.closed

    def __enter__(self) -> Model:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self.closed else f"{self.n_params / 1e6:.1f}M params"
        return f"<step35.Model {self.path.name!r} {self.architecture} {state}>"

    # -- properties -----------------------------------------------------------
    @property
    def metadata(self) -> dict[str, Any]:
        """Every GGUF metadata key with its typed value (from the first file's header)."""
        return dict(self._header.metadata)

    @property
    def architecture(self) -> str | None:
        """``general.architecture`` (``"step35"`` for Step 3.5 Flash)."""
        return self._header.architecture

    def _arch_key(self, suffix: str) -> Any:
        return self._header.metadata.get(f"{self.architecture}.{suffix}")

    @property
    def n_params(self) -> int:
        """Number of parameters (all experts counted)."""
        return int(self._handle.n_params)

    @property
    def size(self) -> int:
        """Bytes of tensor data llama.cpp holds for the weights."""
        return int(self._handle.size)

    @property
    def file_size(self) -> int:
        """Bytes on disk, summed over every file of a split set."""
        return sum(f.stat().st_size for f in self.files)

    @property
    def n_layer(self) -> int:
        """Number of transformer blocks (excluding MTP/next-token layers)."""
        return int(self._handle.n_layer)

    @property
    def n_expert(self) -> int:
        """Routed experts per MoE layer (0 for a dense model)."""
        return int(self._arch_key("expert_count") or 0)

    @property
    def n_expert_used(self) -> int:
        """Experts each token is routed to (top-k)."""
        return int(self._arch_key("expert_used_count") or 0)

    @property
    def n_ctx_train(self) -> int:
        """Context length the model was trained for."""
        return int(self._handle.n_ctx_train)

    @property
    def n_embd(self) -> int:
        """Hidden size."""
        return int(self._handle.n_embd)

    @property
    def n_vocab(self) -> int:
        """Vocabulary size."""
        return int(self._handle.n_vocab)

    @property
    def chat_template(self) -> str | None:
        """The Jinja chat template stored in the GGUF, or None."""
        return self._handle.chat_template()

    @property
    def description(self) -> str:
        """llama.cpp's one-line description (architecture, size, type)."""
        return self._handle.description

    # -- tokens ---------------------------------------------------------------
    def tokenize(self, text: str | bytes, *, add_special: bool = True, parse_special: bool = False) -> list[int]:
        """Token ids of ``text``.

        Args:
            add_special: add BOS as the model requires.
            parse_special: turn special-token text such as ``<|im_start|>`` into its token.
        """
        if isinstance(text, str):
            data = text.encode("utf-8", errors="surrogatepass")
        elif isinstance(text, (bytes, bytearray, memoryview)):
            data = bytes(text)
        else:
            raise TypeError(f"text must be str or bytes, not {type(text).__name__}")
        return list(self._handle.tokenize(data, add_special, parse_special))

    def detokenize(self, tokens: Iterable[int], *, remove_special: bool = False, unparse_special: bool = False) -> str:
        """Text of ``tokens``; bytes that are not valid UTF-8 become U+FFFD.

        Raises ValueError for a token id outside the vocabulary.
        """
        return self.detokenize_bytes(tokens, remove_special=remove_special,
                                     unparse_special=unparse_special).decode("utf-8", errors="replace")

    def detokenize_bytes(self, tokens: Iterable[int], *, remove_special: bool = False,
                         unparse_special: bool = False) -> bytes:
        """Raw bytes of ``tokens`` (a token may hold part of a UTF-8 character)."""
        return self._handle.detokenize([int(t) for t in tokens], remove_special, unparse_special)

    def token_to_piece(self, token: int, *, special: bool = True) -> bytes:
        """The bytes of one token."""
        return self._handle.token_to_piece(int(token), special)

    @property
    def special_tokens(self) -> dict[str, int | bool]:
        """BOS/EOS/EOT ids and whether BOS is added."""
        return dict(self._handle.special_tokens())
