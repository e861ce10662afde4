"""Wire schemas of the server's HTTP API (published at ``/openapi.json``) and its error shape."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from ..verdict import Stage
from .limits import DEFAULT_MAX_CONVERSATIONS

#: The default number of conversations one /v1/moderate call may carry (``Limits.max_conversations``).
MAX_BATCH = DEFAULT_MAX_CONVERSATIONS


# -- wire schemas (published at /openapi.json) -------------------------------------------------
class ChatContentPart(BaseModel):
    model_config = ConfigDict(extra="allow")
    type: Literal["text"]
    text: str


class ChatMessage(BaseModel):
    """One OpenAI chat message. Only text content is moderated; system messages are skipped."""

    model_config = ConfigDict(extra="allow")
    role: Literal["system", "user", "assistant"]
    content: str | list[ChatContentPart]

    def text(self) -> str:
        return self.content if isinstance(self.content, str) else "".join(p.text for p in self.content)


class ChatCompletionRequest(BaseModel):
    """The subset of the OpenAI chat-completions request a guard model uses; other fields are ignored."""

    model_config = ConfigDict(extra="allow")
    model: str | None = None
    messages: list[ChatMessage] = Field(min_length=1)
    temperature: float | None = None
    max_tokens: int | None = Field(default=None, ge=1)
    n: int = Field(default=1, ge=1, le=1)
    stream: bool = False


class CompletionRequest(BaseModel):
    """A raw completion: ``prompt`` must be a Qwen3Guard-Gen prompt as `render_prompt` writes it."""

    model_config = ConfigDict(extra="allow")
    model: str | None = None
    prompt: str
    temperature: float | None = None
    max_tokens: int | None = Field(default=None, ge=1)
    n: int = Field(default=1, ge=1, le=1)
    stream: bool = Field(default=False)


class Message(BaseModel):
    role: Literal["system", "user", "assistant"]
    content: str


class ModerationRequest(BaseModel):
    """Conversations to judge. The stage defaults per conversation: ``prompt`` when the last turn is the
    user's, ``response`` when it is the assistant's. ``policy`` (optional, same fields as
    ``Policy.to_dict()``) can only make the server's Policy stricter (``Policy.tightened``): the
    operator's policy is pinned. Sizes are bounded by the server's limits (413 past them)."""

    conversations: list[list[Message]] = Field(min_length=1)
    stage: Stage | None = None
    policy: dict[str, Any] | None = None


class DecisionModel(BaseModel):
    allowed: bool
    action: Literal["allow", "flag", "block"]
    stage: Stage
    reason: str
    error: str | None = None


class ModerationResult(BaseModel):
    """One conversation's verdict (``risk`` is null and ``error`` set when the guard could not answer)."""

    risk: Literal["safe", "controversial", "unsafe"] | None
    categories: list[str]
    refusal: bool | None
    latency_ms: float
    model: str
    probs: dict[str, float] | None = None
    cached: bool = False
    error: str | None = None
    decision: DecisionModel


class ModerationResponse(BaseModel):
    model: str
    results: list[ModerationResult]


class ErrorBody(BaseModel):
    message: str
    type: str
    code: int


class ErrorResponse(BaseModel):
    error: ErrorBody


# -- helpers ------------------------------------------------------------------------------------
class ApiError(Exception):
    """An error answered as ``{"error": {"message", "type", "code"}}`` (the OpenAI error shape)."""

    def __init__(self, status: int, message: str, kind: str, headers: Mapping[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.kind, self.headers = status, message, kind, dict(headers or {})


def error_json(status: int, message: str, kind: str, headers: Mapping[str, str] | None = None) -> JSONResponse:
    return JSONResponse(
        {"error": {"message": message, "type": kind, "code": status}}, status, headers=dict(headers or {})
    )
