"""Scripted answers for random-weight Gen models: one next-token rule for transformers' ``generate`` (a
logits processor) and for qwenguard's decode engine (its logits hook), so both paths answer alike.

A random model never writes a verdict. `ScriptedAnswer` pushes the logit of the script's next token
(given the answer tokens so far) far above the others, leaving every other logit as the model computed
it. With ``free_label=True`` the label is the model's own choice: at the position right after
``Safety:`` the three label tokens are raised together (their relative logits, hence the label
probabilities, stay the model's), and the script goes on with the label the model picked.

Used by tests (cached vs uncached probabilities, forced tokens, sessions) and by bench/realsize.py.
`record_plans` records what a local Gen backend is asked to judge (the tests that count tokens run).
"""

from __future__ import annotations

from typing import Any

LABELS = ("Safe", "Unsafe", "Controversial")


class ScriptedAnswer:
    """Forces ``text`` (+ ``<|im_end|>``) token by token; see the module docstring."""

    def __init__(self, tokenizer: Any, text: str, *, free_label: bool = False, end: bool = True) -> None:
        self.tokenizer = tokenizer
        self.free_label = free_label
        self.end_id = tokenizer.convert_tokens_to_ids("<|im_end|>")
        self.ids = self._ids(text, end)
        self.lead = self._ids("Safety:", False)
        self.label_firsts = [self._ids(f"Safety: {label}", False)[len(self.lead)] for label in LABELS]
        self.text, self.end = text, end

    def _ids(self, text: str, end: bool) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"]) + ([self.end_id] if end else [])

    def script_for(self, answer: list[int]) -> list[int]:
        """The script an answer follows (with a free label: the script rewritten with the label chosen)."""
        if self.free_label and len(answer) > len(self.lead) and answer[: len(self.lead)] == self.lead:
            for label in LABELS:
                for other in LABELS:
                    candidate = self._ids(self.text.replace(f"Safety: {other}", f"Safety: {label}", 1), self.end)
                    if answer[: len(candidate)] == candidate[: len(answer)]:
                        return candidate
        return self.ids

    def force(self, scores: Any, row: int, answer: list[int]) -> None:
        # Tensor arithmetic only, no float(): on a GPU reading a value back waits for the device, once per
        # row and step, which the timed arms of bench/realsize.py would pay and a real verdict never does.
        top = scores[row].max()
        if self.free_label and answer == self.lead:
            lift = top - scores[row, self.label_firsts].min() + 30.0
            for token in self.label_firsts:
                scores[row, token] = scores[row, token] + lift
            return
        script = self.script_for(answer)
        if len(answer) < len(script):
            scores[row, script[len(answer)]] = top + 30.0

    # -- the two paths ---------------------------------------------------------------------------
    def engine_hook(self, answers: list[list[int]], logits: Any) -> Any:
        for row, answer in enumerate(answers):
            self.force(logits, row, answer)
        return logits

    def processor(self, width: int) -> Any:
        from transformers import LogitsProcessor, LogitsProcessorList

        script = self

        class Force(LogitsProcessor):
            def __call__(self, input_ids: Any, scores: Any) -> Any:
                for row in range(scores.shape[0]):
                    script.force(scores, row, input_ids[row, width:].tolist())
                return scores

        return LogitsProcessorList([Force()])

    def install(self, backend: Any) -> None:
        """Script a `TransformersGen` backend: its engine's hook, or its ``generate`` (``engine=False``)."""
        if backend.engine is not None:
            backend.engine.logits_hook = self.engine_hook
            return
        model = backend.model
        original = getattr(model, "_unscripted_generate", model.generate)
        model._unscripted_generate = original

        def generate(*args: Any, **kwargs: Any) -> Any:
            kwargs.setdefault("logits_processor", self.processor(kwargs["input_ids"].shape[1]))
            return original(*args, **kwargs)

        model.generate = generate


def record_plans(backend: Any, monkeypatch: Any) -> list[list[dict[str, str]]]:
    """Record every conversation ``backend`` (a `TransformersGen`) plans: full checks and session steps alike."""
    seen: list[list[dict[str, str]]] = []
    plan = backend._plan

    def recording(conversations: Any, *args: Any, **kwargs: Any) -> Any:
        seen.extend([dict(m) for m in c] for c in conversations)
        return plan(conversations, *args, **kwargs)

    monkeypatch.setattr(backend, "_plan", recording)
    return seen
