"""Sampling settings and the checks of a generation's arguments (stop strings, ``max_tokens``)."""

from __future__ import annotations

import dataclasses
import math
import secrets
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from .._runtime.limits import INT32_MAX as _INT32_MAX

if TYPE_CHECKING:
    pass


def _number(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    return float(value)


def _integer(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name} must be an int, got {value!r}")
    return value


@dataclasses.dataclass(frozen=True)
class SamplingParams:
    """How the next token is chosen.

    Args:
        temperature: 0 picks the most likely token (greedy); higher is more random.
        top_k: keep the k most likely tokens (0 = off).
        top_p: keep the smallest set whose probability reaches p, in (0, 1] (1 = off).
        min_p: drop tokens below min_p x the top probability, in [0, 1] (0 = off).
        repeat_penalty: > 1 discourages repeating the last ``repeat_last_n`` tokens (1 = off).
        repeat_last_n: how many recent tokens the penalties look at (-1 = all).
        presence_penalty, frequency_penalty: OpenAI-style penalties (0 = off).
        seed: random seed; the same seed and settings give the same output.
            None draws a fresh one (reported in the stats).
    """

    temperature: float = 0.8
    top_k: int = 40
    top_p: float = 0.95
    min_p: float = 0.05
    repeat_penalty: float = 1.0
    repeat_last_n: int = 64
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    seed: int | None = None

    def __post_init__(self) -> None:
        if _number("temperature", self.temperature) < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if not 0 <= _integer("top_k", self.top_k) <= _INT32_MAX:
            raise ValueError(f"top_k must be in [0, {_INT32_MAX}], got {self.top_k}")
        top_p = _number("top_p", self.top_p)
        if not 0 < top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if not 0 <= _number("min_p", self.min_p) <= 1:
            raise ValueError(f"min_p must be in [0, 1], got {self.min_p}")
        if _number("repeat_penalty", self.repeat_penalty) <= 0:
            raise ValueError(f"repeat_penalty must be > 0, got {self.repeat_penalty}")
        if not -1 <= _integer("repeat_last_n", self.repeat_last_n) <= _INT32_MAX:
            raise ValueError(f"repeat_last_n must be in [-1, {_INT32_MAX}], got {self.repeat_last_n}")
        _number("presence_penalty", self.presence_penalty)
        _number("frequency_penalty", self.frequency_penalty)
        if self.seed is not None and not 0 <= _integer("seed", self.seed) < 2**32 - 1:
            raise ValueError(f"seed must be in [0, 2**32 - 1), got {self.seed}")

    @classmethod
    def _pick(cls, values: Mapping[str, Any]) -> SamplingParams:
        """The sampling settings among ``values`` (a caller's ``locals()``), validated.

        :meth:`step35.Model.generate` and :meth:`step35.Model.chat` spell these
        fields out in their signatures (for IDEs and type checkers) and build
        their settings here, so a field missing from either is a KeyError at
        the first call, and tests/test_generate.py checks both signatures
        against this class.
        """
        return cls(**{f.name: values[f.name] for f in dataclasses.fields(cls)})

    def _native(self, core: Any) -> tuple[Any, int]:
        o = core.SamplingOptions()
        for f in dataclasses.fields(self):
            if f.name != "seed":
                setattr(o, f.name, getattr(self, f.name))
        seed = self.seed if self.seed is not None else secrets.randbelow(2**32 - 1)
        o.seed = seed
        return o, seed


def check_stop(stop: str | Sequence[str] | None) -> list[str]:
    """``stop`` as a list of non-empty strings (ValueError otherwise)."""
    if stop is None:
        return []
    if isinstance(stop, str):
        stop = [stop]
    out = []
    for s in stop:
        if not isinstance(s, str) or not s:
            raise ValueError(f"stop must be a non-empty string or a list of them, got {s!r}")
        out.append(s)
    return out


def check_max_tokens(max_tokens: int | None) -> int:
    """``max_tokens`` validated (None = until the context is full -> -1)."""
    if max_tokens is None:
        return -1
    if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or not 0 <= max_tokens < 2**63:
        raise ValueError(f"max_tokens must be an int in [0, 2**63 - 1] or None, got {max_tokens!r}")
    return max_tokens
