"""Serve many requests at once: continuous batching over one context.

An :class:`Engine` owns one llama.cpp context with one sequence per slot and
a native scheduler thread (the GIL is not held while it runs). Every step
decodes one batch holding the next token of every running request plus chunks
of waiting prompts, so a long prompt never stalls the streams already running.
Requests come from any thread; each has its own sampler, seed, stop strings
and ``max_tokens``, and returns the same results and streams as
:meth:`step35.Model.generate` / :meth:`step35.Model.chat` (streams also work
with ``async for``). A slot keeps its last conversation in the cache: the next
turn of a chat evaluates only its new tokens.
"""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from ._runtime.limits import MAX_SEQ
from .errors import ClosedError
from .generation.mtp import check_draft
from .generation.params import SamplingParams, check_max_tokens, check_stop
from .generation.stream import Completion, CompletionStream, result
from .requests import prepare_chat, prepare_completion

_DEFAULT = SamplingParams  # its field defaults are the sampling defaults of every call

if TYPE_CHECKING:
    from .chat.openai import ChatStream
    from .context import ContextParams
    from .model import Model

__all__ = ["Engine", "EngineStream"]

#: The most slots an engine can have (llama.cpp's sequence limit).
MAX_SLOTS = MAX_SEQ
#: Window-layer checkpoints kept per slot (llama-server's --ctx-checkpoints default) ...
CHECKPOINTS = 32
#: ... taken 4 tokens before the end of each prompt (before the generation prompt) and every this many tokens
#: (the default n_batch: prompt chunks end there anyway).
CHECKPOINT_EVERY = 2048


def default_cache_mib() -> float:
    """The prompt cache's default bound in MiB: a quarter of the RAM available now, at most 8 GiB."""
    from ._runtime.system import system_memory
    from .tools.fit import default_cache_mib as of_spare

    return of_spare(system_memory()[1])


def engine_context(per_slot: ContextParams, slots: int, n_ctx_slot: int, kv_unified: bool = False) -> ContextParams:
    """The context an engine of ``slots`` slots makes (and the memory plan must cover).

    By default, one KV stream per slot (``kv_unified=False``), each of
    ``n_ctx_slot`` tokens: a sequence attends only to its own cells, so its
    output is the one it gets alone (as llama-server's slots do), and
    attention costs what its own context costs, not the sum of all slots'.
    With ``kv_unified=True`` the slots share one cache of ``n_ctx_slot``
    cells, and any one of them may fill it (llama-server's ``--kv-unified``).
    """
    n_ctx = n_ctx_slot if kv_unified else n_ctx_slot * slots
    return per_slot.replace(n_ctx=n_ctx, n_seq_max=slots, kv_unified=kv_unified, n_batch=max(per_slot.n_batch, slots))


class EngineStream(CompletionStream):
    """A :class:`~step35.CompletionStream` of an :class:`Engine` request.

    Iterate it (``for``) or await it (``async for``); ``close()`` cancels the
    request, and its slot is free at the engine's next step.
    """

    async def __anext__(self) -> str:
        engine: Engine = self._context
        native = self._native
        wakeups = engine._wakeups
        while True:
            woken = wakeups.waiter(native.id)  # registered before polling: no wake-up is missed
            try:
                piece = native.poll()
                if piece:
                    return piece
                if native.finished:
                    self.close()
                    raise StopAsyncIteration
                await woken
            finally:
                wakeups.forget(native.id, woken)


class _Wakeups:
    """Wakes the asyncio tasks that wait for an engine's requests.

    The native scheduler writes one byte to a socket pair when requests have
    new text or have ended (``notify``); a reader task on each event loop
    with waiters receives it (``loop.sock_recv``, which every asyncio loop
    has), takes the ids of those requests and wakes their waiters, on
    whichever loop they wait. No thread polls, and the GIL is taken only
    when there is news.
    """

    def __init__(self, native: Any) -> None:
        self._native = native
        self._recv, self._send = socket.socketpair()
        self._recv.setblocking(False)
        self._send.setblocking(False)
        self._lock = threading.Lock()
        self._waiters: dict[int, list[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]]] = {}
        self._readers: dict[asyncio.AbstractEventLoop, asyncio.Task[None]] = {}
        self._closed = False
        native.notify(self._send.fileno())

    def waiter(self, request_id: int) -> asyncio.Future[None]:
        """A future of the running loop, done at request ``request_id``'s next news (or at close)."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        with self._lock:
            if self._closed:
                future.set_result(None)
                return future
            self._waiters.setdefault(request_id, []).append((loop, future))
            reader = self._readers.get(loop)
            if reader is None or reader.done():
                self._readers = {lp: t for lp, t in self._readers.items() if not t.done()}
                self._readers[loop] = loop.create_task(self._read(loop), name="step35-engine-wakeups")
        return future

    def forget(self, request_id: int, future: asyncio.Future[None]) -> None:
        """Drop a waiter (woken or not)."""
        with self._lock:
            waiting = self._waiters.get(request_id, [])
            waiting[:] = [(lp, f) for lp, f in waiting if f is not future]
            if not waiting:
                self._waiters.pop(request_id, None)

    async def _read(self, loop: asyncio.AbstractEventLoop) -> None:
        while not self._closed:
            try:
                await loop.sock_recv(self._recv, 4096)
            except OSError:  # closed: the engine is closing
                return
            self._wake(self._native.take_events())

    def _wake(self, ids: Iterable[int] | None) -> None:
        """Wake the waiters of requests ``ids`` (None: every waiter)."""
        with self._lock:
            if ids is None:
                targets = [w for waiting in self._waiters.values() for w in waiting]
            else:
                targets = [w for i in ids for w in self._waiters.get(i, ())]
        try:
            here = asyncio.get_running_loop()
        except RuntimeError:  # called from a thread without a loop (close)
            here = None
        for loop, future in targets:
            if loop is here:
                _resolve(future)
                continue
            try:
                loop.call_soon_threadsafe(_resolve, future)
            except RuntimeError:  # that event loop is closed: nobody waits there any more
                continue

    def close(self) -> None:
        """Wake every waiter, stop the readers and close the sockets (after the scheduler has stopped)."""
        self._native.notify(-1)
        with self._lock:
            self._closed = True
            readers = list(self._readers.items())
            self._readers.clear()
        self._wake(None)
        for loop, task in readers:
            try:
                loop.call_soon_threadsafe(task.cancel)
            except RuntimeError:  # that event loop is closed: its reader is gone with it
                continue
        self._recv.close()
        self._send.close()


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


class Engine:
    """Continuous batching: many requests at once over one context.

    Args:
        model: the loaded :class:`~step35.Model`.
        slots: sequences decoded together (like llama-server's ``-np``), 1 to 256.
        context: settings of the engine's context (:class:`~step35.ContextParams`
            fields; default: the model's). ``n_ctx`` is the context of one slot:
            the KV cache holds ``slots`` streams of ``n_ctx`` tokens each.
        max_waiting: requests that may wait for a slot; one more raises
            :class:`~step35.errors.QueueFullError`.
        kv_unified: the slots share one KV cache of ``n_ctx`` cells instead of
            holding ``n_ctx`` each: more slots in the same memory when most
            requests are short. When the shared cache is full the engine drops
            idle slots' cached prefixes, then holds prompts back, and as a last
            resort ends the longest request with ``finish_reason="length"``.
        cache_mib: bound of the host-memory prompt cache, in MiB (0: none; None:
            a quarter of the available RAM, at most 8 GiB). When a slot is
            given to a request that does not extend the conversation it holds,
            that conversation's state is saved there first; a later request
            that extends it gets it back and evaluates only its new tokens.
            Least recently used conversations are dropped first.
        checkpoints: how many checkpoints of its sliding-window layers each
            slot keeps (0: none), taken just before the end of each prompt and every
            ``checkpoint_every`` tokens of a long one. A prompt that shares a
            prefix with a slot's conversation, but diverges from it more than
            a window before its end, is served from the checkpoint at or
            before the divergence instead of from scratch (the window layers
            keep only the last window). Checkpoints travel with a
            conversation into the prompt cache and back.
        draft: multi-token prediction: tokens the MTP heads draft per step for
            every generating slot (1 to 3; 0 off; None: 1 when the model was
            loaded with heads, else 0). The heads' draft context follows every
            slot; each slot's drafts are checked in the step's batch, and the
            output is the same as without (see :mod:`step35.generation.mtp`). A slot given
            a conversation from the prompt cache or another slot drafts from
            what it evaluates after that (the heads' own cache is not saved).
        check_memory: before allocating anything, plan what the engine adds
            beside the loaded weights (every slot's KV cache, compute buffers,
            the MTP draft context, the prompt cache and checkpoints;
            :func:`step35.tools.fit.check_engine`)
            and raise :class:`~step35.MemoryFitError` with the plan when it does
            not fit (the default context is the model's training context per
            slot: for Step 3.5 Flash, 4 x 262,144 tokens).

    Example::

        >>> with step35.Engine(model, slots=4) as engine:
        ...     outs = [engine.generate(p, max_tokens=64, stream=True) for p in prompts]  # all run at once
        ...     texts = ["".join(s) for s in outs]
    """

    def __init__(self, model: Model, slots: int = 4, *, context: ContextParams | Mapping[str, Any] | None = None,
                 max_waiting: int = 64, kv_unified: bool = False, cache_mib: float | None = None,
                 checkpoints: int = CHECKPOINTS, checkpoint_every: int = CHECKPOINT_EVERY,
                 draft: int | None = None, check_memory: bool = True) -> None:
        from .context import ContextParams

        if isinstance(slots, bool) or not isinstance(slots, int) or not 1 <= slots <= MAX_SLOTS:
            raise ValueError(f"slots must be an int in [1, {MAX_SLOTS}], got {slots!r}")
        if isinstance(max_waiting, bool) or not isinstance(max_waiting, int) or max_waiting < 0:
            raise ValueError(f"max_waiting must be an int >= 0, got {max_waiting!r}")
        if cache_mib is None:
            cache_mib = default_cache_mib()
        if isinstance(cache_mib, bool) or not isinstance(cache_mib, (int, float)) or not cache_mib >= 0:
            raise ValueError(f"cache_mib must be a number of MiB >= 0 (0: no prompt cache), got {cache_mib!r}")
        for name, value, low in (("checkpoints", checkpoints, 0), ("checkpoint_every", checkpoint_every, 1)):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"{name} must be an int >= {low}, got {value!r}")
        n_draft = check_draft(draft, min(model.mtp_heads, 3))
        base = ContextParams.coerce(context if context is not None else model._context_params)
        n_ctx_slot = base.n_ctx or model.n_ctx_train
        params = engine_context(base, slots, n_ctx_slot, kv_unified)
        if check_memory:
            from .tools.fit import check_engine

            check_engine(model, params, checkpoints=checkpoints, cache_mib=cache_mib, drafts=n_draft > 0)
        self.model = model
        self.slots = slots
        self.n_ctx_slot = n_ctx_slot
        self.kv_unified = bool(kv_unified)
        self.draft = n_draft
        """MTP tokens drafted per step (0: none)."""
        self._ctx = model.new_context(params, mtp=n_draft > 0)
        self.cache_mib = float(cache_mib)
        self._native = self._ctx._core.Engine(self._ctx._handle, max_waiting, n_ctx_slot,
                                              int(cache_mib * (1 << 20)), checkpoints, checkpoint_every, n_draft)
        self._closed = False
        self._wakeups = _Wakeups(self._native)

    # ---- requests ------------------------------------------------------------

    def _submit(self, ids: list[int], *, max_tokens: int | None, sampling: SamplingParams,
                stop: str | Sequence[str] | None, constraint: Any = None) -> tuple[Any, int]:
        """Queue one request; its native handle and seed."""
        return self._submit_all([(ids, constraint)], max_tokens=max_tokens, sampling=sampling, stop=stop)[0]

    def _submit_all(self, requests: list[tuple[list[int], Any]], *, max_tokens: int | None,
                    sampling: SamplingParams, stop: str | Sequence[str] | None) -> list[tuple[Any, int]]:
        """Queue (prompt ids, constraint) requests together, all or none: their prompts share
        the first batches and they generate side by side (a list given to generate/chat)."""
        if self._closed:
            raise ClosedError("the engine is closed")
        n_max, stops = check_max_tokens(max_tokens), check_stop(stop)
        items, seeds = [], []
        for ids, constraint in requests:
            native_sampling, seed = sampling._native(self._ctx._core)
            native_sampling.constraint = constraint
            items.append((ids, n_max, native_sampling, stops))
            seeds.append(seed)
        return list(zip(self._native.submit_all(items), seeds))

    def generate(
        self,
        prompt: str | bytes | Iterable[int],
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
    ) -> Completion | EngineStream:
        """Continue ``prompt``, batched with the engine's other requests (see :meth:`step35.Model.generate`).

        Non-streaming calls block until this request ends (other threads'
        requests run meanwhile); streaming calls return at once.

        Raises:
            ValueError: an invalid parameter (named in the message), before anything is queued.
            ContextOverflowError: the prompt does not fit in one slot's context.
            QueueFullError: ``max_waiting`` requests are already waiting.
        """

        sampling = SamplingParams._pick(locals())  # the sampling arguments above are SamplingParams' fields
        req = prepare_completion(self.model, prompt, add_special=add_special, parse_special=parse_special,
                                 grammar=grammar, reasoning_budget=reasoning_budget)
        native, used_seed = self._submit(req.tokens, max_tokens=max_tokens, sampling=sampling, stop=stop,
                                         constraint=req.constraint)
        return result(native, used_seed, stream=stream, owner=self, stream_type=EngineStream)

    def chat(
        self,
        messages: list[dict[str, Any]],
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
        template_kwargs: Mapping[str, Any] | None = None,
    ) -> dict[str, Any] | ChatStream:
        """An OpenAI-style chat completion, batched with the engine's other requests.

        The same arguments and results as :meth:`step35.Model.chat`; the
        returned :class:`~step35.chat.openai.ChatStream` also works with ``async for``.
        A slot whose cache holds the earlier turns of the conversation is
        reused: only the new tokens are evaluated.
        """
        from .chat.openai import ChatStream, response

        sampling = SamplingParams._pick(locals())  # the sampling arguments above are SamplingParams' fields
        req = prepare_chat(self.model, messages, tools, tool_choice, template_kwargs=template_kwargs,
                           response_format=response_format, reasoning_budget=reasoning_budget,
                           parallel_tool_calls=parallel_tool_calls)
        native, used_seed = self._submit(req.tokens, max_tokens=max_tokens, sampling=sampling, stop=stop,
                                         constraint=req.constraint)
        name = self.model.path.name
        if stream:
            return ChatStream(EngineStream(native, used_seed, self), req.tools, name)
        return response(native, used_seed, req.tools, model_name=name)

    def prompt_tokens(self, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None = None,
                      tool_choice: Any = "auto", template_kwargs: Mapping[str, Any] | None = None) -> list[int]:
        """The prompt tokens :meth:`chat` would evaluate for this conversation (nothing is queued).

        A slot that holds a prefix of them in its cache evaluates only the rest.
        """
        return prepare_chat(self.model, messages, tools, tool_choice, template_kwargs=template_kwargs,
                            constrain=False).tokens

    def generate_many(self, prompts: Sequence[str | bytes | Iterable[int]], max_tokens: int | None = 256, *,
                      add_special: bool = True, parse_special: bool = True,
                      stop: str | list[str] | None = None, grammar: str | None = None,
                      reasoning_budget: int | None = None, **sampling: Any) -> list[Completion]:
        """Continue every prompt at once; the :class:`~step35.Completion` of each, in order.

        ``sampling``: :class:`~step35.SamplingParams` fields, the same for every
        prompt (with a ``seed``, each prompt's output is as reproducible as alone).
        ``grammar`` and ``reasoning_budget`` as in :meth:`step35.Model.generate`.
        """

        params = SamplingParams(**sampling)
        prepared = [prepare_completion(self.model, p, add_special=add_special, parse_special=parse_special,
                                       grammar=grammar, reasoning_budget=reasoning_budget) for p in prompts]
        requests = [(r.tokens, r.constraint) for r in prepared]
        natives = self._submit_all(requests, max_tokens=max_tokens, sampling=params, stop=stop)
        return [result(n, sd, stream=False, owner=self) for n, sd in natives]  # type: ignore[misc]

    def chat_many(self, conversations: Sequence[list[dict[str, Any]]], tools: list[dict[str, Any]] | None = None,
                  tool_choice: Any = "auto", *, max_tokens: int | None = None, stop: str | list[str] | None = None,
                  template_kwargs: Mapping[str, Any] | None = None, response_format: Mapping[str, Any] | None = None,
                  reasoning_budget: int | None = None, parallel_tool_calls: bool = True,
                  **sampling: Any) -> list[dict[str, Any]]:
        """Answer every conversation at once; the ``chat.completion`` dict of each, in order.

        ``response_format``, ``reasoning_budget`` and ``parallel_tool_calls`` as in :meth:`step35.Model.chat`.
        """
        from .chat.openai import response

        params = SamplingParams(**sampling)
        prepared = [prepare_chat(self.model, messages, tools, tool_choice, template_kwargs=template_kwargs,
                                 response_format=response_format, reasoning_budget=reasoning_budget,
                                 parallel_tool_calls=parallel_tool_calls) for messages in conversations]
        natives = self._submit_all([(r.tokens, r.constraint) for r in prepared], max_tokens=max_tokens,
                                   sampling=params, stop=stop)
        name = self.model.path.name
        return [response(n, sd, r.tools, model_name=name) for (n, sd), r in zip(natives, prepared)]

    def metrics(self) -> dict[str, Any]:
        """Slots, running and waiting requests, token totals (prompt evaluated / cached / restored from the
        prompt cache, generated) and the prompt cache's size (``prompt_cache_bytes``, ``_entries``, ``_max_bytes``)."""
        return dict(self._native.metrics())

    # ---- lifetime --------------------------------------------------------------

    @property
    def layout(self) -> str:
        """The KV cache's shape in words: "4 slots x 8192 tokens" or "4 slots sharing 8192 tokens"."""
        return f"{self.slots} slots {'sharing' if self.kv_unified else 'x'} {self.n_ctx_slot} tokens"

    @property
    def closed(self) -> bool:
        """True once :meth:`close` was called."""
        return self._closed

    def close(self, cancel: bool = True, timeout: float = 10.0) -> None:
        """Stop accepting requests; cancel the running ones (or, with ``cancel=False``,
        let them finish for up to ``timeout`` seconds first). Frees the context. Idempotent."""
        if self._closed:
            return
        self._native.stop(bool(cancel), float(timeout))
        self._closed = True
        self._native.join()
        self._wakeups.close()
        self._ctx.close()

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        m = self.metrics() if not self._closed else {}
        state = "closed" if self._closed else f"{m.get('running', 0)} running, {m.get('waiting', 0)} waiting"
        return f"<step35.Engine {self.model.path.name}: {self.layout}, {state}>"
