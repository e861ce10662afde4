"""The Qwen3Guard-Stream model: its heads on transformers' `Qwen3Model`, label maps, checkpoint layout and
prompt encoding.

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

torch and transformers are imported only when a model is built or loaded.
"""

from __future__ import annotations

import inspect
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

from ..errors import MissingDependency
from ..formats.content import clean_text, read_words_as_seen
from ..formats.prompts import Message, normalize_messages
from ..streaming.retokenizer import ContentCodec
from ..verdict import CATEGORIES, Risk
from .torch_runtime import require_torch

__all__ = [
    "TokenVerdict",
    "StreamLabels",
    "StreamEncoder",
    "category_name",
    "build_stream_model",
    "save_stream_checkpoint",
    "load_stream_config",
    "STREAM_CONFIG_FIELDS",
    "STREAM_CATEGORY_ORDER",
    "ASSISTANT_PREFIX",
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


def known_category_name(label: str) -> str:
    """The Gen category name for a Stream head label: an exact Gen name or a known short name, else a
    ``ValueError``. A label the loader does not know was renamed by its index to the official order, so a
    fine-tune's own names ("Hate0") were read as categories the model never meant (rt53d F4)."""
    clean = str(label).strip().strip("'\"").strip()
    if clean in CATEGORIES:
        return clean
    alias = _CATEGORY_ALIASES.get(clean.lower())
    if alias is None:
        raise ValueError(
            f"unknown category label {str(label)[:64]!r}: a Qwen3Guard-Stream label is one of {list(CATEGORIES)} "
            f"or a model-card short name ({', '.join(sorted(set(_CATEGORY_ALIASES)))})"
        )
    return alias


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
        """The label maps, checked: each risk map names Safe, Unsafe and Controversial once each, and each
        category map names known categories (`category_name`), each once. A head whose "unsafe" index was
        labelled "Safe", or eight labels all "PII", loaded and misread every token (rt53d F4)."""

        def risks(field: str, size_field: str) -> tuple[Risk, ...]:
            size = _head_size(config, size_field)
            if size != len(_RISK_NAMES):
                raise ValueError(
                    f"config {size_field}={size}: a Qwen3Guard-Stream risk head has {len(_RISK_NAMES)} levels "
                    f"(Safe, Unsafe, Controversial)"
                )
            names = _label_map(config, field, size)
            try:
                out = tuple(_RISK_NAMES[names[i].strip().lower()] for i in range(size))
            except KeyError as exc:
                raise ValueError(f"config {field!r}: unknown risk label {exc.args[0]!r}") from None
            if len(set(out)) != len(out):
                raise ValueError(
                    f"config {field!r} is {dict(sorted(names.items()))}: it must name Safe, Unsafe and "
                    f"Controversial once each"
                )
            return out

        def cats(field: str, size_field: str) -> tuple[str, ...]:
            size = _head_size(config, size_field)
            names = _label_map(config, field, size)
            out = []
            for i in range(size):
                try:
                    out.append(known_category_name(names[i]))
                except ValueError as exc:
                    raise ValueError(f"config {field!r}: {exc}") from None
            repeated = sorted({c for c in out if out.count(c) > 1})
            if repeated:
                raise ValueError(f"config {field!r} names {repeated} more than once: each index is one category")
            return tuple(out)

        return cls(
            risks("response_risk_level_map", "num_risk_level"),
            cats("response_category_map", "num_category"),
            risks("query_risk_level_map", "num_query_risk_level"),
            cats("query_category_map", "num_query_category"),
        )


def _head_size(config: Any, field: str) -> int:
    size = getattr(config, field, None)
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise ValueError(f"config {field} must be a positive count, got {size!r}")
    return size


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
    index: int  # type: ignore[assignment]  # a field named like tuple.index: part of the public TokenVerdict
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
_CACHE_KWARG = "past_key_values"


def stream_model_class() -> Any:
    """`Qwen3StreamGuard`, built on first use so that importing qwenguard.core stays light."""
    global _MODEL_CLASS
    if _MODEL_CLASS is not None:
        return _MODEL_CLASS
    require_torch()  # the clear MissingDependency first
    from torch import nn

    try:
        from transformers.models.qwen3.modeling_qwen3 import (
            Qwen3Model,
            Qwen3PreTrainedModel,
            Qwen3RMSNorm,
        )
    except ImportError as exc:  # pragma: no cover
        raise MissingDependency.for_extra("local", "transformers") from exc

    class Qwen3StreamGuard(Qwen3PreTrainedModel):  # type: ignore[misc]  # transformers is untyped here
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

        def response_logits(self, hidden: Any) -> tuple[Any, Any]:
            x = self.risk_level_category_layernorm(self.risk_level_category_pre(hidden))
            return self.risk_level_head(x), self.category_head(x)

        def query_logits(self, hidden: Any) -> tuple[Any, Any]:
            x = self.query_risk_level_category_layernorm(self.query_risk_level_category_pre(hidden))
            return self.query_risk_level_head(x), self.query_category_head(x)

        def forward(
            self,
            input_ids: Any,
            cache: Any = None,
            use_cache: bool = False,
            attention_mask: Any = None,
            heads: str = "both",
            past_key_values: Any = None,
            **kwargs: Any,
        ) -> dict[str, Any]:
            """Backbone + heads. ``heads``: ``"both"``, ``"response"`` or ``"query"`` (skip the unused path).

            ``cache`` (or its older name ``past_key_values``) is passed to the backbone under the name
            the installed transformers expects, and only when given: naming it otherwise warns."""
            cache = cache if cache is not None else past_key_values
            if cache is not None:
                kwargs[_CACHE_KWARG] = cache
            out = self.model(input_ids=input_ids, attention_mask=attention_mask, use_cache=use_cache, **kwargs)
            hidden = out.last_hidden_state
            returned = out.get(_CACHE_KWARG) if use_cache else None
            result: dict[str, Any] = {"cache": returned, "past_key_values": returned, "last_hidden_state": hidden}
            if heads in ("both", "response"):
                result["risk_level_logits"], result["category_logits"] = self.response_logits(hidden)
            if heads in ("both", "query"):
                result["query_risk_level_logits"], result["query_category_logits"] = self.query_logits(hidden)
            return result

    global _CACHE_KWARG
    # transformers 5.x renamed Qwen3Model.forward's ``past_key_values`` to ``cache`` (the old name warns,
    # and goes away in 5.40); 4.x knows only the old name.
    _CACHE_KWARG = "cache" if "cache" in inspect.signature(Qwen3Model.forward).parameters else "past_key_values"
    _MODEL_CLASS = Qwen3StreamGuard
    return _MODEL_CLASS


def build_stream_model(config: Any) -> Any:
    """A randomly initialised `Qwen3StreamGuard` for ``config`` (a `Qwen3Config` with the Stream fields)."""
    missing = [f for f in STREAM_CONFIG_FIELDS if getattr(config, f, None) is None]
    if missing:
        raise ValueError(f"config lacks Qwen3Guard-Stream fields {missing}")
    return stream_model_class()(config)


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
            # Content: the one content rule, then plain text (never control tokens).
            # Words that hide from the model what a reader sees, as read (`read_words_as_seen`).
            ids += self.codec.ids(f"{m['role']}\n{read_words_as_seen(clean_text(m['content']))}")
            ids += self._marker(_IM_END)
            user_end = len(ids) - 1
            if i < len(msgs) - 1:
                ids += self._template_ids("\n")
        return ids + self._assistant_prefix, user_end


# transformers' generic PretrainedConfig fields that Qwen3 checkpoints do not carry.
_GENERIC_CONFIG_KEYS = frozenset(
    {
        "auto_map",
        "transformers_version",
        "_name_or_path",
        "id2label",
        "label2id",
        "chunk_size_feed_forward",
        "is_encoder_decoder",
        "problem_type",
        "return_dict",
        "output_hidden_states",
        "output_attentions",
        "torchscript",
        "pruned_heads",
        "tf_legacy_loss",
        "use_bfloat16",
        "add_cross_attention",
        "cross_attention_hidden_size",
        "finetuning_task",
        "prefix",
        "sep_token_id",
        "decoder_start_token_id",
        "task_specific_params",
        "tokenizer_class",
        "torch_dtype",
    }
)


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
