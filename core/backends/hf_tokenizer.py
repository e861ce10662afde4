"""A Hugging Face tokenizer for a remote guard: ids and windows equal to the local guard's, without the model.

`OpenAIGen` (``Guard.remote(..., tokenizer=...)``) loads only the tokenizer of the served checkpoint, so it can
count tokens exactly, window long inputs the way `TransformersGen` does, and send token ids in completion
mode. transformers is imported here, on first use, never by ``import qwenguard.core``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..errors import MissingDependency, ModelNotFound

__all__ = ["load_tokenizer", "TRANSFORMERS_REQUIREMENT"]

#: What the remote client's ``tokenizer=`` needs: transformers alone, in the range of the ``local`` extra
#: (pyproject.toml). Not the ``local`` extra itself: that one brings torch, which the ``remote`` extra exists to avoid.
TRANSFORMERS_REQUIREMENT = "transformers>=4.56,<6"


def load_tokenizer(
    name_or_path: str | Path, *, revision: str | None = None, local_files_only: bool | None = None
) -> Any:
    """`AutoTokenizer` for ``"demo"``, a checkpoint directory or a hub id (downloads like transformers does)."""
    try:
        from transformers import AutoTokenizer
    except ImportError as exc:
        # Not MissingDependency.for_extra("local", ...): its hint is torch first, then the local extra (rt55c F5).
        raise MissingDependency(
            f"transformers is not installed: a remote guard's tokenizer (Guard.remote(..., tokenizer=...), "
            f'qwenguard eval --tokenizer) needs it alone: pip install "{TRANSFORMERS_REQUIREMENT}"'
        ) from exc
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
