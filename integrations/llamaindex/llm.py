"""`GuardedLLM`: any LlamaIndex LLM, with every input, streamed chunk and tool call screened.

Wrapping the LLM is the one public hook that sees everything in LlamaIndex: query engines, chat
engines and agents (FunctionAgent, AgentWorkflow, ReActAgent) all call it, and a `GuardViolation`
raised inside it stops them (instrumentation handlers cannot: their exceptions are swallowed).

What is screened, and as what:

- every message of the input that is new to the model, by role (`._messages.plan_inputs`): the
  latest user turn as a prompt after the earlier turns, earlier user turns as prompts, assistant
  turns as responses, the tool calls they hold as tool calls, the outputs of the tool calls a guarded LLM
  returned as untrusted content, any other tool-role message as the client's input (one check, decided under the
  stricter of the prompt and tool-result policies: `._messages.ClientToolCheck`), a tool output an agent writes in a
  user turn (ReAct's ``Observation:``, CodeAct's code result, after the turn holding the action) as untrusted tool
  output too, decided the same stricter way (not as a prompt; it stays in the conversation answers are judged in); a message's text is what a
  provider may send, its ``additional_kwargs`` too (`._messages.carried_text`). What this wrapper judged and let
  through before (earlier turns, its own answers after the question they answered) is not judged again, so a
  growing history costs one check per new message: a plain allow only, by the same guard under an equal policy,
  while that guard is open (`ScopedSeen`);
- for template calls (``predict``/``stream``, which query engines use, and ``structured_predict`` and its
  async and streaming twins) the template's query variable
  as the prompt and its context variable (``context_str``...) as untrusted retrieved content,
  instead of the whole formatted prompt; the turns a chat template carries as its own messages (the
  history a context chat engine writes there) by role as the model reads them, like a chat call's, the query
  after them and the answer after all of it;
- the answer: whole responses with ``check_response``; streams through the guard's hold-back
  `StreamMonitor` (``guard.stream``/``guard.astream``): the judge runs on text the consumer has not
  seen, beside the generation, and text is released as soon as it is judged. A guarded chunk carries
  only released text, in every field (see `._stream`); a violation raises mid-stream and closes the
  inner stream (and its HTTP response); the error the wrapped LLM fails with (streamed or not) is judged as its
  answer, since a provider's error can quote the text held back (Ollama's ``error parsing tool call: raw='...'``):
  blocked, the guard's stop is raised in its place with nothing of the error chained; allowed, the error itself; an answer holding a JSON escape a parser decodes into other
  words (``\\uXXXX``) also as LlamaIndex parses it, a stream's text held from that escape until then
  (`._json_reading`);
- tool calls, each with ``check_tool_call``, before the caller can see them: in a stream they are
  held back and travel on the final chunk, after they were judged, so an agent never receives an
  unjudged call and a blocked tool never runs; their arguments reach no consumer before that. So are the
  calls agents read in the answer's text: a ReAct step's actions (the one its parser runs first) and a
  CodeAct answer's ``<execute>`` code, as ``execute({"code": ...})``, and the actions the component of a template
  call parses out of the answer and runs (a sub-question generator's tools, a text-to-SQL step's query:
  `._messages.template_actions`); a stream whose input shows the model one of
  those markers (a ReAct header, a CodeAct prompt) holds its text from the first ``Action Input:`` or
  ``<execute>`` on until those checks passed (`._stream.ActionHold`): the arguments, read as the agent reads
  them (escapes decoded), may say what the text as streamed does not. Inside a structured-output call (the
  ``structured_predict`` family, ``FunctionCallingProgram``), the call of the schema's tool is the answer: decided
  under the stricter of the response and tool-call policies (`_AnswerCall`), and the conversation an agent prints into
  one message to ask for it is read back into its turns, judged by role (`_printed_conversation`);
- what ``predict_and_call`` / ``apredict_and_call`` hand the application: the tools' outputs joined as the response
  (or in ``error_on_tool_error``'s ValueError), which no model reads first, as the answer, decided under the stricter
  of the response and tool-result policies, as a ``return_direct`` tool's output is (`_AnswerOutput`);
- what a response hands its caller beside its message (``raw``, ``additional_kwargs``: BedrockConverse keeps
  cited text and guardrail traces there alone), but provider bookkeeping and what was judged already, as
  untrusted quoted content before the response (a stream's last chunk) is returned (`_reply_checks`); but a
  chat model's reply handed over as a completion keeps its tool calls and reasoning there alone, which are
  judged as its tool calls and with its answer (`_completion_checks`).

Parallel input screening (``parallel_input=True``, or a `Guard` built with ``parallel_input=True``):
the inner LLM call starts at once while the inputs are checked in the background. Nothing leaves
before the verdict: ``achat``/``acomplete`` race the call against the verdict and cancel the call
when the input is blocked; streams wait for the verdict before the first chunk is yielded (async
streams cancel the pending request or chunk as soon as a blocking verdict arrives) and close the
inner stream; ``chat``/``complete`` cannot interrupt a blocking call, so a blocked input raises once
the call returns and its answer is discarded. Tool calls travel in the response, so no tool can
run before the verdict.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import AsyncGenerator, Awaitable, Callable, Generator, Iterator, Mapping, Sequence
from contextvars import ContextVar
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Literal, NoReturn, TypeVar

from llama_index.core.base.llms.types import (
    ChatMessage,
    ChatResponse,
    ChatResponseAsyncGen,
    ChatResponseGen,
    CompletionResponse,
    CompletionResponseAsyncGen,
    CompletionResponseGen,
    LLMMetadata,
    MessageRole,
    TextBlock,
    ToolCallBlock,
)
from llama_index.core.bridge.pydantic import Field, PrivateAttr, SerializeAsAny
from llama_index.core.llms.function_calling import FunctionCallingLLM
from llama_index.core.llms.llm import LLM, ToolSelection
from llama_index.core.llms.utils import parse_partial_json
from llama_index.core.prompts import BasePromptTemplate, ChatPromptTemplate
from llama_index.core.types import Model, PydanticProgramMode
from qwenguard.core import Action, Decision, Guard, InputTooLarge, Policy, QwenGuardError, enforce
from qwenguard.core.formats.conversations import (
    answer_calls_conversation,
    prompt_conversation,
    response_conversation,
    tool_call_conversation,
    untrusted_conversation,
)
from qwenguard.core.formats.json_reading import arguments_parsed
from qwenguard.core.guard import calling_as
from qwenguard.core.streaming.parallel import PendingCheck
from qwenguard.core.streaming.task_ends import mark_read
from qwenguard.core.streaming.wakeup import (
    UpstreamRace,
    UpstreamReader,
    verdict_waiters,
)
from qwenguard.core.verdict import Stage

from .._common import guard_scope, reply_actions, require_guard
from .._error_reading import error_stop_of, error_texts
from .._off_loop import off_loop
from ._component import GuardComponent
from ._json_reading import ReadingHold, reading_checks
from ._messages import (
    CONTEXT_VARIABLES,
    QUERY_VARIABLES,
    SYSTEM_ROLES,
    Checks,
    GuardMessage,
    ScopedSeen,
    Seen,
    TemplateCall,
    agent_actions,
    ajudge,
    answer_marks,
    answer_text,
    condense_parts,
    cut_judged_turns,
    history_messages,
    judge,
    mark,
    message_text,
    plan_inputs,
    plan_template,
    prompt_mark,
    raw_reasoning,
    remember_own_calls,
    reply_parts,
    reply_text,
    resolve_template,
    role_of,
    template_actions,
    tool_calls_in,
    tool_calls_of,
    tools_text,
    variable_checks,
)
from ._stream import (
    ActionHold,
    AnswerFeed,
    ChatChunks,
    CompletionChunks,
    aclose_upstream,
    close_upstream,
    unread_text,
)
from .memory import GuardMissing

if TYPE_CHECKING:
    from llama_index.core.chat_engine.types import AgentChatResponse
    from llama_index.core.tools.types import BaseTool

__all__ = ["CONTEXT_VARIABLES", "QUERY_VARIABLES", "GuardedLLM"]

T = TypeVar("T")

#: The request arguments where provider classes put the tool list they built (OpenAI's legacy ``functions`` too).
_TOOL_KWARGS = ("tools", "functions")

# Holds the id of the GuardedLLM while a template call whose substituted text is not known runs (a Jinja
# template given objects, a template class that formats in its own way): its formatted messages are judged
# by role, the system ones too, since a variable may have been put there.
_SCREEN_SYSTEM: ContextVar[int | None] = ContextVar("qwenguard_screen_system", default=None)


# Holds (id of the GuardedLLM, the schema's tool names) while a structured-output call runs (``structured_predict``
# and its twins, which ``as_structured_llm``, an ``output_cls`` query engine and an agent's ``output_cls`` call): over
# a function-calling LLM the program asks the model to call the schema as a tool, and that call is the answer.
_ANSWER_TOOLS: ContextVar[tuple[int, frozenset[str]] | None] = ContextVar("qwenguard_answer_tools", default=None)


# Holds (id of the GuardedLLM, how the component reads actions out of the answer) while a template call runs whose
# answer another component parses into actions it runs (`template_actions`: a sub-question generator's tools, a
# text-to-SQL step's query): those are judged as tool calls before they run (rt58d F1).
_TEXT_ACTIONS: ContextVar[tuple[int, Callable[[str], list[ToolSelection]]] | None] = ContextVar(
    "qwenguard_text_actions", default=None
)


@dataclass
class _Plan:
    inputs: Checks
    prompt: list[GuardMessage]  # what the answer is judged against
    pending: PendingCheck | None = None  # the input verdict, while it runs beside the LLM call
    marks: list[bytes] = field(default_factory=list)  # inputs to remember as judged once they passed
    failed_open: bool = False  # a check of this call was not a plain allow (flagged, or failed open): not remembered
    answers: frozenset[str] = frozenset()  # the tools whose calls are this call's answer (a structured output's)
    acts: Callable[[str], list[ToolSelection]] | None = None  # reads the actions a component runs from the answer
    scope: bytes | None = None  # the guard and policy its inputs were judged under (`guard_scope`), once started
    calls_prompt: list[GuardMessage] | None = None  # what its answer's calls are read after (`InputPlan.calls_prompt`)


class _AnswerCall(tuple):
    """The check of a call to a structured output's schema tool: its arguments are the object the application reads,
    the answer. Judged once (the tool-call conversation, asked under the response stage while that stage is on) and
    decided under the stricter of the response and tool-call stages' policies (`_judge`): a tool-call stage that
    ignores a category or is off cannot let through an answer the response stage blocks (rt57f F1)."""

    __slots__ = ()
    #: The stage whose policy decides the answer too, where it is stricter than the response stage's.
    partner = Stage.TOOL_CALL

    def __new__(cls, conversation: list[GuardMessage]) -> _AnswerCall:
        return super().__new__(cls, (Stage.RESPONSE, conversation))


class _AnswerOutput(_AnswerCall):
    """The check of the tools' outputs ``predict_and_call`` hands the application as its response, no model reading
    them first: the answer, decided under the stricter of the response and tool-result stages' policies, as a
    ``return_direct`` tool's output is (rt60a F2): a tool-result stage loosened for the pages a model reads cannot let
    through to the user what the response stage blocks (rt67e F2)."""

    __slots__ = ()
    partner = Stage.TOOL_RESULT


def _asked(policy: Policy, checks: Checks) -> Checks:
    """The checks as the guard is asked them: an answer's under the response stage, or its partner's where that is off."""
    answer_stage = Stage.RESPONSE if policy.enabled(Stage.RESPONSE) else None
    return [(answer_stage or c.partner, c[1]) if isinstance(c, _AnswerCall) else c for c in checks]


def _as_answer(policy: Policy, check: _AnswerCall, decision: Decision) -> Decision:
    """An answer's decision: the response stage's, or its partner stage's (the tool-call stage's for a structured
    answer) where that one is stricter."""
    return policy.decide_stricter(decision, Stage.RESPONSE, check.partner)


#: What the event-loop warning of a sync check made here names (rt61a F3): the user called ``llm.chat`` in ``async def``,
#: not ``guard.check_prompt``.
_ASYNC_TWINS = (
    "GuardedLLM's async methods: await llm.achat / acomplete / apredict / astructured_predict / achat_with_tools, "
    "async for over await llm.astream_chat / astream_complete / astream (not chat / complete / stream_*)"
)


def _judge(guard: Any, checks: Checks) -> list[Decision]:
    """`judge`, with each `_AnswerCall` decided as the answer it is (one judge call each, as before)."""
    policy = guard.policy
    with calling_as(_ASYNC_TWINS):
        decisions = judge(guard, _asked(policy, checks))
    return [_as_answer(policy, c, d) if isinstance(c, _AnswerCall) else d for c, d in zip(checks, decisions)]


async def _ajudge(guard: Any, checks: Checks) -> list[Decision]:
    """Async twin of `_judge`."""
    policy = guard.policy
    decisions = await ajudge(guard, _asked(policy, checks))
    return [_as_answer(policy, c, d) if isinstance(c, _AnswerCall) else d for c, d in zip(checks, decisions)]


# -- a failed call's error, judged as its answer ------------------------------------------------------
# A provider can fail mid-answer with an error that quotes the answer (Ollama's "error parsing tool call: raw='...'"):
# the text the monitor held, neither judged nor released, reached the app in the exception (rt64b F1). What the error
# carries is judged as the answer would have been; blocked, the guard's stop is raised in its place with nothing of
# the error chained to it (`_stop`). Only on a failure: an answer costs nothing more.


def _schema_tools(output_cls: Any) -> frozenset[str]:
    """The name LlamaIndex's ``get_function_tool`` gives a schema's tool: its JSON schema's title, or the class name."""
    try:
        title = output_cls.model_json_schema().get("title")
    except Exception:  # noqa: BLE001 - a schema without a JSON schema is never asked for as a tool
        title = None
    names = {title, getattr(output_cls, "__name__", None)}
    return frozenset(n for n in names if isinstance(n, str) and n)


# Set while a template call (predict/stream) runs: its inputs were screened by variable and by template turn, so
# the chat/complete call it makes must not re-screen the formatted prompt as if the user wrote all of it.
# Holds (id of the GuardedLLM, its plan: the prompt answers are judged against, the input check still running
# with parallel_input, the inputs to remember once the call passed).
_PRESCREENED: ContextVar[tuple[int, _Plan] | None] = ContextVar("qwenguard_prescreened", default=None)


def _flagged(decisions: Any) -> bool:
    """Is any of these decisions other than a plain allow (a flag: loose mode's controversial, an ignored category, a
    guard error or timeout failed open)? A call holding one is not remembered (`GuardedLLM._passed`): a flag is told
    again, as LangChain's middleware tells it (rt62b F1)."""
    if decisions is None:
        return False
    if isinstance(decisions, Decision):
        decisions = [decisions]
    return any(d.action is not Action.ALLOW for d in decisions)


class GuardedLLM(GuardComponent, FunctionCallingLLM):
    """Wrap ``llm`` so that a `Guard` screens its inputs, outputs and tool calls.

    >>> Settings.llm = GuardedLLM(llm=OpenAI(model="gpt-4o-mini"), guard=Guard.from_pretrained("demo"))  # doctest: +SKIP

    A blocked check raises `GuardViolation` (a plain ``Exception``, so agent workflows fail cleanly
    instead of hanging). Metadata, prompt formatting and tool-calling come from the wrapped LLM, which shares
    this wrapper's callback manager (set later too). A pickled copy has no guard: it raises `GuardMissing`.

    - ``holdback``: guard tokens a stream keeps back before releasing text (``None``: the monitor's
      default; 0 streams at once, exposing at most the span before a violation is detected).
    - ``release_unit``: with a Gen guard, what one stream check may release: ``"sentence"`` (default:
      whole sentences), ``"opening"`` (the opening words as soon as they are judged, then whole
      sentences) or ``"word"`` (judged text but its last word: more checks).
    - ``screen_context``: screen the context variables of template calls as retrieved content.
    - ``parallel_input``: start the inner call while the inputs are checked (see the module
      docstring; ``None`` follows ``guard.parallel_input``).
    - ``screen_system``: also screen the system message that opens the list as untrusted content (off by
      default: it is the application's prompt; turn it on when retrieved text is put there, as the context
      chat engines do, or screen the nodes with `GuardNodePostprocessor` instead). A system message further
      on came with the conversation (a client's ``chat_history``, text a memory inserts): always judged.
    - ``remember``: how many judged inputs and answers to remember, so that a growing history is not
      judged again message by message (0: judge every message of every call).
    - ``screen_tools``: also screen the tool descriptions the model reads as untrusted content (names, descriptions,
      parameter schemas: the ``tools`` a provider class builds for a tool-calling request, FunctionAgent's; the tool
      list of a ReAct system header). Off by default: the application's own tools are its own words (and the small
      demo guard misreads code signatures); turn it on for tools from outside (an MCP server's list, a hub's
      ToolSpec). Each distinct list costs one check, then is remembered.
    """

    llm: SerializeAsAny[LLM] = Field(description="The LLM being guarded.")
    guard: Any = Field(exclude=True, description="The qwenguard Guard that screens the traffic.")
    holdback: int | None = Field(default=None, description="Stream hold-back in guard tokens (None: default).")
    release_unit: Literal["sentence", "opening", "word"] | None = Field(
        default=None, description='What one stream check may release: "sentence", "opening" or "word" (None: default).'
    )
    screen_context: bool = Field(default=True, description="Screen template context variables as documents.")
    screen_system: bool = Field(default=False, description="Screen the opening system message as untrusted content.")
    parallel_input: bool | None = Field(
        default=None, description="Run the LLM call while the input is checked (None: the guard's setting)."
    )
    remember: int = Field(default=4096, ge=0, description="Judged inputs remembered, not judged again.")
    screen_tools: bool = Field(
        default=False, description="Screen the tool descriptions the model reads (tools=, a ReAct header) as content."
    )

    _seen: Seen | None = PrivateAttr(default=None)

    def __init__(self, llm: LLM, guard: Guard, **kwargs: Any) -> None:
        if not isinstance(llm, LLM):
            raise TypeError(f"llm must be a LlamaIndex LLM, got {type(llm).__name__}")
        require_guard(guard)
        # Format prompts exactly as the wrapped LLM would (template calls format here, then pass
        # formatted text down), and share its callback manager so events are not duplicated (`__setattr__`).
        for name in (
            "system_prompt",
            "messages_to_prompt",
            "completion_to_prompt",
            "output_parser",
            "pydantic_program_mode",
            "query_wrapper_prompt",
            "callback_manager",
        ):
            if name not in kwargs and getattr(llm, name, None) is not None:
                kwargs[name] = getattr(llm, name)
        super().__init__(llm=llm, guard=guard, **kwargs)
        self._seen = Seen(self.remember) if self.remember else None
        if self.llm.callback_manager is not self.callback_manager:  # one given here: the inner LLM emits the events
            self.llm.callback_manager = self.callback_manager

    def __setattr__(self, name: str, value: Any) -> None:
        super().__setattr__(name, value)
        if name == "callback_manager" and "llm" in self.__dict__:
            # The LLM events come from the wrapped LLM's methods. LlamaIndex hands an LLM the callback manager later
            # by setting it (the ``Settings.llm`` getter after ``Settings.callback_manager = ...``, every response
            # synthesizer): set on the wrapper alone, the handlers registered then never saw a guarded LLM's events.
            self.llm.callback_manager = self.callback_manager

    def __getattr__(self, name: str) -> Any:
        if name == "guard":  # not set: a copy that lost it to pickling
            raise _guard_missing()
        return super().__getattr__(name)  # type: ignore[misc]

    def _judged(self) -> Seen | None:
        """The memory as a call reads it now (`ScopedSeen`: for this guard under its policy); None with ``remember=0``."""
        return None if self._seen is None else ScopedSeen(self._seen, guard_scope(self.guard))

    def _require_guard(self) -> None:
        """`GuardMissing` before the model is asked, on a copy without a guard. LlamaIndex's pickling leaves the
        guard out (an ``IngestionPipeline`` with ``num_workers > 1``, a saved workflow Context), but not what was
        judged: an input judged before needs no check, and the model was asked before anything failed."""
        if self.__dict__.get("guard") is None:
            raise _guard_missing()

    @classmethod
    def class_name(cls) -> str:
        return "GuardedLLM"

    @property
    def metadata(self) -> LLMMetadata:
        return self.llm.metadata

    # -- what to screen -----------------------------------------------------------------------
    def _prescreened_plan(self) -> _Plan | None:
        """The plan of the template call this chat/complete call belongs to (its inputs were judged already)."""
        pre = _PRESCREENED.get()
        if pre is None or pre[0] != id(self):
            return None
        plan = pre[1]
        return _Plan([], plan.prompt, plan.pending, list(plan.marks), plan.failed_open, scope=plan.scope)

    def _answer_tools(self) -> frozenset[str]:
        """The schema tools of the structured-output call of this LLM that is running (`_ANSWER_TOOLS`)."""
        running = _ANSWER_TOOLS.get()
        return running[1] if running is not None and running[0] == id(self) else frozenset()

    def _text_actions(self) -> Callable[[str], list[ToolSelection]] | None:
        """How the component of the template call of this LLM that is running reads actions out of its answer."""
        running = _TEXT_ACTIONS.get()
        return running[1] if running is not None and running[0] == id(self) else None

    def _plan_messages(self, messages: Sequence[ChatMessage], kwargs: Mapping[str, Any] | None = None) -> _Plan:
        plan = self._plan_chat(messages, kwargs)
        plan.answers = self._answer_tools()
        plan.acts = self._text_actions()
        return plan

    def _plan_chat(self, messages: Sequence[ChatMessage], kwargs: Mapping[str, Any] | None) -> _Plan:
        self._require_guard()
        if (pre := self._prescreened_plan()) is not None:
            return pre
        screen_system = self.screen_system or _SCREEN_SYSTEM.get() == id(self)
        if self._answer_tools():
            messages, forged = _printed_conversation(messages)
            screen_system = screen_system or forged
        seen = self._judged()
        plan = plan_inputs(
            messages,
            self.llm,
            screen_system=screen_system,
            seen=seen,
            screen_tools=self.screen_tools,
            bind_outputs=True,
            max_chars=self.guard.max_chars,
        )
        checks, marks = plan.checks, plan.marks
        # The tool list a provider class built for the request (``*_chat_with_tools``: FunctionAgent's calls): its
        # descriptions are text from the tools' authors (an MCP server's list), which the model reads on every call.
        for key in _TOOL_KWARGS if self.screen_tools else ():
            text = tools_text(tools) if (tools := (kwargs or {}).get(key)) else ""
            fingerprint = mark("tools", text)
            if text.strip() and (seen is None or fingerprint not in seen):
                checks = [*checks, (Stage.PROMPT, untrusted_conversation(text, "tool descriptions"))]
                marks = [*marks, fingerprint]
        return _Plan(checks, plan.prompt, marks=marks, calls_prompt=plan.calls_prompt)

    def _plan_prompt(self, prompt: str) -> _Plan:
        plan = self._plan_completion(prompt)
        plan.answers = self._answer_tools()
        plan.acts = self._text_actions()
        return plan

    def _plan_completion(self, prompt: str) -> _Plan:
        self._require_guard()
        if (pre := self._prescreened_plan()) is not None:
            return pre
        if (parts := condense_parts(prompt)) is not None:
            return self._plan_condense(*parts)
        # A condense step's prompt holds the stored history: the turns judged before are context, not the user's text.
        text, turns = cut_judged_turns(prompt, self._judged())
        conversation = prompt_conversation(text, turns)
        return _Plan([(Stage.PROMPT, conversation)], conversation)

    def _plan_condense(self, history: str, question: str) -> _Plan:
        """A prompt formatted from LlamaIndex's condense template (`CondensePlusContextChatEngine`): its history judged
        by role, as the chat path judges one (a refusal that names what it refuses is an answer, not the user asking
        for it: judged whole as the user's text, it stopped every later question, rt50c F9 / rt51c F1), and the
        question as the prompt after it; the template's wording is not the user's."""
        # A system turn that opens a history is not the application's prompt (a client's chat_history): judged too.
        turns = plan_inputs(
            history_messages(history),
            self.llm,
            screen_system=True,
            seen=self._judged(),
            latest_prompt=False,
            max_chars=self.guard.max_chars,
        )
        conversation = prompt_conversation(question, turns.prompt[:-1])
        # The question comes back as a user turn of the next history, after these turns: judged after them (rt60d F3).
        marks = [*turns.marks, prompt_mark(conversation)]
        return _Plan([(Stage.PROMPT, conversation), *turns.checks], conversation, marks=marks)

    def _resolve(self, prompt: BasePromptTemplate, prompt_args: Mapping[str, Any]) -> tuple[TemplateCall, _Plan | None]:
        """A template call with its variables computed once (`resolve_template`: the wrapped LLM formats the very
        text judged), and its checks by variable; no plan when no query variable is recognised or the text the
        template substitutes is not known: the formatted prompt is then judged (`_template_variables`)."""
        return self._plan_call(resolve_template(prompt, prompt_args, llm=self, max_chars=self.guard.max_chars))

    def _plan_call(self, call: TemplateCall) -> tuple[TemplateCall, _Plan | None]:
        """`_resolve`'s checks of a resolved call (the reading: on a worker thread for a large async call)."""
        plan = None
        if call.exact:
            # The turns a chat template carries as its own text (a context chat engine's history, a client's
            # chat_history among it) are judged by role as the model reads them, the query after them and the answer
            # after all of it, as on the chat path (rt62d F4); its opening system message (the application's and the
            # framework's wording) is not.
            plan = plan_template(call.variables, **self._variable_options(call), llm=self.llm)
        if plan is None:
            return call, None
        return call, _Plan(plan.checks, plan.prompt, marks=plan.marks)

    def _template_variables(self, call: TemplateCall) -> Checks:
        """A template call without a plan is judged by the roles of its formatted messages; its variables
        are judged on their own too, since one may sit in a system message (not judged unless
        ``screen_system``, or when the text the template substitutes is not known), and those read as a prompt
        once more joined as the template places them (`joined_variables`: a request split across them)."""
        return variable_checks(call.variables, **self._variable_options(call))

    def _variable_options(self, call: TemplateCall) -> dict[str, Any]:
        """How a template call's variables are read (`plan_template`, `variable_checks`): what this LLM screens, the
        turns judged before, the template that places them and its renamed variables."""
        return {
            "screen_context": self.screen_context,
            "computed": call.computed,
            "seen": self._judged(),
            "template": call.template,
            "renamed": call.renamed,
        }

    @contextlib.contextmanager
    def _formatted(self, call: TemplateCall) -> Iterator[None]:
        """Judge the formatted messages' system ones too while ``call`` runs, unless its text is known."""
        token = None if call.exact else _SCREEN_SYSTEM.set(id(self))
        try:
            yield
        finally:
            if token is not None:
                _SCREEN_SYSTEM.reset(token)

    def _output_checks(
        self,
        plan: _Plan,
        text: str,
        calls: Sequence[ToolSelection] = (),
        *,
        actions: Sequence[str] = (),
        parsed: str | None = None,
        said: str | None = None,
    ) -> Checks:
        """The answer's text, its tool calls, and the calls agents read in ``actions`` (the answer's text as an
        agent parses it): a ReAct agent runs its actions, a CodeActAgent its ``<execute>`` code, as tool calls; a
        structured output's schema tool call (``plan.answers``) as the answer it is (`_AnswerCall`); and the answer
        as a JSON parser reads ``parsed`` (default: ``text``), its escapes decoded, where that reads otherwise
        (`._json_reading`: a structured output over an LLM that is not function-calling; not an agent's step outside
        such a call, which the agent reads as the tool calls judged here); the actions the component of a template
        call runs from the answer (``plan.acts``: a sub-question generator's tool calls, a text-to-SQL step's query),
        read in ``actions`` or else in ``parsed``, as tool calls. ``said``: the answer's text its calls are read
        joined with (default: ``text``; a stream's, whose text was judged as it streamed)."""
        checks: Checks = []
        if text.strip():
            checks.append((Stage.RESPONSE, response_conversation(plan.prompt, text)))
        acted = agent_actions(actions)
        # What a template call's component parses out of the answer and runs (`template_actions`): a tool call too.
        read = [] if plan.acts is None else _text_calls(plan.acts, actions or (text if parsed is None else parsed,))
        # A call is read after the calls asked for since the request too (rt71j F2).
        before = plan.prompt if plan.calls_prompt is None else plan.calls_prompt
        for call in [*calls, *acted, *read]:
            conversation = tool_call_conversation(
                call.tool_name, arguments_parsed(call.tool_kwargs), before, max_chars=self.guard.max_chars
            )
            checks.append(
                _AnswerCall(conversation) if call.tool_name in plan.answers else (Stage.TOOL_CALL, conversation)
            )
        # The answer's calls (and its text) read as one action too: a clause split over two parallel calls ran when
        # each was judged alone (rt71b F1). A structured output's schema call is the answer, judged as one.
        acts = [(c.tool_name, arguments_parsed(c.tool_kwargs)) for c in calls if c.tool_name not in plan.answers]
        said = text if said is None else said
        joined = answer_calls_conversation(said, acts, before, max_chars=self.guard.max_chars)
        if joined is not None:
            checks.append((Stage.TOOL_CALL, joined))
        # An agent's step outside a structured-output call is read by the agent, as the tool calls just judged (their
        # arguments decoded), not handed to the application parsed.
        if plan.answers or not acted:
            checks += reading_checks(plan.prompt, text if parsed is None else parsed)
        return checks

    def _reply_checks(
        self, plan: _Plan, parts: Sequence[Any], judged: Sequence[str], calls: Sequence[ToolSelection] = ()
    ) -> Checks:
        """The text a response hands its caller beside what was judged (`reply_parts`: its ``raw`` above all, where
        BedrockConverse keeps cited text, guardrail traces and extra fields), judged as untrusted quoted content; and
        the actions it holds (the Responses API's ``apply_patch_call``, ``computer_call``, ``mcp_approval_request``...:
        `reply_actions`), which the app or the provider carries out, judged as tool calls (rt54b F3)."""
        text = reply_text(parts, judged, calls, self.guard.max_chars)
        checks: Checks = [(Stage.TOOL_RESULT, untrusted_conversation(text, "provider reply"))] if text.strip() else []
        for action in reply_actions(list(parts), self.guard.max_chars):
            checks.append(
                (
                    Stage.TOOL_CALL,
                    tool_call_conversation(
                        action["name"],
                        arguments_parsed(action["args"]),
                        plan.prompt if plan.calls_prompt is None else plan.calls_prompt,
                        max_chars=self.guard.max_chars,
                    ),
                )
            )
        return checks

    def _passed(
        self,
        plan: _Plan,
        answer: ChatMessage | None = None,
        calls: Sequence[ToolSelection] = (),
        monitors: Sequence[Any] = (),
    ) -> None:
        """Remember the inputs and the answer of a call that passed: they come back as history. Only a call whose
        every check was a plain allow: not when one failed open (its text passed unjudged: the memory is shared by
        every request, and one guard failure would let that text through unjudged for every later one), nor when one
        was flagged (a flag is told again, rt62b F1). Only for the guard and policy the call was judged under
        (`guard_scope`): not when the policy changed (or the guard closed) while it ran. The answer's tool calls are
        remembered as the model's own in any case, with ``answer``, the very message returned (`remember_own_calls`):
        the output their tool produced, read after that message, is tool output (`._messages.own_output`)."""
        remember_own_calls(calls, answer)
        if self._seen is None or plan.failed_open:
            return
        if plan.pending is not None and _flagged(plan.pending.result()):
            return
        if any(m.flags for m in monitors if m is not None):
            return
        if (scope := guard_scope(self.guard)) is None or scope != plan.scope:
            return
        # The answer comes back after the conversation it was judged against (rt54c F4, rt60d F3: remembered as that
        # check, the turns before the question included).
        marks = [*plan.marks, *(answer_marks(answer, calls, plan.prompt) if answer is not None else ())]
        ScopedSeen(self._seen, scope).add(marks)

    def _screen(self, checks: Checks, plan: _Plan | None = None) -> None:
        if checks:
            decisions = _judge(self.guard, checks)
            if plan is not None and _flagged(decisions):
                plan.failed_open = True
            for decision in decisions:
                enforce(decision)

    async def _ascreen(self, checks: Checks, plan: _Plan | None = None) -> None:
        if checks:
            decisions = await _ajudge(self.guard, checks)
            if plan is not None and _flagged(decisions):
                plan.failed_open = True
            for decision in decisions:
                enforce(decision)

    # -- inputs: screened before the call, or beside it with parallel_input ---------------------
    @property
    def _parallel(self) -> bool:
        return self.guard.parallel_input if self.parallel_input is None else self.parallel_input

    def _start_inputs(self, plan: _Plan) -> _Plan:
        """Screen ``plan.inputs`` now (raises when blocked), or start them beside the call."""
        scope = plan.scope or guard_scope(self.guard)  # what its allows answer for (`_passed`); a template call's, kept
        if plan.inputs and self._parallel:
            guard, checks = self.guard, plan.inputs
            pending = PendingCheck.start(lambda: judge(guard, checks))
            return replace(plan, inputs=[], pending=pending, failed_open=False, scope=scope)
        self._screen(plan.inputs, plan)
        return replace(plan, inputs=[], scope=scope)

    async def _astart_inputs(self, plan: _Plan) -> _Plan:
        scope = plan.scope or guard_scope(self.guard)
        if plan.inputs and self._parallel:
            pending = PendingCheck.start_async(ajudge(self.guard, plan.inputs))
            return replace(plan, inputs=[], pending=pending, failed_open=False, scope=scope)
        await self._ascreen(plan.inputs, plan)
        return replace(plan, inputs=[], scope=scope)

    @staticmethod
    def _inputs_back(plan: _Plan) -> bool:
        """The parallel input check has come back (enforce it now: a blocked input stops the stream)."""
        return plan.pending is not None and not plan.pending.passed and plan.pending.done()

    @staticmethod
    def _wait_inputs(plan: _Plan) -> None:
        if plan.pending is not None and not plan.pending.passed:
            plan.pending.wait()

    @staticmethod
    async def _await_inputs(plan: _Plan) -> None:
        if plan.pending is not None and not plan.pending.passed:
            await plan.pending.wait_async()

    @staticmethod
    async def _race(plan: _Plan, call: Any, *, wait: bool = True) -> Any:
        """Await ``call`` (a request, a chunk); with a pending input verdict, cancel it when blocked.

        ``wait=False`` (opening a stream, which releases nothing): return once the call is done,
        so that the first chunk is produced beside the check as well."""
        if plan.pending is None or plan.pending.passed:
            return await call
        return await plan.pending.guard(call, wait=wait)

    def _monitor_options(self) -> dict[str, Any]:
        # The inputs were screened by role already; the monitor must not re-judge them as one prompt.
        options: dict[str, Any] = {"screen_prompt": False}
        if self.holdback is not None:
            options["holdback"] = self.holdback
        if self.release_unit is not None:
            options["release_unit"] = self.release_unit
        return options

    def _open_monitor(self, plan: _Plan) -> Any:
        with calling_as(_ASYNC_TWINS):  # the monitor's event-loop warning names this LLM's async streams
            return self.guard.stream(plan.prompt, **self._monitor_options())

    @contextlib.contextmanager
    def _prescreened(self, plan: _Plan) -> Iterator[None]:
        token = _PRESCREENED.set((id(self), plan))
        try:
            yield
        finally:
            _PRESCREENED.reset(token)

    # -- a failed call: its error judged as the answer it may quote ----------------------------
    def _error_checks(self, plan: _Plan, error: BaseException) -> tuple[Checks, bool] | None:
        """The check of ``error`` as the answer to ``plan.prompt`` (`error_texts`), and whether all of it was read;
        ``None`` where there is nothing to judge: the guard's own stop, an error that says nothing."""
        if isinstance(error, QwenGuardError):
            return None
        left_out: list[str] = []
        text = "\n".join(error_texts(error, self.guard.max_chars, left_out=left_out))
        whole = not left_out
        if not text.strip() and whole:
            return None
        return ([(Stage.RESPONSE, response_conversation(plan.prompt, text))] if text.strip() else []), whole

    def _failed(self, plan: _Plan, error: Exception, *, outputs: bool = False) -> NoReturn:
        """The inner call failed with ``error``: raise the guard's stop where what it carries is blocked as the answer
        (a guard that cannot answer: as ``on_error`` says), else ``error``, unchanged. Called where no exception is
        being handled: the stop has nothing of the error chained to it. ``outputs``: the error carries tools' outputs
        as ``predict_and_call``'s answer (`_AnswerOutput`)."""
        read = self._error_checks(plan, error)
        if read is None:
            raise error
        checks, whole = read
        if outputs:
            checks = [_AnswerOutput(c[1]) for c in checks]
        try:
            decisions = _judge(self.guard, checks) if whole else None
        except InputTooLarge:  # the error and the conversation past what one check reads
            decisions = None
        stop = error_stop_of(self.guard, decisions)
        if stop is None:
            raise error
        raise stop from None

    async def _afailed(self, plan: _Plan, error: Exception, *, outputs: bool = False) -> NoReturn:
        """Async twin of `_failed`: the error is read on a worker thread (what it carries is not sized before)."""
        read = await asyncio.to_thread(self._error_checks, plan, error)
        if read is None:
            raise error
        checks, whole = read
        if outputs:
            checks = [_AnswerOutput(c[1]) for c in checks]
        try:
            decisions = await _ajudge(self.guard, checks) if whole else None
        except InputTooLarge:
            decisions = None
        stop = error_stop_of(self.guard, decisions)
        if stop is None:
            raise error
        raise stop from None

    def _called(self, plan: _Plan, call: Callable[[], T]) -> T:
        """``call()`` (the inner LLM's answer, or its stream opened), its error judged (`_failed`)."""
        try:
            return call()
        except Exception as error:  # noqa: BLE001 - judged below, out of this block
            failed = error
        self._failed(plan, failed)

    async def _acalled(self, plan: _Plan, call: Awaitable[T]) -> T:
        """Async twin of `_called`."""
        try:
            return await call
        except Exception as error:  # noqa: BLE001 - judged below, out of this block
            failed = error
        await self._afailed(plan, failed)

    def _judged_errors(self, plan: _Plan, stream: Iterator[T]) -> Generator[T, None, None]:
        """``stream``, the error that ends it judged (`_failed`): out of the guarded stream, whose monitor and
        upstream are closed by then."""
        failed: Exception | None = None
        try:
            yield from stream
        except Exception as error:  # noqa: BLE001 - judged below, out of this block
            failed = error
        if failed is not None:
            self._failed(plan, failed)

    async def _ajudged_errors(self, plan: _Plan, stream: AsyncGenerator[T, None]) -> AsyncGenerator[T, None]:
        """Async twin of `_judged_errors`; ``stream`` is closed with it."""
        failed: Exception | None = None
        try:
            async for item in stream:
                yield item
        except Exception as error:  # noqa: BLE001 - judged below, out of this block
            failed = error
        finally:
            await stream.aclose()
        if failed is not None:
            await self._afailed(plan, failed)

    # -- chat and complete --------------------------------------------------------------------
    def chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponse:
        plan = self._start_inputs(self._plan_messages(messages, kwargs))
        response = self._called(plan, lambda: self.llm.chat(messages, **kwargs))
        self._wait_inputs(plan)
        checks, calls = self._chat_checks(plan, response)
        self._screen(checks, plan)
        self._passed(plan, response.message, calls)
        return response

    # The async twins build their checks with `off_loop`: reading a long input or answer (its JSON or YAML reading,
    # the actions a component parses out of it) runs on a worker thread, never on the event loop.
    async def achat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponse:
        plan = await self._astart_inputs(
            await off_loop(lambda: self._plan_messages(messages, kwargs), messages, kwargs)
        )
        response = await self._acalled(plan, self._race(plan, self.llm.achat(messages, **kwargs)))
        checks, calls = await off_loop(lambda: self._chat_checks(plan, response), response)
        await self._ascreen(checks, plan)
        self._passed(plan, response.message, calls)
        return response

    def complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponse:
        plan = self._start_inputs(self._plan_prompt(prompt))
        response = self._called(plan, lambda: self.llm.complete(prompt, formatted=formatted, **kwargs))
        self._wait_inputs(plan)
        self._screen(self._completion_checks(plan, response))
        return response

    async def acomplete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponse:
        plan = await self._astart_inputs(await off_loop(lambda: self._plan_prompt(prompt), prompt))
        response = await self._acalled(
            plan, self._race(plan, self.llm.acomplete(prompt, formatted=formatted, **kwargs))
        )
        await self._ascreen(await off_loop(lambda: self._completion_checks(plan, response), response))
        return response

    def _chat_checks(self, plan: _Plan, response: ChatResponse) -> tuple[Checks, list[ToolSelection]]:
        """A whole chat answer's checks and its tool calls: its text, the calls, and what its ``raw`` and
        ``additional_kwargs`` carry beside them (`_reply_checks`)."""
        calls = tool_calls_in(self.llm, response)
        text = message_text(response.message)
        content = answer_text(response.message)  # what a structured program parses (``message.content``)
        checks = self._output_checks(plan, text, calls, actions=(content, text), parsed=content)
        return checks + self._reply_checks(plan, reply_parts(response), [text], calls), calls

    def _completion_checks(self, plan: _Plan, response: CompletionResponse) -> Checks:
        """A whole completion's checks. A chat model's reply handed over as a completion (LlamaIndex's
        ``chat_to_completion_decorator``, which the OpenAI classes use for a chat model) keeps its tool calls in
        ``additional_kwargs`` and its reasoning in ``raw`` alone: the model's own output, judged as its tool calls
        and with its answer, as `chat` judges them, not as third-party content under the tool-result policy."""
        text = response.text or ""
        reply = ChatMessage(role=MessageRole.ASSISTANT, content=text, additional_kwargs=response.additional_kwargs)
        calls = tool_calls_of(self.llm, reply)
        thinking = raw_reasoning(response.raw, self.guard.max_chars)
        answer = "\n".join(t for t in (*thinking, text) if t)  # as `message_text` joins a ThinkingBlock and the text
        checks = self._output_checks(plan, answer, calls, parsed=text)
        return checks + self._reply_checks(plan, reply_parts(response), [text, *thinking], calls)

    # -- streams ------------------------------------------------------------------------------
    # Inputs are screened when the stream is requested (not when first iterated), so a blocked
    # prompt raises at the call and the inner LLM is never asked. With parallel_input the check
    # starts here and the first chunk waits for its verdict.
    def stream_chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponseGen:
        plan = self._start_inputs(self._plan_messages(messages, kwargs))
        hold = ActionHold.for_messages(messages)
        inner = self._called(plan, lambda: self.llm.stream_chat(messages, **kwargs))
        return self._judged_errors(plan, self._guard_chat_stream(plan, inner, hold))

    async def astream_chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponseAsyncGen:
        planned, hold = await off_loop(
            lambda: (self._plan_messages(messages, kwargs), ActionHold.for_messages(messages)), messages, kwargs
        )
        plan = await self._astart_inputs(planned)
        inner = await self._acalled(plan, self._race(plan, self.llm.astream_chat(messages, **kwargs), wait=False))
        return self._ajudged_errors(plan, self._aguard_chat_stream(plan, inner, hold))

    def stream_complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponseGen:
        plan = self._start_inputs(self._plan_prompt(prompt))
        inner = self._called(plan, lambda: self.llm.stream_complete(prompt, formatted=formatted, **kwargs))
        return self._judged_errors(plan, self._guard_completion_stream(plan, inner))

    async def astream_complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponseAsyncGen:
        plan = await self._astart_inputs(await off_loop(lambda: self._plan_prompt(prompt), prompt))
        opened = self._race(plan, self.llm.astream_complete(prompt, formatted=formatted, **kwargs), wait=False)
        inner = await self._acalled(plan, opened)
        return self._ajudged_errors(plan, self._aguard_completion_stream(plan, inner))

    def _final_checks(self, plan: _Plan, out: ChatChunks) -> tuple[Checks, list[ToolSelection]]:
        """What the end of a chat stream still needs judged: its tool calls (those agents read in its text too:
        the deltas they add up, the final message), and text it carries outside the streamed deltas
        (citations, documents; the last chunk's ``raw``, `_reply_checks`)."""
        assert out.last is not None
        last = out.last
        calls = tool_calls_in(self.llm, last)
        actions = (out.streamed, answer_text(last.message), message_text(last.message))
        unread = unread_text(last.message)
        rewritten = out.rewritten()  # a stream that rewrote its text hands it over whole: judged whole
        # The answer as the consumer gets it (the text so far, or a rewritten one as it stands): its parsed reading,
        # judged before the text held from its first escape goes out (`ReadingHold`).
        joined = "\n".join(t for t in (rewritten, unread) if t)
        # The calls, held to this last chunk, are read joined with the answer's text as `chat` reads them (rt71b F1):
        # the text went out judged alone, a clause split over it and a call must not run.
        said = "\n".join(t for t in (out.answer, unread) if t)
        checks = self._output_checks(plan, joined, calls, actions=actions, parsed=out.answer, said=said)
        # The last chunk goes out with the inner one's raw and message kwargs: their text beyond the judged deltas.
        judged = [out.streamed, out.reasoned, unread, rewritten]
        return checks + self._reply_checks(plan, reply_parts(last, own=False), judged, calls), calls

    def _guard_chat_stream(self, plan: _Plan, inner: Iterator[ChatResponse], hold: ActionHold) -> ChatResponseGen:
        out = ChatChunks()
        parsed = ReadingHold()
        with contextlib.ExitStack() as stack:
            # The model is read on a thread of its own while a check is in flight, so judged text goes out
            # when its verdict is back, not on the model's next token (``wakeup.py``).
            chunks = UpstreamReader(inner, close=close_upstream, name="qwenguard-li-upstream")
            stack.callback(chunks.close)
            monitor = stack.enter_context(self._open_monitor(plan))
            feed = AnswerFeed(monitor)  # the reasoning and the text judged as one response, as `chat` judges them
            for fresh, chunk in chunks.race(lambda: verdict_waiters(monitor)):
                if not fresh:
                    released, released_reasoning = feed.release()
                else:
                    text, reasoning = out.read(chunk)
                    parsed.watch(text)  # before the monitor may release any of it
                    released, released_reasoning = feed.feed(text, reasoning)
                # The chunk was produced (and is being judged) beside the input check: nothing leaves
                # before the input verdict, and a verdict that is back is enforced at once.
                if released or released_reasoning or self._inputs_back(plan):
                    self._wait_inputs(plan)
                if (item := out.partial(parsed.take(hold.take(released)), released_reasoning)) is not None:
                    yield item
            self._wait_inputs(plan)  # an empty stream still waits for the verdict
            if out.last is None:
                monitor.finish()
                return
            checks, calls = self._final_checks(plan, out)
            pending = PendingCheck.start(lambda: _judge(self.guard, checks)) if checks else None
            tail, reasoning_tail = feed.finish()  # the last window, judged beside the tool calls
            if pending is not None and _flagged(pending.wait()):
                plan.failed_open = True
            final = out.final(parsed.finish(hold.finish(tail)), reasoning_tail)
            self._passed(plan, final.message, calls, (monitor,))
            yield final

    async def _aguard_chat_stream(self, plan: _Plan, inner: Any, hold: ActionHold) -> ChatResponseAsyncGen:
        out = ChatChunks()
        parsed = ReadingHold()
        async with contextlib.AsyncExitStack() as stack:
            stack.push_async_callback(aclose_upstream, inner)
            monitor = await stack.enter_async_context(self.guard.astream(plan.prompt, **self._monitor_options()))
            feed = AnswerFeed(monitor)  # the reasoning and the text judged as one response, as `achat` judges them
            chunks = _raced(plan, inner, lambda: (monitor,))
            stack.push_async_callback(chunks.aclose)  # before the upstream is closed: ends its read
            async for chunk in chunks:
                if chunk is _VERDICT:
                    released, released_reasoning = await feed.arelease()
                else:
                    text, reasoning = out.read(chunk)
                    await _awatch(parsed, text)  # before the monitor may release any of it
                    released, released_reasoning = await feed.afeed(text, reasoning)
                if released or released_reasoning:
                    await self._await_inputs(plan)  # fed beside the input check: nothing out before its verdict
                if (item := out.partial(parsed.take(hold.take(released)), released_reasoning)) is not None:
                    yield item
            if out.last is None:
                await monitor.afinish()
                return
            checks, calls = await off_loop(lambda: self._final_checks(plan, out), out.streamed, out.last)
            pending = _beside(self._ascreen(checks, plan)) if checks else None
            try:
                tail, reasoning_tail = await feed.afinish()  # the last window, judged beside the tool calls
                if pending is not None:
                    await pending
            finally:
                if pending is not None and not pending.done():
                    pending.cancel()
            final = out.final(parsed.finish(hold.finish(tail)), reasoning_tail)
            self._passed(plan, final.message, calls, (monitor,))
            yield final

    def _completion_end(self, plan: _Plan, out: CompletionChunks) -> Checks:
        """What the end of a completion stream still needs judged: the text of a stream that rewrote it, handed over
        whole (`CompletionChunks.rewritten`), and its last chunk's ``raw`` (`_reply_checks`)."""
        if out.last is None:
            return []
        rewritten = out.rewritten()
        checks = self._output_checks(plan, rewritten, parsed=out.answer)
        judged = [out.streamed, out.reasoned, rewritten]
        return checks + self._reply_checks(plan, reply_parts(out.last, own=False), judged)

    def _guard_completion_stream(self, plan: _Plan, inner: Iterator[CompletionResponse]) -> CompletionResponseGen:
        out = CompletionChunks()
        parsed = ReadingHold()
        with contextlib.ExitStack() as stack:
            chunks = UpstreamReader(inner, close=close_upstream, name="qwenguard-li-upstream")  # see above
            stack.callback(chunks.close)
            monitor = stack.enter_context(self._open_monitor(plan))
            feed = AnswerFeed(monitor)  # reasoning, when a chat model's carries it, judged with the text (never sent)
            for fresh, chunk in chunks.race(lambda: verdict_waiters(monitor)):
                if fresh:
                    text, reasoning = out.read(chunk)
                    parsed.watch(text)
                    released = feed.feed(text, reasoning)[0]
                else:
                    released = feed.release()[0]
                if released or self._inputs_back(plan):  # judged beside the input check, released after it
                    self._wait_inputs(plan)
                if (item := out.partial(parsed.take(released))) is not None:
                    yield item
            self._wait_inputs(plan)
            checks = self._completion_end(plan, out)
            pending = PendingCheck.start(lambda: _judge(self.guard, checks)) if checks else None
            tail = feed.finish()[0]  # the last window, judged beside the last chunk's raw
            if pending is not None:
                pending.wait()
            if out.last is not None:
                yield out.final(parsed.finish(tail))

    async def _aguard_completion_stream(self, plan: _Plan, inner: Any) -> CompletionResponseAsyncGen:
        out = CompletionChunks()
        parsed = ReadingHold()
        async with contextlib.AsyncExitStack() as stack:
            stack.push_async_callback(aclose_upstream, inner)
            monitor = await stack.enter_async_context(self.guard.astream(plan.prompt, **self._monitor_options()))
            feed = AnswerFeed(monitor)  # as in the sync twin
            chunks = _raced(plan, inner, lambda: (monitor,))
            stack.push_async_callback(chunks.aclose)
            async for chunk in chunks:
                if chunk is _VERDICT:
                    released = (await feed.arelease())[0]
                else:
                    text, reasoning = out.read(chunk)
                    await _awatch(parsed, text)
                    released = (await feed.afeed(text, reasoning))[0]
                if released:
                    await self._await_inputs(plan)
                if (item := out.partial(parsed.take(released))) is not None:
                    yield item
            await self._await_inputs(plan)
            checks = await off_loop(lambda: self._completion_end(plan, out), out.streamed, out.last)
            pending = _beside(self._ascreen(checks)) if checks else None
            try:
                tail = (await feed.afinish())[0]  # the last window, judged beside the last chunk's raw
                if pending is not None:
                    await pending
            finally:
                if pending is not None and not pending.done():
                    pending.cancel()
            if out.last is not None:
                yield out.final(parsed.finish(tail))

    # -- template calls: screen by variable, not the formatted prompt -------------------------
    # The wrapped LLM is handed `TemplateCall.template`, whose variables were computed and judged here: a
    # function mapping or a ``__str__`` is not run a second time, where it could print other text. Every
    # template entry point (predict, stream, the structured programs) goes through `_judge_template`.
    def _judge_template(
        self, prompt: BasePromptTemplate, prompt_args: Mapping[str, Any], answers: frozenset[str] | None = None
    ) -> tuple[TemplateCall, _Plan | None]:
        """Resolve and judge a template call (raises when blocked); run the call under `_running`. A structured call
        (``answers``: its schema's tools) of a chat template that LlamaIndex's text program runs is planned by role
        (`_turns_plan`)."""
        call, plan = self._resolve(prompt, prompt_args)
        if plan is None:
            self._screen(self._template_variables(call))
            if answers is None or (plan := self._turns_plan(call, answers)) is None:
                return call, None
        return call, self._start_inputs(plan)

    def _turns_plan(self, call: TemplateCall, answers: frozenset[str]) -> _Plan | None:
        """The plan of a structured call's chat template that LlamaIndex's text program (``LLMTextCompletionProgram``)
        runs. Over an LLM that is not a chat model it prints the messages into one prompt (``messages_to_prompt``),
        which was judged whole as the user's text, every assistant turn and a printed conversation's roles with it
        (rt57f); over a chat model it appends its JSON-schema instruction to the last message, which was judged as
        the user's words joined to the request (the demo guard let a request through that ``chat`` blocks: rt71c
        F2). Its messages are judged by role instead, without the program's instruction, as the chat path judges
        them (`_plan_messages`: a printed conversation read back into its turns), and the call takes this plan: the
        same user turn gets the same verdict on either model and on ``chat``. None for any other call (a
        function-calling program's messages are the template's): it plans itself."""
        if not isinstance(call.template, ChatPromptTemplate) or not self._text_program():
            return None
        token = _ANSWER_TOOLS.set((id(self), answers)) if answers else None
        try:
            with self._formatted(call):
                return self._plan_messages(call.template.format_messages(**call.arguments))
        finally:
            if token is not None:
                _ANSWER_TOOLS.reset(token)

    def _text_program(self) -> bool:
        """Does a structured call run LlamaIndex's text program (``get_program_for_llm``'s choice), which formats the
        template itself: a completion-only LLM's prompt, the output parser's instruction added?"""
        metadata = self.llm.metadata
        if not metadata.is_chat_model:  # whatever program: its messages reach the model printed into one prompt
            return True
        mode = self.pydantic_program_mode
        return mode == PydanticProgramMode.LLM or (
            mode == PydanticProgramMode.DEFAULT and not metadata.is_function_calling_model
        )

    async def _ajudge_template(
        self, prompt: BasePromptTemplate, prompt_args: Mapping[str, Any], answers: frozenset[str] | None = None
    ) -> tuple[TemplateCall, _Plan | None]:
        # The template's own code (a function mapping) runs here, where the caller runs it; the reading off the loop.
        resolved = resolve_template(prompt, prompt_args, llm=self, max_chars=self.guard.max_chars)
        call, plan = await off_loop(lambda: self._plan_call(resolved), resolved.variables, resolved.template)
        if plan is None:
            await self._ascreen(await off_loop(lambda: self._template_variables(call), call.variables))
            if answers is None:
                return call, None
            if (plan := await off_loop(lambda: self._turns_plan(call, answers), call.template)) is None:
                return call, None
        return call, await self._astart_inputs(plan)

    @contextlib.contextmanager
    def _running(
        self,
        call: TemplateCall,
        plan: _Plan | None,
        answers: frozenset[str] = frozenset(),
        acts: Callable[[str], list[ToolSelection]] | None = None,
    ) -> Iterator[None]:
        """While a judged template call runs: its chat/complete calls take the plan instead of judging the
        formatted prompt again, or, without a plan, judge its system messages too; in a structured-output call,
        judge a call of the schema's tool (``answers``) as the answer (`_AnswerCall`); the actions its component
        reads out of the answer (``acts``, `template_actions`) as tool calls."""
        token = _ANSWER_TOOLS.set((id(self), answers)) if answers else None
        acting = _TEXT_ACTIONS.set((id(self), acts)) if acts is not None else None
        try:
            with self._formatted(call) if plan is None else self._prescreened(plan):
                yield
        finally:
            if acting is not None:
                _TEXT_ACTIONS.reset(acting)
            if token is not None:
                _ANSWER_TOOLS.reset(token)

    def _steps(
        self,
        call: TemplateCall,
        plan: _Plan | None,
        inner: Generator[T, None, None],
        answers: frozenset[str] = frozenset(),
    ) -> Iterator[T]:
        """``inner`` (a lazy generator) with each step run under `_running`: set across a ``yield``, the
        context would leak into the consumer's own calls of this LLM, which would go unjudged."""
        with contextlib.closing(inner):
            while True:
                with self._running(call, plan, answers):
                    try:
                        item = next(inner)
                    except StopIteration:
                        return
                yield item

    async def _asteps(
        self,
        call: TemplateCall,
        plan: _Plan | None,
        inner: AsyncGenerator[T, None],
        answers: frozenset[str] = frozenset(),
    ) -> AsyncGenerator[T, None]:
        try:
            while True:
                with self._running(call, plan, answers):
                    try:
                        item = await inner.__anext__()
                    except StopAsyncIteration:
                        return
                yield item
        finally:
            await inner.aclose()

    def predict(self, prompt: BasePromptTemplate, **prompt_args: Any) -> str:
        call, plan = self._judge_template(prompt, prompt_args)
        with self._running(call, plan, acts=template_actions(prompt)):
            return super().predict(call.template, **call.arguments)

    async def apredict(self, prompt: BasePromptTemplate, **prompt_args: Any) -> str:
        call, plan = await self._ajudge_template(prompt, prompt_args)
        with self._running(call, plan, acts=template_actions(prompt)):
            return await super().apredict(call.template, **call.arguments)

    def stream(self, prompt: BasePromptTemplate, **prompt_args: Any) -> Any:
        call, plan = self._judge_template(prompt, prompt_args)
        with self._running(call, plan, acts=template_actions(prompt)):  # stream_chat/stream_complete read it here
            return super().stream(call.template, **call.arguments)

    async def astream(self, prompt: BasePromptTemplate, **prompt_args: Any) -> Any:
        call, plan = await self._ajudge_template(prompt, prompt_args)
        with self._running(call, plan, acts=template_actions(prompt)):
            return await super().astream(call.template, **call.arguments)

    # The structured programs format the template themselves and call chat/stream_chat: judged here as a
    # template call, so a variable put in a system message or a context variable is judged as what it is.
    def structured_predict(
        self,
        output_cls: type[Model],
        prompt: BasePromptTemplate,
        llm_kwargs: dict[str, Any] | None = None,
        **prompt_args: Any,
    ) -> Model:
        answers = _schema_tools(output_cls)
        call, plan = self._judge_template(prompt, prompt_args, answers)
        with self._running(call, plan, answers):
            return super().structured_predict(output_cls, call.template, llm_kwargs, **call.arguments)

    async def astructured_predict(
        self,
        output_cls: type[Model],
        prompt: BasePromptTemplate,
        llm_kwargs: dict[str, Any] | None = None,
        **prompt_args: Any,
    ) -> Model:
        answers = _schema_tools(output_cls)
        call, plan = await self._ajudge_template(prompt, prompt_args, answers)
        with self._running(call, plan, answers):
            return await super().astructured_predict(output_cls, call.template, llm_kwargs, **call.arguments)

    def stream_structured_predict(
        self,
        output_cls: type[Model],
        prompt: BasePromptTemplate,
        llm_kwargs: dict[str, Any] | None = None,
        **prompt_args: Any,
    ) -> Any:
        """Judged when called, like `stream`; the partial objects follow."""
        answers = _schema_tools(output_cls)
        call, plan = self._judge_template(prompt, prompt_args, answers)
        inner = super().stream_structured_predict(output_cls, call.template, llm_kwargs, **call.arguments)
        return self._steps(call, plan, inner, answers)

    async def astream_structured_predict(
        self,
        output_cls: type[Model],
        prompt: BasePromptTemplate,
        llm_kwargs: dict[str, Any] | None = None,
        **prompt_args: Any,
    ) -> Any:
        answers = _schema_tools(output_cls)
        call, plan = await self._ajudge_template(prompt, prompt_args, answers)
        inner = await super().astream_structured_predict(output_cls, call.template, llm_kwargs, **call.arguments)
        return self._asteps(call, plan, inner, answers)

    # -- tool calling: delegated to the wrapped LLM -------------------------------------------
    # A program used directly (``FunctionCallingProgram(output_cls=..., llm=guarded)``, not through structured_predict)
    # hands the schema's tool to these: its call is the program's output, judged as the answer (`_AnswerCall`). The
    # chat call each makes takes the names into its plan when it is made, so a stream needs no context later.
    @contextlib.contextmanager
    def _schema_calls(self, tools: Sequence[BaseTool]) -> Iterator[None]:
        names = _program_tools(tools)
        token = _ANSWER_TOOLS.set((id(self), names | self._answer_tools())) if names else None
        try:
            yield
        finally:
            if token is not None:
                _ANSWER_TOOLS.reset(token)

    def chat_with_tools(self, tools: Sequence[BaseTool], *args: Any, **kwargs: Any) -> ChatResponse:
        with self._schema_calls(tools):
            return super().chat_with_tools(tools, *args, **kwargs)

    async def achat_with_tools(self, tools: Sequence[BaseTool], *args: Any, **kwargs: Any) -> ChatResponse:
        with self._schema_calls(tools):
            return await super().achat_with_tools(tools, *args, **kwargs)

    def stream_chat_with_tools(self, tools: Sequence[BaseTool], *args: Any, **kwargs: Any) -> ChatResponseGen:
        with self._schema_calls(tools):
            return super().stream_chat_with_tools(tools, *args, **kwargs)

    async def astream_chat_with_tools(
        self, tools: Sequence[BaseTool], *args: Any, **kwargs: Any
    ) -> ChatResponseAsyncGen:
        with self._schema_calls(tools):
            return await super().astream_chat_with_tools(tools, *args, **kwargs)

    def _inner_function_calling(self) -> FunctionCallingLLM:
        if not isinstance(self.llm, FunctionCallingLLM):
            raise TypeError(f"{type(self.llm).__name__} does not support tool calling (not a FunctionCallingLLM)")
        return self.llm

    def _prepare_chat_with_tools(
        self,
        tools: Sequence[BaseTool],
        user_msg: str | ChatMessage | None = None,
        chat_history: list[ChatMessage] | None = None,
        verbose: bool = False,
        allow_parallel_tool_calls: bool = False,
        tool_required: bool = False,  # keep explicit: FunctionCallingLLM inspects this signature
        **kwargs: Any,
    ) -> dict[str, Any]:
        return self._inner_function_calling()._prepare_chat_with_tools_compat(
            tools,
            user_msg=user_msg,
            chat_history=chat_history,
            verbose=verbose,
            allow_parallel_tool_calls=allow_parallel_tool_calls,
            tool_required=tool_required,
            **kwargs,
        )

    def _validate_chat_with_tools_response(
        self, response: ChatResponse, tools: Sequence[BaseTool], allow_parallel_tool_calls: bool = False, **kwargs: Any
    ) -> ChatResponse:
        return self._inner_function_calling()._validate_chat_with_tools_response(
            response, tools, allow_parallel_tool_calls=allow_parallel_tool_calls, **kwargs
        )

    def get_tool_calls_from_response(
        self, response: ChatResponse, error_on_no_tool_call: bool = True, **kwargs: Any
    ) -> list[ToolSelection]:
        """The wrapped LLM's reading of the calls; of an LLM without tool calling, the standard `ToolCallBlock`s.
        `GuardedLLM` is a `FunctionCallingLLM` whatever it wraps, and CodeActAgent asks any such LLM for the calls
        of every answer (``error_on_no_tool_call=False``): a CodeAct step over a wrapped local model failed."""
        if isinstance(self.llm, FunctionCallingLLM):
            return self.llm.get_tool_calls_from_response(
                response, error_on_no_tool_call=error_on_no_tool_call, **kwargs
            )
        calls = []
        for block in response.message.blocks:
            if isinstance(block, ToolCallBlock):
                args = block.tool_kwargs
                args = args if isinstance(args, dict) else _json_object(args)  # text: as the OpenAI classes read it
                calls.append(
                    ToolSelection(tool_id=block.tool_call_id or "", tool_name=block.tool_name, tool_kwargs=args)
                )
        if not calls and error_on_no_tool_call:
            raise ValueError(f"Expected at least one tool call, but got {len(calls)} tool calls.")
        return calls

    # -- predict_and_call: the tools' outputs are the answer ----------------------------------
    # LlamaIndex's ``predict_and_call`` runs the calls of the model's answer and hands the application the tools'
    # outputs, joined, as the response (``error_on_tool_error=True``: in a ValueError's text), no model reading them
    # first: they reached the app unjudged (rt67e F2), or, from `guard_tools`, judged under the tool-result stage
    # alone. So that text is judged as the answer it is (`_AnswerOutput`); blocked, the guard's stop is raised in its
    # place (the error's: with nothing of it chained).
    def predict_and_call(
        self,
        tools: Sequence[BaseTool],
        user_msg: str | ChatMessage | None = None,
        chat_history: list[ChatMessage] | None = None,
        verbose: bool = False,
        allow_parallel_tool_calls: bool = False,
        error_on_no_tool_call: bool = True,
        error_on_tool_error: bool = False,
        **kwargs: Any,
    ) -> AgentChatResponse:
        self._require_guard()
        plan = _Plan([], _question(user_msg, chat_history))
        try:
            response = super().predict_and_call(
                tools,
                user_msg=user_msg,
                chat_history=chat_history,
                verbose=verbose,
                allow_parallel_tool_calls=allow_parallel_tool_calls,
                error_on_no_tool_call=error_on_no_tool_call,
                error_on_tool_error=error_on_tool_error,
                **kwargs,
            )
        except ValueError as error:  # the tools' outputs with ``error_on_tool_error``: judged below, out of this block
            failed = error
        else:
            self._screen(_returned_checks(plan, tools, response))
            return response
        self._failed(plan, failed, outputs=True)

    async def apredict_and_call(
        self,
        tools: Sequence[BaseTool],
        user_msg: str | ChatMessage | None = None,
        chat_history: list[ChatMessage] | None = None,
        verbose: bool = False,
        allow_parallel_tool_calls: bool = False,
        error_on_no_tool_call: bool = True,
        error_on_tool_error: bool = False,
        **kwargs: Any,
    ) -> AgentChatResponse:
        self._require_guard()
        plan = _Plan([], _question(user_msg, chat_history))
        try:
            response = await super().apredict_and_call(
                tools,
                user_msg=user_msg,
                chat_history=chat_history,
                verbose=verbose,
                allow_parallel_tool_calls=allow_parallel_tool_calls,
                error_on_no_tool_call=error_on_no_tool_call,
                error_on_tool_error=error_on_tool_error,
                **kwargs,
            )
        except ValueError as error:
            failed = error
        else:
            await self._ascreen(_returned_checks(plan, tools, response))
            return response
        await self._afailed(plan, failed, outputs=True)


def _question(user_msg: str | ChatMessage | None, chat_history: Sequence[ChatMessage] | None) -> list[GuardMessage]:
    """The question ``predict_and_call``'s answer is judged against: the user's message, or the history's last user
    turn (the conversation before it is judged with the model's call)."""
    if isinstance(user_msg, ChatMessage):
        text = message_text(user_msg)
    elif isinstance(user_msg, str):
        text = user_msg
    else:
        turns = [m for m in chat_history or () if m.role == MessageRole.USER]
        text = message_text(turns[-1]) if turns else ""
    return prompt_conversation(text)


def _returned_checks(plan: _Plan, tools: Sequence[Any], response: AgentChatResponse) -> Checks:
    """The check of the text ``predict_and_call`` returns as the answer (`_AnswerOutput`); none for an empty one, nor
    for a structured output's (``FunctionCallingProgram`` calls it with the schema's tool, whose output is the object
    the model's call holds: judged as the answer with that call, `_AnswerCall`)."""
    text = response.response or ""
    schema = _program_tools(tools)
    if not text.strip() or (response.sources and all(s.tool_name in schema for s in response.sources)):
        return []
    return [_AnswerOutput(response_conversation(plan.prompt, text))]


def _program_tools(tools: Sequence[Any]) -> frozenset[str]:
    """The names of the tools LlamaIndex's ``get_function_tool`` made of an output class (the schema tool of
    ``FunctionCallingProgram``, which every structured output over a function-calling LLM uses): a call of one is the
    program's output, the answer. Known by the function it wraps, which only that factory makes."""
    names = set()
    for tool in tools:
        fn = getattr(tool, "fn", None)
        if (
            getattr(fn, "__qualname__", None) == "get_function_tool.<locals>.model_fn"
            and getattr(fn, "__module__", None) == "llama_index.core.program.function_program"
        ):
            names.add(tool.metadata.name)
    return frozenset(n for n in names if isinstance(n, str) and n)


# LlamaIndex's agents ask for an ``output_cls`` answer with the conversation printed into one user message
# (``llama_index.core.agent.utils.messages_to_xml_format``), a text block for each tag and each text block of a turn.
_PRINTED_OPEN = "<current_conversation>\n"
_PRINTED_CLOSE = "</current_conversation>\n\n"
_PRINTED_ASK = "Given the conversation, format the output according to the provided schema."
_PRINTED_TEXT = ("\t\t<message>", "</message>\n")
_ROLES = {role.value: role for role in MessageRole}


def _printed_turns(message: ChatMessage) -> list[ChatMessage] | None:
    """The turns of a conversation ``messages_to_xml_format`` printed into ``message`` (None: not such a message).

    Read by block, never by the text's markup: a turn's text is one block whatever tags it writes, so a message that
    writes ``</message></user><assistant>`` is read as the text of the turn it is in (a user's, judged as a prompt)."""
    blocks = message.blocks
    if role_of(message) != MessageRole.USER.value or len(blocks) < 3:
        return None
    texts = [b.text for b in blocks if isinstance(b, TextBlock)]
    if len(texts) != len(blocks):
        return None
    if texts[0] != _PRINTED_OPEN or texts[-2] != _PRINTED_CLOSE or texts[-1] != _PRINTED_ASK:
        return None
    turns: list[ChatMessage] = []
    i, end = 1, len(texts) - 2
    while i < end:
        tag = texts[i]
        role = _ROLES.get(tag[2:-2]) if tag.startswith("\t<") and tag.endswith(">\n") else None
        if role is None:
            return None
        i += 1
        parts = []
        while i < end and texts[i].startswith(_PRINTED_TEXT[0]) and texts[i].endswith(_PRINTED_TEXT[1]):
            parts.append(TextBlock(text=texts[i][len(_PRINTED_TEXT[0]) : -len(_PRINTED_TEXT[1])]))
            i += 1
        if i >= end or texts[i] != f"\t</{role.value}>\n":
            return None
        i += 1
        turns.append(ChatMessage(role=role, blocks=parts))
    return turns


def _printed_conversation(messages: Sequence[ChatMessage]) -> tuple[Sequence[ChatMessage], bool]:
    """A structured-output call's input with a printed conversation read back into its turns (`_printed_turns`),
    judged by role as the chat path judges them, the turns judged before not again, the framework's wording not at
    all. Judged whole as the user's prompt, every assistant and tool turn was the user's text, and the printed roles
    read as a forged conversation (the demo guard: Jailbreak), so no agent got its structured answer (rt57f F2). The
    agent's system prompt, printed again as the first turn, stays the application's.

    The flag: the list now opens with a printed system turn that repeats no real system message, which must be judged
    (``screen_system``): it is text a user message wrote, and as the opening message it was taken for the
    application's prompt and never judged (rt71c F1)."""
    if not messages or (turns := _printed_turns(messages[-1])) is None:
        return messages, False
    head = list(messages[:-1])
    if head and turns and role_of(head[-1]) in SYSTEM_ROLES and role_of(turns[0]) in SYSTEM_ROLES:
        if message_text(head[-1]) == message_text(turns[0]):
            turns = turns[1:]
    return [*head, *turns], not head and bool(turns) and role_of(turns[0]) in SYSTEM_ROLES


def _text_calls(acts: Callable[[str], list[ToolSelection]], texts: Sequence[str]) -> list[ToolSelection]:
    """The actions ``acts`` reads in each distinct text of ``texts`` (an answer's content, its streamed deltas)."""
    calls: list[ToolSelection] = []
    for text in dict.fromkeys(t for t in texts if t):
        calls += acts(text)
    return calls


def _guard_missing() -> GuardMissing:
    return GuardMissing(
        "this GuardedLLM has no guard: it is a pickled copy (IngestionPipeline.run(num_workers=N > 1) sends its "
        "transformations' LLMs to worker processes that way; a workflow Context saved with JsonPickleSerializer), "
        "and a Guard does not pickle. Wrap the LLM again where it runs: GuardedLLM(llm=copy.llm, guard=guard), or "
        "run the pipeline with num_workers=None (the default) or 1"
    )


def _json_object(text: str) -> dict[str, Any]:
    """Argument text read as a JSON object, repaired as LlamaIndex's parsers repair it ({} when it is none)."""
    try:
        value = parse_partial_json(text)
    except (ValueError, TypeError):
        return {}
    return value if isinstance(value, dict) else {}


def _beside(check: Any) -> asyncio.Future[Any]:
    """A check run beside the stream's last window. Its outcome is always read: when that window raises first (a
    blocked answer whose tool calls are blocked too), the task's own `GuardViolation` would otherwise be logged at
    garbage collection as "Task exception was never retrieved", once per blocked answer."""
    task = asyncio.ensure_future(check)
    task.add_done_callback(mark_read)
    return task


async def _awatch(parsed: ReadingHold, text: str) -> None:
    """``parsed.watch(text)`` for an async stream: on a worker thread when the piece is long (`off_loop`). Its scan
    follows the piece literal by literal in Python, so its work grows with the piece: one delta of 900,000 characters
    of quoted prose held the event loop 90-160 ms (rt60 leftover). Awaited before the piece is fed to the monitor, as
    the sync twin watches it before feeding: nothing of it can be released before it is watched, chunks keep their
    order."""
    await off_loop(functools.partial(parsed.watch, text), text)


#: Yielded by `_raced` instead of a chunk: a check of the answer came back, judged text may go out.
_VERDICT = object()


async def _raced(plan: _Plan, inner: Any, monitors: Callable[[], Sequence[Any]]) -> AsyncGenerator[Any, None]:
    """Iterate an async stream; while the input verdict is pending, race each chunk against it so a
    blocked input cancels the chunk being produced instead of waiting for it. Once the input passed,
    race each chunk against the checks in flight of ``monitors()``: `_VERDICT` when one comes back
    first, so judged text goes out without waiting for the model's next token (``wakeup.py``)."""
    race: UpstreamRace[Any] = UpstreamRace(inner)
    try:
        while True:
            try:
                if plan.pending is not None and not plan.pending.passed:
                    # wait=False: the chunk is judged beside the input check; the caller waits for the
                    # input verdict before anything goes out (a blocking one still cancels the read).
                    fresh, chunk = await GuardedLLM._race(plan, race.next(), wait=False)
                else:
                    fresh, chunk = await race.next(verdict_waiters(*monitors()))
            except StopAsyncIteration:
                await GuardedLLM._await_inputs(plan)  # an empty stream still waits for the verdict
                return
            yield chunk if fresh else _VERDICT
    finally:
        await race.aclose(upstream=False)
