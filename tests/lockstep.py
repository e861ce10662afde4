"""A core stream monitor driven in lock step: each window's verdict is back before the next delta is fed, so a
test reads what the engine releases by its rules alone, not by timing (the rt54a/rt54d window tests)."""

from __future__ import annotations

import asyncio
import re
from concurrent.futures import wait
from typing import Any

from qwenguard.core import Guard, GuardViolation, Policy


def words(text: str) -> list[str]:
    """``text`` as word deltas, each with the whitespace before it."""
    return re.findall(r"\s*\S+", text)


def monitor_run(judge: Any, deltas: list[str], unit: str = "sentence", **options: Any) -> tuple[str, bool]:
    """(released, stopped): the core StreamMonitor, each window back before the next delta."""
    stopped = False
    with Guard(judge, Policy.strict()).stream("Q?", screen_prompt=False, release_unit=unit, **options) as m:
        try:
            for d in deltas:
                m.feed(d)
                wait([f for _, _, f in m._pending])
                m.release_judged()
            m.finish()
        except GuardViolation:
            stopped = True
        return m.released, stopped


async def amonitor_run(judge: Any, deltas: list[str], unit: str = "sentence") -> tuple[str, bool]:
    """The async twin of `monitor_run`."""
    stopped = False
    async with Guard(judge, Policy.strict()).astream("Q?", screen_prompt=False, release_unit=unit) as m:
        try:
            for d in deltas:
                await m.afeed(d)
                tasks = {t for _, _, t in m._pending}
                if tasks:
                    await asyncio.wait(tasks)
                await m.arelease_judged()
            await m.afinish()
        except GuardViolation:
            stopped = True
        return m.released, stopped


def run(mode: str, judge: Any, deltas: list[str], unit: str = "sentence") -> tuple[str, bool]:
    """`monitor_run` (``mode="sync"``) or `amonitor_run`."""
    if mode == "sync":
        return monitor_run(judge, deltas, unit)
    return asyncio.run(amonitor_run(judge, deltas, unit))
