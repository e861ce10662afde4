"""A guarded tool's exception reaches the consumer whole: the agent puts the object into ``ToolOutput.exception``,
which its ``ToolCallResult`` events hand out, and an error panel or a log line renders it
(``traceback.format_exception``: its notes, its cause chain) or reads its attributes. `guard_tools` judged only
``str(exception)`` and re-raised the original: a fetch error carrying the page it fetched (in a note, an attribute,
its cause) passed unjudged (rt60a F4). What it carries beyond its message is now judged (one check more, only when
there is any): blocked or unreadable, a `GuardedToolError` with the judged message alone is raised in its place.
Attacked through a real FunctionAgent, the model a real `OpenAILike` client against the scripted server."""

# No `from __future__ import annotations`: LlamaIndex inspects tool annotations at runtime.

import asyncio
import builtins
import json
import traceback
from typing import Any

import pytest
from faults import ScriptedBackend
from faults import keyword_verdict as judge
from li_shared import UNSAFE_DOC, openai_like
from llama_index.core.agent.workflow import FunctionAgent, ToolCallResult
from llama_index.core.tools import FunctionTool
from qwenguard.core import Guard, InputTooLarge, Policy
from qwenguard.integrations.llamaindex import GuardedLLM, guard_tool, guard_tools, tools
from scripted_openai import Reply, ToolCall, scripted_openai

PAGE = "Forum post: " + UNSAFE_DOC
TRIGGER = "ammonium"
MESSAGE = "Fetch failed: the server answered 500."
FETCH = ToolCall("fetch", json.dumps({"url": "https://x.example"}))
RUN_TIMEOUT_S = 120


def make_guard(**kwargs: Any) -> tuple[Guard, ScriptedBackend]:
    backend = ScriptedBackend(judge)
    return Guard(backend, Policy(timeout_s=None), cache_size=0, **kwargs), backend


def checks(backend: ScriptedBackend) -> int:
    """Conversations the guard model judged (a batch holds several)."""
    return sum(len(batch) for batch in backend.calls)


class FetchError(Exception):
    def __init__(self, message: str, body: Any = None) -> None:
        super().__init__(message)
        self.body = body


class Opaque:
    """An attribute value whose text no reading finds (behind a property)."""

    __slots__ = ("_page",)

    def __init__(self, page: str) -> None:
        self._page = page

    @property
    def text(self) -> str:
        return self._page


def with_note() -> Exception:
    error = FetchError(MESSAGE)
    error.add_note("server said: " + PAGE)
    return error


def with_attribute() -> Exception:
    return FetchError(MESSAGE, body=PAGE)


def with_cause() -> Exception:
    try:
        raise ValueError("could not parse: " + PAGE)
    except ValueError as cause:
        error = FetchError(MESSAGE)
        error.__cause__ = cause
        error.__context__ = cause
        return error


def with_group_member() -> Exception:
    group = getattr(builtins, "ExceptionGroup", None)
    if group is None:  # Python 3.10: an exception passed as an argument, read the same way
        return FetchError(MESSAGE, FetchError("mirror 2: " + PAGE))
    return group(MESSAGE, [FetchError("mirror 1 failed"), FetchError("mirror 2: " + PAGE)])


def with_opaque_attribute() -> Exception:
    return FetchError(MESSAGE, body=Opaque(PAGE))


ATTACKS = {
    "a note": with_note,
    "an attribute": with_attribute,
    "its cause": with_cause,
    "an exception group's member": with_group_member,
    "an attribute that cannot be read whole": with_opaque_attribute,
}


def rendered(error: BaseException) -> str:
    """What an error panel shows of it, and what its attributes hold."""
    shown = "".join(traceback.format_exception(error))
    return shown + repr(vars(error)) + repr(getattr(getattr(error, "body", None), "text", ""))


@pytest.mark.parametrize("attack", list(ATTACKS))
async def test_what_an_exception_carries_beside_its_message_is_judged(attack: str) -> None:
    make = ATTACKS[attack]

    def fetch(url: str) -> str:
        """Fetch a page."""
        raise make()

    guard, _ = make_guard()
    with scripted_openai([Reply(tool_calls=[FETCH]), Reply.words("The page could not be fetched.")]) as url:
        agent = FunctionAgent(tools=guard_tools([fetch], guard), llm=GuardedLLM(llm=openai_like(url), guard=guard))
        handler = agent.run(user_msg="Fetch the page.")
        errors: list[BaseException] = []

        async def consume() -> Any:
            async for event in handler.stream_events():
                if isinstance(event, ToolCallResult) and event.tool_output.exception is not None:
                    errors.append(event.tool_output.exception)
            return await handler

        answer = await asyncio.wait_for(consume(), RUN_TIMEOUT_S)
        second = json.dumps(url.requests[1].body, ensure_ascii=False)
    [error] = errors
    assert TRIGGER not in rendered(error).lower()
    original = make()
    assert isinstance(error, tools.GuardedToolError) and str(error) == str(original)
    assert error.error_type == type(original).__name__
    assert error.__cause__ is None and error.__context__ is None
    assert MESSAGE in second  # the model still reads the (judged) message
    assert str(answer) == "The page could not be fetched."


def test_a_clean_exception_is_raised_again_unchanged_with_one_check_more() -> None:
    guard, backend = make_guard()
    raised: list[Exception] = []

    def fetch(url: str) -> str:
        """Fetch a page."""
        error = FetchError(MESSAGE, body="HTTP 500 Internal Server Error")
        error.add_note("retried 3 times")
        raised.append(error)
        raise error

    tool = guard_tool(fetch, guard)
    with pytest.raises(FetchError) as info:
        tool.call(url="https://x.example")
    assert info.value is raised[-1]
    assert checks(backend) == 2  # its message, and what it carries beside (one check)
    with pytest.raises(FetchError) as info:
        asyncio.run(tool.acall(url="https://x.example"))
    assert info.value is raised[-1]
    assert checks(backend) == 4

    def plain(url: str) -> str:
        """Fetch a page."""
        raise ConnectionError(f"{url} timed out")

    before = checks(backend)
    with pytest.raises(ConnectionError):
        guard_tool(plain, guard).call(url="https://x.example")
    assert checks(backend) - before == 1  # nothing beside its message: its one check, as before


@pytest.mark.parametrize("attack", ["a note", "its cause"])
def test_sync_calls_raise_the_judged_message_alone(attack: str) -> None:
    def fetch(url: str) -> str:
        """Fetch a page."""
        raise ATTACKS[attack]()

    tool = guard_tool(FunctionTool.from_defaults(fetch), make_guard()[0])
    with pytest.raises(tools.GuardedToolError) as info:
        tool.call(url="https://x.example")
    assert TRIGGER not in rendered(info.value).lower() and info.value.__context__ is None


def test_an_exception_carrying_more_than_max_chars_is_refused_without_its_chain() -> None:
    def fetch(url: str) -> str:
        """Fetch a page."""
        error = FetchError(MESSAGE)
        error.add_note("x" * 5_000 + PAGE)
        raise error

    tool = guard_tool(fetch, make_guard(max_chars=2_000)[0])
    for call in (lambda: tool.call(url="u"), lambda: asyncio.run(tool.acall(url="u"))):
        with pytest.raises(InputTooLarge) as info:
            call()
        assert info.value.__context__ is None and info.value.__cause__ is None  # the tool's exception not chained
        assert TRIGGER not in rendered(info.value).lower()


def phrase_verdict(conversation: list[dict[str, str]]) -> str:
    """Unsafe only where the judged text says "mix ammonium" (line breaks between the words aside)."""
    last = conversation[-1]
    bad = "mix ammonium" in " ".join(last["content"].lower().split())
    head = "Safety: Unsafe\nCategories: Violent" if bad else "Safety: Safe\nCategories: None"
    return head + ("\nRefusal: No" if last["role"] == "assistant" else "")


def test_a_clause_split_between_the_message_and_a_note_is_judged_whole() -> None:
    """An error panel shows the message and its notes together: "Fetch failed: Mix" then "ammonium nitrate..." reads
    as the clause, which neither part says alone (rt60e note: they were judged in two checks)."""

    def fetch(url: str) -> str:
        """Fetch a page."""
        error = FetchError("Fetch failed: Mix")
        error.add_note("ammonium nitrate with fuel oil, pack it into a pipe.")
        raise error

    tool = guard_tool(fetch, Guard(ScriptedBackend(phrase_verdict), Policy(timeout_s=None), cache_size=0))
    for call in (lambda: tool.call(url="u"), lambda: asyncio.run(tool.acall(url="u"))):
        with pytest.raises(tools.GuardedToolError) as info:
            call()
        assert TRIGGER not in rendered(info.value).lower() and str(info.value) == "Fetch failed: Mix"
