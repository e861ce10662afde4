"""What an evaluation run is: the dataset's content, the model, the stage filter and the policy.

A prediction cache (and the report beside it) belongs to exactly one run identity. The default output
directory is named after it, so two runs on different data never share one; an ``--out`` directory
that holds another run's predictions is refused with a clear message (``--fresh`` replaces it), so
predictions are never reused for another dataset, model, stage or policy. ``--limit`` is not part of
the identity: a limited run is a prefix of the same run, and the full run resumes from it.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..errors import QwenGuardError

__all__ = ["run_identity", "default_out_dir", "claim_out_dir", "RUN_FILE"]

#: The identity of the run whose files an output directory holds.
RUN_FILE = "run.json"
_DEFAULT_ROOT = Path("qwenguard-eval")
_READ = 1 << 20  # bytes hashed at each end of a large weights file


def _file_digest(path: Path) -> str:
    """sha256 of a file; for files over 8 MiB of its size and first and last MiB (weights of GBs)."""
    h = hashlib.sha256()
    size = path.stat().st_size
    with path.open("rb") as f:
        if size <= 8 * _READ:
            h.update(f.read())
        else:
            h.update(str(size).encode())
            h.update(f.read(_READ))
            f.seek(-_READ, 2)
            h.update(f.read(_READ))
    return h.hexdigest()


def _model_fingerprint(model: str | None) -> dict[str, Any]:
    """A local checkpoint's name and a digest of its config and weights (a retrained "demo" is another model)."""
    from ..demo import DEMO_NAMES

    name = model or "demo"
    path = DEMO_NAMES.get(name) or Path(name).expanduser()
    if not Path(path).is_dir():
        return {"model": name}  # a hub id: the name (and its revision in the HF cache) identifies it
    files = sorted(p for p in Path(path).iterdir() if p.suffix in (".json", ".safetensors", ".bin", ".jinja"))
    return {"model": name, "files": {p.name: _file_digest(p) for p in files}}


def run_identity(
    *, data_path: Path, model: str | None, remote: str | None, remote_mode: str | None, stage: str | None, policy: str
) -> dict[str, Any]:
    """The identity of one evaluation run (JSON-serialisable)."""
    guard = (
        {"remote": remote.rstrip("/"), "model": model, "mode": remote_mode}
        if remote is not None
        else _model_fingerprint(model)
    )
    identity = {
        "data": {"name": data_path.name, "sha256": _file_digest(data_path)},
        "guard": guard,
        "stage": stage,
        "policy": policy,
    }
    identity["id"] = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:12]
    return identity


def default_out_dir(data_path: Path, identity: Mapping[str, Any]) -> Path:
    """``qwenguard-eval/<dataset>-<run id>``: one directory per run identity."""
    stem = re.sub(r"[^A-Za-z0-9_.-]+", "-", data_path.stem).strip("-") or "data"
    return _DEFAULT_ROOT / f"{stem}-{identity['id']}"


def _describe(identity: Mapping[str, Any]) -> str:
    guard = identity.get("guard", {})
    where = guard.get("remote") or "local"
    return (
        f"data {identity.get('data', {}).get('name')} (sha256 {str(identity.get('data', {}).get('sha256'))[:12]}), "
        f"model {guard.get('model')} ({where}), stage {identity.get('stage') or 'all'}, policy {identity.get('policy')}"
    )


def claim_out_dir(out_dir: Path, identity: Mapping[str, Any], *, fresh: bool, owned_files: tuple[str, ...]) -> bool:
    """Make ``out_dir`` this run's: True when it already was (resume). Refuses another run's directory
    unless ``fresh``, which deletes that run's ``owned_files`` first."""
    run_file = out_dir / RUN_FILE
    previous: Mapping[str, Any] | None = None
    if run_file.is_file():
        try:
            previous = json.loads(run_file.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            previous = {}
    elif any((out_dir / name).exists() for name in owned_files):
        previous = {}  # files of a run from before identities were recorded: of unknown origin
    same = previous is not None and previous.get("id") == identity["id"]
    if previous is not None and not same and not fresh:
        theirs = _describe(previous) if previous else "an unidentified earlier run"
        raise QwenGuardError(
            f"{out_dir} holds the predictions of another run ({theirs}); this run is {_describe(identity)}. "
            f"They are not reused: pass another --out (or none, for a directory of this run's own), or --fresh "
            f"to replace them."
        )
    if fresh or not same:
        for name in (*owned_files, RUN_FILE):
            target = out_dir / name
            if target.is_file():
                target.unlink()
    out_dir.mkdir(parents=True, exist_ok=True)
    run_file.write_text(json.dumps(identity, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return same and not fresh
