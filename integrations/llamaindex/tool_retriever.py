"""`GuardedObjectRetriever`: an agent's tool retriever that drops the tools whose descriptions carry harm.

An agent that picks its tools by retrieval (``FunctionAgent(tool_retriever=...)``, a large tool catalogue) is handed
what LlamaIndex's ``ObjectRetriever`` maps the retrieved nodes to, and the mapping finds a tool by its name alone
(``SimpleToolNodeMapping.from_node``): a tool sharing a safe tool's name (an MCP server's, shadowing the app's own),
or an index reloaded with today's tool list (``ObjectIndex.from_objects_and_index``), hands the agent a tool whose
description no check of the nodes read (rt67e F1). So the tools are judged as the model gets them, after the
mapping: each tool's name, description and parameter schema, as untrusted content, and what other readers of the
tool print besides (a ``CodeActAgent``'s Python stub of its function, a provider that sends the parameter schema
whole).
"""

from __future__ import annotations

import asyncio
import inspect
import json
import logging
from collections.abc import Sequence
from typing import Any, Generic, TypeVar

from llama_index.core.base.base_retriever import BaseRetriever
from llama_index.core.objects import ObjectRetriever
from llama_index.core.objects.base_node_mapping import BaseObjectNodeMapping
from llama_index.core.postprocessor.types import BaseNodePostprocessor
from llama_index.core.schema import NodeWithScore, QueryBundle, QueryType, TextNode
from llama_index.core.tools import FunctionTool
from llama_index.core.tools.types import ToolMetadata
from qwenguard.core import Decision, Guard, Policy, Stage, enforce
from qwenguard.core.guard import speaking_as

from ._messages import tools_text
from .postprocessor import OnBlock, anode_decisions, node_decisions
from .retriever import require_retriever_parts

__all__ = ["GuardedObjectRetriever", "tool_text"]

logger = logging.getLogger("qwenguard.llamaindex")

OT = TypeVar("OT")


def tool_text(obj: Any) -> str:
    """A retrieved object as its readers get it: a tool by the schema a provider class sends the model (`tools_text`:
    name, description, parameter schema), its description whatever its length (OpenAI's classes refuse one over 1,024
    characters, others send it), and its own name where the schema's is sanitized (a ReAct header prints it as it
    is); then what other readers print that this leaves out: the parameter schema's own title and description (the
    schema class's docstring) and any other top-level key (`_schema_rest`: GoogleGenAI sends the schema whole), and
    a FunctionTool's Python stub (`_function_stub`: CodeActAgent's system prompt); any other object by its fields
    (`tools_text`)."""
    metadata = getattr(obj, "metadata", None)
    if not isinstance(metadata, ToolMetadata):
        return tools_text(obj)
    spec = metadata.to_openai_tool(skip_length_check=True)
    name = metadata.name or ""
    parts = [tools_text(spec)] if name == spec["function"]["name"] else [name, tools_text(spec)]
    parts += _schema_rest(metadata, spec["function"]["parameters"], parts[-1])
    parts += _function_stub(obj, metadata)
    return "\n".join(parts)


def _schema_rest(metadata: ToolMetadata, parameters: dict[str, Any], judged: str) -> list[str]:
    """The top-level entries of the parameter schema's full JSON schema (``fn_schema.model_json_schema()``, which
    GoogleGenAI sends) that ``parameters`` (``get_parameters_dict``: type, properties, required, definitions) leaves
    out, as JSON: its ``description`` is the schema class's docstring (rt68d F3). An entry whose JSON ``judged``
    already holds (the title that is the tool's name) is left out: nothing is judged twice."""
    schema = metadata.fn_schema
    if schema is None:
        return []
    rest = {
        key: value
        for key, value in schema.model_json_schema().items()
        if key not in parameters and json.dumps(value, ensure_ascii=False, default=str) not in judged
    }
    return [tools_text(rest)] if rest else []


def _function_stub(obj: Any, metadata: ToolMetadata) -> list[str]:
    """What ``CodeActAgent`` prints of a FunctionTool that its metadata does not hold (rt68d F2): the stub
    ``def {fn.__name__}{signature}:`` and ``inspect.getdoc(fn)`` of its ``real_fn`` (the function's own name,
    full signature and docstring, whatever the tool's name and description say), each unless the description
    holds it already (FunctionTool's default description is the signature and the docstring), whitespace aside.
    Nothing for a function CodeActAgent cannot print either (no name, no signature: it raises)."""
    if not isinstance(obj, FunctionTool):
        return []
    try:
        fn = obj.real_fn
        header = f"{fn.__name__}{inspect.signature(fn)!s}"
        docstring = inspect.getdoc(fn) or ""
    except (AttributeError, TypeError, ValueError):
        return []
    said = _spaced(metadata.description or "")
    stub = [f"def {header}:"] if _spaced(header) not in said else []
    if docstring.strip() and _spaced(docstring) not in said:
        stub.append(docstring)
    return stub


def _spaced(text: str) -> str:
    """``text`` with its runs of whitespace one space: a docstring's indentation, which ``inspect.getdoc`` strips."""
    return " ".join(text.split())


def _query(str_or_query_bundle: QueryType) -> QueryBundle:
    if isinstance(str_or_query_bundle, str):
        return QueryBundle(query_str=str_or_query_bundle)
    return str_or_query_bundle


class GuardedObjectRetriever(ObjectRetriever[OT], Generic[OT]):
    """An ``ObjectRetriever`` whose objects (an agent's tools) are judged before they are returned: flagged tools are
    dropped (``on_block="raise"``: `GuardViolation`), as `GuardedRetriever` drops nodes.

    >>> index = ObjectIndex.from_objects(tools, index_cls=VectorStoreIndex)  # doctest: +SKIP
    >>> tool_retriever = GuardedObjectRetriever(
    ...     index.as_node_retriever(similarity_top_k=4), index.object_node_mapping, guard
    ... )  # doctest: +SKIP
    >>> agent = FunctionAgent(tool_retriever=tool_retriever, llm=GuardedLLM(llm=llm, guard=guard))  # doctest: +SKIP

    What is judged is what the agent gets: each tool the mapping returns, its name, description and parameter schema
    as the model reads them, and what CodeActAgent's stub and a provider sending the whole schema print besides
    (`tool_text`), not the index node it was found by (the mapping picks a tool by name).
    A query's tools are judged in batches as `GuardNodePostprocessor` judges nodes (one guard call for up to the
    guard's ``max_checks``; a tool too large to judge is dropped); the guard's verdict cache answers a tool judged
    before, and a changed description is judged again. ``aretrieve`` (the agents' call) judges with the guard's async
    API and runs the node postprocessors' async twins: nothing is judged on the event loop.
    """

    def __init__(
        self,
        retriever: BaseRetriever,
        object_node_mapping: BaseObjectNodeMapping[OT],
        guard: Guard,
        *,
        node_postprocessors: list[BaseNodePostprocessor] | None = None,
        on_block: OnBlock = "drop",
    ) -> None:
        require_retriever_parts(retriever, guard, on_block)
        super().__init__(retriever, object_node_mapping, node_postprocessors)
        self.guard = guard
        self.on_block: OnBlock = on_block

    @speaking_as("await tool_retriever.aretrieve(...) (not retrieve)")
    def retrieve(self, str_or_query_bundle: QueryType) -> list[OT]:
        query_bundle = _query(str_or_query_bundle)
        objects = self._objects(self._retriever.retrieve(query_bundle), query_bundle)
        if not objects:
            return []
        decisions = node_decisions(
            self.guard, _judged_nodes(objects), self.on_block, query_bundle.query_str, _asked_stage(self.guard.policy)
        )
        return self._kept(objects, decisions)

    async def aretrieve(self, str_or_query_bundle: QueryType) -> list[OT]:
        query_bundle = _query(str_or_query_bundle)
        nodes = await self._retriever.aretrieve(query_bundle)
        # LlamaIndex's own aretrieve runs the sync ``postprocess_nodes``: a GuardNodePostprocessor there judged on
        # the event loop (rt66h F1).
        for postprocessor in self._node_postprocessors:
            nodes = await postprocessor.apostprocess_nodes(nodes, query_bundle=query_bundle)
        objects = [self._object_node_mapping.from_node(n.node) for n in nodes]
        if not objects:
            return []
        # The tools are read on a worker thread: a catalogue's schemas can be long.
        judged = await asyncio.to_thread(_judged_nodes, objects)
        decisions = await anode_decisions(
            self.guard, judged, self.on_block, query_bundle.query_str, _asked_stage(self.guard.policy)
        )
        return self._kept(objects, decisions)

    def _objects(self, nodes: list[NodeWithScore], query_bundle: QueryBundle) -> list[OT]:
        for postprocessor in self._node_postprocessors:
            nodes = postprocessor.postprocess_nodes(nodes, query_bundle=query_bundle)
        return [self._object_node_mapping.from_node(n.node) for n in nodes]

    def _kept(self, objects: Sequence[OT], decisions: Sequence[Decision]) -> list[OT]:
        """The objects the guard lets through; a blocked one is dropped (logged) or raises, per ``on_block``. A tool's
        description is what the model reads before it acts, as `GuardedLLM(screen_tools=True)` judges it: decided
        under the stricter of the retrieval and prompt stages' policies, so that a retrieval stage loosened for the
        pages a RAG app reads (``mode="loose"``, ``on_error="allow"``) does not let a flagged tool through (rt67l2 F1),
        nor one turned off (`_asked_stage`). With both stages off a tool passes unjudged, as a prompt or a page would."""
        kept: list[OT] = []
        policy = self.guard.policy
        for obj, found in zip(objects, decisions):
            decision = policy.decide_stricter(found, Stage.RETRIEVAL, Stage.PROMPT)
            if decision.allowed:
                kept.append(obj)
            elif self.on_block == "raise":
                enforce(decision)
            else:
                logger.info("qwenguard dropped tool %s: %s", _name(obj), decision.describe())
        return kept


def _asked_stage(policy: Policy) -> Stage:
    """The stage a query's tools are asked under: the retrieval stage, or the prompt stage where the retrieval stage is
    off and the prompt stage on: a check asked under a disabled stage is answered "disabled" unread, which no other
    stage's policy can decide again, so every tool passed unjudged (rt68d F1). With both off, tools pass unjudged."""
    if policy.enabled(Stage.RETRIEVAL) or not policy.enabled(Stage.PROMPT):
        return Stage.RETRIEVAL
    return Stage.PROMPT


def _judged_nodes(objects: Sequence[Any]) -> list[TextNode]:
    """Each object's text (`tool_text`) as a node, for the node batching of `node_decisions`; its id is a random
    one, which `node_text` leaves out."""
    return [TextNode(text=tool_text(obj)) for obj in objects]


def _name(obj: Any) -> str:
    metadata = getattr(obj, "metadata", None)
    return str(getattr(metadata, "name", None) or type(obj).__name__)
