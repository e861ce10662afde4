"""Loading a checkpoint a newcomer got wrong (rt50a F7, F8): a directory without its tokenizer files (an
interrupted download, the weights copied over), a ``model.safetensors`` cut short, and a hub that takes the
connection but never answers. Each is one `ModelNotFound` at load naming what is wrong, never a guard that
loads and then fails every check deep in torch, nor a load that waits without bound."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
from qwenguard.core import Guard, ModelNotFound, Policy
from qwenguard.core.demo import DEMO_GEN_DIR, DEMO_STREAM_DIR


def _copy_without_tokenizer(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    for f in dst.iterdir():
        if f.name.startswith("tokenizer"):
            f.unlink()
    return dst


def test_a_gen_checkpoint_without_tokenizer_files_is_refused_at_load(tmp_path: Path) -> None:
    ckpt = _copy_without_tokenizer(DEMO_GEN_DIR, tmp_path / "Qwen3Guard-Gen-0.6B")
    with pytest.raises(ModelNotFound) as caught:
        Guard.from_pretrained(ckpt, policy=Policy(on_error="allow"))
    message = str(caught.value)
    assert "no tokenizer files" in message and str(ckpt) in message and "tokenizer.json" in message, message


def test_a_stream_checkpoint_without_tokenizer_files_is_refused_at_load(tmp_path: Path) -> None:
    ckpt = _copy_without_tokenizer(DEMO_STREAM_DIR, tmp_path / "Qwen3Guard-Stream-0.6B")
    with pytest.raises(ModelNotFound) as caught:
        Guard.from_pretrained("demo", stream_model=ckpt)
    assert "no tokenizer files" in str(caught.value) and str(ckpt) in str(caught.value)


def test_vocab_and_merges_are_tokenizer_files_too(tmp_path: Path) -> None:
    from qwenguard.core.backends.hub import _has_tokenizer

    (tmp_path / "vocab.json").write_text("{}")
    assert not _has_tokenizer(tmp_path)
    (tmp_path / "merges.txt").write_text("")
    assert _has_tokenizer(tmp_path)


def test_a_truncated_safetensors_names_the_file(tmp_path: Path) -> None:
    ckpt = tmp_path / "trunc"
    shutil.copytree(DEMO_GEN_DIR, ckpt)
    weights = ckpt / "model.safetensors"
    for size in (1000, weights.stat().st_size - 10, 4):  # in the header, in the last tensor, in the length
        data = (DEMO_GEN_DIR / "model.safetensors").read_bytes()[:size]
        weights.write_bytes(data)
        with pytest.raises(ModelNotFound) as caught:
            Guard.from_pretrained(ckpt)
        message = str(caught.value)
        assert str(weights) in message and ("cut short" in message or "shorter" in message), message
        assert "deserializing" not in message


def test_the_cli_names_the_missing_tokenizer(tmp_path: Path) -> None:
    ckpt = _copy_without_tokenizer(DEMO_GEN_DIR, tmp_path / "ckpt")
    p = subprocess.run(
        [sys.executable, "-m", "qwenguard.core.cli", "check", "--model", str(ckpt), "hi"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert p.returncode == 2 and "no tokenizer files" in p.stderr and "Traceback" not in p.stderr, p.stderr


@pytest.fixture
def silent_hub():
    """HF_ENDPOINT for a listener that accepts connections and never answers."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(64)
    held: list[socket.socket] = []

    def accept() -> None:
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            held.append(conn)

    threading.Thread(target=accept, daemon=True).start()
    yield f"http://127.0.0.1:{server.getsockname()[1]}"
    server.close()
    for conn in held:
        conn.close()


def test_a_silent_hub_fails_the_load_within_the_bound(silent_hub: str, tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "HF_HUB_OFFLINE"}
    env.update(HF_ENDPOINT=silent_hub, HF_HOME=str(tmp_path / "hf"))
    script = textwrap.dedent(
        """
        from qwenguard.core import Guard
        from qwenguard.core.backends import hub
        hub.HUB_ANSWER_TIMEOUT_S = 2.0
        try:
            Guard.from_pretrained("Qwen/Qwen3Guard-Gen-0.6B")
        except Exception as exc:
            print(type(exc).__name__, exc)
        """
    )
    start = time.monotonic()
    p = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=60)
    took = time.monotonic() - start
    assert p.stdout.startswith("ModelNotFound"), (p.stdout, p.stderr[-2000:])
    assert "did not answer within 2 s" in p.stdout and silent_hub in p.stdout, p.stdout
    assert took < 30, took
