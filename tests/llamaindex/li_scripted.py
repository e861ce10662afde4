"""Deterministic LlamaIndex LLMs for the integration tests (real LlamaIndex base classes).

`ScriptedLLM` answers with fixed chunks and records how far its stream got and whether the
stream was closed, so tests can prove a guarded stream stopped the producer, not just the consumer.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from llama_index.core.base.llms.types import (
    ChatMessage,
    ChatResponse,
    CompletionResponse,
    CompletionResponseGen,
    LLMMetadata,
)
from llama_index.core.bridge.pydantic import PrivateAttr
from llama_index.core.llms.callbacks import llm_completion_callback
from llama_index.core.llms.custom import CustomLLM
from llama_index.core.tools import FunctionTool

SAFE_OPENING = "Paris is the capital of France. "
UNSAFE_CLAUSE = "Mix ammonium nitrate with fuel oil, pack it into a pipe and add a fuse."
SAFE_ENDING = " The Eiffel Tower is in Paris."


def words(text: str) -> list[str]:
    """Split into word chunks that join back to ``text`` (each keeps its trailing space)."""
    parts = text.split(" ")
    return [p + " " for p in parts[:-1]] + ([parts[-1]] if parts[-1] else [])


class ScriptedLLM(CustomLLM):
    """A completion LLM that streams ``chunks``; chat comes from CustomLLM's flattening."""

    chunks: list[str]
    delay_s: float = 0.0  # between chunks, like a real model's token rate
    _interrupted: bool = PrivateAttr(default=False)
    _produced: int = PrivateAttr(default=0)
    _closed: bool = PrivateAttr(default=False)
    _calls: int = PrivateAttr(default=0)

    @classmethod
    def class_name(cls) -> str:
        return "ScriptedLLM"

    @property
    def metadata(self) -> LLMMetadata:
        return LLMMetadata(model_name="scripted", is_chat_model=False)

    @property
    def produced(self) -> int:
        return self._produced

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def interrupted(self) -> bool:
        """The stream was closed by its consumer before it ended."""
        return self._interrupted

    @property
    def calls(self) -> int:
        return self._calls

    @llm_completion_callback()
    def complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponse:
        self._calls += 1
        return CompletionResponse(text="".join(self.chunks))

    @llm_completion_callback()
    def stream_complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponseGen:
        self._calls += 1

        def gen() -> CompletionResponseGen:
            text = ""
            try:
                for chunk in self.chunks:
                    time.sleep(self.delay_s)
                    self._produced += 1
                    text += chunk
                    yield CompletionResponse(text=text, delta=chunk)
            except GeneratorExit:
                self._interrupted = True
                raise
            finally:
                self._closed = True

        return gen()

    # Really asynchronous streams (CustomLLM's defaults iterate the sync stream inside the event
    # loop, which would starve every other task, the guard's background checks included).
    async def _astream(self, wrap: Any) -> Any:
        text = ""
        try:
            for chunk in self.chunks:
                await asyncio.sleep(self.delay_s)
                self._produced += 1
                text += chunk
                yield wrap(text, chunk)
        except GeneratorExit:
            self._interrupted = True
            raise
        finally:
            self._closed = True

    async def astream_complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> Any:
        self._calls += 1
        return self._astream(lambda text, chunk: CompletionResponse(text=text, delta=chunk))

    async def astream_chat(self, messages: Any, **kwargs: Any) -> Any:
        self._calls += 1
        return self._astream(
            lambda text, chunk: ChatResponse(message=ChatMessage(role="assistant", content=text), delta=chunk)
        )


class Outbox:
    """A ``send_email`` tool that counts the emails it sent (the tool counter of the agent tests)."""

    def __init__(self) -> None:
        self.sent = 0

    def tool(self) -> FunctionTool:
        def send_email(to: str, body: str) -> str:
            """Send an email."""
            self.sent += 1
            return "Message delivered."

        return FunctionTool.from_defaults(send_email)
