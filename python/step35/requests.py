"""A request made ready to run, once, for a context or an engine alike: rendered (a chat), constrained
(a grammar, a schema, forced tool calls, a reasoning budget) and tokenized.

:class:`~step35.Model` and :class:`~step35.Engine` both prepare their requests here, so a prompt gets
the same tokens and the same constraint whichever of them runs it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .generation.constraints import for_chat, for_generate

if TYPE_CHECKING:
    from .model import Model

__all__ = ["Prepared", "prepare_completion", "prepare_chat", "render_chat", "prompt_tokens"]


@dataclass(frozen=True)
class Prepared:
    """A request ready to run: its prompt tokens, its native constraint (or None), and for a chat the
    tools it offers (after ``tool_choice``) and the prompt text."""

    tokens: list[int]
    constraint: Any = None
    tools: list[dict[str, Any]] | None = None
    prompt: str | None = None


def prompt_tokens(model: Model, prompt: str | bytes | Iterable[int], add_special: bool,
                  parse_special: bool) -> list[int]:
    """The tokens of a completion prompt: text tokenized by ``model``, or token ids checked."""
    if isinstance(prompt, (str, bytes, bytearray, memoryview)):
        return model.tokenize(prompt, add_special=add_special, parse_special=parse_special)  # type: ignore[arg-type]
    from .context import _token_list  # (numpy: loaded on first use)

    return _token_list(prompt)


def _token_text(model: Model, token: Any) -> str:
    if isinstance(token, bool) or not isinstance(token, int) or token < 0:
        return ""
    return model.token_to_piece(token, special=True).decode("utf-8", errors="replace")


def _template(model: Model) -> str:
    """The GGUF's chat template, else the Step 3.5 Flash template step35 ships."""
    template = model.chat_template
    if template:
        return template
    from ._runtime.data import chat_template_path

    return chat_template_path().read_text(encoding="utf-8")


def render_chat(model: Model, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None,
                template_kwargs: Mapping[str, Any] | None = None) -> tuple[str, bool]:
    """The chat prompt, and whether tokenizing it must add BOS (the template may write it itself)."""
    from .chat.openai import build_prompt, check_template_kwargs  # (jinja2: loaded on first use)

    extra = check_template_kwargs(template_kwargs)
    special = model.special_tokens
    bos_text = _token_text(model, special.get("bos"))
    prompt = build_prompt(_template(model), messages, tools, bos_token=bos_text,
                          eos_token=_token_text(model, special.get("eos")), **extra)
    add_bos = bool(special.get("add_bos")) and not (bos_text and prompt.startswith(bos_text))
    return prompt, add_bos


def prepare_completion(model: Model, prompt: str | bytes | Iterable[int], *, add_special: bool = True,
                       parse_special: bool = False, grammar: str | None = None,
                       reasoning_budget: int | None = None) -> Prepared:
    """A completion request: ``prompt``'s tokens and the constraint of ``grammar`` / ``reasoning_budget``."""
    ids = prompt_tokens(model, prompt, add_special, parse_special)
    return Prepared(ids, for_generate(model, ids, grammar, reasoning_budget))


def prepare_chat(model: Model, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None = None,
                 tool_choice: Any = "auto", *, template_kwargs: Mapping[str, Any] | None = None,
                 response_format: Mapping[str, Any] | None = None, reasoning_budget: int | None = None,
                 parallel_tool_calls: bool = True, constrain: bool = True) -> Prepared:
    """A chat request: the tools ``tool_choice`` leaves, the rendered prompt, its tokens, and the constraint
    of a forced tool call, ``response_format`` and ``reasoning_budget`` (``constrain=False``: none made, for
    a caller that only wants the tokens)."""
    from .chat.openai import select_tools

    chosen = select_tools(tools, tool_choice)
    prompt, add_bos = render_chat(model, messages, chosen, template_kwargs)
    constraint = None
    if constrain:
        constraint = for_chat(model, prompt, chosen, tool_choice, response_format, reasoning_budget,
                              parallel_tool_calls)
    ids = model.tokenize(prompt, add_special=add_bos, parse_special=True)
    return Prepared(ids, constraint, chosen, prompt)
