"""`GuardCallbackHandler`: screening through LlamaIndex's legacy callback system.

Legacy callback handlers run inline and their exceptions propagate, so this handler *can* stop a
query: at the query string, at the retrieved nodes, at the LLM's input and at its answer. It is
coarser than `GuardedLLM`: the callback payloads carry no stream chunks and no tool calls (a streamed
answer is judged once, when it has ended, after its text was delivered), and callbacks are
synchronous, so async paths wait on the guard inside the event loop. Prefer `GuardedLLM` plus
`GuardNodePostprocessor`; use this handler where changing the LLM object is not an option.

An LLM call inside a query engine receives the framework's formatted prompt (the QA template, the
retrieved context and the question in one message). The handler never judges that text as the
user's prompt: the template's variables arrive just before, in the TEMPLATING event, so the query
variable is judged as the prompt and the context variables as untrusted documents; an LLM call under
a query with no template is judged by the query string (its context was judged at retrieval).

The event carries the variables the caller passed, not what the template substituted: a function
mapping computes text it does not show, and a renamed variable is left out. So the template's text is
formatted again here with the variables as judged, and looked for in the LLM's input: whatever the
model reads outside of it, beyond the LLM's own system prompt and role labels, is judged as untrusted
content (all of the input when the template's text is not found there). A template whose call never came
(it failed to format) is left behind in the context: one found in the input neither as formatted nor by its
own wording is not this call's, and the call is judged alone (another request's variables are not its own).
"""

from __future__ import annotations

import re
import string
from collections.abc import Iterable
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

from llama_index.core.base.llms.generic_utils import messages_to_prompt
from llama_index.core.base.llms.types import MessageRole
from llama_index.core.callbacks import CBEventType, EventPayload
from llama_index.core.callbacks.base_handler import BaseCallbackHandler
from llama_index.core.prompts.utils import format_string
from llama_index.core.schema import NodeWithScore, QueryBundle
from qwenguard.core import Guard, enforce
from qwenguard.core.formats.conversations import prompt_conversation, response_conversation, untrusted_conversation
from qwenguard.core.verdict import Stage

from .._common import Bounded, require_guard
from ._messages import (
    Checks,
    GuardMessage,
    judge,
    message_text,
    plan_inputs,
    plan_template,
    variable_checks,
    variable_texts,
)
from .postprocessor import node_text

__all__ = ["SCREENED_EVENTS", "GuardCallbackHandler"]

#: What the handler screens by default: (event type, "start"/"end").
SCREENED_EVENTS = frozenset(
    {
        (CBEventType.QUERY, "start"),
        (CBEventType.RETRIEVE, "end"),
        (CBEventType.LLM, "start"),
        (CBEventType.LLM, "end"),
    }
)
#: Open events whose state the handler keeps (every request's together); the oldest go first.
MAX_OPEN_EVENTS = 4096

# Role labels `messages_to_prompt` writes before each message's text: the framework's, not the caller's.
_ROLE_NAMES = "|".join(re.escape(role.value) for role in MessageRole)
_ROLE_LABELS = re.compile(rf"^(?:{_ROLE_NAMES}):[ ]?", re.MULTILINE)


@dataclass
class _Templating:
    """The latest TEMPLATING event in this context, of handler ``handler``. The LLM call that follows it was
    formatted from it (LLM.predict/stream fire TEMPLATING right before the call); the template's text is
    looked for in the LLM's input to be sure (`_wording_in`): a call that failed to format leaves it behind. (Parent
    event ids cannot tell: a trace left open by an earlier exception gives the two events different parents, and
    a request's calls outside any event share the root with the next request's.)"""

    handler: int
    template: str  # the template's text, with its ``{variables}``
    variables: dict[str, Any]  # as the caller passed them (those the template names)
    system_prompt: str  # the LLM's own, which it adds to the formatted template


_TEMPLATE: ContextVar[_Templating | None] = ContextVar("qwenguard_template", default=None)


class GuardCallbackHandler(BaseCallbackHandler):
    """Raise `GuardViolation` from inside LlamaIndex when a query, retrieved node, LLM input or LLM
    answer is blocked.

    >>> Settings.callback_manager = CallbackManager([GuardCallbackHandler(guard)])  # doctest: +SKIP

    ``events``: which ``(CBEventType, "start"|"end")`` points to screen (default `SCREENED_EVENTS`).
    A blocked retrieved node stops the query (callbacks cannot drop nodes; use
    `GuardNodePostprocessor` for that). A streamed answer is screened once, when the stream ends,
    after its text was delivered: for streams use `GuardedLLM`.
    """

    def __init__(self, guard: Guard, events: Iterable[tuple[CBEventType, str]] = SCREENED_EVENTS) -> None:
        require_guard(guard)
        self.guard = guard
        self.events = frozenset((CBEventType(t), w) for t, w in events)
        for _, when in self.events:
            if when not in ("start", "end"):
                raise ValueError(f"event points are 'start' or 'end', got {when!r}")
        super().__init__(event_starts_to_ignore=[], event_ends_to_ignore=[])
        # Open events: the parent of each, and the query string of QUERY events (an LLM call under a
        # query answers that query); the prompt each open LLM event's answer is judged against.
        # Bounded: LlamaIndex sends a streamed answer's LLM end event only once the stream is read to its
        # end, so a client that leaves before would leave its prompt here for good.
        self._parents: Bounded[str, str] = Bounded(MAX_OPEN_EVENTS)
        self._queries: Bounded[str, str] = Bounded(MAX_OPEN_EVENTS)
        self._prompts: Bounded[str, list[GuardMessage]] = Bounded(MAX_OPEN_EVENTS)

    # Both integrations name their handler GuardCallbackHandler: given to LangChain by mistake (an auto-import's
    # slip), this one died on an AttributeError deep in langchain-core, blaming a ``raise_error`` the docs say the
    # handler sets (rt61a F2). LangChain reads its handlers' ``ignore_*`` switches, ``on_*`` hooks, ``raise_error`` and
    # ``run_inline``: each is refused with the class to use, and LangChain raises it on.
    def __getattr__(self, name: str) -> Any:
        if name.startswith(("ignore_", "on_")) or name in ("raise_error", "run_inline"):
            raise TypeError(
                "qwenguard: this GuardCallbackHandler is LlamaIndex's (qwenguard.integrations.llamaindex) and was "
                "given to LangChain: use qwenguard.integrations.langchain.GuardCallbackHandler (or "
                "AsyncGuardCallbackHandler) in a LangChain config's callbacks"
            )
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def on_event_start(
        self,
        event_type: CBEventType,
        payload: dict[str, Any] | None = None,
        event_id: str = "",
        parent_id: str = "",
        **kwargs: Any,
    ) -> str:
        payload = payload or {}
        if event_type is CBEventType.EXCEPTION:
            # Reports a failure (maybe our own); it has no end event. A template logged before it formats no call.
            if (template := _TEMPLATE.get()) is not None and template.handler == id(self):
                _TEMPLATE.set(None)
            return event_id
        self._parents[event_id] = parent_id
        try:
            self._start(event_type, payload, event_id, parent_id)
        except BaseException:
            # A start that raises gets no end event: forget the event now.
            self._forget(event_id)
            raise
        return event_id

    def _start(self, event_type: CBEventType, payload: dict[str, Any], event_id: str, parent_id: str) -> None:
        if event_type is CBEventType.QUERY:
            query = _query_text(payload.get(EventPayload.QUERY_STR))
            if query is not None:
                self._queries[event_id] = query
            if query and (event_type, "start") in self.events:
                enforce(self.guard.check_prompt(query))
        elif event_type is CBEventType.TEMPLATING:
            variables = payload.get(EventPayload.TEMPLATE_VARS)
            if isinstance(variables, dict):
                template = payload.get(EventPayload.TEMPLATE)
                system_prompt = payload.get(EventPayload.SYSTEM_PROMPT)
                _TEMPLATE.set(
                    _Templating(
                        id(self),
                        template if isinstance(template, str) else "",
                        dict(variables),
                        system_prompt if isinstance(system_prompt, str) else "",
                    )
                )
        elif event_type is CBEventType.LLM:
            checks, prompt = self._llm_input(payload, parent_id)
            self._prompts[event_id] = prompt
            if checks and (event_type, "start") in self.events:
                for decision in judge(self.guard, checks):
                    enforce(decision)

    def _forget(self, event_id: str) -> list[GuardMessage] | None:
        self._parents.pop(event_id, None)
        self._queries.pop(event_id, None)
        return self._prompts.pop(event_id, None)

    def on_event_end(
        self,
        event_type: CBEventType,
        payload: dict[str, Any] | None = None,
        event_id: str = "",
        **kwargs: Any,
    ) -> None:
        payload = payload or {}
        prompt = self._forget(event_id)
        # An EXCEPTION payload reports a failure (possibly our own GuardViolation): never raise again.
        if EventPayload.EXCEPTION in payload or (event_type, "end") not in self.events:
            return
        if event_type is CBEventType.RETRIEVE:
            nodes: list[NodeWithScore] = list(payload.get(EventPayload.NODES) or [])
            # With the metadata a window swap shows the LLM, and what the app gets with the node.
            texts = [node_text(n.node, self.guard.max_chars) for n in nodes]
            if texts:
                for decision in self.guard.check_documents(None, texts):
                    enforce(decision)
        elif event_type is CBEventType.LLM:
            text = _answer_text(payload)
            if text and text.strip():
                if prompt is None:  # its start was dropped (`MAX_OPEN_EVENTS`): the end carries the model's input
                    prompt = self._llm_prompt(payload, "")[1]
                enforce(self.guard.check(response_conversation(prompt, text), Stage.RESPONSE))

    # -- LLM inputs ---------------------------------------------------------------------------
    def _query_above(self, event_id: str) -> str | None:
        """The query string of the nearest open QUERY event above ``event_id``."""
        for _ in range(64):  # event trees are shallow; bounded in case of a broken chain
            query = self._queries.get(event_id)  # `get`, not `in` then `[]`: another request may evict between
            if query is not None:
                return query
            parent = self._parents.get(event_id)
            if parent is None:
                return None
            event_id = parent
        return None

    def _llm_input(self, payload: dict[str, Any], parent_id: str) -> tuple[Checks, list[GuardMessage]]:
        """The checks of an LLM call's input, and the prompt its answer is judged against."""
        template = _TEMPLATE.get()
        if template is None or template.handler != id(self):
            return self._llm_prompt(payload, parent_id)
        _TEMPLATE.set(None)
        texts = variable_texts(template.variables, self.guard.max_chars)
        # The template formatted again with the text judged (plain values and bytes as LlamaIndex prints them),
        # and what the model reads besides: the LLM's own additions, or text no variable showed.
        formatted = format_string(template.template, **{**template.variables, **texts})
        read = _input_layout(payload)
        at = read.find(formatted) if formatted else -1
        if at < 0 and _wording_in(template.template, read) is False:
            # Not this call's template: one whose call failed to format (a function mapping raised) and left it in
            # the context, which a thread or task serving the next request still holds. That request is judged
            # alone, not with another user's variables.
            return self._llm_prompt(payload, parent_id)
        outside = read if at < 0 else read[:at] + "\n" + read[at + len(formatted) :]
        unshown: Checks = []
        own = outside.replace(template.system_prompt, "") if template.system_prompt else outside
        if _ROLE_LABELS.sub("", own).strip():
            unshown.append((Stage.PROMPT, untrusted_conversation(outside, "formatted prompt")))
        plan = plan_template(texts)
        if plan is not None and at >= 0:
            return plan.checks + unshown, plan.prompt
        # No query variable (every variable is still judged), or not this call's template: judged as any LLM call.
        checks, prompt = self._llm_prompt(payload, parent_id)
        return (plan.checks if plan is not None else variable_checks(texts)) + checks + unshown, prompt

    def _llm_prompt(self, payload: dict[str, Any], parent_id: str) -> tuple[Checks, list[GuardMessage]]:
        query = self._query_above(parent_id)
        if query is not None and query.strip():
            # A formatted prompt under a query: its question was judged at the query and its
            # context at retrieval; the answer is judged against the question.
            conversation = prompt_conversation(query)
            return [(Stage.PROMPT, conversation)], conversation
        messages = payload.get(EventPayload.MESSAGES)
        if messages:
            plan = plan_inputs(messages)
            return plan.checks, plan.prompt
        prompt = payload.get(EventPayload.PROMPT)
        if isinstance(prompt, str):
            conversation = prompt_conversation(prompt)
            return ([(Stage.PROMPT, conversation)] if prompt.strip() else []), conversation
        return [], prompt_conversation("")

    def start_trace(self, trace_id: str | None = None) -> None:
        return None

    def end_trace(self, trace_id: str | None = None, trace_map: dict[str, list[str]] | None = None) -> None:
        return None


def _wording_in(template: str, text: str) -> bool | None:
    """Whether the template's own wording (its text between variables) is in ``text``, line by line and in order: a
    call formatted from it, whatever its variables printed and however the LLM lays out messages (a completion
    model's ``messages_to_prompt`` writes other role labels). None when it cannot tell: a template of variables
    alone, or one that does not parse."""
    try:
        literals = [literal for literal, *_ in string.Formatter().parse(template)]
    except ValueError:
        return None
    lines = [line.strip() for literal in literals for line in _ROLE_LABELS.sub("", literal).splitlines()]
    at = 0
    for line in filter(None, lines):
        found = text.find(line, at)
        if found < 0:
            return False
        at = found + len(line)
    return True if any(lines) else None


def _query_text(query: Any) -> str | None:
    if isinstance(query, QueryBundle):
        return query.query_str
    return query if isinstance(query, str) else None


def _input_layout(payload: dict[str, Any]) -> str:
    """The LLM's input, messages laid out as a chat template's text is (``role: text`` lines)."""
    messages = payload.get(EventPayload.MESSAGES)
    if messages:
        return messages_to_prompt(messages)
    prompt = payload.get(EventPayload.PROMPT)
    return prompt if isinstance(prompt, str) else ""


def _answer_text(payload: dict[str, Any]) -> str | None:
    response = payload.get(EventPayload.RESPONSE)
    if response is not None and getattr(response, "message", None) is not None:
        return message_text(response.message)
    completion = payload.get(EventPayload.COMPLETION)
    if completion is not None:
        return getattr(completion, "text", None) or (completion if isinstance(completion, str) else None)
    return None
