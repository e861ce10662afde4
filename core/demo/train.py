"""Train the embedded demo guard: a tiny Qwen3-architecture Qwen3Guard-Gen look-alike, from scratch, on CPU.

    python -m qwenguard.core.demo.train gen [--out DIR | --replace-shipped] [--steps N] [--seed S]
    python -m qwenguard.core.demo.train gen --init-from core/demo/gen [--steps 400] [--boost 3]   # fine-tune

Output: a new directory ``runs/demo-gen-<date>-<time>/`` by default (with the run's ``sample.jsonl``); the shipped
checkpoint ``core/demo/gen`` (and ``core/demo/data/sample.jsonl``) only with ``--replace-shipped``, or when ``--out``
names it. See docs/demo.md.

Steps: generate the synthetic data (`qwenguard.core.demo.data`), train the byte-level BPE tokenizer on it
(rendered prompts included, `qwenguard.core.demo.tokenizer`), train a `transformers.Qwen3ForCausalLM` with the
loss on the answer tokens only, save it in bfloat16 with the tokenizer and chat template, then decode a held-out
split greedily through the saved checkpoint (exactly as inference does) and write ``metrics.json``.

``--init-from DIR`` fine-tunes an existing demo Gen checkpoint instead: its tokenizer and weights are reused (no
tokenizer training; the tokenizer files are copied unchanged, so a Stream checkpoint built on it still matches), the
learning rate is lower (`FINETUNE_LR`) and the families added after it (`data.EVERYDAY_ADDED`) are drawn `--boost`
times as often in the full mix.

Everything is seeded (data, batch order, initialisation; two CPU threads), so a rerun with the same arguments
and the same library versions (recorded in ``metrics.json``) reproduces the checkpoint byte for byte. Nothing but
the evaluation sample is written as data: the training set is regenerated from the seed.

The template's fixed text is four added tokens of the demo tokenizer (`tokenizer.TEMPLATE_TOKENS`), so
most sequences are short; the longest (documents, lists of questions) fill the 512-token context.
"""

from __future__ import annotations

import os

# OpenMP threads that spin while waiting lose ~10x when other processes share the cores; passive waits keep
# training (and its timing) sane on a busy machine. Must be set before torch loads its OpenMP runtime.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse
import json
import math
import random
import shutil
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import DEMO_GEN_DIR, DEMO_SAMPLE_PATH
from .data import BASE_MIX, Example, generate, heldout_set, training_set, write_sample
from .data.mix import EVERYDAY_ADDED, boosted_mix
from .output import check_replaceable, init_record, library_versions, resolve_out_dir
from .tokenizer import SPECIAL_TOKENS, THINK_TOKENS, train_tokenizer

__all__ = ["MODEL_SHAPE", "TrainSettings", "train_gen", "evaluate", "greedy_answers", "main"]

#: The demo model's shape: ~1.3M parameters, ~2.6 MB in bfloat16.
MODEL_SHAPE: dict[str, Any] = {
    "hidden_size": 128,
    "intermediate_size": 384,
    "num_hidden_layers": 4,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 32,
    "tie_word_embeddings": True,
    # The context the model is trained to read, whole: training inputs fill it (long documents, lists of questions),
    # and a backend's windows are sized to it, so no window is longer than what the model saw.
    "max_position_embeddings": 512,
    "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0},
    "rms_norm_eps": 1e-6,
}
SAVE_DTYPE = "bfloat16"  # what the official Qwen3Guard checkpoints ship


@dataclass(frozen=True)
class TrainSettings:
    """Knobs of one training run (the defaults are the shipped checkpoint's; timings in docs/demo.md)."""

    steps: int = 1200
    seed: int = 0
    train_size: int = 36000
    heldout_size: int = 800
    lr: float = 5e-3
    warmup: int = 50
    weight_decay: float = 0.1
    batch_tokens: int = 4000  # padded tokens per batch (~55 examples)
    threads: int = 2  # results reproduce bit for bit with the same thread count
    init_from: str | None = None  # fine-tune this demo Gen checkpoint (tokenizer and weights) instead of from scratch
    boost: float = 1.0  # weight multiplier of the families in data.EVERYDAY_ADDED


#: Fine-tuning defaults (``--init-from``): a tenth of the from-scratch learning rate, a few hundred steps.
FINETUNE_LR = 5e-4
FINETUNE_STEPS = 400
FINETUNE_WARMUP = 20
FINETUNE_BOOST = 3.0
#: Tokenizer files a fine-tune copies unchanged from the checkpoint it starts from.
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja")


@dataclass
class _Encoded:
    mode: str
    prompt: list[int]
    answer: list[int]


def _log(msg: str) -> None:
    print(f"[demo.train {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def _tokenizer_corpus(examples: Sequence[Example]) -> Iterator[str]:
    """Text the BPE learns from: the contents, the answers and (every fourth example) the rendered instruction."""
    from ..formats.prompts import render_conversation

    for i, ex in enumerate(examples):
        for message in ex.messages:
            yield message["content"]
        yield ex.answer
        if i % 4 == 0:
            yield render_conversation(ex.messages)


def _encode(tokenizer: Any, examples: Sequence[Example], max_len: int) -> list[_Encoded]:
    """Prompt ids through the library's inference path (`ConversationEncoder`), plus the answer ids and ``<|im_end|>``.

    Content holding control-token strings (``<|im_end|>`` ...) is also encoded the two ways a plain transformers
    user keeps them as text (``apply_chat_template(..., sanitize_control_tokens=True)`` and
    ``split_special_tokens=True``), which cut them into different pieces: the guard flags the attempt however
    it was tokenized.
    """
    from ..formats.encoding import ConversationEncoder

    encoder = ConversationEncoder(tokenizer)
    eos = tokenizer.convert_tokens_to_ids("<|im_end|>")
    im_start = tokenizer.convert_tokens_to_ids("<|im_start|>")
    tail = "<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"
    controls = [str(t) for t in tokenizer.added_tokens_decoder.values()]
    out: list[_Encoded] = []
    dropped = 0
    for ex in examples:
        answer = tokenizer(ex.answer, add_special_tokens=False)["input_ids"] + [eos]
        variants = [encoder.encode(ex.messages)]
        if any(c in m["content"] for m in ex.messages for c in controls):
            body = tokenizer.apply_chat_template(ex.messages, tokenize=False)[len("<|im_start|>") : -len(tail)]
            variants.append(
                list(
                    tokenizer.apply_chat_template(
                        ex.messages, tokenize=True, sanitize_control_tokens=True, return_dict=False
                    )
                )
            )
            variants.append(
                [im_start]
                + tokenizer(body, add_special_tokens=False, split_special_tokens=True)["input_ids"]
                + tokenizer(tail, add_special_tokens=False)["input_ids"]
            )
            variants = [v for i, v in enumerate(variants) if v not in variants[:i]]
        for prompt in variants:
            if len(prompt) + len(answer) > max_len:
                dropped += 1
                continue
            out.append(_Encoded(ex.mode, prompt, answer))
    if dropped:
        _log(f"dropped {dropped} sequences longer than {max_len} tokens")
    return out


def _batches(encoded: list[_Encoded], batch_tokens: int) -> list[list[_Encoded]]:
    """Length-sorted batches of at most `batch_tokens` padded tokens each."""
    items = sorted(encoded, key=lambda e: len(e.prompt) + len(e.answer))
    batches: list[list[_Encoded]] = []
    i = 0
    while i < len(items):
        j, width = i, 0
        while j < len(items) and (j - i + 1) * max(width, len(items[j].prompt) + len(items[j].answer)) <= batch_tokens:
            width = max(width, len(items[j].prompt) + len(items[j].answer))
            j += 1
        j = max(j, i + 1)
        batches.append(items[i:j])
        i = j
    return batches


def _train(model: Any, encoded: list[_Encoded], pad_id: int, settings: TrainSettings) -> dict[str, Any]:
    """AdamW with warmup and cosine decay; loss on the answer tokens only; seeded batch order."""
    import torch

    batches = _batches(encoded, settings.batch_tokens)
    rng = random.Random(settings.seed)
    opt = torch.optim.AdamW(model.parameters(), lr=settings.lr, betas=(0.9, 0.98), weight_decay=settings.weight_decay)

    def lr_at(step: int) -> float:
        warm = min(1.0, (step + 1) / settings.warmup)
        return settings.lr * warm * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(1.0, step / settings.steps))))

    model.train()
    t0 = time.time()
    losses: list[float] = []
    order: list[int] = []
    epochs = 0
    for step in range(settings.steps):
        if not order:
            order = list(range(len(batches)))
            rng.shuffle(order)
            epochs += 1
        batch = batches[order.pop()]
        width = max(len(e.prompt) + len(e.answer) for e in batch)
        # Right padding: under the causal mask no real token ever sees a pad, so no attention mask is needed.
        ids = torch.full((len(batch), width), pad_id)
        rows, cols, targets = [], [], []
        for r, e in enumerate(batch):
            seq = e.prompt + e.answer
            ids[r, : len(seq)] = torch.tensor(seq)
            for j, tok in enumerate(e.answer):  # answer token j is predicted at the position before it
                rows.append(r)
                cols.append(len(e.prompt) + j - 1)
                targets.append(tok)
        for group in opt.param_groups:
            group["lr"] = lr_at(step)
        hidden = model.model(input_ids=ids).last_hidden_state
        # The loss is on the answer tokens only, so only their positions go through the LM head.
        logits = model.lm_head(hidden[torch.tensor(rows), torch.tensor(cols)])
        loss = torch.nn.functional.cross_entropy(logits, torch.tensor(targets))
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        losses.append(loss.item())
        if step % 100 == 0 or step == settings.steps - 1:
            recent = sum(losses[-100:]) / len(losses[-100:])
            _log(
                f"step {step:5d}/{settings.steps}  epoch {epochs}  loss {recent:.4f}  lr {lr_at(step):.2e}  {time.time() - t0:6.1f}s"
            )
    model.eval()
    return {
        "steps": settings.steps,
        "epochs_started": epochs,
        "batches_per_epoch": len(batches),
        "final_loss": round(sum(losses[-100:]) / len(losses[-100:]), 5),
        "seconds": round(time.time() - t0, 1),
    }


def greedy_answers(
    model: Any,
    tokenizer: Any,
    conversations: Sequence[Sequence[dict[str, str]]],
    batch_size: int = 32,
    max_new_tokens: int = 24,
) -> list[str]:
    """Greedy answers for conversations, batched with left padding (the same path as local inference)."""
    import torch

    from ..formats.encoding import ConversationEncoder

    pad = tokenizer.pad_token_id
    encoder = ConversationEncoder(tokenizer)
    encoded = [encoder.encode(c) for c in conversations]
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]))
    answers: list[str] = [""] * len(encoded)
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        width = max(len(encoded[i]) for i in idx)
        ids = torch.full((len(idx), width), pad, dtype=torch.long)
        mask = torch.zeros((len(idx), width), dtype=torch.long)
        for row, i in enumerate(idx):
            seq = encoded[i]
            ids[row, width - len(seq) :] = torch.tensor(seq)
            mask[row, width - len(seq) :] = 1
        with torch.no_grad():
            out = model.generate(
                input_ids=ids,
                attention_mask=mask,
                do_sample=False,
                max_new_tokens=max_new_tokens,
                pad_token_id=pad,
                eos_token_id=tokenizer.eos_token_id,
            )
        for row, i in enumerate(idx):
            answers[i] = tokenizer.decode(out[row, width:], skip_special_tokens=True)
    return answers


def evaluate(model: Any, tokenizer: Any, examples: Sequence[Example]) -> dict[str, Any]:
    """Held-out accuracy (risk, category, refusal) overall, per stage and per family, parsed like the library does."""
    from ..errors import VerdictParseError
    from ..formats.prompts import parse_verdict

    answers = greedy_answers(model, tokenizer, [ex.messages for ex in examples])
    groups: dict[str, dict[str, list[int]]] = defaultdict(lambda: defaultdict(list))
    failures: list[dict[str, Any]] = []
    for ex, text in zip(examples, answers):
        keys = ["overall", f"stage:{ex.stage}", f"family:{'.'.join(ex.source.split('.')[:2])}"]
        try:
            v = parse_verdict(text, mode=ex.mode)
            risk_ok = v.risk.value == ex.risk
            cat_ok = list(v.categories) == list(ex.categories)
            ref_ok = None if ex.refusal is None else v.refusal == ex.refusal
            binary_ok = (v.risk.value == "safe") == (ex.risk == "safe")
            parsed = 1
        except VerdictParseError:
            risk_ok = cat_ok = binary_ok = False
            ref_ok = None if ex.refusal is None else False
            parsed = 0
        for k in keys:
            g = groups[k]
            g["n"].append(1)
            g["parsed"].append(parsed)
            g["risk"].append(int(risk_ok))
            g["category"].append(int(cat_ok))
            g["safe_vs_not"].append(int(binary_ok))
            if ref_ok is not None:
                g["refusal"].append(int(ref_ok))
        if not (risk_ok and cat_ok and ref_ok in (None, True)) and len(failures) < 40:
            failures.append(
                {"source": ex.source, "text": ex.messages[-1]["content"][:200], "expected": ex.answer, "got": text}
            )

    def summary(g: dict[str, list[int]]) -> dict[str, Any]:
        out: dict[str, Any] = {"n": len(g["n"])}
        for k in ("risk", "category", "refusal", "safe_vs_not", "parsed"):
            if g.get(k):
                out[f"{k}_accuracy" if k != "parsed" else "parse_rate"] = round(sum(g[k]) / len(g[k]), 4)
        return out

    return {
        "overall": summary(groups["overall"]),
        "by_stage": {k.split(":", 1)[1]: summary(v) for k, v in sorted(groups.items()) if k.startswith("stage:")},
        "by_family": {k.split(":", 1)[1]: summary(v) for k, v in sorted(groups.items()) if k.startswith("family:")},
        "failures": failures,
    }


def train_gen(
    out_dir: Path | str | None = None, settings: TrainSettings = TrainSettings(), write_sample_file: bool = True
) -> dict[str, Any]:
    """Build data, tokenizer and model; save the checkpoint and ``metrics.json`` into `out_dir` (default: a new
    ``runs/demo-gen-<date>-<time>``); return the metrics. The evaluation sample goes to ``<out_dir>/sample.jsonl``,
    or to the shipped ``core/demo/data/sample.jsonl`` when `out_dir` is the shipped checkpoint."""
    import torch
    from transformers import Qwen3Config, Qwen3ForCausalLM

    out_dir = resolve_out_dir(out_dir, kind="gen", shipped=DEMO_GEN_DIR, replace_shipped=False)
    check_replaceable(out_dir)  # before the minutes of training, not after
    started = time.time()
    torch.set_num_threads(settings.threads)
    torch.manual_seed(settings.seed)
    random.seed(settings.seed)

    mix = boosted_mix(settings.boost) if settings.boost != 1.0 else None
    train_examples = training_set(settings.train_size, seed=settings.seed, families=mix)
    held = heldout_set(settings.heldout_size, seed=settings.seed)
    # The same held-out seed on the mix without the families added for the streaming and composite claims: figures
    # comparable with checkpoints trained before them.
    held_base = generate(settings.heldout_size, seed=settings.seed + 1000, split="heldout", families=BASE_MIX)
    _log(f"data: {len(train_examples)} training, {len(held)} held-out examples")

    init = Path(settings.init_from) if settings.init_from else None
    if init is not None:
        from transformers import AutoTokenizer

        if not (init / "config.json").exists():
            raise FileNotFoundError(f"--init-from {init}: no demo Gen checkpoint there (config.json is missing)")
        tokenizer = AutoTokenizer.from_pretrained(str(init))
    else:
        tokenizer = train_tokenizer(
            _tokenizer_corpus(train_examples), model_max_length=MODEL_SHAPE["max_position_embeddings"]
        )
    special_ids = {t: tokenizer.convert_tokens_to_ids(t) for t in (*SPECIAL_TOKENS, *THINK_TOKENS)}
    _log(f"tokenizer: {len(tokenizer)} ids, special {special_ids}")

    max_len = MODEL_SHAPE["max_position_embeddings"]
    encoded = _encode(tokenizer, train_examples, max_len)
    _log(f"encoded {len(encoded)} sequences, longest {max(len(e.prompt) + len(e.answer) for e in encoded)} tokens")

    if init is not None:
        model = Qwen3ForCausalLM.from_pretrained(str(init), dtype=torch.float32)
        shape = {k: getattr(model.config, k) for k in MODEL_SHAPE if k != "rope_parameters"}
        if shape != {k: v for k, v in MODEL_SHAPE.items() if k != "rope_parameters"}:
            raise ValueError(f"--init-from {init}: not the demo shape {MODEL_SHAPE} (got {shape})")
    else:
        config = Qwen3Config(
            vocab_size=len(tokenizer),
            bos_token_id=special_ids["<|endoftext|>"],
            eos_token_id=special_ids["<|im_end|>"],
            pad_token_id=special_ids["<|endoftext|>"],
            **MODEL_SHAPE,
        )
        model = Qwen3ForCausalLM(config)
    n_params = sum(p.numel() for p in model.parameters())
    _log(f"model: {n_params:,} parameters")
    train_info = _train(model, encoded, special_ids["<|endoftext|>"], settings)

    info = {
        **train_info,
        "seed": settings.seed,
        "train_examples": len(train_examples),
        "train_sequences": len(encoded),
        "heldout_examples": len(held),
        "lr": settings.lr,
        "warmup": settings.warmup,
        "init_from": init_record(init),
        "family_boost": {"families": list(EVERYDAY_ADDED), "boost": settings.boost} if mix else None,
        "total_seconds": round(time.time() - started, 1),
        "torch_threads": settings.threads,
        "versions": library_versions(),
    }
    metrics = save_checkpoint(model, tokenizer, held, out_dir, info, base_mix=held_base, tokenizer_from=init)
    if write_sample_file:
        shipped = out_dir.resolve() == DEMO_GEN_DIR.resolve()
        write_sample(DEMO_SAMPLE_PATH if shipped else out_dir / "sample.jsonl")
    _log(f"wrote {out_dir} in {time.time() - started:.0f}s")
    return metrics


def save_checkpoint(
    model: Any,
    tokenizer: Any,
    held: Sequence[Example],
    out_dir: Path | str,
    train_info: dict[str, Any],
    base_mix: Sequence[Example] = (),
    tokenizer_from: Path | None = None,
) -> dict[str, Any]:
    """Save model (bfloat16), tokenizer and generation config into `out_dir`, score the saved checkpoint on the
    held-out split (and on `base_mix`, the held-out split of the earlier family mix) through the normal loading
    path, and write ``metrics.json``. `tokenizer_from`: a checkpoint whose tokenizer files are copied unchanged (a
    fine-tune keeps its starting point's tokenizer byte for byte)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    special_ids = {t: tokenizer.convert_tokens_to_ids(t) for t in (*SPECIAL_TOKENS, *THINK_TOKENS)}
    n_params = sum(p.numel() for p in model.parameters())
    out_dir = Path(out_dir)
    check_replaceable(out_dir)
    with tempfile.TemporaryDirectory(prefix="demo-gen-") as tmp:
        stage = Path(tmp) / "gen"
        model.generation_config = GenerationConfig(
            do_sample=False,
            max_new_tokens=32,
            eos_token_id=special_ids["<|im_end|>"],
            pad_token_id=special_ids["<|endoftext|>"],
            bos_token_id=special_ids["<|endoftext|>"],
        )
        model.to(getattr(torch, SAVE_DTYPE)).save_pretrained(stage)
        tokenizer.save_pretrained(stage)
        _retag_tokenizer(stage)
        if tokenizer_from is not None:
            for name in TOKENIZER_FILES:
                if (tokenizer_from / name).exists():
                    shutil.copy(tokenizer_from / name, stage / name)

        # Score the checkpoint as it was saved, through the normal loading path. Held-out examples are scored
        # whole (a backend windows longer inputs), so keep those that fit the context with the answer.
        saved = AutoModelForCausalLM.from_pretrained(stage, dtype=torch.float32)
        saved_tok = AutoTokenizer.from_pretrained(stage)
        from ..formats.encoding import ConversationEncoder

        fits = ConversationEncoder(saved_tok)
        context = MODEL_SHAPE["max_position_embeddings"]
        held = [ex for ex in held if len(fits.encode(ex.messages)) + 24 <= context]
        base_mix = [ex for ex in base_mix if len(fits.encode(ex.messages)) + 24 <= context]
        t_eval = time.time()
        metrics = evaluate(saved, saved_tok, held)
        _log(f"held-out: {json.dumps(metrics['overall'])} ({time.time() - t_eval:.0f}s)")
        for stage_name, s in metrics["by_stage"].items():
            _log(f"  {stage_name:12s} {json.dumps(s)}")
        base = evaluate(saved, saved_tok, base_mix) if base_mix else None
        if base:
            _log(f"held-out, base mix: {json.dumps(base['overall'])}")
        metrics = {
            "heldout": metrics,
            **({"heldout_base_mix": base} if base else {}),
            "training": train_info,
            "model": {
                "parameters": n_params,
                "dtype": SAVE_DTYPE,
                **{k: v for k, v in MODEL_SHAPE.items()},
                "vocab_size": len(tokenizer),
                "special_token_ids": special_ids,
            },
        }
        (stage / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
        if out_dir.exists():
            shutil.rmtree(out_dir)
        shutil.copytree(stage, out_dir)
    return metrics


def _retag_tokenizer(directory: Path) -> None:
    """Name the tokenizer class as Qwen3 checkpoints do (``Qwen2Tokenizer``), which transformers 4.x and 5.x both load.

    transformers 5 saves a tokenizer built from a `tokenizers` object as ``TokenizersBackend``, a class 4.x lacks.
    """
    path = directory / "tokenizer_config.json"
    cfg = json.loads(path.read_text())
    cfg["tokenizer_class"] = "Qwen2Tokenizer"
    cfg.setdefault("add_prefix_space", False)
    cfg.setdefault("errors", "replace")
    cfg["split_special_tokens"] = False
    cfg["unk_token"] = None  # like Qwen3: byte-level BPE needs no unknown token
    for key in ("is_local", "local_files_only"):  # load-time bookkeeping, not tokenizer settings
        cfg.pop(key, None)
    path.write_text(json.dumps(cfg, indent=2) + "\n")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m qwenguard.core.demo.train", description=__doc__.split("\n\n")[0])
    parser.add_argument("which", choices=["gen"], help="which demo checkpoint to train (the Stream demo: train_stream)")
    where = parser.add_mutually_exclusive_group()
    where.add_argument(
        "--out",
        type=Path,
        default=None,
        help="output directory (default: a new runs/demo-gen-<date>-<time> in the current directory)",
    )
    where.add_argument(
        "--replace-shipped",
        action="store_true",
        help=f"write over the shipped checkpoint {DEMO_GEN_DIR} and the shipped {DEMO_SAMPLE_PATH.name}",
    )
    parser.add_argument(
        "--init-from",
        type=Path,
        default=None,
        help="fine-tune this demo Gen checkpoint (its tokenizer and weights) instead of training from scratch",
    )
    parser.add_argument(
        "--steps", type=int, default=None, help=f"default {TrainSettings.steps} ({FINETUNE_STEPS} with --init-from)"
    )
    parser.add_argument(
        "--lr", type=float, default=None, help=f"default {TrainSettings.lr} ({FINETUNE_LR} with --init-from)"
    )
    parser.add_argument(
        "--boost",
        type=float,
        default=None,
        help=f"draw the families added last (data.EVERYDAY_ADDED) this many times as often "
        f"(default 1; {FINETUNE_BOOST} with --init-from)",
    )
    parser.add_argument("--seed", type=int, default=TrainSettings.seed)
    parser.add_argument("--train-size", type=int, default=TrainSettings.train_size)
    parser.add_argument("--heldout-size", type=int, default=TrainSettings.heldout_size)
    parser.add_argument(
        "--threads",
        type=int,
        default=TrainSettings.threads,
        help="torch threads (the result is bit for bit reproducible for a given thread count)",
    )
    parser.add_argument("--no-sample", action="store_true", help="do not write the evaluation sample")
    args = parser.parse_args(argv)
    out = resolve_out_dir(args.out, kind="gen", shipped=DEMO_GEN_DIR, replace_shipped=args.replace_shipped)
    tune = args.init_from is not None
    settings = TrainSettings(
        steps=args.steps if args.steps is not None else FINETUNE_STEPS if tune else TrainSettings.steps,
        lr=args.lr if args.lr is not None else FINETUNE_LR if tune else TrainSettings.lr,
        warmup=FINETUNE_WARMUP if tune else TrainSettings.warmup,
        boost=args.boost if args.boost is not None else FINETUNE_BOOST if tune else 1.0,
        init_from=str(args.init_from) if tune else None,
        seed=args.seed,
        train_size=args.train_size,
        heldout_size=args.heldout_size,
        threads=args.threads,
    )
    _log(f"writing to {out}")
    train_gen(out, settings, write_sample_file=not args.no_sample)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
