"""A misspelt option is an error naming it, not silently dropped (rt50a F4).

`GuardNodePostprocessor(guard, on_violation="raise")` (LangChain's name for `on_block`) was accepted and ignored:
the node was dropped where the app asked for a raise. LlamaIndex components are pydantic models that took any
keyword; qwenguard's forbid the ones they do not have."""

from __future__ import annotations

import pytest
from llama_index.core.bridge.pydantic import ValidationError
from llama_index.core.llms.mock import MockFunctionCallingLLM
from qwenguard.core import Guard
from qwenguard.integrations.llamaindex import GuardedLLM, GuardEventHandler, GuardNodePostprocessor, GuardTransform

MAKERS = {
    "postprocessor": lambda guard, **kw: GuardNodePostprocessor(guard=guard, **kw),
    "transform": lambda guard, **kw: GuardTransform(guard=guard, **kw),
    "llm": lambda guard, **kw: GuardedLLM(llm=MockFunctionCallingLLM(), guard=guard, **kw),
    "event_handler": lambda guard, **kw: GuardEventHandler(guard, **kw),
}


@pytest.mark.parametrize("typo", [{"on_violation": "raise"}, {"holdbak": 64}], ids=["on_violation", "holdbak"])
@pytest.mark.parametrize("name", list(MAKERS))
def test_a_misspelt_option_is_refused_by_name(guard: Guard, name: str, typo: dict) -> None:
    with pytest.raises(ValidationError, match=next(iter(typo))):
        MAKERS[name](guard, **typo)


@pytest.mark.parametrize("name", list(MAKERS))
def test_the_components_still_build_with_their_own_options(guard: Guard, name: str) -> None:
    assert MAKERS[name](guard) is not None
