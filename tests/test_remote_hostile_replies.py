"""A hostile or faulty remote engine must not make the client do unbounded work (red-team findings), from real
servers on 127.0.0.1 started here.

- `OpenAIGen` with ``logprobs=True``: a 200 reply whose one choice has millions of logprob steps (within
  ``max_reply_bytes``) is read only up to the request's ``max_tokens`` steps, in time linear in them (it was
  quadratic: 8 MiB took seconds on the client's loop).
- `RemoteStream`: per-token verdicts are kept as a local monitor keeps them (the last 2048); a frame with more
  token verdicts than four per character fed is a malformed frame; a frame past the default ``max_frame_bytes`` (4 MiB,
  above any frame an honest default server sends) ends the session unparsed; and the caller's loop goes on
  while a frame just under the bound is parsed.
"""

from __future__ import annotations

import json
import math
import random
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from live_server import QuietHandler, http_serving
from qwenguard.core import Guard, GuardUnavailable, Policy
from qwenguard.core.backends import openai_gen
from qwenguard.core.backends import stream_session as stream_session_module
from qwenguard.core.backends.openai_wire import parse_logprobs
from qwenguard.core.formats.prompts import SAFETY_LABELS
from qwenguard.core.streaming.monitor_core import DEFAULT_KEEP_TOKEN_VERDICTS
from test_remote_replies import both, stream_guard, ws_server

SAFE = "Safety: Safe\nCategories: None"
JUNK_STEP = {"token": " " + "x" * 30, "logprob": 0.0, "top_logprobs": []}
HONEST_STEPS = [
    {"token": "Safety", "logprob": -0.0001, "top_logprobs": [{"token": "Safety", "logprob": -0.0001}]},
    {"token": ":", "logprob": 0.0, "top_logprobs": [{"token": ":", "logprob": 0.0}]},
    {
        "token": " Safe",
        "logprob": -0.05,
        "top_logprobs": [{"token": " Safe", "logprob": -0.05}, {"token": " Unsafe", "logprob": -3.2}],
    },
]


# == 1. logprobs: bounded steps, linear parse =================================================================
#: The reply bound these padded replies are read under (raised from the default: a padded reply's steps, not its
#: size, are what is tested).
PADDED_REPLY_BYTES = 8 << 20


def hostile_reply(head: list[dict[str, Any]], nbytes: int = PADDED_REPLY_BYTES - 4096) -> bytes:
    """A valid "safe" verdict whose logprobs carry ``head`` then junk steps, up to ``nbytes``."""
    k = (nbytes - 200) // (len(json.dumps(JUNK_STEP)) + 2)
    body = {
        "choices": [
            {
                "message": {"role": "assistant", "content": SAFE},
                "finish_reason": "stop",
                "logprobs": {"content": head + [JUNK_STEP] * k},
            }
        ]
    }
    out = json.dumps(body).encode()
    assert len(out) <= PADDED_REPLY_BYTES
    return out


@contextmanager
def http_engine(body: bytes) -> Iterator[str]:
    """An OpenAI-shaped engine answering every POST with ``body``; yields its base URL."""

    class Handler(QuietHandler):
        def _send(self, data: bytes) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:
            self._send(json.dumps({"object": "list", "data": [{"id": "m", "max_model_len": 32768}]}).encode())

        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            self._send(body)

    with http_serving(Handler) as base:
        yield base + "/v1"


class Counted(list):  # type: ignore[type-arg]
    """A list that records how many of its items were iterated over."""

    read = 0

    def __iter__(self) -> Iterator[Any]:
        for i, item in enumerate(list.__iter__(self)):
            self.read = i + 1
            yield item


def count_steps_read(monkeypatch: pytest.MonkeyPatch) -> list[Counted]:
    """Wrap the ``logprobs.content`` of every reply the client decodes in a `Counted`."""
    seen: list[Counted] = []

    def loads(raw: Any) -> Any:
        data = json.loads(raw)
        for choice in data.get("choices") or () if isinstance(data, dict) else ():
            lp = choice.get("logprobs") if isinstance(choice, dict) else None
            if isinstance(lp, dict) and isinstance(lp.get("content"), list):
                lp["content"] = Counted(lp["content"])
                seen.append(lp["content"])
        return data

    shim = type("JsonShim", (), {"loads": staticmethod(loads), "dumps": staticmethod(json.dumps)})
    monkeypatch.setattr(openai_gen, "json", shim)
    return seen


@pytest.mark.parametrize("head", [[], HONEST_STEPS], ids=["label-absent", "label-first"])
def test_millions_of_logprob_steps_are_read_only_up_to_max_tokens(monkeypatch, head):
    seen = count_steps_read(monkeypatch)
    with http_engine(hostile_reply(head)) as url:
        g = Guard.remote(
            url,
            model="m",
            logprobs=True,
            max_retries=0,
            max_reply_bytes=PADDED_REPLY_BYTES,
            policy=Policy(timeout_s=60),
        )
        try:
            d = g.check_prompt("hello")
        finally:
            g.close()
    assert d.allowed and d.reason == "safe", d
    assert seen and len(seen[0]) > 100_000  # the reply did carry them all
    assert seen[0].read <= g.backend.max_tokens  # ... and the client read no more than an honest answer has
    honest = parse_logprobs({"logprobs": {"content": head}})
    assert (d.verdict.probs if d.verdict else None) == honest  # the label's probabilities when it is there


def longest_text_held(fn: Callable[[], Any], name: str) -> int:
    """Run ``fn``; the longest string any local of the function ``name`` held at any of its lines."""
    longest = 0

    def local(frame: Any, event: str, arg: Any) -> Any:
        nonlocal longest
        for value in frame.f_locals.values():
            if isinstance(value, str):
                longest = max(longest, len(value))
        return local

    def calls(frame: Any, event: str, arg: Any) -> Any:
        return local if event == "call" and frame.f_code.co_name == name else None

    sys.settrace(calls)
    try:
        fn()
    finally:
        sys.settrace(None)
    return longest


@pytest.mark.parametrize("head", [[], HONEST_STEPS], ids=["label-absent", "label-last"])
def test_a_logprobs_reply_is_read_without_keeping_the_text_it_spells(head):
    """The label search keeps the last characters of the text so far, never the text: it re-stripped the
    whole text at every step (quadratic: an 8 MiB padded reply took 5.3 s on the client's loop). Read every
    step (no ``max_steps``), so the bound on steps does not hide it. Structural, not timed: the time
    itself, side by side with ``json.loads``, is printed by ``python bench/freeze.py``."""
    steps = [JUNK_STEP] * 2000 + head
    choice = {"logprobs": {"content": steps}}
    held = longest_text_held(lambda: parse_logprobs(choice), "parse_logprobs")
    assert held <= len(JUNK_STEP["token"]) + len("Safety:") + 1, held  # 62,000 characters spelled
    assert parse_logprobs(choice) == parse_logprobs({"logprobs": {"content": head}})


def _reference_parse(steps: list[tuple[str, dict[str, float]]]) -> dict[Any, float] | None:
    """The label search as it was (whole text re-stripped at every step), for the equivalence check."""
    text = ""
    for token, candidates in steps:
        if text.strip().endswith("Safety:"):
            scores: dict[Any, float] = {}
            for candidate, logprob in candidates.items():
                piece = candidate.strip()
                matches = [r for r, lab in SAFETY_LABELS.items() if piece and lab.startswith(piece)]
                if len(matches) == 1:
                    scores[matches[0]] = max(scores.get(matches[0], -math.inf), logprob)
            if not scores:
                return None
            top = max(scores.values())
            exps = {r: math.exp(scores[r] - top) if r in scores else 0.0 for r in SAFETY_LABELS}
            return {r: e / sum(exps.values()) for r, e in exps.items()}
        text += token
    return None


def test_the_linear_label_search_finds_what_the_old_one_found():
    """Not an attack: the same probabilities as the old search on random token splits (whitespace, partial
    labels, empty tokens), in both the chat and the completion shape."""
    rng = random.Random(7)
    pieces = ["Safety", ":", "Safety:", "Saf", "ety", "ety:", " ", "\n", "  ", "", "x", " Safe", "Unsafe", "\t:"]
    labels = [" Safe", " Unsafe", " Controversial", " Contro", "Safe", " None", " "]
    for _ in range(3000):
        steps = []
        for _ in range(rng.randint(0, 8)):
            cands = {rng.choice(labels): -rng.random() * 5 for _ in range(rng.randint(0, 3))}
            steps.append((rng.choice(pieces), cands))
        want = _reference_parse(steps)
        chat = {
            "content": [
                {
                    "token": tok,
                    "logprob": -1.0,
                    "top_logprobs": [{"token": c, "logprob": lp} for c, lp in cands.items()],
                }
                for tok, cands in steps
            ]
        }
        completion = {
            "tokens": [tok for tok, _ in steps],
            "top_logprobs": [dict(cands) for _, cands in steps],
        }
        for lp, candidates in ((chat, [{**c, tok: c.get(tok, -1.0)} for tok, c in steps]), (completion, None)):
            got = parse_logprobs({"logprobs": lp})
            expected = want if candidates is None else _reference_parse(list(zip([t for t, _ in steps], candidates)))
            assert got == expected, (steps, got, expected)


# == 2. stream sessions ===========================================================================================


def released_with_tokens(delta: str, fed: str) -> str:
    """Releases each delta with one token verdict per character (as many as an honest server could send)."""
    base = len(fed) - len(delta)
    tokens = ",".join(f'{{"risk":"safe","end":{base + i + 1}}}' for i in range(len(delta)))
    return f'{{"type":"released","text":{json.dumps(delta)},"tokens":[{tokens}]}}'


def test_token_verdicts_held_stay_bounded_as_a_local_monitor_keeps_them():
    chunk = "a" * 20_000
    with ws_server(released_with_tokens) as url:
        for released, exc, monitor in both(stream_guard(url), [chunk] * 4):
            assert exc is None and released == chunk * 4, repr(exc)
            kept = monitor.take_token_verdicts()
            assert len(kept) == DEFAULT_KEEP_TOKEN_VERDICTS
            assert [t["end"] for t in kept] == list(range(80_000 - len(kept) + 1, 80_001))  # the latest ones


def test_more_token_verdicts_than_the_text_fed_can_have_is_a_malformed_frame():
    def flood(delta: str, fed: str) -> str:
        return '{"type":"released","text":' + json.dumps(delta) + ',"tokens":[' + ",".join(["{}"] * 100_000) + "]}"

    with ws_server(flood) as url:
        for released, exc, monitor in both(stream_guard(url), ["Paris is in France."]):
            assert isinstance(exc, GuardUnavailable) and "token verdicts" in str(exc), repr(exc)
            assert released == "" and monitor.released == ""
        opened = stream_guard(url, Policy(on_error="allow", timeout_s=10))
        for _released, exc, monitor in both(opened, ["Paris is in France."]):
            assert exc is None and monitor.decision is not None and monitor.decision.reason == "guard_error"


def test_a_frame_past_the_default_bound_ends_the_session_unparsed(monkeypatch):
    parsed: list[int] = []
    real_loads = json.loads

    def loads(raw: Any, *args: Any, **kwargs: Any) -> Any:
        parsed.append(len(raw))
        return real_loads(raw, *args, **kwargs)

    def padded(size: int) -> Callable[[str, str], str]:
        def reply(delta: str, fed: str) -> str:
            head = '{"type":"released","text":' + json.dumps(delta) + ',"pad":"'
            return head + "A" * (size - len(head) - 2) + '"}'

        return reply

    monkeypatch.setattr(json, "loads", loads)  # the client's parse of every frame
    with ws_server(padded((4 << 20) + 1024)) as url:
        for released, exc, _ in both(stream_guard(url), ["Paris is in France."]):
            assert isinstance(exc, GuardUnavailable) and "max_frame_bytes" in str(exc), repr(exc)
            assert released == ""
    assert all(n < 1 << 20 for n in parsed), "the oversized frame was parsed"
    with ws_server(padded((4 << 20) - 1024)) as url:  # just under it: an honest-sized frame is read
        for released, exc, _ in both(stream_guard(url), ["Paris is in France."]):
            assert exc is None and released == "Paris is in France.", repr(exc)


async def test_a_frame_just_under_the_bound_is_parsed_off_the_callers_loop(monkeypatch):
    """A frame of ~4 MiB of tiny token objects (the red team's shape), the caller having fed enough text for
    them to pass the count: it is parsed by a worker thread, not on the caller's loop (where it blocked the
    loop ~1 s per 3 MiB), and its verdicts are kept within the bound. (On a GIL build json's parser still holds
    the interpreter while it runs, and the frame bound bounds that pause; a threshold on the pause here failed
    on a loaded runner: 0.56 s against 0.5.)"""
    from qwenguard.core.backends import remote_stream

    fed = "a" * 1_450_000
    parsed_on: list[tuple[int, int]] = []
    real_parse = remote_stream.parse_frame

    def recording(raw: Any) -> Any:
        parsed_on.append((threading.get_ident(), len(raw)))
        return real_parse(raw)

    monkeypatch.setattr(remote_stream, "parse_frame", recording)

    def flood(delta: str, so_far: str) -> str:
        n = ((4 << 20) - 4096) // 16
        return '{"type":"released","text":"","tokens":[' + ",".join(['{"risk":"safe"}'] * n) + "]}"

    with ws_server(flood) as url:
        g = stream_guard(url, Policy(timeout_s=60))
        async with g.astream("hello") as monitor:
            loop_thread = threading.get_ident()
            for _ in range(3):
                assert await monitor.afeed(fed if not monitor.text else "b") == ""
            assert len(monitor.take_token_verdicts()) <= DEFAULT_KEEP_TOKEN_VERDICTS
    big = [thread for thread, size in parsed_on if size > remote_stream.PARSE_INLINE_BYTES]
    assert len(big) == 3 and loop_thread not in big


def test_an_honest_server_flagging_every_few_tokens_stays_within_the_frame_bound(monkeypatch):
    """Found over the frame bound (red team): a Stream model flags every run of two non-safe tokens, so one large
    feed of controversial text under a policy that allows it (controversial, controversial, safe, ...) put one
    flag per three tokens in a single frame: 140,000 characters made an honest frame over 4 MiB and the client
    failed a healthy session. A frame now carries at most `MAX_FLAGS_PER_FRAME` flags and counts the rest.
    (The demo Stream model with its token risks rewritten to that pattern; the cap lowered to keep it quick.)"""
    from live_server import serving
    from qwenguard.core import Risk
    from qwenguard.core.backends.transformers_stream import StreamSession
    from qwenguard.core.server import stream_protocol

    monkeypatch.setattr(stream_protocol, "MAX_FLAGS_PER_FRAME", 8)
    scored = [0]

    def controversial_twice_then_safe(verdicts: list[Any]) -> list[Any]:
        out = []
        for v in verdicts:
            scored[0] += 1
            out.append(v._replace(risk=Risk.SAFE if scored[0] % 3 == 0 else Risk.CONTROVERSIAL))
        return out

    for name in ("feed_text", "finish"):
        real, areal = getattr(StreamSession, name), getattr(StreamSession, "a" + name)
        monkeypatch.setattr(
            StreamSession, name, lambda self, *a, _r=real, **k: controversial_twice_then_safe(_r(self, *a, **k))
        )

        async def arewritten(self: Any, *a: Any, _r: Any = areal, **k: Any) -> list[Any]:
            return controversial_twice_then_safe(await _r(self, *a, **k))

        monkeypatch.setattr(StreamSession, "a" + name, arewritten)
    frames: list[dict[str, Any]] = []
    real_parse = stream_session_module.parse_frame
    monkeypatch.setattr(stream_session_module, "parse_frame", lambda raw: frames.append(real_parse(raw)) or frames[-1])
    local = Guard.from_pretrained("demo", stream_model="demo-stream", device="cpu", policy=Policy.loose())
    try:
        with serving(local) as url:
            remote = Guard.remote(url + "/v1", model=local.backend.name, stream=True, policy=Policy.loose())
            with remote.stream("Write some letters.") as monitor:
                out = monitor.feed("a b " * 300) + monitor.finish()
            remote.close()
    finally:
        local.close()
    assert out == "a b " * 300  # the session ended normally: flagged, allowed
    assert max(len(frame.get("flags") or ()) for frame in frames) <= 8
    assert len(monitor.flags) + monitor.flags_omitted >= 100  # about one a three tokens
    assert monitor.flags_omitted > 0 and len(monitor.flags) <= 8 * 3  # opened, released, finished: 8 a frame
