"""The Gen-window engine of the stream monitors: cut the streamed text into segments, build the bounded
window each is checked in, settle results in order. Used when the guard has no Stream model."""

from __future__ import annotations

import asyncio
import re
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

from ..errors import GuardTimeout, QwenGuardError
from ..verdict import Stage, Verdict

if TYPE_CHECKING:
    from .monitor_core import MonitorCore

# A sentence ends at terminal punctuation (and closing quotes/brackets) followed by whitespace, or
# at a newline. The whitespace must have arrived: "3.14" and "e.g." mid-stream are not ends.
_SENTENCE_END = re.compile(r"[.!?;。！？；…]+[\"'”’)\]]*(?=\s)|\n")


_window_pool: ThreadPoolExecutor | None = None
_window_pool_lock = threading.Lock()


def window_pool() -> ThreadPoolExecutor:
    """Shared workers for background window checks (the Gen backend batches concurrent calls)."""
    global _window_pool
    with _window_pool_lock:
        if _window_pool is None:
            _window_pool = ThreadPoolExecutor(max_workers=8, thread_name_prefix="qwenguard-window")
        return _window_pool


# ================================================================================================
# Gen-window fallback: segments, windows, in-order results. Shared by both monitors.
# ================================================================================================
class GenWindows:
    """Cuts the text into segments and builds the bounded window each segment is checked in."""

    def __init__(self, core: MonitorCore) -> None:
        self.core = core
        self.check_every, self.min_segment, self.context = core._window_opts
        self.unsubmitted = ""  # text after `submitted`
        self.submitted = 0  # chars handed to checks
        self.confirmed = 0  # chars whose windows all came back safe (contiguous from 0)
        self.tail = ""  # the last `context` chars before `submitted`
        self.timeout = core.policy.timeout_for(Stage.STREAM)

    def add(self, delta: str) -> list[tuple[int, int, list[dict[str, str]]]]:
        """Append text; return the (start, end, conversation) checks that are due now."""
        self.unsubmitted += delta
        due = []
        while (cut := self._cut()) > 0:
            due.append(self._take(cut))
        return due

    def rest(self) -> list[tuple[int, int, list[dict[str, str]]]]:
        """The final segment at finish (whitespace-only text needs no check)."""
        if not self.unsubmitted:
            return []
        if not self.unsubmitted.strip():
            self.submitted += len(self.unsubmitted)
            self.unsubmitted = ""
            return []
        return [self._take(len(self.unsubmitted))]

    def _cut(self) -> int:
        text = self.unsubmitted
        if len(text) < self.min_segment:
            return 0
        limit = min(len(text), self.check_every)
        end = 0
        for m in _SENTENCE_END.finditer(text, 0, limit + 1):
            if m.end() >= self.min_segment:
                end = m.end()
        if end:
            return end
        if len(text) < self.check_every:
            return 0
        space = text.rfind(" ", self.min_segment, self.check_every)
        return space if space > 0 else self.check_every

    def _take(self, cut: int) -> tuple[int, int, list[dict[str, str]]]:
        segment, self.unsubmitted = self.unsubmitted[:cut], self.unsubmitted[cut:]
        start = self.submitted
        self.submitted += cut
        window = self.tail + segment
        self.tail = window[-self.context :] if self.context else ""
        conversation = [*self.core.messages, {"role": "assistant", "content": window}]
        return start, start + cut, conversation

    def settle(self, start: int, end: int, outcome: Any) -> None:
        """One window's result, in order: advance `confirmed`, or flag / fail via the core."""
        core = self.core
        if isinstance(outcome, Verdict):
            if not outcome.is_safe:
                core._decide_flag(outcome, start)
            self.confirmed = end
        else:
            error = outcome if isinstance(outcome, BaseException) else QwenGuardError(str(outcome))
            core._fail(error, release=False)  # raises when failing closed; else the caller releases all

    def release(self) -> str:
        core = self.core
        if core.holdback == 0:
            return core._release_all()
        return core._release_to(self.confirmed)


def window_check(backend: Any, conversation: list[dict[str, str]], timeout: float | None) -> Any:
    try:
        return backend.classify([conversation], timeout=timeout)[0]
    except Exception as exc:  # noqa: BLE001 - any backend failure is the policy's on_error
        return exc


async def awindow_check(backend: Any, conversation: list[dict[str, str]], timeout: float | None) -> Any:
    try:
        if timeout is not None:
            return (await asyncio.wait_for(backend.aclassify([conversation], timeout=timeout), timeout))[0]
        return (await backend.aclassify([conversation], timeout=timeout))[0]
    except asyncio.TimeoutError:
        return GuardTimeout(f"stream window check took longer than {timeout}s")
    except Exception as exc:  # noqa: BLE001
        return exc
