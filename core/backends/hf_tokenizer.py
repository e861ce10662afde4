"""A Hugging Face tokenizer for a remote guard: ids and windows equal to the local guard's, without the model.

`OpenAIGen` (``Guard.remote(..., tokenizer=...)``) loads only the tokenizer of the served checkpoint, so it can
count tokens exactly, window long inputs the way `TransformersGen` does, and send token ids in completion
mode. transformers is imported here, on first use, never by ``import qwenguard.core``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..errors import MissingDependency, ModelNotFound

__all__ = ["load_tokenizer"]


def load_tokenizer(
    name_or_path: str | Path, *, revision: str | None = None, local_files_only: bool | None = None
) -> Any:
    """`AutoTokenizer` for ``"demo"``, a checkpoint directory or a hub id (downloads like transformers does)."""
    try:
        from transformers import AutoTokenizer
    except ImportError as exc:
        raise MissingDependency.for_extra("local", "transformers") from exc
    from ..demo import DEMO_NAMES

    path = DEMO_NAMES.get(str(name_or_path), name_or_path)
    opts: dict[str, Any] = {"revision": revision}
    if local_files_only is not None:
        opts["local_files_only"] = local_files_only
    try:
        return AutoTokenizer.from_pretrained(str(path), **opts)
    except (OSError, ValueError) as exc:
        raise ModelNotFound(
            f"cannot load the tokenizer {str(name_or_path)!r}: not a local directory and not "
            f"downloadable (offline, or a wrong id?)"
        ) from exc
