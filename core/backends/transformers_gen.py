"""`TransformersGen`: Qwen3Guard-Gen run locally with transformers + torch.

Any Qwen3Guard-Gen checkpoint (hub id or local path) or the embedded demo guard loads through the
same code: `AutoTokenizer` + `AutoModelForCausalLM`, the checkpoint's chat template (else
`render_prompt`), greedy decoding with a small token budget, left-padded batches, micro-batching of
concurrent callers, and overlapping windows for text longer than the context.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..errors import MissingDependency, ModelNotFound, QwenGuardError, VerdictParseError
from ..formats.prompts import (
    SAFETY_LABELS,
    moderation_mode,
    normalize_messages,
    parse_verdict,
)
from ..verdict import Risk, Verdict, worst
from .batching import DEFAULT_MAX_BATCH, DEFAULT_MAX_WAIT_S, MicroBatcher
from .hub import resolve_checkpoint
from .torch_runtime import require_torch, resolve_device, resolve_dtype

__all__ = ["TransformersGen", "DEFAULT_MAX_NEW_TOKENS"]

#: Answers are 8-14 tokens; 48 leaves room for several long category names.
DEFAULT_MAX_NEW_TOKENS = 48
#: Context used when a config gives none, or an absurd one.
DEFAULT_MAX_CONTEXT = 32768


class TransformersGen:
    """Local Qwen3Guard-Gen backend.

    >>> backend = TransformersGen.load("demo")            # doctest: +SKIP
    >>> backend.classify([[{"role": "user", "content": "Hi"}]])   # doctest: +SKIP
    """

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        *,
        name: str,
        max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
        max_context: int | None = None,
        max_batch: int = DEFAULT_MAX_BATCH,
        max_wait_s: float = DEFAULT_MAX_WAIT_S,
        window_overlap: int = 64,
        use_chat_template: bool | None = None,
    ) -> None:
        from ..formats.encoding import ConversationEncoder

        self.model = model
        self.tokenizer = tokenizer
        self.name = name
        self.max_new_tokens = max_new_tokens
        config_ctx = getattr(model.config, "max_position_embeddings", None) or DEFAULT_MAX_CONTEXT
        self.max_context = int(min(max_context or config_ctx, config_ctx))
        self.window_overlap = window_overlap
        self.encoder = ConversationEncoder(tokenizer, use_chat_template=use_chat_template)
        self.pad_id = self._pad_id()
        self.eos_ids = self._eos_ids()
        self._label_tokens = self._find_label_tokens()
        self._batcher: MicroBatcher[list[int], tuple[str, dict[Risk, float] | None]] = MicroBatcher(
            self._generate_batch, max_batch=max_batch, max_wait_s=max_wait_s, name=f"qwenguard-gen[{name}]"
        )

    # -- loading ------------------------------------------------------------------------------
    @classmethod
    def load(
        cls,
        name_or_path: str | Path,
        *,
        device: str | None = "auto",
        dtype: Any = "auto",
        revision: str | None = None,
        local_files_only: bool | None = None,
        **kwargs: Any,
    ) -> TransformersGen:
        """Load a checkpoint: ``"demo"``, a local directory, or a Hugging Face hub id."""
        from ..demo import DEMO_NAMES

        label = str(name_or_path)
        # Before torch loads (seconds): an offline machine hears about a hub id at once.
        path = resolve_checkpoint(name_or_path, kind="Qwen3Guard-Gen", demo_names=DEMO_NAMES, revision=revision,
                                  local_files_only=local_files_only)
        require_torch()  # a clear MissingDependency before anything else loads
        try:
            from transformers import AutoModelForCausalLM, AutoTokenizer
        except ImportError as exc:
            raise MissingDependency.for_extra("local", "transformers") from exc
        dev = resolve_device(device)
        torch_dtype = resolve_dtype(dtype, dev)
        opts: dict[str, Any] = {"revision": revision}
        if local_files_only is not None:
            opts["local_files_only"] = local_files_only
        try:
            tokenizer = AutoTokenizer.from_pretrained(str(path), **opts)
            model = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch_dtype, **opts)
        except (OSError, ValueError) as exc:
            raise ModelNotFound(
                f"cannot load Qwen3Guard-Gen checkpoint {label!r}: not a local directory and not "
                f"downloadable (offline, or a wrong id?). Use 'demo' for the embedded demo guard."
            ) from exc
        model.to(dev)
        model.eval()
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token
        return cls(model, tokenizer, name=label, **kwargs)

    # -- token bookkeeping --------------------------------------------------------------------
    def _pad_id(self) -> int:
        pad = self.tokenizer.pad_token_id
        return int(pad if pad is not None else self.tokenizer.eos_token_id)

    def _eos_ids(self) -> list[int]:
        ids = {self.tokenizer.eos_token_id}
        gen_eos = getattr(getattr(self.model, "generation_config", None), "eos_token_id", None)
        ids.update(gen_eos if isinstance(gen_eos, list) else [gen_eos])
        im_end = self.tokenizer.convert_tokens_to_ids("<|im_end|>")
        if isinstance(im_end, int) and im_end != self.tokenizer.unk_token_id:
            ids.add(im_end)
        return sorted(i for i in ids if isinstance(i, int))

    def _find_label_tokens(self) -> tuple[list[int], dict[Risk, int]] | None:
        """The shared prefix of "Safety: <label>" and the first token that tells the labels apart.

        Scores are read from the logits at that position; ``None`` when the tokenizer does not give
        one distinct first token per label (then verdicts carry no probabilities).
        """
        encoded = {r: self.tokenizer(f"Safety: {lab}", add_special_tokens=False)["input_ids"] for r, lab in SAFETY_LABELS.items()}
        seqs = list(encoded.values())
        k = 0
        while all(len(s) > k for s in seqs) and len({s[k] for s in seqs}) == 1:
            k += 1
        if not all(len(s) > k for s in seqs):
            return None
        firsts = {r: s[k] for r, s in encoded.items()}
        if len(set(firsts.values())) != len(firsts):
            return None
        return seqs[0][:k], firsts

    # -- classification -----------------------------------------------------------------------
    def _windows(self, messages: list[dict[str, str]]) -> list[list[int]]:
        """One encoded prompt, or several overlapping windows when it exceeds the context."""
        ids = self.encoder.encode(messages)
        budget = self.max_context - self.max_new_tokens
        if len(ids) <= budget:
            return [ids]
        *context, last = messages
        # Earlier turns are context: drop the oldest until they leave half the budget to the judged
        # turn (keeping the turn right before it), then window the judged turn. It is never truncated.
        while len(context) > 1 and len(self.encoder.encode([*context, {**last, "content": ""}])) > budget // 2:
            context = context[1:]
        overhead = len(self.encoder.encode([*context, {**last, "content": ""}]))
        if overhead > budget // 2 and context:
            keep = context[-1]["content"]
            tail = self.encoder.split_content(keep, budget // 4, 0)[-1]
            context = [{**context[-1], "content": tail}]
            overhead = len(self.encoder.encode([*context, {**last, "content": ""}]))
        window = budget - overhead - 2  # two tokens of slack: a window boundary may re-merge BPE pieces
        if window < 16:
            raise ValueError(f"the model context ({self.max_context}) is too small to window this input")
        overlap = min(self.window_overlap, window // 4)
        parts = self.encoder.split_content(last["content"], window, overlap)
        return [self.encoder.encode([*context, {**last, "content": p}])[: budget] for p in parts]

    def _plan(self, conversations: Sequence[Sequence[dict[str, str]]]) -> tuple[list[list[int]], list[tuple[int, int, str]]]:
        flat: list[list[int]] = []
        spans: list[tuple[int, int, str]] = []
        for conv in conversations:
            msgs = normalize_messages(conv)
            windows = self._windows(msgs)
            spans.append((len(flat), len(windows), moderation_mode(msgs)))
            flat.extend(windows)
        return flat, spans

    def _assemble(
        self, spans: list[tuple[int, int, str]], outputs: list[tuple[str, dict[Risk, float] | None]], elapsed_ms: float
    ) -> list[Verdict | QwenGuardError]:
        results: list[Verdict | QwenGuardError] = []
        for start, count, mode in spans:
            verdicts: list[Verdict] = []
            error: QwenGuardError | None = None
            for text, probs in outputs[start : start + count]:
                try:
                    v = parse_verdict(text, mode=mode, model=self.name)
                except VerdictParseError as exc:
                    error = exc
                    break
                verdicts.append(Verdict(v.risk, v.categories, v.refusal, v.raw, elapsed_ms, self.name, probs))
            results.append(error if error is not None else worst(verdicts))
        return results

    def classify(self, conversations: Sequence[Sequence[dict[str, str]]], *, timeout: float | None = None) -> list[Verdict | QwenGuardError]:
        start = time.perf_counter()
        flat, spans = self._plan(conversations)
        outputs = self._batcher.run(flat, timeout)
        return self._assemble(spans, outputs, (time.perf_counter() - start) * 1000)

    async def aclassify(self, conversations: Sequence[Sequence[dict[str, str]]], *, timeout: float | None = None) -> list[Verdict | QwenGuardError]:
        start = time.perf_counter()
        flat, spans = self._plan(conversations)
        outputs = await self._batcher.arun(flat, timeout)
        return self._assemble(spans, outputs, (time.perf_counter() - start) * 1000)

    # -- the forward pass (worker thread only) ------------------------------------------------
    def _generate_batch(self, prompts: list[list[int]]) -> list[tuple[str, dict[Risk, float] | None]]:
        torch = require_torch()
        out: list[tuple[str, dict[Risk, float] | None]] = [("", None)] * len(prompts)
        # Sort by length so each chunk pads little; answer in the callers' order.
        order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
        step = self._batcher.max_batch
        for c in range(0, len(order), step):
            idx = order[c : c + step]
            batch = [prompts[i] for i in idx]
            width = max(len(p) for p in batch)
            input_ids = torch.full((len(batch), width), self.pad_id, dtype=torch.long)
            mask = torch.zeros((len(batch), width), dtype=torch.long)
            for row, p in enumerate(batch):
                input_ids[row, width - len(p) :] = torch.tensor(p, dtype=torch.long)
                mask[row, width - len(p) :] = 1
            device = self.model.device
            with torch.inference_mode():
                gen = self.model.generate(
                    input_ids=input_ids.to(device),
                    attention_mask=mask.to(device),
                    max_new_tokens=self.max_new_tokens,
                    do_sample=False,
                    pad_token_id=self.pad_id,
                    eos_token_id=self.eos_ids,
                    return_dict_in_generate=True,
                    output_scores=self._label_tokens is not None,
                )
            new = gen.sequences[:, width:].tolist()
            for row, i in enumerate(idx):
                tokens = [t for t in new[row] if t not in self.eos_ids and t != self.pad_id]
                text = self.tokenizer.decode(tokens, skip_special_tokens=True)
                out[i] = (text, self._label_probs(new[row], gen.scores, row))
        return out

    def _label_probs(self, tokens: list[int], scores: Any, row: int) -> dict[Risk, float] | None:
        if self._label_tokens is None or not scores:
            return None
        prefix, firsts = self._label_tokens
        k = len(prefix)
        if tokens[:k] != prefix or len(scores) <= k:
            return None
        logits = scores[k][row].float()
        picked = [float(logits[firsts[r]]) for r in SAFETY_LABELS]
        top = max(picked)
        exps = [math.exp(x - top) for x in picked]
        total = sum(exps)
        return {r: e / total for r, e in zip(SAFETY_LABELS, exps)}

    def close(self) -> None:
        self._batcher.close()
