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


def test_a_component_loads_its_own_serialized_form(guard: Guard) -> None:
    """rt50f F4: ``extra="forbid"`` refused a component's own ``to_dict`` (its ``class_name`` and computed fields,
    which key IngestionPipeline's cache): only keys that are none of those are refused."""
    transform = GuardTransform(guard=guard)
    assert GuardTransform.from_dict(dict(transform.to_dict()), guard=guard).guard is guard
    for name in ("postprocessor", "transform", "llm"):
        made = MAKERS[name](guard)
        dumped = {k: v for k, v in made.to_dict().items() if k not in ("llm", "callback_manager")}
        extra = {"llm": MockFunctionCallingLLM()} if name == "llm" else {}
        assert type(made).model_validate({**dumped, **extra, "guard": guard}).guard is guard


def test_pickling_a_component_leaves_the_live_one_guarded(guard: Guard) -> None:
    """rt50f F4 (b): LlamaIndex's __getstate__ dropped the (unpicklable) guard from the live object's own __dict__:
    after pickle.dumps (IngestionPipeline with num_workers > 1, a saved Context) the original had no guard."""
    import pickle

    from llama_index.core.memory import ChatMemoryBuffer
    from qwenguard.integrations.llamaindex import GuardedMemory

    made = [MAKERS[name](guard) for name in ("postprocessor", "transform", "llm")]
    made.append(GuardedMemory(ChatMemoryBuffer.from_defaults(), guard))
    for component in made:
        pickle.dumps(component)
        assert component.guard is guard, type(component).__name__
