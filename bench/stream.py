"""Benchmark: per-token cost of a Qwen3Guard-Stream session (KV cache) vs re-running the whole prefix.

    python bench/stream.py [--tokens 1000] [--shape cpu|0.6b] [--threads 2]

Builds a random-weight Stream model of a realistic shape (CPU default: hidden 512, 8 layers; ``0.6b``:
the Qwen3Guard-Stream-0.6B shape, picked automatically on a GPU), opens a `StreamSession` after a short
prompt and feeds assistant tokens one at a time. Prints the median cost of one token at token 10 and at
token N (default 1000), the cost of one full forward over the prompt plus N tokens (what the shipped
remote code pays per token), and their ratios. Also prints the monitor's own overhead per chunk
(re-tokenization + debounce + release bookkeeping, no model).

Targets (issue 3): cost at token 1000 within 1.3x of token 10; at least 20x cheaper than a prefix re-run.
This is a benchmark, not a test: numbers depend on the machine.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

SHAPES = {
    "cpu": dict(hidden_size=512, intermediate_size=1536, num_hidden_layers=8, num_attention_heads=8,
                num_key_value_heads=4, head_dim=64, vocab_size=32000, guard_inner_size=256),
    "0.6b": dict(hidden_size=1024, intermediate_size=3072, num_hidden_layers=28, num_attention_heads=16,
                 num_key_value_heads=8, head_dim=128, vocab_size=151936, guard_inner_size=512),
}
_CORPUS = ["The capital of France is Paris. Mix ammonium nitrate with fuel oil. Héllo wörld 日本語 🙂"] * 50


def _tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    special = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<think>", "</think>"]
    tok.train_from_iterator(_CORPUS, trainers.BpeTrainer(vocab_size=400, special_tokens=special,
                                                         initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>")


def _model(shape: dict, device: str, dtype):
    import torch
    from transformers import Qwen3Config

    from qwenguard.core.backends.transformers_stream import build_stream_model

    risk = {"0": "Safe", "1": "Unsafe", "2": "Controversial"}
    cats = {str(i): n for i, n in enumerate(["Violent", "Sexual Content", "Self-Harm", "Political", "PII",
                                             "Copyright", "Illegal Acts", "Unethical", "Jailbreak"])}
    config = Qwen3Config(**shape, max_position_embeddings=8192, rms_norm_eps=1e-6, num_risk_level=3, num_category=8,
                         num_query_risk_level=3, num_query_category=9, response_risk_level_map=risk,
                         query_risk_level_map=risk, query_category_map=cats,
                         response_category_map={k: v for k, v in cats.items() if int(k) < 8})
    torch.manual_seed(0)
    return build_stream_model(config).to(device=device, dtype=dtype).eval()


def _sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def main(argv: list[str] | None = None) -> int:
    import torch

    from qwenguard.core.backends.transformers_stream import TransformersStream

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tokens", type=int, default=1000)
    parser.add_argument("--shape", choices=sorted(SHAPES), default=None)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5, help="full-prefix forwards timed per point")
    parser.add_argument("--samples", type=int, default=40, help="single-token feeds timed per point")
    args = parser.parse_args(argv)

    device = "cuda" if torch.cuda.is_available() else "cpu"
    shape_name = args.shape or ("0.6b" if device == "cuda" else "cpu")
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    torch.set_num_threads(args.threads)
    model = _model(SHAPES[shape_name], device, dtype)
    stream = TransformersStream(model, _tokenizer(), name=f"random-{shape_name}")
    params = sum(p.numel() for p in model.parameters())
    print(f"model: random Qwen3Guard-Stream, shape {shape_name} ({params / 1e6:.0f}M params), {device}, {dtype}, "
          f"{torch.get_num_threads()} threads", flush=True)

    gen = torch.Generator().manual_seed(1)
    vocab = SHAPES[shape_name]["vocab_size"]
    n = args.tokens
    tokens = torch.randint(10, vocab, (n + 2 * args.samples + 10,), generator=gen).tolist()
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
    print(f"prompt: {prompt_len} tokens; {args.samples} single-token feeds per point (medians)")
    print(f"session (KV cache), one token at token 10:    {at10 * ms:8.2f} ms")
    print(f"session (KV cache), one token at token {late_pos}:    {atn * ms:8.2f} ms")
    print(f"prefix re-run (shipped remote code) at token 10:   {re10 * ms:8.2f} ms")
    print(f"prefix re-run (shipped remote code) at token {n}: {ren * ms:8.2f} ms")
    print(f"ratio token {late_pos} / token 10 (session):      {atn / at10:6.2f}x   (target <= 1.3x)")
    print(f"prefix re-run / session at token {n}:          {ren / atn:6.1f}x   (target >= 20x)")

    # The monitor's own per-chunk cost: everything StreamMonitor.feed does except the model forward
    # (re-tokenization, tensors in and out, head decoding, debounce, release), on 4-char chunks like
    # LLM deltas. The model is swapped for a stand-in that returns logits of the right shape at once.
    from qwenguard.core import CATEGORIES, Guard, Policy, StreamMonitor

    class _InstantModel:
        def __init__(self, real):
            self.device, self.config = real.device, real.config

        def __call__(self, input_ids, **kwargs):
            n = input_ids.shape[1]
            return {"risk_level_logits": torch.zeros(1, n, 3), "category_logits": torch.zeros(1, n, 8),
                    "query_risk_level_logits": torch.zeros(1, n, 3), "query_category_logits": torch.zeros(1, n, 9)}

    stream.model = _InstantModel(model)
    guard = Guard(backend=None, policy=Policy.strict(ignore_categories=CATEGORIES), stream_backend=stream)
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
    print(f"monitor overhead per chunk, model forward excluded ({len(chunks)} chunks of 4 chars, best of 5): "
          f"{min(runs):.1f} us   (target <= 50 us)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
