"""LangChain v1 agent middleware: the built-in `PIIMiddleware` with the shared judge as its detector,
the one LangChain middleware that acts while an answer streams. Own venv:

    /work/peer-venvs/langchain_pii/bin/python bench/peers/langchain_pii.py [--quick] [--json]

``PIIMiddleware("harm", strategy="block", detector=judge, apply_to_input=False, apply_to_output=True)``
in ``create_agent`` with `ChatOpenAI` pointed at the scripted server. The detector returns one match
spanning the text when the judge flags it; "block" raises `PIIDetectionError`.

Two ways to consume the stream:

- ``stream_mode="messages"``: the common one. The middleware's held-tail transformer does not act
  here; the check runs after the model (``after_model``) on the whole message.
- ``stream_events(version="v3")``: the stream protocol where the middleware holds back a 128-character
  tail and runs the detector on held tail + delta for every delta. A consumer shows text deltas and,
  at ``content-block-finish``, whatever of the block it has not shown yet (the withheld tail).
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import streamkit as sk  # noqa: E402

warnings.filterwarnings("ignore", message=".*v3 streaming protocol.*")


def _agent(url: str, judge: Any) -> Any:
    from langchain.agents import create_agent
    from langchain.agents.middleware import PIIMiddleware
    from langchain_openai import ChatOpenAI

    middleware = []
    if judge is not None:

        def detector(text: str) -> list[dict[str, Any]]:
            if text and judge.judge(text):
                return [{"type": "harm", "value": text, "start": 0, "end": len(text)}]
            return []

        middleware = [
            PIIMiddleware("harm", strategy="block", detector=detector, apply_to_input=False, apply_to_output=True)
        ]
    model = ChatOpenAI(base_url=url, api_key="scripted", model="scripted", max_retries=0, streaming=True)
    return create_agent(model=model, tools=[], middleware=middleware)


def _stop(exc: BaseException) -> None:
    from langchain.agents.middleware import PIIDetectionError

    seen = exc
    while seen is not None:
        if isinstance(seen, PIIDetectionError):
            raise sk.Stopped("PIIDetectionError") from exc
        seen = seen.__cause__ or seen.__context__
    raise exc


def messages_mode(url: str, judge: Any):
    agent = _agent(url, judge)

    def consume(c: sk.Consumer) -> None:
        try:
            for message, _meta in agent.stream(
                {"messages": [{"role": "user", "content": sk.PROMPT}]}, stream_mode="messages"
            ):
                if type(message).__name__ == "AIMessageChunk" and isinstance(message.content, str):
                    c.receive(message.content)
        except Exception as exc:  # noqa: BLE001
            _stop(exc)

    return consume


def v3_mode(url: str, judge: Any):
    agent = _agent(url, judge)

    def consume(c: sk.Consumer) -> None:
        shown: dict[int, int] = {}
        try:
            run = agent.stream_events({"messages": [{"role": "user", "content": sk.PROMPT}]}, version="v3")
            for event in run:
                if event.get("method") != "messages":
                    continue
                payload = event["params"]["data"][0]
                if not isinstance(payload, dict):
                    continue
                index = payload.get("index", 0)
                if payload.get("event") == "content-block-delta":
                    delta = payload.get("delta") or {}
                    if delta.get("type") == "text-delta" and delta.get("text"):
                        c.receive(delta["text"])
                        shown[index] = shown.get(index, 0) + len(delta["text"])
                elif payload.get("event") == "content-block-finish":
                    content = payload.get("content") or {}
                    text = content.get("text") if content.get("type") == "text" else None
                    if isinstance(text, str) and len(text) > shown.get(index, 0):
                        c.receive(text[shown.get(index, 0) :])
                        shown[index] = len(text)
        except Exception as exc:  # noqa: BLE001
            _stop(exc)

    return consume


PATHS = [
    sk.PeerPath("langchain PIIMiddleware stream_mode=messages", messages_mode, lambda url: messages_mode(url, None)),
    sk.PeerPath(
        "langchain PIIMiddleware stream_events v3",
        v3_mode,
        lambda url: v3_mode(url, None),
        note="128-char held tail, detector per delta",
    ),
]

if __name__ == "__main__":
    sys.exit(sk.run_peer("langchain", PATHS))
