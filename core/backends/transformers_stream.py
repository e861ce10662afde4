"""`TransformersStream`: Qwen3Guard-Stream run natively (see `stream_model`), O(1) per token.

A `StreamSession` holds one conversation: the prompt is scored once by the query heads (read at the
``<|im_end|>`` that closes the user turn), then every assistant token by the response heads, with
one forward per call over only the new tokens and a per-session KV cache. Template tokens
(``<|im_start|>assistant``, the empty think block) are fed but not scored.

Long streams slide: when the cache would pass ``max_position_embeddings``, the session re-prefills
the prompt and the most recent half-context of tokens (one bounded re-prefill per half-context of new
tokens, so memory is bounded and the amortized cost per token stays constant).

torch and transformers are imported only when a model is loaded.
"""


from __future__ import annotations

import math
import threading
import time
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from ..errors import MissingDependency, ModelNotFound, QwenGuardError, StreamClosed
from ..formats.prompts import Message
from ..streaming.retokenizer import IncrementalTokenizer
from ..verdict import Risk, Verdict
from .hub import resolve_checkpoint
from .stream_model import (
    STREAM_CATEGORY_ORDER,
    STREAM_CONFIG_FIELDS,
    StreamEncoder,
    StreamLabels,
    TokenVerdict,
    build_stream_model,
    category_name,
    growing_layer_class,
    load_stream_config,
    save_stream_checkpoint,
    stream_model_class,
)
from .torch_runtime import require_torch, resolve_device, resolve_dtype

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

# -- the backend --------------------------------------------------------------------------------
class TransformersStream:
    """Local Qwen3Guard-Stream backend: loads a checkpoint, opens `StreamSession`s.

    >>> stream = TransformersStream.load("demo-stream")                 # doctest: +SKIP
    >>> s = stream.open_session("How can I make a bomb at home?")       # doctest: +SKIP
    >>> s.prompt_verdict.risk                                           # doctest: +SKIP
    <Risk.UNSAFE: 'unsafe'>
    >>> verdicts = s.feed_text("Sure. Mix ammonium nitrate") + s.finish()   # doctest: +SKIP
    """

    def __init__(self, model: Any, tokenizer: Any, *, name: str, max_positions: int | None = None) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.name = name
        self.config = model.config
        self.labels = StreamLabels.from_config(self.config)
        ctx = int(getattr(self.config, "max_position_embeddings", 8192) or 8192)
        self.max_positions = int(min(max_positions or ctx, ctx))
        if self.max_positions < 16:
            raise ValueError(f"max_positions={self.max_positions} is too small for a stream session")
        self.encoder = StreamEncoder(tokenizer)
        self.codec = self.encoder.codec
        # One forward at a time: concurrent CPU forwards only thrash the cores, and a GPU runs them
        # one after another anyway. Sessions stay independent: each has its own cache.
        self._lock = threading.Lock()
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
        **kwargs: Any,
    ) -> TransformersStream:
        """Load a Qwen3Guard-Stream checkpoint: ``"demo-stream"``, a local directory, or a hub id.

        Raises `ModelNotFound` for a checkpoint that cannot be found, and ``ValueError`` when its
        weights do not match the documented layout (missing or unexpected keys)."""
        require_torch()
        try:
            from transformers import AutoTokenizer
        except ImportError as exc:  # pragma: no cover
            raise MissingDependency.for_extra("local", "transformers") from exc
        from ..demo import DEMO_NAMES

        label = str(name_or_path)
        path = resolve_checkpoint(name_or_path, kind="Qwen3Guard-Stream", demo_names=DEMO_NAMES,
                                  revision=kwargs.get("revision"), local_files_only=kwargs.get("local_files_only"))
        dev = resolve_device(device)
        torch_dtype = resolve_dtype(dtype, dev)
        try:
            config = load_stream_config(path)
            tokenizer = AutoTokenizer.from_pretrained(str(path))
        except OSError as exc:
            raise ModelNotFound(f"cannot load Qwen3Guard-Stream checkpoint {label!r}: {exc}") from exc
        model, info = stream_model_class().from_pretrained(
            str(path), config=config, dtype=torch_dtype, output_loading_info=True
        )
        problems = {k: v for k, v in info.items() if k in ("missing_keys", "unexpected_keys", "mismatched_keys") and v}
        if problems:
            raise ValueError(f"{label}: weights do not match the Qwen3Guard-Stream layout: {problems}")
        model.to(dev)
        model.eval()
        return cls(model, tokenizer, name=label, max_positions=max_positions)

    def encode_prompt(self, messages: Sequence[Message] | str) -> tuple[list[int], int]:
        """See `StreamEncoder.encode_prompt`."""
        return self.encoder.encode_prompt(messages)

    # -- sessions -----------------------------------------------------------------------------
    def open_session(self, messages: Sequence[Message] | str) -> StreamSession:
        """Score the prompt (query heads) and return a session ready for the assistant's tokens."""
        if self._closed:
            raise StreamClosed("TransformersStream is closed")
        return StreamSession(self, messages)

    def score(self, messages: Sequence[Message] | str, response: str) -> tuple[Verdict, list[TokenVerdict]]:
        """Prompt verdict and per-token verdicts of a whole response in one full forward (no cache).

        The reference the incremental path must equal; also handy for offline evaluation."""
        torch = require_torch()
        prefix, user_end = self.encode_prompt(messages)
        spans = self.codec.encode(response)
        ids = prefix + [t for t, _, _ in spans]
        if len(ids) > self.max_positions:
            raise ValueError(f"score(): {len(ids)} tokens exceed the context of {self.max_positions}; use a session")
        start = time.perf_counter()
        with self._lock, torch.inference_mode():
            out = self.model(input_ids=torch.tensor([ids], device=self.model.device))
        prompt = self._query_verdict(out, user_end, start)
        verdicts = self._token_verdicts(out, len(prefix), spans, 0)
        return prompt, verdicts

    # -- shared head decoding -----------------------------------------------------------------
    def _query_verdict(self, out: Mapping[str, Any], position: int, started: float) -> Verdict:
        torch = require_torch()
        probs = torch.softmax(out["query_risk_level_logits"][0, position].float(), -1).tolist()
        risk_idx = max(range(len(probs)), key=probs.__getitem__)
        risk = self.labels.query_risk[risk_idx]
        cats: tuple[str, ...] = ()
        if risk is not Risk.SAFE:
            cat_idx = int(out["query_category_logits"][0, position].argmax())
            cats = (self.labels.query_category[cat_idx],)
        per_risk = {r: 0.0 for r in Risk}
        for i, p in enumerate(probs):
            per_risk[self.labels.query_risk[i]] += p
        raw = f"Safety: {risk.value.capitalize()}\nCategories: {', '.join(cats) or 'None'}"
        return Verdict(risk, cats, None, raw, (time.perf_counter() - started) * 1000, self.name, per_risk)

    def _token_verdicts(
        self, out: Mapping[str, Any], offset: int, spans: Sequence[tuple[int, int | None, int | None]], first_index: int
    ) -> list[TokenVerdict]:
        torch = require_torch()
        n = len(spans)
        if n == 0:
            return []
        risk_logits = out["risk_level_logits"][0, offset : offset + n]
        n_risk = risk_logits.shape[-1]
        # One device->host transfer (risk and category logits side by side); the 3-way softmax is
        # cheaper in Python than as more tiny torch ops on the per-chunk path.
        rows = torch.cat((risk_logits, out["category_logits"][0, offset : offset + n]), -1).float().tolist()
        labels = self.labels
        risks, cats = labels.response_risk, labels.response_category
        verdicts: list[TokenVerdict] = []
        exp = math.exp
        for j, (token, s, e) in enumerate(spans):
            row = rows[j]
            logits = row[:n_risk]
            top = max(logits)
            weights = [exp(x - top) for x in logits]
            total = sum(weights)
            probs = [w / total for w in weights]
            best = max(range(n_risk), key=probs.__getitem__)
            risk = risks[best]
            per_risk = {Risk.SAFE: 0.0, Risk.CONTROVERSIAL: 0.0, Risk.UNSAFE: 0.0}
            for i, p in enumerate(probs):
                per_risk[risks[i]] += p
            category = None
            if risk is not Risk.SAFE:
                cat_row = row[n_risk:]
                category = cats[max(range(len(cat_row)), key=cat_row.__getitem__)]
            verdicts.append(TokenVerdict(token, risk, per_risk, category, first_index + j, s, e))
        return verdicts

    def close(self) -> None:
        """Mark the backend closed; open sessions keep working until they close."""
        self._closed = True


class StreamSession:
    """One streamed answer: a KV cache, the re-tokenizer, and the scored-token count.

    Feed the assistant's text with `feed_text` (any deltas) or its guard-tokenizer ids with
    `feed_tokens`; each call runs one forward over only the new tokens and returns their
    `TokenVerdict`s. `finish` commits the text still held back by the re-tokenizer. `close` frees
    the cache. Calls on one session are serialised by a lock; sessions share nothing but the model.
    """

    def __init__(self, backend: TransformersStream, messages: Sequence[Message] | str) -> None:
        torch = require_torch()
        self.backend = backend
        self._lock = threading.Lock()
        self._closed = False
        self._finished = False
        self._retok = IncrementalTokenizer(backend.codec)
        self._text_mode: bool | None = None  # True: feed_text, False: feed_tokens
        self.scored = 0  # assistant tokens scored so far
        prefix, user_end = backend.encode_prompt(messages)
        limit = backend.max_positions // 2
        if len(prefix) > limit:
            # Documented decision: a prompt longer than half the context keeps its first token
            # (<|im_start|>) and its most recent tokens; the end of the prompt is what the answer follows.
            cut = len(prefix) - (limit - 1)
            user_end -= cut - 1
            prefix = prefix[:1] + prefix[cut:]
        self._prefix = prefix
        # Recent assistant tokens, kept for a re-prefill when the context slides.
        self._keep = max(1, (backend.max_positions - len(prefix)) // 2)
        self._recent: deque[int] = deque(maxlen=self._keep)
        self._cache = self._new_cache()
        start = time.perf_counter()
        with backend._lock, torch.inference_mode():
            out = backend.model(
                input_ids=torch.tensor([prefix], device=backend.model.device),
                past_key_values=self._cache,
                use_cache=True,
                heads="query",
            )
        self._length = len(prefix)
        #: The query heads' verdict on the user's turn.
        self.prompt_verdict: Verdict = backend._query_verdict(out, user_end, start)

    def _new_cache(self) -> Any:
        from transformers import DynamicCache

        cache = DynamicCache(config=self.backend.config)
        cache.layers = [growing_layer_class()() for _ in cache.layers]
        return cache

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def text(self) -> str:
        """Not kept (memory stays bounded); the monitor keeps the text it needs."""
        raise AttributeError("StreamSession does not keep the text; StreamMonitor.text does")

    def _check_open(self) -> None:
        if self._closed:
            raise StreamClosed("this stream session is closed")
        if self._finished:
            raise StreamClosed("this stream session is finished; open a new one")

    def feed_text(self, delta: str) -> list[TokenVerdict]:
        """Score the tokens that ``delta`` completes (the last few stay pending until more text or
        `finish`). Token spans are char offsets in the concatenated text."""
        if not isinstance(delta, str):
            raise TypeError(f"delta must be str, got {type(delta).__name__}")
        with self._lock:
            self._check_open()
            if self._text_mode is False:
                raise ValueError("this session was fed token ids; do not mix feed_text and feed_tokens")
            self._text_mode = True
            spans = self._retok.push(delta)
            return self._score(spans)

    def feed_tokens(self, ids: Iterable[int]) -> list[TokenVerdict]:
        """Score assistant tokens given as guard-tokenizer ids (for upstream LLMs that share it)."""
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
            return self._score(spans)

    def finish(self) -> list[TokenVerdict]:
        """Commit and score the text still pending in the re-tokenizer; the session then takes no more input."""
        with self._lock:
            self._check_open()
            spans = self._retok.flush()
            self._finished = True
            return self._score(spans)

    @property
    def pending_chars(self) -> int:
        """Characters fed but not yet turned into scored tokens."""
        return len(self._retok.pending)

    def _score(self, spans: list[Any]) -> list[TokenVerdict]:
        if not spans:
            return []
        out: list[TokenVerdict] = []
        room = self.backend.max_positions - len(self._prefix) - self._keep
        # Feed in pieces that fit the context; slide when the cache is full.
        step = max(1, min(len(spans), room))
        for i in range(0, len(spans), step):
            out.extend(self._forward(spans[i : i + step]))
        return out

    def _forward(self, spans: list[Any]) -> list[TokenVerdict]:
        torch = require_torch()
        backend = self.backend
        ids = [t for t, _, _ in spans]
        if self._length + len(ids) > backend.max_positions:
            self._slide()
        device = backend.model.device
        with backend._lock, torch.inference_mode():
            try:
                out = backend.model(
                    input_ids=torch.tensor([ids], device=device), past_key_values=self._cache, use_cache=True,
                    heads="response",
                )
            except (RuntimeError, ValueError, IndexError) as exc:
                raise QwenGuardError(f"Qwen3Guard-Stream forward failed: {exc}") from exc
        self._length += len(ids)
        self._recent.extend(ids)
        verdicts = backend._token_verdicts(out, 0, spans, self.scored)
        self.scored += len(ids)
        return verdicts

    def _slide(self) -> None:
        """Re-prefill the prompt and the most recent tokens into a fresh cache (bounded memory)."""
        torch = require_torch()
        ids = self._prefix + list(self._recent)
        self._cache = self._new_cache()
        with self.backend._lock, torch.inference_mode():
            self.backend.model(
                input_ids=torch.tensor([ids], device=self.backend.model.device),
                past_key_values=self._cache,
                use_cache=True,
                heads="none",
            )
        self._length = len(ids)

    def close(self) -> None:
        """Free the cache. Idempotent."""
        with self._lock:
            self._closed = True
            self._cache = None
            self._recent.clear()

    def __enter__(self) -> StreamSession:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
