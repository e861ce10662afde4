"""What an evaluation run is: the dataset's content and the model.

A prediction cache (and the report beside it) belongs to exactly one run identity. The default output
directory is named after it, so two runs on different data never share one; an ``--out`` directory
that holds another run's predictions is refused with a clear message (``--fresh`` replaces it), so
predictions are never reused for another dataset or model. ``--limit``, ``--stage`` and ``--policy`` are not
part of it: predictions do not depend on them (both mappings are always computed, and rows are keyed by their
stage), so a limited, one-stage or other-policy run shares the full run's predictions.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import secrets
import stat
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

from ..backends.transport import without_password
from ..errors import QwenGuardError

__all__ = ["run_identity", "default_out_dir", "claim_out_dir", "release_out_dir", "open_owned", "RUN_FILE"]

#: The identity of the run whose files an output directory holds.
RUN_FILE = "run.json"
_DEFAULT_ROOT = Path("qwenguard-eval")
_READ = 1 << 20  # bytes hashed at each end of a large weights file


def refuse_link(path: Path) -> None:
    if path.is_symlink():
        raise QwenGuardError(
            f"{path} is a symbolic link; eval writes that file itself and never through a link (it could point "
            f"outside the output directory): remove the link, or pass another --out"
        )


@contextmanager
def open_owned(path: Path, mode: str = "w") -> Iterator[IO[Any]]:
    """Open one of the files eval owns for writing (``"w"`` text, ``"wb"`` bytes, ``"a"`` text appended: the
    predictions cache), never through a symbolic link: a link planted at its name is refused (`QwenGuardError`)
    instead of writing, or creating, the file it points to (``O_NOFOLLOW`` where the platform has it, so a link
    planted after the check is refused too).

    ``"w"`` and ``"wb"`` write a new file beside it, renamed onto its name when the ``with`` block ends without an
    error: a write that fails part way (a string no encoder writes, a full disk, an interrupt) leaves the file
    there before as it was, not one cut short (rt69g F1)."""
    refuse_link(path)
    if "a" in mode:
        with _opened(path, os.O_APPEND, mode) as f:
            yield f
        return
    # A name of its own in the same folder (a rename is atomic within one file system); O_EXCL: never an existing one.
    part = path.with_name(f".{path.name}.{secrets.token_hex(6)}.part")
    try:
        with _opened(part, os.O_EXCL, mode) as f:
            yield f
            _keep_mode(path, f.fileno())
        refuse_link(path)  # a link planted while writing is the user's to remove, not to replace
        os.replace(part, path)
    except BaseException:
        part.unlink(missing_ok=True)
        raise


def _keep_mode(path: Path, fd: int) -> None:
    """The new file gets the permissions of the one it replaces: a report the user made private (``chmod 600``)
    became readable by all at the next run, a new file's default (rt69l F2)."""
    try:
        old = os.stat(path, follow_symlinks=False)
    except FileNotFoundError:
        return
    if stat.S_ISREG(old.st_mode):
        os.fchmod(fd, stat.S_IMODE(old.st_mode))


def _opened(path: Path, how: int, mode: str) -> IO[Any]:
    """``path`` opened for writing (created if need be, ``how``: appended, or made new) never through a link."""
    flags = os.O_WRONLY | os.O_CREAT | how | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_BINARY", 0)
    try:
        fd = os.open(path, flags, 0o666)
    except OSError as exc:
        if path.is_symlink():  # ELOOP: planted between the check and the open
            refuse_link(path)
        raise exc
    if "b" in mode:
        return os.fdopen(fd, "wb")
    return os.fdopen(fd, "a" if "a" in mode else "w", encoding="utf-8")


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


def _digest_cache() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "qwenguard" / "eval-digests.json"


def _whole_digest(path: Path) -> str:
    """sha256 of the whole file: any change to a checkpoint's weights is another model (a retrain that keeps the
    first and last MiB of each shard too). A large file's digest is remembered by its path, size, mtime and inode
    (in the user's cache directory, best effort), so a 16 GB checkpoint is read once per change, not per run."""
    st = path.stat()
    if st.st_size <= 8 * _READ:
        return _file_digest(path)
    key = f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}|{st.st_ino}"
    store = _digest_cache()
    try:
        known: dict[str, str] = json.loads(store.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        known = {}
    if isinstance(known, dict) and isinstance(known.get(key), str):
        return known[key]
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(8 * _READ):
            h.update(chunk)
    digest = h.hexdigest()
    try:
        known = known if isinstance(known, dict) else {}
        known[key] = digest
        store.parent.mkdir(parents=True, exist_ok=True)
        tmp = store.with_name(f"{store.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(known), encoding="utf-8")
        tmp.replace(store)
    except OSError:
        pass  # a read-only home: computed again next time
    return digest


def _hub_revision(name: str) -> str | None:
    """The commit the local Hugging Face cache resolves ``name`` to (what the guard loads), or None when it is not
    cached (yet)."""
    from ..backends.hub import cached_revision

    return cached_revision(name)


def _model_fingerprint(model: str | None) -> dict[str, Any]:
    """A local checkpoint's name and a digest of every file of it (a retrained "demo" is another model); a hub
    id's name and the revision it resolves to (a newer download under the same name is another model)."""
    from ..demo import DEMO_NAMES

    name = model or "demo"
    path = DEMO_NAMES.get(name) or Path(name).expanduser()
    if not Path(path).is_dir():
        return {"model": name, "revision": _hub_revision(name)}
    # Every file: weights, config, tokenizer (merges.txt, tokenizer.model), remote code (*.py).
    files = sorted(p for p in Path(path).iterdir() if p.is_file() and not p.name.startswith("."))
    return {"model": name, "files": {p.name: _whole_digest(p) for p in files}}


def needs_revision(identity: Mapping[str, Any]) -> bool:
    """Whether the identity names a hub model not in the local cache yet: its revision is known once it is loaded."""
    guard = identity.get("guard", {})
    return "revision" in guard and guard["revision"] is None


def masked_remote(remote: str) -> str:
    """``--remote``'s value as written to files and messages: each replica's URL without its password."""
    return ",".join(without_password(u.strip()).rstrip("/") for u in remote.split(",") if u.strip())


def run_identity(*, data_path: Path, model: str | None, remote: str | None, remote_mode: str | None) -> dict[str, Any]:
    """The identity of one evaluation run (JSON-serialisable). It is written to ``run.json``, so a ``--remote``
    URL's password is never part of it."""
    guard = (
        {"remote": masked_remote(remote), "model": model, "mode": remote_mode}
        if remote is not None
        else _model_fingerprint(model)
    )
    identity: dict[str, Any] = {"data": {"name": data_path.name, "sha256": _file_digest(data_path)}, "guard": guard}
    identity["id"] = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:12]
    return identity


def default_out_dir(data_path: Path, identity: Mapping[str, Any]) -> Path:
    """``qwenguard-eval/<dataset>-<run id>``: one directory per run identity."""
    stem = re.sub(r"[^A-Za-z0-9_.-]+", "-", data_path.stem).strip("-") or "data"
    return _DEFAULT_ROOT / f"{stem}-{identity['id']}"


def _describe(identity: Mapping[str, Any]) -> str:
    guard = identity.get("guard", {})
    # Masked again: a run.json written before passwords were left out of it.
    where = masked_remote(str(guard["remote"])) if guard.get("remote") else "local"
    model = guard.get("model") or ("the server's only model" if guard.get("remote") else None)
    revision = f" revision {str(guard['revision'])[:12]}" if guard.get("revision") else ""
    return (
        f"data {identity.get('data', {}).get('name')} (sha256 {str(identity.get('data', {}).get('sha256'))[:12]}), "
        f"model {model}{revision} ({where})"
    )


def claim_out_dir(
    out_dir: Path,
    identity: Mapping[str, Any],
    *,
    fresh: bool,
    owned_files: tuple[str, ...],
    data_path: Path | None = None,
) -> bool:
    """Make ``out_dir`` this run's: True when it already was (resume). Refuses another run's directory
    unless ``fresh``, which deletes that run's ``owned_files`` first; refuses always a ``data_path`` that is one
    of those files (the dataset would be deleted, or overwritten by the report). A symbolic link at any of those
    names is refused, with or without ``fresh``: it is not this run's file, and writing would follow it."""
    run_file = out_dir / RUN_FILE
    if data_path is not None:
        for name in (*owned_files, RUN_FILE):
            target = out_dir / name
            if target.exists() and target.resolve() == data_path.resolve():
                raise QwenGuardError(
                    f"{out_dir} holds your dataset {data_path.name} under a name the report writes ({name}); "
                    f"pass another --out, or rename the dataset"
                )
    for name in (*owned_files, RUN_FILE):
        refuse_link(out_dir / name)
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
    with open_owned(run_file) as f:
        f.write(json.dumps(identity, indent=2, sort_keys=True) + "\n")
    return same and not fresh


def release_out_dir(made: list[Path]) -> None:
    """Undo the claim of folders this run made (``made``: the output folder first, then the parents made with
    it): the run file goes, and each folder if nothing else is in it."""
    (made[0] / RUN_FILE).unlink(missing_ok=True)
    for folder in made:
        try:
            folder.rmdir()
        except OSError:  # something else was written there meanwhile: keep it
            return
