"""`GuardedLLM`: any LlamaIndex LLM, with every input, streamed chunk and tool call screened.

Wrapping the LLM is the one public hook that sees everything in LlamaIndex: query engines, chat
engines and agents (FunctionAgent, AgentWorkflow, ReActAgent) all call it, and a `GuardViolation`
raised inside it stops them (instrumentation handlers cannot: their exceptions are swallowed).

What is screened, and as what:

- the user's latest turn, as a prompt (with earlier turns as history);
- tool messages after it, as untrusted content (injected instructions show up as Jailbreak);
- for template calls (``predict``/``stream``, which query engines use) the template's query variable
  as the prompt and its context variable (``context_str``...) as untrusted retrieved content,
  instead of the whole formatted prompt;
- the answer: whole responses with ``check_response``; streams through a `StreamMonitor`, which
  releases text only once screened and raises mid-stream (the inner generator is then closed);
- tool calls in a response, each with ``check_tool_call``, before the caller can see them. In a
  stream the tool calls travel on the final chunk, so chunks that carry tool calls are held back
  until they are screened: an agent never receives an unscreened call, so a blocked tool never runs.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from contextvars import ContextVar
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from llama_index.core.base.llms.types import (
    ChatMessage,
    ChatResponse,
    ChatResponseAsyncGen,
    ChatResponseGen,
    CompletionResponse,
    CompletionResponseAsyncGen,
    CompletionResponseGen,
    LLMMetadata,
)
from llama_index.core.bridge.pydantic import Field, SerializeAsAny
from llama_index.core.llms.function_calling import FunctionCallingLLM
from llama_index.core.llms.llm import LLM, ToolSelection
from llama_index.core.prompts import BasePromptTemplate

from qwenguard.core import Guard, enforce
from qwenguard.core.conversations import (
    prompt_conversation,
    response_conversation,
    tool_call_conversation,
    untrusted_conversation,
)
from qwenguard.core.verdict import Stage

from ._messages import GuardMessage, message_text, split_turn, tool_calls_in, with_text

if TYPE_CHECKING:
    from llama_index.core.tools.types import BaseTool

__all__ = ["GuardedLLM", "QUERY_VARIABLES", "CONTEXT_VARIABLES"]

#: Template variables that hold the user's own words (LlamaIndex's prompts use ``query_str``).
QUERY_VARIABLES = ("query_str", "query", "question", "user_input", "input")
#: Template variables that hold retrieved or external text: untrusted, screened as documents.
CONTEXT_VARIABLES = ("context_str", "context_msg", "context")

Checks = list[tuple[Stage, list[GuardMessage]]]

# Set while a template call (predict/stream) runs: its inputs were screened by variable, so the
# chat/complete call it makes must not re-screen the formatted prompt as if the user wrote all of it.
# Holds (id of the GuardedLLM, the prompt conversation answers are judged against).
_PRESCREENED: ContextVar[tuple[int, list[GuardMessage]] | None] = ContextVar("qwenguard_prescreened", default=None)


@dataclass
class _Plan:
    inputs: Checks
    prompt: list[GuardMessage]  # what the answer is judged against


class GuardedLLM(FunctionCallingLLM):
    """Wrap ``llm`` so that a `Guard` screens its inputs, outputs and tool calls.

    >>> Settings.llm = GuardedLLM(llm=OpenAI(model="gpt-4o-mini"), guard=Guard.from_pretrained("demo"))  # doctest: +SKIP

    A blocked check raises `GuardViolation` (a plain ``Exception``, so agent workflows fail cleanly
    instead of hanging). Metadata, prompt formatting and tool-calling come from the wrapped LLM.

    - ``holdback``: guard tokens a stream keeps back before releasing text (``None``: the monitor's
      default; 0 streams at once, exposing at most the span before a violation is detected).
    - ``screen_context``: screen the context variables of template calls as retrieved content.
    - ``screen_system``: also screen system messages as untrusted content (off by default: system
      prompts are usually the application's own; turn it on when retrieved text is put there, as the
      context chat engines do, or screen the nodes with `GuardNodePostprocessor` instead).
    """

    llm: SerializeAsAny[LLM] = Field(description="The LLM being guarded.")
    guard: Any = Field(exclude=True, description="The qwenguard Guard that screens the traffic.")
    holdback: int | None = Field(default=None, description="Stream hold-back in guard tokens (None: default).")
    screen_context: bool = Field(default=True, description="Screen template context variables as documents.")
    screen_system: bool = Field(default=False, description="Screen system messages as untrusted content.")

    def __init__(self, llm: LLM, guard: Guard, **kwargs: Any) -> None:
        if not isinstance(llm, LLM):
            raise TypeError(f"llm must be a LlamaIndex LLM, got {type(llm).__name__}")
        if not isinstance(guard, Guard):
            raise TypeError(f"guard must be a qwenguard Guard, got {type(guard).__name__}")
        # Format prompts exactly as the wrapped LLM would (template calls format here, then pass
        # formatted text down), and share its callback manager so events are not duplicated.
        for name in ("system_prompt", "messages_to_prompt", "completion_to_prompt", "output_parser",
                     "pydantic_program_mode", "query_wrapper_prompt", "callback_manager"):
            if name not in kwargs and getattr(llm, name, None) is not None:
                kwargs[name] = getattr(llm, name)
        super().__init__(llm=llm, guard=guard, **kwargs)

    @classmethod
    def class_name(cls) -> str:
        return "GuardedLLM"

    @property
    def metadata(self) -> LLMMetadata:
        return self.llm.metadata

    # -- what to screen -----------------------------------------------------------------------
    def _plan_messages(self, messages: Sequence[ChatMessage]) -> _Plan:
        pre = _PRESCREENED.get()
        if pre is not None and pre[0] == id(self):
            return _Plan([], pre[1])
        turn = split_turn(messages)
        return _Plan(turn.checks(screen_system=self.screen_system), turn.prompt)

    def _plan_prompt(self, prompt: str) -> _Plan:
        pre = _PRESCREENED.get()
        if pre is not None and pre[0] == id(self):
            return _Plan([], pre[1])
        conversation = prompt_conversation(prompt)
        return _Plan([(Stage.PROMPT, conversation)], conversation)

    def _plan_template(self, prompt: BasePromptTemplate, prompt_args: Mapping[str, Any]) -> _Plan | None:
        """Screen a template call by variable; ``None`` when no query variable is recognised."""
        variables = {**getattr(prompt, "kwargs", {}), **prompt_args}
        query = next((variables[k] for k in QUERY_VARIABLES if isinstance(variables.get(k), str)), None)
        if query is None:
            return None
        conversation = prompt_conversation(query)
        checks: Checks = [(Stage.PROMPT, conversation)]
        if self.screen_context:
            for key in CONTEXT_VARIABLES:
                value = variables.get(key)
                if isinstance(value, str) and value.strip():
                    checks.append((Stage.RETRIEVAL, untrusted_conversation(value, key)))
        return _Plan(checks, conversation)

    @staticmethod
    def _output_checks(plan: _Plan, text: str, calls: Sequence[ToolSelection] = ()) -> Checks:
        checks: Checks = []
        if text.strip():
            checks.append((Stage.RESPONSE, response_conversation(plan.prompt, text)))
        for call in calls:
            checks.append((Stage.TOOL_CALL, tool_call_conversation(call.tool_name, call.tool_kwargs, plan.prompt)))
        return checks

    def _screen(self, checks: Checks) -> None:
        if checks:
            for decision in self.guard.check_many(checks):
                enforce(decision)

    async def _ascreen(self, checks: Checks) -> None:
        if checks:
            for decision in await self.guard.acheck_many(checks):
                enforce(decision)

    def _monitor_options(self) -> dict[str, Any]:
        # The inputs were screened by role already; the monitor must not re-judge them as one prompt.
        options: dict[str, Any] = {"screen_prompt": False}
        if self.holdback is not None:
            options["holdback"] = self.holdback
        return options

    @contextlib.contextmanager
    def _prescreened(self, plan: _Plan) -> Iterator[None]:
        token = _PRESCREENED.set((id(self), plan.prompt))
        try:
            yield
        finally:
            _PRESCREENED.reset(token)

    # -- chat and complete --------------------------------------------------------------------
    def chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponse:
        plan = self._plan_messages(messages)
        self._screen(plan.inputs)
        response = self.llm.chat(messages, **kwargs)
        self._screen(self._output_checks(plan, message_text(response.message), tool_calls_in(self.llm, response)))
        return response

    async def achat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponse:
        plan = self._plan_messages(messages)
        await self._ascreen(plan.inputs)
        response = await self.llm.achat(messages, **kwargs)
        await self._ascreen(self._output_checks(plan, message_text(response.message), tool_calls_in(self.llm, response)))
        return response

    def complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponse:
        plan = self._plan_prompt(prompt)
        self._screen(plan.inputs)
        response = self.llm.complete(prompt, formatted=formatted, **kwargs)
        self._screen(self._output_checks(plan, response.text or ""))
        return response

    async def acomplete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponse:
        plan = self._plan_prompt(prompt)
        await self._ascreen(plan.inputs)
        response = await self.llm.acomplete(prompt, formatted=formatted, **kwargs)
        await self._ascreen(self._output_checks(plan, response.text or ""))
        return response

    # -- streams ------------------------------------------------------------------------------
    # Inputs are screened when the stream is requested (not when first iterated), so a blocked
    # prompt raises at the call and the inner LLM is never asked.
    def stream_chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponseGen:
        plan = self._plan_messages(messages)
        self._screen(plan.inputs)
        return self._guard_chat_stream(plan, self.llm.stream_chat(messages, **kwargs))

    async def astream_chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponseAsyncGen:
        plan = self._plan_messages(messages)
        await self._ascreen(plan.inputs)
        return self._aguard_chat_stream(plan, await self.llm.astream_chat(messages, **kwargs))

    def stream_complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponseGen:
        plan = self._plan_prompt(prompt)
        self._screen(plan.inputs)
        return self._guard_completion_stream(plan, self.llm.stream_complete(prompt, formatted=formatted, **kwargs))

    async def astream_complete(
        self, prompt: str, formatted: bool = False, **kwargs: Any
    ) -> CompletionResponseAsyncGen:
        plan = self._plan_prompt(prompt)
        await self._ascreen(plan.inputs)
        inner = await self.llm.astream_complete(prompt, formatted=formatted, **kwargs)
        return self._aguard_completion_stream(plan, inner)

    def _guard_chat_stream(self, plan: _Plan, inner: Iterator[ChatResponse]) -> ChatResponseGen:
        out = _ChatStreamState(self.llm)
        try:
            with self.guard.stream(plan.prompt, **self._monitor_options()) as monitor:
                for chunk in inner:
                    released = monitor.feed(chunk.delta or "")
                    for checks, item in out.push(chunk, released, plan):
                        self._screen(checks)
                        yield item
                tail = monitor.finish()
                for checks, item in out.end(tail, plan):
                    self._screen(checks)
                    yield item
        finally:
            _close(inner)

    async def _aguard_chat_stream(self, plan: _Plan, inner: Any) -> ChatResponseAsyncGen:
        out = _ChatStreamState(self.llm)
        try:
            async with self.guard.astream(plan.prompt, **self._monitor_options()) as monitor:
                async for chunk in inner:
                    released = await monitor.afeed(chunk.delta or "")
                    for checks, item in out.push(chunk, released, plan):
                        await self._ascreen(checks)
                        yield item
                tail = await monitor.afinish()
                for checks, item in out.end(tail, plan):
                    await self._ascreen(checks)
                    yield item
        finally:
            await _aclose(inner)

    def _guard_completion_stream(self, plan: _Plan, inner: Iterator[CompletionResponse]) -> CompletionResponseGen:
        out = _CompletionStreamState()
        try:
            with self.guard.stream(plan.prompt, **self._monitor_options()) as monitor:
                for chunk in inner:
                    yield out.push(chunk, monitor.feed(chunk.delta or ""))
                tail = monitor.finish()
                if tail:
                    yield out.push(out.last, tail)
        finally:
            _close(inner)

    async def _aguard_completion_stream(self, plan: _Plan, inner: Any) -> CompletionResponseAsyncGen:
        out = _CompletionStreamState()
        try:
            async with self.guard.astream(plan.prompt, **self._monitor_options()) as monitor:
                async for chunk in inner:
                    yield out.push(chunk, await monitor.afeed(chunk.delta or ""))
                tail = await monitor.afinish()
                if tail:
                    yield out.push(out.last, tail)
        finally:
            await _aclose(inner)

    # -- template calls: screen by variable, not the formatted prompt -------------------------
    def predict(self, prompt: BasePromptTemplate, **prompt_args: Any) -> str:
        plan = self._plan_template(prompt, prompt_args)
        if plan is None:
            return super().predict(prompt, **prompt_args)
        self._screen(plan.inputs)
        with self._prescreened(plan):
            return super().predict(prompt, **prompt_args)

    async def apredict(self, prompt: BasePromptTemplate, **prompt_args: Any) -> str:
        plan = self._plan_template(prompt, prompt_args)
        if plan is None:
            return await super().apredict(prompt, **prompt_args)
        await self._ascreen(plan.inputs)
        with self._prescreened(plan):
            return await super().apredict(prompt, **prompt_args)

    def stream(self, prompt: BasePromptTemplate, **prompt_args: Any) -> Any:
        plan = self._plan_template(prompt, prompt_args)
        if plan is None:
            return super().stream(prompt, **prompt_args)
        self._screen(plan.inputs)
        with self._prescreened(plan):  # stream_chat/stream_complete read it when called, here
            return super().stream(prompt, **prompt_args)

    async def astream(self, prompt: BasePromptTemplate, **prompt_args: Any) -> Any:
        plan = self._plan_template(prompt, prompt_args)
        if plan is None:
            return await super().astream(prompt, **prompt_args)
        await self._ascreen(plan.inputs)
        with self._prescreened(plan):
            return await super().astream(prompt, **prompt_args)

    # -- tool calling: delegated to the wrapped LLM -------------------------------------------
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
        return self._inner_function_calling().get_tool_calls_from_response(
            response, error_on_no_tool_call=error_on_no_tool_call, **kwargs
        )


class _ChatStreamState:
    """Turns inner chunks into guarded chunks: deltas are the monitor's released text, message
    text is everything released so far, and chunks that carry tool calls wait until screened."""

    def __init__(self, llm: LLM) -> None:
        self.llm = llm
        self.shown = ""
        self.last: ChatResponse | None = None
        self.held: ChatResponse | None = None  # the latest chunk with tool calls, not yet passed on
        self.held_text = ""

    def _emit(self, chunk: ChatResponse, delta: str) -> ChatResponse:
        self.shown += delta
        return chunk.model_copy(update={"message": with_text(chunk.message, self.shown), "delta": delta})

    def _release_held(self, plan: _Plan) -> Iterator[tuple[Checks, ChatResponse]]:
        if self.held is not None:
            held, text = self.held, self.held_text
            self.held, self.held_text = None, ""
            calls = tool_calls_in(self.llm, held)
            yield GuardedLLM._output_checks(plan, "", calls), self._emit(held, text)

    def push(self, chunk: ChatResponse, released: str, plan: _Plan) -> Iterator[tuple[Checks, ChatResponse]]:
        self.last = chunk
        if tool_calls_in(self.llm, chunk):
            # Later chunks may complete these calls; only the last one counts, so keep it back.
            self.held, self.held_text = chunk, self.held_text + released
            return
        yield from self._release_held(plan)
        yield [], self._emit(chunk, released)

    def end(self, tail: str, plan: _Plan) -> Iterator[tuple[Checks, ChatResponse]]:
        if self.held is not None:
            self.held_text += tail
            yield from self._release_held(plan)
        elif tail:
            base = self.last or ChatResponse(message=ChatMessage(role="assistant"))
            yield [], self._emit(base, tail)


class _CompletionStreamState:
    def __init__(self) -> None:
        self.shown = ""
        self.last = CompletionResponse(text="")

    def push(self, chunk: CompletionResponse, released: str) -> CompletionResponse:
        self.last = chunk
        self.shown += released
        return chunk.model_copy(update={"text": self.shown, "delta": released})


def _close(gen: Any) -> None:
    close = getattr(gen, "close", None)
    if close is not None:
        close()


async def _aclose(gen: Any) -> None:
    aclose = getattr(gen, "aclose", None)
    if aclose is not None:
        await aclose()
