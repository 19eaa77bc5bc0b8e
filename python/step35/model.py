"""`Model`: a loaded Step 3.5 GGUF (single file or split set)."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ._runtime import backends as _backends
from ._runtime.backends import check_tensor_split, resolve_devices
from ._runtime.limits import INT32_MAX as _INT32_MAX
from .engine import MAX_SLOTS, Engine
from .errors import ClosedError, ContextBusyError
from .generation.mtp import check_draft, resolve
from .generation.params import SamplingParams
from .generation.params import SamplingParams as _DEFAULT  # the sampling defaults (one home: SamplingParams)
from .generation.stream import run
from .gguf.files import model_files
from .gguf.reader import check_model_header, read_header
from .requests import prepare_chat, prepare_completion, render_chat

if TYPE_CHECKING:
    import numpy as np

    from .chat.openai import ChatStream
    from .context import Context, ContextParams
    from .generation.mtp import MTPOption
    from .generation.stream import Completion, CompletionStream

__all__ = ["Model", "model_files"]

ProgressCallback = Callable[[float], "bool | None"]



def _check_int(name: str, value: Any, minimum: int, meaning: str) -> None:
    """ValueError naming ``name`` and its range unless ``value`` is an int in [minimum, 2**31 - 1]."""
    if isinstance(value, bool) or not isinstance(value, int) or not minimum <= value <= _INT32_MAX:
        raise ValueError(f"{name} must be an int in [{minimum}, {_INT32_MAX}] ({meaning}), got {value!r}")


def _is_batch(value: Any, item_types: tuple[type, ...]) -> bool:
    """True for a non-empty list/tuple of requests (each of ``item_types``), i.e. many prompts or conversations."""
    return (isinstance(value, (list, tuple)) and len(value) > 0
            and all(isinstance(v, item_types) for v in value))


class Model:
    """A GGUF model loaded into llama.cpp.

    Example::

        >>> with step35.Model("Step-3.5-Flash-Q4_K_S-00001-of-00003.gguf") as m:
        ...     print(m.architecture, m.n_params, m.n_expert)
        ...     ids = m.tokenize("Hello, 世界")
        ...     m.detokenize(ids)

    Args:
        path: a ``.gguf`` file, or any part of a split set (``-0000K-of-0000N.gguf``).
        n_gpu_layers: layers to offload to the GPU; ``-1`` means all, ``0`` none
            (ignored on CPU-only machines). Anything below -1 is a ``ValueError``.
        use_mmap: memory-map the weights instead of reading them into RAM.
        use_mlock: pin the weights in RAM.
        progress: called with the load fraction in [0, 1]; return ``False`` to cancel
            (raises :class:`~step35.errors.Cancelled`). Ctrl-C also stops the load.
        vocab_only: load only the tokenizer (fast; no weights).
        check_tensors: validate tensor data while loading (slow).
        main_gpu: the device index (>= 0, below the number of ``devices`` when they
            are given) used when the whole model goes on one GPU.
        devices: the GPUs to use, by name as :func:`step35.backends` lists them
            (``["CUDA0"]``, ``["Vulkan0", "Vulkan1"]``); ``None`` (default) uses
            every GPU of every loaded backend, ``[]`` only the CPU.
        rpc: RPC workers (``step35 rpc-server``) whose devices take layers too:
            ``"host:port"``, a list of them, or comma-separated. Their devices
            come first, then ``devices``; the layers that are not offloaded
            (``n_gpu_layers``) stay on this machine's CPU. See :mod:`step35.tools.rpc`.
        tensor_split: the share of the offloaded layers each device gets, in the
            order of :attr:`devices` (e.g. ``[3, 1]``: three quarters on the
            first); default: in proportion to each device's free memory.
        context: settings of the default context that :meth:`generate` and
            :meth:`chat` use (a :class:`~step35.ContextParams` or a dict of its
            fields, e.g. ``{"n_ctx": 32768, "type_k": "q8_0"}``); created on first use.
        check_memory: before loading, plan the memory of the weights plus the
            default context (:func:`step35.tools.fit.plan`: exact weight and KV-cache
            bytes, llama.cpp's compute buffers, on this machine's RAM/GPUs) and
            refuse with the plan, and what would fit, instead of running out of
            memory. ``False`` (or ``STEP35_NO_FIT_CHECK=1``) skips it.
        mtp: multi-token prediction heads for :meth:`generate` / :meth:`chat`
            (``draft=``): ``False`` (default) none; ``True`` the file's own heads,
            or an ``mtp-<file name>`` sidecar beside it (an error when there is
            neither); ``"auto"`` the same when available; or the path of an
            ``mtp-*.gguf`` sidecar. See :mod:`step35.generation.mtp`.

    Raises:
        FileNotFoundError: the file, or part of a split set, is missing.
        InvalidModelError: not a GGUF file, corrupt, or an unsupported early-fork GGUF; or
            ``mtp`` asks for heads the file does not have, or names a sidecar of another model.
        MemoryFitError: the model and its default context would not fit (see ``check_memory``).
        ModelLoadError: llama.cpp refused the model (its reason is in the message).
        RPCError: an RPC worker cannot be reached, speaks another protocol version, or failed while loading.
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
        devices: Sequence[str] | None = None,
        rpc: str | Sequence[str] | None = None,
        tensor_split: Sequence[float] | None = None,
        context: ContextParams | dict[str, Any] | None = None,
        check_memory: bool = True,
        mtp: MTPOption = False,
    ) -> None:
        self.files: list[Path] = model_files(path)
        """Every file of the model (one, or each part of a split set)."""
        self.path: Path = self.files[0]
        """The file llama.cpp opens (the first part of a split set)."""
        self._header = read_header(self.path)
        check_model_header(self._header, self.path)
        load_mtp, sidecar = resolve(self.path, self._header, mtp) if not vocab_only else (False, None)
        self.mtp_path: Path | None = sidecar
        """The ``mtp-*.gguf`` sidecar whose MTP heads draft for this model (None: none, or its own)."""
        _check_int("n_gpu_layers", n_gpu_layers, -1, "-1 = all layers, 0 = none, N = the first N")
        _check_int("main_gpu", main_gpu, 0, "an index into the GPUs used")
        from .tools.rpc import model_devices

        device_list, self._rpc = model_devices(devices, rpc)
        split = check_tensor_split(tensor_split, device_list)
        self.devices: list[str] | None = device_list
        """The devices the layers are spread over, in order (None: llama.cpp's default GPUs)."""
        if device_list and main_gpu >= len(device_list):
            raise ValueError(f"main_gpu={main_gpu} but only {len(device_list)} device(s) are used "
                             f"({', '.join(device_list)}); main_gpu must be in [0, {len(device_list) - 1}]")
        from .context import ContextParams

        self._context_params = ContextParams.coerce(context)
        self._context: Context | None = None
        if check_memory and not vocab_only:
            from .tools.fit import check_context

            check_context(self.path, self._context_params, n_gpu_layers=n_gpu_layers, main_gpu=main_gpu,
                          devices=device_list, tensor_split=split, rpc=self._rpc,
                          mtp=sidecar or load_mtp)
        # where the weights go: the same for a sidecar's heads
        place: dict[str, Any] = dict(n_gpu_layers=n_gpu_layers, use_mmap=bool(use_mmap), use_mlock=bool(use_mlock),
                                     main_gpu=int(main_gpu), devices=device_list, tensor_split=split, rpc=self._rpc)
        # where the layers went, for memory plans of contexts made later (step35.tools.fit.check_engine)
        self._placement = dict(n_gpu_layers=n_gpu_layers, main_gpu=int(main_gpu), devices=device_list,
                               tensor_split=split, rpc=self._rpc, mtp=sidecar or load_mtp)
        self._handle = _backends.core().load_model(str(self.path), vocab_only=bool(vocab_only),
                                         check_tensors=bool(check_tensors), progress=progress, load_mtp=load_mtp,
                                         **place)
        if sidecar is not None:
            heads = _backends.core().load_model(str(sidecar), load_mtp=True, check_tensors=bool(check_tensors), **place)
            try:
                self._handle.set_heads(heads)
            except BaseException:
                self._handle.close()
                raise
            finally:
                heads.close()  # the model keeps its own reference to the heads

    # -- lifetime -------------------------------------------------------------
    def close(self) -> None:
        """Free the weights now (idempotent, safe from any thread). Later use raises ClosedError."""
        ctx = getattr(self, "_context", None)
        if ctx is not None:
            self._context = None
            try:
                ctx.close()
            except ContextBusyError:
                pass  # an open stream holds it (and the weights); both are freed when it ends
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
    def mtp_heads(self) -> int:
        """MTP heads loaded for drafting (0: none; see ``Model(mtp=...)`` and :mod:`step35.generation.mtp`)."""
        return int(self._native_handle().n_heads)

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
        """Context length the model was trained for (from the GGUF header: known to a
        ``vocab_only`` model too)."""
        return int(self._header.metadata.get(f"{self.architecture}.context_length", 0) or self._handle.n_ctx_train)

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

    # -- contexts and evaluation ----------------------------------------------
    def _native_handle(self) -> Any:
        if self._handle.closed:
            raise ClosedError("this Model has been closed")
        return self._handle

    def new_context(self, params: ContextParams | dict[str, Any] | None = None, *, mtp: bool | None = None,
                    **overrides: Any) -> Context:
        """A new :class:`~step35.Context` (settings as :class:`~step35.ContextParams` fields; ``mtp``: see
        :class:`~step35.Context`).

        Example::

            >>> ctx = model.new_context(n_ctx=32768, flash_attn="on", type_k="q8_0", type_v="q8_0")
        """
        from .context import Context

        return Context(self, params, mtp=mtp, **overrides)

    @property
    def context(self) -> Context:
        """The default context of :meth:`generate` and :meth:`chat` (made on first use)."""
        if self._context is None or self._context.closed:
            self._context = self.new_context(self._context_params)
        return self._context

    def logits(self, tokens: Iterable[int], *, incremental: bool = False, **context: Any) -> np.ndarray:
        """Logits (float32, shape ``(len(tokens), n_vocab)``) of every position of ``tokens``.

        Uses a throwaway context sized for the sequence. ``incremental=False``
        evaluates in batched passes; ``incremental=True`` token by token, as
        generation does. ``context`` overrides settings (``n_batch=64``, ...).

        Example::

            >>> ids = model.tokenize("The quick brown fox")
            >>> lp = model.logits(ids)            # (len(ids), n_vocab)
            >>> next_id = int(lp[-1].argmax())
        """
        from .context import _token_list, scoring_params

        ids = _token_list(tokens)
        params = scoring_params(len(ids), self._context_params.replace(warmup=False), **context)
        with self.new_context(params) as ctx:
            return ctx.logits(ids, incremental=incremental)

    def generate(
        self,
        prompt: str | bytes | Iterable[int] | Sequence[str | bytes | Sequence[int]],
        max_tokens: int | None = 256,
        *,
        temperature: float = _DEFAULT.temperature,
        top_k: int = _DEFAULT.top_k,
        top_p: float = _DEFAULT.top_p,
        min_p: float = _DEFAULT.min_p,
        repeat_penalty: float = _DEFAULT.repeat_penalty,
        repeat_last_n: int = _DEFAULT.repeat_last_n,
        presence_penalty: float = _DEFAULT.presence_penalty,
        frequency_penalty: float = _DEFAULT.frequency_penalty,
        seed: int | None = None,
        stop: str | list[str] | None = None,
        stream: bool = False,
        add_special: bool = True,
        parse_special: bool = True,
        grammar: str | None = None,
        reasoning_budget: int | None = None,
        context: Context | None = None,
        draft: int | None = None,
    ) -> Completion | CompletionStream | list[Completion]:
        """Continue ``prompt`` (text or token ids).

        The token loop runs natively with the GIL released. With ``stream=True``
        the result is an iterator of text pieces (never splitting a character);
        closing it, Ctrl-C, or a stop string ends generation within one token.
        Without, a :class:`~step35.Completion` with text, tokens, finish reason
        and stats. Tokens already in the context's cache that match the start of
        the prompt are reused.

        A list of prompts (texts, or lists of token ids) runs them all at once
        on an :class:`~step35.Engine` with one slot each (drafting as ``draft``
        says) and returns a list of :class:`~step35.Completion`, in order (not
        streaming).

        Args:
            prompt: text (tokenized with BOS; special-token text such as
                ``<|im_start|>`` is parsed unless ``parse_special=False``) or token ids;
                or a list of those.
            max_tokens: most tokens to generate (None: until the context is full).
            temperature, top_k, top_p, min_p, repeat_penalty, repeat_last_n,
                presence_penalty, frequency_penalty, seed: see :class:`~step35.SamplingParams`
                (temperature 0 is greedy; the same seed gives the same output).
            stop: string(s) that end generation; they are not part of the output.
            grammar: GBNF (llama.cpp's grammar format) the output must follow
                from its first token, e.g. from :func:`step35.json_schema_to_grammar`.
                Sampling stays fast: a drawn token is checked, and only a
                rejected one makes the grammar filter the vocabulary.
            reasoning_budget: most tokens of reasoning after a ``<think>`` (in
                the prompt or the output) before ``</think>`` is forced; 0 closes
                reasoning at once, -1 or None leaves it unlimited.
            context: run on this context instead of the model's default one.
            draft: multi-token prediction: tokens the MTP heads draft per step
                (1 to 3; 0 off; None: 1 when the model was loaded with heads,
                else 0). The output is the same as without; the stats say how
                many drafts were kept (``stats.draft``). See :mod:`step35.generation.mtp`.

        Example::

            >>> out = model.generate("Once upon a time", max_tokens=64, temperature=0)
            >>> print(out.text, out.stats)
            >>> for piece in model.generate("Count: 1, 2,", stream=True, stop=["10"]):
            ...     print(piece, end="", flush=True)

        Raises:
            ValueError: an invalid parameter (named in the message).
            GrammarError: ``grammar`` does not parse (llama.cpp's reason), or
                allows no token where generation stands.
            ContextOverflowError: the prompt does not fit in the context.
            ContextBusyError: the context is used by an unfinished stream or another thread.
        """

        sampling = SamplingParams._pick(locals())  # the sampling arguments above are SamplingParams' fields
        if _is_batch(prompt, (str, bytes, list, tuple)):
            self._batch_only(stream, context)
            with self._batch_engine(len(prompt), draft) as engine:  # type: ignore[arg-type]
                return engine.generate_many(prompt, max_tokens, add_special=add_special,  # type: ignore[arg-type]
                                            parse_special=parse_special, stop=stop, grammar=grammar,
                                            reasoning_budget=reasoning_budget, **dataclasses.asdict(sampling))
        n_draft = self._draft(draft, context)
        req = prepare_completion(self, prompt, add_special=add_special, parse_special=parse_special,  # type: ignore[arg-type]
                                 grammar=grammar, reasoning_budget=reasoning_budget)
        ctx = context if context is not None else self.context
        return run(ctx, req.tokens, stream=stream, max_tokens=max_tokens, sampling=sampling, stop=stop,
                   constraint=req.constraint, draft=n_draft)

    def _draft(self, draft: int | None, context: Context | None) -> int:
        """The MTP draft length for a call on ``context`` (validated; see :func:`step35.generation.mtp.check_draft`)."""

        heads = self.mtp_heads
        if context is not None and not context._handle.has_drafter:
            if draft:
                raise ValueError(f"draft={draft}: this context cannot draft (it has {context.params.n_seq_max} "
                                 "sequences, or the model has no MTP heads); use the model's default context")
            heads = 0
        return check_draft(draft, min(heads, 3))

    def _batch_only(self, stream: bool, context: Context | None) -> None:
        if stream:
            raise ValueError("stream=True takes one prompt; to stream many at once use step35.Engine")
        if context is not None:
            raise ValueError("context= takes one prompt; a list of prompts runs on an engine of its own")

    def _batch_engine(self, n: int, draft: int | None) -> Engine:
        """An engine with one slot per request (each gets the model's default context size), drafting
        ``draft`` tokens per step with the MTP heads as a single prompt would."""

        slots = min(n, MAX_SLOTS)
        return Engine(self, slots=slots, max_waiting=max(0, n - slots), draft=draft)

    def chat_prompt(self, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None = None, *,
                    template_kwargs: Mapping[str, Any] | None = None) -> str:
        """The prompt text :meth:`chat` sends for ``messages`` and ``tools`` (rendered by the GGUF's template).

        ``template_kwargs``: further variables for the template, as in :meth:`chat`.
        """
        return render_chat(self, messages, tools, template_kwargs)[0]

    def chat(
        self,
        messages: list[dict[str, Any]] | Sequence[list[dict[str, Any]]],
        tools: list[dict[str, Any]] | None = None,
        tool_choice: Any = "auto",
        *,
        stream: bool = False,
        max_tokens: int | None = None,
        temperature: float = _DEFAULT.temperature,
        top_k: int = _DEFAULT.top_k,
        top_p: float = _DEFAULT.top_p,
        min_p: float = _DEFAULT.min_p,
        repeat_penalty: float = _DEFAULT.repeat_penalty,
        repeat_last_n: int = _DEFAULT.repeat_last_n,
        presence_penalty: float = _DEFAULT.presence_penalty,
        frequency_penalty: float = _DEFAULT.frequency_penalty,
        seed: int | None = None,
        stop: str | list[str] | None = None,
        response_format: Mapping[str, Any] | None = None,
        reasoning_budget: int | None = None,
        parallel_tool_calls: bool = True,
        context: Context | None = None,
        template_kwargs: Mapping[str, Any] | None = None,
        draft: int | None = None,
    ) -> dict[str, Any] | ChatStream | list[dict[str, Any]]:
        """An OpenAI-style chat completion.

        ``messages`` are OpenAI chat messages (``system``/``user``/``assistant``/``tool``;
        assistant messages may carry ``reasoning_content`` and ``tool_calls``);
        ``tools`` OpenAI function tools. The GGUF's chat template renders them;
        the model's reasoning comes back as ``reasoning_content``, the answer as
        ``content``, and every tool call it makes as ``tool_calls`` with
        arguments typed by the tool's schema. Previous turns are reused from
        the context's cache.

        Returns a ``chat.completion`` dict, or with ``stream=True`` a
        :class:`~step35.chat.openai.ChatStream` of ``chat.completion.chunk`` dicts.
        A list of conversations runs them all at once on an
        :class:`~step35.Engine` and returns a list of dicts, in order.

        Args:
            messages, tools: the conversation and the tools offered (OpenAI shapes).
            tool_choice: ``"auto"``, ``"none"``, ``"required"`` or
                ``{"type": "function", "function": {"name": ...}}`` (see :func:`step35.chat.openai.select_tools`).
                "required" and a named function are enforced: after its
                reasoning, the model can only write tool calls (of that
                function), with arguments valid under the tool's schema.
            max_tokens: most tokens to generate (None: until the context is full).
            temperature, top_k, top_p, min_p, repeat_penalty, repeat_last_n,
                presence_penalty, frequency_penalty, seed: see :class:`~step35.SamplingParams`;
                the same settings, with the same defaults, as :meth:`generate`.
            stop: string(s) that end generation; they are not part of the output.
            response_format: OpenAI's ``{"type": "json_schema", "json_schema":
                {"name": ..., "schema": {...}}}`` or ``{"type": "json_object"}``:
                the answer after the reasoning is JSON valid under the schema
                (enforced by llama.cpp's grammar sampler; the reasoning stays free).
            reasoning_budget: most reasoning tokens before ``</think>`` is forced
                (0: no reasoning; None or -1: unlimited). Set one with a
                ``response_format`` or a required tool call when the model may
                reason for long: the constraint starts where reasoning ends.
            parallel_tool_calls: with an enforced tool call, allow several back to back.
            context: run on this context instead of the model's default one.
            template_kwargs: further variables for the chat template, e.g.
                ``{"current_date": "2025-01-31"}`` for a template that reads one
                (the built-in Step 3.5 template reads none). Names the template
                already gets (``messages``, ``tools``, ``add_generation_prompt``,
                ``bos_token``, ``eos_token``) are refused. Any other keyword
                argument of ``chat`` is a ``TypeError``, so a misspelt setting
                (``temprature=0``) cannot pass silently.
            draft: multi-token prediction draft length, as in :meth:`generate`.

        Example::

            >>> tools = [{"type": "function", "function": {"name": "get_weather",
            ...     "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}]
            >>> r = model.chat([{"role": "user", "content": "Weather in Paris?"}], tools=tools)
            >>> r["choices"][0]["message"].get("tool_calls")

        Raises:
            ValueError: malformed messages or tools, or an invalid parameter (before anything runs).
            GrammarError: ``response_format``'s schema (or a tool's) cannot be
                enforced; the message names the schema path and the feature.
            ContextOverflowError: the conversation does not fit in the context.
            ToolCallParseError: the model wrote a tool call that cannot be parsed (a call
                that ``max_tokens`` cuts is no error: ``finish_reason`` is "length", and the
                calls before it are kept).
        """
        from .chat.openai import ChatStream, complete

        sampling = SamplingParams._pick(locals())  # the sampling arguments above are SamplingParams' fields
        if _is_batch(messages, (list, tuple)):
            self._batch_only(stream, context)
            with self._batch_engine(len(messages), draft) as engine:
                return engine.chat_many(messages, tools, tool_choice, max_tokens=max_tokens,  # type: ignore[return-value,arg-type]
                                        stop=stop, template_kwargs=template_kwargs, response_format=response_format,
                                        reasoning_budget=reasoning_budget, parallel_tool_calls=parallel_tool_calls,
                                        **dataclasses.asdict(sampling))
        n_draft = self._draft(draft, context)
        req = prepare_chat(self, messages, tools, tool_choice, template_kwargs=template_kwargs,  # type: ignore[arg-type]
                           response_format=response_format, reasoning_budget=reasoning_budget,
                           parallel_tool_calls=parallel_tool_calls)
        ctx = context if context is not None else self.context
        name = self.path.name
        if stream:
            completion = run(ctx, req.tokens, stream=True, max_tokens=max_tokens, sampling=sampling, stop=stop,
                             constraint=req.constraint, draft=n_draft)
            return ChatStream(completion, req.tools, name)  # type: ignore[arg-type]
        return complete(ctx, req.tokens, req.tools, model_name=name, max_tokens=max_tokens, sampling=sampling,
                        stop=stop, constraint=req.constraint, draft=n_draft)

    @classmethod
    def from_pretrained(cls, repo_id: str, quant: str | None = None, *, include: str | list[str] | None = None,
                        revision: str | None = None, cache_dir: str | os.PathLike[str] | None = None,
                        local_files_only: bool = False, **model_kwargs: Any) -> Model:
        """Download ``repo_id`` (``owner/name[:QUANT]`` or a preset) from the Hub and load it.

        See :func:`step35.tools.hub.download`; ``model_kwargs`` go to :class:`Model`.
        Unless ``check_memory=False``, the memory plan is made once, from the
        headers of the files that will be downloaded, so a model that cannot fit
        raises :class:`~step35.errors.MemoryFitError` before anything is
        downloaded (offline, from the cached files instead).
        """
        from .context import ContextParams
        from .tools import hub
        from .tools.fit import check_context

        kwargs = dict(model_kwargs)
        vocab_only = bool(kwargs.get("vocab_only"))

        def plan(repo: str) -> None:
            check_context(repo, ContextParams.coerce(kwargs.get("context")), quant=quant, include=include,
                          revision=revision, n_gpu_layers=kwargs.get("n_gpu_layers", -1),
                          main_gpu=kwargs.get("main_gpu", 0), devices=resolve_devices(kwargs.get("devices")))

        found = hub.resolve_model(repo_id, quant, repo=True, mtp=False if vocab_only else kwargs.get("mtp", False),
                                  plan=plan if kwargs.get("check_memory", True) and not vocab_only else None,
                                  include=include, revision=revision, cache_dir=cache_dir,
                                  local_files_only=local_files_only)
        if found.planned:
            kwargs["check_memory"] = False  # planned: these headers are the downloaded files' own
        if not vocab_only:
            kwargs["mtp"] = found.mtp  # a repo's sidecar may lie in the Hub cache, not beside the model
        return cls(found.path, **kwargs)
