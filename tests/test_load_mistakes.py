"""Loading the wrong checkpoint, as a newcomer does in the first hour: each mistake is one clear error at
load time (never a guard that loads and then answers every check with a guard error)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from qwenguard.core import Guard, ModelNotFound
from qwenguard.core.demo import DEMO_GEN_DIR


def test_the_stream_checkpoint_as_the_gen_model_names_stream_model() -> None:
    with pytest.raises(ValueError) as caught:
        Guard.from_pretrained("demo-stream")
    message = str(caught.value)
    assert "'demo-stream' is a Qwen3Guard-Stream checkpoint" in message, message
    assert "stream_model='demo-stream'" in message and "--stream-model" not in message, message


def test_the_gen_checkpoint_as_the_stream_model_names_demo_stream() -> None:
    with pytest.raises(ValueError) as caught:
        Guard.from_pretrained("demo", stream_model="demo")
    message = str(caught.value)
    assert "'demo' is a Qwen3Guard-Gen checkpoint" in message and "'demo-stream'" in message, message
    assert "lacks Qwen3Guard-Stream fields" not in message, message


def test_a_misspelt_stream_demo_hints_demo_stream() -> None:
    with pytest.raises(ModelNotFound) as caught:
        Guard.from_pretrained("demo", stream_model="demo_stream")
    message = str(caught.value)
    assert "Use 'demo-stream'" in message and "Use 'demo' " not in message, message


def test_an_empty_directory_says_it_has_no_config_json(tmp_path: Path) -> None:
    with pytest.raises(ModelNotFound) as caught:
        Guard.from_pretrained(tmp_path)
    message = str(caught.value)
    assert "has no config.json" in message and "not downloadable" not in message, message


def test_a_directory_without_weights_says_so(tmp_path: Path) -> None:
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json"):
        if (DEMO_GEN_DIR / name).exists():
            shutil.copy(DEMO_GEN_DIR / name, tmp_path / name)
    with pytest.raises(ModelNotFound) as caught:
        Guard.from_pretrained(tmp_path)
    message = str(caught.value)
    assert "has no weights" in message and "*.safetensors" in message, message
