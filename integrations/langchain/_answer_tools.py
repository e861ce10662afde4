"""Structured output delivered as a tool call: the answer, judged whatever ``check_tool_calls`` says.

``with_structured_output(..., method="function_calling")`` (the default of several providers) and ``create_agent``'s
``ToolStrategy`` ask the model for the schema's tool: its call's arguments are the object the application reads.
``check_tool_calls=False`` switches off the screen of the calls the model makes on tools (read-only ones, say), not
the screen of the answer (rt52d F4): these are the names whose calls are judged as the answer all the same.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = ["answer_tools", "strategy_tools"]


def answer_tools(options: Any) -> frozenset[str]:
    """The schema's tool name in a chat model run's ``options`` (what a callback's ``on_chat_model_start`` gets):
    langchain-core's ``ls_structured_output_format``, set by ``with_structured_output``, its schema titled with
    the tool's name (``convert_to_json_schema``)."""
    found = options.get("ls_structured_output_format") if isinstance(options, Mapping) else None
    schema = found.get("schema") if isinstance(found, Mapping) else None
    title = schema.get("title") if isinstance(schema, Mapping) else None
    return frozenset({title}) if isinstance(title, str) and title else frozenset()


def strategy_tools(response_format: Any) -> frozenset[str]:
    """The tools whose call is ``create_agent``'s structured response for a model call's ``response_format``: a
    ``ToolStrategy``'s schemas, or a bare schema's (``AutoStrategy``; a model with native structured output answers
    in text instead, judged as text). None for ``ProviderStrategy`` (text) or no structured output."""
    if response_format is None:
        return frozenset()
    try:
        from langchain.agents.structured_output import AutoStrategy, ProviderStrategy, ToolStrategy
    except ImportError:  # langchain-core without langchain: no create_agent, no strategy
        return frozenset()
    if isinstance(response_format, ProviderStrategy):
        return frozenset()
    try:
        if not isinstance(response_format, ToolStrategy):
            schema = response_format.schema if isinstance(response_format, AutoStrategy) else response_format
            response_format = ToolStrategy(schema=schema)
        return frozenset(spec.name for spec in response_format.schema_specs)
    except Exception:  # noqa: BLE001 - a schema LangChain cannot turn into a tool is never asked for as one
        return frozenset()
