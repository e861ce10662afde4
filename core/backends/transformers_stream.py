"""`TransformersStream`: Qwen3Guard-Stream run natively (see `stream_model`), O(1) per token, sessions batched.

A `StreamSession` holds one conversation: the prompt is scored once by the query heads (read at the
``<|im_end|>`` that closes the user turn), then every assistant token by the response heads, with one
step per call over only the new tokens and a per-session KV cache. Template tokens
(``<|im_start|>assistant``, the empty think block) are fed but not scored.

Concurrent sessions share forwards: every step goes to the backend's `StreamBatcher`, whose worker
thread packs the steps of all sessions waiting at that moment into one forward (`stream_batching`).
A long prompt is prefilled in steps of at most ``step_tokens`` tokens, so it never holds the model for
more than a bounded slice while other sessions wait.

Long streams slide: when the cache would pass ``max_position_embeddings``, the session re-prefills the
prompt and the most recent half-context of tokens (one bounded re-prefill per half-context of new
tokens, so memory is bounded and the amortized cost per token stays constant).

All sessions of a backend keep at most ``max_session_tokens`` KV positions together (a server's clients
cannot add up to more memory than the operator allows). When the budget is crowded, a session above its
fair share (the budget over the sessions open) slides down towards it, if that frees a real part of what
it holds (a slide re-reads the prompt). A session that finds no room drops the caches of idle sessions
above their fair share, largest first: they re-read their prompt and recent tokens at their next step, at
their own cost (a prompt never slides, so idle sessions with long prompts could otherwise keep every
other caller out: a red-team finding). A slide keeps at least `MIN_RECENT_TOKENS` recent tokens; to keep
them, a session whose prompt is within its share drops idle sessions' caches within their share too. One
that still finds no room (the room is held by steps in flight) runs its step without keeping its cache,
as the Gen engine runs past its budget; only a session whose prompt (with its next step) is over its fair share then fails with
`GuardUnavailable`, which the monitors turn into the policy's fail-closed decision. The prompt is never
cut to fit: a shorter prompt could drop the harmful part of it.

Deadlines: every session call takes ``timeout`` (seconds). A call past it raises `GuardTimeout`, and so
does a step that fails; either leaves the session unusable (its cache may hold the step or not), so
later calls raise `QwenGuardError`. The same holds when an async call is cancelled; `StreamMonitor`
never cancels one (see `CancelSafeLane`).

torch and transformers are imported only when a model is loaded.
"""

from __future__ import annotations

import asyncio
import math
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable, Generator, Iterable, Sequence
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from pathlib import Path
from typing import Any

from ..errors import (
    GuardTimeout,
    GuardUnavailable,
    MissingDependency,
    ModelNotFound,
    QwenGuardError,
    StreamClosed,
)
from ..formats.content import AsSeenStream, clean_text
from ..formats.prompts import Message
from ..policy import require_count
from ..streaming.retokenizer import IncrementalTokenizer, TokenSpan
from ..verdict import Risk, Verdict
from .hub import checkpoint_config, resolve_checkpoint
from .stream_batching import (
    DEFAULT_MAX_SESSIONS_PER_FORWARD,
    DEFAULT_STEP_TOKENS,
    SessionCache,
    StepResult,
    StreamBatcher,
    StreamStep,
)
from .stream_model import (
    STREAM_CATEGORY_ORDER,
    STREAM_CONFIG_FIELDS,
    StreamEncoder,
    StreamLabels,
    TokenVerdict,
    build_stream_model,
    category_name,
    load_stream_config,
    save_stream_checkpoint,
    stream_model_class,
)
from .torch_runtime import quiet_loading, refuse_meta_device, require_torch, resolve_device

__all__ = [
    "TransformersStream",
    "StreamSession",
    # re-exported from stream_model: what users of the backend module need beside it
    "TokenVerdict",
    "StreamLabels",
    "StreamEncoder",
    "category_name",
    "build_stream_model",
    "save_stream_checkpoint",
    "load_stream_config",
    "STREAM_CONFIG_FIELDS",
    "STREAM_CATEGORY_ORDER",
]

#: KV positions all sessions of one backend may hold together (``max_session_tokens``): 7 GiB for
#: Qwen3Guard-Stream-0.6B in bfloat16 (112 KiB a position; twice that in float32), 9 GiB for 4B and 8B
#: (144 KiB); about 30 streams of a 1,000-token prompt and a 1,000-token answer at once.
DEFAULT_STREAM_SESSION_TOKENS = 65_536

#: A crowded session slides down only when that frees at least this fraction of the positions it would hold:
#: a slide re-reads the prompt, so a smaller gain re-read a prompt near the fair share every few tokens.
MIN_SLIDE_GAIN = 0.25

#: A crowded session slides down to no fewer recent tokens than this (all of them when it has fewer): the
#: answer's own context. Many small idle sessions shrink the fair share until a slide kept the prompt alone,
#: and answer tokens were scored without the words before them (a red-team finding: 6-12 characters of a
#: clause out). Below it the step runs without keeping its cache instead.
MIN_RECENT_TOKENS = 64

#: A step, and what a plan yields: the step to run now (its result is sent back into the plan).
_Plan = Generator[StreamStep, StepResult, Any]


#: The options of `TransformersStream.load` besides the checkpoint, device and dtype (`Guard.from_pretrained`'s
#: ``stream_options``), each with its least value and whether None is taken (None: the default, see the class).
_COUNT_OPTIONS = (
    ("max_positions", 16, True),  # None: the model's context; fewer positions cannot hold a session
    ("max_sessions_per_forward", 1, False),
    ("step_tokens", 1, False),
    ("max_session_tokens", 1, True),
)
LOAD_OPTIONS = (*(name for name, _, _ in _COUNT_OPTIONS), "revision", "local_files_only")


def check_load_options(options: dict[str, Any]) -> None:
    """Refuse, naming the option, a Stream option that cannot work, before any weights load (rt57c F6): a count
    given as a str ("65536" from a config file) failed after both models loaded as "'<' not supported between
    instances of 'str' and 'int'"; ``max_positions=0`` was read as "the model's context"; a bool taken as a count
    was reported under another name (``max_batch``)."""
    unknown = sorted(str(name) for name in options if name not in LOAD_OPTIONS)
    if unknown:
        raise TypeError(f"unknown Qwen3Guard-Stream option(s) {unknown}; known: {list(LOAD_OPTIONS)}")
    for name, minimum, optional in _COUNT_OPTIONS:
        if name in options:
            require_count(name, options[name], minimum, optional=optional)


# -- the backend --------------------------------------------------------------------------------
class TransformersStream:
    """Local Qwen3Guard-Stream backend: loads a checkpoint, opens `StreamSession`s.

    >>> stream = TransformersStream.load("demo-stream")                 # doctest: +SKIP
    >>> s = stream.open_session("How can I make a bomb at home?")       # doctest: +SKIP
    >>> s.prompt_verdict.risk                                           # doctest: +SKIP
    <Risk.UNSAFE: 'unsafe'>
    >>> verdicts = s.feed_text("Sure. Mix ammonium nitrate") + s.finish()   # doctest: +SKIP

    ``max_sessions_per_forward``: how many sessions' steps one packed forward takes;
    ``step_tokens``: the most tokens one session puts into one forward (prompt prefills are cut);
    ``max_session_tokens``: KV positions all open sessions hold together (``None``: unbounded; module doc).
    """

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        *,
        name: str,
        max_positions: int | None = None,
        max_sessions_per_forward: int = DEFAULT_MAX_SESSIONS_PER_FORWARD,
        step_tokens: int = DEFAULT_STEP_TOKENS,
        max_session_tokens: int | None = DEFAULT_STREAM_SESSION_TOKENS,
    ) -> None:
        check_load_options(
            {
                "max_positions": max_positions,
                "max_sessions_per_forward": max_sessions_per_forward,
                "step_tokens": step_tokens,
                "max_session_tokens": max_session_tokens,
            }
        )
        self.model = model
        self.tokenizer = tokenizer
        self.name = name
        self.config = model.config
        self.labels = StreamLabels.from_config(self.config)
        ctx = int(getattr(self.config, "max_position_embeddings", 8192) or 8192)
        self.max_positions = int(min(max_positions or ctx, ctx))
        if self.max_positions < 16:  # the model's own context is that small
            raise ValueError(f"max_positions={self.max_positions} is too small for a stream session")
        self.step_tokens = step_tokens
        self.max_session_tokens = max_session_tokens
        # id(session) -> the KV positions it holds, or will once its step in flight has run. Sessions
        # register when they open (fair shares count them from then on) and leave when they close.
        self._held: dict[int, int] = {}
        self._sessions: weakref.WeakValueDictionary[int, StreamSession] = weakref.WeakValueDictionary()
        # Sessions whose cache a step in flight (or a prefill or slide under way) uses: never dropped.
        self._pinned: set[int] = set()
        self._held_lock = threading.Lock()
        self.sessions_refused = 0  # observable: steps that found no room in max_session_tokens
        self.room_slides = 0  # observable: slides a session made to stay within max_session_tokens
        self.caches_dropped = 0  # observable: idle sessions' caches dropped to make room (they rebuild)
        self.steps_unkept = 0  # observable: steps run without keeping their cache (no room even so)
        # Steps asked for so far, in order: a session's number of its latest (`StreamSession._granted`) tells which
        # sessions stepped within the last round (`_drop_idle`).
        self._grants = 0
        self.encoder = StreamEncoder(tokenizer)
        self.codec = self.encoder.codec
        self.batcher = StreamBatcher(model, max_sessions=max_sessions_per_forward)
        self._closed = False

    # -- loading ------------------------------------------------------------------------------
    @classmethod
    def load(
        cls,
        name_or_path: str | Path,
        *,
        device: str | None = "auto",
        dtype: Any = "auto",
        max_positions: int | None = None,
        max_sessions_per_forward: int = DEFAULT_MAX_SESSIONS_PER_FORWARD,
        step_tokens: int = DEFAULT_STEP_TOKENS,
        max_session_tokens: int | None = DEFAULT_STREAM_SESSION_TOKENS,
        revision: str | None = None,
        local_files_only: bool | None = None,
    ) -> TransformersStream:
        """Load a Qwen3Guard-Stream checkpoint: ``"demo-stream"``, a local directory, or a hub id; the
        options are the constructor's.

        Raises `ModelNotFound` for a checkpoint that cannot be found, and ``ValueError`` when its
        weights do not match the documented layout (missing or unexpected keys)."""
        check_load_options(
            {
                "max_positions": max_positions,
                "max_sessions_per_forward": max_sessions_per_forward,
                "step_tokens": step_tokens,
                "max_session_tokens": max_session_tokens,
            }
        )
        refuse_meta_device(device)  # before the checkpoint is looked for
        require_torch()
        try:
            from transformers import AutoTokenizer
        except ImportError as exc:  # pragma: no cover
            raise MissingDependency.for_extra("local", "transformers") from exc
        from ..demo import DEMO_NAMES

        label = str(name_or_path)
        path = resolve_checkpoint(
            name_or_path,
            kind="Qwen3Guard-Stream",
            demo_names=DEMO_NAMES,
            revision=revision,
            local_files_only=local_files_only,
        )
        raw_config = checkpoint_config(path, label, "Qwen3Guard-Stream")
        if not any(field in raw_config for field in STREAM_CONFIG_FIELDS):
            raise ValueError(
                f"{label!r} is a Qwen3Guard-Gen checkpoint, not a Stream one (its config.json has no "
                f"Qwen3Guard-Stream fields): pass it as the model, and a Stream checkpoint as stream_model "
                f"(the demo's is 'demo-stream')"
            )
        from .transformers_gen import check_vocab_fits, checked_dtype

        dev = resolve_device(device)
        torch_dtype = checked_dtype(dtype, dev)
        try:
            config = load_stream_config(path)
            tokenizer = AutoTokenizer.from_pretrained(str(path))
        except OSError as exc:
            raise ModelNotFound(f"cannot load Qwen3Guard-Stream checkpoint {label!r}: {exc}") from exc
        try:
            StreamLabels.from_config(config)  # label maps before the weights load: a wrong one fails in a second
        except ValueError as exc:
            raise ValueError(f"cannot load Qwen3Guard-Stream checkpoint {label!r}: {exc}") from None
        # No dtype argument: transformers < 4.56 calls it ``torch_dtype`` and >= 5 warns on that name;
        # converting after loading gives the same weights on every version.
        with quiet_loading():
            try:
                model, info = stream_model_class().from_pretrained(str(path), config=config, output_loading_info=True)
            except RuntimeError as exc:  # a head of another size than config.json's num_* (transformers' table)
                if "size mismatch" not in str(exc) and "mismatched" not in str(exc):
                    raise
                raise ValueError(
                    f"cannot load Qwen3Guard-Stream checkpoint {label!r}: its weights have other shapes than its "
                    f"config.json says (num_risk_level {config.num_risk_level}, num_category "
                    f"{config.num_category}, num_query_risk_level {config.num_query_risk_level}, "
                    f"num_query_category {config.num_query_category}, vocab_size {config.vocab_size}): "
                    f"{next((ln.strip() for ln in str(exc).splitlines() if 'mismatch' in ln), '')[:300]}"
                ) from None
        problems = {k: v for k, v in info.items() if k in ("missing_keys", "unexpected_keys", "mismatched_keys") and v}
        if problems:
            raise ValueError(f"{label}: weights do not match the Qwen3Guard-Stream layout: {problems}")
        check_vocab_fits(tokenizer, model, label, "Qwen3Guard-Stream")
        model.to(device=dev, dtype=torch_dtype)
        model.eval()
        return cls(
            model,
            tokenizer,
            name=label,
            max_positions=max_positions,
            max_sessions_per_forward=max_sessions_per_forward,
            step_tokens=step_tokens,
            max_session_tokens=max_session_tokens,
        )

    def encode_prompt(self, messages: Sequence[Message] | str) -> tuple[list[int], int]:
        """See `StreamEncoder.encode_prompt`."""
        return self.encoder.encode_prompt(messages)

    # -- sessions -----------------------------------------------------------------------------
    def open_session(self, messages: Sequence[Message] | str, *, timeout: float | None = None) -> StreamSession:
        """Score the prompt (query heads) and return a session ready for the assistant's tokens."""
        self._check_open()
        session = StreamSession(self, messages)
        try:
            session._drive(session._prefill_plan(), timeout)
        except BaseException:
            session.close()  # never handed out: give its share of the budget back
            raise
        return session

    async def aopen_session(self, messages: Sequence[Message] | str, *, timeout: float | None = None) -> StreamSession:
        """Async twin of `open_session` (the prompt is tokenized in a worker thread)."""
        self._check_open()
        session = await asyncio.to_thread(StreamSession, self, messages)
        try:
            await session._adrive(session._prefill_plan(), timeout)
        except BaseException:
            session.close()
            raise
        return session

    def _check_open(self) -> None:
        if self._closed:
            raise StreamClosed("TransformersStream is closed")

    def score(self, messages: Sequence[Message] | str, response: str) -> tuple[Verdict, list[TokenVerdict]]:
        """Prompt verdict and per-token verdicts of a whole response in one full forward (no cache).

        transformers' own forward: the reference the incremental, batched path must equal; also handy
        for offline evaluation. Runs in the calling thread."""
        torch = require_torch()
        prefix, user_end = self.encode_prompt(messages)
        seen = AsSeenStream()  # the response read as a session reads it
        spans = _as_written(seen, self.codec.encode(seen.push(clean_text(response)) + seen.flush()))
        ids = prefix + [t for t, _, _ in spans]
        if len(ids) > self.max_positions:
            raise ValueError(f"score(): {len(ids)} tokens exceed the context of {self.max_positions}; use a session")
        start = time.perf_counter()
        with torch.inference_mode():
            out = self.model(input_ids=torch.tensor([ids], device=self.model.device))
        query = torch.cat((out["query_risk_level_logits"][0, user_end], out["query_category_logits"][0, user_end]), -1)
        prompt = self._query_verdict(query.float().tolist(), start)
        n = len(prefix)
        rows = torch.cat((out["risk_level_logits"][0, n:], out["category_logits"][0, n:]), -1).float().tolist()
        return prompt, self._token_verdicts(rows, spans, 0)

    # -- shared head decoding -----------------------------------------------------------------
    def _query_verdict(self, row: Sequence[float], started: float) -> Verdict:
        labels = self.labels
        n_risk = len(labels.query_risk)
        probs = _softmax(row[:n_risk])
        risk = labels.query_risk[max(range(n_risk), key=probs.__getitem__)]
        cats: tuple[str, ...] = ()
        if risk is not Risk.SAFE:
            cat_row = row[n_risk:]
            cats = (labels.query_category[max(range(len(cat_row)), key=cat_row.__getitem__)],)
        per_risk = {r: 0.0 for r in Risk}
        for i, p in enumerate(probs):
            per_risk[labels.query_risk[i]] += p
        raw = f"Safety: {risk.value.capitalize()}\nCategories: {', '.join(cats) or 'None'}"
        return Verdict(risk, cats, None, raw, (time.perf_counter() - started) * 1000, self.name, per_risk)

    def _token_verdicts(
        self, rows: Sequence[Sequence[float]], spans: Sequence[tuple[int, int | None, int | None]], first_index: int
    ) -> list[TokenVerdict]:
        """Per-token verdicts from response-head rows (risk logits, then category logits)."""
        risks, cats = self.labels.response_risk, self.labels.response_category
        n_risk = len(risks)
        verdicts: list[TokenVerdict] = []
        for j, ((token, s, e), row) in enumerate(zip(spans, rows)):
            probs = _softmax(row[:n_risk])
            risk = risks[max(range(n_risk), key=probs.__getitem__)]
            per_risk = {Risk.SAFE: 0.0, Risk.CONTROVERSIAL: 0.0, Risk.UNSAFE: 0.0}
            for i, p in enumerate(probs):
                per_risk[risks[i]] += p
            category = None
            if risk is not Risk.SAFE:  # the category head is trained only on non-safe tokens
                cat_row = row[n_risk:]
                category = cats[max(range(len(cat_row)), key=cat_row.__getitem__)]
            verdicts.append(TokenVerdict(token, risk, per_risk, category, first_index + j, s, e))
        return verdicts

    @property
    def forwards_run(self) -> int:
        """Packed forwards run so far by this backend's sessions (for tests and figures)."""
        return self.batcher.forwards_run

    # -- the sessions' memory budget (max_session_tokens) ----------------------------------------
    @property
    def bytes_per_position(self) -> int:
        """Bytes one KV position takes in a session's cache (keys and values of every layer)."""
        config = self.config
        heads = int(getattr(config, "num_key_value_heads", None) or config.num_attention_heads)
        dim = int(getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads)
        size = int(next(self.model.parameters()).element_size())
        return int(config.num_hidden_layers) * 2 * heads * dim * size

    @property
    def session_tokens(self) -> int:
        """KV positions the open sessions hold (or will once their steps in flight have run)."""
        with self._held_lock:
            return sum(self._held.values())

    @property
    def open_sessions(self) -> int:
        with self._held_lock:
            return len(self._held)

    def _others(self, session: StreamSession) -> int:
        """What the other open sessions hold (call with ``_held_lock`` held)."""
        return sum(self._held.values()) - self._held.get(id(session), 0)

    def _hold(self, session: StreamSession, positions: int, *, drop: bool = True, any_idle: bool = False) -> bool:
        """Let ``session`` hold ``positions`` in all (what it holds now included) if the budget has room, and
        pin it (its cache is in use until `_unpin`); with ``drop``, make the room by dropping idle sessions'
        caches above their fair share first (with ``any_idle``, then any idle session's). Call with
        ``_held_lock`` held."""
        budget, key = self.max_session_tokens, id(session)
        if budget is not None:
            short = self._others(session) + positions - budget
            if short > 0 and not (drop and self._drop_idle(session, short, any_idle=any_idle)):
                return False
        self._held[key] = positions
        self._pinned.add(key)
        return True

    def _stepping(self, session: StreamSession) -> None:
        """Count a step (or a prompt's prefill) of ``session``, kept or not (lock held): see `_drop_idle`."""
        self._grants += 1
        session._granted = self._grants

    def _drop_idle(self, session: StreamSession, short: int, *, any_idle: bool = False) -> bool:
        """Free ``short`` positions by dropping the caches of idle sessions above their fair share, largest
        first (they rebuild at their next step); with ``any_idle``, then those within it, largest first; drop
        nothing if that cannot free enough. Lock held."""
        fair = self._fair()
        # Not a session whose prompt is within its share that stepped within the last round of steps (as many as
        # sessions are open): two streams fed in turn dropped each other's cache at every step (each idle between
        # its own deltas, and above its share only by the recent-token floor), re-reading 42 tokens a token scored
        # (rt50e F3). Sessions idle for longer rebuild at their next step, as before, and so do those whose prompt
        # alone is over their share (the idle long prompts that once held the whole budget). Above their share,
        # the largest first; within it (``any_idle``), those that stepped longest ago.
        recent = self._grants - len(self._held)
        idle = sorted(
            (held > fair, held if held > fair else -other._granted, key)
            for key, held in self._held.items()
            if held
            and key != id(session)
            and key not in self._pinned
            and (other := self._sessions.get(key)) is not None
            and (other._granted <= recent or len(other._prefix) > fair)
            and (held > fair or any_idle)
        )
        if sum(self._held[key] for _, _, key in idle) < short:
            return False
        while short > 0:
            _, _, key = idle.pop()
            held = self._held[key]
            victim = self._sessions.get(key)
            if victim is not None:  # unpinned: no step of its own can start before the lock is free
                victim._cache = SessionCache(victim._layers)
            self._held[key] = 0
            self.caches_dropped += 1
            short -= held
        return True

    def _unpin(self, session: StreamSession, *, drop: bool = False) -> None:
        """Its step is done; with ``drop``, the step ran without keeping its cache: drop it now."""
        with self._held_lock:
            self._pinned.discard(id(session))
            if drop:
                session._cache = SessionCache(session._layers)
                if id(session) in self._held:
                    self._held[id(session)] = 0

    def _room_for_prompt(self, session: StreamSession) -> bool:
        """Hold room for ``session``'s prompt; False: it runs without keeping its cache (within its share,
        but the room is held by steps in flight). Raises the refusal for a prompt over its share."""
        positions = len(session._prefix)
        with self._held_lock:
            self._stepping(session)
            if self._hold(session, positions):
                return True
            within = positions <= self._fair()
            if within:
                self.steps_unkept += 1
        if within:
            return False
        # Fail closed rather than cut the prompt: a shorter prompt could drop its harmful part.
        raise self._refuse(session, positions, "this session's prompt")

    def _room(self, session: StreamSession, n: int) -> tuple[int | None, bool]:
        """Room for ``n`` more positions of ``session``: (how many recent tokens to re-prefill its cache with,
        None for none; whether the cache is kept after the step). Raises the refusal when there is none."""
        prefix, recent = len(session._prefix), len(session._recent)
        with self._held_lock:
            self._stepping(session)
            length = session._live_cache().length  # read under the lock: dropping it takes the lock too
            # A re-prefill is due when the cache was dropped for room, or when the context is full (a slide
            # keeps the prompt and every recent token kept).
            rebuild = length == 0 or length + n > self.max_positions
            slide = recent if rebuild else None
            need = (prefix + recent if rebuild else length) + n
            budget = self.max_session_tokens
            if budget is None:
                return slide, True
            fair = self._fair()
            crowded = self._others(session) + need > budget * 3 // 4
            if (need <= fair or not crowded) and self._hold(session, need):
                return slide, True
            # Crowded and above its fair share, or no room: slide down to half the fair share (so the next
            # steps do not slide again at once), or to the prompt and the floor of recent tokens if that is
            # what fits; never below the floor (a step runs without keeping its cache then).
            floor = min(recent, MIN_RECENT_TOKENS)
            half = max(floor, min(recent, (fair - prefix - n) // 2))
            smaller = [kept for kept in dict.fromkeys((half, floor)) if prefix + kept + n < need]
            # A slide re-reads the prompt: while the budget has room, slide only for a real gain (L2: one
            # slide every few tokens re-read a prompt near the fair share each time). A re-prefill that is
            # due anyway costs nothing more.
            for kept in smaller:
                gain = need - (prefix + kept + n)
                if (rebuild or gain >= need * MIN_SLIDE_GAIN) and self._hold(session, prefix + kept + n, drop=False):
                    self.room_slides += 1
                    return kept, True
            if self._hold(session, need, drop=False):
                return slide, True
            # No room as it is: slide as far as it takes, dropping idle sessions above their share if need be.
            for kept in smaller:
                if self._hold(session, prefix + kept + n):
                    self.room_slides += 1
                    return kept, True
            if not smaller and self._hold(session, need):
                return slide, True
            if prefix + n <= fair:
                # Still none, and its prompt is within its share: its answer's context (the floor) comes
                # before idle caches. Drop idle sessions within their share too (they re-read their prompt if
                # they come back) rather than re-read this session's prompt at every step without a kept cache.
                least = prefix + floor + n
                if need - least < need * MIN_SLIDE_GAIN and self._hold(session, need, any_idle=True):
                    return slide, True
                if least < need and self._hold(session, least, any_idle=True):
                    self.room_slides += 1
                    return floor, True
                # The room is held by steps in flight: run this step without keeping the cache (as the Gen
                # engine runs past its budget), from the prompt and at least the floor of recent tokens; what
                # it holds now stays counted.
                self.steps_unkept += 1
                self._pinned.add(id(session))
                return (half if rebuild else None), False
        session._broken = "a step found no room in max_session_tokens"
        raise self._refuse(session, prefix + n, "a step of this session")

    def _fair(self) -> int:
        """The fair share: the budget over the open sessions (call with ``_held_lock`` held)."""
        assert self.max_session_tokens is not None
        return self.max_session_tokens // max(1, len(self._held))

    def _register(self, session: StreamSession) -> None:
        with self._held_lock:
            self._held[id(session)] = 0
            self._sessions[id(session)] = session
        # A session dropped without close() gives its share back when it is collected (before its id
        # can be reused).
        weakref.finalize(session, self._release_key, id(session))

    def _release(self, session: StreamSession) -> None:
        self._release_key(id(session))

    def _release_key(self, key: int) -> None:
        with self._held_lock:
            self._held.pop(key, None)
            self._pinned.discard(key)

    def _refuse(self, session: StreamSession, needed: int, what: str) -> GuardUnavailable:
        with self._held_lock:
            others, count = self._others(session), len(self._held) - 1
        self.sessions_refused += 1
        return GuardUnavailable(
            f"Qwen3Guard-Stream's session memory is full: {what} needs {needed:,} KV positions and the {count} "
            f"other open sessions hold {others:,} of max_session_tokens={self.max_session_tokens:,}"
        )

    def close(self) -> None:
        """Stop the worker thread; sessions still open then fail with `GuardUnavailable`."""
        self._closed = True
        self.batcher.close()


#: The most characters the re-tokenizer takes in one push. Tokenizing holds the GIL for the whole call (the
#: ``tokenizers`` binding), so a 177,000-character delta on a worker thread held the event loop 0.2-0.45 s
#: (rt52b F6); a longer delta goes in as pieces, as a client's smaller deltas would.
PUSH_CHARS = 4096


def _pieces(text: str, size: int) -> list[str]:
    """``text`` in pieces of at most ``size`` characters, each cut after a space where one is near its end. A piece
    may end inside a word: `AsSeenStream` keeps the word's end pending and cuts it only where each side reads as the
    whole would (a cut through "M\u200bi\u200bx" fed the model the second half as written: rt54a F7)."""
    if len(text) <= size:
        return [text]
    pieces: list[str] = []
    start = 0
    while len(text) - start > size:
        cut = text.rfind(" ", start + size // 2, start + size)
        end = start + size if cut < 0 else cut + 1
        pieces.append(text[start:end])
        start = end
    pieces.append(text[start:])
    return pieces


def _softmax(logits: Sequence[float]) -> list[float]:
    # Three classes: cheaper in Python than as more tiny torch ops on the per-token path.
    top = max(logits)
    weights = [math.exp(x - top) for x in logits]
    total = sum(weights)
    return [w / total for w in weights]


def _as_written(seen: AsSeenStream, spans: list[TokenSpan]) -> list[TokenSpan]:
    """Token spans in the text the model read, as spans of the text fed (`AsSeenStream`)."""
    if seen.as_written:  # every stream of ordinary text: nothing to map, per token
        return spans
    return [(token, seen.start(start), seen.end(end)) for token, start, end in spans]


def _left(deadline: float | None) -> float | None:
    return None if deadline is None else max(0.001, deadline - time.monotonic())


class StreamSession:
    """One streamed answer: a KV cache, the re-tokenizer, and the scored-token count.

    Feed the assistant's text with `feed_text` (any deltas) or its guard-tokenizer ids with
    `feed_tokens`; each call runs steps over only the new tokens and returns their `TokenVerdict`s
    (spans are character offsets in the text as fed, after `clean_text`). `finish` commits the text
    still held back by the re-tokenizer. `close` frees the cache. Every call has an async twin and a
    ``timeout``. Calls run one at a time (sync calls are serialised by a lock; use one session from one
    task); sessions share nothing but the model.
    """

    def __init__(self, backend: TransformersStream, messages: Sequence[Message] | str) -> None:
        self.backend = backend
        self._lock = threading.RLock()  # held by a sync call from its first token to its last step
        self._alock: asyncio.Lock | None = None
        self._closed = False
        self._finished = False
        self._broken: str | None = None  # why the cache can no longer be trusted
        self._granted = 0  # the backend's count of steps asked for, at this session's latest (`_stepping`)
        self._retok = IncrementalTokenizer(backend.codec)
        # Words that hide from the model what a reader sees are read as seen (`AsSeenStream`); spans map back.
        self._seen = AsSeenStream()
        self._text_mode: bool | None = None  # True: feed_text, False: feed_tokens
        self.scored = 0  # assistant tokens scored so far
        prefix, user_end = backend.encode_prompt(messages)
        limit = backend.max_positions // 2
        #: Whether the prompt was longer than half the context and cut: then `prompt_verdict` saw only its
        #: end, and the monitors screen the whole prompt with the Gen model's windows as well.
        self.prompt_cut = len(prefix) > limit
        if self.prompt_cut:
            # Documented decision: a prompt longer than half the context keeps its first token
            # (<|im_start|>) and its most recent tokens; the end of the prompt is what the answer follows.
            cut = len(prefix) - (limit - 1)
            user_end -= cut - 1
            prefix = prefix[:1] + prefix[cut:]
        self._prefix = prefix
        self._user_end = user_end
        # Recent assistant tokens, kept for a re-prefill when the context slides.
        self._keep = max(1, (backend.max_positions - len(prefix)) // 2)
        self._recent: deque[int] = deque(maxlen=self._keep)
        self._layers = int(backend.config.num_hidden_layers)
        self._cache: SessionCache | None = SessionCache(self._layers)
        #: The query heads' verdict on the user's turn (set once the prompt is scored).
        self.prompt_verdict: Verdict | None = None
        backend._register(self)

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def cached_tokens(self) -> int:
        """Positions in the KV cache (prompt and recent assistant tokens); at most the context."""
        return 0 if self._cache is None else self._cache.length

    @property
    def pending_chars(self) -> int:
        """Characters fed but not yet turned into scored tokens."""
        return len(self._retok.pending) + len(self._seen.pending)

    @property
    def text(self) -> str:
        """Not kept (memory stays bounded); the monitor keeps the text it needs."""
        raise AttributeError("StreamSession does not keep the text; StreamMonitor.text does")

    def _check_open(self) -> None:
        if self._closed:
            raise StreamClosed("this stream session is closed")
        if self._broken is not None:
            raise QwenGuardError(f"this stream session is unusable ({self._broken}); open a new one")
        if self._finished:
            raise StreamClosed("this stream session is finished; open a new one")

    # -- plans: the steps of one call, written once for sync and async ---------------------------
    def _prefill_plan(self) -> _Plan:
        """Fill the cache with the prompt; read the query heads at the end of the user turn."""
        started = time.perf_counter()
        backend = self.backend
        step = backend.step_tokens
        prefix = self._prefix
        kept = backend._room_for_prompt(self)
        for lo in range(0, len(prefix), step):
            ids = prefix[lo : lo + step]
            if lo <= self._user_end < lo + len(ids):
                result = yield StreamStep(self._live_cache(), ids, "query", self._user_end - lo)
                self.prompt_verdict = backend._query_verdict(result.query or [], started)
            else:
                yield StreamStep(self._live_cache(), ids, "none")
        backend._unpin(self, drop=not kept)  # not kept: its first step rebuilds it

    def _score_plan(self, spans: list[TokenSpan] | list[tuple[int, None, None]]) -> _Plan:
        """Score assistant tokens in steps that fit the context; slide when the cache is full."""
        backend = self.backend
        out: list[TokenVerdict] = []
        room = backend.max_positions - len(self._prefix) - self._keep
        step = max(1, min(room, backend.step_tokens))
        for lo in range(0, len(spans), step):
            chunk = spans[lo : lo + step]
            ids = [t for t, _, _ in chunk]
            kept = yield from self._room_plan(len(ids))
            result = yield StreamStep(self._live_cache(), ids, "response")
            self._recent.extend(ids)
            backend._unpin(self, drop=not kept)
            out += backend._token_verdicts(result.response, chunk, self.scored)
            self.scored += len(ids)
        return out

    def _room_plan(self, n: int) -> Generator[StreamStep, StepResult, bool]:
        """Make room for ``n`` more positions, in the context and in the backend's budget (`_room`), re-prefilling
        the cache first where that takes it; return whether the cache is kept after the step."""
        kept, keep_cache = self.backend._room(self, n)
        if kept is not None:
            yield from self._slide_plan(kept)
        return keep_cache

    def _slide_plan(self, keep: int) -> _Plan:
        """Re-prefill the prompt and the most recent ``keep`` tokens into a fresh cache (bounded memory)."""
        self._cache = SessionCache(self._layers)
        recent = list(self._recent)
        ids = self._prefix + recent[len(recent) - keep :]
        step = self.backend.step_tokens
        for lo in range(0, len(ids), step):
            yield StreamStep(self._live_cache(), ids[lo : lo + step], "none")

    def _live_cache(self) -> SessionCache:
        cache = self._cache
        if self._closed or cache is None:
            raise StreamClosed("this stream session was closed while it ran")
        return cache

    # -- running plans: the I/O, twice ------------------------------------------------------------
    def _drive(self, plan: _Plan, timeout: float | None) -> Any:
        deadline = None if timeout is None else time.monotonic() + timeout
        try:
            step = next(plan)
            while True:
                future = self.backend.batcher.submit(step)
                try:
                    result = future.result(_left(deadline))[0]
                except FutureTimeout:
                    raise self._lost(
                        future, GuardTimeout(f"Qwen3Guard-Stream did not answer within {timeout} s")
                    ) from None
                except BaseException as exc:  # noqa: BLE001 - the forward failed, or KeyboardInterrupt while waiting
                    self._raise_lost(future, exc)
                step = plan.send(result)
        except StopIteration as stop:
            return stop.value
        finally:
            self.backend._unpin(self)  # a plan that stopped early leaves its cache to the budget again

    async def _adrive(self, plan: _Plan, timeout: float | None) -> Any:
        deadline = None if timeout is None else time.monotonic() + timeout
        try:
            step = next(plan)
            while True:
                future = self.backend.batcher.submit(step)
                try:
                    result = (await asyncio.wait_for(asyncio.wrap_future(future), _left(deadline)))[0]
                except asyncio.TimeoutError:
                    raise self._lost(
                        future, GuardTimeout(f"Qwen3Guard-Stream did not answer within {timeout} s")
                    ) from None
                except BaseException as exc:  # noqa: BLE001 - the forward failed, or this task was cancelled
                    self._raise_lost(future, exc)
                step = plan.send(result)
        except StopIteration as stop:
            return stop.value
        finally:
            self.backend._unpin(self)  # a plan that stopped early leaves its cache to the budget again

    def _lost(self, future: Future[Any], exc: BaseException) -> BaseException:
        """A step whose outcome is unknown: withdraw it, mark the session unusable; what to raise."""
        future.cancel()
        if isinstance(exc, GuardTimeout):
            self._broken = "a step missed its deadline"
            return exc
        if isinstance(exc, Exception) and not isinstance(exc, QwenGuardError):
            self._broken = "a forward failed"
            return QwenGuardError(f"Qwen3Guard-Stream forward failed: {type(exc).__name__}: {exc}")
        self._broken = f"a step was interrupted ({type(exc).__name__})"
        return exc

    def _raise_lost(self, future: Future[Any], exc: BaseException) -> None:
        lost = self._lost(future, exc)
        if lost is exc:
            raise exc
        raise lost from exc

    def _async_lock(self) -> asyncio.Lock:
        if self._alock is None:
            self._alock = asyncio.Lock()
        return self._alock

    # -- feeding ----------------------------------------------------------------------------------
    def _push_text(self, delta: str) -> list[TokenSpan]:
        if not isinstance(delta, str):
            raise TypeError(f"delta must be str, got {type(delta).__name__}")
        with self._lock:
            self._check_open()
            if self._text_mode is False:
                raise ValueError("this session was fed token ids; do not mix feed_text and feed_tokens")
            self._text_mode = True
            spans: list[TokenSpan] = []
            for piece in _pieces(clean_text(delta), PUSH_CHARS):  # cleaned whole: a cut must not change it (rt52e F6)
                spans += _as_written(self._seen, self._retok.push(self._seen.push(piece)))
            return spans

    def _token_spans(self, ids: Iterable[int]) -> list[tuple[int, None, None]]:
        spans = [(int(t), None, None) for t in ids]
        vocab = self.backend.config.vocab_size
        bad = [t for t, _, _ in spans if not 0 <= t < vocab]
        if bad:
            raise ValueError(f"token ids out of range [0, {vocab}): {bad[:5]}")
        with self._lock:
            self._check_open()
            if self._text_mode is True:
                raise ValueError("this session was fed text; do not mix feed_text and feed_tokens")
            self._text_mode = False
        return spans

    def _flush(self) -> list[TokenSpan]:
        with self._lock:
            self._check_open()
            self._finished = True
            if self._text_mode is not True:
                return self._retok.flush()
            spans = self._retok.push(self._seen.flush()) + self._retok.flush()
            return _as_written(self._seen, spans)

    def feed_text(self, delta: str, *, timeout: float | None = None) -> list[TokenVerdict]:
        """Score the tokens that ``delta`` completes (the last few stay pending until more text or
        `finish`). Token spans are char offsets in the concatenated (cleaned) text."""
        with self._lock:
            spans = self._push_text(delta)
            return self._drive(self._score_plan(spans), timeout) if spans else []

    async def afeed_text(self, delta: str, *, timeout: float | None = None) -> list[TokenVerdict]:
        """Async twin of `feed_text`: tokenizer work in a worker thread, the forward in the batcher."""
        async with self._async_lock():
            spans = await self._off_loop(self._push_text, delta)
            return await self._adrive(self._score_plan(spans), timeout) if spans else []

    def feed_tokens(self, ids: Iterable[int], *, timeout: float | None = None) -> list[TokenVerdict]:
        """Score assistant tokens given as guard-tokenizer ids (for upstream LLMs that share it)."""
        with self._lock:
            spans = self._token_spans(ids)
            return self._drive(self._score_plan(spans), timeout) if spans else []

    async def afeed_tokens(self, ids: Iterable[int], *, timeout: float | None = None) -> list[TokenVerdict]:
        """Async twin of `feed_tokens`."""
        async with self._async_lock():
            spans = self._token_spans(ids)
            return await self._adrive(self._score_plan(spans), timeout) if spans else []

    def finish(self, *, timeout: float | None = None) -> list[TokenVerdict]:
        """Commit and score the text still pending in the re-tokenizer; the session then takes no more input."""
        with self._lock:
            spans = self._flush()
            return self._drive(self._score_plan(spans), timeout) if spans else []

    async def afinish(self, *, timeout: float | None = None) -> list[TokenVerdict]:
        """Async twin of `finish`."""
        async with self._async_lock():
            spans = await self._off_loop(self._flush)
            return await self._adrive(self._score_plan(spans), timeout) if spans else []

    async def _off_loop(self, work: Callable[..., list[TokenSpan]], *args: Any) -> list[TokenSpan]:
        """``work`` (text into the re-tokenizer) on a worker thread. Cancelled while it runs, the thread still
        takes the text in, and its tokens would never be scored: the session is unusable from then on, as for a
        step cut short (rt52b F2: later calls returned safe verdicts, the cancelled text unjudged)."""
        try:
            return await asyncio.to_thread(work, *args)
        except BaseException as exc:
            self._broken = f"a step was interrupted ({type(exc).__name__})"
            raise

    def close(self) -> None:
        """Free the cache. Idempotent, and never waits: a step in flight finishes on its own."""
        self._closed = True
        self._cache = None
        self._recent.clear()
        self.backend._release(self)

    def __enter__(self) -> StreamSession:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
