"""NeMo Guardrails: a streaming output rail whose action is the shared judge. Run in its own venv:

    /work/peer-venvs/nemo/bin/python bench/peers/nemo.py [--quick] [--json]

The rail is a Colang 1.0 flow calling a registered action that returns ``RailOutcome.block()`` when
the judge flags the chunk NeMo hands it (``context["bot_message"]``: the last ``context_size`` tokens
plus the new ``chunk_size`` tokens). ``rails.output.streaming`` is on, with the chunk_size /
context_size / stream_first variants below; two of them also run the judge on the user's message as
an input rail (``+input rail``), like for like with qwenguard's paths that screen the prompt first. A
block arrives as a JSON error string in the stream; the consumer treats it as the stop and does not
show it. The LLM is NeMo's ``openai`` engine pointed at the scripted server.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import streamkit as sk  # noqa: E402

logging.getLogger("nemoguardrails").setLevel(logging.CRITICAL)

COLANG = """
define bot refuse to respond
  "I'm sorry, I can't respond to that."

define flow judge output
  $outcome = execute bench_judge_output
  if $outcome.is_blocked
    bot refuse to respond
    stop

define flow judge input
  $outcome = execute bench_judge_input
  if $outcome.is_blocked
    bot refuse to respond
    stop
"""


def _yaml(url: str, streaming: tuple[int, int, bool] | None, check_input: bool = False) -> str:
    model = f"""
models:
  - type: main
    engine: openai
    model: scripted
    parameters:
      base_url: {url}
      api_key: scripted
      max_retries: 0
"""
    if streaming is None:
        return model
    chunk, context, first = streaming
    inputs = "\n  input:\n    flows:\n      - judge input" if check_input else ""
    return (
        model
        + f"""
rails:{inputs}
  output:
    flows:
      - judge output
    streaming:
      enabled: true
      chunk_size: {chunk}
      context_size: {context}
      stream_first: {str(first).lower()}
"""
    )


def _rails(url: str, streaming: tuple[int, int, bool] | None, judge: Any, check_input: bool = False) -> Any:
    from nemoguardrails import LLMRails, RailsConfig
    from nemoguardrails.actions.rail_outcome import RailOutcome

    config = RailsConfig.from_content(
        colang_content=COLANG if streaming else None, yaml_content=_yaml(url, streaming, check_input)
    )
    rails = LLMRails(config)
    if streaming is not None:

        async def bench_judge_output(context: dict | None = None, **_: Any) -> Any:
            text = (context or {}).get("bot_message") or ""
            return RailOutcome.block(reason="judge") if await judge.ajudge(text) else RailOutcome.allow()

        rails.register_action(bench_judge_output, name="bench_judge_output")

        async def bench_judge_input(context: dict | None = None, **_: Any) -> Any:
            # The same judge on the user's message, as qwenguard's monitors screen the prompt first.
            text = (context or {}).get("user_message") or ""
            return RailOutcome.block(reason="judge") if await judge.ajudge(text) else RailOutcome.allow()

        rails.register_action(bench_judge_input, name="bench_judge_input")
    return rails


def _consume(rails: Any):
    def consume(c: sk.Consumer) -> None:
        async def main() -> None:
            async for chunk in rails.stream_async(messages=[{"role": "user", "content": sk.PROMPT}]):
                if isinstance(chunk, str) and chunk.startswith('{"error"'):
                    try:
                        error = json.loads(chunk)["error"]
                    except (ValueError, KeyError, TypeError):
                        c.receive(chunk)
                        continue
                    c.stop(error.get("code") or error.get("type") or "error")
                    continue
                c.receive(chunk)

        asyncio.run(main())

    return consume


def variant(chunk: int, context: int, first: bool, check_input: bool = False) -> sk.Build:
    def build(url: str, judge: Any):
        return _consume(_rails(url, (chunk, context, first), judge, check_input))

    return build


def baseline(url: str):
    return _consume(_rails(url, None, None))


def _path(chunk: int, context: int, first: bool, note: str = "", check_input: bool = False) -> sk.PeerPath:
    name = f"nemo {chunk}/{context} stream_first={first}" + (" +input rail" if check_input else "")
    return sk.PeerPath(name, variant(chunk, context, first, check_input), baseline, note=note)


PATHS = [
    _path(200, 50, True, "default streaming config"),
    _path(200, 50, False),
    _path(20, 5, False),
    _path(5, 2, False),
    _path(5, 2, True),
    # Like for like with the integrations that screen the prompt before the model (qwenguard's monitors,
    # GuardMiddleware, GuardedLLM by default): the same judge as an input rail.
    _path(5, 2, False, "input rail: the judge on the prompt first", check_input=True),
    _path(200, 50, True, "default streaming config + input rail", check_input=True),
]

if __name__ == "__main__":
    sys.exit(sk.run_peer("nemo", PATHS))
