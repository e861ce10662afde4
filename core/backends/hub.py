"""Where a checkpoint comes from: a demo name, a local directory, or the Hugging Face hub — and a fast,
one-line failure when the hub cannot be reached.

Left to itself, huggingface_hub retries an unreachable hub for about a minute (twelve "Retrying in
8s" lines) before the load fails. `resolve_checkpoint` instead uses the local cache when the
checkpoint is there, says at once when ``HF_HUB_OFFLINE`` is set, and otherwise probes the hub's
host with one short TCP connect before downloading, so an offline machine gets `ModelNotFound` in
about `HUB_PROBE_TIMEOUT_S` seconds.
"""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from ..errors import ModelNotFound

__all__ = ["resolve_checkpoint", "checkpoint_config", "hub_offline_reason", "HUB_PROBE_TIMEOUT_S"]

#: A reachable hub answers a TCP connect in well under a second; three means it is not there.
HUB_PROBE_TIMEOUT_S = 3.0

_TRUE = {"1", "true", "yes", "on"}


def _endpoint() -> str:
    return os.environ.get("HF_ENDPOINT", "https://huggingface.co").rstrip("/")


def hub_offline_reason(timeout: float = HUB_PROBE_TIMEOUT_S) -> str | None:
    """Why the hub cannot be used right now (``HF_HUB_OFFLINE`` set, or no TCP connection), or ``None``."""
    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in _TRUE:
        return "HF_HUB_OFFLINE is set"
    url = urlsplit(_endpoint())
    host = url.hostname or "huggingface.co"
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return None
    except OSError as exc:
        return f"cannot reach {url.scheme}://{host}:{port} ({type(exc).__name__}: {exc})"


def _cached(name: str, revision: str | None) -> Path | None:
    try:
        from huggingface_hub import snapshot_download
    except ImportError:  # pragma: no cover - transformers depends on it
        return None
    try:
        return Path(snapshot_download(name, revision=revision, local_files_only=True))
    except Exception:  # noqa: BLE001 - any miss means "not cached"
        return None


def resolve_checkpoint(
    name_or_path: str | Path,
    *,
    kind: str,
    demo_names: dict[str, Path],
    revision: str | None = None,
    local_files_only: bool | None = None,
) -> Path:
    """A local directory holding the checkpoint ``name_or_path`` (downloading it if needed and possible).

    ``kind`` ("Qwen3Guard-Gen", "Qwen3Guard-Stream") only words the error. Raises `ModelNotFound` with one
    line saying what to do: within `HUB_PROBE_TIMEOUT_S` when the hub is unreachable.
    """
    label = str(name_or_path)
    if label in demo_names:
        return demo_names[label]
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        return path
    demo = _demo_name(kind)
    looks_like_id = label.count("/") == 1 and not label.startswith((".", "/", "~")) and not path.exists()
    if not looks_like_id:
        raise ModelNotFound(
            f"cannot load {kind} checkpoint {label!r}: no such directory (and not a hub id 'org/name'). "
            f"Use {demo!r} for the embedded demo guard."
        )
    cached = _cached(label, revision)
    if cached is not None:
        return cached
    why = "local_files_only=True" if local_files_only else hub_offline_reason()
    if why is not None:
        raise ModelNotFound(
            f"cannot load {kind} checkpoint {label!r}: not in the local Hugging Face cache and the hub "
            f"cannot be used ({why}). Download it where the hub is reachable, pass a checkpoint "
            f"directory, or use {demo!r} for the embedded demo guard."
        )
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(label, revision=revision))
    except Exception as exc:  # noqa: BLE001 - wrong id, gated repo, network drop: one line, cause chained
        raise ModelNotFound(
            f"cannot download {kind} checkpoint {label!r} from {_endpoint()}: "
            f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        ) from exc


def _demo_name(kind: str) -> str:
    return "demo-stream" if "Stream" in kind else "demo"


#: Weight files transformers loads from a checkpoint directory (sharded ones come with an index).
WEIGHT_PATTERNS = ("*.safetensors", "*.safetensors.index.json", "pytorch_model*.bin", "model*.bin")


def checkpoint_config(path: Path, label: str, kind: str) -> dict[str, Any]:
    """``path``'s config.json, once the directory is checked to hold a checkpoint: `ModelNotFound` (one
    line) for a directory without config.json or without weights, before torch or transformers load."""
    config_file = path / "config.json"
    if not config_file.is_file():
        raise ModelNotFound(
            f"cannot load {kind} checkpoint {label!r}: the directory has no config.json (a checkpoint "
            f"directory holds config.json, the tokenizer files and the weights). "
            f"Use {_demo_name(kind)!r} for the embedded demo guard."
        )
    if not any(next(path.glob(pattern), None) is not None for pattern in WEIGHT_PATTERNS):
        raise ModelNotFound(
            f"cannot load {kind} checkpoint {label!r}: the directory has no weights "
            f"(*.safetensors or pytorch_model*.bin next to its config.json)"
        )
    try:
        data = json.loads(config_file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelNotFound(
            f"cannot load {kind} checkpoint {label!r}: config.json is not readable JSON ({exc})"
        ) from exc
    if not isinstance(data, dict):
        raise ModelNotFound(f"cannot load {kind} checkpoint {label!r}: config.json is not a JSON object")
    return data
