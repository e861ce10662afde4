"""torch for the local backends: imported on first use (so `import qwenguard.core` stays light), device and
dtype resolution, and the one thread that runs the local models' CPU work (`run_on_torch_thread`)."""

from __future__ import annotations

import asyncio
import atexit
import functools
import os
import queue
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from contextlib import contextmanager
from typing import Any, TypeVar

from ..errors import MissingDependency

__all__ = [
    "require_torch",
    "resolve_device",
    "resolve_dtype",
    "disable_progress_bars",
    "quiet_loading",
    "run_on_torch_thread",
    "arun_on_torch_thread",
    "on_torch_thread",
    "is_torch_thread",
]

R = TypeVar("R")

#: Set to 1 to see transformers' weight-loading progress bars when the library loads a checkpoint.
PROGRESS_ENV = "QWENGUARD_PROGRESS"


def require_torch() -> Any:
    try:
        import torch
    except ImportError as exc:  # pragma: no cover - exercised only without the extra
        raise MissingDependency.for_extra("local", "torch") from exc
    return torch


def refuse_meta_device(device: object) -> None:
    """torch's "meta" device holds shapes, no weights: a model loads there and every check fails deep in torch, let
    through under ``on_error="allow"`` (rt57c F4). Refused before anything loads, in any case ("META", "meta:0")."""
    if str(device).partition(":")[0].strip().lower() == "meta":
        raise ValueError(f"device {device!r} holds no weights, so the guard could not answer: pick cpu, cuda or auto")


def resolve_device(device: str | None) -> str:
    """``"auto"`` picks cuda, then mps, then cpu."""
    refuse_meta_device(device)
    torch = require_torch()
    if device in (None, "auto"):
        if torch.cuda.is_available():
            return "cuda"
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return "mps"
        return "cpu"
    if isinstance(device, torch.device):
        device = str(device)
    if not isinstance(device, str):
        raise TypeError(f"device must be a str such as 'auto', 'cpu' or 'cuda:1', got {type(device).__name__}")
    # Say it here, in one line, before the weights load: torch's own error ("Expected one of cpu, cuda, ipu,
    # ... device type at start of device string: gpu") comes from deep inside the first .to(device).
    try:
        torch.device(device)
    except (RuntimeError, ValueError):
        raise ValueError(
            f"device {device!r} is not a device name torch knows; use 'auto', 'cpu', 'cuda', 'cuda:1' or 'mps'"
        ) from None
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
        # torch first: without it no model loads (the error says so in one line), and transformers
        # would print its own "PyTorch was not found" line on import.
        import torch  # noqa: F401
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


# ================================================================================================
# One thread for the CPU model work of every local model in the process
# ================================================================================================
class _TorchThread:
    """Runs callables one at a time on one daemon thread (``qwenguard-torch``), started on first use.

    Why one: torch's CPU kernels run on OpenMP (libgomp), which keeps a team of worker threads for every
    thread that has run a parallel kernel. Once the process holds more of them than CPUs (a Gen and a
    Stream model, each with its own batcher thread, or a benchmark's second arm on the main thread), libgomp
    cuts how long idle workers spin, and every kernel then pays to wake them: a 0.6B check measured 10-20%
    slower on 2 cores (docs/performance.md). With every local model's work on this thread, qwenguard keeps
    one team however many models it runs. A call made on this thread runs inline (no deadlock on reentry);
    after shutdown has begun, calls run on the caller's thread."""

    _STOP = object()

    def __init__(self) -> None:
        self._reset()
        if hasattr(os, "register_at_fork"):  # a forked child has no such thread: it starts its own
            os.register_at_fork(after_in_child=self._reset)

    def _reset(self) -> None:
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._stopping = False

    def submit(self, fn: Callable[..., R], *args: Any) -> Future[R]:
        future: Future[R] = Future()
        with self._lock:
            inline = self._stopping or threading.current_thread() is self._thread
            if not inline:
                if self._thread is None:
                    self._thread = threading.Thread(target=self._work, name="qwenguard-torch", daemon=True)
                    self._thread.start()
                    atexit.register(self.stop)  # after the batchers' handler is registered: runs before it
                self._queue.put((future, fn, args))
        if inline:
            _run_into(future, fn, args)
        return future

    def _work(self) -> None:
        while True:
            job = self._queue.get()
            if job is self._STOP:
                return
            future, fn, args = job
            if future.set_running_or_notify_cancel():
                _run_into(future, fn, args)
            del job, future, fn, args  # hold nothing (a model, a batch) while idle

    def stop(self, timeout: float = 5.0) -> None:
        """Run what is queued, then end the thread (at interpreter exit: a daemon thread left inside a
        torch kernel while the interpreter finalizes aborts the process)."""
        with self._lock:
            if self._stopping:
                return
            self._stopping = True
            thread = self._thread
            if thread is not None:
                self._queue.put(self._STOP)
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)


def _run_into(future: Future[Any], fn: Callable[..., Any], args: tuple[Any, ...]) -> None:
    try:
        result = fn(*args)
    except BaseException as exc:  # noqa: BLE001 - the caller re-raises it
        future.set_exception(exc)
    else:
        future.set_result(result)


_TORCH_THREAD = _TorchThread()


def run_on_torch_thread(fn: Callable[..., R], *args: Any) -> R:
    """``fn(*args)`` on the thread that runs every local qwenguard model's CPU work, waiting for it.

    For an application's own CPU torch work in a process that runs a local guard: on this thread it
    shares the guard's OpenMP team instead of adding one (see `_TorchThread`; it then also waits its turn
    behind the guard's forwards, and they behind it). ``fn`` must not call a local guard: that check would
    wait for this very thread, so it fails at once (`MicroBatcher.submit` raises `GuardUnavailable`, which
    a `Guard` turns into its ``on_error`` decision, closed by default)."""
    return _TORCH_THREAD.submit(fn, *args).result()


async def arun_on_torch_thread(fn: Callable[..., R], *args: Any) -> R:
    """Async twin of `run_on_torch_thread`: the event loop is not blocked while ``fn`` runs."""
    return await asyncio.wrap_future(_TORCH_THREAD.submit(fn, *args))


def on_torch_thread(model: Any, fn: Callable[..., R]) -> Callable[..., R]:
    """``fn`` made to run on the torch thread when ``model`` is on a CPU (a GPU model's work stays on the
    caller's thread: it launches kernels and uses no OpenMP team to speak of)."""
    device = getattr(getattr(model, "device", None), "type", None)
    if device is None:
        first = next(iter(model.parameters()), None) if hasattr(model, "parameters") else None
        device = first.device.type if first is not None else "cpu"
    if device != "cpu":
        return fn
    runner = functools.partial(run_on_torch_thread, fn)
    runner.runs_on_torch_thread = True  # type: ignore[attr-defined]  # read by MicroBatcher.submit
    return runner


def is_torch_thread() -> bool:
    """Whether the calling thread is the torch thread (work it would wait for there could never run)."""
    return threading.current_thread() is _TORCH_THREAD._thread
