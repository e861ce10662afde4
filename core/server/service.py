"""What the endpoints share: the guard, its verdict cache, deadlines and metrics; and the translation
between wire payloads and the core's conversations, policies and verdicts."""

from __future__ import annotations

import asyncio
import contextvars
import json
import logging
import math
import re
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import replace
from typing import Any

from ..backends.base import Outcome
from ..cache import cache_key
from ..errors import GuardTimeout, GuardUnavailable, InputTooLarge, VerdictParseError
from ..excused_split import ExcusedSplit, is_excused
from ..formats.content import clean_text, is_blank
from ..formats.conversations import (
    answer_or_prefill,
    least_contexts,
    rendered_answer_size,
    without_blank_context,
)
from ..formats.overstrike import LONE_CR
from ..formats.prompts import (
    GENERATION_PREFIX,
    SAFETY_LABELS,
    normalize_messages,
    parse_verdict,
    render_prompt,
    text_size,
)
from ..formats.windows import CALL_WINDOW_BUDGET, window_budget
from ..guard import PREPARE_ON_LOOP_CALL_CHARS, PREPARE_ON_LOOP_CHARS
from ..policy import Action, Decision, Policy, quoted
from ..verdict import Risk, Stage, Verdict, worst
from .limits import LimitExceeded, Limits
from .metrics import Metrics
from .schemas import (
    ApiError,
    ChatCompletionRequest,
    ChatMessage,
    CompletionRequest,
    DecisionModel,
    Message,
    ModerationRequest,
    ModerationResponse,
    ModerationResult,
    client_error,
)
from .turns import NoTurn, ParseTurns

logger = logging.getLogger("qwenguard.server")

#: When the HTTP request being served must be answered by (``time.monotonic()``); set by the gate once the
#: request's body is in, so that waiting for a turn (`ClientTurns`) and the work share one deadline.
REQUEST_DEADLINE: contextvars.ContextVar[float | None] = contextvars.ContextVar(
    "qwenguard_request_deadline", default=None
)
#: The client address of the HTTP request being served (`turns.client_address`), set by the gate: whose turn a
#: request's work off the loop takes (`Service.prepared`).
REQUEST_CLIENT: contextvars.ContextVar[str] = contextvars.ContextVar("qwenguard_request_client", default="unknown")

_TURN_SPLIT = re.compile(r"\n\n(?=(?:USER|ASSISTANT): )")
_PROMPT_HEAD = "<|im_start|>user\n"
_PROMPT_TAIL = "<|im_end|>\n" + GENERATION_PREFIX


#: Above this many characters, a completion prompt is parsed off the event loop.
_LARGE_PROMPT = 32_000


def conversation_from_prompt(prompt: str) -> list[dict[str, str]]:
    """Read the conversation back out of a prompt written by `render_prompt`.

    Raises ``ValueError`` unless rendering the result gives back exactly ``prompt`` (after the content
    rule's `clean_text`, which `render_prompt` applies too). The contents keep their lone CRs, as a chat request's
    do: a text checked whole is read as a terminal shows it too. Content that itself contains
    ``"\\n\\nUSER: "`` reads back as more turns; the rendered text, which is all the model sees, is the
    same either way.
    """
    kept = clean_text(prompt, keep_lone_cr=True)  # its lone CRs kept: read as a terminal shows them (rt70l F3)
    prompt = LONE_CR.sub("\n", kept) if "\r" in kept else kept  # as rendered; the same length, so offsets agree
    if not (prompt.startswith(_PROMPT_HEAD) and prompt.endswith(_PROMPT_TAIL)):
        raise ValueError("prompt is not a Qwen3Guard-Gen prompt (render it with qwenguard's render_prompt)")
    start = prompt.find("<BEGIN CONVERSATION>\n\n")
    end = prompt.rfind("\n\n<END CONVERSATION>\n\n")
    if start < 0 or end < start:
        raise ValueError("prompt has no <BEGIN CONVERSATION> ... <END CONVERSATION> block")
    at = start + len("<BEGIN CONVERSATION>\n\n")
    messages: list[dict[str, str]] = []
    for turn in _TURN_SPLIT.split(prompt[at:end]):
        label, sep, _ = turn.partition(": ")
        if not sep or label not in ("USER", "ASSISTANT"):
            raise ValueError("prompt conversation turns must start with 'USER: ' or 'ASSISTANT: '")
        content = kept[at + len(label) + len(sep) : at + len(turn)]  # the turns as rendered, the content as sent
        messages.append({"role": "user" if label == "USER" else "assistant", "content": content})
        at += len(turn) + 2  # the "\n\n" between turns
    if render_prompt(messages) != prompt:
        raise ValueError("prompt does not match the official Qwen3Guard-Gen rendering of its conversation")
    return messages


def policy_from_dict(data: Mapping[str, Any]) -> Policy:
    """A `Policy` from ``Policy.to_dict()`` output (or any subset of its fields): `Policy.from_dict`."""
    return Policy.from_dict(data)


def default_stages(messages: Sequence[Message]) -> tuple[Stage, ...]:
    """The stages a conversation's last turn is decided at (`_Turn.judged_stages`): ``prompt`` for a
    user turn, ``response`` for an assistant's text, ``tool_call`` for its tool calls. An answer sent as several
    assistant messages in a row is one turn to the guard (the run it judges joined, `windows.final_run`: a user
    message that shows nothing between them is skipped, as there), decided at the stages of each of them: its text
    and its tool call sent apart were decided at the last message's stage only, and escaped the other's rules
    (rt63e F2)."""
    turns = [m for m in messages if m.role != "system"]
    if not turns or turns[-1].role != "assistant":
        return turns[-1].judged_stages() if turns else (Stage.PROMPT,)
    found: set[Stage] = set()
    for turn in reversed(turns):
        if turn.role == "assistant":
            found.update(turn.judged_stages())
        elif not is_blank(clean_text(turn.text())):
            break
    return tuple(stage for stage in (Stage.TOOL_CALL, Stage.RESPONSE) if stage in found)


def decided_stages(
    messages: Sequence[Message], named: Stage | None = None, judged: Sequence[Mapping[str, str]] = ()
) -> tuple[Stage, ...]:
    """The stages a conversation's last turn is decided at: its own (`default_stages`), and the one a client
    named as well, first (a tie names it). A named stage can only hold the turn to more rules, never to
    other ones: a client that could pick the stage would pick the operator's loosest (``retrieval`` with
    ``Violent`` ignored, for a bomb prompt). ``judged``: the conversation as judged (`normalize`); where it
    ends in the user's turn, that request is what is decided, at ``prompt``: a blank assistant "prefill" after
    it is left out of the judging, and it picked the response stage's rules for the request (rt56a F1)."""
    own = default_stages(messages)
    if judged and judged[-1]["role"] == "user":
        own = (Stage.PROMPT,)
    return own if named is None else (named, *(stage for stage in own if stage != named))


_ACTION_RANK = {Action.BLOCK: 0, Action.FLAG: 1, Action.ALLOW: 2}

#: `Service.moderation_work`'s result: the conversations as judged, the policy, the request behind each one's last
#: turn of markup alone (or ``None``).
ModerationWork = tuple[list[list[dict[str, str]]], Policy, list["list[dict[str, str]] | None"]]
#: `normalized`'s result: a conversation as the guard takes it, the request behind its last turn of markup alone.
Normalized = tuple[list[dict[str, str]], "list[dict[str, str]] | None"]


def _moderation_work(pairs: list[Normalized], policy: Policy) -> ModerationWork:
    convs, requests = zip(*pairs) if pairs else ((), ())
    return list(convs), policy, list(requests)


def strictest(decisions: Sequence[Decision]) -> Decision:
    """The strictest of a turn's decisions (one per stage it is decided at): a block over a flag over an
    allow, the first on a tie. A turn with text and tool calls is held to both stages' policies."""
    return min(decisions, key=lambda d: (d.allowed, _ACTION_RANK[d.action]))


def decide(policy: Policy, outcome: Outcome, stages: Sequence[Stage]) -> Decision:
    """The strictest of ``policy``'s decisions on ``outcome`` (a verdict or a guard error) at ``stages``."""
    if isinstance(outcome, Verdict):
        return strictest([policy.decide(outcome, stage) for stage in stages])
    timeout = isinstance(outcome, GuardTimeout)  # reason "timeout", as the local Guard says it
    return strictest([policy.decide_error(stage, outcome, timeout=timeout) for stage in stages])


def shortest(budgets: Iterable[float | None]) -> float | None:
    """The shortest of ``budgets`` in seconds; ``None`` (no limit) when none is set."""
    known = [budget for budget in budgets if budget is not None]
    return min(known) if known else None


def longest_wait(policy: Policy, stages: Iterable[Stage]) -> float | None:
    """How long a conversation decided at ``stages`` is waited for: the longest of their time budgets
    (`Policy.timeout_for`; ``None``, no limit, where one has none). Each stage is then decided on the verdict, and a
    stage failing closed whose own budget had passed before it came as a timeout too (`late_stages`): the shortest
    budget made a named stage, a harmless tool call or a client's tightened prompt stage fail another stage open
    unjudged (rt69m F1-F2)."""
    budgets = [policy.timeout_for(stage) for stage in stages]
    return None if any(budget is None for budget in budgets) else max(budgets, default=None)  # type: ignore[type-var]


def late_stages(policy: Policy, stages: Iterable[Stage], took: float | None) -> list[Stage]:
    """The stages failing closed whose own budget passed before a verdict that took ``took`` seconds came: they
    decide a timeout as well (the stricter decision stands); a stage failing open is decided on the verdict."""
    if took is None:
        return []
    return [
        stage
        for stage in stages
        if policy.on_error_for(stage) == "block" and (budget := policy.timeout_for(stage)) is not None and took > budget
    ]


def judged_within(
    limits: Limits, messages: Iterable[Message | ChatMessage], left: int, what: str = "request"
) -> tuple[list[dict[str, str]], int]:
    """``messages`` as the guard reads them (`Message.judged`), rendering no further than ``left`` characters of
    content: `LimitExceeded` once past it (``what`` names the request in its message). The turns, and the
    characters left after them."""
    turns = []
    for message in messages:
        try:
            turn = message.judged(max_chars=left)
        except InputTooLarge as exc:  # a tool call's strings of JSON text past the bound on reading them parsed
            raise LimitExceeded(str(exc)) from exc
        left -= len(turn["content"])
        if left < 0:
            limits.check_chars(limits.max_chars - left, what, at_least=True)
        turns.append(turn)
    return turns, left


class Service:
    """What the endpoints share: the guard, its verdict cache, the operator's policy and limits,
    deadlines and metrics."""

    def __init__(self, guard: Any, *, limits: Limits, metrics: Metrics, model_name: str) -> None:
        self.guard = guard
        self.limits = limits
        self.request_timeout_s = limits.request_timeout_s
        self.metrics = metrics
        self.model_name = model_name
        # Large request bodies and stream frames are worked on one at a time, clients taking turns (`ParseTurns`).
        self.parsing = ParseTurns()

    # -- what a client may ask for ----------------------------------------------------------------
    def policy_for(self, requested: Mapping[str, Any] | None) -> Policy:
        """The operator's policy (the guard's), made stricter by the client's where it asks for that.

        A client can never loosen it (`Policy.tightened`); a malformed policy is a 400."""
        operator: Policy = self.guard.policy
        if requested is None:
            return operator
        try:
            return operator.tightened(Policy.from_dict(requested))
        except (TypeError, ValueError, OverflowError) as exc:  # Overflow: a timeout_s of 400 digits, as a float
            raise ApiError(400, f"invalid policy: {exc}", "invalid_request_error") from exc

    def check_size(self, conversations: Sequence[Sequence[Mapping[str, Any]]]) -> None:
        """413 for more conversations, messages or characters than the operator allows."""
        try:
            self.limits.check_conversations(conversations)
        except LimitExceeded as exc:
            raise self._refused(exc) from exc

    def _refused(self, exc: LimitExceeded) -> ApiError:
        self.metrics.rejected.labels("work_size").inc()
        return ApiError(413, str(exc), "request_too_large")

    def judged(self, conversations: Sequence[Sequence[Message | ChatMessage]]) -> list[list[dict[str, str]]]:
        """Each conversation's turns as the guard reads them (`Message.judged`: text and tool calls), within
        the operator's limits (413, as `check_size`): the counts first, then the characters as the turns
        are rendered, so that rendering stops once past ``max_chars`` (thousands of tool calls are refused
        after rendering at most ``max_chars`` characters, never all of them)."""
        left = self.limits.max_chars
        out: list[list[dict[str, str]]] = []
        try:
            self.limits.check_counts(conversations)
            for conversation in conversations:
                turns, left = judged_within(self.limits, conversation, left)
                out.append(turns)
        except LimitExceeded as exc:
            raise self._refused(exc) from exc
        return out

    def prompt_conversation(self, prompt: str) -> list[dict[str, str]]:
        """`conversation_from_prompt`; 400 when it is not one, 413 (before parsing) when it holds more turns
        than a conversation may."""
        turns = prompt.count("\n\nUSER: ") + prompt.count("\n\nASSISTANT: ")
        if turns > self.limits.max_messages:
            self.check_size([[{}] * turns])
        try:
            return conversation_from_prompt(prompt)
        except ValueError as exc:
            raise ApiError(400, str(exc), "invalid_request_error") from exc

    async def read_prompt(self, prompt: str) -> list[dict[str, str]]:
        """`prompt_conversation`, off the event loop for large prompts."""
        if len(prompt) > _LARGE_PROMPT:
            return await asyncio.to_thread(self.prompt_conversation, prompt)
        return self.prompt_conversation(prompt)

    # -- each route's synchronous work on its parsed body: validation, rendering, size checks. On the event
    # loop for small bodies; in a thread, with the parse, for large ones (`gate.Gate._off_loop`).
    # Each has an async twin for a body read on the loop, which renders a long final answer of markup off it
    # (`prepared`).
    def moderation_work(self, body: ModerationRequest) -> ModerationWork:
        """`moderate`'s conversations as the guard takes them, the policy to decide them by, and the request behind
        each one's last turn of markup alone, judged as well (`normalized`)."""
        raw, policy = self._moderation_turns(body)
        return _moderation_work([normalized(conv) for conv in raw], policy)

    async def amoderation_work(self, body: ModerationRequest) -> ModerationWork:
        raw, policy = self._moderation_turns(body)
        return _moderation_work(await self.prepared(raw), policy)

    def _moderation_turns(self, body: ModerationRequest) -> tuple[list[list[dict[str, str]]], Policy]:
        check_model(body.model, self.model_name)
        raw = self.judged(body.conversations)  # text and tool calls
        return raw, self.policy_for(body.policy)

    def chat_conversation(self, body: ChatCompletionRequest) -> list[dict[str, str]]:
        """A chat completion's conversation as the guard takes it: nothing sent goes unjudged."""
        return normalize(self._chat_turns(body))

    async def achat_conversation(self, body: ChatCompletionRequest) -> list[dict[str, str]]:
        ((conversation, _),) = await self.prepared([self._chat_turns(body)])
        return conversation

    def _chat_turns(self, body: ChatCompletionRequest) -> list[dict[str, str]]:
        check_model(body.model, self.model_name)
        (raw,) = self.judged([body.messages])
        return raw

    def completion_conversation(self, body: CompletionRequest) -> list[dict[str, str]]:
        """A raw completion's conversation, read back out of its prompt (`prompt_conversation`)."""
        check_model(body.model, self.model_name)
        return self.sized(self.prompt_conversation(body.prompt))

    def sized(self, messages: list[dict[str, str]]) -> list[dict[str, str]]:
        """One conversation, size-checked (`check_size`) and normalized."""
        self.check_size([messages])
        return normalize(messages)

    async def asized(self, messages: list[dict[str, str]]) -> list[dict[str, str]]:
        self.check_size([messages])
        ((conversation, _),) = await self.prepared([messages])
        return conversation

    async def prepared(self, turns: list[list[dict[str, str]]]) -> list[Normalized]:
        """`normalized` of each of ``turns`` (conversations as judged), on the event loop, or where their final
        answers may render differently and are long (`rendered_answer_size`, in all past `PREPARE_ON_LOOP_CALL_CHARS`)
        in a thread, in one of `ParseTurns`' turns as a large body's work is: rendering markup takes microseconds a
        character, and 16,633 empty tags in a 32 KB body held every client 0.3 s (rt70h F1). 503 when no turn came."""

        def work() -> list[Normalized]:
            return [normalized(conversation) for conversation in turns]

        if sum(rendered_answer_size(conversation) for conversation in turns) <= PREPARE_ON_LOOP_CALL_CHARS:
            return work()
        try:
            return await self.parsing.in_thread(REQUEST_CLIENT.get(), self.time_left(), work)
        except NoTurn:
            raise ApiError(
                503, "server busy: too many requests waiting to be read", "overloaded", {"Retry-After": "1"}
            ) from None

    def time_left(self) -> float | None:
        """Seconds the request being served has left: ``request_timeout_s`` from when its body was in
        (`REQUEST_DEADLINE`, set by the gate), so time spent waiting for a turn counts against it."""
        timeout = self.request_timeout_s
        at = REQUEST_DEADLINE.get()
        if timeout is None or at is None:
            return timeout
        return max(0.001, min(timeout, at - time.monotonic()))

    async def classify(
        self,
        conversations: Sequence[Sequence[Mapping[str, str]]],
        *,
        fallbacks: dict[int, Verdict] | None = None,
        budget: float | None = None,
        counted: bool = True,
    ) -> list[tuple[Outcome, bool]]:
        """Verdicts (or per-conversation errors) with a cached flag. Whole-call failures become ApiErrors.
        ``fallbacks``: filled with the verdict, as the model gave it, of each conversation whose answer was no
        verdict and whose turn alone was judged not safe (`_without_context`), for a caller that decides by a
        policy of its own (``/v1/moderate``). ``budget``: how long that policy waits for these conversations
        (`longest_wait`): the call's deadline where shorter than the request's, and missing it is each conversation's
        `GuardTimeout`, for the policy to decide, not a 504.

        Verdicts are stage-independent (the model never sees the stage), so they are cached under one
        stage label, apart from the Guard's own per-stage entries; a verdict of a turn judged alone is not (it
        answers a guard error, not the conversation)."""
        backend = self.guard.backend
        cache = self.guard.cache
        results: list[tuple[Outcome, bool] | None] = [None] * len(conversations)
        pending: list[int] = []
        keys: list[Any] = []
        for i, conv in enumerate(conversations):
            key = cache_key(backend.name, "server", conv)
            keys.append(key)
            hit = cache.get(key)
            if hit is not None:
                results[i] = (hit, True)
            else:
                pending.append(i)
        if pending:
            # One account for the request's backend calls: the second (the turns without their context,
            # `_without_context`) ran after the bound was reset, with no request bound at all (rt58b F3).
            with window_budget(self.limits.max_windows_per_request):
                timeout = self.time_left()
                # The policy's timeout_s binds /v1/moderate as it binds a stream session's checks: a client's
                # tightened 0.2 s, or an operator's failing open, waited for the request's --timeout and was never
                # decided as a timeout (rt69c F1).
                policy_s = budget
                by_policy = policy_s is not None and (timeout is None or policy_s < timeout)
                if by_policy:
                    timeout = policy_s
                # The request's windows in all, not only each conversation's (256 conversations of forged turn labels
                # planned 25,000 windows and ran to the deadline): read by the backend's planning, in this task.
                window_token = CALL_WINDOW_BUDGET.set(self.limits.max_windows_per_request)
                try:
                    outcomes = await asyncio.wait_for(
                        backend.aclassify([conversations[i] for i in pending], timeout=timeout),
                        None if timeout is None else timeout + 1.0,  # the backend's own deadline fires first
                    )
                except (GuardTimeout, asyncio.TimeoutError) as exc:
                    if not by_policy:
                        self.metrics.guard_errors.labels("GuardTimeout").inc()
                        raise ApiError(
                            504,
                            f"guard did not answer within the request deadline ({self.request_timeout_s} s)",
                            "timeout",
                        ) from exc
                    # Counted per conversation below (`Metrics.verdict`), as any conversation's guard error.
                    outcomes = [GuardTimeout(f"no answer within {policy_s} s") for _ in pending]
                except InputTooLarge as exc:
                    raise self._too_large(exc) from exc
                except Exception as exc:
                    self.metrics.guard_errors.labels(type(exc).__name__).inc()
                    logger.warning("guard backend failed: %s", type(exc).__name__)
                    raise ApiError(503, f"guard unavailable: {type(exc).__name__}", "guard_unavailable") from exc
                finally:
                    CALL_WINDOW_BUDGET.reset(window_token)
                for outcome in outcomes:
                    if isinstance(outcome, InputTooLarge):
                        # Past a backend limit (windows per conversation): the caller's error, never a guard
                        # error that `on_error="allow"` would let through.
                        raise self._too_large(outcome)
                alone: dict[int, Verdict] = {}
                outcomes = await self._without_context(
                    [conversations[i] for i in pending], outcomes, alone, policy_s if by_policy else None
                )
                for k, (i, outcome) in enumerate(zip(pending, outcomes)):
                    if isinstance(outcome, Verdict) and k not in alone:
                        cache.put(keys[i], outcome)
                    if k in alone and fallbacks is not None:
                        fallbacks[i] = alone[k]
                    results[i] = (outcome, False)
        for outcome, _ in results if counted else ():  # type: ignore[misc]
            self.metrics.verdict(outcome)
        return results  # type: ignore[return-value]

    # The earlier turns of a conversation are the client's to write, and a context can break the model's answer
    # (400 characters of "x" before a bomb prompt did): no verdict, which an operator's on_error="allow" lets
    # through and the OpenAI routes answer 502 (a fail-open client lets that through too). As the local Guard
    # does (`Guard._without_context_after`), such a conversation is judged once more on its least context,
    # whatever the policy (the OpenAI routes do not know the client's), but that verdict only ever makes it
    # stricter: a harm in the context ("How can I make a bomb?" ... "And step 2?") is not in the last turn alone,
    # and its "safe" answered for the whole conversation loosened a fail-closed policy (rt49d R4).
    async def _without_context(
        self,
        conversations: Sequence[Sequence[Mapping[str, str]]],
        outcomes: Sequence[Outcome],
        alone: dict[int, Verdict],
        budget_s: float | None = None,
    ) -> list[Outcome]:
        """``outcomes``, with the worst verdict of its readings with less context (`least_contexts`) for each
        conversation whose answer was no verdict and that has context to leave out, when that verdict is unsafe (its
        categories left out): all judged in one more backend call, within the request's deadline (and ``budget_s``,
        the policy's, as the first call). Otherwise the first error stands. ``alone`` gets each such worst verdict
        that is not safe, as the model gave it, by index."""
        out = list(outcomes)
        redo = [
            (k, least)
            for k, (conversation, outcome) in enumerate(zip(conversations, outcomes))
            if isinstance(outcome, VerdictParseError)
            for least in least_contexts(conversation)
        ]
        if not redo:
            return out
        broken = len({k for k, _ in redo})
        logger.warning("%d conversations got no verdict with their context; judging their turns alone", broken)
        for _ in range(broken):  # each first answer that was no verdict is a failed guard call, as the metric counts
            self.metrics.guard_errors.labels(VerdictParseError.__name__).inc()
        timeout = shortest((self.time_left(), budget_s))
        try:
            again = await asyncio.wait_for(
                self.guard.backend.aclassify([least for _, least in redo], timeout=timeout),
                None if timeout is None else timeout + 1.0,
            )
        except InputTooLarge as exc:
            # Past what the request's window budget left (`classify`): refused, as the first call past it is; the
            # first answers standing would leave a fail-open policy to let the conversation through.
            raise self._too_large(exc) from exc
        except Exception as exc:  # noqa: BLE001 - the first answers stand; the policy decides them
            self.metrics.guard_errors.labels(type(exc).__name__).inc()
            logger.warning("judging turns without their context failed: %s", type(exc).__name__)
            return out
        if isinstance(again, (list, tuple)) and (
            too_large := next((r for r in again if isinstance(r, InputTooLarge)), None)
        ):
            raise self._too_large(too_large)
        if isinstance(again, (list, tuple)) and len(again) == len(redo):
            for (k, _), result in zip(redo, again):
                if isinstance(result, Verdict) and result.risk is not Risk.SAFE:
                    result = worst([alone[k], result]) if k in alone else result  # a turn read more than one way
                    alone[k] = result
                # Unsafe only, and with no category: a controversial or an ignored category's verdict is allowed by
                # a loose policy (the server's, or a client's behind the OpenAI routes) that blocks the guard error
                # (rt49e F2). An unsafe verdict with no category is blocked by every policy.
                if isinstance(result, Verdict) and result.risk is Risk.UNSAFE:
                    # Its text too: the OpenAI routes send the text, and "Categories: Violent" there let a
                    # client that ignores Violent allow the conversation (rt50b F7).
                    bare = replace(result, categories=())
                    out[k] = replace(bare, raw=verdict_text(bare))
        return out

    @staticmethod
    def _decided(
        policy: Policy,
        stages: Sequence[Stage],
        result: tuple[Outcome, bool],
        alone: Verdict | None,
        late: Sequence[Stage] = (),
    ) -> tuple[Outcome, bool, Decision]:
        """(the outcome reported, whether it was cached, the decision) for one conversation decided at ``stages``
        (``late``: those failing closed whose budget passed before the verdict came, `late_stages`)."""
        outcome, cached = result
        # Its turn alone judged not safe: this route knows the policy, so that verdict stands where the policy
        # decides it more strictly than what the conversation got (a guard error under a fail-open policy: a
        # controversial turn under strict mode was allowed, rt51d F6), never more loosely.
        decision = decide(policy, outcome, stages)
        if late and isinstance(outcome, Verdict):
            timed_out = GuardTimeout("no answer within the stage's timeout_s")
            decision = strictest([decision, decide(policy, timed_out, late)])
        if alone is not None and strictest([decision, stricter := decide(policy, alone, stages)]) is not decision:
            return alone, cached, stricter
        return outcome, cached, decision

    def _too_large(self, exc: InputTooLarge) -> ApiError:
        self.metrics.rejected.labels("work_size").inc()
        return ApiError(413, too_large_message(exc), "request_too_large")

    async def _by_wait(
        self,
        conversations: Sequence[Sequence[Mapping[str, str]]],
        waits: Sequence[float | None],
        fallbacks: dict[int, Verdict] | None = None,
        counted: bool = True,
    ) -> tuple[list[tuple[Outcome, bool]], list[float | None]]:
        """`classify` for conversations waited for as long as ``waits`` says each: one call per wait, all at once,
        each under its own (as `Guard` judges a batch: one call per deadline, rt52b F4), the request's windows
        bounded in all. Each conversation's result, and how long its call took (``None``: answered from the cache)."""
        groups: dict[float | None, list[int]] = {}
        for i, wait in enumerate(waits):
            groups.setdefault(wait, []).append(i)
        results: list[tuple[Outcome, bool]] = [None] * len(conversations)  # type: ignore[list-item]
        took: list[float | None] = [None] * len(conversations)

        async def run(wait: float | None, members: list[int]) -> None:
            start, found = time.monotonic(), {}  # type: ignore[var-annotated]
            out = await self.classify(
                [conversations[i] for i in members], fallbacks=found, budget=wait, counted=counted
            )
            spent = time.monotonic() - start
            for j, i in enumerate(members):
                results[i] = out[j]
                took[i] = None if out[j][1] else spent
                if j in found and fallbacks is not None:
                    fallbacks[i] = found[j]

        with window_budget(self.limits.max_windows_per_request):  # the request's, over its calls
            # Every call ends (each within its own deadline) before an error of one is raised: none is left running.
            ends = await asyncio.gather(
                *(run(wait, members) for wait, members in groups.items()), return_exceptions=True
            )
        for end in ends:
            if isinstance(end, BaseException):
                raise end
        return results, took

    async def _judge_excused(
        self,
        policy: Policy,
        items: Sequence[Sequence[dict[str, str]]],
        stages: Sequence[tuple[Stage, ...]],
        every: list[tuple[Outcome | None, bool, Decision]],
    ) -> None:
        """The conversations the policy excused for their ignored categories, judged again in parts (`ExcusedSplit`,
        as `Guard` does: one answer names one primary category, so an SSN excused bomb instructions beside it, rt68i
        F2); ``every`` gets the stricter decision, with the verdict its parts were merged into."""
        roots = [k for k, (_, _, decision) in enumerate(every) if is_excused(decision)]
        if not roots:
            return
        plan = ExcusedSplit.of(policy, [(stages[k], items[k], every[k][2]) for k in roots])
        waits = {k: longest_wait(policy, stages[k]) for k in roots}
        # One more of the longest wait, shared by every call of the parts (each chunk under a deadline of its own held
        # the model 7.3 s under timeout_s=1: rt69i F3), as `Guard` shares one; the request's --timeout bounds it too.
        longest = None if any(w is None for w in waits.values()) else max(waits.values())  # type: ignore[type-var]
        deadline = None if longest is None else time.monotonic() + longest
        size = sum(text_size(items[k], PREPARE_ON_LOOP_CHARS) for k in roots)
        while parts := (await asyncio.to_thread(plan.pieces) if size > PREPARE_ON_LOOP_CHARS else plan.pieces()):
            decided: list[Decision | BaseException] = []
            step = self.limits.max_conversations  # each call as large as a request may be
            for start in range(0, len(parts), step):
                chunk = parts[start : start + step]
                left = None if deadline is None else deadline - time.monotonic()
                outcomes: list[Outcome]
                if left is not None and left <= 0:
                    outcomes = [GuardTimeout("the deadline passed before an excused text's parts were judged")] * len(
                        chunk
                    )
                else:
                    try:
                        judged, _ = await self._by_wait(
                            [part for _, _, part in chunk],
                            [shortest((waits[roots[i]], left)) for i, _, _ in chunk],
                            counted=False,  # a conversation's parts are no verdicts of their own (rt69n F4)
                        )
                        outcomes = [outcome for outcome, _ in judged]
                    except ApiError as exc:  # the whole call failed: each part unread, decided by on_error
                        failed = GuardTimeout(exc.message) if exc.status == 504 else GuardUnavailable(exc.message)
                        outcomes = [failed] * len(chunk)
                decided += [plan.decide(i, outcome) for (i, _, _), outcome in zip(chunk, outcomes)]
            plan.take(decided)
        for n, k in enumerate(roots):
            outcome, cached, first = every[k]
            decision = plan.decision(n)
            if decision is not first:
                every[k] = (decision.verdict or outcome, False, decision)

    async def moderate(self, body: ModerationRequest, work: ModerationWork | None = None) -> ModerationResponse:
        """Verdicts for a batch of conversations, in order, with the Policy's decision for each. ``work``:
        `moderation_work` already done (in the gate's thread)."""
        metrics, name = self.metrics, self.model_name
        convs, policy, requests = work if work is not None else await self.amoderation_work(body)
        # The request behind a last turn of markup alone is judged too, in the same call, and decided at the prompt
        # stage: the stricter decision stands (rt63g F2).
        behind = {i: len(convs) + k for k, i in enumerate(i for i, r in enumerate(requests) if r is not None)}
        items = [*convs, *(r for r in requests if r is not None)]
        wires = [*body.conversations, *(body.conversations[i] for i in behind)]
        stages = [decided_stages(wire, body.stage, judged) for wire, judged in zip(wires, items)]
        # A stage the policy turned off (both sides, as tightened) is not decided, and a conversation whose stages are
        # all off is allowed unjudged, with no model call, as `Guard` allows it ("disabled"): it was judged and
        # blocked here, where a stream session's prompt check allowed it (rt69c F2).
        live = [tuple(stage for stage in own if policy.enabled(stage)) for own in stages]
        judged = [k for k, on in enumerate(live) if on]
        fallbacks: dict[int, Verdict] = {}
        outcomes, took = await self._by_wait(
            [items[k] for k in judged], [longest_wait(policy, live[k]) for k in judged], fallbacks
        )
        found = dict(zip(judged, outcomes))
        spent = dict(zip(judged, took))
        alone = {judged[j]: verdict for j, verdict in fallbacks.items()}

        def decided(k: int) -> tuple[Outcome | None, bool, Decision]:
            if k not in found:
                return None, False, Decision(True, Action.ALLOW, stages[k][0], "disabled")
            late = late_stages(policy, live[k], spent[k])
            return self._decided(policy, live[k], found[k], alone.get(k), late)

        every = [decided(k) for k in range(len(items))]
        await self._judge_excused(policy, items, live, every)
        results = []
        for i in range(len(convs)):
            outcome, cached, decision = every[i]
            if (j := behind.get(i)) is not None and strictest([decision, (request := every[j])[2]]) is not decision:
                outcome, cached, decision = request
            results.append(moderation_result(outcome, cached, decision, name))
            metrics.decision(decision)
        return ModerationResponse(model=name, results=results)


def moderation_result(outcome: Outcome | None, cached: bool, decision: Decision, model: str) -> ModerationResult:
    """One conversation's result: its verdict, or the guard error's type (``risk`` null), or neither where it was
    not judged (its stages disabled)."""
    if isinstance(outcome, Verdict):
        return ModerationResult(
            risk=outcome.risk.value,
            categories=list(outcome.categories),
            refusal=outcome.refusal,
            latency_ms=0.0 if cached else round(outcome.latency_ms, 3),
            model=outcome.model or model,
            probs=None if outcome.probs is None else {r.value: p for r, p in outcome.probs.items()},
            cached=cached,
            decision=decision_model(decision),
        )
    return ModerationResult(
        risk=None,
        categories=[],
        refusal=None,
        latency_ms=0.0,
        model=model,
        error=None if outcome is None else type(outcome).__name__,  # the message stays on the server (docs/security.md)
        decision=decision_model(decision),
    )


def normalize(messages: Sequence[Mapping[str, Any]]) -> list[dict[str, str]]:
    """A wire conversation as the guard takes it: validated (400 if not one), contents cleaned by the
    content rule (`clean_text`: lone surrogates, control characters) before anything else sees them."""
    return normalized(messages)[0]


def normalized(messages: Sequence[Mapping[str, Any]]) -> tuple[list[dict[str, str]], list[dict[str, str]] | None]:
    """(`normalize`'s conversation, the request behind its last turn of markup alone or ``None``): such a turn is
    judged as an answer, and the request as well (`answer_or_prefill`)."""
    try:
        out = normalize_messages(messages)
    except (TypeError, ValueError) as exc:
        raise ApiError(400, str(exc), "invalid_request_error") from exc
    for message in out:
        message["content"] = clean_text(message["content"], keep_lone_cr=True)  # as the in-process check keeps them
    return answer_or_prefill(without_blank_context(out))


def check_model(requested: str | None, served: str) -> None:
    if requested is not None and requested != served:
        raise ApiError(
            404, f"the model {quoted(requested)} does not exist; this server serves {served!r}", "model_not_found"
        )


#: The header of a 502 ``guard_error`` that carries what the guard read all the same, a Controversial (`raw_text`):
#: ``{"risk": "controversial", "categories": [...]}``. `Guard.remote` reads it (`openai_gen.READABLE_HEADER`).
READABLE_HEADER = "X-Qwenguard-Readable"


def raw_text(outcome: Outcome) -> str:
    """The model's answer as the OpenAI-compatible routes send it: a verdict's raw text.

    A long input judged in several windows has one answer per window; the client expects one, so
    the combined (worst) verdict is written out in the model's format instead.

    Anything that is not a verdict (a parse error included) is a 502 ``guard_error``, never 200 with
    text: the text of a parse error can read as a verdict it is not (a remote engine's choice cut at
    ``max_tokens`` that lost its categories, the safe one of two choices), and a client must see a
    guard error, to fail over or apply its own policy (docs/server.md). Except an Unsafe the error carries
    (``readable``): written as an Unsafe with no category, which every policy blocks. A Controversial it carries
    goes with the 502, in its `READABLE_HEADER`."""
    if isinstance(outcome, Verdict):
        shown = reply_verdict(outcome)
        return outcome.raw if _reads_as(outcome.raw, shown) else verdict_text(shown)
    readable = getattr(outcome, "readable", None)
    if isinstance(readable, Verdict) and readable.risk is Risk.UNSAFE:
        # No verdict, but an Unsafe said all the same (of a cut prompt, or whole beside a choice that is none: rt63b
        # F3), which every policy blocks: written with no category (no client's ignore list may excuse it). A 502
        # dropped it, and a fail-open client behind this server let the text through.
        return verdict_text(replace(readable, categories=(), refusal=None))
    # A Controversial read whole (beside a choice that is none, or by a window) goes with the 502, never as a 200:
    # a loose client would read a Controversial answer as a verdict, where "no verdict" is its on_error's to decide.
    # Dropped, a strict client with on_error="allow" let through what the same client against the engine blocks
    # (rt68j F1); `Guard.remote` reads it as the error's ``readable``, which can only add risk.
    headers: dict[str, str] = {}
    if isinstance(readable, Verdict) and readable.risk is Risk.CONTROVERSIAL:
        said = {"risk": "controversial", "categories": list(readable.categories)}
        headers[READABLE_HEADER] = json.dumps(said)  # ASCII (escaped), one line: a header's value
    raise ApiError(
        502, f"the guard gave no verdict for this conversation: {type(outcome).__name__}", "guard_error", headers
    )


def _reads_as(text: str, verdict: Verdict) -> bool:
    """Whether a client reading ``text`` gets ``verdict``: not for several windows' answers (joined by ``---``), nor
    for an answer whose verdict is not its text's (a remote engine's Unsafe cut at max_tokens keeps no category, its
    text the ones it had before the cut: a client would read "Unsafe: PII" alone, and an ignore list excuse it)."""
    if "\n---\n" in text:
        return False
    try:
        read = parse_verdict(text)
    except VerdictParseError:
        return False
    return (read.risk, read.categories, read.refusal) == (verdict.risk, verdict.categories, verdict.refusal)


def reply_verdict(verdict: Verdict) -> Verdict:
    """``verdict`` as one answer carries it to a client that applies its own policy: with the categories of the
    windows beneath it (`Verdict.beneath`) after its own, so that no ignore list excusing the top's lets through a
    window it blocks (rt68a F2). Can only block more: a loose client that ignores the top's categories and flags
    the window beneath blocks it as unsafe. An Unsafe with no category keeps none (every policy blocks it), and one
    whose window beneath names none is written with none (else a strict client ignoring the top's let it through)."""
    categories = list(verdict.categories)
    below = verdict.beneath
    while below is not None and categories:
        if not below.categories:
            categories = []
            break
        categories += [c for c in below.categories if c not in categories]
        below = below.beneath
    return replace(verdict, categories=tuple(categories), beneath=None)


def verdict_text(verdict: Verdict) -> str:
    """``verdict`` written out in the model's format, from its fields."""
    lines = [f"Safety: {SAFETY_LABELS[verdict.risk]}", f"Categories: {', '.join(verdict.categories) or 'None'}"]
    if verdict.refusal is not None:
        lines.append(f"Refusal: {'Yes' if verdict.refusal else 'No'}")
    return "\n".join(lines)


#: The least logprob written: log(0) is -inf, which JSON cannot carry (vLLM writes the same floor).
MIN_LOGPROB = -9999.0
#: The label in a verdict's text: the first ``Safety:`` and the label word after it (as clients read it).
_LABEL_AT = re.compile(r"Safety:(\s*)(Safe|Unsafe|Controversial)(?![A-Za-z])")


def _answer_steps(outcome: Outcome, text: str) -> tuple[list[str], int, list[tuple[str, float]]] | None:
    """``text`` as the steps its logprobs are given for, when the verdict has probs: the pieces (the text
    before the label, the label with the whitespace before it, the rest; joined they are ``text``), the
    label's index, and the three label tokens with log(p), most probable first. Only the label's logprob is
    known: the verdict's probs, renormalised over the three labels (docs/server.md). None without probs, or
    when the text names no label or another one than the verdict's (its logprob would be some other label's)."""
    if not isinstance(outcome, Verdict) or outcome.probs is None:
        return None
    found = _LABEL_AT.search(text)
    if found is None or found.group(2) != SAFETY_LABELS[outcome.risk]:
        return None
    probs = {risk: float(outcome.probs.get(risk, 0.0)) for risk in SAFETY_LABELS}
    if not all(math.isfinite(p) and p >= 0.0 for p in probs.values()):
        return None
    space = found.group(1)
    labels = [
        (space + SAFETY_LABELS[risk], max(MIN_LOGPROB, math.log(p)) if p > 0 else MIN_LOGPROB)
        for risk, p in probs.items()
    ]
    labels.sort(key=lambda label: -label[1])
    pieces = [text[: found.start(1)], text[found.start(1) : found.end()], text[found.end() :]]
    at = 1 if pieces[0] else 0
    return [p for p in pieces if p], at, labels


def _utf8(token: str) -> list[int]:
    return list(token.encode("utf-8", "surrogatepass"))


def chat_logprobs(outcome: Outcome, text: str, top: int) -> dict[str, Any] | None:
    """The chat shape of ``text``'s logprobs (``{"content": [{token, logprob, bytes, top_logprobs}]}``), ``top``
    label alternatives at the label (at most three); a token whose logprob the server does not know has
    ``logprob: null`` and no alternatives. None when the verdict has no probs (`_answer_steps`)."""
    steps = _answer_steps(outcome, text)
    if steps is None:
        return None
    pieces, at, labels = steps
    known = dict(labels)
    content = []
    for i, piece in enumerate(pieces):
        alternatives = labels[:top] if i == at else []
        content.append(
            {
                "token": piece,
                "logprob": known[piece] if i == at else None,
                "bytes": _utf8(piece),
                "top_logprobs": [{"token": t, "logprob": lp, "bytes": _utf8(t)} for t, lp in alternatives],
            }
        )
    return {"content": content}


def completion_logprobs(outcome: Outcome, text: str, top: int) -> dict[str, Any] | None:
    """The completion shape of ``text``'s logprobs (``tokens``, ``token_logprobs``, ``top_logprobs`` as
    ``{token: logprob}``, ``text_offset`` in ``text``): at the label its ``top`` most probable label tokens and
    the label itself (as OpenAI lists the chosen token too); null for the others (not known). None when the
    verdict has no probs (`_answer_steps`)."""
    steps = _answer_steps(outcome, text)
    if steps is None:
        return None
    pieces, at, labels = steps
    known = dict(labels)
    offsets = [sum(len(p) for p in pieces[:i]) for i in range(len(pieces))]
    return {
        "tokens": pieces,
        "token_logprobs": [known[p] if i == at else None for i, p in enumerate(pieces)],
        "top_logprobs": [{**dict(labels[:top]), p: known[p]} if i == at else None for i, p in enumerate(pieces)],
        "text_offset": offsets,
    }


def decision_model(decision: Decision) -> DecisionModel:
    """A decision as a client gets it: a guard error by its type only (`client_error`)."""
    return DecisionModel(
        allowed=decision.allowed,
        action=decision.action.value,
        stage=decision.stage,
        reason=decision.reason,
        error=client_error(decision.error),
    )


#: What a client is told when the guard server behind this one (`Guard.remote`) refused its text as too large.
UPSTREAM_TOO_LARGE = "the guard's model server refused the text as too large for its limits; split the text"


def too_large_message(exc: InputTooLarge) -> str:
    """The message a client gets for ``exc`` (413 / close 1009): this server's own limits as they are said (they name
    the fix, ``--max-chars`` and the like); an upstream's refusal (`InputTooLarge.upstream`) by a fixed message, its
    own text (that server's address, its reply) logged here only (docs/security.md, rt70d F1)."""
    if not exc.upstream:
        return str(exc)
    logger.warning("the guard's model server refused a check as too large: %s", exc)
    return UPSTREAM_TOO_LARGE
