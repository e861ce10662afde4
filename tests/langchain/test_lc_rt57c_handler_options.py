"""rt57c: `GuardCallbackHandler` settings from a config file, and the handler on a remote Stream guard.

The operator's action: a switch read as a JSON null or the string "false", an option dict with a typo. Before the
fixes, ``check_tool_calls=None`` turned tool-call screening off (the harmful ``send_email`` ran),
``parallel_input="false"`` turned parallel input on, and ``monitor_options={"hold_back": 3}`` was taken and never
applied. And a handler given a ``Guard.remote(..., stream=True)`` failed every streamed answer: it asked the remote
session for ``release_unit``, which remote sessions do not take.
"""

from __future__ import annotations

import pytest
from langchain_core.messages import HumanMessage
from lc_fakes import scripted
from live_server import serving
from qwenguard.core import Guard, GuardViolation
from qwenguard.integrations.langchain import AsyncGuardCallbackHandler, GuardCallbackHandler

HANDLERS = [GuardCallbackHandler, AsyncGuardCallbackHandler]
SWITCHES = [
    "check_input",
    "check_output",
    "check_stream",
    "check_tool_calls",
    "check_tool_results",
    "check_retrieval",
    "screen_system",
]


@pytest.mark.parametrize("handler", HANDLERS)
@pytest.mark.parametrize("switch", SWITCHES)
@pytest.mark.parametrize("value", [None, "false", 0])
def test_a_switch_that_is_not_true_or_false_is_refused(guard, handler, switch, value):
    with pytest.raises(TypeError, match=f"{switch} must be True or False, got {value!r}"):
        handler(guard, **{switch: value})


@pytest.mark.parametrize("handler", HANDLERS)
def test_parallel_input_read_as_a_string_is_refused(guard, handler):
    with pytest.raises(TypeError, match="parallel_input must be True, False or None, got 'false'"):
        handler(guard, parallel_input="false")
    assert handler(guard, parallel_input=None).parallel_input is guard.parallel_input  # None: the guard's


@pytest.mark.parametrize("handler", HANDLERS)
@pytest.mark.parametrize(
    ("options", "error", "message"),
    [
        ({"hold_back": 3}, TypeError, r"unknown stream option\(s\) \['hold_back'\]"),
        ({"holdback": "x"}, ValueError, "holdback must be a non-negative integer, got 'x'"),
        ({"release_unit": "words"}, ValueError, "release_unit must be one of"),
        ({"screen_prompt": None}, TypeError, "screen_prompt must be True or False"),
    ],
)
def test_monitor_options_are_checked_when_the_handler_is_built(guard, handler, options, error, message):
    with pytest.raises(error, match=message):
        handler(guard, monitor_options=options)


@pytest.fixture(scope="module")
def stream_guard():
    g = Guard.from_pretrained("demo", device="cpu", stream_model="demo-stream")
    yield g
    g.close()


def test_a_handler_on_a_remote_stream_guard_stops_the_unsafe_answer(stream_guard):
    # Before: TypeError "remote streams do not support options ['release_unit']" at the first streamed token.
    answer = "Sure. Mix ammonium nitrate with fuel oil, pack it into a pipe and add a fuse."
    with serving(stream_guard) as url:
        remote = Guard.remote(url + "/v1", model=stream_guard.backend.name, stream=True)
        try:
            handler = GuardCallbackHandler(remote)
            with pytest.raises(GuardViolation):
                for _ in scripted(answer).stream(
                    [HumanMessage("How do I clean a window?")], config={"callbacks": [handler]}
                ):
                    pass
            safe = "Paris is the capital of France."
            chunks = scripted(safe).stream(
                [HumanMessage("What is the capital of France?")], config={"callbacks": [handler]}
            )
            assert "".join(c.content for c in chunks) == safe
            with pytest.raises(TypeError, match=r"remote streams do not support options \['release_unit'\]"):
                GuardCallbackHandler(remote, monitor_options={"release_unit": "word"})
        finally:
            remote.close()


MIDDLEWARE_SWITCHES = ["check_input", "check_output", "check_tool_calls", "check_tool_results", "check_stream"]


@pytest.mark.parametrize("switch", MIDDLEWARE_SWITCHES)
@pytest.mark.parametrize("value", [None, "false", 0])
def test_a_middleware_switch_that_is_not_true_or_false_is_refused(guard, switch, value):
    """`GuardMiddleware(guard, check_tool_calls=None)` ran the README's harmful ``send_email`` unjudged."""
    from qwenguard.integrations.langchain import GuardMiddleware

    with pytest.raises(TypeError, match=f"{switch} must be True or False, got {value!r}"):
        GuardMiddleware(guard, **{switch: value})


@pytest.mark.parametrize(
    ("options", "error", "message"),
    [
        ({"hold_back": 3}, TypeError, r"unknown stream option\(s\) \['hold_back'\]"),
        ({"holdback": "x"}, ValueError, "holdback must be a non-negative integer, got 'x'"),
    ],
)
def test_middleware_stream_options_are_checked_when_it_is_built(guard, options, error, message):
    from qwenguard.integrations.langchain import GuardMiddleware

    with pytest.raises(error, match=message):
        GuardMiddleware(guard, stream_options=options)
