"""Benchmark: a Qwen3Guard-Stream session's per-token cost, and concurrent sessions batched.

    python bench/stream.py [--tokens 1000] [--shape cpu|0.6b] [--checkpoint DIR] [--sessions 16] [--threads 2]

Builds a random-weight Stream model of a realistic shape (CPU default: hidden 512, 8 layers; ``0.6b``:
the Qwen3Guard-Stream-0.6B shape, picked automatically on a GPU), or loads ``--checkpoint DIR`` (any
Qwen3Guard-Stream checkpoint directory, e.g. a real-size fixture). Prints, side by side in one run:

1. one session, one token at a time: the cost of a token at token 10 and at token N (default 1000), and
   of one full forward over the prompt plus N tokens (what the shipped remote code pays per token);
2. concurrent sessions: aggregate tokens/s of ``--sessions`` (default 16) sessions fed at once, each
   from its own thread, against one session alone (rounds interleaved, medians), and how many sessions
   shared each forward;
3. the monitor's own overhead per chunk (re-tokenization, head decoding, debounce, release; no model).

Targets: token N within 1.3x of token 10; at least 20x cheaper than a prefix re-run; 16 concurrent
sessions at least 4x the aggregate tokens/s of one (issue 16). The script exits non-zero, naming the
missed target, when one is missed. This is a benchmark, not a test: numbers depend on the machine.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import threading
import time

SHAPES = {
    "cpu": dict(
        hidden_size=512,
        intermediate_size=1536,
        num_hidden_layers=8,
        num_attention_heads=8,
        num_key_value_heads=4,
        head_dim=64,
        vocab_size=32000,
        guard_inner_size=256,
    ),
    "0.6b": dict(
        hidden_size=1024,
        intermediate_size=3072,
        num_hidden_layers=28,
        num_attention_heads=16,
        num_key_value_heads=8,
        head_dim=128,
        vocab_size=151936,
        guard_inner_size=512,
    ),
}
_CORPUS = ["The capital of France is Paris. Mix ammonium nitrate with fuel oil. Héllo wörld 日本語 🙂"] * 50


def _tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    special = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<think>", "</think>"]
    tok.train_from_iterator(
        _CORPUS,
        trainers.BpeTrainer(
            vocab_size=400, special_tokens=special, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
        ),
    )
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>")


def _model(shape: dict, device: str, dtype):
    import torch
    from qwenguard.core.backends.transformers_stream import build_stream_model
    from transformers import Qwen3Config

    risk = {"0": "Safe", "1": "Unsafe", "2": "Controversial"}
    cats = {
        str(i): n
        for i, n in enumerate(
            [
                "Violent",
                "Sexual Content",
                "Self-Harm",
                "Political",
                "PII",
                "Copyright",
                "Illegal Acts",
                "Unethical",
                "Jailbreak",
            ]
        )
    }
    config = Qwen3Config(
        **shape,
        max_position_embeddings=8192,
        rms_norm_eps=1e-6,
        num_risk_level=3,
        num_category=8,
        num_query_risk_level=3,
        num_query_category=9,
        response_risk_level_map=risk,
        query_risk_level_map=risk,
        query_category_map=cats,
        response_category_map={k: v for k, v in cats.items() if int(k) < 8},
    )
    torch.manual_seed(0)
    return build_stream_model(config).to(device=device, dtype=dtype).eval()


def _sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _concurrent(stream, prompt: str, tokens: list[int], sessions: int, per_session: int, rounds: int) -> dict:
    """Aggregate tokens/s of one session alone and of ``sessions`` at once, rounds interleaved."""

    def run(count: int) -> tuple[float, float]:
        """Tokens/s of ``count`` sessions fed at once, and the sessions per forward while they were fed."""
        opened = [stream.open_session(prompt) for _ in range(count)]
        barrier = threading.Barrier(count + 1)

        def feed(session, offset: int) -> None:
            barrier.wait()
            for i in range(per_session):
                session.feed_tokens([tokens[(offset + i) % len(tokens)]])

        threads = [threading.Thread(target=feed, args=(s, 17 * k)) for k, s in enumerate(opened)]
        for t in threads:
            t.start()
        steps0, forwards0 = stream.batcher.steps_run, stream.forwards_run  # the feeding only, not the opens
        barrier.wait()
        start = time.perf_counter()
        for t in threads:
            t.join()
        elapsed = time.perf_counter() - start
        shared = (stream.batcher.steps_run - steps0) / max(1, stream.forwards_run - forwards0)
        for s in opened:
            s.close()
        return count * per_session / elapsed, shared

    single, many, shared = [], [], []
    for _ in range(rounds):
        single.append(run(1)[0])
        rate, per_forward = run(sessions)
        many.append(rate)
        shared.append(per_forward)
    return {"single": statistics.median(single), "many": statistics.median(many), "shared": statistics.median(shared)}


class _NoGen:
    """The Gen backend a Guard must have; never asked here (the Stream model judges the stream)."""

    name = "no-gen"

    def classify(self, conversations, *, timeout=None):
        raise AssertionError("the Gen backend is not used when a Stream model exists")

    async def aclassify(self, conversations, *, timeout=None):
        raise AssertionError("the Gen backend is not used when a Stream model exists")


def _monitor_overhead(stream, torch) -> float:
    """Per-chunk cost of StreamMonitor.feed with the model swapped for an instant stand-in (best of 5, us)."""
    from concurrent.futures import Future

    from qwenguard.core import CATEGORIES, Guard, Policy, StreamMonitor
    from qwenguard.core.backends.stream_batching import StepResult

    class InstantBatcher:  # answers every step at once with zero logits of the right shape
        steps_run = forwards_run = 0

        def submit(self, step):
            n = len(step.ids)
            future: Future = Future()
            future.set_result(
                [
                    StepResult([[0.0] * 11] * n)
                    if step.heads == "response"
                    else StepResult(query=[0.0] * 12)
                    if step.heads == "query"
                    else StepResult()
                ]
            )
            step.cache.length += n
            return future

        def close(self):
            pass

    real, stream.batcher = stream.batcher, InstantBatcher()
    try:
        guard = Guard(_NoGen(), policy=Policy.strict(ignore_categories=CATEGORIES), stream_backend=stream)
        text = "The capital of France is Paris, and the Eiffel Tower is in Paris. " * 30
        chunks = [text[i : i + 4] for i in range(0, len(text), 4)]
        runs = []
        for _ in range(5):
            monitor = StreamMonitor(guard, "Tell me about Paris.", screen_prompt=False)
            start = time.perf_counter()
            for chunk in chunks:
                monitor.feed(chunk)
            monitor.finish()
            runs.append((time.perf_counter() - start) / len(chunks) * 1e6)
        return min(runs)
    finally:
        stream.batcher = real


def main(argv: list[str] | None = None) -> int:
    import torch
    from qwenguard.core.backends.transformers_stream import TransformersStream

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tokens", type=int, default=1000)
    parser.add_argument("--shape", choices=sorted(SHAPES), default=None)
    parser.add_argument(
        "--checkpoint", default=None, help="a Qwen3Guard-Stream checkpoint directory instead of random weights"
    )
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5, help="full-prefix forwards timed per point")
    parser.add_argument("--samples", type=int, default=40, help="single-token feeds timed per point")
    parser.add_argument("--sessions", type=int, default=16, help="concurrent sessions")
    parser.add_argument("--per-session", type=int, default=48, help="tokens each concurrent session feeds")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds of 1 vs N sessions")
    args = parser.parse_args(argv)

    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    torch.set_num_threads(args.threads)
    if args.checkpoint:
        stream = TransformersStream.load(args.checkpoint, device=device, dtype=dtype)
        model, label = stream.model, args.checkpoint
    else:
        shape_name = args.shape or ("0.6b" if device == "cuda" else "cpu")
        model = _model(SHAPES[shape_name], device, dtype)
        stream = TransformersStream(model, _tokenizer(), name=f"random-{shape_name}")
        label = f"random Qwen3Guard-Stream, shape {shape_name}"
    params = sum(p.numel() for p in model.parameters())
    print(
        f"model: {label} ({params / 1e6:.0f}M params), {device}, {dtype}, {torch.get_num_threads()} threads", flush=True
    )

    gen = torch.Generator().manual_seed(1)
    vocab = int(model.config.vocab_size)
    n = args.tokens
    tokens = torch.randint(10, min(vocab, 150000), (n + 2 * args.samples + 10,), generator=gen).tolist()
    prompt = "How can I make a bomb at home? Please answer in detail, step by step."
    # Two sessions measured alternately, so that load from other processes hits both alike: one near
    # token 10, one near token N.
    early, late = stream.open_session(prompt), stream.open_session(prompt)
    prompt_len = len(early._prefix)
    early.feed_tokens(tokens[:10])
    for i in range(0, n, 64):  # bring the late session to token N quickly, in chunks
        late.feed_tokens(tokens[i : min(i + 64, n)])
    late_pos = late.scored
    t_early: list[float] = []
    t_late: list[float] = []
    for k in range(args.samples):
        for session, sink in ((early, t_early), (late, t_late)):
            _sync(device)
            start = time.perf_counter()
            session.feed_tokens([tokens[n + k]])
            _sync(device)
            sink.append(time.perf_counter() - start)
    early.close()
    late.close()

    def full_prefix(count: int) -> float:
        with torch.inference_mode():
            ids = torch.tensor([early._prefix + tokens[:count]], device=device)
            start = time.perf_counter()
            model(input_ids=ids)
            _sync(device)
            return time.perf_counter() - start

    re_early, re_late = [], []
    for _ in range(args.repeats):
        re_early.append(full_prefix(10))
        re_late.append(full_prefix(n))
    at10, atn = statistics.median(t_early), statistics.median(t_late)
    re10, ren = statistics.median(re_early), statistics.median(re_late)
    ms = 1000.0
    missed: list[str] = []

    def target(name: str, ok: bool) -> str:
        if not ok:
            missed.append(name)
        return "ok" if ok else "MISSED"

    print(f"prompt: {prompt_len} tokens; {args.samples} single-token feeds per point (medians)")
    print(f"session (KV cache), one token at token 10:    {at10 * ms:8.2f} ms")
    print(f"session (KV cache), one token at token {late_pos}:    {atn * ms:8.2f} ms")
    print(f"prefix re-run (shipped remote code) at token 10:   {re10 * ms:8.2f} ms")
    print(f"prefix re-run (shipped remote code) at token {n}: {ren * ms:8.2f} ms")
    print(
        f"ratio token {late_pos} / token 10 (session):      {atn / at10:6.2f}x   (target <= 1.3x: "
        f"{target('flat per-token cost', atn / at10 <= 1.3)})"
    )
    print(
        f"prefix re-run / session at token {n}:          {ren / atn:6.1f}x   (target >= 20x: "
        f"{target('cheaper than a prefix re-run', ren / atn >= 20)})"
    )

    result = _concurrent(stream, prompt, tokens, args.sessions, args.per_session, args.rounds)
    ratio = result["many"] / result["single"]
    print(f"1 session alone:            {result['single']:9.1f} tokens/s (median of {args.rounds} interleaved rounds)")
    print(
        f"{args.sessions} concurrent sessions:     {result['many']:9.1f} tokens/s in all "
        f"({result['shared']:.1f} sessions per forward)"
    )
    print(
        f"aggregate {args.sessions} sessions / 1 session:  {ratio:6.2f}x   (target >= 4x: "
        f"{target('16 concurrent sessions >= 4x one', ratio >= 4)})"
    )

    overhead = _monitor_overhead(stream, torch)
    print(
        f"monitor overhead per chunk, model forward excluded (4-char chunks, best of 5): {overhead:.1f} us   "
        f"(target <= 50 us: {target('monitor overhead', overhead <= 50)})"
    )
    stream.close()
    if missed:
        print("missed: " + "; ".join(missed))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
