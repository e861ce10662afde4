"""The Stream model's forwards for many sessions at once: per-session KV caches, one packed forward.

Concurrent stream sessions each need a forward over a few new tokens, each after a cache of a different
length. transformers' batched forward wants one rectangular cache (left padding, a mask, and a copy of
every session's cache into it on every step: O(context) copying per token). Instead the sessions'
new tokens are *packed* into one sequence and run through the backbone together:

- embeddings, norms, q/k/v/o projections, MLPs and the heads run once over all packed tokens: one
  matrix multiply per weight for the whole batch, which is where the time goes;
- attention runs per session, its queries against that session's own cache, read in place (grouped
  query heads folded into the query rows, so K/V are never repeated or copied);
- each session's new keys and values are appended in place to its own cache (`SessionCache`: per layer,
  a buffer that doubles when full, so a token costs O(1) to append).

This is the computation of `Qwen3Model.forward` written against the module layout of a Qwen3 decoder
layer (``input_layernorm``, ``self_attn.{q,k,v,o}_proj``, ``self_attn.{q,k}_norm``,
``post_attention_layernorm``, ``mlp``, ``embed_tokens``, ``rotary_emb``, ``norm``), which is stable across
the transformers versions qwenguard supports, rather than against the cache API of
``Qwen3Model.forward``, which is not. ``tests/test_stream_batching.py`` holds it equal to transformers'
own full forward.

`StreamBatcher` feeds `packed_forward` from concurrent sessions through a `MicroBatcher`: one worker
thread schedules the model's steps, concurrent sessions' steps coalesce into one packed forward (on a CPU
the forward itself runs on the process's torch thread: `torch_runtime.run_on_torch_thread`).

torch is imported on first use.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

from .batching import MicroBatcher
from .torch_runtime import on_torch_thread, require_torch

__all__ = [
    "SessionCache",
    "StreamStep",
    "StepResult",
    "StreamBatcher",
    "packed_forward",
    "packed_hidden",
    "check_packable",
    "DEFAULT_STEP_TOKENS",
    "DEFAULT_MAX_SESSIONS_PER_FORWARD",
]

#: Longest run of tokens one session puts into one forward (a prompt prefill is cut into such chunks),
#: so a long prompt holds the model for a bounded slice and token steps of other sessions interleave.
DEFAULT_STEP_TOKENS = 256
#: Sessions per packed forward.
DEFAULT_MAX_SESSIONS_PER_FORWARD = 32
#: After a forward, how long the worker waits for the sessions it answered to send their next step (2 ms
#: was not enough on a loaded 2-core machine, where a woken thread can take that long to run).
DEFAULT_REGROUP_S = 0.005


class SessionCache:
    """One session's keys and values, per layer, in buffers that grow by doubling (appends in place)."""

    __slots__ = ("keys", "values", "length", "_layers")

    initial_capacity = 256

    def __init__(self, num_layers: int) -> None:
        self._layers = num_layers
        self.keys: list[Any] = [None] * num_layers  # [kv_heads, capacity, head_dim] per layer
        self.values: list[Any] = [None] * num_layers
        self.length = 0  # positions filled (the same in every layer between forwards)

    @property
    def capacity(self) -> int:
        return 0 if self.keys[0] is None else int(self.keys[0].shape[1])

    def append(self, layer: int, k: Any, v: Any) -> tuple[Any, Any]:
        """Write ``k``/``v`` ([n, kv_heads, head_dim]) after the cached positions of ``layer``; return the
        views of all its positions so far ([kv_heads, length + n, head_dim])."""
        n = k.shape[0]
        end = self.length + n
        buf_k, buf_v = self.keys[layer], self.values[layer]
        if buf_k is None or end > buf_k.shape[1]:
            capacity = max(end, 2 * (0 if buf_k is None else buf_k.shape[1]), self.initial_capacity)
            new_k = k.new_empty(k.shape[1], capacity, k.shape[2])
            new_v = v.new_empty(v.shape[1], capacity, v.shape[2])
            if self.length:
                new_k[:, : self.length] = buf_k[:, : self.length]
                new_v[:, : self.length] = buf_v[:, : self.length]
            self.keys[layer], self.values[layer] = buf_k, buf_v = new_k, new_v
        buf_k[:, self.length : end] = k.transpose(0, 1)
        buf_v[:, self.length : end] = v.transpose(0, 1)
        return buf_k[:, :end], buf_v[:, :end]

    def move(self, source: int, target: int, count: int) -> None:
        """Copy ``count`` positions from ``source`` to ``target`` in every layer (the engine keeps a branch
        it ran after another one: its keys already carry their positions, so only the slots move)."""
        if count <= 0 or source == target:
            return
        for buffers in (self.keys, self.values):
            for buf in buffers:
                if buf is not None:
                    buf[:, target : target + count] = buf[:, source : source + count].clone()


@dataclass(eq=False)
class StreamStep:
    """One session's share of a packed forward: ``ids`` after ``cache``; which heads to read.

    ``heads``: ``"response"`` (the response heads at every new token), ``"query"`` (the query heads at
    position ``query_at`` of ``ids``) or ``"none"`` (fill the cache only)."""

    cache: SessionCache
    ids: Sequence[int]
    heads: str = "response"
    query_at: int | None = None


@dataclass
class StepResult:
    """Per new token: response risk logits then category logits (``response``); the query heads' row."""

    response: list[list[float]] = field(default_factory=list)
    query: list[float] | None = None


def check_packable(model: Any) -> None:
    """Raise ``ValueError`` for a backbone `packed_forward` cannot run exactly (sliding-window layers)."""
    config = model.config
    layer_types = getattr(config, "layer_types", None) or ()
    if getattr(config, "use_sliding_window", False) or any(t != "full_attention" for t in layer_types):
        raise ValueError(
            "models with sliding-window attention layers are not supported (the packed forward attends over every cached position)"
        )


#: Up to how many packed tokens a CPU float32 forward runs its projections as ``weight @ x.T`` (`_narrow`).
NARROW_ROWS = 384


def _narrow(torch: Any, x: Any) -> bool:
    """Whether the projections of ``x`` ([tokens, features]) run transposed (`_project`).

    On a CPU, torch's float32 ``linear`` over a few rows runs a matrix product that handles the large
    weight badly: 4 rows cost two to three times one row, although both read the weight once. As
    ``weight @ x.T`` the same product is cheaper, and stays cheaper well into prefill sizes (with the
    attention's queries contiguous, the MLP's inner activations token-major and the rows padded: see
    `packed_hidden`, `_mlp`, `_padded_rows`): a whole forward of the 0.6B shape (torch 2.13, MKL, 2 cores,
    interleaved runs: ``bench/realsize.py --parts projections``) took 45-51% less time for 2 to 4 new
    tokens, 19-38% less for 9 to 64, 15% for 124, 2-8% for 192 to 384, and 2% more at 512; bfloat16 gains
    nothing. The numbers are the same products summed in another order (float rounding)."""
    return bool(x.device.type == "cpu" and x.dtype == torch.float32 and x.shape[0] <= NARROW_ROWS)


def _padded_rows(n: int) -> int:
    """How many rows a narrow forward's projections multiply for ``n`` tokens: past 8, the next multiple of
    8 (zero rows, whose results are dropped). MKL's float32 product by ``x.T`` runs a width that is not a
    multiple of 8 far below its pace: over the 0.6B shape's projections, 9 tokens 239 ms against 180 padded
    to 16, 12: 251 / 167, 28: 316 / 242, 123: 1,005 / 864 (to 128); up to 8 tokens padding costs more
    than it saves (5: 135 / 212)."""
    return n if n <= 8 else -(-n // 8) * 8


def _pad(torch: Any, x: Any, rows: int) -> Any:
    """``x`` ([tokens, features]) with zero rows added up to ``rows``."""
    n = x.shape[0]
    return x if rows <= n else torch.cat((x, x.new_zeros(rows - n, x.shape[1])))


def _project(torch: Any, linear: Any, x: Any, narrow: bool) -> Any:
    """``linear(x)`` for [tokens, in] ``x``; as ``weight @ x.T`` when ``narrow`` and ``linear`` is a plain
    `torch.nn.Linear` (a subclass, e.g. a quantized or adapter layer, runs its own forward)."""
    if narrow and type(linear) is torch.nn.Linear:
        out = torch.mm(linear.weight, x.t()).t()
        return out if linear.bias is None else out + linear.bias
    return linear(x)


def _mlp(torch: Any, mlp: Any, x: Any, narrow: bool) -> Any:
    """The decoder layer's MLP over [tokens, hidden] ``x``. Narrow, a Qwen3 MLP of plain bias-free
    layers runs as ``down @ h.T`` with ``h = act(gate @ x.T) * (up @ x.T)`` laid out token by token;
    any other MLP runs its own forward.

    The layout matters as much as the transpose: MKL multiplies by a few columns two to three times
    faster when they are the rows of a token-major matrix (``x.T`` of a contiguous ``x``) than when they
    are the columns of a feature-major one (``gate @ x.T`` as it comes out): measured over the 0.6B shape's
    projections, 2 tokens 153 -> 124 ms, 4: 161 -> 119, 9: 330 -> 263, the same from 16 on. So ``h`` is
    copied token-major (a few KB per token) before the down projection."""
    layers: list[Any] = [getattr(mlp, name, None) for name in ("gate_proj", "up_proj", "down_proj")]
    plain = all(type(m) is torch.nn.Linear and m.bias is None for m in layers)
    if not (narrow and plain and type(mlp).__name__ == "Qwen3MLP"):
        return mlp(x)
    gate, up, down = layers
    xt = x.t()
    h = (mlp.act_fn(torch.mm(gate.weight, xt)) * torch.mm(up.weight, xt)).t().contiguous()
    return torch.mm(down.weight, h.t()).t()


def _rotate_half(x: Any) -> Any:
    torch = require_torch()
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


@functools.cache
def _native_gqa(torch: Any) -> bool:
    """Does this torch's scaled_dot_product_attention take ``enable_gqa`` (torch >= 2.5)?"""
    major, minor = (int(x) for x in torch.__version__.split(".")[:2])
    return (major, minor) >= (2, 5)


def _norm(torch: Any, norm: Any, x: Any) -> Any:
    """``norm(x)`` for a decoder's RMS norm module. A ``Qwen3RMSNorm`` runs as torch's single ``rms_norm`` op
    (one fused kernel on a GPU) with the module's own rounding: normalised in float32, cast back, scaled.

    The module's forward is eight ops (two casts, pow, mean, add, rsqrt, two products) and a decoder layer
    runs four norms: on a GPU, where a forward of a 0.6B model costs its kernel launches rather than its
    arithmetic, that was about half the layer's launches. Any other norm module runs its own forward."""
    eps = getattr(norm, "variance_epsilon", None)
    if type(norm).__name__ != "Qwen3RMSNorm" or eps is None:
        return norm(x)
    return norm.weight * torch.nn.functional.rms_norm(x.float(), (x.shape[-1],), eps=eps).to(x.dtype)


def _attention_mask(torch: Any, past: int, n: int, visible: Any, device: Any) -> Any:
    """Which positions ([n, past + n] bool) ``n`` new tokens after ``past`` cached ones see: every cached one,
    and of the new ones those ``visible`` ([n, n] bool) allows (default: causal). None for one new token
    without ``visible``: nothing to mask."""
    if visible is not None:
        return torch.cat((torch.ones(n, past, dtype=torch.bool, device=device), visible.to(device)), dim=1)
    if n == 1:
        return None
    # Causal over the new tokens, everything cached is visible: new token j sees positions <= past + j.
    positions = torch.arange(past + n, device=device)
    return positions[None, :] <= (past + torch.arange(n, device=device))[:, None]


def _attend(torch: Any, q: Any, k: Any, v: Any, mask: Any, scaling: float) -> Any:
    """Attention of ``q`` ([n, heads, d]) against one session's ``k``/``v`` ([kv_heads, past + n, d]) under
    ``mask`` (`_attention_mask`; None: every position visible). Query heads sharing a key/value head are
    folded into the query rows: no K/V copy for grouped heads."""
    n, heads, dim = q.shape
    kv_heads = k.shape[0]
    groups = heads // kv_heads
    sdpa = torch.nn.functional.scaled_dot_product_attention
    # Inputs are given 4-D (a batch of one): torch's CPU kernel for 4-D inputs is several times faster
    # than its path for 3-D ones, on one token and on a prompt alike.
    if mask is None and n == 1:  # the common case, a token step
        out = sdpa(q.reshape(1, kv_heads, groups, dim), k[None], v[None], scale=scaling)
        return out.reshape(1, heads * dim)
    if _native_gqa(torch):  # grouped heads read in place by the kernel; the mask broadcast over heads
        out = sdpa(q.transpose(0, 1)[None], k[None], v[None], attn_mask=mask, scale=scaling, enable_gqa=True)
        return out[0].transpose(0, 1).reshape(n, heads * dim)
    rows = q.reshape(n, kv_heads, groups, dim).permute(1, 2, 0, 3).reshape(1, kv_heads, groups * n, dim)
    out = sdpa(rows, k[None], v[None], attn_mask=None if mask is None else mask.repeat(groups, 1), scale=scaling)
    return out.reshape(kv_heads, groups, n, dim).permute(2, 0, 1, 3).reshape(n, heads * dim)


def packed_forward(model: Any, steps: Sequence[StreamStep]) -> list[StepResult]:
    """Run ``steps`` (different sessions) as one packed forward of ``model`` (a `Qwen3StreamGuard`).

    Appends each step's keys and values to its cache. Call under ``torch.inference_mode()``."""
    torch = require_torch()
    hidden = packed_hidden(model.model, steps)
    return _read_heads(torch, model, hidden, steps, [len(s.ids) for s in steps])


def packed_hidden(backbone: Any, steps: Sequence[Any]) -> Any:
    """The final-norm hidden states ([sum of new tokens, hidden]) of a Qwen3 ``backbone`` run over ``steps``.

    A step is anything with ``cache`` (a `SessionCache`) and ``ids`` (its new tokens); each step's keys and
    values are appended to its cache. A step may also carry ``offsets`` (each new token's position after the
    cached ones; default 0, 1, 2, ...) and ``visible`` (which new tokens each new token sees, [n, n] bool;
    default causal): the Gen engine runs several continuations of one prompt side by side that way. Shared by the Stream model (`packed_forward`) and the Gen decode
    engine (`gen_engine`), whose backbone is the same Qwen3 decoder. Call under ``torch.inference_mode()``."""
    torch = require_torch()
    if len({id(s.cache) for s in steps}) != len(steps):
        raise RuntimeError("one forward got two steps of the same session (a session runs one step at a time)")
    device = backbone.embed_tokens.weight.device
    sizes = [len(s.ids) for s in steps]
    total = sum(sizes)
    ids = torch.tensor([t for s in steps for t in s.ids], device=device)
    positions = torch.cat(
        [
            torch.arange(s.cache.length, s.cache.length + n)
            if getattr(s, "offsets", None) is None
            else s.cache.length + torch.tensor(s.offsets)
            for s, n in zip(steps, sizes)
        ]
    ).to(device)
    hidden = backbone.embed_tokens(ids)[None]  # [1, T, hidden]
    narrow = _narrow(torch, hidden[0])
    rows = _padded_rows(total) if narrow else total
    cos, sin = backbone.rotary_emb(hidden, positions[None])
    cos, sin = cos[0, :, None, :], sin[0, :, None, :]  # [T, 1, head_dim]: broadcast over heads
    # A step's attention mask is the same in every layer (its cache length moves after the last one): built
    # once per forward, not per layer (on a GPU every op is a kernel launch, and launches are what a forward
    # of a small model costs there).
    masks = [
        _attention_mask(torch, s.cache.length, n, getattr(s, "visible", None), device) for s, n in zip(steps, sizes)
    ]
    alone = len(steps) == 1 and rows == total  # one step: its attention output is the layer's, no copy
    for index, layer in enumerate(backbone.layers):
        attn = layer.self_attn
        x = _pad(torch, _norm(torch, layer.input_layernorm, hidden[0]), rows)
        dim = attn.head_dim
        # Contiguous (a narrow projection comes out transposed): torch's CPU attention kernel takes only
        # inputs whose last dimension is contiguous, and falls back to its unfused path (about twice the
        # time at 124 tokens) otherwise; the norms also read rows faster.
        q = _project(torch, attn.q_proj, x, narrow)[:total].contiguous().reshape(total, -1, dim)
        k = _project(torch, attn.k_proj, x, narrow)[:total].contiguous().reshape(total, -1, dim)
        q, k = _norm(torch, attn.q_norm, q), _norm(torch, attn.k_norm, k)
        v = _project(torch, attn.v_proj, x, narrow)[:total].reshape(total, -1, dim)
        q = q * cos + _rotate_half(q) * sin
        k = k * cos + _rotate_half(k) * sin
        scaling = getattr(attn, "scaling", dim**-0.5)
        if alone:
            keys, values = steps[0].cache.append(index, k, v)
            out = _attend(torch, q, keys, values, masks[0], scaling)
        else:
            out = q.new_zeros(rows, q.shape[1] * dim) if rows > total else q.new_empty(total, q.shape[1] * dim)
            start = 0
            for step, n, mask in zip(steps, sizes, masks):
                end = start + n
                keys, values = step.cache.append(index, k[start:end], v[start:end])
                out[start:end] = _attend(torch, q[start:end], keys, values, mask, scaling)
                start = end
        hidden = hidden + _project(torch, attn.o_proj, out, narrow)[:total][None]
        mlp_in = _pad(torch, _norm(torch, layer.post_attention_layernorm, hidden[0]), rows)
        hidden = hidden + _mlp(torch, layer.mlp, mlp_in, narrow)[:total][None]
    for step, n in zip(steps, sizes):
        step.cache.length += n
    return _norm(torch, backbone.norm, hidden[0])


def _read_heads(torch: Any, model: Any, hidden: Any, steps: Sequence[StreamStep], sizes: list[int]) -> list[StepResult]:
    """The heads each step asked for, each head run once over all rows that need it; one host transfer each."""
    response_rows: list[int] = []
    query_rows: list[int] = []
    start = 0
    for step, n in zip(steps, sizes):
        if step.heads == "response":
            response_rows.extend(range(start, start + n))
        elif step.heads == "query":
            query_rows.append(start + (n - 1 if step.query_at is None else step.query_at))
        start += n
    response: list[list[float]] = []
    query: list[list[float]] = []
    if response_rows:
        risk, category = model.response_logits(hidden[response_rows])
        response = torch.cat((risk, category), -1).float().tolist()
    if query_rows:
        risk, category = model.query_logits(hidden[query_rows])
        query = torch.cat((risk, category), -1).float().tolist()
    results: list[StepResult] = []
    r = q = 0
    for step, n in zip(steps, sizes):
        if step.heads == "response":
            results.append(StepResult(response[r : r + n]))
            r += n
        elif step.heads == "query":
            results.append(StepResult(query=query[q]))
            q += 1
        else:
            results.append(StepResult())
    return results


class StreamBatcher:
    """One worker thread schedules the model's steps (run on the torch thread on a CPU); concurrent
    sessions' steps share packed forwards."""

    def __init__(self, model: Any, *, max_sessions: int = DEFAULT_MAX_SESSIONS_PER_FORWARD) -> None:
        check_packable(model)
        self.model = model
        self.steps_run = 0  # observable, for tests and figures: steps / forwards = sessions per forward
        # Sessions fed back to back submit their next step as soon as the last one is answered: regrouping
        # keeps sessions answered together in one forward (without it, 16 such sessions settled into
        # alternating forwards of 13 and 3). A session paced by its LLM pays at most DEFAULT_REGROUP_S.
        self._batcher: MicroBatcher[StreamStep, StepResult] = MicroBatcher(
            on_torch_thread(model, self._run),
            max_batch=max_sessions,
            regroup_s=DEFAULT_REGROUP_S,
            name="qwenguard-stream",
        )

    def _run(self, steps: list[StreamStep]) -> list[StepResult]:
        torch = require_torch()
        with torch.inference_mode():
            results = packed_forward(self.model, steps)
        self.steps_run += len(steps)
        return results

    def submit(self, step: StreamStep) -> Future[list[StepResult]]:
        """Queue one step; the future's result is a one-element list."""
        return self._batcher.submit([step])

    @property
    def forwards_run(self) -> int:
        """Packed forwards run so far (observable, for tests and figures)."""
        return self._batcher.batches_run

    def close(self) -> None:
        self._batcher.close()
