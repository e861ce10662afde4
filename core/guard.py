"""`Guard`: the façade every integration uses. Policy, cache, timeouts, fail mode and events.

Every check exists as a sync method and an async twin (``check_prompt`` / ``acheck_prompt``). The
logic is written once (`_prepare` before the model, `_settle` after it); only the backend call is
written twice. Checks return a `Decision`; `Decision`s that block can be turned into exceptions
with `enforce`.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import logging
import time
from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextvars import ContextVar, Token, copy_context
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, TypeVar

from .backends.base import GenBackend, Outcome
from .backends.torch_runtime import refuse_meta_device
from .cache import DEFAULT_CACHE_BYTES, DEFAULT_CACHE_SIZE, VerdictCache, cache_key
from .errors import GuardTimeout, GuardUnavailable, GuardViolation, InputTooLarge, QwenGuardError, VerdictParseError
from .excused_split import ExcusedSplit, is_excused
from .formats.content import clean_text
from .formats.conversations import (
    RunsJudged,
    answer_or_prefill,
    least_contexts,
    prompt_conversation,
    rendered_answer_size,
    response_conversation,
    tool_call_conversation,
    untrusted_conversation,
    without_blank_context,
)
from .formats.encoding import check_use_chat_template
from .formats.prompts import Message, judged_size, normalize_messages, text_size
from .formats.windows import window_budget
from .policy import Action, Decision, Policy, require_count, require_switch
from .verdict import Risk, Stage, Verdict, worst

__all__ = ["Guard", "enforce", "DEFAULT_MAX_CHARS", "DEFAULT_MAX_MESSAGES", "DEFAULT_CACHE_SIZE", "DEFAULT_CACHE_BYTES"]

logger = logging.getLogger("qwenguard")

_T = TypeVar("_T")

_implicit_demo_warned = False


def _warn_implicit_demo() -> None:
    """Once per process: `Guard.from_pretrained()` without a model name loads the demo guard (rt53d F11)."""
    global _implicit_demo_warned
    if not _implicit_demo_warned:
        _implicit_demo_warned = True
        logger.warning(
            "Guard.from_pretrained() without a model loads the demo guard, a test fixture and not a safety "
            "model; pass a Qwen3Guard-Gen hub id or checkpoint directory (or 'demo' to mean it)"
        )


#: Characters one check accepts, all its turns together. Longer input is a caller bug or an attack on
#: the guard's time (1 MB of English is ~250k tokens: some 70 windows of 4K tokens).
DEFAULT_MAX_CHARS = 1_000_000
#: Messages one check accepts. Only the newest turns that fit a window are ever tokenized, but each
#: message is still validated, cleaned and hashed; a long LlamaIndex chat history (600 exchanges) fits.
DEFAULT_MAX_MESSAGES = 4096
#: Checks one call may send to the model (after the cache): a history of thousands of tool calls each a check
#: of its own cost a forward each (16,003 for one LlamaIndex history of 1 MB, rt48c), where one text of the
#: same size is a few windows.
DEFAULT_MAX_CHECKS = 4096
#: Calls at once when a failed batch is judged again item by item (see `Guard._one_by_one_after`).
RETRY_CONCURRENCY = 8

DecisionListener = Callable[[Decision], None]

#: The count options of `Guard.from_pretrained` (the Guard's and the local Gen backend's): (name, minimum, None ok).
_COUNT_OPTIONS = (
    ("max_chars", 1, False),
    ("max_messages", 1, False),
    ("max_checks", 1, False),
    ("max_windows_per_call", 1, True),
    ("cache_size", 0, False),
    ("cache_bytes", 0, False),
    ("max_new_tokens", 1, False),
    ("max_context", 1, True),
    ("max_batch", 1, False),
    ("window_overlap", 0, False),
    ("max_window_tokens", 1, False),
    ("max_windows", 1, False),
    ("max_batch_tokens", 1, True),
    ("width_floor", 1, False),
    ("max_session_tokens", 0, True),
)


class _NotStarted(GuardTimeout):
    """A failed batch's retry had no time left to start this item's call (see `Guard._retry_left`)."""


def enforce(decision: Decision) -> Decision:
    """Return ``decision`` if allowed; raise `GuardViolation` (or `GuardUnavailable` for guard errors) if not."""
    if not isinstance(decision, Decision):
        raise TypeError(_not_a_decision(decision))
    if decision.allowed:
        return decision
    if decision.reason in ("guard_error", "timeout"):
        cls = GuardTimeout if decision.reason == "timeout" else GuardUnavailable
        raise cls(f"guard could not answer and the policy fails closed: {decision.error}", decision)
    raise GuardViolation(decision)


def _not_a_decision(value: object) -> str:
    if asyncio.iscoroutine(value):
        value.close()  # never awaited on purpose: no "coroutine was never awaited" warning on top
        return (
            "enforce takes a Decision, got a coroutine: await the async check first, "
            "enforce(await guard.acheck_prompt(...))"
        )
    if isinstance(value, (list, tuple)):
        return (
            f"enforce takes one Decision, got a {type(value).__name__} of {len(value)} (check_documents and "
            f"check_many return one Decision per item): enforce each, `for d in decisions: enforce(d)`"
        )
    return f"enforce takes a Decision (what a guard.check_* call returns), got {type(value).__name__}"


_STAGE_NAMES = ", ".join(s.value for s in Stage)
_PAIR_SHAPE = (
    "check_many takes (stage, conversation) pairs, e.g. [('prompt', 'How can I ...?'), "
    "('response', [{'role': 'user', 'content': ...}, {'role': 'assistant', 'content': ...}])]"
)


def _stage_items(items: Iterable[Any]) -> list[tuple[Stage, Any]]:
    """``check_many``'s items as (Stage, conversation), or a TypeError/ValueError naming the shape."""
    if isinstance(items, (str, bytes, Mapping)) or not isinstance(items, Iterable):
        raise TypeError(f"{_PAIR_SHAPE}; got a {type(items).__name__}")
    out: list[tuple[Stage, Any]] = []
    for i, item in enumerate(items):
        if not isinstance(item, (tuple, list)) or len(item) != 2:
            raise TypeError(f"{_PAIR_SHAPE}; item {i} is the {type(item).__name__} {_short(item)}")
        stage, conversation = item
        if not isinstance(stage, Stage):
            if not isinstance(stage, str):
                raise TypeError(
                    f"{_PAIR_SHAPE}; item {i}'s stage (first) is a {type(stage).__name__}: stage first, then "
                    f"the conversation"
                )
            try:
                stage = Stage(stage)
            except ValueError:
                raise ValueError(f"item {i}: stage {stage!r} is not one of {_STAGE_NAMES}") from None
        out.append((stage, conversation))
    return out


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _conversation_before(messages: object) -> None:
    """``messages=`` of the tool-call checks: the conversation before the call, a list of message dicts."""
    if messages is None or (isinstance(messages, Sequence) and not isinstance(messages, (str, bytes))):
        return
    example = "[{'role': 'user', 'content': 'Email Bob.'}]"
    raise TypeError(
        f"messages must be a list of {{'role', 'content'}} dicts (the conversation before the call), "
        f"got {type(messages).__name__}; e.g. messages={example}"
    )


_warned_on_loop: set[tuple[str, str | None]] = set()

#: The async form of the integration entry point a sync check runs under (`calling_as`); None: the caller's own call.
_CALLING_AS: ContextVar[str | None] = ContextVar("qwenguard_calling_as", default=None)


class calling_as:  # noqa: N801 (used as a context manager, like contextlib's)
    """``with calling_as("AsyncGuardCallbackHandler ..."):``: an integration's sync entry point names its async form
    for the checks it makes, so that the event-loop warning tells its user what to use instead of
    ``guard.acheck_prompt``, which they never called (rt61a F3). The outermost entry point's name holds (the one
    the user called: a guarded model under `GuardMiddleware` keeps the middleware's). Off an event loop it does
    nothing (no warning to word): one C lookup."""

    __slots__ = ("_token", "_twin")

    def __init__(self, twin: str) -> None:
        self._twin = twin
        self._token: Token[str | None] | None = None

    def __enter__(self) -> None:
        if asyncio._get_running_loop() is not None and _CALLING_AS.get() is None:
            self._token = _CALLING_AS.set(self._twin)

    def __exit__(self, *exc: object) -> None:
        if self._token is not None:
            _CALLING_AS.reset(self._token)
            self._token = None


def speaking_as(twin: str) -> Callable[[_T], _T]:
    """Decorator form of `calling_as` for an integration's sync entry point: a function (a generator function too:
    named for each step, as each step may check), or a class, whose own ``on_*`` hooks (a callback handler's) it
    wraps."""

    def wrap(method: Callable[..., Any]) -> Callable[..., Any]:
        if inspect.isgeneratorfunction(method):

            @functools.wraps(method)
            def named_steps(*args: Any, **kwargs: Any) -> Any:
                steps = method(*args, **kwargs)
                if asyncio._get_running_loop() is None:  # off a loop (the intended use): the generator itself
                    return (yield from steps)
                try:
                    while True:
                        with calling_as(twin):
                            try:
                                step = next(steps)
                            except StopIteration as done:
                                return done.value
                        yield step
                finally:
                    steps.close()

            return named_steps

        @functools.wraps(method)
        def named(*args: Any, **kwargs: Any) -> Any:
            with calling_as(twin):
                return method(*args, **kwargs)

        return named

    def decorate(target: _T) -> _T:
        if not isinstance(target, type):
            return wrap(target)  # type: ignore[arg-type,return-value]
        for name, value in list(vars(target).items()):
            if name.startswith("on_") and callable(value):
                setattr(target, name, wrap(value))
        return target

    return decorate


def _warn_if_on_event_loop(what: str, twin: str) -> None:
    """Once per process and kind: a sync check (or stream) called on a thread that runs an event loop (an async
    web handler) holds the loop for the whole check, and every other request of the app waits (rt50a F6). It
    still runs: the warning names the async twin, the integration's own where one made the call (`calling_as`)."""
    if asyncio._get_running_loop() is None:
        return
    named = _CALLING_AS.get()  # read only on a loop: the hot path (no loop) never reads it
    if (what, named) in _warned_on_loop:
        return
    _warned_on_loop.add((what, named))
    logger.warning(
        "qwenguard: a sync guard %s was called inside a running event loop: it blocks the loop (every other task "
        "waits) until it is done; in async code use %s",
        what,
        twin if named is None else named,
    )


def _merged(size: int, parts: list[tuple[list[int], list[Outcome] | BaseException]]) -> list[Outcome] | BaseException:
    """The outcomes of a call's groups (`Guard._by_deadline`) in the order of its checks; one group's is as is."""
    if len(parts) == 1:
        return parts[0][1]
    for _, outcome in parts:
        if isinstance(outcome, InputTooLarge):  # a group over a call's size limit: the call's error, no check's own
            return outcome
    merged: list[Outcome] = [None] * size  # type: ignore[list-item]
    for group, outcome in parts:
        for n, i in enumerate(group):
            merged[i] = outcome if isinstance(outcome, BaseException) else outcome[n]  # type: ignore[assignment]
    return merged


def _closed_error(backend: object) -> GuardUnavailable:
    """What a closed guard answers for every check, before any work (planning a long text cost the threads shared
    with every other guard: rt52b F5), in its backend's words (``CLOSED``)."""
    return GuardUnavailable(getattr(backend, "CLOSED", "the guard backend is closed"))


#: A check's cache key before its backend knows its model's name (`Guard.remote` without ``model=``).
_UNNAMED: Hashable = object()


#: Above either, `acheck_many` prepares its checks (cleaning, neutralising, cache keys) on a worker thread.
PREPARE_ON_LOOP_ITEMS = 32
PREPARE_ON_LOOP_CHARS = 50_000
#: Above this size, a conversation's tool calls (``tool_calls``, ``function_call``), or the call `acheck_tool_call`
#: renders, are read on a worker thread: rendering reads the arguments as several parsers would (escapes, JSON
#: text within, deep nesting), microseconds a character where cleaning text takes nanoseconds (rt62a F1 F3 F6: a
#: 48,000-character argument of "\e" held the loop 230 ms). So is a prompt check's final answer that may render
#: differently (`rendered_answer_size`): it is rendered as a reader sees it (rt70h F1: 16,633 empty tags, 0.4 s).
PREPARE_ON_LOOP_CALL_CHARS = 1_000
#: What a character of a tool call, or of a prompt check's answer that may render differently, weighs against
#: `PREPARE_ON_LOOP_CHARS`.
_CALL_WEIGHT = PREPARE_ON_LOOP_CHARS // PREPARE_ON_LOOP_CALL_CHARS
_RENDERED_FIELDS = ("tool_calls", "function_call")


def _prepare_size(staged: Sequence[tuple[Stage, Any]], budget: int) -> int:
    """`text_size` of ``staged``'s conversations, until past ``budget``, a tool call's characters, and a prompt
    check's final answer where it may render differently (`answer_or_prefill` renders it), weighted by
    `_CALL_WEIGHT`: what `_prepare` costs, not only what it reads."""
    total = 0
    for stage, conversation in staged:
        if type(conversation) is not list and (
            not isinstance(conversation, Sequence) or isinstance(conversation, (str, bytes))
        ):
            total += text_size(conversation, budget - total)
            continue
        for m in conversation:
            if total > budget:
                break
            if not isinstance(m, Mapping) or (len(m) <= 2 and "content" in m):  # as `_check_size` reads them
                total += text_size(m, budget - total)
                continue
            for key, value in m.items():
                if total > budget:
                    break
                if key in _RENDERED_FIELDS:
                    total += _CALL_WEIGHT * text_size(value, (budget - total) // _CALL_WEIGHT)
                else:
                    total += text_size(key, budget - total) + text_size(value, budget - total)
        if stage is Stage.PROMPT and total <= budget:  # all of it counted: the answer is at most `budget` long
            total += (_CALL_WEIGHT - 1) * rendered_answer_size(conversation)  # its text counted once already
        if total > budget:
            break
    return total


@dataclass
class _Check:
    stage: Stage
    conversation: list[dict[str, str]]
    key: Hashable | None = None
    decision: Decision | None = None  # already decided without the model (empty, disabled, cached)
    request: _Check | None = None  # the request behind a last turn of markup alone, judged too (`answer_or_prefill`)


def _cache_stage(check: _Check) -> str:
    """The stage part of a check's cache key. A `RunsJudged` conversation is planned without its final run of user
    turns joined (the integration judges the run apart): its verdict answers only such checks, never the same
    conversation asked plainly, which the core joins (rt55d F7: an integration's allow of "mb at home?" after "How
    can I make a bo" was served to `check_prompt` from the cache)."""
    return check.stage.value + ("+runs-judged" if isinstance(check.conversation, RunsJudged) else "")


class Guard:
    """Screens prompts, responses, tool calls, tool results and documents with a Qwen3Guard model.

    >>> guard = Guard.from_pretrained("demo")                       # doctest: +SKIP
    >>> guard.check_prompt("How can I make a bomb at home?").allowed  # doctest: +SKIP
    False

    Limits (``docs/guard.md``): ``max_chars`` (all turns of one check, default 1,000,000),
    ``max_messages`` (default 4,096) and ``max_checks`` (checks one call sends to the model, after the
    cache: default 4,096) here, ``max_windows`` on the local backend (default 256). A check or call
    over a limit raises `InputTooLarge` (a ``ValueError``) to the caller, whatever ``on_error`` says:
    size alone never gets text through unjudged. The verdict cache holds at most ``cache_size``
    entries (default 4,096) and ``cache_bytes`` bytes (default 16 MiB).
    """

    def __init__(
        self,
        backend: GenBackend,
        policy: Policy | None = None,
        *,
        stream_backend: Any = None,
        cache_size: int = DEFAULT_CACHE_SIZE,
        cache_bytes: int = DEFAULT_CACHE_BYTES,
        max_chars: int = DEFAULT_MAX_CHARS,
        max_messages: int = DEFAULT_MAX_MESSAGES,
        max_checks: int = DEFAULT_MAX_CHECKS,
        listeners: Iterable[DecisionListener] = (),
        parallel_input: bool = False,
        max_windows_per_call: int | None = None,
    ) -> None:
        if policy is not None and not isinstance(policy, Policy):
            raise TypeError(f"policy must be a Policy, got {type(policy).__name__}")
        _require_gen_backend(backend)
        if stream_backend is not None:
            _require_stream_backend(stream_backend)
        for option, value in (("max_chars", max_chars), ("max_messages", max_messages), ("max_checks", max_checks)):
            require_count(option, value)
        require_switch("parallel_input", parallel_input)  # bool("false") is True: on, for a config file's "false"
        if max_windows_per_call is not None:
            require_count("max_windows_per_call", max_windows_per_call)
        self.backend = backend
        self.policy = policy or Policy()
        self.stream_backend = stream_backend
        self.cache = VerdictCache(cache_size, max_bytes=cache_bytes)
        self._closed = False  # set by close(): from then on the cache answers nothing either
        self.max_chars = max_chars
        self.max_messages = max_messages
        self.max_checks = max_checks
        self.listeners: list[DecisionListener] = list(listeners)
        self.parallel_input = parallel_input
        #: Guard windows one `check_many` call (and every check and integration step built on it: a client's history
        #: of label-filled turns) may plan in all, over its batch, retries and re-reads; None: each conversation's
        #: ``max_windows`` only (rt57e F2). Past it: `InputTooLarge`, before any model work.
        self.max_windows_per_call = max_windows_per_call

    # -- construction -------------------------------------------------------------------------
    @classmethod
    def from_pretrained(
        cls,
        model: str | Path | None = None,
        *,
        policy: Policy | None = None,
        stream_model: str | Path | None = None,
        device: str | None = "auto",
        dtype: Any = "auto",
        stream_options: Mapping[str, Any] | None = None,
        **guard_kwargs: Any,
    ) -> Guard:
        """A local guard: ``"demo"`` (embedded, offline), a hub id such as ``"Qwen/Qwen3Guard-Gen-0.6B"``,
        or a checkpoint directory; omitted, the demo guard (a test fixture, not a safety model: a warning says so
        once). ``stream_model`` adds a Qwen3Guard-Stream checkpoint for `stream`, loaded
        with ``stream_options`` (`TransformersStream.load`'s: ``max_session_tokens``, ``max_positions``, ...)."""
        from .backends.transformers_gen import TransformersGen

        if model is None:
            model = "demo"
            _warn_implicit_demo()
        backend_keys = {
            "max_new_tokens",
            "max_context",
            "max_batch",
            "max_wait_s",
            "window_overlap",
            "use_chat_template",
            "revision",
            "local_files_only",
            "max_window_tokens",
            "max_windows",
            "max_batch_tokens",
            "target_step_s",
            "width_floor",
            "engine",
            "max_session_tokens",
            "label_branches",
        }
        backend_kwargs = {k: guard_kwargs.pop(k) for k in list(guard_kwargs) if k in backend_keys}
        refuse_meta_device(device)  # before any weight loads
        check_use_chat_template(backend_kwargs.get("use_chat_template"))
        if "parallel_input" in guard_kwargs:
            require_switch("parallel_input", guard_kwargs["parallel_input"])
        if stream_options is not None:
            from .backends.transformers_stream import check_load_options

            check_load_options(dict(stream_options))
        # Before any weight loads: a count of the wrong type (a str from an env var or a config file) or out of
        # range is one error naming the option, not a comparison error from deep inside the load.
        for option, minimum, optional in _COUNT_OPTIONS:
            for given in (guard_kwargs, backend_kwargs):
                if option in given:
                    require_count(option, given[option], minimum, optional=optional)
        backend = TransformersGen.load(model, device=device, dtype=dtype, **backend_kwargs)
        if stream_options and stream_model is None:
            raise ValueError("stream_options without stream_model: there is no Stream model to apply them to")
        stream_backend = None
        if stream_model is not None:
            stream_backend = cls._load_stream(stream_model, device=device, dtype=dtype, **(stream_options or {}))
        return cls(backend, policy, stream_backend=stream_backend, **guard_kwargs)

    @classmethod
    def remote(
        cls,
        base_url: str | Sequence[str],
        *,
        model: str | None = None,
        api_key: str | None = None,
        mode: str = "chat",
        tokenizer: Any = None,
        max_context: int | None = None,
        headers: Mapping[str, str] | None = None,
        verify: Any = None,
        stream: bool | str | Sequence[str] = False,
        stream_options: Mapping[str, Any] | None = None,
        policy: Policy | None = None,
        **opts: Any,
    ) -> Guard:
        """A guard whose model runs on an OpenAI-compatible engine: vLLM, SGLang, llama.cpp, ``transformers
        serve`` or ``qwenguard serve`` (docs/remote.md).

        ``model``: the served model's name; omitted, the first check learns it from the server's ``/models``
        (the one model listed there; several or none: `ServedModelUnknown`, a guard error saying pass ``model=``).
        ``mode="chat"`` sends the conversation (content neutralised: no control tokens, no forged turns);
        ``mode="completion"`` sends the prompt itself: token ids when ``tokenizer`` is given and the engine
        takes them, else the text qwenguard renders. ``tokenizer`` (hub id, directory, ``"demo"``, or a
        loaded tokenizer) also makes windows exact, equal to the local guard's; without it they are sized
        by a byte bound. ``max_context``: the engine's context in tokens, when it does not publish it at
        ``/models`` (vLLM and SGLang do). ``stream=True`` runs `stream` sessions on a qwenguard server's
        ``/v1/stream``; ``stream_options`` go to its `RemoteStream` (``open_timeout_s``, ``max_failovers``,
        ``max_frame_bytes``, ...). Other options go to `OpenAIGen` (timeouts, retries, ``max_concurrency``,
        logprobs, windows) or to `Guard` (cache_size, listeners, ...).

        Checks and stream sessions reach the servers alike (docs/remote.md, "Proxies, headers and TLS"):
        ``headers`` go on every request and every stream handshake to the checks' servers (the ``Authorization``
        of ``api_key`` wins); stream servers elsewhere (``stream=URL``, none of them a checks' server) get only
        the ``api_key`` and ``headers`` of ``stream_options``, and an ``Authorization`` there is never replaced
        by the checks' key; both take the proxy httpx reads from the environment (``HTTP_PROXY``, ``HTTPS_PROXY``,
        ``ALL_PROXY``, ``NO_PROXY``); ``verify`` (httpx's meaning: ``True``, ``False``, a CA bundle path,
        or an ``ssl.SSLContext``; None: each client's default) checks the certificates of ``https://`` and
        ``wss://`` servers, e.g. ``verify="/etc/guard/ca.pem"`` for a private CA. With ``verify`` the checks
        get a transport built for it (env proxies kept), so it cannot be combined with ``transport=``;
        ``stream_options={"verify": ...}`` or ``{"headers": ...}`` set the streams' own.
        ``guard.close()`` / ``aclose()`` closes both: later checks and stream sessions are guard errors.

        ``base_url`` may be a list of replicas (or one load balancer's URL): a check that fails on one is
        retried on another, and a stream session whose replica dies or restarts is re-opened on another
        and replayed, releasing nothing the new session has not judged (docs/scaling.md). ``stream`` may
        also be the URL (or list) of the qwenguard servers for stream sessions when Gen checks go to
        other servers (vLLM or SGLang replicas for Gen, ``qwenguard serve`` replicas for Stream)."""
        from .backends.openai_gen import OpenAIGen

        guard_keys = {
            "cache_size",
            "cache_bytes",
            "max_chars",
            "max_messages",
            "max_checks",
            "listeners",
            "parallel_input",
            "max_windows_per_call",
        }
        guard_kwargs = {k: opts.pop(k) for k in list(opts) if k in guard_keys}
        context = None
        if verify is not None:
            from .backends.openai_gen import DEFAULT_MAX_CONCURRENCY
            from .backends.transport import checks_transport, ssl_context

            if opts.get("transport") is not None or opts.get("async_transport") is not None:
                raise ValueError("pass verify= or transport=, not both: verify= builds the checks' transport")
            context = ssl_context(verify)  # one context: checks and streams trust the same CAs
            connections = opts.get("max_concurrency", DEFAULT_MAX_CONCURRENCY)
            opts["transport"] = checks_transport(context, max_connections=connections)
        backend = OpenAIGen(
            base_url,
            model=model,
            api_key=api_key,
            mode=mode,  # type: ignore[arg-type]
            tokenizer=tokenizer,
            max_context=max_context,
            headers=headers,
            **opts,
        )
        if stream is None:
            stream = False
        if not isinstance(stream, (bool, str, Sequence)) or (stream is not False and not stream):
            # stream=[] or "" (an empty setting) meant no streams at all, silently; so did 0.
            raise ValueError(f"stream must be True, False, a stream server's URL or a list of them, got {stream!r}")
        if stream_options and not stream:
            raise ValueError("stream_options need stream=True (or the stream servers' URL)")
        if stream_options and "base_url" in stream_options:
            raise ValueError("stream_options cannot hold base_url: pass the stream servers' URL as stream=")
        stream_backend = None
        if stream:
            from .backends.remote_stream import RemoteStream
            from .backends.transport import same_servers

            own = dict(stream_options or {})
            # The checks' credentials go only to the checks' own servers (rt61c F5): stream servers elsewhere get
            # what stream_options give them. An Authorization the operator gives the streams is never replaced by
            # the checks' api_key.
            shared: dict[str, Any] = {}
            if stream is True or same_servers(base_url, stream):
                shared = {"api_key": api_key, "headers": headers}
            if "api_key" not in own and any(str(k).lower() == "authorization" for k in own.get("headers") or {}):
                shared.pop("api_key", None)
            stream_kwargs = {**shared, "verify": context, **own}
            stream_backend = RemoteStream(base_url if stream is True else stream, **stream_kwargs)
        return cls(backend, policy, stream_backend=stream_backend, **guard_kwargs)

    @staticmethod
    def _load_stream(model: str | Path, *, device: str | None, dtype: Any, **options: Any) -> Any:
        from .backends.transformers_stream import TransformersStream  # options checked by from_pretrained

        return TransformersStream.load(model, device=device, dtype=dtype, **options)

    # -- events -------------------------------------------------------------------------------
    def on_decision(self, listener: DecisionListener) -> DecisionListener:
        """Register ``listener(decision)``, called after every check (usable as a decorator).

        Listener errors are logged and swallowed: auditing must never change a guard outcome."""
        self.listeners.append(listener)
        return listener

    def _emit(self, decision: Decision) -> None:
        for listener in self.listeners:
            try:
                listener(decision)
            except Exception:  # noqa: BLE001
                logger.exception("qwenguard decision listener %r failed", listener)

    # -- shared logic -------------------------------------------------------------------------
    def _check_size(self, conversation: Sequence[Message]) -> None:
        """The operator's limits, checked before any work proportional to the text (`InputTooLarge`)."""
        # `type(...) is` first: ABC isinstance checks dominate this function, which runs on every chunk.
        if type(conversation) is not list and (
            not isinstance(conversation, Sequence) or isinstance(conversation, (str, bytes))
        ):
            return  # normalize_messages says what is wrong with it
        if len(conversation) > self.max_messages:
            raise InputTooLarge(
                f"{len(conversation):,} messages exceed max_messages={self.max_messages:,}; "
                f"send fewer turns or raise Guard(max_messages=...)"
            )
        total = 0
        for i, m in enumerate(conversation):
            if type(m) is dict or isinstance(m, Mapping):
                if len(m) > 2 or "content" not in m:  # as `normalize_messages` reads them: calls, refusal text
                    total += judged_size(i, m, self.max_chars - total + 1)
                elif isinstance(content := m.get("content"), str):
                    total += len(content)
                if total > self.max_chars:
                    break
        if total > self.max_chars:
            raise InputTooLarge(
                f"{total:,} characters exceed max_chars={self.max_chars:,}; split the text or raise Guard(max_chars=...)"
            )

    def _prepare(self, stage: Stage, conversation: Sequence[Message]) -> _Check:
        self._check_size(conversation)
        msgs = normalize_messages(conversation)
        for m in msgs:
            m["content"] = clean_text(m["content"], keep_lone_cr=True, keep_moves=True)  # as a terminal shows it too
        msgs = without_blank_context(msgs)
        request = None
        if stage is Stage.PROMPT:  # a client's conversation: a blank last answer is a prefill, the request is judged
            # A last turn of markup alone that hides text is judged as an answer, and the request behind it as well:
            # a prefill of a tag no list holds had the request judged as mere context (rt63g F2).
            msgs, request = answer_or_prefill(msgs)
        check = self._unjudged(stage, msgs, conversation)
        if request is not None:
            check.request = self._unjudged(stage, request, conversation)
        return check

    async def _aprepare(self, staged: Sequence[tuple[Stage, Any]]) -> list[_Check]:
        """`_prepare` of each of ``staged``, on the event loop while that is cheap (`_prepare_size`)."""
        if len(staged) > PREPARE_ON_LOOP_ITEMS or _prepare_size(staged, PREPARE_ON_LOOP_CHARS) > PREPARE_ON_LOOP_CHARS:
            # Cleaning, label-breaking and hashing thousands of turns is hundreds of milliseconds of work: on a
            # worker thread, never on the event loop (a client's 10,000-turn history held it 0.3-0.5 s, rt51b F7).
            return await asyncio.to_thread(lambda: [self._prepare(stage, conv) for stage, conv in staged])
        return [self._prepare(stage, conv) for stage, conv in staged]

    def _unjudged(self, stage: Stage, msgs: list[dict[str, str]], conversation: Sequence[Message]) -> _Check:
        """The check of ``msgs`` (prepared from ``conversation``), decided already where no model call is needed."""
        check = _Check(stage, RunsJudged(msgs) if isinstance(conversation, RunsJudged) else msgs)
        if not self.policy.enabled(stage):
            check.decision = Decision(True, Action.ALLOW, stage, "disabled")
        elif not msgs[-1]["content"].strip() and (len(msgs) == 1 or msgs[-1]["role"] == "assistant"):
            # Nothing to judge: an empty text or answer is allowed, with its own reason (documented). An empty
            # user turn after others is judged: "How can I make a bomb?" then " " was allowed unread (rt54c F6);
            # the model reads the turns before it, as the server always did.
            check.decision = Decision(True, Action.ALLOW, stage, "empty")
        elif self.cache.maxsize > 0 and stage is not Stage.STREAM and not self._closed:
            # No key when the cache is off, and none for stream windows: they grow with every chunk, never
            # repeat, and would only evict verdicts worth keeping (documents, prompts). Hot path: every chunk.
            check.key = _UNNAMED
            if self.backend.name:  # none yet: a remote guard learns its model's at this check (`_settle` keys it)
                check.key = cache_key(self.backend.name, _cache_stage(check), msgs)
                cached = self.cache.get(check.key)
                if cached is not None:
                    check.decision = replace(self.policy.decide(cached, stage), cached=True)
        return check

    def _timeout(self, checks: Sequence[_Check]) -> float | None:
        values = [t for c in checks if (t := self.policy.timeout_for(c.stage)) is not None]
        return min(values) if values else None

    def _settle(
        self, checks: list[_Check], pending: list[_Check], outcome: list[Outcome] | BaseException
    ) -> InputTooLarge | None:
        """Decide ``pending`` from ``outcome``; the size error to raise once the rest are decided (`_finish`)."""
        if isinstance(outcome, InputTooLarge):
            raise outcome  # a size limit is the caller's error, never on_error's to allow
        if isinstance(outcome, BaseException):
            timed_out = isinstance(outcome, GuardTimeout)
            if not isinstance(outcome, QwenGuardError):
                # Its traceback where it came from (rt65a: a demo backend's one-off ValueError could not be traced).
                logger.warning("qwenguard backend failed: %r", outcome, exc_info=outcome)
            for c in pending:
                c.decision = self.policy.decide_error(c.stage, outcome, timeout=timed_out)
        else:
            refused = {id(c) for c, result in zip(pending, outcome) if isinstance(result, InputTooLarge)}
            for c, result in zip(pending, outcome):
                if isinstance(result, Verdict):
                    if c.key is _UNNAMED and self.backend.name:  # the model's name was learned by this check
                        c.key = cache_key(self.backend.name, _cache_stage(c), c.conversation)
                    if c.key is not None and c.key is not _UNNAMED:
                        self.cache.put(c.key, result)
                    c.decision = self.policy.decide(result, c.stage)
                elif isinstance(result, _NotStarted):  # never judged, through no fault of its own: blocked
                    c.decision = self.policy.decide_unjudged(c.stage, str(result))
                elif not isinstance(result, InputTooLarge):  # one conversation's error; a late one keeps its reason
                    c.decision = self.policy.decide_error(c.stage, result, timeout=isinstance(result, GuardTimeout))
            if refused:
                error = next(r for r in outcome if isinstance(r, InputTooLarge))
                error.too_large = tuple(
                    i
                    for i, c in enumerate(checks)
                    if id(c) in refused or (c.request is not None and id(c.request) in refused)
                )
                return error
        return None

    def _finish(self, checks: list[_Check], refused: InputTooLarge | None) -> list[Decision]:
        """The settled checks' decisions, heard by the listeners; ``refused`` raised where a check was too large."""
        if refused is not None:
            # A size limit is the caller's error, never a verdict or on_error's to allow: raised. The other
            # checks were judged (their verdicts cached, their decisions heard): the error carries them and names
            # the checks refused (a check whose own request check was), so that a caller leaving those out (a
            # node screen dropping one planted page) pays no model work twice (rt64k F1: each half of a halved
            # batch ran the model on every other node again; rt64m F3: with the cache off, again once).
            out = set(refused.too_large)
            refused.decided = tuple(None if i in out else self._decided(c) for i, c in enumerate(checks))
            raise refused
        return [self._decided(c) for c in checks]

    def _decided(self, check: _Check) -> Decision:
        """A settled check's decision (the stricter of its own and its request check's), heard by the listeners."""
        if check.request is not None and check.request.decision is not None:
            check.decision = _stricter(check.decision, check.request.decision)  # type: ignore[arg-type]
        decision: Decision = check.decision  # type: ignore[assignment]
        self._emit(decision)
        return decision

    # -- an excused text judged again in parts (`excused_split`) ---------------------------------
    @staticmethod
    def _excused(checks: list[_Check]) -> list[_Check]:
        """The settled checks (and request checks) the policy allowed only for their ignored categories."""
        every = [*checks, *(c.request for c in checks if c.request is not None)]
        return [c for c in every if is_excused(c.decision)]

    def _parts(self, plan: ExcusedSplit, roots: list[_Check]) -> list[_Check]:
        """The next level's parts as checks (the cache answers those judged before)."""
        return [self._unjudged(stage, part, roots[i].conversation) for i, stage, part in plan.pieces()]

    def _parts_decided(self, parts: list[_Check], outcome: list[Outcome]) -> list[Decision | BaseException]:
        """Each part's decision, or the size error of a part refused (decided by ``on_error`` as unread)."""
        refused = self._settle(parts, [p for p in parts if p.decision is None], outcome)
        return [p.decision if p.decision is not None else refused or InputTooLarge("not judged") for p in parts]

    def _excused_plan(self, roots: list[_Check]) -> tuple[ExcusedSplit, float]:
        """The plan for ``roots``, and when its calls start: each part is judged within one more of its own stage's
        deadline from then (texts of SSNs in 4,096 documents asked 295,000 parts, each level under a deadline of its
        own; a prompt's short deadline beside a document's long one timed the document's parts out under a fail-open
        policy: rt69n F1)."""
        plan = ExcusedSplit.of(self.policy, [(c.stage, c.conversation, c.decision) for c in roots])  # type: ignore[misc]
        return plan, time.monotonic()

    def _parts_late(
        self, pending: list[_Check], start: float
    ) -> tuple[float | None, list[Outcome] | BaseException | None]:
        """(the time left for a call of parts of one deadline, or the outcome of each where there is no call to make)."""
        timeout = self._timeout(pending)
        left = None if timeout is None else start + timeout - time.monotonic()
        if self._closed:
            return None, _closed_error(self.backend)
        if left is not None and left <= 0:
            return None, GuardTimeout("the check's deadline passed before an excused text's parts were judged")
        return left, [] if not pending else None

    def _parts_calls(self, pending: list[_Check]) -> list[list[int]]:
        """The indexes of ``pending`` by deadline (`_by_deadline`), at most ``max_checks`` a call."""
        return [
            group[i : i + self.max_checks]
            for group in self._by_deadline(pending)
            for i in range(0, len(group), self.max_checks)
        ]

    def _judge_excused(self, checks: list[_Check]) -> None:
        """Judge again in parts the checks the policy excused (`ExcusedSplit`): each gets the stricter decision."""
        if not (roots := self._excused(checks)):
            return
        plan, start = self._excused_plan(roots)
        while parts := self._parts(plan, roots):
            pending = [part for part in parts if part.decision is None]
            outcome: list[Outcome] = [None] * len(pending)  # type: ignore[list-item]
            for call in self._parts_calls(pending):
                batch = [pending[i] for i in call]
                left, judged = self._parts_late(batch, start)
                if judged is None:
                    with window_budget(self.max_windows_per_call):
                        judged = self._classify(batch, left)
                for i, result in zip(call, _each(judged, len(batch))):
                    outcome[i] = result
            plan.take(self._parts_decided(parts, outcome))
        for i, check in enumerate(roots):
            check.decision = plan.decision(i)

    async def _ajudge_excused(self, checks: list[_Check]) -> None:
        """Async twin of `_judge_excused`; a long text's parts are cut on a worker thread."""
        if not (roots := self._excused(checks)):
            return
        plan, start = self._excused_plan(roots)
        off_loop = text_size([c.conversation for c in roots], PREPARE_ON_LOOP_CHARS) > PREPARE_ON_LOOP_CHARS
        while parts := (await asyncio.to_thread(self._parts, plan, roots)) if off_loop else self._parts(plan, roots):
            pending = [part for part in parts if part.decision is None]
            outcome: list[Outcome] = [None] * len(pending)  # type: ignore[list-item]
            for call in self._parts_calls(pending):
                batch = [pending[i] for i in call]
                left, judged = self._parts_late(batch, start)
                if judged is None:
                    with window_budget(self.max_windows_per_call):
                        judged = await self._aclassify(batch, left)
                for i, result in zip(call, _each(judged, len(batch))):
                    outcome[i] = result
            plan.take(self._parts_decided(parts, outcome))
        for i, check in enumerate(roots):
            check.decision = plan.decision(i)

    # -- the two I/O paths --------------------------------------------------------------------
    def check_many(self, items: Sequence[tuple[Stage | str, Sequence[Message]]]) -> list[Decision]:
        """Check several conversations as one batch. ``items``: ``(stage, conversation)`` pairs, e.g.
        ``[("prompt", "How can I ...?"), ("response", [{"role": "user", ...}, {"role": "assistant", ...}])]``."""
        _warn_if_on_event_loop("check", "await guard.acheck_prompt(...) (acheck_response, acheck_many, ...)")
        checks = [self._prepare(stage, conv) for stage, conv in _stage_items(items)]
        pending = self._pending([*checks, *(c.request for c in checks if c.request is not None)])
        outcome: list[Outcome] | BaseException = []
        if pending and self._closed:
            outcome = _closed_error(self.backend)
        elif pending:
            groups = self._by_deadline(pending)
            # Shortest deadline first: each group's deadline counts from its own start (rarely more than one).
            with window_budget(self.max_windows_per_call):
                judged = [(group, self._judge([pending[i] for i in group])) for group in groups]
            outcome = _merged(len(pending), judged)
        refused = self._settle(checks, pending, outcome)
        self._judge_excused(checks)
        return self._finish(checks, refused)

    def _judge(self, pending: Sequence[_Check]) -> list[Outcome] | BaseException:
        """One backend call for ``pending`` (checks of one deadline), then what a failed call is judged again."""
        outcome = self._classify(pending, self._timeout(pending))
        if self._one_by_one_after(pending, outcome):
            outcome = self._retry_one_by_one(pending, outcome)  # type: ignore[arg-type]
        return self._judged_without_context(pending, outcome)

    async def _ajudge(self, pending: Sequence[_Check]) -> list[Outcome] | BaseException:
        """Async twin of `_judge`."""
        outcome = await self._aclassify(pending, self._timeout(pending))
        if self._one_by_one_after(pending, outcome):
            outcome = await self._aretry_one_by_one(pending, outcome)  # type: ignore[arg-type]
        return await self._ajudged_without_context(pending, outcome)

    # One call runs under one deadline. A batch of stages with different deadlines (a short one for prompts, a
    # long, fail-open one for tool results) ran whole under the shortest, and the stage given time failed open
    # for the other's sake (rt52b F4): each deadline's checks are a call of their own.
    def _by_deadline(self, pending: Sequence[_Check]) -> list[list[int]]:
        """The indexes of ``pending`` by their stage's deadline, shortest first (no deadline last)."""
        groups: dict[float | None, list[int]] = {}
        for i, check in enumerate(pending):
            groups.setdefault(self.policy.timeout_for(check.stage), []).append(i)
        return [groups[t] for t in sorted(groups, key=lambda t: (t is None, t or 0.0))]

    async def acheck_many(self, items: Sequence[tuple[Stage | str, Sequence[Message]]]) -> list[Decision]:
        """Async twin of `check_many`."""
        checks = await self._aprepare(_stage_items(items))
        pending = self._pending([*checks, *(c.request for c in checks if c.request is not None)])
        outcome: list[Outcome] | BaseException = []
        if pending and self._closed:
            outcome = _closed_error(self.backend)
        elif pending:
            groups = self._by_deadline(pending)
            with window_budget(self.max_windows_per_call):
                outcomes = await asyncio.gather(*(self._ajudge([pending[i] for i in group]) for group in groups))
            outcome = _merged(len(pending), list(zip(groups, outcomes)))
        refused = self._settle(checks, pending, outcome)
        await self._ajudge_excused(checks)
        return self._finish(checks, refused)

    def _pending(self, checks: list[_Check]) -> list[_Check]:
        """The checks the cache did not answer: what the call sends to the model, at most ``max_checks``."""
        pending = [c for c in checks if c.decision is None]
        if len(pending) > self.max_checks:
            raise InputTooLarge(
                f"{len(pending):,} checks to judge in one call exceed max_checks={self.max_checks:,} (a history of "
                f"that many tool calls, documents or turns, each judged on its own); send fewer or raise "
                f"Guard(max_checks=...)"
            )
        return pending

    def _classify(self, pending: Sequence[_Check], timeout: float | None) -> list[Outcome] | BaseException:
        try:
            outcome = self.backend.classify([c.conversation for c in pending], timeout=timeout)
        except Exception as exc:  # noqa: BLE001 - any backend failure becomes the policy's on_error
            return exc
        return _one_each(outcome, len(pending))

    async def _aclassify(self, pending: Sequence[_Check], timeout: float | None) -> list[Outcome] | BaseException:
        try:
            outcome = await self.backend.aclassify([c.conversation for c in pending], timeout=timeout)
        except Exception as exc:  # noqa: BLE001
            return exc
        return _one_each(outcome, len(pending))

    # A batch is one backend call: when it fails as a whole (one huge or malformed item made it time out
    # or crash), failing open would let every item through unjudged, the unsafe ones beside the culprit
    # included. Such a batch is judged again one conversation per call, up to RETRY_CONCURRENCY calls at
    # once (shortest first), each within one more deadline, so that only the items that fail on their own
    # fail open (docs/api.md, "Failing open is per check"); an item whose call the second deadline does not
    # let start is blocked (`Policy.decide_unjudged`). The local engine steps short checks apart from a long
    # one's windows, so a slow item does not hold the others' calls back.
    def _one_by_one_after(self, pending: Sequence[_Check], outcome: list[Outcome] | BaseException) -> bool:
        return (
            isinstance(outcome, Exception)
            and not isinstance(outcome, InputTooLarge)
            and len(pending) > 1
            and any(self.policy.on_error_for(c.stage) == "allow" for c in pending)
        )

    # The earlier turns of a conversation are the client's to write: a context that breaks the model's answer
    # (hundreds of blank turns did) made a guard error of the check, which on_error="allow" lets through. A
    # check whose answer was not a verdict is judged once more with the least context its turn needs (a
    # prompt alone; an answer after the user turn before it) before the policy decides a guard error.
    def _without_context_after(
        self, pending: Sequence[_Check], outcome: list[Outcome] | BaseException
    ) -> list[tuple[int, _Check]]:
        """(index, the check with the least context) for each check whose answer was no verdict and whose
        error the policy would let through."""
        if not isinstance(outcome, list):
            return []
        redo = [
            (i, _Check(c.stage, least))
            for i, (c, result) in enumerate(zip(pending, outcome))
            if isinstance(result, VerdictParseError) and self.policy.on_error_for(c.stage) == "allow"
            for least in least_contexts(c.conversation)
        ]
        if redo:
            logger.warning(
                "qwenguard: %d checks got no verdict with their context; judging their turns alone", len(redo)
            )
        return redo

    def _judged_without_context(
        self, pending: Sequence[_Check], outcome: list[Outcome] | BaseException
    ) -> list[Outcome] | BaseException:
        """``outcome``, with the checks `_without_context_after` names judged once more (`_with_retried`)."""
        if redo := self._without_context_after(pending, outcome):
            again = self._classify([c for _, c in redo], self._timeout(pending))
            return _with_retried(pending, outcome, redo, again)  # type: ignore[arg-type]
        return outcome

    async def _ajudged_without_context(
        self, pending: Sequence[_Check], outcome: list[Outcome] | BaseException
    ) -> list[Outcome] | BaseException:
        """Async twin of `_judged_without_context`."""
        if redo := self._without_context_after(pending, outcome):
            again = await self._aclassify([c for _, c in redo], self._timeout(pending))
            return _with_retried(pending, outcome, redo, again)  # type: ignore[arg-type]
        return outcome

    def _retry_plan(self, pending: Sequence[_Check], error: Exception) -> tuple[list[int], float | None]:
        """(the items in the order their calls start: shortest first, the retry's deadline)."""
        logger.warning("qwenguard: a batch of %d checks failed (%r); judging them one at a time", len(pending), error)
        order = sorted(range(len(pending)), key=lambda i: text_size(pending[i].conversation, 1 << 62))
        timeout = self._timeout(pending)
        return order, None if timeout is None else time.monotonic() + timeout

    @staticmethod
    def _retry_left(deadline: float | None, error: Exception) -> tuple[float | None, Outcome | None]:
        """(time left for the next item, or the outcome of an item the retry has no time left for)."""
        if deadline is None:
            return None, None
        left = deadline - time.monotonic()
        if left <= 0:
            late = _NotStarted(
                f"a batch failed ({type(error).__name__}); this item was not judged: the retry's deadline passed"
                " before its call could start (items that stalled on their own used the time), so it is blocked"
            )
            return None, late
        return left, None

    def _retry_one(self, check: _Check, deadline: float | None, error: Exception) -> Outcome:
        left, late = self._retry_left(deadline, error)
        return late if late is not None else _single(self._classify([check], left))

    def _retry_one_by_one(self, pending: Sequence[_Check], error: Exception) -> list[Outcome] | BaseException:
        order, deadline = self._retry_plan(pending, error)
        workers = min(len(order), RETRY_CONCURRENCY)
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="qwenguard-retry") as pool:
            # Each in the caller's context (a copy each: one context is entered by one thread at a time): its window
            # account and budget bound the retries as the first try (rt65h F1: 56 windows under a bound of 4).
            futures = {i: pool.submit(copy_context().run, self._retry_one, pending[i], deadline, error) for i in order}
            return [futures[i].result() for i in range(len(pending))]

    async def _aretry_one(
        self, check: _Check, deadline: float | None, error: Exception, slots: asyncio.Semaphore
    ) -> Outcome:
        async with slots:
            left, late = self._retry_left(deadline, error)
            return late if late is not None else _single(await self._aclassify([check], left))

    async def _aretry_one_by_one(self, pending: Sequence[_Check], error: Exception) -> list[Outcome] | BaseException:
        order, deadline = self._retry_plan(pending, error)
        slots = asyncio.Semaphore(RETRY_CONCURRENCY)
        outcomes = await asyncio.gather(*(self._aretry_one(pending[i], deadline, error, slots) for i in order))
        results: list[Outcome] = [None] * len(pending)  # type: ignore[list-item]
        for i, outcome in zip(order, outcomes):
            results[i] = outcome
        return results

    def check(self, conversation: Sequence[Message] | str, stage: Stage | str = Stage.PROMPT) -> Decision:
        """Check any conversation at ``stage`` (user-final: prompt mode; assistant-final: response mode)."""
        return self.check_many([(stage, _as_conversation(conversation))])[0]

    async def acheck(self, conversation: Sequence[Message] | str, stage: Stage | str = Stage.PROMPT) -> Decision:
        return (await self.acheck_many([(stage, _as_conversation(conversation))]))[0]

    # -- named checks (sync and async side by side) -------------------------------------------
    def check_prompt(self, text: str, *, history: Sequence[Message] | None = None) -> Decision:
        """The user's input, optionally after earlier turns."""
        return self.check(prompt_conversation(text, history), Stage.PROMPT)

    async def acheck_prompt(self, text: str, *, history: Sequence[Message] | None = None) -> Decision:
        return await self.acheck(prompt_conversation(text, history), Stage.PROMPT)

    def check_response(self, prompt: str | Sequence[Message], response: str) -> Decision:
        """The assistant's answer; ``verdict.refusal`` tells whether it refused."""
        return self.check(response_conversation(prompt, response), Stage.RESPONSE)

    async def acheck_response(self, prompt: str | Sequence[Message], response: str) -> Decision:
        return await self.acheck(response_conversation(prompt, response), Stage.RESPONSE)

    def check_tool_call(
        self, name: str, arguments: Mapping[str, Any] | str | None, messages: Sequence[Message] | None = None
    ) -> Decision:
        """A tool call before it runs: the call as the assistant's action after the conversation that asked for it
        (``messages``: the conversation before the call, a list of ``{"role", "content"}`` dicts, read as an
        answer's history is, the assistant's turns after the user's latest request too; past ``max_chars`` the turns
        before that request are left out first, then the oldest after it: `tool_call_conversation`)."""
        _conversation_before(messages)
        conversation = tool_call_conversation(
            name, arguments, messages, max_chars=self.max_chars, max_messages=self.max_messages
        )
        return self.check(conversation, Stage.TOOL_CALL)

    async def acheck_tool_call(
        self, name: str, arguments: Mapping[str, Any] | str | None, messages: Sequence[Message] | None = None
    ) -> Decision:
        _conversation_before(messages)
        if text_size((name, arguments), PREPARE_ON_LOOP_CALL_CHARS) > PREPARE_ON_LOOP_CALL_CHARS:
            # Rendering reads the arguments as each parser would (up to max_chars): never on the event loop (rt62a F1).
            conversation = await asyncio.to_thread(
                tool_call_conversation,
                name,
                arguments,
                messages,
                max_chars=self.max_chars,
                max_messages=self.max_messages,
            )
        else:
            conversation = tool_call_conversation(
                name, arguments, messages, max_chars=self.max_chars, max_messages=self.max_messages
            )
        return await self.acheck(conversation, Stage.TOOL_CALL)

    def check_tool_result(self, name: str, output: str) -> Decision:
        """A tool's output, as untrusted content (injected instructions show up as Jailbreak)."""
        _tool_name(name)
        return self.check(untrusted_conversation(output, "tool output"), Stage.TOOL_RESULT)

    async def acheck_tool_result(self, name: str, output: str) -> Decision:
        _tool_name(name)
        return await self.acheck(untrusted_conversation(output, "tool output"), Stage.TOOL_RESULT)

    def check_documents(self, query: str | None, texts: Sequence[str]) -> list[Decision]:
        """Retrieved documents, one Decision each, in order, checked as one batch.

        Each document is judged on its own, as untrusted content: harm or injected instructions
        in a document do not depend on the query (kept for API symmetry with retrievers). ``texts`` is a
        sequence of strings (a list or tuple); a mapping (``{doc_id: text}``), a set or an iterator is a
        ``TypeError`` before any judging."""
        return self.check_many(_document_items(texts))

    async def acheck_documents(self, query: str | None, texts: Sequence[str]) -> list[Decision]:
        return await self.acheck_many(_document_items(texts))

    # -- streaming (see stream_monitor.py) -----------------------------------------------------
    def stream(self, prompt: str | Sequence[Message], **options: Any) -> Any:
        """A `StreamMonitor` for one streamed answer to ``prompt``. See `qwenguard.core.StreamMonitor`."""
        from .streaming.monitor import open_monitor

        _warn_if_on_event_loop("stream", "async with guard.astream(...) as monitor: await monitor.afeed(...)")
        return open_monitor(self, prompt, **options)

    def astream(self, prompt: str | Sequence[Message], **options: Any) -> Any:
        """Async twin of `stream` (use with ``async with``)."""
        from .streaming.monitor import open_async_monitor

        return open_async_monitor(self, prompt, **options)

    # -- lifecycle ----------------------------------------------------------------------------
    def close(self) -> None:
        """Stop the guard's engines, close its connections and drop its verdict cache. Every check after it is
        a guard error (``the guard backend is closed``), cached text included, decided by ``on_error``."""
        self._closed = True
        self.cache.close()
        for backend in (self.backend, self.stream_backend):
            if backend is not None and hasattr(backend, "close"):
                backend.close()

    async def aclose(self) -> None:
        """Async twin of `close`."""
        self._closed = True
        self.cache.close()
        for backend in (self.backend, self.stream_backend):
            if backend is None:
                continue
            if hasattr(backend, "aclose"):
                await backend.aclose()
            elif hasattr(backend, "close"):
                # A local engine waits for the step in flight (up to seconds): not on the loop (rt52b F8).
                await asyncio.to_thread(backend.close)

    def __enter__(self) -> Guard:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    async def __aenter__(self) -> Guard:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


_ACTION_RANK = {Action.BLOCK: 0, Action.FLAG: 1, Action.ALLOW: 2}


def _stricter(decision: Decision, other: Decision) -> Decision:
    """The stricter of a check's decision and its request's (`_Check.request`): a block over a flag over an allow,
    the check's own on a tie."""
    return min((decision, other), key=lambda d: (d.allowed, _ACTION_RANK[d.action]))


def _each(outcome: list[Outcome] | BaseException, size: int) -> list[Outcome]:
    """One outcome per check of a call: a failed call's error for each."""
    return [outcome] * size if isinstance(outcome, BaseException) else outcome  # type: ignore[list-item]


def _one_each(outcome: Any, expected: int) -> list[Outcome] | BaseException:
    """The backend's outcomes, or a guard error when it did not return one per conversation (a short list
    would leave a check without a decision)."""
    if isinstance(outcome, (list, tuple)) and len(outcome) == expected:
        return list(outcome)
    got = f"{len(outcome)} outcomes" if isinstance(outcome, (list, tuple)) else type(outcome).__name__
    return GuardUnavailable(f"the guard backend returned {got} for {expected} conversations")


def _with_retried(
    pending: Sequence[_Check],
    outcome: list[Outcome],
    redo: list[tuple[int, _Check]],
    again: list[Outcome] | BaseException,
) -> list[Outcome]:
    """``outcome`` with the verdicts of the checks judged again alone put in where they are not safe: a harm in the
    context is not in the last turn alone, so its "safe" cannot stand for the conversation (rt49d R4); the first
    error stays otherwise. Such a verdict is not cached: it is this policy's answer to a guard error (only a policy
    that lets errors through asks for it), not the conversation's verdict, and a stricter policy sharing the cache
    (a server's stream session, a changed ``guard.policy``) would have read it as one (rt51d F1)."""
    out = list(outcome)
    for k, (i, _) in enumerate(redo):
        result = again[k] if isinstance(again, list) else again
        if isinstance(result, Verdict) and result.risk is not Risk.SAFE:
            found = out[i]
            # A turn read more than one way: the worse stands, an Unsafe the error carries too (a whole choice beside
            # a broken one, a cut prompt's: `Policy.decide_error` blocks on it; replaced by the turn alone's
            # Controversial, a loose policy let it through, rt63b's lead).
            readable = found if isinstance(found, Verdict) else getattr(found, "readable", None)
            out[i] = worst([readable, result]) if isinstance(readable, Verdict) else result
            pending[i].key = None
    return out


def _single(outcome: list[Outcome] | BaseException) -> Outcome:
    """One conversation's outcome from a call that judged it alone."""
    return outcome[0] if isinstance(outcome, list) else outcome  # type: ignore[return-value]


def _as_conversation(conversation: Sequence[Message] | str) -> Sequence[Message]:
    return prompt_conversation(conversation) if isinstance(conversation, str) else conversation


def _tool_name(name: object) -> None:
    if not isinstance(name, str):
        raise TypeError(f"tool name must be str, got {type(name).__name__}")


def _require_gen_backend(backend: object) -> None:
    """A `Guard`'s backend answers every check: one that cannot is refused when the Guard is built, not found out at
    each check as a guard error, which ``on_error="allow"`` lets through (rt57c F4: a Stream backend or the str
    "demo" in its place let every prompt and every streamed answer through)."""
    if isinstance(backend, (str, Path)):
        raise TypeError(
            f"backend must be a Gen backend object, got the {type(backend).__name__} {str(backend)[:80]!r}: load one "
            "with Guard.from_pretrained(model) or Guard.remote(url)"
        )
    judges = callable(getattr(backend, "classify", None)) or callable(getattr(backend, "aclassify", None))
    if not judges and (
        callable(getattr(backend, "open_session", None)) or callable(getattr(backend, "open_remote_monitor", None))
    ):
        raise TypeError(
            f"backend is a Qwen3Guard-Stream backend ({type(backend).__name__}), which judges streamed tokens and "
            "answers no check: pass it as stream_backend= beside a Gen backend, or load both with "
            "Guard.from_pretrained(gen_model, stream_model=...)"
        )
    # One of the twins is enough: a wrapper used only from sync (or only from async) code may lack the other.
    missing = ([] if hasattr(backend, "name") else ["name"]) + ([] if judges else ["classify"])
    if missing:
        raise TypeError(
            f"backend must be a Gen backend (a name, classify and its async twin aclassify: GenBackend), got "
            f"{type(backend).__name__} without {' or '.join(missing)}"
        )


def _require_stream_backend(backend: object) -> None:
    """``stream_backend`` opens the sessions of `Guard.stream`: a Gen backend there failed every stream."""
    if not (
        callable(getattr(backend, "open_session", None)) or callable(getattr(backend, "open_remote_monitor", None))
    ):
        what = "a Gen backend, which opens no stream session" if callable(getattr(backend, "classify", None)) else None
        raise TypeError(
            f"stream_backend must be a Qwen3Guard-Stream backend (TransformersStream, RemoteStream), got "
            f"{type(backend).__name__}" + (f": {what}; pass it as the Guard's backend" if what else "")
        )


def _document_items(texts: Sequence[str]) -> list[tuple[Stage, list[dict[str, str]]]]:
    """The retrieval checks of `check_documents`: ``texts`` must be a sequence of strings, refused before any judging
    otherwise. A mapping ``{doc_id: text}`` iterates over its keys: every id was judged and allowed and no document
    text ever was (rt57c F8); a set has no order for the Decisions to follow."""
    if isinstance(texts, (str, bytes, bytearray)):
        raise TypeError("texts must be a list of strings, not one string")
    if isinstance(texts, Mapping):
        raise TypeError(
            f"texts must be a list of strings, got a mapping ({type(texts).__name__}): its keys are not its "
            "documents; pass list(texts.values()) and pair the Decisions with list(texts) by position"
        )
    if not isinstance(texts, Sequence):
        raise TypeError(f"texts must be a list of strings, got {type(texts).__name__}")
    return [(Stage.RETRIEVAL, untrusted_conversation(t, f"document {i}")) for i, t in enumerate(texts)]
