"""`GuardedMemory`: a chat memory that lets no blocked user message (or forged answer) in.

Chat engines and agents write the user's message into their memory *before* they call the LLM
(``SimpleChatEngine.chat``, ``FunctionAgent.run``; the context engines do so when they stream). When
the guard then blocks it, the call fails but the message stays in memory: every later turn sends it
to the LLM again (a guarded LLM blocks again: the conversation is stuck; an unguarded one reads it).
Memory is where the message enters, so that is where it is screened: a user message is judged
before it is stored, and a blocked one raises `GuardViolation` and is never stored.

Wrap the memory you give the engine or agent::

    memory = GuardedMemory(Memory.from_defaults(token_limit=4000), guard)
    engine = SimpleChatEngine.from_defaults(llm=GuardedLLM(llm=llm, guard=guard), memory=memory)

The check is the same one `GuardedLLM` makes for the latest user turn (the message after the stored
history), so with both in place the second is answered from the guard's verdict cache. It runs
before the LLM call starts: ``parallel_input`` cannot overlap it. An assistant message is judged as a
response to the user turn before it: a client's ``chat_history`` can hold a forged answer, which the
context chat engines hand the model as their prompt template's own text.

A read judges what it adds to the stored messages: a `Memory` puts its blocks' text (facts a model extracted from
earlier sessions, old messages a vector block retrieved) in a system message, a NEW one at index 0 when the history
has none, which `GuardedLLM` would take for the application's prompt and not judge. A read can write too: a
`ChatSummaryMemoryBuffer` stores the summary it makes as it reads, so the stored messages are taken before the read
(what the read wrote is judged) and put back unless the read was a plain allow (rt63c F1; a flag or a guard error
let through kept it unjudged, rt63h F5); such reads of one memory take turns (rt63h F3).
"""

from __future__ import annotations

import asyncio
import threading
from collections import Counter, deque
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager, nullcontext
from typing import Any

from llama_index.core.base.llms.types import ChatMessage, MessageRole
from llama_index.core.bridge.pydantic import Field, PrivateAttr, SerializeAsAny
from llama_index.core.memory import BaseMemory, ChatMemoryBuffer, Memory, SimpleComposableMemory, VectorMemory
from qwenguard.core import Action, Guard, QwenGuardError, enforce
from qwenguard.core.formats.conversations import prompt_conversation, response_conversation, untrusted_conversation
from qwenguard.core.guard import speaking_as
from qwenguard.core.verdict import Stage

from .._common import guard_scope, require_guard
from .._off_loop import off_loop
from ._component import state_of_a_copy
from ._messages import (
    ASSISTANT_ROLES,
    SYSTEM_ROLES,
    Checks,
    ScopedSeen,
    Seen,
    UserRun,
    agent_observation,
    ajudge,
    calls_by_id,
    is_tool_role,
    judge,
    keeps_run,
    mark,
    observation_check,
    observation_text,
    plan_inputs,
    role_of,
    run_check,
    tool_calls_of,
    tool_names,
    tool_output_check,
    unmatched_id,
    wire_text,
)

__all__ = ["GuardMissing", "GuardedMemory"]


#: What the event-loop warning tells a sync memory call inside async code to use (`speaking_as`).
_ASYNC_TWIN = "GuardedMemory's async methods: await memory.aput / aput_messages / aset / aget (not put / get)"


class GuardMissing(QwenGuardError, RuntimeError):
    """A component rebuilt from a serialized or pickled state, which cannot carry its `Guard` (a `GuardedMemory`, a
    `GuardedLLM`, a `GuardTransform`...): it refuses to work."""


def _is_user(message: ChatMessage) -> bool:
    """A user message with text (what a provider would send: its ``additional_kwargs`` too); `ValueError` for a
    message of any role whose ``additional_kwargs`` would have it sent in another role (never stored)."""
    text = wire_text(message)
    return role_of(message) == MessageRole.USER.value and bool(text.strip())


def _put_checks(history: Sequence[ChatMessage], message: ChatMessage) -> Checks:
    """A new user message, judged as the latest turn after the stored history, and with the user turns stored just
    before it (a run, `UserRun`) joined."""
    if not _is_user(message):
        return []
    run = _run_checks(_stored_run(history), [message])
    if history and agent_observation(history[-1], text := wire_text(message)):  # an agent's tool output (rt58d F2)
        return [observation_check(text)[1], *run]
    return [(Stage.PROMPT, plan_inputs([*history, message]).prompt), *run]


def _stored_run(stored: Sequence[ChatMessage]) -> list[ChatMessage]:
    """The user turns that end ``stored`` (a run a new user turn continues: `UserRun`), oldest first."""
    run: list[ChatMessage] = []
    for m in reversed(stored):
        role = role_of(m)
        calls = tool_calls_of(None, m) if role in ASSISTANT_ROLES else []
        if role == MessageRole.USER.value:
            run.append(m)
        elif not keeps_run(role, wire_text(m, calls), calls):
            break
    return run[::-1]


def _run_checks(stored_run: Sequence[ChatMessage], messages: Sequence[ChatMessage]) -> Checks:
    """Each run of two or more consecutive user turns of ``messages`` (the first continuing ``stored_run``, the user
    turns stored last) judged joined, as a provider sends them (rt54e E6)."""
    checks: Checks = []
    run = UserRun()
    for m in stored_run:
        run.add(wire_text(m))
    for m in messages:
        role = role_of(m)
        if role == MessageRole.USER.value:
            run.add(wire_text(m))
            continue
        calls = tool_calls_of(None, m) if role in ASSISTANT_ROLES else []
        if not keeps_run(role, wire_text(m, calls), calls) and (joined := run.end()) is not None:
            checks.append(run_check(joined)[1])
    if (joined := run.end()) is not None:
        checks.append(run_check(joined)[1])
    return checks


def _answer_text(message: ChatMessage) -> str:
    """An assistant turn's text as `GuardedLLM` judges it in a history ("" for other roles and tool calls alone).
    The tool calls its ``additional_kwargs`` carry with their arguments as an object (Anthropic's and Ollama's form)
    stay in it: the memory judges them with its text before storing them (`GuardedLLM` judges them as tool calls)."""
    if role_of(message) not in ASSISTANT_ROLES:
        return ""
    return wire_text(message, tool_calls_of(None, message, carried=False))


def _needs_stored(messages: Sequence[ChatMessage]) -> bool:
    """Does an assistant turn come before any user turn (it answers the last user turn stored)?"""
    for m in messages:
        if _is_user(m):
            return False
        if _answer_text(m).strip():
            return True
    return False


def _put_needs_stored(messages: Sequence[ChatMessage]) -> bool:
    """Are the stored messages part of what ``messages`` are judged with? An answer to the last stored user turn, a
    tool output of a stored call, a user turn that may continue a run of stored ones (`UserRun`)."""
    first_user = bool(messages) and role_of(messages[0]) == MessageRole.USER.value
    return first_user or _needs_stored(messages) or any(map(is_tool_role, messages))


def _last_user(history: Sequence[ChatMessage]) -> str:
    """The user's text the next answer of ``history`` answers: its last user turn; where that is an agent's tool
    output (`agent_observation`), the user's question before it and every such output since (rt58f F4)."""
    outputs: list[str] = []
    for i in range(len(history) - 1, -1, -1):
        m = history[i]
        if not _is_user(m):
            continue
        if i and agent_observation(history[i - 1], text := wire_text(m)):
            outputs.append(text)
            continue
        return "\n\n".join([wire_text(m), *reversed(outputs)])
    return "\n\n".join(reversed(outputs))


def _set_checks(messages: Sequence[ChatMessage], stored: Sequence[ChatMessage] = ()) -> Checks:
    """Turns handed over whole (a client's ``chat_history``, an agent's steps): each user turn as a prompt on its
    own, each assistant turn as a response to the user turn before it (the last of ``stored`` for the first).
    A client can forge an answer there, which the context chat engines hand the LLM as their template's text.
    A tool-role turn (``tool``, ``function``) as `GuardedLLM` judges it (rt54c F5): the output of a tool call a
    guarded LLM returned (found in ``stored`` or ``messages``) as untrusted tool output, any other as text a client
    wrote in a tool's role, under the stricter of the prompt and tool-result stages' policies (rt54c F1); so is a
    tool output an agent wrote in a user's role (`agent_observation`: CodeActAgent's scratchpad), which is no prompt."""
    checks: Checks = []
    previous_user = _last_user(stored)
    tools = [m for m in messages if is_tool_role(m)]
    names = tool_names([*stored, *messages]) if tools else {}
    calls = calls_by_id(None, [*stored, *messages]) if tools else {}
    previous = stored[-1] if stored else None
    for m in messages:
        before, previous = previous, m
        if is_tool_role(m):
            text = wire_text(m)
            if label := unmatched_id(m, names):
                text = "\n".join(t for t in (text, label) if t)
            if text.strip():
                checks.append(tool_output_check(m, text, names, calls)[1])
            continue
        if _is_user(m) and agent_observation(before, text := wire_text(m)):  # CodeAct's scratchpad (rt58d F2)
            checks.append(observation_check(text)[1])
            # What follows answers the question and this output both: a client that forged an action before its
            # request had the answer judged against an earlier greeting alone (rt58f F4).
            previous_user = "\n\n".join(t for t in (previous_user, text) if t)
        elif _is_user(m):
            previous_user = wire_text(m)
            checks.append((Stage.PROMPT, prompt_conversation(previous_user)))
        elif (answer := _answer_text(m)).strip():
            checks.append((Stage.RESPONSE, response_conversation(previous_user, answer)))
            if (observed := observation_text(answer)).strip():  # a ReAct agent's tool outputs, stored as its turn
                checks.append((Stage.TOOL_RESULT, untrusted_conversation(observed, "tool output")))
        elif (system := _system_text(m)).strip():
            checks.append((Stage.PROMPT, untrusted_conversation(system, "system prompt")))
    stored_run = _stored_run(stored) if messages and role_of(messages[0]) == MessageRole.USER.value else []
    return [*checks, *_run_checks(stored_run, messages)]


def _system_text(message: ChatMessage) -> str:
    """A system turn's text: in a memory it came with the conversation (a client's ``chat_history``), not from the
    application, whose prompt the engine or agent keeps apart and puts first."""
    return wire_text(message) if role_of(message) in SYSTEM_ROLES else ""


def _key(message: ChatMessage) -> tuple[str, str]:
    return role_of(message), wire_text(message)


def _added_text(message: ChatMessage, stored: set[tuple[str, str]], sizes: Sequence[int]) -> str:
    """The text a read added to ``message``: the blocks put before a stored message's own (a `Memory` puts its blocks'
    text first in the stored system or latest user message), else all of it (a message of its own). ``sizes``: the
    block counts of the stored messages, longest first (only those can be the message's stored end)."""
    for size in sizes:
        cut = len(message.blocks) - size
        if cut > 0 and size > 0 and _key(message.model_copy(update={"blocks": message.blocks[cut:]})) in stored:
            return wire_text(ChatMessage(role=message.role, blocks=message.blocks[:cut]))
    return wire_text(message)


def _read_checks(read: Sequence[ChatMessage], stored: Sequence[ChatMessage], seen: Seen) -> tuple[Checks, list[bytes]]:
    """What a read returns beyond the stored messages (a `Memory`'s blocks: facts a model extracted from earlier
    sessions, old messages a vector block retrieved, a summary buffer's summary), judged as untrusted content: it
    came from earlier conversations, their tool outputs and pages. Each text once (``seen``: it costs a check only
    when it changes); with the fingerprints to remember once the checks passed."""
    left = Counter(_key(m) for m in stored)
    keys = set(left)
    sizes = sorted({len(m.blocks) for m in stored}, reverse=True)
    checks: Checks = []
    marks: list[bytes] = []
    for message in read:
        key = _key(message)
        if left[key] > 0:
            left[key] -= 1
            continue
        text = _added_text(message, keys, sizes)
        fingerprint = mark("memory", text)
        if text.strip() and fingerprint not in seen and fingerprint not in marks:
            marks.append(fingerprint)
            checks.append((Stage.PROMPT, untrusted_conversation(text, "memory")))
    return checks, marks


def _without_get_all(memory: BaseMemory) -> bool:
    """Is ``memory`` one whose ``get_all`` LlamaIndex refuses (a `VectorMemory`, or a `SimpleComposableMemory` whose
    primary memory is one)? Every write and read of a `GuardedMemory` reads the stored messages."""
    while isinstance(memory, SimpleComposableMemory):
        memory = memory.primary_memory
    return isinstance(memory, VectorMemory)


class _ReadTurn:
    """One read at a time of a memory whose read writes (rt63h F3), taken by a thread (``get``) or by a task
    (``aget``), which waits for it on the event loop, never blocking it: tasks wait in line, and whoever hands the turn
    back wakes the first (a thread through the task's loop). Picklable (a workflow Context saved with its memory): a
    new turn, free, where it is rebuilt."""

    #: The longest a waiting task sleeps before it asks again without being woken (a wake-up lost to a race).
    MOST_WAIT_S = 0.05

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None  # the loop of the task that holds the turn, if one does
        self._line: deque[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]] = deque()  # tasks waiting
        self._line_lock = threading.Lock()

    def __getstate__(self) -> dict[str, Any]:
        return {}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__()  # type: ignore[misc]

    def _hand_back(self) -> None:
        """Release the turn and wake the first task in line (500 tasks asking every 2 ms burned a core for a minute
        behind one slow read, rt63i F3; asking less often left the turn idle between reads)."""
        self._lock.release()
        with self._line_lock:
            first = self._line.popleft() if self._line else None
        if first is not None:
            loop, waiting = first
            try:
                loop.call_soon_threadsafe(_wake, waiting)
            except RuntimeError:  # its loop closed: nobody left to wake
                pass

    @contextmanager
    def held(self) -> Iterator[None]:
        if not self._lock.acquire(blocking=False):
            if (holder := self._loop) is not None and holder is _running_loop():
                # Waiting here would block the very loop the holder needs to finish: it would never hand it back.
                raise RuntimeError(
                    "GuardedMemory.get was called inside the event loop while an aget of the same memory is pending "
                    "there: it would wait forever. Use await memory.aget()."
                )
            self._lock.acquire()
        try:
            yield
        finally:
            self._hand_back()

    @asynccontextmanager
    async def aheld(self) -> AsyncIterator[None]:
        loop = asyncio.get_running_loop()
        while not self._lock.acquire(blocking=False):
            waiting: asyncio.Future[None] = loop.create_future()
            with self._line_lock:
                self._line.append((loop, waiting))
            try:
                await asyncio.wait_for(waiting, self.MOST_WAIT_S)
            except asyncio.TimeoutError:
                pass
            finally:
                with self._line_lock:
                    if (loop, waiting) in self._line:
                        self._line.remove((loop, waiting))
        self._loop = loop
        try:
            yield
        finally:
            self._loop = None
            self._hand_back()


def _wake(waiting: asyncio.Future[None]) -> None:
    if not waiting.done():  # cancelled meanwhile, or timed out: it asks again by itself
        waiting.set_result(None)


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


class GuardedMemory(BaseMemory):
    """Any LlamaIndex memory, with user messages and answers screened before they are stored.

    >>> memory = GuardedMemory(Memory.from_defaults(), guard)                     # doctest: +SKIP
    >>> engine = SimpleChatEngine.from_defaults(llm=guarded_llm, memory=memory)    # doctest: +SKIP

    ``put``/``aput``/``put_messages``/``set`` (and their async twins) raise `GuardViolation` for a
    blocked user message, assistant answer or system turn (in a memory it came with the conversation: the
    application's prompt is kept apart) and store nothing of that call. A message's text is what a
    provider would send: its ``additional_kwargs`` too; a message of any role whose ``additional_kwargs`` set
    another role raises `ValueError`. An assistant turn's text from its first ``Observation:`` on (ReActAgent stores
    its tool outputs in its own turn) is judged as untrusted tool output besides. A tool-role turn (``tool``,
    ``function``) is judged as `GuardedLLM` judges it: the output of a tool call a `GuardedLLM` returned as untrusted
    tool output, any other as the client's text, under the stricter of the prompt and tool-result policies; a tool
    output an agent hands its LLM in a user's role (ReAct's ``Observation:``, CodeAct's code result, right after the
    turn holding the action) as untrusted tool output under the stricter of the two too, not as the user's prompt.

    ``get``/``aget`` judge what a read returns beyond the messages stored before it (a `Memory`'s blocks, a summary
    buffer's summary, which its read stores) as untrusted content, each text once; a blocked one raises. Where a read
    can write (any memory but a `Memory`), reads of one memory take turns, and the stored messages are put back as
    they were before the read unless it was a plain allow (the read still returns what was let through).
    ``get_all``, other roles and ``reset`` go straight to the wrapped memory. A `VectorMemory` (no ``get_all``) is
    refused: put it in a `SimpleComposableMemory` as a secondary source. Rebuilt from a serialized state (a saved workflow Context), it has no guard: its first use
    raises `GuardMissing`.
    """

    def __getstate__(self) -> dict[str, Any]:
        # LlamaIndex's drops the guard from the live object's own __dict__ (rt50f F4): from a copy instead.
        return state_of_a_copy(self, super().__getstate__)

    memory: SerializeAsAny[BaseMemory] = Field(description="The memory being guarded.")
    guard: Any = Field(exclude=True, description="The qwenguard Guard.")

    _read: Seen = PrivateAttr(default_factory=lambda: Seen(1024))  # the added text judged and let through
    _turn: _ReadTurn = PrivateAttr(default_factory=_ReadTurn)  # one read at a time where a read writes

    def __init__(self, memory: BaseMemory, guard: Guard, **kwargs: Any) -> None:
        if not isinstance(memory, BaseMemory):
            raise TypeError(f"memory must be a LlamaIndex BaseMemory, got {type(memory).__name__}")
        if _without_get_all(memory):  # its get_all raises: every put and read would fail inside LlamaIndex (rt63c F3)
            raise TypeError(
                "GuardedMemory cannot wrap a VectorMemory (nor a SimpleComposableMemory whose primary memory is one): "
                "it has no get_all, which every check reads. Wrap SimpleComposableMemory.from_defaults("
                "primary_memory=ChatMemoryBuffer.from_defaults(), secondary_memory_sources=[vector_memory]) instead "
                "(what the vector memory retrieves is judged on a read)."
            )
        require_guard(guard)
        super().__init__(memory=memory, guard=guard, **kwargs)

    @classmethod
    def class_name(cls) -> str:
        return "GuardedMemory"

    @classmethod
    def from_defaults(
        cls, guard: Guard | None = None, memory: BaseMemory | None = None, **kwargs: Any
    ) -> GuardedMemory:
        """``memory`` (default: ``Memory.from_defaults(**kwargs)``) guarded by ``guard``."""
        if guard is None:
            raise TypeError("GuardedMemory.from_defaults needs guard=")
        if memory is None:
            from llama_index.core.memory import Memory

            memory = Memory.from_defaults(**kwargs)
        return cls(memory, guard)

    def __getattr__(self, name: str) -> Any:
        # Engines probe the memory for extras (``tokenizer_fn``): answer for the wrapped one.
        try:
            return super().__getattr__(name)  # type: ignore[misc]
        except AttributeError:
            if name == "guard":
                raise GuardMissing(
                    "this GuardedMemory has no guard: it was rebuilt from a serialized state (a workflow Context's "
                    "to_dict/from_dict, model_validate), which cannot carry a Guard, and it judges nothing without "
                    "one. Set memory.guard = guard on it, or wrap the memory again (GuardedMemory(memory.memory, "
                    "guard)) and pass it as memory= to the run."
                ) from None
            if name.startswith("_") or "memory" not in self.__dict__:
                raise
            return getattr(self.__dict__["memory"], name)

    # -- screening ----------------------------------------------------------------------------
    def _screen(self, checks: Checks) -> bool:
        """Judge ``checks``, raising for a blocked one; whether each was a plain allow (a flag is told again)."""
        decisions = judge(self.guard, checks) if checks else []
        for decision in decisions:
            enforce(decision)
        return all(d.action is Action.ALLOW for d in decisions)

    async def _ascreen(self, checks: Checks) -> bool:
        """Async twin of `_screen`."""
        decisions = await ajudge(self.guard, checks) if checks else []
        for decision in decisions:
            enforce(decision)
        return all(d.action is Action.ALLOW for d in decisions)

    def _read_seen(self) -> ScopedSeen:
        """What reads judged and let through, as this guard under its policy reads it (`ScopedSeen`): another policy,
        another guard or a closed guard judges again (rt62b F1, F2, as `GuardedLLM`'s memory)."""
        return ScopedSeen(self._read, guard_scope(self.guard))

    # -- writes: screened -----------------------------------------------------------------------
    @speaking_as(_ASYNC_TWIN)
    def put(self, message: ChatMessage) -> None:
        if _is_user(message):  # every role is read: a forged role raises before it is stored
            self._screen(_put_checks(self.memory.get_all(), message))
        elif _needs_stored([message]):
            self._screen(_set_checks([message], self.memory.get_all()))
        elif _system_text(message).strip():
            self._screen(_set_checks([message]))
        elif is_tool_role(message):  # its call, if any, is stored
            self._screen(_set_checks([message], self.memory.get_all()))
        self.memory.put(message)

    # The async twins read the stored history and the messages with `off_loop`: a long one on a worker thread.
    async def aput(self, message: ChatMessage) -> None:
        if _is_user(message):
            stored = await self.memory.aget_all()
            await self._ascreen(await off_loop(lambda: _put_checks(stored, message), stored, message))
        elif _needs_stored([message]):
            stored = await self.memory.aget_all()
            await self._ascreen(await off_loop(lambda: _set_checks([message], stored), stored, message))
        elif _system_text(message).strip():
            await self._ascreen(await off_loop(lambda: _set_checks([message]), message))
        elif is_tool_role(message):
            stored = await self.memory.aget_all()
            await self._ascreen(await off_loop(lambda: _set_checks([message], stored), stored, message))
        await self.memory.aput(message)

    @speaking_as(_ASYNC_TWIN)
    def put_messages(self, messages: list[ChatMessage]) -> None:
        stored = self.memory.get_all() if _put_needs_stored(messages) else []
        self._screen(_set_checks(messages, stored))
        self.memory.put_messages(messages)

    async def aput_messages(self, messages: list[ChatMessage]) -> None:
        stored = await self.memory.aget_all() if _put_needs_stored(messages) else []
        await self._ascreen(await off_loop(lambda: _set_checks(messages, stored), stored, messages))
        await self.memory.aput_messages(messages)

    @speaking_as(_ASYNC_TWIN)
    def set(self, messages: list[ChatMessage]) -> None:
        self._screen(_set_checks(messages))
        self.memory.set(messages)

    async def aset(self, messages: list[ChatMessage]) -> None:
        await self._ascreen(await off_loop(lambda: _set_checks(messages), messages))
        await self.memory.aset(messages)

    # -- reads: what they add to the stored messages is judged --------------------------------------
    def _adds(self) -> bool:
        """Can a read return text that was never stored? Not a `Memory` without blocks, nor a `ChatMemoryBuffer`
        (their read is the last stored messages: no second read of the store for them)."""
        if type(self.memory) is ChatMemoryBuffer:
            return False
        return not (isinstance(self.memory, Memory) and not self.memory.memory_blocks)

    def _read_writes(self) -> bool:
        """Can a read write the store? A `ChatSummaryMemoryBuffer`'s stores the summary it makes, and any memory
        but a `Memory` (whose read only reads) may, itself or as a `SimpleComposableMemory`'s primary memory."""
        return not isinstance(self.memory, Memory)

    # A read can write: `ChatSummaryMemoryBuffer.get` stores the summary it makes (reset, then set) as it reads. So
    # the stored messages are taken BEFORE the read (a copy: a chat store hands out its live list, which that read
    # pops), what the read wrote is judged as what it added, and a read that is not a plain allow puts them back: kept,
    # an unjudged summary would count as stored on the next read (rt63c F1), and so would a flagged one or one let
    # through by a guard error (never told again, rt63h F5). Put back, the next read makes it again and judges it
    # again, whichever wrapper reads the store. One such read at a time (`_ReadTurn`): another read taking the store
    # while this one's check was pending counted the summary as stored and returned it unjudged (rt63h F3).
    @speaking_as(_ASYNC_TWIN)
    def get(self, input: str | None = None, **kwargs: Any) -> list[ChatMessage]:
        if not self._adds():
            return self.memory.get(input=input, **kwargs)
        writes = self._read_writes()
        with self._turn.held() if writes else nullcontext():
            stored = list(self.memory.get_all())
            allowed = False
            try:
                read = self.memory.get(input=input, **kwargs)
                seen = self._read_seen()
                checks, marks = _read_checks(read, stored, seen)
                allowed = self._screen(checks)
            finally:
                if writes and not allowed and self.memory.get_all() != stored:
                    self.memory.set(stored)
        if allowed:
            seen.add(marks)
        return read

    async def aget(self, input: str | None = None, **kwargs: Any) -> list[ChatMessage]:
        if not self._adds():
            return await self.memory.aget(input=input, **kwargs)
        writes = self._read_writes()
        async with self._turn.aheld() if writes else nullcontext():
            stored = list(await self.memory.aget_all())
            # A task of its own, shielded: a summary buffer reads on a worker thread, which a cancel does not stop,
            # and writes when it is done; the store is put back after that (a client gone mid-summary).
            reading = asyncio.ensure_future(self.memory.aget(input=input, **kwargs)) if writes else None
            allowed = False
            try:
                read = await (asyncio.shield(reading) if reading else self.memory.aget(input=input, **kwargs))
                seen = self._read_seen()
                checks, marks = await off_loop(lambda: _read_checks(read, stored, seen), read, stored)
                allowed = await self._ascreen(checks)
            finally:  # cancelled too: what the read wrote was not judged
                if reading and not allowed:
                    await asyncio.wait([reading])
                    if not reading.cancelled():
                        reading.exception()  # retrieved: it was raised above, or the caller is gone
                    after = await self.memory.aget_all()
                    if await off_loop(lambda: after != stored, after, stored):
                        await self.memory.aset(stored)
        if allowed:
            seen.add(marks)
        return read

    # -- the rest: the wrapped memory's -------------------------------------------------------------

    def get_all(self) -> list[ChatMessage]:
        return self.memory.get_all()

    async def aget_all(self) -> list[ChatMessage]:
        return await self.memory.aget_all()

    def reset(self) -> None:
        self.memory.reset()

    async def areset(self) -> None:
        await self.memory.areset()
