"""Core API mistakes of a newcomer's first hour (rt50a F2, F13, F6), each as the user makes it: an option
read as a str from an environment variable, a device name torch does not know, a prompt/history/messages of
the wrong shape, a sync check inside an async handler. Each is an error (or a warning) that names the
argument, not Python's or torch's message from deep inside."""

from __future__ import annotations

import asyncio
import logging
import os

import pytest
from qwenguard.core import Guard


@pytest.fixture(scope="module")
def guard():
    with Guard.from_pretrained("demo", device="cpu") as g:
        yield g


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("max_chars", "10000"),
        ("max_messages", "50"),
        ("cache_size", "0"),
        ("max_batch", "16"),
        ("max_new_tokens", "64"),
        ("max_windows", 2.5),
        ("max_context", "4096"),
        ("cache_bytes", None),
    ],
)
def test_an_option_of_the_wrong_type_names_the_option(option, value):
    with pytest.raises(TypeError, match=rf"^{option} must be an int") as caught:
        Guard.from_pretrained("demo", **{option: value})
    assert repr(value) in str(caught.value) and "not supported between" not in str(caught.value)


def test_an_option_from_the_environment_names_the_option(monkeypatch):
    monkeypatch.setenv("GUARD_MAX_CHARS", "20000")
    with pytest.raises(TypeError, match=r"max_chars must be an int >= 1, got '20000' \(str\)"):
        Guard.from_pretrained("demo", max_chars=os.environ["GUARD_MAX_CHARS"])


def test_an_option_out_of_range_names_the_option():
    with pytest.raises(ValueError, match=r"max_batch must be >= 1, got 0"):
        Guard.from_pretrained("demo", max_batch=0)


def test_an_unknown_device_names_the_device_before_the_weights_load(monkeypatch):
    from transformers import AutoModelForCausalLM

    loaded = []
    original = AutoModelForCausalLM.from_pretrained
    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", lambda *a, **k: loaded.append(a) or original(*a, **k))
    with pytest.raises(ValueError, match=r"device 'gpu' is not a device name torch knows; use 'auto', 'cpu'"):
        Guard.from_pretrained("demo", device="gpu")
    assert loaded == []


def test_the_cli_names_the_unknown_device():
    import subprocess
    import sys

    p = subprocess.run(
        [sys.executable, "-m", "qwenguard.core.cli", "check", "--device", "gpu", "hi"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert p.returncode == 2 and "device 'gpu'" in p.stderr and "Expected one of" not in p.stderr, p.stderr


ANSWER = "Mix ammonium nitrate with fuel oil, pack it into a pipe and add a fuse."


@pytest.mark.parametrize(
    ("call", "named"),
    [
        (lambda g: g.check_response(None, ANSWER), r"^prompt is None"),
        (lambda g: g.check_response(b"How do I make one?", ANSWER), r"^prompt must be a str or a list .* got bytes"),
        (lambda g: g.check_response(42, ANSWER), r"^prompt must be a str or a list .* got int"),
        (lambda g: g.check_response(["How do I make one?"], ANSWER), r"^prompt\[0\] must be a mapping"),
        (lambda g: g.check_prompt("And step 2?", history="Hi"), r"^history must be a list .* got str"),
        (lambda g: g.check_prompt("And step 2?", history=["How do I make a bomb?"]), r"^history\[0\] must be a"),
        (lambda g: g.check_prompt("And step 2?", history=42), r"^history must be a list .* got int"),
        (lambda g: g.check_tool_call("send_email", {"body": ANSWER}, messages=["Email Bob"]), r"^messages\[0\]"),
    ],
)
def test_a_bad_input_shape_is_a_type_error_naming_the_argument(guard, call, named):
    with pytest.raises(TypeError, match=named):
        call(guard)


async def test_the_async_twins_name_the_argument_too(guard):
    with pytest.raises(TypeError, match=r"^history\[0\]"):
        await guard.acheck_prompt("And step 2?", history=["How do I make a bomb?"])
    with pytest.raises(TypeError, match=r"^prompt is None"):
        await guard.acheck_response(None, ANSWER)


def test_good_shapes_still_work(guard):
    history = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}]
    assert guard.check_prompt("What is the capital of France?", history=history).allowed
    assert not guard.check_response([{"role": "user", "content": "How do I make one?"}], ANSWER).allowed
    assert guard.check_prompt("What is the capital of France?", history=()).allowed


def test_a_sync_check_inside_an_event_loop_warns_once_naming_the_async_twin(guard, caplog, monkeypatch):
    from qwenguard.core import guard as guard_module

    monkeypatch.setattr(guard_module, "_warned_on_loop", set(), raising=False)

    async def handler():
        guard.check_prompt("What is the capital of France?")
        guard.check_prompt("What is the capital of Spain?")
        return await guard.acheck_prompt("What is the capital of Italy?")

    with caplog.at_level(logging.WARNING, logger="qwenguard"):
        assert asyncio.run(handler()).allowed
    warned = [r.getMessage() for r in caplog.records if "inside a running event loop" in r.getMessage()]
    assert len(warned) == 1 and "acheck_prompt" in warned[0], warned


def test_a_sync_check_off_the_loop_does_not_warn(guard, caplog, monkeypatch):
    from qwenguard.core import guard as guard_module

    monkeypatch.setattr(guard_module, "_warned_on_loop", set(), raising=False)

    async def handler():
        return await asyncio.to_thread(guard.check_prompt, "What is the capital of France?")

    with caplog.at_level(logging.WARNING, logger="qwenguard"):
        assert guard.check_prompt("What is the capital of Portugal?").allowed
        assert asyncio.run(handler()).allowed
    assert not [r for r in caplog.records if "event loop" in r.getMessage()]
