"""Wire schemas of the server's HTTP API (published at ``/openapi.json``) and its error shape."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Annotated, Any, Literal

from fastapi.encoders import jsonable_encoder
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag, model_validator

from ..formats.conversations import render_tool_call
from ..policy import QUOTED_CHARS, quoted  # a client's value by 80 characters (a 1 MB ``model`` came back: rt65f)
from ..verdict import Stage
from .limits import DEFAULT_MAX_CONVERSATIONS

#: A request's lists stop validating at their first invalid item (``fail_fast``): a body of a million values
#: that are not messages is one error, not a million (each read out with the GIL held, and written into the 422).
_FAIL_FAST = Field(fail_fast=True)

#: The most validation errors a 422 lists (its message names the first, and how many there were).
MAX_ERROR_DETAILS = 20

#: The default number of conversations one /v1/moderate call may carry (``Limits.max_conversations``).
MAX_BATCH = DEFAULT_MAX_CONVERSATIONS

#: The longest error message the server sends (`error_text`): a message that quotes a client's value whole
#: (a policy's, a message's, written by the core) is cut there.
MAX_ERROR_MESSAGE_CHARS = 1000

#: The most alternatives a step's ``top_logprobs`` may ask for: OpenAI's bound for chat (vLLM's default
#: ``max_logprobs`` for both routes). The server knows at most three (the labels: docs/server.md).
MAX_TOP_LOGPROBS = 20


# -- wire schemas (published at /openapi.json) -------------------------------------------------
class _Judged(BaseModel):
    """A wire object whose fields are all judged or known: an unknown field with a value is refused
    (422, naming the field) instead of being dropped unjudged."""

    model_config = ConfigDict(extra="allow")

    @model_validator(mode="after")
    def _refuse_unjudged_fields(self) -> _Judged:
        for key, value in (self.model_extra or {}).items():
            # null or empty carries nothing (the OpenAI SDK echoes "refusal": null, "annotations": [] back)
            if not (value is None or (isinstance(value, (str, list, dict)) and not value)):
                raise ValueError(f"field {quoted(key)} is not judged by this server: remove it (or send null)")
        return self


class ChatContentPart(_Judged):
    type: Literal["text"]
    text: str


def _content_kind(value: Any) -> str:
    return "text" if isinstance(value, str) else "parts"


#: A string or a list of text parts; tagged so that an error names the part and field (``content.parts.0``).
ChatContent = Annotated[
    Annotated[str, Tag("text")] | Annotated[list[ChatContentPart], Tag("parts"), _FAIL_FAST],
    Discriminator(_content_kind),
]


class ToolFunction(_Judged):
    """What a tool call runs: judged as the core renders a tool call (`render_tool_call`)."""

    name: str
    arguments: str | dict[str, Any] | None = None


class ToolCall(_Judged):
    """One OpenAI tool call of an assistant turn. ``id`` and ``type`` are identifiers, not judged."""

    id: str | None = None
    type: Literal["function"] = "function"
    function: ToolFunction


class _Turn(_Judged):
    """What every message shape shares: the role, tool calls (assistant turns only) and what is judged."""

    role: Literal["system", "user", "assistant"]
    tool_calls: Annotated[list[ToolCall], _FAIL_FAST] | None = None

    @model_validator(mode="after")
    def _check_turn(self) -> _Turn:
        if self.tool_calls and self.role != "assistant":
            raise ValueError(f"only an assistant message may carry tool_calls, not a {self.role} message")
        if getattr(self, "content", None) is None and not self.tool_calls:
            raise ValueError("content is missing or null: only an assistant message with tool_calls may omit it")
        return self

    def text(self) -> str:
        content: str | list[ChatContentPart] | None = getattr(self, "content", None)
        if content is None:
            return ""
        return content if isinstance(content, str) else "".join(p.text for p in content)

    def judged(self, max_chars: int | None = None) -> dict[str, str]:
        """The turn as the guard reads it: its text, then each tool call as the assistant's action
        (``Tool call: name({...})``, one a line: `with_tool_calls`), so that what the tool would run is
        judged too. With ``max_chars``, no more tool calls are rendered once the content is longer: the
        turn is past the limit and refused (`Service.judged`), so thousands of calls cost no more."""
        text = self.text()
        lines = [text] if text else []
        size = len(text)  # of the content so far, exactly: rendering stops only once it is past the limit
        for call in self.tool_calls or ():
            if max_chars is not None and size > max_chars:
                break
            left = None if max_chars is None else max_chars - size
            line = render_tool_call(call.function.name, call.function.arguments, max_chars=left)
            size += len(line) + (1 if lines else 0)  # the line, and the newline before it unless it is the first
            lines.append(line)
        return {"role": self.role, "content": "\n".join(lines)}

    def judged_stages(self) -> tuple[Stage, ...]:
        """The stages this turn is decided at, when it is the last one: a tool call, and the assistant's
        text as a response when it has any; a plain turn's stage follows its role."""
        if self.tool_calls:
            return (Stage.TOOL_CALL, Stage.RESPONSE) if self.text() else (Stage.TOOL_CALL,)
        return (Stage.RESPONSE,) if self.role == "assistant" else (Stage.PROMPT,)


class ChatMessage(_Turn):
    """One OpenAI chat message: its text (a string or text parts) and its tool calls are judged; system
    messages are skipped. ``content`` may be null in an assistant turn with tool calls. Any other field
    with a value is refused (422)."""

    content: ChatContent | None = None


class ChatCompletionRequest(BaseModel):
    """The subset of the OpenAI chat-completions request a guard model uses; other fields are ignored."""

    model_config = ConfigDict(extra="allow")
    model: str | None = None
    messages: list[ChatMessage] = Field(min_length=1, fail_fast=True)
    temperature: float | None = None
    max_tokens: int | None = Field(default=None, ge=1)
    n: int = Field(default=1, ge=1, le=1)
    stream: bool = False
    logprobs: bool | None = None
    top_logprobs: int | None = Field(default=None, ge=0, le=MAX_TOP_LOGPROBS)

    @model_validator(mode="after")
    def _top_logprobs_need_logprobs(self) -> ChatCompletionRequest:
        # As OpenAI and vLLM refuse it: asked alternatives without logprobs would silently get none. Any value, 0
        # included, as docs/server.md says (rt69c F3).
        if self.top_logprobs is not None and not self.logprobs:
            raise ValueError("top_logprobs needs logprobs: true")
        return self


class CompletionRequest(BaseModel):
    """A raw completion: ``prompt`` must be a Qwen3Guard-Gen prompt as `render_prompt` writes it."""

    model_config = ConfigDict(extra="allow")
    model: str | None = None
    prompt: str
    temperature: float | None = None
    max_tokens: int | None = Field(default=None, ge=1)
    n: int = Field(default=1, ge=1, le=1)
    stream: bool = Field(default=False)
    #: How many alternatives each step lists (the legacy API's ``logprobs``); null: no logprobs.
    logprobs: int | None = Field(default=None, ge=0, le=MAX_TOP_LOGPROBS)


class Message(_Turn):
    """One message of a conversation to judge: its text and its tool calls (as for `ChatMessage`)."""

    content: str | None = None


class ModerationRequest(BaseModel):
    """Conversations to judge. The stage defaults per conversation: ``prompt`` when the last turn is the
    user's, ``response`` when it is the assistant's (``tool_call`` for its tool calls; assistant messages in a row at
    the end are one answer, decided at the stages of each: `service.default_stages`). ``stage`` (optional)
    holds each last turn to that stage's rules as well as its own, never instead. ``policy`` (optional, same fields as
    ``Policy.to_dict()``) can only make the server's Policy stricter (``Policy.tightened``): the
    operator's policy is pinned. Sizes are bounded by the server's limits (413 past them). Any other field is
    refused (422), not dropped: a misspelt ``policy`` would have left a client's stricter policy out unsaid."""

    model_config = ConfigDict(extra="forbid")
    conversations: list[Annotated[list[Message], _FAIL_FAST]] = Field(min_length=1, fail_fast=True)
    #: The served model's name, as the OpenAI-compatible routes take it (404 for another).
    model: str | None = None
    stage: Stage | None = None
    policy: dict[str, Any] | None = None


def client_error(error: str | None) -> str | None:
    """A decision's guard error as a client gets it: its type only. Its message stays on the server: it can hold the
    guard model's raw output or, behind a gateway, an upstream engine's internal address (rt52f F7)."""
    return None if error is None else error.split(":", 1)[0]


class DecisionModel(BaseModel):
    allowed: bool
    action: Literal["allow", "flag", "block"]
    stage: Stage
    reason: str
    error: str | None = None


class ModerationResult(BaseModel):
    """One conversation's verdict (``risk`` is null and ``error`` set when the guard could not answer; both null
    when it was not judged: every stage it is decided at is disabled, ``decision.reason`` ``"disabled"``)."""

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


def error_text(message: str) -> str:
    """An error message as it is sent: at most `MAX_ERROR_MESSAGE_CHARS` characters."""
    return message if len(message) <= MAX_ERROR_MESSAGE_CHARS else message[:MAX_ERROR_MESSAGE_CHARS] + "…"


def error_json(status: int, message: str, kind: str, headers: Mapping[str, str] | None = None) -> JSONResponse:
    return JSONResponse(
        {"error": {"message": error_text(message), "type": kind, "code": status}}, status, headers=dict(headers or {})
    )


def _loc_part(part: Any) -> Any:
    """One part of an error's location: an index as it is, a name cut as `quoted` cuts a client's value."""
    if isinstance(part, str) and len(part) > QUOTED_CHARS:
        return part[:QUOTED_CHARS] + f"... ({len(part):,} characters)"
    return part


def validation_error_json(errors: Sequence[Mapping[str, Any]]) -> JSONResponse:
    """422 for a body that is not valid (FastAPI's `RequestValidationError`, or the gate's own parse of a
    large body: `gate.parse_json_body`). loc/msg/type only: "input" would copy request text into responses
    and error trackers."""
    details = [
        # A loc part may be the client's own key (an unknown field's): quoted as any client value is (rt65n F2).
        {
            "loc": [_loc_part(p) for p in e.get("loc", ())],
            "msg": error_text(e.get("msg", "")),
            "type": e.get("type", ""),
        }
        for e in errors[:MAX_ERROR_DETAILS]  # a few: the list can be as long as the body allows
    ]
    first = details[0] if details else {"loc": [], "msg": "invalid request"}
    message = f"invalid request: {'.'.join(str(p) for p in first['loc'])}: {first['msg']}"
    if len(errors) > 1:
        message += f" ({len(errors)} errors)"
    body = {
        "error": {
            "message": error_text(message),
            "type": "invalid_request_error",
            "code": 422,
            "details": jsonable_encoder(details),
        }
    }
    return JSONResponse(body, 422)
