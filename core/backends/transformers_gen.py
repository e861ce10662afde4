"""`TransformersGen`: Qwen3Guard-Gen run locally with transformers + torch.

Any Qwen3Guard-Gen checkpoint (hub id or local path) or the embedded demo guard loads through the
same code: `AutoTokenizer` + `AutoModelForCausalLM`, the checkpoint's chat template when it renders
the guard task (else `render_prompt`, with a warning: `formats.encoding`), greedy decoding with a
small token budget, and left-padded batches.

Where the work happens, and its bounds:

- **Planning** (tokenizing, windowing: `formats.windows.WindowPlanner`) runs in the caller's thread
  for `classify` and in a worker thread for `aclassify`, never on the event loop. It is linear in
  the input, stops at the deadline, and refuses a conversation that needs more than ``max_windows``
  windows (`InputTooLarge`, before any model work); a stream's check (`formats.windows.StreamCheck`) plans
  only the piece windows its stream has not had judged, within the stream's bound.
- **The model** runs on the micro-batcher's one thread (`batching.MicroBatcher`), in steps of at
  most ``max_batch`` rows and ``max_batch_tokens`` padded prompt tokens, planned to take about
  ``target_step_s``; a short check leads the next step and never shares it with long windows; a request
  whose caller gave up stops being run.

Peak memory of one forward is bounded by ``max_batch_tokens`` (B) and the window length (L =
``min(max_window_tokens, max_context - max_new_tokens)``): the KV cache holds at most
``B + rows * max_new_tokens`` positions (``2 * layers * kv_heads * head_dim * dtype bytes`` each) and
an attention that materialises its scores holds ``heads * B * L`` of them per layer (rows x L x L
with rows <= B / L). Nothing else grows with the input.
"""

from __future__ import annotations

import asyncio
import math
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from pathlib import Path
from typing import Any, cast

from ..errors import GuardTimeout, InputTooLarge, MissingDependency, ModelNotFound, QwenGuardError, VerdictParseError
from ..formats.conversations import RunsJudged
from ..formats.prompts import (
    SAFETY_LABELS,
    moderation_mode,
    normalize_messages,
    parse_cut_verdict,
    parse_verdict,
)
from ..formats.windows import (
    CALL_WINDOW_ACCOUNT,
    CALL_WINDOW_BUDGET,
    DEFAULT_MAX_WINDOW_TOKENS,
    DEFAULT_MAX_WINDOWS,
    DEFAULT_WINDOW_OVERLAP,
    StreamCheck,
    WindowAccount,
    WindowPlanner,
    over_call_budget,
)
from ..policy import require_count
from ..verdict import Risk, Verdict, worst
from .batching import DEFAULT_MAX_BATCH, DEFAULT_MAX_WAIT_S, MicroBatcher
from .gen_engine import Answer
from .hub import checkpoint_config, resolve_checkpoint
from .plan_pool import planning_pool, planning_size
from .torch_runtime import on_torch_thread, quiet_loading, require_torch, resolve_device, resolve_dtype

__all__ = [
    "TransformersGen",
    "DEFAULT_MAX_NEW_TOKENS",
    "DEFAULT_MAX_BATCH_TOKENS",
    "DEFAULT_MAX_SESSION_TOKENS",
    "DEFAULT_TARGET_STEP_S",
]

#: Answers are 8-14 tokens; the longest (Controversial, every response category, its refusal line and end) is 51
#: of the Qwen3 tokenizer (tests/realtok): 48 cut its refusal line (rt49d R5).
DEFAULT_MAX_NEW_TOKENS = 64
#: Context used when a config gives none, or an absurd one.
DEFAULT_MAX_CONTEXT = 32768
#: Padded prompt tokens (rows x longest row) in one forward: two 4K windows, or 16 rows of ~500.
#: For Qwen3Guard-Gen-0.6B in bf16 (28 layers, 8 KV heads of 128) the KV cache of a full step is
#: about 1 GB. Raise it on a large GPU for throughput; lower it on a small CPU box.
DEFAULT_MAX_BATCH_TOKENS = 8192
#: KV positions the decode engine's session caches (streams judged check by check) may hold together.
#: Each position costs 2 x layers x kv_heads x head_dim x dtype bytes: 32,768 positions are 3.5 GiB for
#: Qwen3Guard-Gen-0.6B in bf16 (112 KiB each), 4.5 GiB for 4B/8B (144 KiB); a stream with a 2,000-token
#: prompt keeps up to two caches of ~4,100 positions, so about four such streams at once keep theirs.
#: Past it a stream's checks run in full: the same verdicts, the cost of a cache-less check.
DEFAULT_MAX_SESSION_TOKENS = 32_768
#: Seconds one step should take (planned from measured step times; `batching.MicroBatcher`): a check that
#: arrives while a long document is judged waits at most about this long for the model. 0.1 s costs a
#: long document little throughput (steps of ~2,000 tokens run as fast per token as steps of 8,192 on CPU;
#: docs/performance.md) and does not bind on hardware fast enough to run a full step within it.
DEFAULT_TARGET_STEP_S = 0.1
#: Tokens below which a row rides in any step (`batching.MicroBatcher` ``width_floor``): a short check
#: (30-60 tokens past the cached instructions) joins a step led by a stream session's one-token step
#: instead of waiting behind it, at little cost beside a step's overhead.
DEFAULT_WIDTH_FLOOR = 128

#: The shortest answer a Qwen3Guard-Gen model gives to a response check (a prompt check's has no refusal line):
#: ``max_new_tokens`` must hold its tokens and its end token (an answer that the budget stops before its end is read
#: as cut: `parse_cut_verdict`; with the prompt verdict's least, every response check was a guard error: rt65j F5).
_SHORTEST_VERDICT = "Safety: Safe\nCategories: None\nRefusal: No"


def _check_seconds(name: str, value: Any, *, least: float | None = None) -> None:
    """A number of seconds: finite, and ``>= least`` (``> 0`` without one), else an error naming the option
    (``max_wait_s=nan`` was accepted: rt53d)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number of seconds, got {value!r} ({type(value).__name__})")
    if not math.isfinite(value) or (value < least if least is not None else value <= 0):
        raise ValueError(
            f"{name} must be a finite number of seconds {'>= ' + str(least) if least is not None else '> 0'}, "
            f"got {value!r}"
        )


def checked_dtype(dtype: Any, device: str) -> Any:
    """``dtype`` as a ``torch.dtype`` (`resolve_dtype`), or a ``TypeError`` naming the option: ``dtype=1`` reached
    transformers and was reported as "not a local directory" (rt53d F10)."""
    torch = require_torch()
    resolved = resolve_dtype(dtype, device)
    if not isinstance(resolved, torch.dtype):
        raise TypeError(
            f"dtype must be 'auto', a torch dtype name ('bfloat16', 'float16', 'float32') or a torch.dtype, "
            f"got {dtype!r}"
        )
    return resolved


def check_vocab_fits(tokenizer: Any, model: Any, label: str, kind: str) -> None:
    """Refuse a tokenizer with ids past the model's embedding rows (another model's tokenizer: every check was
    an IndexError deep in torch, let through under on_error="allow": rt53d F9). A tokenizer smaller than the
    embedding is normal: Qwen pads its embedding past the vocabulary."""
    embeddings = model.get_input_embeddings()
    rows = getattr(embeddings, "num_embeddings", None)
    if rows is None:
        return
    ids = [i for i in tokenizer.get_vocab().values() if isinstance(i, int)]
    ids += [i for i in getattr(tokenizer, "all_special_ids", ()) if isinstance(i, int)]
    highest = max(ids, default=-1)
    if highest >= rows:
        raise ValueError(
            f"cannot load {kind} checkpoint {label!r}: its tokenizer is not its model's: the tokenizer has ids up "
            f"to {highest:,} ({len(tokenizer):,} tokens), the model's embedding has {rows:,} rows (config "
            f"vocab_size {getattr(model.config, 'vocab_size', '?')}); put the model's own tokenizer files beside "
            f"its weights"
        )


def _load_error(label: str, path: Path, what: str, exc: BaseException) -> ModelNotFound:
    """One line for a checkpoint directory that exists but does not load: transformers' own reason (an unknown
    ``model_type``, a broken file), not "not a local directory" (rt53d F10)."""
    try:
        from transformers import __version__ as version
    except ImportError:  # pragma: no cover - loading got this far
        version = "?"
    reason = next((line.strip() for line in str(exc).splitlines() if line.strip()), "")
    where = "" if str(path) == label else f" (at {str(path)!r})"
    return ModelNotFound(
        f"cannot load the {what} of Qwen3Guard-Gen checkpoint {label!r}{where}: "
        f"{type(exc).__name__}: {reason[:500]} (installed transformers {version})"
    )


# One planned conversation: where its windows start in the flat list, how many, its mode, or its error.
_Span = tuple[int, int, str, "QwenGuardError | None"]


class TransformersGen:
    """Local Qwen3Guard-Gen backend.

    >>> backend = TransformersGen.load("demo")            # doctest: +SKIP
    >>> backend.classify([[{"role": "user", "content": "Hi"}]])   # doctest: +SKIP
    """

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        *,
        name: str,
        max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
        max_context: int | None = None,
        max_batch: int = DEFAULT_MAX_BATCH,
        max_wait_s: float = DEFAULT_MAX_WAIT_S,
        window_overlap: int = DEFAULT_WINDOW_OVERLAP,
        use_chat_template: bool | None = None,
        max_window_tokens: int = DEFAULT_MAX_WINDOW_TOKENS,
        max_windows: int = DEFAULT_MAX_WINDOWS,
        max_batch_tokens: int = DEFAULT_MAX_BATCH_TOKENS,
        target_step_s: float | None = DEFAULT_TARGET_STEP_S,
        width_floor: int = DEFAULT_WIDTH_FLOOR,
        engine: bool | None = None,
        max_session_tokens: int | None = DEFAULT_MAX_SESSION_TOKENS,
        label_branches: bool | None = None,
    ) -> None:
        from ..formats.encoding import ConversationEncoder
        from .gen_engine import engine_for

        for option, value, minimum in (
            ("max_new_tokens", max_new_tokens, 1),
            ("max_window_tokens", max_window_tokens, 1),
            ("max_windows", max_windows, 1),
            ("window_overlap", window_overlap, 0),
        ):
            require_count(option, value, minimum)
        require_count("max_context", max_context, optional=True)
        _check_seconds("max_wait_s", max_wait_s, least=0.0)
        if target_step_s is not None:
            _check_seconds("target_step_s", target_step_s)
        # Fewer new tokens than the shortest verdict and its end: every check a guard error (let through under
        # on_error="allow"; `serve --backend max_new_tokens=1` answered 200s that were all errors: rt53d). The end
        # counts: an answer the budget stops before it is cut (rt65b F1), as the remote client's least max_tokens.
        shortest = len(tokenizer(_SHORTEST_VERDICT, add_special_tokens=False)["input_ids"]) + 1
        if max_new_tokens < shortest:
            raise ValueError(
                f"max_new_tokens={max_new_tokens} is shorter than the shortest verdict ({shortest} tokens: "
                f"{_SHORTEST_VERDICT!r} and its end token); every check would fail. The default is "
                f"{DEFAULT_MAX_NEW_TOKENS} (the longest verdict is about 51 tokens)"
            )
        self.model = model
        self.tokenizer = tokenizer
        self.name = name
        self.max_new_tokens = max_new_tokens
        config_ctx = getattr(model.config, "max_position_embeddings", None) or DEFAULT_MAX_CONTEXT
        self.max_context = int(min(max_context or config_ctx, config_ctx))
        #: Longest prompt of one window, template included.
        self.window_tokens = min(max_window_tokens, self.max_context - max_new_tokens)
        if self.window_tokens < 1:
            raise ValueError(
                f"max_context={self.max_context} leaves no room for a prompt after max_new_tokens={max_new_tokens}"
            )
        self.window_overlap = window_overlap
        if max_session_tokens is not None and (isinstance(max_session_tokens, bool) or max_session_tokens < 0):
            raise ValueError(f"max_session_tokens must be None or a count >= 0, got {max_session_tokens!r}")
        #: KV positions all session caches may hold together (`DEFAULT_MAX_SESSION_TOKENS`; ``None``: unbounded).
        self.max_session_tokens = max_session_tokens
        if label_branches is not None and not isinstance(label_branches, bool):
            raise ValueError(f"label_branches must be None, True or False, got {label_branches!r}")
        #: The engine runs the other labels beside its guess (`GenEngine`; ``None``: on).
        self.label_branches = label_branches
        self.encoder = ConversationEncoder(tokenizer, use_chat_template=use_chat_template)
        self.planner = WindowPlanner(
            self.encoder, max_prompt_tokens=self.window_tokens, overlap=window_overlap, max_windows=max_windows
        )
        self.planner.require_room("max_window_tokens / max_context")
        self.pad_id = self._pad_id()
        self.eos_ids = self._eos_ids()
        self._label_tokens = self._find_label_tokens()
        #: The Gen decode engine (prefix cache, format tokens fed, sessions: `gen_engine`), or ``None``
        #: (``engine=False``, or a model it cannot run): transformers' ``generate`` decodes.
        self.engine = engine_for(self, engine)
        self._batcher: MicroBatcher[list[int], Answer] = MicroBatcher(
            on_torch_thread(model, self._generate_batch),
            max_batch=max_batch,
            max_wait_s=max_wait_s,
            cost=len,
            max_batch_cost=max_batch_tokens,
            target_step_s=target_step_s,
            width_floor=width_floor,
            name=f"qwenguard-gen[{name}]",
        )

    # -- loading ------------------------------------------------------------------------------
    @classmethod
    def load(
        cls,
        name_or_path: str | Path,
        *,
        device: str | None = "auto",
        dtype: Any = "auto",
        revision: str | None = None,
        local_files_only: bool | None = None,
        **kwargs: Any,
    ) -> TransformersGen:
        """Load a checkpoint: ``"demo"``, a local directory, or a Hugging Face hub id."""
        from ..demo import DEMO_NAMES

        label = str(name_or_path)
        # Before torch loads (seconds): an offline machine hears about a hub id at once.
        path = resolve_checkpoint(
            name_or_path,
            kind="Qwen3Guard-Gen",
            demo_names=DEMO_NAMES,
            revision=revision,
            local_files_only=local_files_only,
        )
        _check_gen_config(checkpoint_config(path, label, "Qwen3Guard-Gen"), label)
        require_torch()  # a clear MissingDependency before anything else loads
        try:
            from transformers import AutoModelForCausalLM, AutoTokenizer
        except ImportError as exc:
            raise MissingDependency.for_extra("local", "transformers") from exc
        dev = resolve_device(device)
        torch_dtype = checked_dtype(dtype, dev)
        opts: dict[str, Any] = {"revision": revision}
        if local_files_only is not None:
            opts["local_files_only"] = local_files_only
        # The checkpoint is a local directory by now (`resolve_checkpoint`): what fails here is its contents.
        with quiet_loading():
            try:
                tokenizer = AutoTokenizer.from_pretrained(str(path), **opts)
            except (OSError, ValueError) as exc:
                raise _load_error(label, path, "tokenizer", exc) from exc
            try:
                model = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch_dtype, **opts)
            except (OSError, ValueError, KeyError) as exc:
                raise _load_error(label, path, "model", exc) from exc
            except RuntimeError as exc:
                if "size mismatch" not in str(exc) and "mismatched" not in str(exc):
                    raise
                raise _load_error(label, path, "model (weights of another shape than config.json says)", exc) from exc
        check_vocab_fits(tokenizer, model, label, "Qwen3Guard-Gen")
        model.to(dev)
        model.eval()
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token
        return cls(model, tokenizer, name=label, **kwargs)

    # -- token bookkeeping --------------------------------------------------------------------
    def _pad_id(self) -> int:
        pad = self.tokenizer.pad_token_id
        return int(pad if pad is not None else self.tokenizer.eos_token_id)

    def _eos_ids(self) -> list[int]:
        ids = {self.tokenizer.eos_token_id}
        gen_eos = getattr(getattr(self.model, "generation_config", None), "eos_token_id", None)
        ids.update(gen_eos if isinstance(gen_eos, list) else [gen_eos])
        im_end = self.tokenizer.convert_tokens_to_ids("<|im_end|>")
        if isinstance(im_end, int) and im_end != self.tokenizer.unk_token_id:
            ids.add(im_end)
        return sorted(i for i in ids if isinstance(i, int))

    def _find_label_tokens(self) -> tuple[list[int], dict[Risk, int]] | None:
        """The shared prefix of "Safety: <label>" and the first token that tells the labels apart.

        Scores are read from the logits at that position; ``None`` when the tokenizer does not give
        one distinct first token per label (then verdicts carry no probabilities).
        """
        encoded = {
            r: self.tokenizer(f"Safety: {lab}", add_special_tokens=False)["input_ids"]
            for r, lab in SAFETY_LABELS.items()
        }
        seqs = list(encoded.values())
        k = 0
        while all(len(s) > k for s in seqs) and len({s[k] for s in seqs}) == 1:
            k += 1
        if not all(len(s) > k for s in seqs):
            return None
        firsts = {r: s[k] for r, s in encoded.items()}
        if len(set(firsts.values())) != len(firsts):
            return None
        return seqs[0][:k], firsts

    # -- classification -----------------------------------------------------------------------
    def _plan(
        self,
        conversations: Sequence[Sequence[dict[str, str]]],
        check: Callable[[], None] | None = None,
        budget: int | None = None,
        account: WindowAccount | None = None,
    ) -> tuple[list[list[int]], list[_Span]]:
        """All windows of all conversations, flat, and where each conversation's windows are; `InputTooLarge`
        for the whole call past ``budget`` windows in all (`CALL_WINDOW_BUDGET`), or past what is left of the
        caller's ``account`` (`window_budget`: over several calls), before any model work."""
        flat: list[list[int]] = []
        spans: list[_Span] = []
        for conv in conversations:
            msgs = normalize_messages(conv)
            try:
                windows = self.planner.plan(
                    msgs,
                    check=check,
                    join_runs=not isinstance(conv, RunsJudged),
                    stream=conv if isinstance(conv, StreamCheck) else None,  # pieces judged before are left out
                )
            except InputTooLarge as exc:
                spans.append((len(flat), 0, "prompt", exc))
                continue
            if (too_many := over_call_budget(len(flat) + len(windows), budget)) is not None:
                raise too_many
            if account is not None and (too_many := account.charge(len(windows))) is not None:
                raise too_many
            spans.append((len(flat), len(windows), moderation_mode(msgs), None))
            flat.extend(list(w.ids) for w in windows)
        return flat, spans

    # Planning runs on the planning pool (plan_pool.py: shortest first, a thread kept for short checks),
    # never on the event loop; the caller waits at most until its deadline, and a check whose caller has
    # gone is dropped before it starts, or stops at its next window.
    def _submit_plan(
        self, conversations: Sequence[Sequence[dict[str, str]]], deadline: float | None, timeout: float | None
    ) -> tuple[Future[Any], threading.Event]:
        abandoned = threading.Event()  # set when the caller stops waiting: planning stops at its next window
        stop = _stop_check(deadline, timeout, abandoned)
        budget = CALL_WINDOW_BUDGET.get()  # the caller's (a server's request), read on the caller's side
        account = CALL_WINDOW_ACCOUNT.get()  # the caller's call's, over its backend calls (`window_budget`)
        args = (conversations, stop, budget) + ((account,) if account is not None else ())
        return planning_pool().submit(planning_size(conversations), self._plan, *args), abandoned

    def _plan_waiting(
        self, conversations: Sequence[Sequence[dict[str, str]]], deadline: float | None, timeout: float | None
    ) -> tuple[list[list[int]], list[_Span]]:
        job, abandoned = self._submit_plan(conversations, deadline, timeout)
        try:
            return cast(tuple[list[list[int]], list[_Span]], job.result(_time_left(deadline, timeout)))
        except FutureTimeout:
            raise GuardTimeout(f"guard did not answer within {timeout} s (waiting to plan windows)") from None
        finally:
            if not job.done():
                abandoned.set()
                job.cancel()

    async def _aplan_waiting(
        self, conversations: Sequence[Sequence[dict[str, str]]], deadline: float | None, timeout: float | None
    ) -> tuple[list[list[int]], list[_Span]]:
        job, abandoned = self._submit_plan(conversations, deadline, timeout)
        try:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            return cast(tuple[list[list[int]], list[_Span]], await asyncio.wait_for(asyncio.wrap_future(job), left))
        except asyncio.TimeoutError:
            raise GuardTimeout(f"guard did not answer within {timeout} s") from None
        finally:
            if not job.done():
                abandoned.set()
                job.cancel()

    def _assemble(
        self, spans: list[_Span], outputs: Sequence[tuple[str, dict[Risk, float] | None]], elapsed_ms: float
    ) -> list[Verdict | QwenGuardError]:
        """The outcome of each planned conversation from its windows' answers (`Answer`s; a plain ``(text, probs)``
        ended whole)."""
        results: list[Verdict | QwenGuardError] = []
        for start, count, mode, error in spans:
            if error is not None:
                results.append(error)
                continue
            verdicts: list[Verdict] = []
            for output in outputs[start : start + count]:
                text, probs = output
                cut = getattr(output, "cut", False)
                try:
                    # An answer the budget stopped is read as the remote client reads a reply cut at max_tokens:
                    # its categories may be cut ("Politically Sensitive Topics, Violent" read as its first, which
                    # an ignore list excused: rt65b F1), so only an Unsafe first line stands, with none.
                    v = (
                        parse_cut_verdict(text, self._cut_reason(), mode=mode, model=self.name)
                        if cut
                        else parse_verdict(text, mode=mode, model=self.name)
                    )
                except VerdictParseError as exc:
                    error = error or exc
                    continue
                verdicts.append(Verdict(v.risk, v.categories, v.refusal, v.raw, elapsed_ms, self.name, probs))
            # As the remote guard combines windows: a window that could not be read makes the check a guard error
            # carrying what the others read (`readable`), which the policy decides first whatever on_error says (a
            # filler window the model garbles must not hide the unsafe window beside it: rt53f F2). Not a verdict
            # even beside an Unsafe window: an ignore list excusing that Unsafe's categories let the unread window
            # through as read (rt68i F1).
            if error is not None:
                error.readable = worst(verdicts) if verdicts else None
                results.append(error)
            else:
                results.append(worst(verdicts))
        return results

    def _cut_reason(self) -> str:
        return (
            f"the guard's answer was cut at max_new_tokens={self.max_new_tokens} (no end token): the verdict may be "
            f"incomplete; raise max_new_tokens (default {DEFAULT_MAX_NEW_TOKENS}, the longest verdict is about 51 tokens)"
        )

    def classify(
        self, conversations: Sequence[Sequence[dict[str, str]]], *, timeout: float | None = None
    ) -> list[Verdict | QwenGuardError]:
        start = time.perf_counter()
        deadline = None if timeout is None else time.monotonic() + timeout
        flat, spans = self._plan_waiting(conversations, deadline, timeout)
        try:
            outputs = self._batcher.run(flat, _time_left(deadline, timeout))
        except GuardTimeout:
            raise GuardTimeout(f"guard did not answer within {timeout} s") from None
        return self._assemble(spans, outputs, (time.perf_counter() - start) * 1000)

    async def aclassify(
        self, conversations: Sequence[Sequence[dict[str, str]]], *, timeout: float | None = None
    ) -> list[Verdict | QwenGuardError]:
        start = time.perf_counter()
        deadline = None if timeout is None else time.monotonic() + timeout
        flat, spans = await self._aplan_waiting(conversations, deadline, timeout)
        try:
            outputs = await self._batcher.arun(flat, _time_left(deadline, timeout))
        except GuardTimeout:
            raise GuardTimeout(f"guard did not answer within {timeout} s") from None
        return self._assemble(spans, outputs, (time.perf_counter() - start) * 1000)

    # -- the forward pass (worker thread only) ------------------------------------------------
    def _generate_batch(self, prompts: list[list[int]]) -> list[Answer]:
        """One left-padded greedy `generate` over ``prompts`` (the batcher has bounded rows and tokens);
        each prompt's `Answer` (its text, label probabilities, and whether the budget cut it), in order."""
        if self.engine is not None:  # the same greedy answers, computed more cheaply (gen_engine)
            return self.engine.run(prompts)
        torch = require_torch()
        width = max(len(p) for p in prompts)
        input_ids = torch.full((len(prompts), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(prompts), width), dtype=torch.long)
        for row, p in enumerate(prompts):
            input_ids[row, width - len(p) :] = torch.tensor(p, dtype=torch.long)
            mask[row, width - len(p) :] = 1
        device = self.model.device
        with torch.inference_mode():
            gen = self.model.generate(
                input_ids=input_ids.to(device),
                attention_mask=mask.to(device),
                max_new_tokens=self.max_new_tokens,
                do_sample=False,
                pad_token_id=self.pad_id,
                eos_token_id=self.eos_ids,
                return_dict_in_generate=True,
                output_scores=self._label_tokens is not None,
            )
        new = gen.sequences[:, width:].tolist()
        out: list[Answer] = []
        for row in range(len(prompts)):
            tokens = [t for t in new[row] if t not in self.eos_ids and t != self.pad_id]
            text = self.tokenizer.decode(tokens, skip_special_tokens=True)
            # generate pads a row only after its end token: one without any ran to max_new_tokens (rt65b F1).
            cut = len(new[row]) >= self.max_new_tokens and not any(t in self.eos_ids for t in new[row])
            out.append(Answer(text, self._label_probs(new[row], gen.scores, row), cut))
        return out

    def _label_probs(self, tokens: list[int], scores: Any, row: int) -> dict[Risk, float] | None:
        if self._label_tokens is None or not scores:
            return None
        prefix, firsts = self._label_tokens
        k = len(prefix)
        if tokens[:k] != prefix or len(scores) <= k:
            return None
        logits = scores[k][row].float()
        picked = [float(logits[firsts[r]]) for r in SAFETY_LABELS]
        if not all(math.isfinite(x) for x in picked):
            return None  # NaN/inf logits (an fp16 overflow): no probabilities rather than NaN ones
        top = max(picked)
        exps = [math.exp(x - top) for x in picked]
        total = sum(exps)
        return {r: e / total for r, e in zip(SAFETY_LABELS, exps)}

    def close(self) -> None:
        self._batcher.close()


def _stop_check(
    deadline: float | None, timeout: float | None, abandoned: threading.Event | None
) -> Callable[[], None] | None:
    """What planning calls between windows: stop at the deadline, or once the caller has gone."""
    if deadline is None and abandoned is None:
        return None

    def check() -> None:
        if abandoned is not None and abandoned.is_set():
            raise GuardTimeout("the caller stopped waiting for this check")
        if deadline is not None and time.monotonic() > deadline:
            raise GuardTimeout(f"guard did not answer within {timeout} s (still planning windows)")

    return check


def _time_left(deadline: float | None, timeout: float | None) -> float | None:
    if deadline is None:
        return None
    left = deadline - time.monotonic()
    if left <= 0:
        raise GuardTimeout(f"guard did not answer within {timeout} s")
    return left


class StreamCheckpointAsGen(ValueError):
    """A Qwen3Guard-Stream checkpoint given as the Gen model. The message gives Python's advice; a command line
    gives its own (``label``: the checkpoint as given), as only ``qwenguard serve`` takes a Stream model."""

    def __init__(self, label: str) -> None:
        super().__init__(
            f"{label!r} is a Qwen3Guard-Stream checkpoint, not a Gen one: pass it as stream_model={label!r}, "
            "with a Qwen3Guard-Gen checkpoint such as 'demo' as the model"
        )
        self.label = label


def _check_gen_config(config: dict[str, Any], label: str) -> None:
    """A Qwen3Guard-Stream checkpoint loads as a causal LM (its guard heads dropped as unexpected keys)
    and then answers every check with a parse error: refuse it at load, saying where it goes."""
    from .stream_model import STREAM_CONFIG_FIELDS

    if any(field in config for field in STREAM_CONFIG_FIELDS):
        raise StreamCheckpointAsGen(label)
