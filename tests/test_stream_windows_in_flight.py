"""How many Gen-window checks one stream runs at once is the operator's to set (it was a constant, 4):
``guard.stream(..., max_windows_in_flight=N)`` locally, ``qwenguard serve --stream-max-windows-in-flight N``
(``Limits.stream_max_windows_in_flight``) for every session of a server, which a client's open frame cannot
raise. A burst of short sentences is the load it bounds: the rest of the text waits and is judged in longer
segments, all of it before it is released.
"""

from __future__ import annotations

import pytest
from qwenguard.core import Guard
from qwenguard.core.server.limits import Limits
from stream_judges import CountingJudge
from test_server_hostile import PARIS_Q, guarded, stream_session

BURST = "The capital of France is Paris, it is. " * 200  # 39 characters + a space a sentence


@pytest.mark.parametrize("most", [1, 2])
def test_a_local_stream_runs_at_most_the_checks_it_was_given(most):
    judge = CountingJudge(delay_s=0.02)
    guard = Guard(judge)
    with guard.stream(PARIS_Q, holdback=2, max_windows_in_flight=most) as monitor:
        out = monitor.feed(BURST) + monitor.finish()
    assert out == BURST
    assert judge.most_at_once <= most, judge.most_at_once
    assert len(BURST) <= judge.answer_chars < 5 * len(BURST)  # all judged


async def test_an_async_local_stream_runs_at_most_the_checks_it_was_given():
    judge = CountingJudge(delay_s=0.02)
    guard = Guard(judge)
    async with guard.astream(PARIS_Q, holdback=2, max_windows_in_flight=1) as monitor:
        out = await monitor.afeed(BURST) + await monitor.afinish()
    assert out == BURST and judge.most_at_once == 1


@pytest.mark.parametrize("bad", [0, -1, 1.5, True, "4"])
def test_a_bad_bound_is_a_clear_error(bad):
    with pytest.raises(ValueError, match="max_windows_in_flight"):
        Guard(CountingJudge()).stream(PARIS_Q, max_windows_in_flight=bad)
    with pytest.raises(ValueError, match="stream_max_windows_in_flight"):
        Limits(stream_max_windows_in_flight=bad)


def test_a_server_runs_at_most_the_operators_checks_per_session_whatever_the_client_asks():
    """A client cannot raise the operator's bound: asking for it is refused (close 4400: an open frame holds only the
    fields the server takes, since bbc341e; before, the ask was dropped), and a session runs one check at a time."""
    judge = CountingJudge(delay_s=0.02)
    with guarded(Guard(judge), stream_max_windows_in_flight=1) as url:
        asking = {"type": "open", "prompt": PARIS_Q, "max_windows_in_flight": 64}
        _, refused, refused_code = stream_session(url, asking, BURST, size=len(BURST))
        released, frames, code = stream_session(url, {"type": "open", "prompt": PARIS_Q}, BURST, size=len(BURST))
    assert refused_code == 4400 and "max_windows_in_flight" in refused[-1]["error"]["message"], refused[-1]
    assert released == BURST and frames[-1]["type"] == "finished" and code == 1000, frames[-1]
    assert judge.most_at_once == 1, judge.most_at_once


def test_serve_takes_the_bound_from_its_flag(monkeypatch):
    from qwenguard.core import cli, server
    from typer.testing import CliRunner

    seen = {}
    monkeypatch.setattr(server, "serve", lambda guard, **kw: seen.update(kw))  # everything but the serving
    monkeypatch.setattr(cli, "_check_port_free", lambda host, port: None)
    result = CliRunner().invoke(cli.app, ["serve", "--model", "demo", "--stream-max-windows-in-flight", "2"])
    assert result.exit_code == 0, result.output
    assert seen["limits"].stream_max_windows_in_flight == 2


def test_a_count_limit_given_as_a_fraction_is_refused_when_the_server_is_built():
    """Before: ``Limits(max_streams=1.5)`` was accepted and compared as 1.5 sessions."""
    for name in ("max_concurrency", "max_streams", "stream_max_windows_in_flight"):
        with pytest.raises(ValueError, match=f"{name} must be a positive integer"):
            Limits(**{name: 2.5})
