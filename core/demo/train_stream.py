"""Train the demo Qwen3Guard-Stream look-alike (official checkpoint layout).

    python -m qwenguard.core.demo.train_stream [--gen DIR] [--out DIR | --replace-shipped] [--steps N] [--seed S]
    python -m qwenguard.core.demo.train_stream --init-from core/demo/stream [--gen DIR] [--steps 300]   # fine-tune

Output: a new directory ``runs/demo-stream-<date>-<time>/`` by default; the shipped ``core/demo/stream`` only with
``--replace-shipped``, or when ``--out`` names it. ``--gen`` is the Gen checkpoint to start from (default: the
shipped one; pass the directory of a Gen run to rebuild both). See docs/demo.md.

Starts from the demo Gen checkpoint (``core/demo/gen/``, trained by ``python -m qwenguard.core.demo.train
gen``): its tokenizer files are copied and its Qwen3 backbone initialises the Stream backbone, then the
backbone and the two head paths are trained on token-level labels from the synthetic set
(`qwenguard.core.demo.data`):

- assistant-final examples (responses, tool calls): every content token before the harm onset is safe; from
  that token to the end of the answer, tokens carry the example's risk and category (a response is unsafe *from*
  the token where unsafe content starts, as the official rule reads it); safe answers are safe throughout. The
  onset is the first word of ``unsafe_span`` that harmless text never uses (`qwenguard.core.demo.data.onset`):
  "Sure. Mix" is safe, "Sure. Mix ammonium" is not, so the heads do not learn to flag the first word of every new
  sentence. The response heads learn these.
- user-final examples (prompts, tool results, documents): the query heads learn the example's risk and
  category at the ``<|im_end|>`` that closes the user turn.

``--init-from DIR`` fine-tunes an existing demo Stream checkpoint instead (backbone and heads); ``--gen`` then only
supplies the tokenizer files, which must be the ones that checkpoint was trained with. Lower learning rates
(`FINETUNE_LR`, `FINETUNE_BACKBONE_LR`) and the families added last (`data.EVERYDAY_ADDED`) drawn ``--boost`` times as
often.

Ids come from `StreamEncoder`, the same code inference uses. The result is written by
`save_stream_checkpoint`: ``config.json`` (Qwen3 fields + ``guard_inner_size``, ``num_risk_level``,
``num_category``, ``num_query_risk_level``, ``num_query_category`` and the four label maps, with the model
card's category names), ``model.safetensors`` (official key names), the tokenizer files, and
``metrics.json`` (held-out token and stream-level results). Seeded; two CPU threads (timings in docs/demo.md).
"""

from __future__ import annotations

import os

# OpenMP threads that spin while waiting lose ~10x when other processes share the cores (see train.py). Must be set
# before torch loads its OpenMP runtime.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse
import json
import random
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import DEMO_GEN_DIR, DEMO_STREAM_DIR
from .data import BASE_MIX, Example, generate, heldout_set, training_set
from .data.mix import EVERYDAY_ADDED, boosted_mix
from .data.onset import harm_onset
from .output import check_replaceable, init_record, library_versions, resolve_out_dir

__all__ = ["StreamTrainSettings", "train_stream", "main", "RISK_MAP", "CATEGORY_MAP"]

#: Label maps written to config.json, as the model card prints them (index order of the heads).
RISK_MAP = {"0": "Safe", "1": "Unsafe", "2": "Controversial"}
CATEGORY_MAP = {
    "0": "Violent",
    "1": "Sexual Content",
    "2": "Self-Harm",
    "3": "Political",
    "4": "PII",
    "5": "Copyright",
    "6": "Illegal Acts",
    "7": "Unethical",
    "8": "Jailbreak",
}
_RISK_INDEX = {"safe": 0, "unsafe": 1, "controversial": 2}


@dataclass(frozen=True)
class StreamTrainSettings:
    # The shipped checkpoint's settings: 600 steps on 12,000 examples flagged harmful clauses later (docs/demo.md).
    steps: int = 1200
    seed: int = 0
    train_size: int = 24000
    heldout_size: int = 400
    lr: float = 2e-3
    backbone_lr: float = 5e-4
    warmup: int = 30
    batch_tokens: int = 4096
    max_len: int = 512
    guard_inner_size: int = 64
    threads: int = 2
    init_from: str | None = None  # fine-tune this demo Stream checkpoint (backbone and heads)
    boost: float = 1.0  # weight multiplier of the families in data.EVERYDAY_ADDED


#: Fine-tuning defaults (``--init-from``).
FINETUNE_STEPS = 300
FINETUNE_LR = 5e-4
FINETUNE_BACKBONE_LR = 2e-4
FINETUNE_BOOST = 2.0  # 3 (as for Gen) lost more Stream recall on the base mix (docs/demo.md)


@dataclass
class _Row:
    ids: list[int]
    risk: list[int]  # per position: response risk label, -100 = no loss
    cat: list[int]  # per position: response category label, -100 = no loss
    query_pos: int  # -1: no query label
    query_risk: int
    query_cat: int


def _log(msg: str) -> None:
    print(f"[train_stream] {msg}", file=sys.stderr, flush=True)


def _category_index(name: str | None) -> int:
    from ..backends.transformers_stream import category_name

    if name is None:
        return -100
    names = [category_name(v, int(k)) for k, v in CATEGORY_MAP.items()]
    return names.index(name)


def _encode(encoder: Any, example: Example, max_len: int) -> _Row | None:
    msgs = example.messages
    risk = _RISK_INDEX[example.risk]
    cat = _category_index(example.categories[0]) if example.categories and risk else -100
    if msgs[-1]["role"] == "user":
        prefix, user_end = encoder.encode_prompt(msgs)
        ids = prefix[: user_end + 1]
        if len(ids) > max_len:
            return None
        n = len(ids)
        return _Row(ids, [-100] * n, [-100] * n, user_end, risk, cat)
    if risk and example.unsafe_span is None:
        return None  # unsafe answer with no known span: no token labels to learn from
    prefix, _ = encoder.encode_prompt(msgs[:-1])
    spans = encoder.codec.encode(msgs[-1]["content"])
    ids = prefix + [t for t, _, _ in spans]
    if len(ids) > max_len or not spans:
        return None
    start = harm_onset(msgs[-1]["content"], *example.unsafe_span)[0] if risk and example.unsafe_span else None
    risks, cats = [-100] * len(prefix), [-100] * len(prefix)
    for _, _start, e in spans:
        inside = start is not None and e > start
        risks.append(risk if inside else 0)
        cats.append(cat if inside else -100)
    return _Row(ids, risks, cats, -1, 0, -100)


def _batches(rows: list[_Row], settings: StreamTrainSettings, rng: random.Random) -> list[list[_Row]]:
    order = sorted(rows, key=lambda r: len(r.ids))
    batches: list[Any] = []
    current: list[Any] = []
    width = 0
    for row in order:
        width_new = max(width, len(row.ids))
        if current and width_new * (len(current) + 1) > settings.batch_tokens:
            batches.append(current)
            current, width_new = [], len(row.ids)
        current.append(row)
        width = width_new
    if current:
        batches.append(current)
    rng.shuffle(batches)
    return batches


def _tensors(batch: list[_Row], pad_id: int) -> dict[str, Any]:
    import torch

    width = max(len(r.ids) for r in batch)
    ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    risk = torch.full((len(batch), width), -100, dtype=torch.long)
    cat = torch.full((len(batch), width), -100, dtype=torch.long)
    for i, r in enumerate(batch):
        n = len(r.ids)
        ids[i, :n] = torch.tensor(r.ids)
        mask[i, :n] = 1  # right padding: causal attention never looks at it
        risk[i, :n] = torch.tensor(r.risk)
        cat[i, :n] = torch.tensor(r.cat)
    q_rows = [i for i, r in enumerate(batch) if r.query_pos >= 0]
    return {
        "input_ids": ids,
        "attention_mask": mask,
        "risk": risk,
        "cat": cat,
        "q_rows": torch.tensor(q_rows, dtype=torch.long),
        "q_pos": torch.tensor([batch[i].query_pos for i in q_rows], dtype=torch.long),
        "q_risk": torch.tensor([batch[i].query_risk for i in q_rows], dtype=torch.long),
        "q_cat": torch.tensor([batch[i].query_cat for i in q_rows], dtype=torch.long),
    }


def _loss(model: Any, t: dict[str, Any]) -> Any:
    import torch
    import torch.nn.functional as F

    # Right padding under a causal mask: real tokens never see the padding, so no attention mask is needed.
    out = model(input_ids=t["input_ids"])
    # Unsafe/controversial tokens are rarer than safe ones: weight them up so recall does not starve.
    risk_w = torch.tensor([1.0, 2.0, 2.0])
    loss = out["last_hidden_state"].new_zeros(())
    if (t["risk"] >= 0).any():  # a batch of prompts only has no token labels (CE over nothing is NaN)
        loss = loss + F.cross_entropy(
            out["risk_level_logits"].flatten(0, 1), t["risk"].flatten(), weight=risk_w, ignore_index=-100
        )
    if (t["cat"] >= 0).any():
        loss = loss + 0.5 * F.cross_entropy(out["category_logits"].flatten(0, 1), t["cat"].flatten(), ignore_index=-100)
    if len(t["q_rows"]):
        h_rows, pos = t["q_rows"], t["q_pos"]
        q_risk = out["query_risk_level_logits"][h_rows, pos]
        q_cat = out["query_category_logits"][h_rows, pos]
        loss = loss + F.cross_entropy(q_risk, t["q_risk"])
        if (t["q_cat"] >= 0).any():
            loss = loss + 0.5 * F.cross_entropy(q_cat, t["q_cat"], ignore_index=-100)
    return loss


def _stream_config(gen_config: dict[str, Any], settings: StreamTrainSettings) -> Any:
    from transformers import Qwen3Config

    keep = {
        k: v
        for k, v in gen_config.items()
        if k not in ("architectures", "auto_map", "transformers_version", "dtype", "torch_dtype", "_name_or_path")
    }
    keep.update(
        guard_inner_size=settings.guard_inner_size,
        num_risk_level=3,
        num_category=8,
        num_query_risk_level=3,
        num_query_category=9,
        response_risk_level_map=dict(RISK_MAP),
        query_risk_level_map=dict(RISK_MAP),
        response_category_map={k: v for k, v in CATEGORY_MAP.items() if int(k) < 8},
        query_category_map=dict(CATEGORY_MAP),
        use_cache=False,
    )
    return Qwen3Config(**keep)


def evaluate(stream: Any, examples: Sequence[Example]) -> dict[str, Any]:
    """Held-out results through the saved checkpoint: prompt accuracy (query heads) and stream-level
    detection of assistant answers with the official debounce (flagged iff the example is not safe)."""
    from ..streaming.debounce import Debounce

    prompt_ok = prompt_n = resp_ok = resp_n = in_span = flagged_unsafe = 0
    for ex in examples:
        msgs = ex.messages
        if msgs[-1]["role"] == "user":
            session = stream.open_session(msgs)
            prompt_n += 1
            prompt_ok += session.prompt_verdict.risk.value == ex.risk
            session.close()
            continue
        if ex.risk != "safe" and ex.unsafe_span is None:
            continue
        _, verdicts = stream.score(msgs[:-1], msgs[-1]["content"])
        flags = Debounce().extend(v.risk for v in verdicts)
        resp_n += 1
        resp_ok += bool(flags) == (ex.risk != "safe")
        if flags and ex.risk != "safe":
            flagged_unsafe += 1
            start = verdicts[flags[0].start].start
            span = ex.unsafe_span
            in_span += span[0] <= start < span[1] if start is not None and span else 0
    return {
        "prompt_accuracy": round(prompt_ok / max(prompt_n, 1), 4),
        "prompt_examples": prompt_n,
        "response_stream_accuracy": round(resp_ok / max(resp_n, 1), 4),
        "response_examples": resp_n,
        "flag_inside_unsafe_span": round(in_span / max(flagged_unsafe, 1), 4),
    }


def train_stream(
    gen_dir: Path | str = DEMO_GEN_DIR,
    out_dir: Path | str | None = None,
    settings: StreamTrainSettings = StreamTrainSettings(),
) -> dict[str, Any]:
    """Train the demo Stream checkpoint from the Gen checkpoint `gen_dir`, save it into `out_dir` (default: a new
    ``runs/demo-stream-<date>-<time>``); return its metrics."""
    import torch
    from safetensors.torch import load_file
    from transformers import AutoTokenizer

    from ..backends.transformers_stream import (
        StreamEncoder,
        TransformersStream,
        build_stream_model,
        save_stream_checkpoint,
    )

    out_dir = resolve_out_dir(out_dir, kind="stream", shipped=DEMO_STREAM_DIR, replace_shipped=False)
    check_replaceable(out_dir)  # before the minutes of training, not after
    started = time.time()
    gen_dir = Path(gen_dir)
    if not (gen_dir / "config.json").exists():
        raise FileNotFoundError(
            f"{gen_dir} has no demo Gen checkpoint; run `python -m qwenguard.core.demo.train gen` first"
        )
    init = Path(settings.init_from) if settings.init_from else None
    # The heads were trained on the ids of one tokenizer: any other (any byte of tokenizer.json) is refused.
    if init is not None and (init / "tokenizer.json").read_bytes() != (gen_dir / "tokenizer.json").read_bytes():
        raise ValueError(f"--init-from {init} was trained with another tokenizer than {gen_dir}'s")
    torch.set_num_threads(settings.threads)
    torch.manual_seed(settings.seed)
    rng = random.Random(settings.seed)

    tokenizer = AutoTokenizer.from_pretrained(str(gen_dir))
    encoder = StreamEncoder(tokenizer)
    mix = boosted_mix(settings.boost) if settings.boost != 1.0 else None
    examples = training_set(settings.train_size, seed=settings.seed + 101, families=mix)
    rows = [r for ex in examples if (r := _encode(encoder, ex, settings.max_len)) is not None]
    _log(
        f"{len(rows)} training rows from {len(examples)} examples "
        f"({sum(r.query_pos >= 0 for r in rows)} prompt-level, {sum(r.query_pos < 0 for r in rows)} token-level)"
    )

    if init is not None:
        model = TransformersStream.load(init, device="cpu", dtype="float32").model
        config = model.config
    else:
        gen_config = json.loads((gen_dir / "config.json").read_text())
        config = _stream_config(gen_config, settings)
        model = build_stream_model(config)
        gen_state = load_file(str(next(gen_dir.glob("*.safetensors"))))
        backbone = {k: v.float() for k, v in gen_state.items() if k.startswith("model.")}
        missing, unexpected = model.load_state_dict(backbone, strict=False)
        assert not unexpected and all(not k.startswith("model.") for k in missing), (missing, unexpected)
    model.train()

    head_params = [p for n, p in model.named_parameters() if not n.startswith("model.")]
    body_params = [p for n, p in model.named_parameters() if n.startswith("model.")]
    opt = torch.optim.AdamW(
        [{"params": head_params, "lr": settings.lr}, {"params": body_params, "lr": settings.backbone_lr}],
        weight_decay=0.01,
    )
    base_lrs = [settings.lr, settings.backbone_lr]
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    batches: list[list[_Row]] = []
    losses: list[float] = []
    for step in range(settings.steps):
        if not batches:
            batches = _batches(rows, settings, rng)
        batch = batches.pop()
        scale = min(1.0, (step + 1) / settings.warmup) * (0.1 + 0.9 * (1 - step / settings.steps))
        for group, base in zip(opt.param_groups, base_lrs):
            group["lr"] = base * scale
        loss = _loss(model, _tensors(batch, pad_id))
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        losses.append(loss.item())
        if step % 50 == 0 or step == settings.steps - 1:
            _log(f"step {step:4d} loss {sum(losses[-50:]) / len(losses[-50:]):.4f} ({time.time() - started:.0f}s)")

    model.eval()
    with tempfile.TemporaryDirectory(prefix="demo-stream-") as tmp:
        stage = Path(tmp) / "stream"
        model.to(torch.bfloat16)
        save_stream_checkpoint(model, None, stage)
        for f in gen_dir.iterdir():  # the demo guard's tokenizer files, unchanged
            if f.is_file() and ("token" in f.name or f.name in ("vocab.json", "merges.txt", "chat_template.jinja")):
                shutil.copy(f, stage / f.name)
        stream = TransformersStream.load(stage, device="cpu", dtype="float32")
        base_mix = generate(settings.heldout_size, seed=settings.seed + 101 + 1000, split="heldout", families=BASE_MIX)
        metrics = {
            "heldout": evaluate(stream, heldout_set(settings.heldout_size, seed=settings.seed + 101)),
            "heldout_base_mix": evaluate(stream, base_mix),
            "training": {
                "steps": settings.steps,
                "seed": settings.seed,
                "rows": len(rows),
                "final_loss": round(sum(losses[-50:]) / len(losses[-50:]), 4),
                "train_examples": len(examples),
                "lr": settings.lr,
                "backbone_lr": settings.backbone_lr,
                "init_from": init_record(init),
                "family_boost": {"families": list(EVERYDAY_ADDED), "boost": settings.boost} if mix else None,
                "seconds": round(time.time() - started, 1),
                "torch_threads": settings.threads,
                "versions": library_versions(),
            },
            "model": {
                "parameters": sum(p.numel() for p in model.parameters()),
                "guard_inner_size": settings.guard_inner_size,
                "initialised_from": "demo stream checkpoint" if init is not None else "demo gen backbone",
            },
        }
        _log(f"held-out: {json.dumps(metrics['heldout'])}")
        _log(f"held-out, base mix: {json.dumps(metrics['heldout_base_mix'])}")
        (stage / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
        if out_dir.exists():
            shutil.rmtree(out_dir)
        shutil.copytree(stage, out_dir)
    _log(f"wrote {out_dir} in {time.time() - started:.0f}s")
    return metrics


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m qwenguard.core.demo.train_stream", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument(
        "--gen", type=Path, default=DEMO_GEN_DIR, help=f"demo Gen checkpoint to start from (default {DEMO_GEN_DIR})"
    )
    where = parser.add_mutually_exclusive_group()
    where.add_argument(
        "--out",
        type=Path,
        default=None,
        help="output directory (default: a new runs/demo-stream-<date>-<time> in the current directory)",
    )
    where.add_argument(
        "--replace-shipped", action="store_true", help=f"write over the shipped checkpoint {DEMO_STREAM_DIR}"
    )
    parser.add_argument(
        "--init-from",
        type=Path,
        default=None,
        help="fine-tune this demo Stream checkpoint (backbone and heads) instead of starting from the Gen backbone",
    )
    parser.add_argument(
        "--steps",
        type=int,
        default=None,
        help=f"default {StreamTrainSettings.steps} ({FINETUNE_STEPS} with --init-from)",
    )
    parser.add_argument(
        "--boost",
        type=float,
        default=None,
        help=f"draw the families added last (data.EVERYDAY_ADDED) this many times as often "
        f"(default 1; {FINETUNE_BOOST} with --init-from)",
    )
    parser.add_argument("--seed", type=int, default=StreamTrainSettings.seed)
    parser.add_argument("--train-size", type=int, default=StreamTrainSettings.train_size)
    parser.add_argument("--heldout-size", type=int, default=StreamTrainSettings.heldout_size)
    parser.add_argument("--threads", type=int, default=StreamTrainSettings.threads)
    args = parser.parse_args(argv)
    out = resolve_out_dir(args.out, kind="stream", shipped=DEMO_STREAM_DIR, replace_shipped=args.replace_shipped)
    tune = args.init_from is not None
    settings = StreamTrainSettings(
        steps=args.steps if args.steps is not None else FINETUNE_STEPS if tune else StreamTrainSettings.steps,
        lr=FINETUNE_LR if tune else StreamTrainSettings.lr,
        backbone_lr=FINETUNE_BACKBONE_LR if tune else StreamTrainSettings.backbone_lr,
        boost=args.boost if args.boost is not None else FINETUNE_BOOST if tune else 1.0,
        init_from=str(args.init_from) if tune else None,
        seed=args.seed,
        train_size=args.train_size,
        heldout_size=args.heldout_size,
        threads=args.threads,
    )
    _log(f"writing to {out}")
    train_stream(args.gen, out, settings)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
