"""A newcomer's first load prints no progress bar; one switch brings it back (issue 18)."""

from __future__ import annotations

import os
import subprocess
import sys

LOAD = (
    "from qwenguard.core import Guard\n"
    "guard = Guard.from_pretrained('demo', stream_model='demo-stream')\n"
    "print(guard.check_prompt('What is the capital of France?').allowed)\n"
)


def _run(env_extra: dict[str, str]) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "QWENGUARD_PROGRESS"}
    env.update({"HF_HUB_OFFLINE": "1", **env_extra})
    return subprocess.run([sys.executable, "-c", LOAD], capture_output=True, text=True, env=env, timeout=300)


def test_loading_the_guard_prints_no_progress_bar() -> None:
    done = _run({})
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "True"
    assert "Loading weights" not in done.stderr and "it/s]" not in done.stderr, done.stderr


def test_the_progress_switch_shows_the_bars_again() -> None:
    done = _run({"QWENGUARD_PROGRESS": "1"})
    assert done.returncode == 0, done.stderr
    assert "Loading weights" in done.stderr, done.stderr


def test_the_applications_own_setting_is_left_as_it_was() -> None:
    code = (
        "from transformers.utils import logging as hf\n"
        "from qwenguard.core import Guard\n"
        "Guard.from_pretrained('demo')\n"
        "print(hf.is_progress_bar_enabled())\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "True"
