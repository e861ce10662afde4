"""Guardrails AI: a custom validator on a streaming `Guard`, its check being the shared judge. Own venv:

    /work/peer-venvs/guardrails_ai/bin/python bench/peers/guardrails_ai.py [--quick] [--json]

The validator runs on what Guardrails' default chunking hands it (one sentence at a time). The LLM is
LiteLLM's ``openai/`` provider pointed at the scripted server. ``on_fail="exception"`` raises once the
failing sentence is complete (its words were passed on before); ``on_fail="fix"`` holds each sentence
until it is judged and replaces a failing one with "" (the stream goes on).

Telemetry off: ``HOME`` points at a directory whose ``.guardrailsrc`` has ``enable_metrics=false``, and
``LITELLM_LOCAL_MODEL_COST_MAP=True`` (set below, before guardrails is imported).
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path
from typing import Any

_HOME = Path(tempfile.gettempdir()) / "qwenguard-bench-guardrails-home"
_HOME.mkdir(exist_ok=True)
(_HOME / ".guardrailsrc").write_text("id=qwenguard-bench\nenable_metrics=false\nuse_remote_inferencing=false\n")
os.environ["HOME"] = str(_HOME)
os.environ["LITELLM_LOCAL_MODEL_COST_MAP"] = "True"
os.environ.setdefault("OTEL_SDK_DISABLED", "true")

# This file's name is also the name of a package guardrails imports (guardrails_ai.types): keep this
# directory off the import path so that the package, not this script, is found.
_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]
sys.path.insert(0, str(_HERE.parent))

import streamkit as sk  # noqa: E402
from guardrails import Guard  # noqa: E402
from guardrails.validators import FailResult, PassResult, Validator, register_validator  # noqa: E402

_CURRENT: dict[str, Any] = {"judge": None}


@register_validator(name="qwenguard-bench/judge", data_type="string")
class JudgeValidator(Validator):
    """Fails a chunk the shared judge flags."""

    def _validate(self, value: Any, metadata: dict[str, Any]) -> Any:
        if _CURRENT["judge"].judge(str(value)):
            return FailResult(error_message="flagged by the judge", fix_value="")
        return PassResult()


def _consume(guard: Any, url: str):
    from guardrails.errors import ValidationError

    def consume(c: sk.Consumer) -> None:
        try:
            for outcome in guard(
                model="openai/scripted",
                api_base=url,
                api_key="scripted",
                messages=[{"role": "user", "content": sk.PROMPT}],
                stream=True,
            ):
                c.receive(outcome.validated_output if isinstance(outcome.validated_output, str) else "")
        except ValidationError as exc:  # on_fail="exception": Guardrails' way to stop the stream
            raise sk.Stopped("ValidationError") from exc

    return consume


def variant(on_fail: str) -> sk.Build:
    def build(url: str, judge: Any):
        _CURRENT["judge"] = judge
        return _consume(Guard().use(JudgeValidator(on_fail=on_fail)), url)

    return build


def baseline(url: str):
    return _consume(Guard(), url)


PATHS = [
    sk.PeerPath("guardrails-ai on_fail=exception", variant("exception"), baseline),
    sk.PeerPath("guardrails-ai on_fail=fix", variant("fix"), baseline, note="fix replaces the sentence; no stop"),
]

if __name__ == "__main__":
    sys.exit(sk.run_peer("guardrails-ai", PATHS))
