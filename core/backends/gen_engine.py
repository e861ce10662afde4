"""The Gen decode engine: greedy Qwen3Guard-Gen answers that pay only for their own tokens.

``model.generate`` over a full guard prompt pays, for every check, for the ~200-token instruction block
that precedes the conversation (the same for every check of a mode) and for one decode step per answer
token, although most of the answer is fixed by the format. This engine computes the same greedy answer
with three savings, none of which changes it:

1. **Instruction-prefix cache.** The token prefix every prompt of a mode shares (everything before the
   conversation text) is run once per model; its keys and values are copied into each row's cache, so a
   check prefills only its conversation text and the closing instructions. A prompt is served from a
   prefix only when its ids start with that prefix's ids exactly (a tokenizer that merges across the
   boundary, or a template that differs, simply gets no cache: checked per prompt).
2. **Format tokens fed, not generated** (`gen_format.VerdictFormat`). The prompt goes in with the whole
   safe answer as a guess (``Safety: Safe`` / ``Categories: None``, and ``Refusal: No`` in response
   moderation, whose answers have that line): a safe check is one forward. Beside the guess, in the same
   forward, run the other labels' ways on (`` Unsafe`` / `` Controversial`` + ``\nCategories:``, each
   placed right after ``Safety:`` by its positions and attention mask, seeing nothing of the guess): a
   check whose label is not the guessed one takes that branch, which is moved into place in the cache,
   and reads its first category there, so an unsafe prompt check is two forwards. Later, the rest of a
   label or category name and ``Refusal:`` go in with the token before them in one forward. The model's
   own choice is read at every fed position:
   where it differs, its choice is taken, the unconfirmed tokens are dropped from the cache, and greedy
   decoding goes on from there, so the answer is always exactly the greedy answer. An answer whose first
   line can no longer parse (`gen_format.hopeless`) stops at once: it fails closed either way.
3. **Sessions** (`SessionState`): a growing prompt (a streamed answer judged chunk by chunk) keeps its
   cache between checks; each check rolls the cache back to the longest common prefix of its ids and the
   previous check's, and runs only the rest (the new text, the closing instructions, the verdict). It
   also feeds the previous check's answer as its guess of this one (verified like the format tokens):
   while a stream's verdict does not change, a check is one forward. The caches all sessions keep are
   bounded together (``max_session_tokens``): a step that would hold more runs as a plain row and
   keeps nothing, so past the budget a stream's checks cost what full checks cost, with the same answers.

All rows of a batch (plain prompts and session steps alike) run together: each row has its own cache
(`stream_batching.SessionCache`) and the rows' new tokens are packed into one forward of the Qwen3
backbone (`stream_batching.packed_hidden`, shared with the Stream model), so rows of any lengths, any
number of fed tokens and any cached length share every forward without padding. The vocabulary
projection runs only at the positions whose prediction is read.

The engine runs Qwen3 decoders with full attention whose generation config adds no logits processing to
greedy decoding (`unsupported` says why another model is not run; `TransformersGen` then uses
``generate``). Numerics: a packed forward sums in another order than transformers' padded batch, so
logits agree to float rounding (tests hold label probabilities within 1e-3 of the ``generate`` path).
Runs on one thread at a time: the micro-batcher's (on a CPU, the process's torch thread). torch is
imported on first use.
"""

from __future__ import annotations

import math
import threading
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..formats.prompts import SAFETY_LABELS
from ..verdict import Risk
from .gen_format import VerdictFormat, hopeless
from .stream_batching import SessionCache, check_packable, packed_hidden
from .torch_runtime import require_torch

__all__ = ["GenEngine", "SessionState", "SessionStep", "Answer", "instruction_prefixes", "engine_for", "PREFILL_CHUNK"]


class Answer(tuple[str, "dict[Risk, float] | None"]):
    """One answer: ``(text, probs)``, its text (special tokens skipped) and the label probabilities when readable;
    and ``cut``: the token budget stopped it (``max_new_tokens`` tokens, no end token), so the text may be a part
    of the model's verdict (`formats.prompts.parse_cut_verdict` reads it). A plain ``(text, probs)`` ended whole."""

    cut: bool

    def __new__(cls, text: str, probs: dict[Risk, float] | None, cut: bool = False) -> Answer:
        answer = super().__new__(cls, (text, probs))
        answer.cut = cut
        return answer

    def __repr__(self) -> str:
        return f"Answer({self[0]!r}, {self[1]!r}, cut={self.cut})"


#: Hook with the shape of a transformers LogitsProcessor: (answer tokens before each logits row, logits) -> logits.
LogitsHook = Callable[[list[list[int]], Any], Any]

#: Longest slice of a prompt one row feeds into one forward (attention memory grows with it).
PREFILL_CHUNK = 512
# Conversations whose shared token prefix is the instruction block of each mode. Their contents start
# differently (letters, digits, space, newline, punctuation, CJK) so the prefix ends before any content.
_PROBE_CONTENTS = ("Hello there", "42 is a number", " leading space", "\nnew line", "?! punctuation", "日本語")
# Generation-config fields that change greedy decoding (the engine applies none: such models use generate).
_GREEDY_CHANGERS = {
    "repetition_penalty": 1.0,
    "no_repeat_ngram_size": 0,
    "bad_words_ids": None,
    "suppress_tokens": None,
    "begin_suppress_tokens": None,
    "sequence_bias": None,
    "forced_bos_token_id": None,
    "forced_eos_token_id": None,
    "min_length": 0,
    "min_new_tokens": None,
    "encoder_repetition_penalty": 1.0,
    "exponential_decay_length_penalty": None,
}


def instruction_prefixes(encode: Callable[[list[dict[str, str]]], list[int]]) -> dict[str, list[int]]:
    """The token prefix shared by every prompt of each moderation mode (``"prompt"``, ``"response"``)."""
    prefixes = {}
    for mode, turns in (
        ("prompt", ([("user", c)] for c in _PROBE_CONTENTS)),
        ("response", ([("user", c), ("assistant", c)] for c in _PROBE_CONTENTS)),
    ):
        encoded = [encode([{"role": r, "content": c} for r, c in conv]) for conv in turns]
        k = 0
        while all(len(e) > k for e in encoded) and len({e[k] for e in encoded}) == 1:
            k += 1
        if k:
            prefixes[mode] = encoded[0][:k]
    return prefixes


class SessionState:
    """The cache of one growing prompt between checks: the ids whose keys and values it holds.

    Touched only on the engine's thread. A caller that gives up on a step replaces its state with a
    fresh one instead of waiting (`reset`): a late step then fills a state nobody reads.

    ``siblings``: states of checks of one text (a stream's window sessions), listed together. A step
    whose own cache shares less with its prompt than a sibling's does starts from a copy of that
    sibling's cache: a long request is read once per stream, not once per session."""

    __slots__ = ("cache", "ids", "answer", "siblings", "__weakref__")

    def __init__(self, siblings: list[SessionState] | None = None) -> None:
        self.cache: SessionCache | None = None
        self.ids: list[int] = []
        # The last check's answer: the next check feeds it as its guess (consecutive verdicts of a stream
        # are nearly always the same; verified like every fed token, so a changed verdict costs nothing extra).
        self.answer: list[int] = []
        self.siblings = siblings
        if siblings is not None:
            siblings.append(self)


@dataclass(eq=False)
class SessionStep:
    """A check of ``ids`` (a complete guard prompt) that reuses and then keeps ``state``'s cache."""

    state: SessionState
    ids: list[int]
    _cost: int = field(default=0, init=False, repr=False)

    def __len__(self) -> int:
        """The batcher's cost: the tokens this step is likely to run (worked out once: a session's cache does
        not change while its step waits)."""
        if not self._cost:
            self._cost = max(1, len(self.ids) - self._kept())
        return self._cost

    def _kept(self) -> int:
        """Positions a cache holds already: the longest common prefix with its own state's ids or a sibling's,
        the better of which the engine starts from (`GenEngine._session_row`). Not the growth of the prompt:
        a stream's next window is as long as the last one but slides, so it runs its text again."""
        own = _common_prefix(self.state.ids, self.ids) if self.state.cache is not None else 0
        return _best_sibling(self.state, self.ids, own)[1]


@dataclass(eq=False)
class _Row:
    """One answer being decoded: its cache, what the next forward feeds, what it has written."""

    cache: SessionCache
    ids: list[int]  # fed by the next forward: given tokens, then `forced` format tokens to confirm
    forced: int
    answer: list[int] = field(default_factory=list)
    probs: dict[Risk, float] | None = None
    done: bool = False
    session: SessionStep | None = None
    refusal: bool = True  # the answer has a refusal line (response moderation): guess it after the categories
    # The other labels' ways on, run beside the guess in the same forward (`VerdictFormat.label_branches`):
    # they continue the fed tokens after the first `fork` format tokens (``Safety:``).
    branches: list[list[int]] = field(default_factory=list)
    fork: int = 0


class GenEngine:
    """Greedy Qwen3Guard-Gen decoding over prompt ids, for `TransformersGen` (see the module docstring).

    ``logits_hook`` (optional, like a transformers LogitsProcessor) adjusts the logits before each
    choice; benchmarks use it to script a random model's answer in every arm alike.
    """

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        *,
        prefixes: dict[str, list[int]],
        eos_ids: Sequence[int],
        pad_id: int,
        max_new_tokens: int,
        label_tokens: tuple[list[int], dict[Risk, int]] | None,
        force_format: bool = True,
        max_session_tokens: int | None = None,
        label_branches: bool | None = None,
    ) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.eos_ids = frozenset(eos_ids)
        self.pad_id = pad_id
        self.max_new_tokens = max_new_tokens
        self.label_tokens = label_tokens
        self.format = VerdictFormat.for_tokenizer(tokenizer) if force_format else None
        # Fed with every prompt that has no better guess, per mode (whether the answer has a refusal line):
        # a few positions more in the prompt's forward, against one or two small forwards saved when the
        # check is safe (a small forward reads every weight; on a CPU one costs about as much as 15-20 prompt
        # tokens at 0.6B, on a GPU as much as a short prompt).
        self._opening_guess = {r: self.format.safe_answer(refusal=r) if self.format else [] for r in (False, True)}
        #: Run the other labels' branches beside a guessed answer: about ten positions more in its forward,
        #: and a check whose label is not the guessed one saves a whole forward. On by default everywhere: on
        #: a GPU extra positions are nearly free, and on a CPU a narrow forward multiplies a multiple of 8
        #: rows anyway (`stream_batching._padded_rows`), so at 0.6B a safe check measured the same with them
        #: (1,274-1,293 ms against 1,293 without) and an unsafe one 4-6% faster.
        self.label_branches = True if label_branches is None else label_branches
        self.layers = int(model.config.num_hidden_layers)
        # Longest first: a prompt takes the longest prefix it starts with. With each: its cache (built on
        # first use) and whether its mode's answer has a refusal line (response moderation).
        self._prefixes: list[tuple[list[int], SessionCache | None, bool]] = [
            (list(p), None, mode == "response")
            for mode, p in sorted(prefixes.items(), key=lambda item: len(item[1]), reverse=True)
        ]
        self.logits_hook: LogitsHook | None = None
        #: KV positions all session caches may hold together (``None``: unbounded). Counted from the
        #: states that hold a cache now: a closed session's state is dropped, and its cache with it.
        self.max_session_tokens = max_session_tokens
        self._holding: weakref.WeakSet[SessionState] = weakref.WeakSet()
        self._holding_lock = threading.Lock()  # `session_tokens` may be read on any thread
        # Observable, for tests and figures: decoding forwards, tokens they ran, prompts served from a prefix.
        self.forwards_run = 0
        self.tokens_run = 0
        self.prefix_hits = 0
        self.sibling_hits = 0  # session steps started from a sibling session's cache
        self.sessions_declined = 0  # session steps run as plain rows: the session budget was spent

    @staticmethod
    def unsupported(model: Any) -> str | None:
        """Why the engine cannot run ``model`` exactly (``None`` when it can)."""
        backbone = getattr(model, "model", None)
        if backbone is None or not callable(getattr(model, "lm_head", None)):
            return "not a causal LM with a backbone and an lm_head"
        layers = getattr(backbone, "layers", None)
        if not layers or not all(hasattr(backbone, a) for a in ("embed_tokens", "rotary_emb", "norm")):
            return "the backbone is not laid out like a Qwen3 decoder"
        if not all(hasattr(layer.self_attn, "q_norm") and hasattr(layer.self_attn, "k_norm") for layer in layers):
            return "the attention is not Qwen3's (no q/k norms)"
        try:
            check_packable(model)
        except ValueError as exc:
            return str(exc)
        config = getattr(model, "generation_config", None)
        for name, neutral in _GREEDY_CHANGERS.items():
            value = getattr(config, name, neutral)
            if value is not None and value != neutral and value != []:
                return f"its generation config sets {name}={value!r}, which changes greedy decoding"
        return None

    # -- the batch --------------------------------------------------------------------------------------
    def run(self, items: Sequence[list[int] | SessionStep]) -> list[Answer]:
        """Answers for ``items`` (prompt ids, or session steps), in order. Engine thread only."""
        torch = require_torch()
        rows: list[_Row] = []
        with torch.inference_mode():
            try:
                stepping: set[int] = set()
                reserved: dict[int, int] = {}  # what each state approved in this batch may grow to
                for item in items:
                    if (
                        isinstance(item, SessionStep)
                        and id(item.state) not in stepping
                        and self._may_hold(item, reserved)
                    ):
                        stepping.add(id(item.state))
                        rows.append(self._session_row(item))
                    else:  # a second step of one session in a batch (never from one caller) runs as a plain row
                        rows.append(self._row(item.ids if isinstance(item, SessionStep) else item))
                self._decode(torch, rows)
            except BaseException:
                for item in items:  # a cache half-written by a failed forward is never reused
                    if isinstance(item, SessionStep):
                        item.state.cache, item.state.ids, item.state.answer = None, [], []
                raise
        return [self._answer(row) for row in rows]

    def _may_hold(self, step: SessionStep, reserved: dict[int, int]) -> bool:
        """Whether ``step``'s state may keep a cache through this step within ``max_session_tokens``, counting
        what the states approved earlier in the batch may grow to (``reserved``, updated). When not, the
        state lets its cache go (the step runs as a plain row and the next starts afresh)."""
        state, budget = step.state, self.max_session_tokens
        if budget is None:  # unbounded, but still counted (`session_tokens`)
            with self._holding_lock:
                self._holding.add(state)
            return True
        # At most what the state holds after the step: its buffers, or a new one of at most twice the
        # prompt and answer (a fork from a sibling or the prefix, or `SessionCache.append` doubling).
        have = state.cache.capacity if state.cache is not None else 0
        need = max(have, 2 * (len(step.ids) + self.max_new_tokens), SessionCache.initial_capacity)
        if self._held_tokens(besides=state, reserved=reserved) + need <= budget:
            reserved[id(state)] = need
            with self._holding_lock:
                self._holding.add(state)
            return True
        state.cache, state.ids = None, []
        with self._holding_lock:
            self._holding.discard(state)
        self.sessions_declined += 1
        return False

    @property
    def session_tokens(self) -> int:
        """KV positions the session caches hold now (what ``max_session_tokens`` bounds)."""
        return self._held_tokens()

    def _held_tokens(self, besides: SessionState | None = None, reserved: dict[int, int] | None = None) -> int:
        with self._holding_lock:
            states = list(self._holding)
        grows = reserved or {}
        return sum(
            max(s.cache.capacity if s.cache is not None else 0, grows.get(id(s), 0)) for s in states if s is not besides
        )

    def _answer(self, row: _Row) -> Answer:
        tokens = [t for t in row.answer if t not in self.eos_ids and t != self.pad_id]
        # Stopped by the budget, not by the model (a hopeless answer stops early and fails to parse anyway): the
        # categories after the cut are lost ("Politically Sensitive Topics, Violent" read as its first: rt65b F1).
        cut = len(row.answer) >= self.max_new_tokens and row.answer[-1] not in self.eos_ids
        return Answer(self.tokenizer.decode(tokens, skip_special_tokens=True), row.probs, cut)

    def _start(self, row: _Row, guess: Sequence[int] = (), *, branch: bool = True) -> _Row:
        lead = self._forced([], row.refusal)
        if guess and list(guess[: len(lead)]) == lead:  # a guess of the answer (the last one, or the safe one)
            lead = list(guess[: max(0, self.max_new_tokens - 1)])
            if self.format is not None and self.label_branches and branch:
                # Never past the token budget: an answer taking a branch holds `fork` + its tokens + one more.
                fork = len(self.format.lead)
                room = max(0, self.max_new_tokens - 1 - fork)
                branches = self.format.label_branches(lead, refusal=row.refusal)
                row.branches, row.fork = [b[:room] for b in branches if b[:room]], fork
        row.ids = row.ids + lead
        row.forced = len(lead)
        return row

    def _row(self, ids: list[int]) -> _Row:
        prefix, base, refusal = self._prefix_for(ids)
        if base is None:
            cache = SessionCache(self.layers)
        else:
            cache = _fork(base, len(ids) + 3 * self.max_new_tokens)  # the answer, and the label branches beside it
            self.prefix_hits += 1
        row = _Row(cache, list(ids[len(prefix) :]), 0, refusal=refusal)
        return self._start(row, self._opening_guess[refusal])

    def _session_row(self, step: SessionStep) -> _Row:
        state, ids = step.state, step.ids
        keep = _common_prefix(state.ids, ids) if state.cache is not None else 0
        keep = min(keep, len(ids) - 1)  # at least one token runs: its logits start the answer
        sibling, shared = _best_sibling(state, ids, keep)
        if sibling is not None:
            assert sibling.cache is not None
            state.cache = _fork(sibling.cache, 2 * len(ids) + self.max_new_tokens, length=shared)
            keep = shared
            self.sibling_hits += 1
        prefix, base, refusal = self._prefix_for(ids)
        if state.cache is None or keep < len(prefix):
            if base is not None:
                state.cache = _fork(base, 2 * len(ids) + self.max_new_tokens)
                keep = len(prefix)
                self.prefix_hits += 1
            elif state.cache is None:
                state.cache = SessionCache(self.layers)
        assert state.cache is not None
        state.cache.length = keep
        state.ids = list(ids[:keep])  # what the cache holds while the step runs
        last = [t for t in state.answer if t not in self.eos_ids and t != self.pad_id]
        row = _Row(state.cache, list(ids[keep:]), 0, session=step, refusal=refusal)
        # A stream's verdict rarely changes between checks: its last answer is guessed without branches.
        return self._start(row, last, branch=False) if last else self._start(row, self._opening_guess[refusal])

    def _prefix_for(self, ids: list[int]) -> tuple[list[int], SessionCache | None, bool]:
        """The instruction prefix ``ids`` start with, its cache, and whether its answer has a refusal line
        (unknown without a prefix: guessed as if it had one)."""
        for index, (prefix, cache, refusal) in enumerate(self._prefixes):
            n = len(prefix)
            if len(ids) > n and ids[:n] == prefix:
                if cache is None:
                    cache = SessionCache(self.layers)
                    for lo in range(0, n, PREFILL_CHUNK):
                        packed_hidden(self.model.model, [_Feed(cache, prefix[lo : lo + PREFILL_CHUNK])])
                    self._prefixes[index] = (prefix, cache, refusal)
                return prefix, cache, refusal
        return [], None, True

    def _forced(self, answer: list[int], refusal: bool) -> list[int]:
        if self.format is None:
            return []
        forced = self.format.forced_next(answer, tuple(self.eos_ids), refusal=refusal)
        # Never past the token budget: the answer holds at most max_new_tokens tokens.
        return forced[: max(0, self.max_new_tokens - len(answer) - 1)]

    # -- decoding ---------------------------------------------------------------------------------------
    def _decode(self, torch: Any, rows: list[_Row]) -> None:
        active = [r for r in rows if not r.done]
        device = self.model.model.embed_tokens.weight.device
        while active:
            # A long prompt goes in slices of PREFILL_CHUNK tokens (bounded attention memory); its slices
            # share forwards with other rows' steps, and only its last slice is read.
            sizes = [_slice(r) for r in active]
            feeds = [_feed(torch, r, r.ids[:n], device) for r, n in zip(active, sizes, strict=True)]
            starts = [r.cache.length for r in active]
            hidden = packed_hidden(self.model.model, feeds)
            self.forwards_run += 1
            self.tokens_run += sum(len(f.ids) for f in feeds)
            # Only the positions whose prediction is read: each row's fed format tokens and its last one.
            picks: list[int] = []
            contexts: list[list[int]] = []
            reading: list[tuple[_Row, int, int, int]] = []  # row, its offset in `hidden`, cache length before, fed
            offset = 0
            for r, feed, start, fed in zip(active, feeds, starts, sizes, strict=True):
                end = offset + fed
                row_offset, offset = offset, offset + len(feed.ids)
                if fed < len(r.ids):
                    r.ids = r.ids[fed:]
                    continue
                reading.append((r, row_offset, start, fed))
                picks.extend(range(end - r.forced - 1, end))
                forced = r.ids[len(r.ids) - r.forced :]
                contexts.extend(r.answer + forced[:j] for j in range(r.forced + 1))
            if picks:
                logits = self._logits(torch, hidden[picks]).float()
                if self.logits_hook is not None:
                    logits = self.logits_hook(contexts, logits)
                choices = logits.argmax(-1).tolist()
                taken = self._read_branches(torch, hidden, reading, choices)
                at = 0
                for r, _, start, fed in reading:
                    n = r.forced + 1
                    self._advance(
                        r, choices[at : at + n], logits, at, contexts[at : at + n], start + fed, taken.get(id(r))
                    )
                    at += n
            active = [r for r in active if not r.done]
        for r in rows:
            if r.session is not None:  # the cache keeps the prompt only: the answer is rolled back
                r.session.state.cache.length = len(r.session.ids)  # type: ignore[union-attr]
                r.session.state.ids = list(r.session.ids)
                r.session.state.answer = list(r.answer)

    def _logits(self, torch: Any, hidden: Any) -> Any:
        """The vocabulary projection of a few hidden rows. A bias-free linear head is computed as
        ``weight @ hidden.T``: the same numbers, and on CPU BLAS reads the large weight once for all rows
        that way (as ``hidden @ weight.T`` it costs about one full read per row)."""
        head = self.model.lm_head
        weight = getattr(head, "weight", None)
        if isinstance(head, torch.nn.Linear) and head.bias is None and weight is not None:
            return torch.mm(weight, hidden.t()).t()
        return head(hidden)

    def _read_branches(
        self, torch: Any, hidden: Any, reading: list[tuple[_Row, int, int, int]], choices: list[int]
    ) -> dict[int, tuple[int, list[int]]]:
        """For each row whose model chose another label than its guess's, where a branch starts with it:
        that branch's index and the model's choices after each of its tokens (one projection for all)."""
        chosen: list[tuple[_Row, int]] = []  # rows that take a branch, and which
        picks: list[int] = []
        contexts: list[list[int]] = []
        at = 0
        for r, row_offset, _, fed in reading:
            row_choices, at = choices[at : at + r.forced + 1], at + r.forced + 1
            if not r.branches:
                continue
            forced = r.ids[len(r.ids) - r.forced :]
            label = row_choices[r.fork]
            if row_choices[: r.fork] != forced[: r.fork] or label == forced[r.fork]:
                continue  # the guess holds at the label, or the answer left the format before it
            index = next((i for i, b in enumerate(r.branches) if b[0] == label), None)
            if index is None:
                continue
            first = row_offset + fed + sum(len(b) for b in r.branches[:index])
            branch = r.branches[index]
            picks.extend(range(first, first + len(branch)))
            contexts.extend(r.answer + forced[: r.fork] + branch[: j + 1] for j in range(len(branch)))
            chosen.append((r, index))
        taken: dict[int, tuple[int, list[int]]] = {}
        if picks:
            logits = self._logits(torch, hidden[picks]).float()
            if self.logits_hook is not None:
                logits = self.logits_hook(contexts, logits)
            branch_choices = logits.argmax(-1).tolist()
            at = 0
            for r, index in chosen:
                n = len(r.branches[index])
                taken[id(r)] = (index, branch_choices[at : at + n])
                at += n
        return taken

    def _advance(
        self,
        row: _Row,
        choices: list[int],
        logits: Any,
        at: int,
        contexts: list[list[int]],
        fed_end: int,
        taken: tuple[int, list[int]] | None,
    ) -> None:
        """Confirm the fed format tokens against the model's choices (or, where the model took another
        label, the branch that starts with it), take its next token, plan the next feed. ``fed_end``: the
        cache position after the row's fed tokens (its branches, if any, were appended after them)."""
        forced = row.ids[len(row.ids) - row.forced :]
        confirmed = 0
        while confirmed < len(forced) and choices[confirmed] == forced[confirmed]:
            confirmed += 1
        if self.label_tokens is not None and row.probs is None:
            prefix, firsts = self.label_tokens
            for j in range(confirmed + 1):
                if contexts[j] == prefix:
                    row.probs = _label_probs(logits[at + j], firsts)
        if taken is not None:
            # The model wrote another label: keep the branch that starts with it, as far as the model
            # follows it, in the cache right after ``Safety:`` (where its positions say it is).
            index, branch_choices = taken
            branch = row.branches[index]
            kept = 1
            while kept < len(branch) and branch_choices[kept - 1] == branch[kept]:
                kept += 1
            fork_end = fed_end - len(forced) + row.fork
            row.cache.move(fed_end + sum(len(b) for b in row.branches[:index]), fork_end, kept)
            row.cache.length = fork_end + kept
            row.answer += forced[: row.fork] + branch[:kept]
            token = branch_choices[kept - 1]
        else:
            row.answer += forced[:confirmed]
            row.cache.length = fed_end - (len(forced) - confirmed)  # the model wrote something else: drop the rest
            token = choices[confirmed]
        row.branches = []
        row.answer.append(token)
        if token in self.eos_ids or len(row.answer) >= self.max_new_tokens or self._hopeless(row.answer):
            row.done = True
            return
        nxt = self._forced(row.answer, row.refusal)
        row.ids = [token, *nxt]
        row.forced = len(nxt)

    def _hopeless(self, answer: list[int]) -> bool:
        return hopeless(self.tokenizer.decode([t for t in answer if t not in self.eos_ids], skip_special_tokens=True))


@dataclass(eq=False)
class _Feed:
    """One row's share of a packed forward (what `packed_hidden` reads)."""

    cache: SessionCache
    ids: list[int]
    offsets: list[int] | None = None  # positions after the cache (default: in order)
    visible: Any = None  # which new tokens each new token sees (default: causal)


def _feed(torch: Any, row: _Row, ids: list[int], device: Any) -> _Feed:
    """``row``'s share of the next forward: ``ids`` and, when they complete its prompt, its label branches,
    each placed after ``Safety:`` (positions and attention) as if it were the only continuation."""
    if not row.branches or len(ids) < len(row.ids):
        return _Feed(row.cache, ids)
    fork_end = len(ids) - row.forced + row.fork
    size = len(ids) + sum(len(b) for b in row.branches)
    visible = torch.ones(size, size, dtype=torch.bool).tril()
    offsets = list(range(len(ids)))
    start = len(ids)
    for branch in row.branches:
        end = start + len(branch)
        visible[start:end, fork_end:start] = False  # a branch sees the prompt and ``Safety:``, then only itself
        offsets += range(fork_end, fork_end + len(branch))
        start = end
    return _Feed(row.cache, ids + [t for b in row.branches for t in b], offsets, visible.to(device))


def _slice(row: _Row) -> int:
    """How many of ``row``'s pending tokens go into the next forward (all, or a prompt slice that leaves
    the format tokens and at least one given token for a later forward)."""
    if len(row.ids) <= PREFILL_CHUNK:
        return len(row.ids)
    return min(PREFILL_CHUNK, len(row.ids) - row.forced - 1)


def _best_sibling(state: SessionState, ids: list[int], keep: int) -> tuple[SessionState | None, int]:
    """The sibling whose cache shares more of ``ids`` than ``keep`` positions (and how many), if any.

    Siblings' ids are what their caches hold right now (a sibling in the same batch already holds only
    its kept part, which its step does not overwrite), so the positions copied are valid."""
    best: SessionState | None = None
    most = keep
    for other in list(state.siblings or ()):  # a copy: callers add and drop siblings on their threads
        if other is state or other.cache is None:
            continue
        shared = min(_common_prefix(other.ids, ids), len(ids) - 1, other.cache.length)
        if shared > most:
            best, most = other, shared
    return best, most


def _fork(base: SessionCache, capacity: int, length: int | None = None) -> SessionCache:
    """A new cache that starts with ``base``'s first ``length`` positions (default: all), copied once,
    with room for ``capacity``."""
    cache = SessionCache(len(base.keys))
    n = base.length if length is None else min(length, base.length)
    for layer, (k, v) in enumerate(zip(base.keys, base.values, strict=True)):
        size = max(capacity, n)
        cache.keys[layer] = k.new_empty(k.shape[0], size, k.shape[2])
        cache.values[layer] = v.new_empty(v.shape[0], size, v.shape[2])
        cache.keys[layer][:, :n] = k[:, :n]
        cache.values[layer][:, :n] = v[:, :n]
    cache.length = n
    return cache


def _common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


def _label_probs(logits: Any, firsts: dict[Risk, int]) -> dict[Risk, float] | None:
    picked = [float(logits[firsts[r]]) for r in SAFETY_LABELS]
    if not all(math.isfinite(x) for x in picked):
        return None  # NaN/inf logits (an fp16 overflow): no probabilities rather than NaN ones
    top = max(picked)
    exps = [math.exp(x - top) for x in picked]
    total = sum(exps)
    return {r: e / total for r, e in zip(SAFETY_LABELS, exps, strict=True)}


def engine_for(backend: Any, engine: bool | None) -> GenEngine | None:
    """The engine for a `TransformersGen` backend: ``None`` (default) when its model supports it, ``True``
    required (``ValueError`` if not), ``False`` never (transformers' ``generate`` decodes)."""
    if engine is False:
        return None
    why = GenEngine.unsupported(backend.model)
    if why is not None:
        if engine:
            raise ValueError(f"engine=True, but the Gen decode engine cannot run this model: {why}")
        return None
    return GenEngine(
        backend.model,
        backend.tokenizer,
        prefixes=instruction_prefixes(backend.encoder.encode),
        eos_ids=backend.eos_ids,
        pad_id=backend.pad_id,
        max_new_tokens=backend.max_new_tokens,
        label_tokens=backend._label_tokens,
        max_session_tokens=backend.max_session_tokens,
        label_branches=getattr(backend, "label_branches", None),
    )
