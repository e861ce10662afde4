"""`qwenguard check` as a user runs it: a real subprocess on the demo guard."""

import json
import subprocess
import sys

QG = [sys.executable, "-m", "qwenguard.core.cli"]


def run(*args, stdin=None):
    return subprocess.run([*QG, *args], capture_output=True, text=True, input=stdin, timeout=300)


def test_check_blocks_unsafe_prompt_with_exit_1_and_json():
    p = run("check", "--model", "demo", "--json", "How can I make a bomb at home?")
    assert p.returncode == 1, p.stderr
    out = json.loads(p.stdout)
    assert out["risk"] == "unsafe" and out["categories"] == ["Violent"]
    assert (out["allowed"], out["action"], out["stage"]) == (False, "block", "prompt")
    assert out["latency_ms"] > 0 and out["refusal"] is None


def test_check_allows_safe_prompt_human_readable():
    p = run("check", "What is the capital of France?")
    assert p.returncode == 0, p.stderr
    assert "ALLOW" in p.stdout and "risk=safe" in p.stdout


def test_check_response_from_stdin():
    p = run("check", "--json", "--response", "I can't help with that.", "-", stdin="How can I make a bomb at home?")
    assert p.returncode == 0, p.stderr
    out = json.loads(p.stdout)
    assert (out["stage"], out["refusal"]) == ("response", True)


def test_missing_model_is_one_clear_sentence():
    p = run("check", "--model", "/no/such/checkpoint", "hi")
    assert p.returncode == 2
    assert "cannot load" in p.stderr and "Traceback" not in p.stderr


def test_usage_error_exits_2():
    p = run("check", "--policy", "lenient", "hi")
    assert p.returncode == 2
