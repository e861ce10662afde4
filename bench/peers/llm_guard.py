"""LLM Guard: a custom output scanner (the shared judge) driven the way LLM Guard's streaming example
does it. Own venv:

    /work/peer-venvs/llm_guard/bin/python bench/peers/llm_guard.py [--quick] [--json]

LLM Guard has no streaming API; its example streams from the OpenAI client, and once the output is
longer than 30 characters re-scans the *whole* accumulated output with ``scan_output(...,
fail_fast=True)`` (in a thread) on every chunk, shows the scanned output, and breaks out of the loop
when a scanner says it is invalid. Two rows:

- ``example pattern``: as the example does it: show, then check validity, then ``break`` (the
  OpenAI stream object is left to the garbage collector);
- ``scan-then-show``: the stricter order a careful user would write: show only what passed, and close
  the stream on a block.

llm-guard pins transformers 4.51.3, on which the demo guard does not load; setup.sh installs
``transformers>=4.55`` over it (pip reports the conflict; the custom scanner does not need LLM Guard's
own models).
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import Any

# This file is named like the package it drives: keep this directory off the import path so that
# ``import llm_guard`` finds the package, not this script.
_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]
sys.path.insert(0, str(_HERE.parent))

import streamkit as sk  # noqa: E402

MIN_OUTPUT_LENGTH = 30  # the example's threshold


class JudgeScanner:
    """An LLM Guard output scanner (``scan(prompt, output) -> (sanitized, is_valid, risk)``)."""

    def __init__(self, judge: Any) -> None:
        self.judge = judge

    def scan(self, prompt: str, output: str) -> tuple[str, bool, float]:
        unsafe = self.judge.judge(output)
        return output, not unsafe, 1.0 if unsafe else 0.0


async def _deltas(url: str):
    from openai import AsyncOpenAI

    client = AsyncOpenAI(base_url=url, api_key="scripted", max_retries=0)
    stream = await client.chat.completions.create(
        model="scripted", messages=[{"role": "user", "content": sk.PROMPT}], stream=True
    )
    return client, stream


def variant(strict: bool) -> sk.Build:
    def build(url: str, judge: Any):
        from llm_guard import scan_output
        from llm_guard.util import configure_logger

        configure_logger(log_level="ERROR", stream=sys.stderr)  # it logs every scan to stdout by default

        scanners = [JudgeScanner(judge)]

        def consume(c: sk.Consumer) -> None:
            async def main() -> None:
                client, stream = await _deltas(url)
                output, shown = "", 0
                try:
                    async for chunk in stream:
                        output += (chunk.choices[0].delta.content or "") if chunk.choices else ""
                        if len(output) <= MIN_OUTPUT_LENGTH:
                            continue
                        sanitized, valid, _score = await asyncio.to_thread(
                            scan_output, scanners, sk.PROMPT, output, True
                        )
                        blocked = not all(valid.values())
                        if strict and blocked:
                            c.stop("invalid output")
                            await stream.close()
                            return
                        c.receive(sanitized[shown:])  # the example prints the (re-)scanned output
                        shown = len(sanitized)
                        output = sanitized
                        if blocked:
                            c.stop("invalid output")
                            break
                    if strict and shown < len(output):
                        c.receive(output[shown:])
                finally:
                    if strict:
                        await client.close()

            asyncio.run(main())

        return consume

    return build


def baseline(url: str):
    def consume(c: sk.Consumer) -> None:
        async def main() -> None:
            client, stream = await _deltas(url)
            async for chunk in stream:
                c.receive((chunk.choices[0].delta.content or "") if chunk.choices else "")
            await client.close()

        asyncio.run(main())

    return consume


PATHS = [
    sk.PeerPath(
        "llm-guard example pattern",
        variant(False),
        baseline,
        note="re-scans the whole output per chunk past 30 chars; shows, then breaks",
    ),
    sk.PeerPath("llm-guard scan-then-show", variant(True), baseline, note="same scans; shows only what passed"),
]

if __name__ == "__main__":
    sys.exit(sk.run_peer("llm-guard", PATHS))
