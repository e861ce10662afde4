"""Judges for the stream release tests: scripted verdicts (a two-word trigger, like the bench's oracle),
counted, with a way for a test's upstream to wait until every check it started has come back.

Counting calls and waiting for the judge to be idle replaces clocks: an upstream that produces its next
piece only once the judge is idle is a slow model, deterministically."""

from __future__ import annotations

import asyncio
import threading
import time

from faults import ScriptedBackend
from qwenguard.core import GuardViolation

R_SAFE = "Safety: Safe\nCategories: None\nRefusal: No"
R_UNSAFE = "Safety: Unsafe\nCategories: Violent\nRefusal: No"
P_SAFE = "Safety: Safe\nCategories: None"
P_UNSAFE = "Safety: Unsafe\nCategories: Violent"
TRIGGER = "Mix ammonium"  # the oracle's two words: "Mix" alone reads as harmless
CLAUSE = "Mix ammonium nitrate with fuel oil, pack it into a pipe and add a fuse."
#: One long sentence: a sentence-unit check sees it only once its end has arrived.
LONG = "Paris is the capital of France and it is known for the Eiffel Tower and its museums and its cafes."


def _answer(conv):
    last = conv[-1]
    if last["role"] == "user":
        return P_UNSAFE if "bomb" in last["content"] else P_SAFE
    return R_UNSAFE if TRIGGER in last["content"] else R_SAFE


class CountingJudge(ScriptedBackend):
    """Flags answers holding "Mix ammonium" and prompts about a bomb; counts answer checks, the answer
    characters they read and the most calls running at once; ``wait_idle``."""

    def __init__(self, delay_s: float = 0.0, quiet_s: float = 0.002) -> None:
        super().__init__(_answer, delay_s=delay_s)
        self.quiet_s = quiet_s
        self._cond = threading.Condition()
        self.started = 0
        self.finished = 0
        self.answer_checks = 0
        self.answer_chars = 0
        self.most_at_once = 0

    def _begin(self, conversations) -> None:
        with self._cond:
            self.started += 1
            self.most_at_once = max(self.most_at_once, self.started - self.finished)
            answers = [c[-1]["content"] for c in conversations if c[-1]["role"] == "assistant"]
            self.answer_checks += len(answers)
            self.answer_chars += sum(map(len, answers))

    def _end(self) -> None:
        with self._cond:
            self.finished += 1
            self._cond.notify_all()

    @property
    def idle(self) -> bool:
        with self._cond:
            return self.started == self.finished

    def wait_idle(self, timeout: float = 10.0) -> None:
        """Block until every check started so far has come back and none started for ``quiet_s``
        (``timeout``: a deadlock breaker).

        A check just handed to a worker thread starts only once that thread gets the GIL (a slow model
        gives it the time): the quiet spell waits for it, and a loaded machine gets a longer one by
        ``quiet_s``."""
        deadline = time.monotonic() + timeout
        while True:
            with self._cond:
                seen = self.started
            time.sleep(self.quiet_s)
            with self._cond:
                self._cond.wait_for(lambda: self.started == self.finished, max(0.0, deadline - time.monotonic()))
                if self.started == seen or time.monotonic() >= deadline:
                    return

    async def await_idle(self) -> None:
        """Async twin of `wait_idle` (checks handed to the loop as tasks start during the quiet spell)."""
        while True:
            seen = self.started
            await asyncio.sleep(self.quiet_s)
            while not self.idle:
                await asyncio.sleep(0.001)
            if self.started == seen:
                return

    def classify(self, conversations, *, timeout=None):
        self._begin(conversations)
        try:
            return super().classify(conversations, timeout=timeout)
        finally:
            self._end()

    async def aclassify(self, conversations, *, timeout=None):
        self._begin(conversations)
        try:
            return await super().aclassify(conversations, timeout=timeout)
        finally:
            self._end()


class SlowPromptJudge(CountingJudge):
    """The prompt's verdict comes back only after an answer check did (a slow prompt check beside a fast
    model): proof that the answer was judged while the prompt check ran. ``deadline_s`` breaks the wait
    when no answer check comes (the answer was not judged beside the prompt)."""

    def __init__(self, deadline_s: float = 3.0) -> None:
        super().__init__()
        self.deadline_s = deadline_s
        self.answer_done = threading.Event()
        self.prompt_done = threading.Event()
        self.answers_before_prompt_verdict = 0

    @staticmethod
    def _prompt(conversations) -> bool:
        return any(c[-1]["role"] == "user" for c in conversations)

    def _answered(self) -> None:
        if not self.prompt_done.is_set():
            self.answers_before_prompt_verdict += 1
        self.answer_done.set()

    def classify(self, conversations, *, timeout=None):
        if self._prompt(conversations):
            self.answer_done.wait(self.deadline_s)
            try:
                return super().classify(conversations, timeout=timeout)
            finally:
                self.prompt_done.set()
        try:
            return super().classify(conversations, timeout=timeout)
        finally:
            self._answered()

    async def aclassify(self, conversations, *, timeout=None):
        if self._prompt(conversations):
            await asyncio.to_thread(self.answer_done.wait, self.deadline_s)
            try:
                return await super().aclassify(conversations, timeout=timeout)
            finally:
                self.prompt_done.set()
        try:
            return await super().aclassify(conversations, timeout=timeout)
        finally:
            self._answered()


def phrase_oracle_stream_guard(read):
    """A guard with the demo-stream tokenizer and weights whose response heads are an oracle: every token from the
    one completing "mix ammonium" in ``read(decoded tokens so far)`` is unsafe. ``guard.fed``: the tokens fed."""
    from qwenguard.core import Guard, Policy, Risk
    from qwenguard.core.backends.stream_model import TokenVerdict
    from qwenguard.core.backends.transformers_stream import TransformersStream

    stream = TransformersStream.load("demo-stream", device="cpu")
    fed: list[int] = []

    def oracle(rows, spans, first_index):
        if first_index == 0:
            fed.clear()
        out = []
        for j, (token, start, end) in enumerate(spans):
            fed.append(token)
            bad = "mix ammonium" in read(stream.tokenizer.decode(fed))
            probs = {Risk.SAFE: float(not bad), Risk.CONTROVERSIAL: 0.0, Risk.UNSAFE: float(bad)}
            risk = Risk.UNSAFE if bad else Risk.SAFE
            out.append(TokenVerdict(token, risk, probs, "Violent" if bad else None, first_index + j, start, end))
        return out

    stream._token_verdicts = oracle
    guard = Guard.from_pretrained("demo", device="cpu", policy=Policy())
    guard.stream_backend = stream
    guard.fed = fed  # type: ignore[attr-defined]
    return guard


def fed_in_pieces(guard, prompt: str, text: str, piece: int) -> tuple[str, bool]:
    """``text`` fed to ``guard.stream(prompt)`` ``piece`` characters at a time: what the consumer received, and
    whether the stream was stopped."""
    shown = ""
    monitor = guard.stream(prompt)
    try:
        for i in range(0, len(text), piece):
            shown += monitor.feed(text[i : i + piece])
        shown += monitor.finish()
    except GuardViolation:
        return shown, True
    finally:
        monitor.close()
    return shown, False
