"""The embedded demo guard: tiny Qwen3-architecture checkpoints trained by `python -m qwenguard.core.demo.train`."""

from __future__ import annotations

from pathlib import Path

__all__ = ["DEMO_DIR", "DEMO_GEN_DIR", "DEMO_STREAM_DIR", "DEMO_SAMPLE_PATH", "DEMO_NAMES", "resolve_demo"]

DEMO_DIR = Path(__file__).resolve().parent
#: The demo Qwen3Guard-Gen look-alike (``Guard.from_pretrained("demo")``): a transformers checkpoint directory.
DEMO_GEN_DIR = DEMO_DIR / "gen"
#: The demo Qwen3Guard-Stream look-alike (``"demo-stream"``).
DEMO_STREAM_DIR = DEMO_DIR / "stream"
#: The labelled evaluation sample shipped for ``qwenguard eval`` (columns in `qwenguard.core.demo.data`).
DEMO_SAMPLE_PATH = DEMO_DIR / "data" / "sample.jsonl"

DEMO_NAMES = {"demo": DEMO_GEN_DIR, "demo-stream": DEMO_STREAM_DIR}


def resolve_demo(name: str) -> Path:
    """The checkpoint directory of a demo guard name.

    >>> resolve_demo("demo").name
    'gen'

    Raises ``KeyError`` for a name that is not a demo (``"demo"``, ``"demo-stream"``).
    """
    try:
        return DEMO_NAMES[name]
    except KeyError:
        raise KeyError(f"{name!r} is not a demo guard; expected one of {sorted(DEMO_NAMES)}") from None
