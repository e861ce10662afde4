"""What a callback handler keeps per run, for one handler shared by every request of a server.

Three things LangChain's events do not give a handler, worked out here:

- **Which call a run belongs to.** Events carry ``run_id`` and ``parent_run_id`` only. The handler links
  every run it sees (chains included) to its parent; a run's *trace* is its top linked ancestor's parent
  (or that ancestor itself when it has none). A tool waits for the input checks of its own trace only, and a
  tool call's context is found under its trace: another user's blocked prompt, or another user's model that
  sends the same tool-call id, never reaches this run.
- **When a run is gone without an end event.** A request cancelled during the model call (a client that
  disconnects) ends without ``on_llm_error``: langchain-core's ``agenerate`` is cancelled at its
  ``asyncio.gather`` and reports nothing; a cancelled tool or retriever reports nothing either (they report
  ``Exception`` only). Such a run is *owned* by the asyncio task it started in, and dropped when that task
  ends if nothing dropped it before: a run started by ``agenerate`` (``ainvoke``, a LangGraph node), a
  tool run, a retriever run. One await spans each of them, so the task cannot end while the run is alive.
  A streamed model run (``astream``) is not owned: a consumer may drive each step in a task of its own
  (``RunnableParallel.astream`` does), and dropping a live run would forget its input check; ``astream``
  reports its cancellation itself. A run cancelled inside a task that goes on (``asyncio.timeout``
  around the call) is dropped when that task ends.
- **A sync batch stopped on one of its runs.** ``generate([[a], [b]])`` (``generate_prompt``, and a completion
  model's ``batch``, which hands every prompt to one ``generate_prompt``) starts one run per list, generates
  each in turn, then ends each in turn; whatever raises on one run (its start blocked, its stream stopped, the
  model failing, its answer blocked at its end) raises out of the call, and the siblings that had not ended get no
  event. A sync run is owned by no task, so their states stayed for the handler's life (rt52d F1). The sync runs
  one such call starts in a thread make a *batch*: when one of them fails or a stop is raised at its end, the
  others still held are dropped with it.
- **Bounds.** Parent links are kept for at most `MAX_LINKS` live runs (the oldest go first: a trace then
  reads shorter, never longer).
"""

from __future__ import annotations

import asyncio
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import partial
from typing import Generic, TypeVar
from uuid import UUID

from .._common import Bounded

__all__ = ["MAX_LINKS", "BlockedCalls", "RunTable", "started_by_agenerate"]

#: Parent links kept at once (live runs of every request together).
MAX_LINKS = 65_536
#: Calling frames `started_by_agenerate` reads (hook, handler dispatch, event dispatch, manager, model).
_MAX_CALLERS = 12
#: Ancestors walked to find a trace (LangGraph nests a few levels; a cycle cannot occur, but is bounded).
_MAX_DEPTH = 1_000

S = TypeVar("S")


class _Batch:
    """The sync runs one multi-prompt call started (``batch_size`` of them, under one parent), in one thread."""

    __slots__ = ("key", "started", "runs", "closed")

    def __init__(self, key: tuple[UUID | None, int]) -> None:
        self.key = key
        self.started = 0
        self.runs: set[UUID] = set()
        self.closed = False  # one of its runs failed: the call raised, no later run joins it

    def takes(self, key: tuple[UUID | None, int]) -> bool:
        return not self.closed and self.key == key and self.started < key[1]


class RunTable(Generic[S]):
    """Per-run state ``S`` keyed by ``run_id``, the parent links between runs, and the tasks that own runs.

    ``make()`` builds a run's state on first use; ``close(state)`` releases what a dropped run held (its
    stream screens, its pending input check). Thread-safe: the sync handler is called from many threads.
    """

    def __init__(self, make: Callable[[], S], close: Callable[[S], None]) -> None:
        self._make, self._close = make, close
        self._states: dict[UUID, S] = {}
        self._owners: dict[UUID, tuple[asyncio.Task[object], Callable[[asyncio.Task[object]], None]]] = {}
        self._parents: Bounded[UUID, UUID] = Bounded(MAX_LINKS)  # a run without a parent links to itself
        self._batches: dict[UUID, _Batch] = {}  # a sync run of a multi-prompt call: its batch (module doc)
        self._starting = threading.local()  # the batch whose runs this thread is starting
        self._lock = threading.Lock()

    # -- state ----------------------------------------------------------------------------------------
    def get(self, run_id: UUID) -> S | None:
        return self._states.get(run_id)

    def state(self, run_id: UUID) -> S:
        """The run's state, made on first use."""
        with self._lock:
            state = self._states.get(run_id)
            if state is None:
                state = self._states[run_id] = self._make()
            return state

    def pop(self, run_id: UUID) -> S | None:
        """Forget the run (its state is returned, not closed: an ending run still finishes its screens)."""
        with self._lock:
            state = self._states.pop(run_id, None)
            owner = self._owners.pop(run_id, None)
            batch = self._batches.pop(run_id, None)
            if batch is not None:
                batch.runs.discard(run_id)
                # A call starts all its runs before any ends: none joins this batch after it (one a handler saw in
                # part stayed open, and the next call's runs joined it out of step: rt52g F1).
                batch.closed = True
        self._parents.pop(run_id)
        if owner is not None:
            _forget_callback(*owner)
        return state

    def drop(self, run_id: UUID) -> S | None:
        """Forget the run and release what it held: it failed, or a hook stopped it (a run that ends is `pop`-ped),
        so the rest of its sync batch goes too."""
        batch = self._batches.get(run_id)
        state = self._drop_one(run_id)
        if batch is not None:
            self._drop_batch(batch)
        return state

    def _drop_one(self, run_id: UUID) -> S | None:
        state = self.pop(run_id)
        if state is not None:
            self._close(state)
        return state

    # -- sync batches ---------------------------------------------------------------------------------
    def join_batch(self, run_id: UUID, parent_run_id: UUID | None, batch_size: object) -> None:
        """A sync model run starts: one of a multi-prompt call's runs (``batch_size`` > 1) joins the batch this
        thread is starting (the call starts its runs one after the other), or opens the next one."""
        if not isinstance(batch_size, int) or batch_size < 2 or _in_task():
            return  # one prompt, or an async dispatch: its runs are owned by their task (`own`)
        key = (parent_run_id, batch_size)
        batch = getattr(self._starting, "batch", None)
        if batch is None or not batch.takes(key):
            batch = self._starting.batch = _Batch(key)
        batch.started += 1
        with self._lock:
            if run_id in self._states and not batch.closed:
                batch.runs.add(run_id)
                self._batches[run_id] = batch

    @contextmanager
    def ending(self, run_id: UUID) -> Iterator[None]:
        """Around a run's end hook: a stop raised there ends the rest of its sync batch (LangChain raises out of the
        loop over the batch's ends)."""
        batch = self._batches.get(run_id)
        try:
            yield
        except BaseException:
            if batch is not None:
                self._drop_batch(batch)
            raise

    def _drop_batch(self, batch: _Batch) -> None:
        with self._lock:
            batch.closed = True
            siblings = list(batch.runs)
        for sibling in siblings:
            self._drop_one(sibling)

    def values(self) -> Iterator[tuple[UUID, S]]:
        with self._lock:
            return iter(list(self._states.items()))

    def __len__(self) -> int:
        return len(self._states)

    # -- traces ---------------------------------------------------------------------------------------
    def link(self, run_id: UUID, parent_run_id: UUID | None) -> None:
        """Record a run's parent (called on every start event, chains included)."""
        self._parents[run_id] = parent_run_id or run_id

    def unlink(self, run_id: UUID) -> None:
        self._parents.pop(run_id)

    def trace(self, run_id: UUID) -> UUID:
        """The call this run belongs to: its top linked ancestor's parent, or that ancestor if it has none."""
        current = run_id
        for _ in range(_MAX_DEPTH):
            parent = self._parents.get(current)
            if parent is None or parent == current:
                return current
            current = parent
        return current

    def lineage(self, run_id: UUID) -> list[UUID]:
        """``run_id`` and its linked ancestors, nearest first (as far as they are linked: an ended run is not)."""
        found = [run_id]
        for _ in range(_MAX_DEPTH):
            parent = self._parents.get(found[-1])
            if parent is None or parent == found[-1]:
                break
            found.append(parent)
        return found

    # -- owners ---------------------------------------------------------------------------------------
    def own(self, run_id: UUID) -> None:
        """Drop the run when the asyncio task running now ends, if nothing dropped it before (module doc)."""
        try:
            task = asyncio.current_task()
        except RuntimeError:  # no event loop in this thread: a sync run, which always ends with an event
            return
        if task is None or task.done():
            return
        callback = partial(self._task_ended, run_id)
        with self._lock:
            if run_id not in self._states or run_id in self._owners:
                return
            self._owners[run_id] = (task, callback)
        task.add_done_callback(callback)

    def _task_ended(self, run_id: UUID, task: asyncio.Task[object]) -> None:
        with self._lock:
            owner = self._owners.get(run_id)
            if owner is None or owner[0] is not task:
                return
        self.drop(run_id)


def _in_task() -> bool:
    try:
        return asyncio.current_task() is not None
    except RuntimeError:  # no event loop in this thread
        return False


def started_by_agenerate() -> bool:
    """Is a model run starting inside langchain-core's ``agenerate`` (one await spans the whole call)?
    Read from the calling frames: a handler's start hook is awaited by the callback manager, awaited by the
    model's entry point. Not found (another entry point, another langchain-core layout): not owned."""
    frame = sys._getframe(1)
    for _ in range(_MAX_CALLERS):
        frame = frame.f_back  # type: ignore[assignment]
        if frame is None:
            return False
        code = frame.f_code
        if code.co_name == "agenerate" and "langchain_core" in code.co_filename:
            return True
    return False


def _forget_callback(task: asyncio.Task[object], callback: Callable[[asyncio.Task[object]], None]) -> None:
    """Remove a done callback from its task (a long-lived task would otherwise collect one per run)."""
    loop = task.get_loop()
    try:
        running = asyncio.get_running_loop()
    except RuntimeError:
        running = None
    if running is loop:
        task.remove_done_callback(callback)
    elif not loop.is_closed():
        try:
            loop.call_soon_threadsafe(task.remove_done_callback, callback)
        except RuntimeError:  # the loop closed meanwhile: the task and its callbacks go with it
            pass


# -- blocked inputs: what their failure discards (rt62c F2, F3) ----------------------------------------------------
#: Blocks kept per run (a call whose batch blocked several inputs): the oldest go first.
_BLOCKS_PER_RUN = 8
_UNKNOWN = object()


class _Block:
    """One blocked input: its decision, the run it stopped and that run's ancestors (nearest first), the inputs those
    ancestors were started with (while its call may still start branches), and which of them raised it."""

    __slots__ = ("decision", "lineage", "inputs", "raised", "top_seen")

    def __init__(self, decision: object, lineage: list[UUID], inputs: dict[UUID, object], top_seen: bool) -> None:
        self.decision = decision
        self.lineage = lineage
        self.inputs = inputs
        self.raised: set[UUID] = set()
        self.top_seen = top_seen  # its top run is a chain this handler saw start: its end frees `inputs`


class BlockedCalls:
    """Where a blocked input's failure goes, so that a tool or retriever starting later is refused only if that
    failure discards it (``refusing``).

    The failure runs up the blocked run's ancestors until something catches it. A run that *raised* it (a chain's
    or tool's error event) discards everything under it: a branch beside the model (``RunnableParallel``, a
    gather) goes on after the call raised, and neither ``asyncio.gather`` nor a thread pool cancels it. A run that
    *ended* normally caught it at or below itself (``ToolRetryMiddleware`` writing the failure as the tool's
    message, a node's ``try``/``except``, ``batch(..., return_exceptions=True)``): the runs above it go on and
    their later steps are judged on their own (rt62c F3). Under a run whose outcome is not known yet, a new
    tool's branch is told apart from the blocked one by the input each was started with: a batch item (another
    input, or a tool call of other arguments beside a tool that ran the blocked model) goes on (rt62c F2); the same
    input (a ``RunnableParallel`` branch), or one not known (a model's, a retriever's, a streamed chain's
    placeholder, an input that cannot be compared), is refused."""

    def __init__(self, size: int) -> None:
        self._at: Bounded[UUID, tuple[_Block, ...]] = Bounded(size)
        self._inputs: Bounded[UUID, object] = Bounded(MAX_LINKS)  # live chains' inputs
        self._lock = threading.Lock()  # a sync batch's items block and end in threads of their own

    def started(self, run_id: UUID, inputs: object) -> None:
        """A chain or tool starts (a tool once let through) with ``inputs`` (kept while it runs: it holds them
        anyway). A streamed chain starts with langchain-core's placeholder, ``{"input": ""}``, not its input: not
        known, so a branch under it is never told apart by it (rt62g F1: the placeholder compared unequal with a
        sibling's real input, and the sibling's tool ran on the blocked call)."""
        if _placeholder(inputs):
            self._inputs.pop(run_id)
            return
        self._inputs[run_id] = inputs

    def block(self, decision: object, lineage: list[UUID]) -> None:
        """The input of ``lineage[0]`` was blocked; ``lineage``: it and its ancestors, nearest first."""
        inputs = {run: value for run in lineage if (value := self._inputs.get(run, _UNKNOWN)) is not _UNKNOWN}
        block = _Block(decision, list(lineage), inputs, top_seen=lineage[-1] in inputs)
        with self._lock:
            for run in lineage:
                self._at[run] = (*(self._at.get(run) or ())[-(_BLOCKS_PER_RUN - 1) :], block)

    def ended(self, run_id: UUID) -> None:
        """A chain or tool ended normally: a blocked input's failure under it was caught at or below it, and the runs
        above it are no longer failing with it (it stays on this run: a branch under it orphaned by the catch)."""
        self._inputs.pop(run_id)
        if self._at.get(run_id) is None:
            return
        with self._lock:
            for block in self._at.get(run_id) or ():
                for run in block.lineage[block.lineage.index(run_id) + 1 :]:
                    kept = tuple(b for b in self._at.get(run) or () if b is not block)
                    if kept:
                        self._at[run] = kept
                    else:
                        self._at.pop(run)
                self._settled(block, run_id)

    def failed(self, run_id: UUID) -> None:
        """A chain or tool raised: whatever of a blocked call still runs under it is discarded."""
        self._inputs.pop(run_id)
        for block in self._at.get(run_id) or ():
            block.raised.add(run_id)
            self._settled(block, run_id)

    @staticmethod
    def _settled(block: _Block, run_id: UUID) -> None:
        if block.top_seen and run_id == block.lineage[-1]:
            block.inputs = {}  # its call is over: no branch of it is told apart by its input any more

    def refusing(self, lineage: list[UUID], inputs: object = None) -> object | None:
        """The decision that refuses a run starting now (``lineage``: it and its ancestors, nearest first; ``inputs``:
        what it was started with, None if not known), if a blocked input's failure discards it (class doc); None if
        none does."""
        judged: set[int] = set()  # a block is judged at the run where this run's branch leaves its lineage
        for mine, run in enumerate(lineage):
            for block in reversed(self._at.get(run) or ()):
                if id(block) not in judged:
                    judged.add(id(block))
                    if self._discards(block, lineage, mine, _UNKNOWN if inputs is None else inputs):
                        return block.decision
        return None

    def _discards(self, block: _Block, lineage: list[UUID], mine: int, inputs: object) -> bool:
        run = lineage[mine]
        theirs = block.lineage.index(run)
        if run in block.raised or mine == 0 or theirs == 0:
            return True
        branch = inputs if mine == 1 else self._inputs.get(lineage[mine - 1], _UNKNOWN)  # 1: the run is the branch
        return not _different(branch, block.inputs.get(block.lineage[theirs - 1], _UNKNOWN))


def _placeholder(inputs: object) -> bool:
    """langchain-core's input of a chain run started by ``transform``/``stream`` (its real input comes later)."""
    return type(inputs) is dict and len(inputs) == 1 and inputs.get("input", None) == ""


def _different(mine: object, theirs: object) -> bool:
    """Were two branches started with different inputs? Only when both are known and compare unequal."""
    if mine is _UNKNOWN or theirs is _UNKNOWN or mine is theirs:
        return False
    try:
        return bool(mine != theirs)
    except Exception:  # noqa: BLE001 - an input that cannot be compared is taken for the same (refused)
        return False
