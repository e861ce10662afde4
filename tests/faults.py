"""Fault-injecting Gen backends for tests (mocks are for faults only; the happy path uses the demo guard)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence

from qwenguard.core.errors import GuardTimeout, VerdictParseError
from qwenguard.core.formats.prompts import moderation_mode, parse_verdict


class ScriptedBackend:
    """Answers each conversation with ``answer(conversation) -> raw text``, optionally slow or failing."""

    def __init__(
        self,
        answer: Callable[[Sequence[dict]], str],
        *,
        delay_s: float = 0.0,
        fail: Exception | None = None,
        name: str = "scripted",
    ) -> None:
        self.answer = answer
        self.delay_s = delay_s
        self.fail = fail
        self.name = name
        self.calls: list[list] = []

    def _one(self, conv):
        raw = self.answer(conv)
        try:
            return parse_verdict(raw, mode=moderation_mode(conv), model=self.name)
        except VerdictParseError as exc:
            return exc

    def classify(self, conversations, *, timeout=None):
        self.calls.append(list(conversations))
        if self.fail is not None:
            raise self.fail
        if timeout is not None and self.delay_s > timeout:
            time.sleep(timeout)
            raise GuardTimeout(f"no answer within {timeout} s")
        time.sleep(self.delay_s)
        return [self._one(c) for c in conversations]

    async def aclassify(self, conversations, *, timeout=None):
        self.calls.append(list(conversations))
        if self.fail is not None:
            raise self.fail

        async def work():
            await asyncio.sleep(self.delay_s)
            return [self._one(c) for c in conversations]

        try:
            return await asyncio.wait_for(work(), timeout)
        except asyncio.TimeoutError:
            raise GuardTimeout(f"no answer within {timeout} s") from None

    def close(self):
        pass


class DelayedBackend:
    """A real backend with a fixed delay per call, logging "check done" when each check ends.

    Makes races deterministic (e.g. parallel input screening: the LLM starts before the verdict)."""

    def __init__(self, inner, delay_s: float, log: list) -> None:
        self.inner, self.delay_s, self.log, self.name = inner, delay_s, log, inner.name

    def classify(self, conversations, *, timeout=None):
        time.sleep(self.delay_s)
        out = self.inner.classify(conversations, timeout=timeout)
        self.log.append("check done")
        return out

    async def aclassify(self, conversations, *, timeout=None):
        await asyncio.sleep(self.delay_s)
        out = await self.inner.aclassify(conversations, timeout=timeout)
        self.log.append("check done")
        return out

    def close(self) -> None:
        pass


def keyword_verdict(conv) -> str:
    """Unsafe (Violent) when the judged turn says "ammonium", else safe."""
    last = conv[-1]
    unsafe = "ammonium" in last["content"]
    verdict = "Safety: Unsafe\nCategories: Violent" if unsafe else "Safety: Safe\nCategories: None"
    return verdict + ("\nRefusal: No" if last["role"] == "assistant" else "")


def phrase_verdict(conv, phrase: str = "mix ammonium") -> str:
    """Unsafe (Violent) when the judged turn says ``phrase`` (case and runs of whitespace aside), else safe: "Mix"
    alone is safe, as for a judge that needs two words of a clause."""
    last = conv[-1]
    unsafe = phrase in " ".join(str(last["content"]).lower().split())
    verdict = "Safety: Unsafe\nCategories: Violent" if unsafe else "Safety: Safe\nCategories: None"
    return verdict + ("\nRefusal: No" if last["role"] == "assistant" else "")


class PoisonedJudge(ScriptedBackend):
    """A keyword judge (`keyword_verdict`) for which any call holding the poison ("Zanzibar") fails: ``"raise"`` (the backend crashes), ``"slow"`` (the call outlasts
    its deadline), or ``"short"`` (one outcome fewer than conversations)."""

    def __init__(self, mode: str) -> None:
        super().__init__(keyword_verdict, name="kw")
        self.mode = mode

    def _poisoned(self, conversations) -> bool:
        return any("Zanzibar" in m["content"] for c in conversations for m in c)

    def classify(self, conversations, *, timeout=None):
        if not self._poisoned(conversations):
            return super().classify(conversations, timeout=timeout)
        self.calls.append(list(conversations))
        if self.mode == "raise":
            raise RuntimeError("CUDA out of memory")
        if self.mode == "slow":
            time.sleep(timeout)
            raise GuardTimeout(f"no answer within {timeout} s")
        return [self._one(c) for c in conversations][:-1]

    async def aclassify(self, conversations, *, timeout=None):
        if not self._poisoned(conversations):
            return await super().aclassify(conversations, timeout=timeout)
        self.calls.append(list(conversations))
        if self.mode == "raise":
            raise RuntimeError("CUDA out of memory")
        if self.mode == "slow":
            await asyncio.sleep(timeout)
            raise GuardTimeout(f"no answer within {timeout} s")
        return [self._one(c) for c in conversations][:-1]


class FailingStream:
    """A real Stream backend whose sessions fail at ``where`` ("open", "feed" or "finish")."""

    def __init__(self, real, where: str) -> None:
        self.real, self.where, self.name = real, where, "failing-stream"

    def open_session(self, messages, **kw):
        if self.where == "open":
            raise RuntimeError("CUDA error: device lost")
        session = self.real.open_session(messages, **kw)

        def boom(*_a, **_kw):
            raise RuntimeError("CUDA error: device lost")

        async def aboom(*_a, **_kw):
            boom()

        if self.where == "feed":
            session.feed_text, session.afeed_text = boom, aboom
        else:
            session.finish, session.afinish = boom, aboom
        return session

    def close(self) -> None:
        pass
