"""Where a checkpoint comes from: a demo name, a local directory, or the Hugging Face hub — and a fast,
one-line failure when the hub cannot be reached.

Left to itself, huggingface_hub retries an unreachable hub for about a minute (twelve "Retrying in
8s" lines) before the load fails. `resolve_checkpoint` instead uses the local cache when the
checkpoint is there, says at once when ``HF_HUB_OFFLINE`` is set, and otherwise probes the hub's
host with one short TCP connect before downloading, so an offline machine gets `ModelNotFound` in
about `HUB_PROBE_TIMEOUT_S` seconds; a hub that takes the connection but does not answer (a stalled proxy
or mirror, or one that trickles its answer a byte at a time) gets it `HUB_ANSWER_TIMEOUT_S` after the look-up
began, whatever requests huggingface_hub sends on its way (its metadata request has no timeout of its own, and
version 2.4 sends another request first, with its own 3 s): the exchange runs in a daemon thread, and the load
stops waiting for it at the deadline (rt55c F2).
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from ..errors import ModelNotFound

__all__ = [
    "resolve_checkpoint",
    "checkpoint_config",
    "hub_offline_reason",
    "hub_silence_reason",
    "HUB_PROBE_TIMEOUT_S",
    "HUB_ANSWER_TIMEOUT_S",
]

#: A reachable hub answers a TCP connect in well under a second; three means it is not there.
HUB_PROBE_TIMEOUT_S = 3.0

#: Wall-clock seconds a hub id that is not cached may spend on the hub before the download starts: the TCP probe
#: and every request of the metadata exchange together (huggingface_hub's own default for a file's metadata is
#: 10 s, HF_HUB_ETAG_TIMEOUT). Past it the load fails in one line; the download itself is not bounded.
HUB_ANSWER_TIMEOUT_S = 10.0

_TRUE = {"1", "true", "yes", "on"}


def _endpoint() -> str:
    return os.environ.get("HF_ENDPOINT", "https://huggingface.co").rstrip("/")


def hub_offline_reason(timeout: float = HUB_PROBE_TIMEOUT_S) -> str | None:
    """Why the hub cannot be used right now (``HF_HUB_OFFLINE`` set, or no TCP connection), or ``None``. Behind a
    proxy the environment names for the hub (``HTTPS_PROXY``, ``ALL_PROXY``, not bypassed by ``NO_PROXY``), no
    direct connection is tried: huggingface_hub goes through the proxy, where a network that only has one resolves
    no name directly (every hub id was refused as unreachable: rt68f F2); the metadata request (`_silence_reason`,
    through the proxy) is what tells then."""
    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in _TRUE:
        return "HF_HUB_OFFLINE is set"
    url = urlsplit(_endpoint())
    host = url.hostname or "huggingface.co"
    port = url.port or (443 if url.scheme == "https" else 80)
    if _proxied(url.scheme, host):
        return None
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return None
    except OSError as exc:
        return f"cannot reach {url.scheme}://{host}:{port} ({type(exc).__name__}: {exc})"


def _proxied(scheme: str, host: str) -> bool:
    """Does the environment send requests for ``scheme://host`` through a proxy (the standard library's reading of
    ``*_PROXY`` and ``NO_PROXY``, which requests and httpx, huggingface_hub's clients, read alike for a host name)?"""
    proxies = urllib.request.getproxies()
    if not (proxies.get(scheme) or proxies.get("all")):
        return False
    return not urllib.request.proxy_bypass_environment(host, proxies)  # type: ignore[attr-defined]


def hub_silence_reason(name: str, revision: str | None, timeout: float | None = None) -> str | None:
    """Why the hub, reachable over TCP, is of no use: it did not answer the checkpoint's metadata request within
    ``timeout`` wall-clock seconds (default `HUB_ANSWER_TIMEOUT_S`; a stalled proxy, mirror or hub), or ``None``
    once it answered, whatever the answer (a 404 or a gated repo is reported by the download itself)."""
    bound = HUB_ANSWER_TIMEOUT_S if timeout is None else timeout
    return _silence_reason(name, revision, bound, time.monotonic() + bound)


def _silence_reason(name: str, revision: str | None, bound: float, deadline: float) -> str | None:
    """`hub_silence_reason`, waiting until ``deadline`` (monotonic) and wording the bound as ``bound`` seconds.

    huggingface_hub's request timeout is per read: a hub that never answers hung the first load without bound
    (rt50a F8), one that trickles bytes still does, and the extra requests huggingface_hub makes first come on
    top (rt55c F2). So the exchange runs in a daemon thread and we stop waiting at the deadline. An abandoned
    exchange writes nothing to the model cache (it only reads metadata) and holds no lock a later load needs; it
    ends with its own timeouts, or with the process."""
    try:
        from huggingface_hub import HfApi
    except ImportError:  # pragma: no cover - transformers depends on it
        return None
    endpoint = _endpoint()
    silent = f"the hub at {endpoint} accepted the connection but did not answer within {bound:g} s"
    outcome: list[BaseException | None] = []

    def ask() -> None:
        try:
            # Its own timeout too, so that an abandoned exchange with a silent hub ends soon after the deadline.
            HfApi(endpoint=endpoint).model_info(name, revision=revision, timeout=max(bound, 0.1))
        except BaseException as exc:  # noqa: BLE001 - handed to the waiting thread, which judges it
            outcome.append(exc)
        else:
            outcome.append(None)

    worker = threading.Thread(target=ask, name="qwenguard-hub-metadata", daemon=True)
    worker.start()
    worker.join(max(deadline - time.monotonic(), 0.0))
    if not outcome:
        return silent
    exc = outcome[0]
    # Only a silence matters here; any answer (a 404, a gated repo) is the download's to report.
    if exc is not None and (isinstance(exc, TimeoutError) or "Timeout" in type(exc).__name__):
        return silent
    return None


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
    line saying what to do: within `HUB_PROBE_TIMEOUT_S` when the hub is unreachable, and within
    `HUB_ANSWER_TIMEOUT_S` (wall clock, from this call) when it does not answer.
    """
    bound = HUB_ANSWER_TIMEOUT_S
    deadline = time.monotonic() + bound  # from the call: the cache look-up first imports huggingface_hub
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
    why = (
        "local_files_only=True"
        if local_files_only
        else hub_offline_reason(min(HUB_PROBE_TIMEOUT_S, max(deadline - time.monotonic(), 0.01)))
    )
    if why is not None:
        raise ModelNotFound(
            f"cannot load {kind} checkpoint {label!r}: not in the local Hugging Face cache and the hub "
            f"cannot be used ({why}). Download it where the hub is reachable, pass a checkpoint "
            f"directory, or use {demo!r} for the embedded demo guard."
        )
    silent = _silence_reason(label, revision, bound, deadline)
    if silent is not None:
        raise ModelNotFound(
            f"cannot download {kind} checkpoint {label!r}: {silent}. Check HF_ENDPOINT and the proxy settings, "
            f"pass a checkpoint directory, or use {demo!r} for the embedded demo guard."
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


#: A tokenizer transformers can build: the fast tokenizer's one file, a BPE vocabulary and its merges, or a
#: SentencePiece model. Without any of them transformers 5 builds an empty tokenizer without a word, and every
#: check then failed deep in torch (rt50a F7).
TOKENIZER_FILE_SETS = (("tokenizer.json",), ("vocab.json", "merges.txt"), ("tokenizer.model",))


def _has_tokenizer(path: Path) -> bool:
    return any(all((path / name).is_file() for name in names) for names in TOKENIZER_FILE_SETS)


def _safetensors_problem(file: Path) -> str | None:
    """What is wrong with a .safetensors file's framing (cut short, not safetensors), or ``None``: its header
    (8 bytes of length, then that much JSON) and the end of the last tensor, read without loading a weight."""
    try:
        size = file.stat().st_size
        with file.open("rb") as f:
            head = f.read(8)
            if len(head) < 8:
                return f"{size} bytes, shorter than a safetensors header"
            length = int.from_bytes(head, "little")
            if length > size - 8:
                return f"its header says {length} bytes of metadata, the file has {size - 8} after it (cut short)"
            header = json.loads(f.read(length))
    except (OSError, ValueError) as exc:
        return f"not a readable safetensors file: {type(exc).__name__}: {exc}"
    if not isinstance(header, dict):
        return "not a safetensors file (its header is not a JSON object)"
    ends = [
        entry["data_offsets"][1]
        for entry in header.values()
        if isinstance(entry, dict) and isinstance(entry.get("data_offsets"), list) and len(entry["data_offsets"]) == 2
    ]
    need = 8 + length + max((e for e in ends if isinstance(e, int)), default=0)
    if need > size:
        return f"{size} bytes, its tensors need {need} (cut short)"
    return None


def checkpoint_config(path: Path, label: str, kind: str) -> dict[str, Any]:
    """``path``'s config.json, once the directory is checked to hold a checkpoint: `ModelNotFound` (one
    line) for a directory without config.json, weights or tokenizer files, or with a safetensors file cut
    short, before torch or transformers load."""
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
    if not _has_tokenizer(path):
        raise ModelNotFound(
            f"cannot load {kind} checkpoint {label!r}: the directory {str(path)!r} has no tokenizer files "
            f"(tokenizer.json, or vocab.json and merges.txt, next to its config.json; an interrupted download "
            f"or a copy of the weights only?). Download the checkpoint again or copy its tokenizer files in."
        )
    for weights in sorted(path.glob("*.safetensors")):
        problem = _safetensors_problem(weights)
        if problem is not None:
            raise ModelNotFound(
                f"cannot load {kind} checkpoint {label!r}: the weights file {str(weights)!r} is damaged "
                f"({problem}; an interrupted download?). Download the checkpoint again."
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


def cached_revision(name: str) -> str | None:
    """The commit of the snapshot the local Hugging Face cache resolves ``name`` to (what a guard loads from it), or
    None when it is not cached (yet), is no hub id, or huggingface_hub is not installed. Never goes online."""
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(name, local_files_only=True)).name
    except Exception:  # noqa: BLE001 - not cached, not a hub id, no huggingface_hub: unknown
        return None
