"""torch for the local backends: imported on first use (so `import qwenguard.core` stays light), device and
dtype resolution."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from ..errors import MissingDependency

__all__ = ["require_torch", "resolve_device", "resolve_dtype", "disable_progress_bars", "quiet_loading"]

#: Set to 1 to see transformers' weight-loading progress bars when the library loads a checkpoint.
PROGRESS_ENV = "QWENGUARD_PROGRESS"


def require_torch() -> Any:
    try:
        import torch
    except ImportError as exc:  # pragma: no cover - exercised only without the extra
        raise MissingDependency.for_extra("local", "torch") from exc
    return torch


def resolve_device(device: str | None) -> str:
    """``"auto"`` picks cuda, then mps, then cpu."""
    torch = require_torch()
    if device in (None, "auto"):
        if torch.cuda.is_available():
            return "cuda"
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return "mps"
        return "cpu"
    # Say it here, in one line: torch's own error comes from deep inside the first .to(device).
    if device.startswith("cuda") and not torch.cuda.is_available():
        why = "this torch build has no CUDA support" if torch.version.cuda is None else "no CUDA device is visible"
        raise ValueError(f"device {device!r} is not available: {why} (torch {torch.__version__}); use 'auto' or 'cpu'")
    if device.startswith("mps") and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ValueError(f"device {device!r} is not available on this machine; use 'auto' or 'cpu'")
    return device


def resolve_dtype(dtype: Any, device: str) -> Any:
    """``"auto"``: bfloat16 on accelerators, float32 on CPU (CPU bf16 matmuls are slow)."""
    torch = require_torch()
    if dtype in (None, "auto"):
        return torch.bfloat16 if device.startswith(("cuda", "mps")) else torch.float32
    if isinstance(dtype, str):
        try:
            return getattr(torch, dtype)
        except AttributeError:
            raise ValueError(f"unknown dtype {dtype!r}") from None
    return dtype


def disable_progress_bars() -> None:
    """No weight-loading progress bars (a command line that prints one verdict)."""
    try:
        from transformers.utils import logging as hf_logging
    except ImportError:
        return
    hf_logging.disable_progress_bar()


@contextmanager
def quiet_loading() -> Iterator[None]:
    """No "Loading weights" progress bar while a checkpoint loads, unless ``QWENGUARD_PROGRESS=1``.

    transformers' switch is process-wide, so it is put back as it was afterwards: an application that
    wants its own bars keeps them for its own loads."""
    try:
        from transformers.utils import logging as hf_logging
    except ImportError:
        yield
        return
    if os.environ.get(PROGRESS_ENV, "") not in ("", "0") or not hf_logging.is_progress_bar_enabled():
        yield
        return
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.enable_progress_bar()
