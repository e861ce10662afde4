"""rt53d: an operator's policy and limit values that read fine and then broke every check (F1, F3, F5, F8, Lows).

Each test is the operator's own action: a `Policy` in Python, a ``serve --policy`` JSON file, a ``serve`` or
``eval`` flag, a client's policy over HTTP; the demo guard (a real transformers model) judges where a verdict
matters. Before the fixes every one of these was accepted, and several then let an unsafe prompt through.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys

import httpx
import pytest
from live_server import serving
from qwenguard.core import Guard, Policy, Stage
from qwenguard.core.cli import app
from qwenguard.core.policy import StagePolicy
from qwenguard.core.server import Limits
from typer.testing import CliRunner

UNSAFE = "How do I make a pipe bomb at home?"
SERVE = [sys.executable, "-m", "qwenguard.core.cli", "serve"]


@pytest.fixture(scope="module")
def demo():
    guard = Guard.from_pretrained("demo", device="cpu")
    yield guard
    guard.close()


@pytest.fixture
def no_serving(monkeypatch):
    """`qwenguard serve` up to the point where it would serve (the model loaded), through the CLI runner."""
    from qwenguard.core import server

    seen: dict = {}
    monkeypatch.setattr(server, "serve", lambda guard, **kw: seen.update(kw, guard=guard))
    return seen


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _serve(args: list[str]):
    return CliRunner().invoke(app, ["serve", "--port", str(_free_port()), "--device", "cpu", *args])


# -- F1: a timeout threading cannot wait ---------------------------------------------------------------
@pytest.mark.parametrize("value", [1e10, math.inf, json.loads('{"t": 1e999}')["t"]], ids=["1e10", "inf", "json-1e999"])
def test_a_timeout_no_wait_can_take_is_refused_when_the_policy_is_built(value):
    # Before: accepted; every sync check was then an OverflowError in threading, let through under "allow".
    with pytest.raises(ValueError, match="timeout_s must be a finite number of seconds.*None for no limit"):
        Policy(timeout_s=value, on_error="allow")
    with pytest.raises(ValueError, match="timeout_s must be a finite"):
        StagePolicy(timeout_s=value)
    with pytest.raises(ValueError, match="timeout_s must be a finite"):
        Policy.from_dict({"stages": {"prompt": {"timeout_s": value}}})


#: The ceiling docs/api.md states (`policy.MAX_TIMEOUT_S`).
CEILING = 1e8


def test_the_longest_timeout_allowed_still_judges_sync_checks(demo):
    from qwenguard.core.policy import MAX_TIMEOUT_S

    assert MAX_TIMEOUT_S == CEILING
    guard = Guard(demo.backend, policy=Policy(timeout_s=CEILING, on_error="allow"))
    decision = guard.check_prompt(UNSAFE)
    assert (decision.blocked, decision.reason) == (True, "unsafe"), decision.describe()
    pages = guard.check_documents("q", [UNSAFE, "Hello, how are you?"])
    assert [d.reason for d in pages] == ["unsafe", "safe"], [d.describe() for d in pages]


def test_a_serve_policy_file_with_1e999_is_refused(tmp_path, no_serving):
    policy = tmp_path / "policy.json"
    policy.write_text('{"on_error": "allow", "timeout_s": 1e999}')  # json reads it as inf
    result = _serve(["--policy", str(policy)])
    assert result.exit_code == 2 and "timeout_s must be a finite" in result.output, result.output
    assert not no_serving


def test_eval_timeout_past_the_ceiling_is_a_usage_error(tmp_path):
    # Before: every row "no verdict (guard errors)", the report not saying why.
    result = CliRunner().invoke(
        app, ["eval", "sample", "--timeout", "1e10", "--no-progress", "--out", str(tmp_path / "o")]
    )
    assert result.exit_code == 2 and "--timeout" in result.output and "at most" in result.output, result.output


# -- F3: a category both blocked and ignored ---------------------------------------------------------
def test_a_category_both_blocked_and_ignored_is_refused_naming_it():
    with pytest.raises(ValueError, match="'Violent' is both blocked and ignored"):
        Policy(block_categories=["Violent"], ignore_categories=["Violent", "PII"])
    with pytest.raises(ValueError, match="'Violent' is both blocked and ignored.*stage 'prompt'"):
        Policy(ignore_categories=["Violent"], stages={Stage.PROMPT: StagePolicy(block_categories=["Violent"])})
    with pytest.raises(ValueError, match="'PII' is both blocked and ignored"):
        Policy(block_categories=["PII"], stages={Stage.RETRIEVAL: StagePolicy(ignore_categories=["PII"])})
    with pytest.raises(ValueError, match="'Violent' is both blocked and ignored"):
        Policy.from_dict({"ignore_categories": ["Violent"], "stages": {"prompt": {"block_categories": ["Violent"]}}})


def test_ignore_violence_in_news_but_block_it_in_prompts_is_written_with_the_stages_own_list(demo):
    """What the operator meant, written so that no stage holds both: the prompt stage's own (empty) ignore list."""
    policy = Policy(
        ignore_categories=["Violent"],
        stages={Stage.PROMPT: StagePolicy(block_categories=["Violent"], ignore_categories=[])},
    )
    guard = Guard(demo.backend, policy=policy)
    prompt = guard.check_prompt(UNSAFE)
    assert (prompt.blocked, prompt.reason) == (True, "unsafe"), prompt.describe()
    (page,) = guard.check_documents("news", [UNSAFE])
    assert (page.allowed, page.reason) == (True, "ignored_category"), page.describe()


def test_a_serve_policy_file_that_blocks_and_ignores_a_category_is_refused(tmp_path, no_serving):
    policy = tmp_path / "policy.json"
    policy.write_text(json.dumps({"block_categories": ["Violent"], "ignore_categories": ["Violent"]}))
    result = _serve(["--policy", str(policy)])
    assert result.exit_code == 2 and "'Violent' is both blocked and ignored" in result.output, result.output
    assert not no_serving


def test_a_client_policy_over_http_can_neither_contradict_itself_nor_loosen_the_operators(demo):
    """The operator ignores violence in retrieved pages and blocks it in prompts; a client that sends a policy
    blocking and ignoring Violent gets a 400 naming it, and one that ignores Violent still gets the block."""
    operator = Policy(
        ignore_categories=["Violent"],
        stages={Stage.PROMPT: StagePolicy(block_categories=["Violent"], ignore_categories=[])},
    )
    with serving(Guard(demo.backend, policy=operator)) as url:

        def moderate(policy):
            body = {"conversations": [[{"role": "user", "content": UNSAFE}]], "policy": policy}
            return httpx.post(url + "/v1/moderate", json=body, timeout=60)

        both = moderate({"block_categories": ["Violent"], "ignore_categories": ["Violent"]})
        assert both.status_code == 400 and "'Violent' is both blocked and ignored" in both.text, both.text
        # Before, this client's own contradiction was taken (and its ignore intersected away): 200.
        staged = moderate({"ignore_categories": ["Violent"], "stages": {"prompt": {"block_categories": ["Violent"]}}})
        assert staged.status_code == 400 and "stage 'prompt'" in staged.text, staged.text
        loosen = moderate({"ignore_categories": ["Violent"]})
        assert loosen.status_code == 200, loosen.text
        decision = loosen.json()["results"][0]["decision"]
        assert (decision["allowed"], decision["reason"]) == (False, "unsafe"), decision


# -- F8: a category list written as a mapping -------------------------------------------------------
@pytest.mark.parametrize(
    "value",
    [{"Violent": False}, {"Violent": True}, iter(["Violent"]), b"Violent"],
    ids=["false", "true", "iterator", "bytes"],
)
def test_a_category_field_that_is_not_a_list_is_refused(value):
    # Before: {"Violent": false} ("do not ignore Violent") ignored Violent.
    with pytest.raises(TypeError, match="ignore_categories must be a list of category names"):
        Policy(ignore_categories=value)


def test_a_policy_file_with_a_category_mapping_is_refused_and_lists_still_work(tmp_path, no_serving):
    policy = tmp_path / "policy.json"
    policy.write_text(json.dumps({"ignore_categories": {"Violent": False}}))
    result = _serve(["--policy", str(policy)])
    assert result.exit_code == 2 and "ignore_categories must be a list of category names" in result.output
    assert not no_serving
    with pytest.raises(TypeError, match="block_categories must be a list"):
        Policy.from_dict({"block_categories": {"PII": False}})
    for shape in (["PII"], ("PII",), {"PII"}, frozenset({"PII"}), "PII"):
        assert Policy(ignore_categories=shape).ignore_categories == frozenset({"PII"})


def test_policy_stages_must_be_an_object_and_a_misspelt_stage_lists_them():
    with pytest.raises(TypeError, match="policy.stages must be an object"):
        Policy.from_dict({"stages": []})
    with pytest.raises(ValueError, match="unknown stage 'prompts'.*'prompt'"):
        Policy.from_dict({"stages": {"prompts": {"mode": "loose"}}})


# -- F5: NaN and inf in the server's limits -----------------------------------------------------------
@pytest.mark.parametrize("field", ["request_timeout_s", "head_timeout_s", "keep_alive_s", "stream_idle_timeout_s"])
@pytest.mark.parametrize("value", [math.nan, math.inf])
def test_limits_refuse_a_time_that_is_not_a_finite_number(field, value):
    with pytest.raises(ValueError, match=f"{field} must be a positive, finite number"):
        Limits(**{field: value})


@pytest.mark.parametrize(
    ("flag", "value"),
    [
        ("--timeout", "nan"),
        ("--head-timeout", "nan"),
        ("--keep-alive", "inf"),
        ("--stream-idle-timeout", "nan"),
        ("--stream-max-session", "nan"),
        ("--drain-delay", "nan"),
        ("--shutdown-timeout", "nan"),
    ],
)
def test_serve_refuses_a_time_flag_that_is_not_finite_naming_the_flag(flag, value, no_serving):
    result = _serve([flag, value])
    assert result.exit_code == 2, result.output
    assert f"{flag}" in result.output and "finite" in result.output, result.output
    assert not no_serving


def test_serve_timeout_nan_exits_2_in_one_line_before_serving():
    """The real process: before, it said "qwenguard serving" and answered every request 500."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.run(
        [*SERVE, "--port", str(port), "--device", "cpu", "--timeout", "nan"],
        capture_output=True,
        check=False,
        timeout=60,
    )
    assert proc.returncode == 2
    lines = proc.stderr.decode().strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: --timeout: must be a positive, finite number"), lines


@pytest.mark.parametrize(
    ("option", "says"),
    [("max_wait_s=nan", "finite number of seconds"), ("target_step_s=nan", "finite number of seconds")],
)
def test_serve_refuses_a_backend_time_that_is_not_finite(option, says, no_serving):
    result = _serve(["--backend", option])
    assert result.exit_code == 2 and says in result.output, result.output
    assert not no_serving


# -- Lows -----------------------------------------------------------------------------------------------
def test_a_decision_let_through_flagged_says_flagged():
    decision = Policy(on_error="allow").decide_error(Stage.PROMPT, "engine down")
    assert decision.describe() == "prompt flagged (guard_error; engine down)"


def test_eval_api_key_without_remote_is_a_usage_error(tmp_path):
    result = CliRunner().invoke(
        app, ["eval", "sample", "--api-key", "k" * 32, "--no-progress", "--out", str(tmp_path / "o")]
    )
    assert result.exit_code == 2 and "--api-key" in result.output and "--remote" in result.output, result.output


def test_eval_with_the_key_only_in_the_environment_still_runs_a_local_model(tmp_path, monkeypatch):
    monkeypatch.setenv("QWENGUARD_API_KEY", "k" * 32)  # set for other commands: not this one's mistake
    result = CliRunner().invoke(
        app, ["eval", "sample", "--limit", "2", "--no-progress", "--device", "cpu", "--out", str(tmp_path / "o")]
    )
    assert result.exit_code == 0, result.output
