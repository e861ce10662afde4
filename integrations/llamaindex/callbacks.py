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
own wording is not this call's, and the call is judged alone (another request's variables are not its own); nor
is one whose LLM method (``predict``, ``stream`` and their async twins, which log it) has returned. A call a
function mapping makes while the method formats the template is judged alone too; the template waits for the
method's own call.
A `RichPromptTemplate` logs its Jinja text: rendered as LlamaIndex renders it to be found; Jinja's wording proves
nothing (it loops and branches), so one of this call not found has its variables judged with the call (the
fail-closed side).

A chat template's own messages can be the conversation: the context chat engines write the history (a
client's ``chat_history`` among it) between their system message and ``{query_str}``. So each non-system
message of the template is judged by role, as read (`_template_turns`), except the template's wording around
the variables (a system message or the last user message holding one: its variables are judged by variable). The
files the model reads in the input's messages beside their text (a templated ``DocumentBlock(data=b"{doc}")``, a Jinja
filter's document or image: no variable's text shows them) are judged in their turn's role, as the chat path reads them.

A synthesizer can hand back text no LLM wrote whole (``accumulate`` joins its answers): the response a
SYNTHESIZE or QUERY event ends with is judged as the answer to its query, unless it is an answer already judged
under that event (most modes return the last LLM answer as it is).
"""

from __future__ import annotations

import hashlib
import inspect
import re
import string
from bisect import bisect_left
from collections.abc import Iterable
from contextvars import ContextVar
from dataclasses import dataclass
from types import FrameType
from typing import Any

from llama_index.core.base.llms.generic_utils import messages_to_prompt
from llama_index.core.base.llms.types import ChatMessage, MessageRole
from llama_index.core.callbacks import CBEventType, EventPayload
from llama_index.core.callbacks.base_handler import BaseCallbackHandler
from llama_index.core.prompts import PromptTemplate, RichPromptTemplate
from llama_index.core.prompts.utils import SafeFormatter
from llama_index.core.schema import NodeWithScore, QueryBundle
from qwenguard.core import Guard, enforce
from qwenguard.core.formats.conversations import prompt_conversation, response_conversation, untrusted_conversation
from qwenguard.core.verdict import Stage

from .._common import Bounded, require_guard
from ._messages import (
    QUERY_VARIABLES,
    Checks,
    GuardMessage,
    file_turns,
    joined_variables,
    judge,
    message_text,
    plan_inputs,
    plan_template,
    role_of,
    variable_checks,
    variable_texts,
)
from .postprocessor import node_decisions

__all__ = ["SCREENED_EVENTS", "GuardCallbackHandler"]

#: What the handler screens by default: (event type, "start"/"end").
SCREENED_EVENTS = frozenset(
    {
        (CBEventType.QUERY, "start"),
        (CBEventType.RETRIEVE, "end"),
        (CBEventType.LLM, "start"),
        (CBEventType.LLM, "end"),
        (CBEventType.SYNTHESIZE, "end"),
        (CBEventType.QUERY, "end"),
    }
)
#: Open events whose state the handler keeps (every request's together); the oldest go first.
MAX_OPEN_EVENTS = 4096

# Role labels `messages_to_prompt` writes before each message's text: the framework's, not the caller's.
_ROLE_NAMES = "|".join(re.escape(role.value) for role in MessageRole)
_ROLE_LABELS = re.compile(rf"^(?:{_ROLE_NAMES}):[ ]?", re.MULTILINE)
# The turns of a chat template laid out for a completion model: a role label opening a line.
_TURN_LABELS = re.compile(rf"^({_ROLE_NAMES}): ", re.MULTILINE)
# The placeholders LlamaIndex's SafeFormatter replaces.
_FIELDS = re.compile(r"\{([^{}]+)\}")
# banks' Jinja tag that asks a model for text while the template renders.
_COMPLETION_TAG = re.compile(r"\{%[-+]?\s*completion\b")
# The LLM methods that format a template for the call ``predict`` and ``stream`` (and their async twins) make.
_FORMATTING = frozenset({"_get_prompt", "_get_messages"})
_SYSTEM_ROLES = frozenset({MessageRole.SYSTEM.value, MessageRole.DEVELOPER.value})
# What `messages_to_prompt` closes its text with.
_LAST_TURN = f"\n{MessageRole.ASSISTANT.value}: "


@dataclass
class _Templating:
    """The latest TEMPLATING event in this context, of handler ``handler``. The LLM call that follows it was
    formatted from it (LLM.predict/stream fire TEMPLATING right before the call), while the LLM method that logged it
    runs (``call``, on the stack at the LLM event); a call that failed to format leaves it behind, its method
    returned. A template of unknown ``call`` is looked for in the LLM's input to be sure (`_wording_in`). (Parent
    event ids cannot tell: a trace left open by an earlier exception gives the two events different parents, and
    a request's calls outside any event share the root with the next request's.)"""

    handler: int
    template: str  # the template's text, with its ``{variables}``
    variables: dict[str, Any]  # as the caller passed them (those the template names)
    system_prompt: str  # the LLM's own, which it adds to the formatted template
    call: FrameType | None  # the frame of the LLM method that logged it (`_template_call`, `_made_by`); None: unknown


_TEMPLATE: ContextVar[_Templating | None] = ContextVar("qwenguard_template", default=None)


class GuardCallbackHandler(BaseCallbackHandler):
    """Raise `GuardViolation` from inside LlamaIndex when a query, retrieved node, LLM input, LLM
    answer or a synthesizer's response is blocked.

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
        # The query of each open SYNTHESIZE event, and the answers judged under each open SYNTHESIZE or QUERY
        # event (fingerprints): its response is judged unless it is one of them.
        self._synthesizing: Bounded[str, str] = Bounded(MAX_OPEN_EVENTS)
        self._answers: Bounded[str, set[bytes]] = Bounded(MAX_OPEN_EVENTS)

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
            self._answers[event_id] = set()
            if query and (event_type, "start") in self.events:
                enforce(self.guard.check_prompt(query))
        elif event_type is CBEventType.SYNTHESIZE:
            self._synthesizing[event_id] = _query_text(payload.get(EventPayload.QUERY_STR)) or ""
            self._answers[event_id] = set()
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
                        _template_call(),
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
        self._synthesizing.pop(event_id, None)
        self._answers.pop(event_id, None)
        return self._prompts.pop(event_id, None)

    def on_event_end(
        self,
        event_type: CBEventType,
        payload: dict[str, Any] | None = None,
        event_id: str = "",
        **kwargs: Any,
    ) -> None:
        payload = payload or {}
        parent = self._parents.get(event_id)
        query = (
            self._synthesizing.get(event_id) if event_type is CBEventType.SYNTHESIZE else self._queries.get(event_id)
        )
        answers = self._answers.get(event_id)
        prompt = self._forget(event_id)
        # An EXCEPTION payload reports a failure (possibly our own GuardViolation): never raise again.
        if EventPayload.EXCEPTION in payload or (event_type, "end") not in self.events:
            return
        if event_type is CBEventType.RETRIEVE:
            nodes: list[NodeWithScore] = list(payload.get(EventPayload.NODES) or [])
            # With the metadata a window swap shows the LLM, and what the app gets with the node; in batches, as
            # the postprocessor judges them (`node_decisions`): a node too large to judge alone raises.
            if nodes:
                for decision in node_decisions(self.guard, [n.node for n in nodes], "raise"):
                    enforce(decision)
        elif event_type is CBEventType.LLM:
            text = _answer_text(payload)
            if text and text.strip():
                if prompt is None:  # its start was dropped (`MAX_OPEN_EVENTS`): the end carries the model's input
                    prompt = self._llm_prompt(payload, "")[1]
                enforce(self.guard.check(response_conversation(prompt, text), Stage.RESPONSE))
                self._answered(parent, _answer_key(text))
        elif event_type in (CBEventType.SYNTHESIZE, CBEventType.QUERY):
            response = payload.get(EventPayload.RESPONSE)
            # A text response; a stream's answer is judged when its LLM call ends (no text here yet).
            text = getattr(response, "response", None)
            if isinstance(text, str) and text.strip():
                key = _answer_key(text)
                if answers is None or key not in answers:
                    # Text no judged answer was: ``accumulate`` joins its answers, each judged alone; a custom
                    # synthesizer may build any text. Judged whole, as the answer to the query, before it is returned.
                    enforce(self.guard.check(response_conversation(query or "", text), Stage.RESPONSE))
                self._answered(parent, key)

    def _answered(self, event_id: str | None, key: bytes) -> None:
        """Note an answer judged (``key``) in every open SYNTHESIZE or QUERY event at or above ``event_id``."""
        for _ in range(64):  # event trees are shallow; bounded in case of a broken chain
            if event_id is None:
                return
            answers = self._answers.get(event_id)
            if answers is not None:
                answers.add(key)
            event_id = self._parents.get(event_id)

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
        made = _made_by(template.call) if template.call is not None else True
        if made is None:
            # A call made while the template formats (a function mapping asks a model): not the template's call,
            # which is still to come and finds the template waiting.
            return self._llm_prompt(payload, parent_id)
        _TEMPLATE.set(None)
        if not made:
            # Not this call's template: its LLM method returned without a call (a function mapping raised as it
            # formatted) and left it in the context, which a thread or task serving the next request still holds
            # (rt63h F4). That request is judged alone, for a Jinja template too: never with another's variables.
            return self._llm_prompt(payload, parent_id)
        texts = variable_texts(template.variables, self.guard.max_chars)
        # The template formatted again with the text judged (plain values and bytes as LlamaIndex prints them),
        # and what the model reads besides: the LLM's own additions, or text no variable showed.
        formatted, fields = _format_fields(template.template, {**template.variables, **texts})
        read = _input_layout(payload)
        at = read.find(formatted) if formatted else -1
        # A RichPromptTemplate logs its Jinja text, which no `{name}` formatting reproduces (rt63f F1).
        jinja = at < 0 and _jinja_text(template.template, template.variables)
        if jinja:
            # Jinja may print a value that is not a string its own way (an attribute, a loop): the text judged by
            # variable is then not all the model reads, and all of it is judged (as `GuardedLLM` judges such a call).
            rendered = (
                _rendered(template.template, template.variables) if _printed_as_text(template.variables) else None
            )
            at = read.find(rendered) if rendered else -1
            formatted, fields = (rendered or "", []) if at >= 0 else (formatted, fields)
        elif at < 0 and _wording_in(template.template, read) is False:
            # Not this call's template: one whose call failed to format (a function mapping raised) and left it in
            # the context, which a thread or task serving the next request still holds. That request is judged
            # alone, not with another user's variables. (Not for Jinja: its wording can loop, branch or lie outside
            # the chat messages it renders, so its absence proves nothing; its variables are judged: fail-closed.)
            return self._llm_prompt(payload, parent_id)
        outside = read if at < 0 else read[:at] + "\n" + read[at + len(formatted) :]
        unshown: Checks = []
        own = outside.replace(template.system_prompt, "") if template.system_prompt else outside
        if _ROLE_LABELS.sub("", own).strip():
            unshown.append((Stage.PROMPT, untrusted_conversation(outside, "formatted prompt")))
        plan = plan_template(texts)
        # A request split across variables, judged whole (rt62f N1).
        joined = _joined(template.template, texts, jinja=jinja)
        # The files the model reads in the template's messages, which no variable's text and no layout shows: a
        # templated binary block (``DocumentBlock(data=b"{doc}")``), a Jinja filter's document or image (rt69e).
        filed = plan_inputs(
            file_turns(payload.get(EventPayload.MESSAGES) or []),
            screen_system=True,
            latest_prompt=False,
            max_chars=self.guard.max_chars,
        )
        if plan is not None and at >= 0:
            # A Jinja template's text is the application's, its variables judged by variable, as GuardedLLM judges
            # it (where its values landed is not known here: its messages are not read as a conversation).
            turns = [] if jinja else _template_turns(payload, formatted, fields, at)
            said = plan_inputs(turns, latest_prompt=False, max_chars=self.guard.max_chars)
            return plan.checks + joined + said.checks + filed.checks + unshown, plan.prompt
        # No query variable (every variable is still judged), or not this call's template: judged as any LLM call.
        checks, prompt = self._llm_prompt(payload, parent_id)
        by_variable = plan.checks if plan is not None else variable_checks(texts)
        return by_variable + joined + checks + filed.checks + unshown, prompt

    def _llm_prompt(self, payload: dict[str, Any], parent_id: str) -> tuple[Checks, list[GuardMessage]]:
        query = self._query_above(parent_id)
        messages = payload.get(EventPayload.MESSAGES)
        if query is not None and query.strip():
            # A formatted prompt under a query: its question was judged at the query and its
            # context at retrieval; the answer is judged against the question. The files its messages carry (an
            # image a multimodal engine built from a node, a user's upload) are read as the template path reads
            # them (`file_turns`), its text never: the framework's template is not the user's prompt (rt70c F1).
            conversation = prompt_conversation(query)
            filed = plan_inputs(
                file_turns(messages or []), screen_system=True, latest_prompt=False, max_chars=self.guard.max_chars
            )
            return [(Stage.PROMPT, conversation), *filed.checks], conversation
        if messages:
            plan = plan_inputs(messages, max_chars=self.guard.max_chars)
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


def _template_call() -> FrameType | None:
    """The frame of the LLM method that logs the TEMPLATING event being handled: LlamaIndex logs it in
    ``LLM._log_template_data`` (an override's too), called by ``predict``, ``stream``, ``apredict`` or ``astream``,
    which then makes the call. None for an event logged otherwise, or where Python shows no frames."""
    frame = inspect.currentframe()
    while frame is not None and frame.f_code.co_name != "_log_template_data":
        frame = frame.f_back
    while frame is not None and frame.f_code.co_name == "_log_template_data":
        frame = frame.f_back
    return frame


def _made_by(call: FrameType) -> bool | None:
    """Whether the LLM call being handled is the one the LLM method ``call`` makes from its template: True when
    ``call`` is on the stack here (an awaited coroutine's frame is on its awaiter's stack), False when the method has
    returned; None for a call made while the method formats the template (`LLM._get_prompt` or ``_get_messages``
    lies between: a function mapping that asks a model)."""
    frame = inspect.currentframe()
    formatting = False
    while frame is not None:
        if frame is call:
            return None if formatting else True
        formatting = formatting or frame.f_code.co_name in _FORMATTING
        frame = frame.f_back
    return False


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


def _jinja_text(template: str, variables: dict[str, Any]) -> bool:
    """Whether ``template`` is a `RichPromptTemplate`'s Jinja text: Jinja reads a variable of the event in it (a
    ``{name}`` template's text is Jinja's plain text, but for a doubled-brace ``{{ literal }}``)."""
    if not variables or not ("{{" in template or "{%" in template):
        return False
    try:
        read = RichPromptTemplate(template).template_vars
    except Exception:  # not Jinja (a plain template's JSON example in doubled braces)
        return False
    return not set(variables).isdisjoint(read)


def _printed_as_text(variables: dict[str, Any]) -> bool:
    """Whether Jinja prints every one of ``variables`` as the text judged for it (`variable_texts`): a string (not a
    subclass, which may print other text), or a plain value."""
    return all(type(value) in (str, int, float, bool, type(None)) for value in variables.values())


def _rendered(template: str, variables: dict[str, Any]) -> str | None:
    """A Jinja template's text rendered as `RichPromptTemplate` renders it with the event's variables (a chat template's
    messages laid out as `_input_layout` lays them out); None when it does not render, or would call a model to
    render (banks' ``{% completion %}`` tag: the guard does not ask the application's model again)."""
    if _COMPLETION_TAG.search(template):
        return None
    try:
        return RichPromptTemplate(template, template_vars=list(variables)).format(
            messages_to_prompt=messages_to_prompt, **variables
        )
    except Exception:  # a value the event shows that the template cannot read (it read the one passed)
        return None


def _joined(template: str, texts: dict[str, str], *, jinja: bool = False) -> Checks:
    """The variables read as the user's text, judged once more joined as the event's template text places them
    (`joined_variables`; a Jinja text's in the order it prints them, as `GuardedLLM` joins a `RichPromptTemplate`'s);
    none for a template string LlamaIndex's own parser refuses."""
    try:
        placed = RichPromptTemplate(template, template_vars=list(texts)) if jinja else PromptTemplate(template)
    except (ValueError, IndexError):
        return []
    return joined_variables(texts, next((k for k in QUERY_VARIABLES if k in texts), None), placed)


def _format_fields(template: str, values: dict[str, Any]) -> tuple[str, list[tuple[int, int]]]:
    """``template`` formatted as LlamaIndex formats it (`SafeFormatter`: a placeholder with no value stays), and
    where each value landed in that text (start, end), in order."""
    formatter = SafeFormatter(format_dict=values)
    parts: list[str] = []
    fields: list[tuple[int, int]] = []
    at = size = 0
    for match in _FIELDS.finditer(template):
        parts.append(template[at : match.start()])
        size += match.start() - at
        value = formatter.format(match.group(0))  # this one placeholder, as SafeFormatter replaces it
        if match.group(1) in values:
            fields.append((size, size + len(value)))
        parts.append(value)
        size += len(value)
        at = match.end()
    parts.append(template[at:])
    return "".join(parts), fields


def _template_turns(
    payload: dict[str, Any], formatted: str, fields: list[tuple[int, int]], at: int
) -> list[ChatMessage]:
    """The messages of a chat template found at ``at`` in the LLM's input laid out (`_input_layout`), as the model
    reads them: a chat model's own messages, or the turns a completion model reads in its prompt (a role label
    opening a line starts one, for the model as here; none in a text template). The template's wording that holds a variable (``fields``: where
    the values landed in ``formatted``), its system messages and its last user message, is left empty: its variables
    are judged by variable, its own text is the framework's."""
    spans: list[tuple[ChatMessage | str, int, int]] = []  # a turn, and where its text lies in ``formatted``
    messages = payload.get(EventPayload.MESSAGES)
    if messages:
        start = 0
        for message in messages:
            # Laid out as `_input_layout` lays it out: "role: text", messages joined by a line break.
            one = messages_to_prompt([message])[: -len(_LAST_TURN)]
            begin, end = start + len(message.role.value) + 2 - at, start + len(one) - at
            if begin >= 0 and end <= len(formatted):
                spans.append((message, begin, end))
            start += len(one) + 1
    elif _TURN_LABELS.match(formatted) and formatted.endswith(_LAST_TURN):
        # A chat template laid out as `messages_to_prompt` lays out its messages (from the first role label to the
        # closing "assistant: "); a text template is the framework's wording and the variables.
        starts = [start for start, _ in fields]
        labels = []
        for label in _TURN_LABELS.finditer(formatted):
            # A role label a value printed is the value's text (judged by variable), not a turn of the template.
            i = bisect_left(starts, label.start() + 1) - 1
            if i < 0 or fields[i][1] <= label.start():
                labels.append(label)
        for label, after in zip(labels, [*labels[1:], None]):
            end = after.start() - 1 if after is not None else len(formatted)
            spans.append((label.group(1), label.end(), end))
    starts = [start for start, _ in fields]

    def holds_value(begin: int, end: int) -> bool:
        i = bisect_left(starts, begin)
        return i < len(fields) and fields[i][1] <= end

    turns: list[ChatMessage] = []
    for turn, begin, end in spans:
        message = turn if isinstance(turn, ChatMessage) else ChatMessage(role=turn, content=formatted[begin:end])
        turns.append(message)
    users = [i for i, m in enumerate(turns) if role_of(m) == MessageRole.USER.value]
    last_user = users[-1] if users else None
    for i, (_, begin, end) in enumerate(spans):
        role = role_of(turns[i])
        if holds_value(begin, end) and (role in _SYSTEM_ROLES or i == last_user):
            turns[i] = ChatMessage(role=role, content="")
    return turns


def _answer_key(text: str) -> bytes:
    return hashlib.blake2b(text.strip().encode("utf-8", "surrogatepass"), digest_size=16).digest()


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
