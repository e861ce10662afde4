"""What `GuardMiddleware` need not judge again among the messages a model is given.

- `AllowedChecks`: the checks it allowed, by fingerprint. The model call judges the messages it is given again
  (a middleware may have changed them since ``before_model``); without this, every model call judged the whole
  history twice more, and with the verdict cache off (``cache_size=0``, or a busy shared guard evicting entries)
  an agent's cost grew with the square of its turns. Fingerprints, not texts: nothing said is kept. Each answers
  only for the guard and policy that allowed it (`guard_scope`), never once that guard is closed (rt62b F3).
- `judged_content`: what a text check of an answer reads, by fingerprint. An answer whose text was judged (as it
  streamed, or whole in the model call) is not judged again only while it still says what was judged: a middleware
  that rewrites it (a footer, a translation: ``model_copy`` keeps its id) has it judged again.
- `RaisedChecks`: the blocks it raised `GuardViolation` for (``exit_behavior="error"``), by fingerprint, each on its
  thread (`current_thread`). With a checkpointer LangGraph writes the input to the thread before any node runs, so a
  blocked prompt stays there: judged again on the thread's next turn, it raised again, every turn (one user's message
  refused a shared thread for good). A block raised before on the same thread is replaced by its notice in the state
  instead, and the turn goes on; anywhere else (another thread, no thread) it raises again. The callback handler
  keeps one too: it cannot edit what the model reads, so it raises again, but says so (rt64g F2, `left_over`).
- `RaisedToolStops`: the tool calls it raised `GuardViolation` for (a blocked call, a blocked result), each on its
  thread by its name and id, with the notice ``"end"`` writes for it. The raise leaves the thread's answer with a
  call no tool message answers: every later turn sent providers a request they refuse (OpenAI and Anthropic answer
  400), and ``invoke(None)`` ran the tool again (rt65g F2). The thread's next turn gets the notice as that call's
  answer, and a run resumed at the tools gets it instead of running the call; a stop the thread's last answer no
  longer waits on is forgotten (rt65l F4). A result the guard could not judge, and a call cancelled after its tool
  was called (its result lost), are kept the same way (rt66e F1, F2). The callback handler keeps the calls whose
  result it blocked, with the decision: it cannot answer the call, so it refuses the call again before the tool runs
  (rt66e F3).
- `OwnNotices`: the messages it wrote in place of what it blocked (its notices and its refusal), by fingerprint: the
  thread (`current_thread`), id, role and text of each, as it wrote it. Judged again as a user's prompt and as
  context, the next turn of the thread was refused (the demo guard reads a withheld-message notice as unsafe). Only
  the message this middleware wrote is left out: a client's message that merely fits a notice's template is judged
  (a template's ``{tool}`` field took a phrase, rt54c F8), and so is a notice's very text sent by anyone as a new
  message, on another thread or under another id (keyed by text alone, a notice that carried a client's blocked
  phrase exempted that phrase for every user, rt60d F1).
- `Produced`: the messages its agent's tools wrote (`GuardMiddleware.wrap_tool_call`) and its guarded model calls
  answered, and the tool calls those answers asked for, by fingerprint, each where it was produced (`current_scope`:
  the thread, or with no thread the run). Every other tool-role message in the input is the client's
  (`_messages.AS_INPUT`), and so is every other call about to run. Kept for the whole process, one user's run made
  another's the agent's own: a provider whose call ids repeat (TGI's ``"0"``, Kimi's ``functions.send_email:0``)
  gave a call the model asked for on one thread the model's trust when any client replayed it on another (stop 60
  leftover).
"""

from __future__ import annotations

import functools
import hashlib
import importlib
import json
import threading
import uuid
import weakref
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Generic, TypeVar

from langchain_core.messages import BaseMessage
from qwenguard.core import Action, Decision

from .._common import Bounded
from .._common import guard_scope as shared_scope
from ._messages import AS_ANSWER, AS_INPUT, Item, answer_text, call_key, source_text, tool_result_messages

M = TypeVar("M", bound=BaseMessage)
#: What a stop kept for a tool call answers with (`RaisedToolStops`): the middleware's notice, the handler's decision.
A = TypeVar("A")

#: How many allowed checks a middleware remembers (fingerprints of 64 hex characters; an allow's, after its scope's 32).
MAX_ALLOWED_CHECKS = 16_384
_FINGERPRINT = "qwenguard_fingerprint"  # where an item keeps its own (`Item.extra`)
_SCOPE = "qwenguard_scope"  # where an item keeps the `guard_scope` it was looked up under (`AllowedChecks.unjudged`)
#: Where an item keeps what tells its check apart beyond its stage and conversation (`_fingerprint`): a state key's
#: check is its key's on its thread, never a client's prompt of the same words (rt64i F1).
KEYED_BY = "qwenguard_keyed_by"


def _digest(data: str) -> str:
    return hashlib.sha256(data.encode("utf-8", "surrogatepass")).hexdigest()


class OwnNotices:
    """The messages a middleware wrote in place of what it blocked, by fingerprint of their thread, id, role and text
    (kept in the process: another process's, or one written before a restart, is judged as any message is)."""

    def __init__(self, maxsize: int = MAX_ALLOWED_CHECKS) -> None:
        self._written: Bounded[str, bool] = Bounded(maxsize)

    def write(self, message: M, thread: str | None) -> M:
        """``message`` (given an id of its own when it has none: the state's would be unknown here), remembered as
        one this middleware wrote on ``thread``."""
        if not isinstance(message.id, str) or not message.id:
            message = message.model_copy(update={"id": f"qwenguard-{uuid.uuid4().hex}"})
        if (key := _notice_key(message, thread)) is not None:
            self._written[key] = True
        return message

    def wrote(self, message: BaseMessage, thread: str | None) -> bool:
        key = _notice_key(message, thread)
        return key is not None and self._written.get(key) is not None


def _notice_key(message: BaseMessage, thread: str | None) -> str | None:
    # Bound to the message, not to its text: a client can send any text, but not put a message of its own on
    # another client's thread under the id the guard wrote there. Its whole content, not its text (`message_text`):
    # an answer's text leaves out what is judged apart (a provider's tool-result block, citations, a tool-use
    # block), and a refusal sent back with such a block beside its text was left out whole, the block unjudged
    # (rt60f F1). The guard writes a notice's content as one string.
    content = message.content
    if not content or not isinstance(message.id, str) or not message.id:
        return None
    written = (
        content if isinstance(content, str) else json.dumps(content, ensure_ascii=False, sort_keys=True, default=repr)
    )
    return _digest(
        json.dumps([thread, message.id, message.type, isinstance(content, str), written], ensure_ascii=False)
    )


def message_key(message: BaseMessage) -> str | None:
    """A fingerprint of what ``message`` says (its type, the call it answers, its content and what an answer keeps
    beside it), or ``None`` for one that cannot be written out (never taken as produced)."""
    extra = getattr(message, "additional_kwargs", None)
    beside = extra.get("tool_outputs") if isinstance(extra, Mapping) else None
    try:
        data = json.dumps(
            [message.type, getattr(message, "tool_call_id", None), message.content, beside],
            ensure_ascii=False,
            sort_keys=True,
            default=repr,
        )
    except (TypeError, ValueError, RecursionError):
        return None
    return _digest(data)


class Produced:
    """Fingerprints (`message_key`) of the messages a middleware saw its agent produce: what its tools wrote to the
    state, and its guarded model calls' answers; and of the tool calls those answers asked for (`call_key`). A
    tool-role message in the input that is none of these is the client's (`_messages.AS_INPUT`), and so is a call.

    ``bound``: each is kept with the ``scope`` it was produced in (`current_scope`) and matched only there; a ``None``
    scope then records nothing and matches nothing (the middleware and the callback handler both bind
    theirs). Unbound, ``scope`` is not asked for."""

    def __init__(self, maxsize: int = MAX_ALLOWED_CHECKS, *, bound: bool = False) -> None:
        self._seen: Bounded[str, bool] = Bounded(maxsize)
        self._calls: Bounded[str, bool] = Bounded(maxsize)
        self._bound = bound

    def _key(self, key: str | None, scope: str | None) -> str | None:
        if key is None or not self._bound:
            return key
        return None if scope is None else _digest(json.dumps([scope, key], ensure_ascii=False))

    def record(self, messages: Sequence[BaseMessage], scope: str | None = None) -> None:
        for message in messages:
            if (key := self._key(message_key(message), scope)) is not None:
                self._seen[key] = True

    def record_result(self, result: Any, scope: str | None = None) -> Any:
        """A tool's result as it goes to the state (`tool_result_messages`: its messages, a ``Command``'s, a list)."""
        self.record([message for _, message in tool_result_messages(result)], scope)
        return result

    def saw(self, message: BaseMessage, scope: str | None = None) -> bool:
        key = self._key(message_key(message), scope)
        return key is not None and self._seen.get(key) is not None

    def record_calls(self, calls: Sequence[Mapping[str, Any]], scope: str | None = None) -> None:
        """The tool calls an answer asked for, as they are (name, id and arguments)."""
        for call in calls:
            if (key := self._key(call_key(call.get("name"), call.get("id"), call.get("args")), scope)) is not None:
                self._calls[key] = True

    def asked(self, call: Mapping[str, Any], scope: str | None = None) -> bool:
        """Was ``call``, as it is (name, id, arguments), asked for by an answer recorded here (in ``scope``)?"""
        key = self._key(call_key(call.get("name"), call.get("id"), call.get("args")), scope)
        return key is not None and self._calls.get(key) is not None


def _fingerprint(item: Item) -> str:
    """The check's stage and conversation, hashed; kept on the item (`unjudged` and `remember` both ask). A check of
    the client's text in a tool's role (`AS_INPUT`) is decided under another policy: a fingerprint of its own; and so
    is one told apart by what it reads (`KEYED_BY`: a state key's, on its thread)."""
    found = item.extra.get(_FINGERPRINT)
    if found is None:
        # Decided under another policy: the client's text (`AS_INPUT`), a structured answer's call (`AS_ANSWER`).
        marked = [mark for mark in (AS_INPUT, AS_ANSWER) if item.extra.get(mark)]
        keyed = item.extra.get(KEYED_BY) or []
        data = json.dumps([item.stage.value, item.conversation, *marked, *keyed], ensure_ascii=False, sort_keys=True)
        found = item.extra[_FINGERPRINT] = _digest(data)
    return str(found)


def judged_content(message: BaseMessage, budget: int) -> str:
    """What a text check of the answer ``message`` reads (`output_items`: its words, `answer_text`, and what it
    quotes, `source_text`, within ``budget``), hashed."""
    data = json.dumps([answer_text(message), source_text(message, budget)], ensure_ascii=False)
    return _digest(data)


def guard_scope(guard: Any) -> str | None:
    """`_common.guard_scope` as text, to prefix this memory's fingerprints."""
    token = shared_scope(guard)
    return None if token is None else token.hex()


class AllowedChecks:
    """Fingerprints of the checks a middleware allowed (stage and conversation: the same check gets the same
    decision from the same guard and policy), each for the guard and policy that allowed it (`guard_scope`): a
    changed ``guard.policy`` (a stage enabled again), another guard (``middleware.guard`` assigned, a copy of the
    middleware given its own), or a closed guard is never answered from it (rt62b F3). Only a plain allow is kept:
    a flag (a failed-open check, an ignored category) is told again."""

    def __init__(self, maxsize: int = MAX_ALLOWED_CHECKS) -> None:
        self._allowed: Bounded[str, bool] = Bounded(maxsize)

    def unjudged(self, items: Sequence[Item], guard: Any) -> list[Item]:
        """The checks of ``items`` that ``guard``, under its policy now, did not allow before."""
        scope = guard_scope(guard)
        if scope is None:
            return list(items)
        found = []
        for item in items:
            item.extra[_SCOPE] = scope  # its decision is remembered only under this scope (`remember`)
            # One not read whole is never answered by an allow of what was read of it: its unread rest is blocked
            # (rt65r F1: a key whose read part repeated a note allowed before reached the model whole, unjudged).
            if item.extra.get("whole", True) is False or self._allowed.get(scope + _fingerprint(item)) is None:
                found.append(item)
        return found

    def trust(self, items: Sequence[Item], guard: Any) -> None:
        """Take these checks as allowed without judging them: what the application itself wrote."""
        if (scope := guard_scope(guard)) is not None:
            for item in items:
                self._allowed[scope + _fingerprint(item)] = True

    def remember(self, items: Sequence[Item], decisions: Sequence[Decision], guard: Any) -> None:
        """The plain allows among ``decisions`` (``guard``'s on ``items``), for its policy now: not one whose item
        was looked up under another (`unjudged`: the policy was changed while it was judged)."""
        scope = guard_scope(guard)
        if scope is None:
            return
        for item, decision in zip(items, decisions):
            # A flag (a failed-open check, an ignored category) is told again.
            if decision.action is Action.ALLOW and item.extra.get(_SCOPE, scope) == scope:
                self._allowed[scope + _fingerprint(item)] = True


class RaisedChecks:
    """Fingerprints of the blocked checks a middleware raised `GuardViolation` for, each on its thread
    (`current_thread`): the same message (its id), read with the same earlier turns (stage and conversation), in the
    same thread's state. Kept in the process: another process raises once more for one."""

    def __init__(self, maxsize: int = MAX_ALLOWED_CHECKS) -> None:
        self._raised: Bounded[str, bool] = Bounded(maxsize)
        self._run_turns: Bounded[str, bool] = Bounded(maxsize)  # the turns of runs raised for (`_turn_key`)

    # Keyed by the thread and the message's id too. A block is healed into its notice only where the thread's state
    # still holds it (LangGraph wrote the input to the checkpoint before the run raised): the same text sent again
    # on another thread is a new block that raises (rt50f F5), and so is the same client-chosen id sent again on
    # another thread (LangGraph keeps the ids clients send, rt58b F1). With no thread nothing persists, and nothing
    # is healed.
    def raised(self, item: Item, thread: str | None) -> bool:
        return thread is not None and self._raised.get(_key(item, thread)) is not None

    def fresh(self, blocked: Sequence[Item], thread: str | None) -> list[Item]:
        """The blocked checks of ``blocked`` not raised for before on ``thread``: neither the same check (`raised`) nor
        consecutive user turns read as one that hold a turn of a run raised for (`earlier_run`)."""
        return [item for item in blocked if not self.raised(item, thread) and self.earlier_run(item, thread) is None]

    def left_over(self, blocked: Sequence[Item], thread: str | None) -> list[BaseMessage]:
        """For blocked checks of a model's input (`without_runs_of_blocked`) that were all raised for before on
        ``thread`` (`fresh` finds none): the messages those blocks were raised for, in order (a run's turns that were
        in a run raised for, `run_turns`), each once. Empty when one of them is new."""
        if thread is None or not blocked or self.fresh(blocked, thread):
            return []
        found: dict[int, BaseMessage] = {}
        for item in blocked:
            run = item.extra.get("run")
            for message in self.run_turns(run, thread) if run else [item.message]:
                if message is not None:
                    found.setdefault(id(message), message)
        return list(found.values())

    def remember(self, items: Sequence[Item], thread: str | None) -> None:
        if thread is None:
            return  # nothing of the run stays for a later one to read
        for item in items:
            self._raised[_key(item, thread)] = True
            for turn in item.extra.get("run") or ():
                if (key := _turn_key(turn, thread)) is not None:
                    self._run_turns[key] = True

    # Consecutive user turns are judged joined too (`_messages._UserRun`): a run raised for stays in the thread, and
    # the thread's next question joins it, a new run, blocked by the same turns. Its block is the earlier run's. A
    # turn is matched by what it says too: a reused id with other text is a new turn (rt58b F2).
    def earlier_run(self, item: Item, thread: str | None) -> BaseMessage | None:
        """For a check of consecutive user turns read as one: its last turn that was in a run raised for before on
        ``thread`` (by id and content), or ``None``."""
        if thread is None or not len(self._run_turns):
            return None
        for turn in reversed(item.extra.get("run") or ()):
            if (key := _turn_key(turn, thread)) is not None and self._run_turns.get(key) is not None:
                return turn
        return None

    def run_turns(self, run: Sequence[BaseMessage], thread: str | None) -> list[BaseMessage]:
        """The turns of ``run`` that were in a run raised for before on ``thread`` (by id and content)."""
        if thread is None or not len(self._run_turns):
            return []
        return [
            turn
            for turn in run
            if (key := _turn_key(turn, thread)) is not None and self._run_turns.get(key) is not None
        ]


class RaisedToolStops(Generic[A]):
    """The tool calls a middleware raised `GuardViolation` for, each on its thread (`current_thread`), by the call's
    name and id, with what answers it (the middleware's notice, a `ToolMessage`; the handler's decision). Kept in the
    process, for a bounded number of threads: another process leaves the call unanswered, as before."""

    # By name and id, not arguments: a middleware listed before this one may rewrite a call's arguments (a default,
    # a normalized url), and the stop kept for the call it ran never matched the thread's own call (rt65l F3).
    def __init__(self, maxsize: int = MAX_ALLOWED_CHECKS) -> None:
        self._threads: Bounded[str, dict[str, A]] = Bounded(maxsize)
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._threads)

    def keep(self, call: Mapping[str, Any], notice: A, thread: str | None) -> None:
        """``notice`` as the answer of ``call``, stopped on ``thread``; the first one kept stays (a retry's stop is
        the same one)."""
        if thread is None or (key := _stop_key(call)) is None:
            return  # nothing of the run stays for a later one to read; a call with no id cannot be answered
        with self._lock:
            stops = self._threads.get(thread) or {}
            stops.setdefault(key, notice)
            self._threads[thread] = stops

    def answer(self, call: Mapping[str, Any], thread: str | None) -> A | None:
        """The notice kept for ``call`` on ``thread``, or ``None``."""
        key = _stop_key(call)
        stops = None if thread is None or key is None else self._threads.get(thread)
        return None if stops is None or key is None else stops.get(key)

    def forget(self, call: Mapping[str, Any], thread: str | None) -> None:
        """Answered in the thread's state: the same call asked again later is judged as any call is."""
        gone = _stop_key(call)
        self._keep_where(thread, lambda key: key != gone)

    def keep_only(self, calls: Sequence[Mapping[str, Any]], thread: str | None) -> None:
        """The stops of ``thread`` forgotten but those of ``calls``: the thread's state holds no other call a stop
        answers (a client removed the answer, a later turn answered it)."""
        kept = {_stop_key(call) for call in calls}
        self._keep_where(thread, lambda key: key in kept)

    def _keep_where(self, thread: str | None, keep: Callable[[str], bool]) -> None:
        if thread is None or self._threads.get(thread) is None:
            return
        with self._lock:
            left = {key: notice for key, notice in (self._threads.get(thread) or {}).items() if keep(key)}
            if left:
                self._threads[thread] = left
            else:
                self._threads.pop(thread)


def _stop_key(call: Mapping[str, Any]) -> str | None:
    """A call's name and id, or ``None`` for one with no id."""
    if not call.get("id"):
        return None
    return json.dumps([call.get("name"), call.get("id")], ensure_ascii=False, default=str)


def without_runs_of_blocked(blocked: Sequence[tuple[Item, Decision]]) -> list[tuple[Item, Decision]]:
    """``blocked`` (checks and the decisions that blocked them) without the checks of consecutive user turns read as
    one (`_messages._UserRun`) where a turn of the run is blocked on its own: that turn's block is the run's (the
    middleware puts its notice in the turn's place and the run is judged again with it there). Left in, a turn
    blocked on a thread's earlier turn and the next turn's question made a new block of the two, and ``"error"``
    refused every later turn (`RaisedChecks`)."""
    alone = {id(item.message) for item, _ in blocked if "run" not in item.extra}
    return [
        (item, d)
        for item, d in blocked
        if "run" not in item.extra or not any(id(m) in alone for m in item.extra["run"])
    ]


def _key(item: Item, thread: str) -> str:
    message_id = getattr(item.message, "id", None)
    return f"{thread}\x00{message_id if isinstance(message_id, str) else ''}\x00{_fingerprint(item)}"


def _turn_key(turn: BaseMessage, thread: str) -> str | None:
    """A turn of a run on ``thread``: its id and what it says (`message_key`), or ``None`` for one with neither."""
    content = message_key(turn)
    if not isinstance(turn.id, str) or content is None:
        return None
    return f"{thread}\x00{turn.id}\x00{content}"


# The checkpointer's key in a run's ``configurable`` (re-exported by langgraph.constants for its server; a rename
# reads as no checkpointer: nothing healed, every block raises).
_CHECKPOINTER_KEY = "__pregel_checkpointer"
# The run's `Runtime` in its ``configurable`` (what ``langgraph.config.get_stream_writer`` reads).
_RUNTIME_KEY = "__pregel_runtime"


def _configurable() -> Mapping[str, Any] | None:
    """The running node's ``configurable``, or ``None`` outside a graph run (or without langgraph)."""
    try:  # langgraph is imported here: the rest of the integration works with langchain-core alone
        from langgraph.config import get_config  # noqa: PLC0415
    except ImportError:  # no langgraph: no graph run, no thread state
        return None
    try:
        configurable = get_config().get("configurable")
    except RuntimeError:  # not inside a runnable
        return None
    return configurable if isinstance(configurable, Mapping) else {}


def _graph(configurable: Mapping[str, Any]) -> str:
    """The namespace of the graph the node runs in (a sub-agent's, task ids left out: the same on every run). The
    node's own is "<graph ns>|<node>:<task id>"; the graph's, recast as LangGraph's checkpointers key a subgraph's
    state (langgraph._internal._config.recast_checkpoint_ns)."""
    parts = str(configurable.get("checkpoint_ns") or "").split("|")[:-1]
    return "|".join(part.split(":")[0] for part in parts if not part.isdigit())


def _thread(configurable: Mapping[str, Any]) -> str | None:
    import langgraph.constants as constants  # noqa: PLC0415  (`_configurable` found langgraph)

    thread_id = configurable.get("thread_id")
    if thread_id is None or configurable.get(getattr(constants, "CONFIG_KEY_CHECKPOINTER", _CHECKPOINTER_KEY)) is None:
        return None
    # As LangGraph's savers key it, a string: a thread resumed as "42" is the one first run as 42 (rt66e F4).
    return json.dumps([str(thread_id), _graph(configurable)], ensure_ascii=False)


def current_thread() -> str | None:
    """The thread whose state the running node reads: its ``thread_id`` (as the checkpointer keys it: ``str``) and
    the namespace of the graph the node runs in (a sub-agent's, task ids left out: the same on every run), from the
    run's config. ``None`` outside a graph run, or without a checkpointer or ``thread_id`` (no state outlives the
    run). Not the checkpointer: agents with savers of their own that share a middleware and a ``thread_id`` share its
    thread here (a saver is no sound key: LangGraph may hand each run a copy of it, strict msgpack's allowlist)."""
    configurable = _configurable()
    return None if configurable is None else _thread(configurable)


# A run (one invocation: ``invoke``, ``stream``, their async twins) is told by its stream writer: ``Pregel.stream``
# makes a new one for each (the "custom" mode's, or one that writes nowhere), hands it to every node of the run in
# its `Runtime` (the model node and the tools node alike) and to the subgraphs run inside it (theirs is the run's).
# A weak map gives each a token of its own: an object's id is reused once the object is gone, and a later run under a
# dead run's id would have read what the dead one produced. The writer LangGraph shares between runs (a module's
# no-op) tells no run: nothing is then taken as produced (the agent's own calls are judged as a client's).
_RUNS: weakref.WeakKeyDictionary[Any, str] = weakref.WeakKeyDictionary()
_RUNS_LOCK = threading.Lock()


@functools.cache
def _shared_writers() -> tuple[Any, ...]:
    """The writers LangGraph's modules share between runs (their no-op's)."""
    found = []
    for name in ("langgraph.config", "langgraph.runtime"):
        try:
            module = importlib.import_module(name)
        except ImportError:
            continue
        if (writer := getattr(module, "_no_op_stream_writer", None)) is not None:
            found.append(writer)
    return tuple(found)


def _run(configurable: Mapping[str, Any]) -> str | None:
    """A token of the run the node is part of (its stream writer's), or ``None`` where no writer tells it."""
    writer = getattr(configurable.get(_RUNTIME_KEY), "stream_writer", None)
    if writer is None or any(writer is shared for shared in _shared_writers()):
        return None
    try:
        with _RUNS_LOCK:
            token = _RUNS.get(writer)
            if token is None:
                token = _RUNS[writer] = uuid.uuid4().hex
    except TypeError:  # cannot be weakly referenced (or hashed): tells no run
        return None
    return token


def current_scope() -> str | None:
    """Where what the running node's agent produces is bound (`Produced`): its thread (`current_thread`: the thread's
    later runs read its state, an interrupt's resume among them), or with none the run (one invocation: nothing of it
    outlives it), in the namespace of the graph the node runs in. ``None`` outside a graph run, or in a run that
    cannot be told from another."""
    configurable = _configurable()
    if configurable is None:
        return None
    thread = _thread(configurable)
    if thread is not None:
        return json.dumps(["thread", thread], ensure_ascii=False)
    run = _run(configurable)
    return None if run is None else json.dumps(["run", run, _graph(configurable)], ensure_ascii=False)
