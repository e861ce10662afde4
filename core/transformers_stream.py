"""`TransformersStream`: Qwen3Guard-Stream run natively on transformers' `Qwen3Model`, O(1) per token.

The official checkpoint ships remote code that breaks on transformers 5 and recomputes the whole
prefix for every token (research/qwen3guard.md §3.7-3.8). This module implements the documented
architecture itself (§3.1): the Qwen3 backbone under ``model.``, and two head paths on its final
(normed) hidden state, each ``Linear(pre) -> RMSNorm -> {risk head, category head}``, all bias-free:

    risk_level_category_pre, risk_level_category_layernorm, risk_level_head, category_head
    query_risk_level_category_pre, query_risk_level_category_layernorm,
    query_risk_level_head, query_category_head

so an official checkpoint directory (``config.json`` + safetensors) loads with no missing or
unexpected keys and without ``trust_remote_code``. Label maps come from the config
(``response_risk_level_map``, ``response_category_map``, ``query_risk_level_map``,
``query_category_map``); category names are mapped to the Gen names (see `category_name`).

A `StreamSession` holds one conversation: the prompt is scored once by the query heads (read at the
``<|im_end|>`` that closes the user turn), then every assistant token by the response heads, with
one forward per call over only the new tokens and a per-session KV cache. Template tokens
(``<|im_start|>assistant``, the empty think block) are fed but not scored.

Long streams slide: when the cache would pass ``max_position_embeddings``, the session re-prefills
the prompt and the most recent half-context of tokens (one bounded re-prefill per half-context of new
tokens, so memory is bounded and the amortized cost per token stays constant).

torch and transformers are imported only when a model is built or loaded.
"""

from __future__ import annotations

import json
import math
import threading
import time
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

from .errors import MissingDependency, ModelNotFound, QwenGuardError, StreamClosed
from .prompts import Message, normalize_messages
from .retokenizer import ContentCodec, IncrementalTokenizer
from .transformers_gen import _torch, resolve_device, resolve_dtype
from .verdict import CATEGORIES, Risk, Verdict

__all__ = [
    "TransformersStream",
    "StreamSession",
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

#: Config fields a Qwen3Guard-Stream checkpoint carries on top of a Qwen3 config.
STREAM_CONFIG_FIELDS = (
    "guard_inner_size",
    "num_risk_level",
    "num_category",
    "num_query_risk_level",
    "num_query_category",
    "response_risk_level_map",
    "response_category_map",
    "query_risk_level_map",
    "query_category_map",
)

#: The Stream heads' category order (model card and the official eval script), in Gen names.
#: Used only when a config's category label is not recognised by name.
STREAM_CATEGORY_ORDER = (
    "Violent",
    "Sexual Content or Sexual Acts",
    "Suicide & Self-Harm",
    "Politically Sensitive Topics",
    "PII",
    "Copyright Violation",
    "Non-violent Illegal Acts",
    "Unethical Acts",
    "Jailbreak",
)

# Short names used by the model card, lower-cased, to the Gen names.
_CATEGORY_ALIASES = {
    "violent": "Violent",
    "violence": "Violent",
    "sexual content": "Sexual Content or Sexual Acts",
    "sexual": "Sexual Content or Sexual Acts",
    "self-harm": "Suicide & Self-Harm",
    "suicide": "Suicide & Self-Harm",
    "political": "Politically Sensitive Topics",
    "politically sensitive": "Politically Sensitive Topics",
    "pii": "PII",
    "personally identifiable information": "PII",
    "copyright": "Copyright Violation",
    "illegal acts": "Non-violent Illegal Acts",
    "non-violent illegal acts": "Non-violent Illegal Acts",
    "unethical": "Unethical Acts",
    "jailbreak": "Jailbreak",
}

_RISK_NAMES = {"safe": Risk.SAFE, "unsafe": Risk.UNSAFE, "controversial": Risk.CONTROVERSIAL}

_IM_START, _IM_END = "<|im_start|>", "<|im_end|>"
#: What follows the user turn before the assistant's content (Qwen3 template, thinking disabled).
ASSISTANT_PREFIX = "\n<|im_start|>assistant\n<think>\n\n</think>\n\n"


def category_name(label: str, index: int) -> str:
    """The Gen category name for a Stream head label: exact Gen name, else a known short name
    (``"Self-Harm"``, ``"Political"``, ...), else the documented index order `STREAM_CATEGORY_ORDER`."""
    clean = str(label).strip().strip("'\"").strip()
    if clean in CATEGORIES:
        return clean
    alias = _CATEGORY_ALIASES.get(clean.lower())
    if alias is not None:
        return alias
    if 0 <= index < len(STREAM_CATEGORY_ORDER):
        return STREAM_CATEGORY_ORDER[index]
    raise ValueError(f"unknown Qwen3Guard-Stream category label {label!r} at index {index}")


def _label_map(config: Any, field: str, size: int) -> dict[int, str]:
    raw = getattr(config, field, None)
    if not isinstance(raw, Mapping) or not raw:
        raise ValueError(f"config has no {field!r}: not a Qwen3Guard-Stream config")
    out = {int(k): str(v) for k, v in raw.items()}
    if sorted(out) != list(range(size)):
        raise ValueError(f"config {field!r} has keys {sorted(out)}, expected 0..{size - 1}")
    return out


@dataclass(frozen=True)
class StreamLabels:
    """Index -> label for the four heads, read from the config. Risks as `Risk`, categories as Gen names."""

    response_risk: tuple[Risk, ...]
    response_category: tuple[str, ...]
    query_risk: tuple[Risk, ...]
    query_category: tuple[str, ...]

    @classmethod
    def from_config(cls, config: Any) -> StreamLabels:
        def risks(field: str, size: int) -> tuple[Risk, ...]:
            names = _label_map(config, field, size)
            try:
                return tuple(_RISK_NAMES[names[i].strip().lower()] for i in range(size))
            except KeyError as exc:
                raise ValueError(f"config {field!r}: unknown risk label {exc.args[0]!r}") from None

        def cats(field: str, size: int) -> tuple[str, ...]:
            names = _label_map(config, field, size)
            return tuple(category_name(names[i], i) for i in range(size))

        return cls(
            risks("response_risk_level_map", config.num_risk_level),
            cats("response_category_map", config.num_category),
            risks("query_risk_level_map", config.num_query_risk_level),
            cats("query_category_map", config.num_query_category),
        )


class TokenVerdict(NamedTuple):
    """The response heads' verdict on one assistant token (an immutable tuple: cheap on the per-token path).

    ``probs``: softmax probability per `Risk`. ``category``: the category head's pick, ``None`` when
    the token is safe (the category head is trained only on non-safe tokens). ``index``: the token's
    position among the scored assistant tokens. ``start``/``end``: the token's character span in the
    streamed text (``None`` for tokens fed as ids; a token holding part of a multi-byte character
    spans that whole character).
    """

    token: int
    risk: Risk
    probs: Mapping[Risk, float]
    category: str | None
    index: int
    start: int | None = None
    end: int | None = None

    @property
    def unsafe_probability(self) -> float:
        return float(self.probs.get(Risk.UNSAFE, 0.0))

    def to_dict(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "token": self.token,
            "risk": self.risk.value,
            "probs": {r.value: round(p, 6) for r, p in self.probs.items()},
            "category": self.category,
            "start": self.start,
            "end": self.end,
        }


# -- the torch model ----------------------------------------------------------------------------
_MODEL_CLASS: Any = None


def _model_class() -> Any:
    """`Qwen3StreamGuard`, built on first use so that importing qwenguard.core stays light."""
    global _MODEL_CLASS
    if _MODEL_CLASS is not None:
        return _MODEL_CLASS
    torch = _torch()
    from torch import nn

    try:
        from transformers.models.qwen3.modeling_qwen3 import Qwen3Model, Qwen3PreTrainedModel, Qwen3RMSNorm
    except ImportError as exc:  # pragma: no cover
        raise MissingDependency.for_extra("local", "transformers") from exc

    class Qwen3StreamGuard(Qwen3PreTrainedModel):
        """Qwen3 backbone + the Qwen3Guard-Stream response and query heads (official key names)."""

        def __init__(self, config: Any) -> None:
            super().__init__(config)
            self.model = Qwen3Model(config)
            hidden, inner, eps = config.hidden_size, config.guard_inner_size, config.rms_norm_eps
            self.risk_level_category_pre = nn.Linear(hidden, inner, bias=False)
            self.risk_level_category_layernorm = Qwen3RMSNorm(inner, eps=eps)
            self.risk_level_head = nn.Linear(inner, config.num_risk_level, bias=False)
            self.category_head = nn.Linear(inner, config.num_category, bias=False)
            self.query_risk_level_category_pre = nn.Linear(hidden, inner, bias=False)
            self.query_risk_level_category_layernorm = Qwen3RMSNorm(inner, eps=eps)
            self.query_risk_level_head = nn.Linear(inner, config.num_query_risk_level, bias=False)
            self.query_category_head = nn.Linear(inner, config.num_query_category, bias=False)
            self.post_init()

        def response_logits(self, hidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            x = self.risk_level_category_layernorm(self.risk_level_category_pre(hidden))
            return self.risk_level_head(x), self.category_head(x)

        def query_logits(self, hidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            x = self.query_risk_level_category_layernorm(self.query_risk_level_category_pre(hidden))
            return self.query_risk_level_head(x), self.query_category_head(x)

        def forward(
            self,
            input_ids: torch.Tensor,
            past_key_values: Any = None,
            use_cache: bool = False,
            attention_mask: torch.Tensor | None = None,
            heads: str = "both",
            **kwargs: Any,
        ) -> dict[str, Any]:
            """Backbone + heads. ``heads``: ``"both"``, ``"response"`` or ``"query"`` (skip the unused path)."""
            out = self.model(
                input_ids=input_ids,
                attention_mask=attention_mask,
                past_key_values=past_key_values,
                use_cache=use_cache,
                **kwargs,
            )
            hidden = out.last_hidden_state
            result: dict[str, Any] = {"past_key_values": out.past_key_values, "last_hidden_state": hidden}
            if heads in ("both", "response"):
                result["risk_level_logits"], result["category_logits"] = self.response_logits(hidden)
            if heads in ("both", "query"):
                result["query_risk_level_logits"], result["query_category_logits"] = self.query_logits(hidden)
            return result

    _MODEL_CLASS = Qwen3StreamGuard
    return _MODEL_CLASS


_GROWING_LAYER: Any = None


def _growing_layer_class() -> Any:
    """A KV-cache layer that appends in place into a buffer of doubling capacity.

    transformers' `DynamicLayer` concatenates the whole cache with each new token (an O(n) copy per
    token per layer); appending in place keeps a session's per-token cost flat as the answer grows.
    """
    global _GROWING_LAYER
    if _GROWING_LAYER is not None:
        return _GROWING_LAYER
    from transformers.cache_utils import DynamicLayer

    class GrowingLayer(DynamicLayer):
        initial_capacity = 256

        def lazy_initialization(self, key_states: Any, value_states: Any) -> None:
            self.dtype, self.device = key_states.dtype, key_states.device
            self._k = self._v = None
            self._n = 0
            self.is_initialized = True

        def _reserve(self, key_states: Any, value_states: Any, need: int) -> None:
            cap = 0 if self._k is None else self._k.shape[-2]
            if need <= cap:
                return
            cap = max(need, 2 * cap, self.initial_capacity)
            k, v = key_states, value_states
            new_k = k.new_empty(k.shape[0], k.shape[1], cap, k.shape[3])
            new_v = v.new_empty(v.shape[0], v.shape[1], cap, v.shape[3])
            if self._n:
                new_k[:, :, : self._n] = self._k[:, :, : self._n]
                new_v[:, :, : self._n] = self._v[:, :, : self._n]
            self._k, self._v = new_k, new_v

        def update(self, key_states: Any, value_states: Any, *args: Any, **kwargs: Any) -> tuple[Any, Any]:
            if not self.is_initialized:
                self.lazy_initialization(key_states, value_states)
            need = self._n + key_states.shape[-2]
            self._reserve(key_states, value_states, need)
            self._k[:, :, self._n : need] = key_states
            self._v[:, :, self._n : need] = value_states
            self._n = need
            self.keys, self.values = self._k[:, :, :need], self._v[:, :, :need]
            return self.keys, self.values

        def get_seq_length(self) -> int:
            return self._n if self.is_initialized else 0

        def reset(self) -> None:
            self._k = self._v = None
            self._n = 0
            super().reset()

        def crop(self, tokens_to_remove: int) -> None:
            raise NotImplementedError("stream sessions never crop their cache")

    _GROWING_LAYER = GrowingLayer
    return GrowingLayer


def build_stream_model(config: Any) -> Any:
    """A randomly initialised `Qwen3StreamGuard` for ``config`` (a `Qwen3Config` with the Stream fields)."""
    missing = [f for f in STREAM_CONFIG_FIELDS if getattr(config, f, None) is None]
    if missing:
        raise ValueError(f"config lacks Qwen3Guard-Stream fields {missing}")
    return _model_class()(config)


def load_stream_config(path: str | Path) -> Any:
    """A `Qwen3Config` from a Stream checkpoint's config.json, extra fields kept (no remote code)."""
    from transformers import Qwen3Config

    data = json.loads((Path(path) / "config.json").read_text(encoding="utf-8"))
    if data.get("model_type") not in (None, "qwen3"):
        raise ValueError(f"{path}: model_type {data.get('model_type')!r} is not a Qwen3 Stream checkpoint")
    for key in ("auto_map", "architectures", "transformers_version"):
        data.pop(key, None)  # remote-code pointers: never followed
    config = Qwen3Config(**data)
    missing = [f for f in STREAM_CONFIG_FIELDS if getattr(config, f, None) is None]
    if missing:
        raise ValueError(f"{path}: config.json lacks Qwen3Guard-Stream fields {missing}")
    return config


class StreamEncoder:
    """How a conversation is shown to Qwen3Guard-Stream: the Qwen3 chat template with thinking off,
    ``<|im_start|>{role}\n{content}<|im_end|>\n`` per turn, then ``<|im_start|>assistant\n<think>\n\n</think>\n\n``,
    after which the assistant's content tokens follow (tokenized on their own, as plain text).

    Template markers are control tokens; content never is (DESIGN.md decision 2). Shared by the
    backend and the demo Stream trainer, so both see exactly the same ids.
    """

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self.codec = ContentCodec(tokenizer)
        self._special = {s: self._special_id(s) for s in (_IM_START, _IM_END)}
        self._assistant_prefix = self._template_ids(ASSISTANT_PREFIX)

    # -- token bookkeeping --------------------------------------------------------------------
    def _special_id(self, text: str) -> int | None:
        ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        return ids[0] if len(ids) == 1 else None

    def _template_ids(self, text: str) -> list[int]:
        """Template text: added-token strings here are real control tokens."""
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def _marker(self, text: str) -> list[int]:
        tid = self._special[text]
        return [tid] if tid is not None else self._template_ids(text)

    def encode_prompt(self, messages: Sequence[Message] | str) -> tuple[list[int], int]:
        """Ids of the conversation up to the assistant's content, and the index of the ``<|im_end|>``
        that closes the last user turn (where the query heads are read)."""
        msgs = normalize_messages(messages)
        if msgs[-1]["role"] != "user":
            raise ValueError("a stream session starts after a user turn: the last message must be the user's")
        ids: list[int] = []
        user_end = -1
        for i, m in enumerate(msgs):
            ids += self._marker(_IM_START)
            ids += self.codec.ids(f"{m['role']}\n{m['content']}")  # content: plain text, never control tokens
            ids += self._marker(_IM_END)
            user_end = len(ids) - 1
            if i < len(msgs) - 1:
                ids += self._template_ids("\n")
        return ids + self._assistant_prefix, user_end


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
        _torch()
        try:
            from transformers import AutoTokenizer
        except ImportError as exc:  # pragma: no cover
            raise MissingDependency.for_extra("local", "transformers") from exc
        from .demo import DEMO_NAMES

        label = str(name_or_path)
        path = Path(DEMO_NAMES.get(label, name_or_path))
        if not path.is_dir():
            path = _download(label, **kwargs)
        dev = resolve_device(device)
        torch_dtype = resolve_dtype(dtype, dev)
        try:
            config = load_stream_config(path)
            tokenizer = AutoTokenizer.from_pretrained(str(path))
        except OSError as exc:
            raise ModelNotFound(f"cannot load Qwen3Guard-Stream checkpoint {label!r}: {exc}") from exc
        model, info = _model_class().from_pretrained(
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
        torch = _torch()
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
        torch = _torch()
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
        torch = _torch()
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


# transformers' generic PretrainedConfig fields that Qwen3 checkpoints do not carry.
_GENERIC_CONFIG_KEYS = frozenset({
    "auto_map", "transformers_version", "_name_or_path", "id2label", "label2id", "chunk_size_feed_forward",
    "is_encoder_decoder", "problem_type", "return_dict", "output_hidden_states", "output_attentions",
    "torchscript", "pruned_heads", "tf_legacy_loss", "use_bfloat16", "add_cross_attention",
    "cross_attention_hidden_size", "finetuning_task", "prefix", "sep_token_id", "decoder_start_token_id",
    "task_specific_params", "tokenizer_class", "torch_dtype",
})


def save_stream_checkpoint(model: Any, tokenizer: Any, path: str | Path) -> Path:
    """Write ``model`` in the official Qwen3Guard-Stream layout: ``config.json`` (Qwen3 fields, the
    Stream fields and label maps, ``architectures: ["Qwen3ForGuardModel"]``), ``model.safetensors``
    with the official key names, and the tokenizer files."""
    from safetensors.torch import save_file

    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    config = {k: v for k, v in model.config.to_dict().items() if v is not None and k not in _GENERIC_CONFIG_KEYS}
    config["dtype"] = str(next(model.parameters()).dtype).replace("torch.", "")
    config["architectures"] = ["Qwen3ForGuardModel"]
    config["model_type"] = "qwen3"
    (out / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True, default=str) + "\n", encoding="utf-8")
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    save_file(state, str(out / "model.safetensors"), metadata={"format": "pt"})
    if tokenizer is not None:
        tokenizer.save_pretrained(str(out))
    return out


def _download(name: str, **kwargs: Any) -> Path:
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(name, **kwargs))
    except Exception as exc:  # noqa: BLE001 - any hub failure means "not found" here
        raise ModelNotFound(
            f"cannot load Qwen3Guard-Stream checkpoint {name!r}: not a local directory and not downloadable "
            "(offline, or a wrong id?). Use 'demo-stream' for the embedded demo Stream guard."
        ) from exc


class StreamSession:
    """One streamed answer: a KV cache, the re-tokenizer, and the scored-token count.

    Feed the assistant's text with `feed_text` (any deltas) or its guard-tokenizer ids with
    `feed_tokens`; each call runs one forward over only the new tokens and returns their
    `TokenVerdict`s. `finish` commits the text still held back by the re-tokenizer. `close` frees
    the cache. Calls on one session are serialised by a lock; sessions share nothing but the model.
    """

    def __init__(self, backend: TransformersStream, messages: Sequence[Message] | str) -> None:
        torch = _torch()
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
        cache.layers = [_growing_layer_class()() for _ in cache.layers]
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
        torch = _torch()
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
        torch = _torch()
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
