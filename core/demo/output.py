"""Where retraining the demo writes: a new directory by default, the shipped checkpoint only when asked for.

``python -m qwenguard.core.demo.train gen`` and ``python -m qwenguard.core.demo.train_stream`` write into
``runs/demo-<kind>-<date>-<time>/`` (relative to the current directory) unless ``--out DIR`` names another place.
The shipped checkpoints (``core/demo/gen``, ``core/demo/stream``) are replaced only by ``--replace-shipped`` or by
naming them explicitly with ``--out``. A directory that exists and is not a checkpoint is never deleted.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import platform
import time
from pathlib import Path

__all__ = ["default_out_dir", "resolve_out_dir", "check_replaceable", "library_versions", "init_record"]

#: Files that mark a directory as a checkpoint this code may replace as a whole.
_CHECKPOINT_MARKERS = ("config.json", "model.safetensors")


def default_out_dir(kind: str) -> Path:
    """``runs/demo-<kind>-<YYYYmmdd-HHMMSS>``: a new directory for every run."""
    return Path("runs") / f"demo-{kind}-{time.strftime('%Y%m%d-%H%M%S')}"


def resolve_out_dir(out: Path | str | None, *, kind: str, shipped: Path, replace_shipped: bool) -> Path:
    """The output directory of a training run.

    ``replace_shipped`` means the shipped checkpoint ``shipped`` (an ``out`` naming another place is an error);
    else ``out`` when given, else a new `default_out_dir`.
    """
    if replace_shipped:
        if out is not None and Path(out).resolve() != shipped.resolve():
            raise ValueError(f"--replace-shipped writes to {shipped}; it cannot be combined with --out {out}")
        return shipped
    return Path(out) if out is not None else default_out_dir(kind)


def check_replaceable(out_dir: Path) -> None:
    """Raise when ``out_dir`` holds files but is not a checkpoint (saving replaces the directory as a whole)."""
    if not out_dir.exists():
        return
    if not out_dir.is_dir():
        raise FileExistsError(f"{out_dir} exists and is not a directory")
    if any(out_dir.iterdir()) and not all((out_dir / name).exists() for name in _CHECKPOINT_MARKERS):
        raise FileExistsError(f"{out_dir} is not empty and holds no checkpoint; choose a new --out directory")


def library_versions() -> dict[str, str]:
    """The versions a checkpoint's bytes depend on (recorded in ``metrics.json``)."""
    out = {"python": platform.python_version()}
    for name in ("torch", "transformers", "tokenizers", "safetensors"):
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = "missing"
    try:
        import torch

        # Kernels differ by instruction set (AVX2, AVX-512): bit-for-bit results need the same one.
        out["torch_cpu_capability"] = str(torch.backends.cpu.get_cpu_capability())
    except ImportError:
        pass
    return out


def init_record(init: Path | None) -> dict[str, str] | None:
    """Which checkpoint a fine-tune (``--init-from``) started from: its path and the sha256 of its weights."""
    if init is None:
        return None
    return {"path": str(init), "model_sha256": hashlib.sha256((init / "model.safetensors").read_bytes()).hexdigest()}
