"""Turn predictions into an evaluation report: metrics per mapping, breakdowns, files and plots.

A *mapping* says which rows count as positive ("should be blocked"). It is derived from a `Policy`:

- **strict**: controversial blocks. Gold ``controversial`` rows are positive; a prediction is positive
  when the policy blocks it (unsafe or controversial). Score: ``P(unsafe) + P(controversial)``, i.e.
  ``1 - P(safe)`` — the probability mass that this mapping blocks.
- **loose**: controversial passes. Gold ``controversial`` rows are negative; a prediction is positive
  only when unsafe. Score: ``P(unsafe)``.

Gold and prediction use the same mapping, so each row of the table answers "how well does this guard
enforce this policy". Rows the guard gave no verdict (guard errors: timeouts, unparseable answers, a partial
verdict) are left out of every metric, neither right nor wrong, and counted on their own (``errors`` per
mapping, a column of the table): a dead engine must not score as a perfect one. With no row judged the metrics
are not available (``null`` / ``–``). Rows without a score are left out of ROC-AUC and the sweep.
"""

from __future__ import annotations

import datetime as _dt
import html
import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..policy import Decision, Policy
from ..verdict import Risk, Verdict
from .data import EvalExample, printable
from .identity import open_owned
from .metrics import (
    average_precision,
    best_threshold,
    binary_metrics,
    confusion_matrix,
    roc_auc,
    threshold_sweep,
)
from .runner import Prediction, RunResult

__all__ = ["EvalReport", "compute_report", "default_policies", "RISK_ORDER", "NO_CATEGORY"]

RISK_ORDER = (Risk.SAFE, Risk.CONTROVERSIAL, Risk.UNSAFE)
#: How the group of rows with no category (or no source) is shown. In ``report.json`` that group is ``null``, a
#: name no dataset spells: a category spelt "(none)" is its own group, shown quoted (rt69g F5).
NO_CATEGORY = "(none)"
#: Categories in report.md's table (those with the most rows; report.json has every one): a free-text category
#: column must not make the report as long as the dataset.
MD_CATEGORIES = 100
_SCORES = {"strict": "1 - P(safe) = P(unsafe) + P(controversial)", "loose": "P(unsafe)"}


def default_policies() -> dict[str, Policy]:
    """Strict and loose, side by side (the comparison the report always makes)."""
    return {"strict": Policy.strict(), "loose": Policy.loose()}


def _gold_positive(example: EvalExample, policy: Policy) -> bool:
    """Whether the policy blocks the gold answer: the gold label and categories go through the same decision as a
    prediction (a policy that lets PII through is not expected to block gold-unsafe PII rows)."""
    gold = Verdict(example.label, example.categories)
    return not policy.decide(gold, example.stage).allowed


def _predicted(example: EvalExample, pred: Prediction, policy: Policy) -> Decision | None:
    """The policy's decision of the verdict, the windows beneath it included (`Verdict.beneath`: what a live check
    decides); ``None`` for a row without one (left out of the metrics)."""
    verdict = pred.verdict
    return None if verdict is None else policy.decide(verdict, example.stage)


def _score(pred: Prediction, policy: Policy) -> float | None:
    if pred.probs is None:
        return None
    if policy.mode == "strict":
        score = 1.0 - float(pred.probs.get(Risk.SAFE, 0.0))
    else:
        score = float(pred.probs.get(Risk.UNSAFE, 0.0))
    # A NaN from a broken engine (or an older cache) is no score: one such row must not sink the report.
    return score if math.isfinite(score) else None


def _round(value: Any) -> Any:
    if isinstance(value, float):
        return round(value, 6)
    if isinstance(value, dict):
        return {k: _round(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_round(v) for v in value]
    return value


def _group_metrics(rows: list[tuple[bool, bool | None]]) -> dict[str, Any]:
    """Metrics of the judged rows of a group (``None`` predictions, guard errors, are left out)."""
    judged = [(t, p) for t, p in rows if p is not None]
    out = binary_metrics([t for t, _ in judged], [p for _, p in judged]).to_dict()
    if not judged:
        out["mcc"] = None  # no row judged: not available, like every other rate
    return out


def _mapping(examples: Sequence[EvalExample], preds: Sequence[Prediction], policy: Policy, name: str) -> dict[str, Any]:
    truth = [_gold_positive(e, policy) for e in examples]
    decided = [_predicted(e, p, policy) for e, p in zip(examples, preds)]
    pred = [None if d is None else not d.allowed for d in decided]
    out: dict[str, Any] = {
        "policy": policy.to_dict(),
        "overall": _group_metrics(list(zip(truth, pred))),
        "errors": sum(1 for p in pred if p is None),
    }

    scored = [(t, s) for t, p in zip(truth, preds) if (s := _score(p, policy)) is not None]
    out["score"] = _SCORES[policy.mode]
    out["scored_rows"] = len(scored)
    if scored:
        ys, ss = [t for t, _ in scored], [s for _, s in scored]
        points = threshold_sweep(ys, ss)
        out["roc_auc"] = roc_auc(ys, ss)
        out["average_precision"] = average_precision(ys, ss)
        out["thresholds"] = [p.to_dict() for p in points]
        best = best_threshold(points)
        keep95 = best_threshold(points, min_recall=0.95)
        out["best_f1_threshold"] = None if best is None else best.to_dict()
        out["threshold_for_recall_0.95"] = None if keep95 is None else keep95.to_dict()
    else:
        out.update(
            {
                "roc_auc": None,
                "average_precision": None,
                "thresholds": [],
                "best_f1_threshold": None,
                "threshold_for_recall_0.95": None,
            }
        )

    by_cat: dict[str | None, list[int]] = {}
    for i, e in enumerate(examples):
        for c in e.categories or (None,):  # None: the rows without a category (`NO_CATEGORY` when shown)
            by_cat.setdefault(c, []).append(i)
    cats = []
    for c, idx in sorted(by_cat.items(), key=lambda kv: (kv[0] is None, -len(kv[1]), kv[0] or "")):
        m = _group_metrics([(truth[i], pred[i]) for i in idx])
        # The categories the row was blocked on: a Controversial window's, where an ignored category's Unsafe excused
        # the top (`Policy.decide`).
        hits = [c in d.categories for i in idx if truth[i] and pred[i] and (d := decided[i]) is not None]
        errors = sum(1 for i in idx if pred[i] is None)
        cats.append(
            {
                "category": c,
                "n": len(idx),
                "positives": m["tp"] + m["fn"],
                "tp": m["tp"],
                "fn": m["fn"],
                "fp": m["fp"],
                "recall": m["recall"],
                "fnr": m["fnr"],
                "fpr": m["fpr"],
                "category_match": (sum(hits) / len(hits)) if hits else None,
                "errors": errors,
            }
        )
    out["by_category"] = cats

    for key, attr in (("by_source", "source"), ("by_stage", "stage")):
        groups: dict[str | None, list[int]] = {}
        for i, e in enumerate(examples):
            value = getattr(e, attr)
            groups.setdefault(None if value is None else getattr(value, "value", str(value)), []).append(i)
        out[key] = [
            {
                attr: g,
                **_group_metrics([(truth[i], pred[i]) for i in idx]),
                # as for categories: every row of the group, the judged ones and the guard errors
                "n": len(idx),
                "judged": sum(1 for i in idx if pred[i] is not None),
                "errors": sum(1 for i in idx if pred[i] is None),
            }
            for g, idx in sorted(groups.items(), key=lambda kv: (-len(kv[1]), kv[0] is None, kv[0] or ""))
        ]
    return out


def _refusal(examples: Sequence[EvalExample], preds: Sequence[Prediction]) -> dict[str, Any] | None:
    """Refusal detection (positive = refused) on rows whose gold refusal is known and whose verdict has one."""
    pairs = [(e.refusal, p.refusal) for e, p in zip(examples, preds) if e.refusal is not None and p.refusal is not None]
    if not pairs:
        return None
    return binary_metrics([a for a, _ in pairs], [b for _, b in pairs]).to_dict()


def compute_report(
    examples: Sequence[EvalExample],
    run: RunResult | Sequence[Prediction],
    *,
    policies: Mapping[str, Policy] | None = None,
    primary: str = "strict",
    meta: Mapping[str, Any] | None = None,
) -> EvalReport:
    """Metrics for every mapping in ``policies`` (default: strict and loose) from aligned predictions."""
    preds = run.predictions if isinstance(run, RunResult) else list(run)
    if len(preds) != len(examples):
        raise ValueError(f"{len(examples)} examples but {len(preds)} predictions")
    if not examples:
        raise ValueError("nothing to evaluate: no examples")
    policies = dict(policies or default_policies())
    if primary not in policies:
        raise ValueError(f"primary mapping {primary!r} is not one of {list(policies)}")

    labels = [e.label.value for e in examples]
    predicted = [p.risk.value if p.risk else "error" for p in preds]
    order = [r.value for r in RISK_ORDER]
    info: dict[str, Any] = {
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "rows": len(examples),
        "labels": {r: labels.count(r) for r in order},
        "stages": {
            s: sum(1 for e in examples if e.stage.value == s) for s in dict.fromkeys(e.stage.value for e in examples)
        },
        "errors": sum(1 for p in preds if not p.ok),
        "primary": primary,
    }
    if isinstance(run, RunResult):
        info["run"] = run.summary()
        info["model"] = run.model
    info.update(meta or {})
    data = {
        "meta": info,
        "risk_confusion": {
            "labels": order,
            "predicted_labels": [*order, "error"],
            "matrix": confusion_matrix(labels, predicted, order + ["error"])[: len(order)],
        },
        "mappings": {name: _mapping(examples, preds, pol, name) for name, pol in policies.items()},
        "refusal": _refusal(examples, preds),
        "errors": [{"id": e.id, "error": p.error} for e, p in zip(examples, preds) if not p.ok][:50],
    }
    return EvalReport(_round(data))


#: Markdown's inline punctuation, backslash-escaped in report.md: no link or image (``[``, ``]``: a previewer would
#: load ``![pixel](http://...)``, rt63e F4), emphasis, code span, strikethrough or math of the data's; ``|`` adds no
#: column. ``<``, ``>`` and ``&`` are HTML's, escaped as entities (a backslash before them would show the entity).
_MD_PUNCTUATION = str.maketrans({c: "\\" + c for c in "\\`*_[]~$|"})


#: What GitHub-flavoured Markdown (and markdown-it's linkify) makes a link of in plain text: a scheme's ``://``, a
#: dot after a letter (``www.x``, ``www.1x``, ``evil.com``) and an address's ``@``. Each gets an empty HTML comment
#: beside it, which shows nothing and splits the text where the link would go on: a backslash escape did not, since
#: cmark-gfm (GitHub's renderer) joins the text back before it looks for addresses (rt69g F4, rt69l F1).
_AUTOLINK_PARTS = re.compile(r"://|(?<=[^\W\d_])\.(?=\w)|@")
_AUTOLINK_BROKEN = {"://": ":<!-- -->//", ".": "<!-- -->.", "@": "<!-- -->@"}


def _md(value: Any, code: bool = False) -> str:
    """A dataset's or a server's string in one cell or line of report.md: its controls escaped (no newline to start
    a heading), Markdown's inline punctuation escaped (no column, link, image or emphasis), a bare URL, domain or
    address broken (no autolink), HTML as text; ``code``: for inside a code span (no backtick)."""
    text = printable(str(value))
    if code:
        return text.replace("`", "'")
    escaped = html.escape(text, quote=False).translate(_MD_PUNCTUATION)
    return _AUTOLINK_PARTS.sub(lambda m: _AUTOLINK_BROKEN[m.group()], escaped)


def _group_name(name: str | None) -> str:
    """A category or source as report.md and the plots show it: `NO_CATEGORY` for the rows with none, a dataset's
    own name spelt like it quoted."""
    if name is None:
        return NO_CATEGORY
    return f'"{name}"' if name == NO_CATEGORY else name


def _shown_groups(mappings: Mapping[str, Any]) -> dict[str, Any]:
    """The mappings with each category named as `_group_name` shows it (the plots draw these names)."""
    return {
        n: {**m, "by_category": [{**c, "category": _group_name(c["category"])} for c in m["by_category"]]}
        for n, m in mappings.items()
    }


def _fmt(value: Any, pct: bool = False) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value * 100:.1f}%" if pct else f"{value:.3f}"
    return str(value)


@dataclass
class EvalReport:
    """The result of an evaluation: a JSON-able dict plus renderers (markdown, rich table, PNG plots)."""

    data: dict[str, Any]

    # -- accessors ----------------------------------------------------------------------------
    @property
    def mappings(self) -> dict[str, Any]:
        mappings: dict[str, Any] = self.data["mappings"]
        return mappings

    @property
    def primary(self) -> str:
        return str(self.data["meta"]["primary"])

    def metric(self, name: str, mapping: str | None = None) -> Any:
        """One overall number, e.g. ``report.metric("recall", "loose")``; ``roc_auc`` works too."""
        m = self.mappings[mapping or self.primary]
        return m[name] if name in m else m["overall"][name]

    def headline_rows(self) -> list[dict[str, Any]]:
        rows = []
        for name, m in self.mappings.items():
            o = m["overall"]
            rows.append(
                {
                    "mapping": name,
                    "n": o["n"],
                    "recall": o["recall"],
                    "precision": o["precision"],
                    "f1": o["f1"],
                    "accuracy": o["accuracy"],
                    "mcc": o["mcc"],
                    "roc_auc": m["roc_auc"],
                    "fn": o["fn"],
                    "fp": o["fp"],
                    "errors": m.get("errors", 0),
                }
            )
        return rows

    # -- renderers ----------------------------------------------------------------------------
    def table(self) -> Any:
        """The headline table as a rich Table (one row per mapping)."""
        from rich import box
        from rich.table import Table
        from rich.text import Text

        meta = self.data["meta"]
        errors = meta.get("errors", 0)
        # The error count is in the title, not a column: it is per row, the same for every mapping, and a
        # tenth column would not fit an 80-column CI log.
        judged = f" · {errors} errors (no verdict, left out of the metrics)" if errors else ""
        # Text, not markup: the model's name is the server's or a directory's, and "[/x]" in it must print as is.
        title = Text(
            f"qwenguard eval · {printable(str(meta.get('model', '?')))} · {meta['rows']} rows{judged} · * = --policy"
        )
        t = Table(title=title, title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False)
        for col in ("mapping", "recall", "precision", "F1", "accuracy", "MCC", "ROC-AUC", "FN", "FP"):
            t.add_column(col, justify="left" if col == "mapping" else "right", no_wrap=True)
        for r in self.headline_rows():
            name = r["mapping"] + (" *" if r["mapping"] == self.primary else "")
            t.add_row(
                Text(printable(name)),
                _fmt(r["recall"], True),
                _fmt(r["precision"], True),
                _fmt(r["f1"], True),
                _fmt(r["accuracy"], True),
                _fmt(r["mcc"]),
                _fmt(r["roc_auc"]),
                str(r["fn"]),
                str(r["fp"]),
            )
        return t

    def to_markdown(self) -> str:
        meta = self.data["meta"]
        lines = [f"# qwenguard eval: {_md(meta.get('model', '?'))}", ""]
        src = f" from `{_md(meta['data'], code=True)}`" if meta.get("data") else ""
        labels = ", ".join(f"{k} {v}" for k, v in meta["labels"].items())
        stages = ", ".join(f"{k} {v}" for k, v in meta["stages"].items())
        lines += [
            f"{meta['rows']} rows{src} (labels: {labels}; stages: {stages}); guard errors: {meta['errors']}. "
            f"Positive = should be blocked; `*` marks the primary mapping (`--policy`). Rows with a guard "
            f"error (no verdict) are left out of the metrics and counted under `errors`.",
            "",
        ]
        lines += [
            "| mapping | recall | precision | F1 | accuracy | MCC | ROC-AUC | FN | FP | errors |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for r in self.headline_rows():
            star = " *" if r["mapping"] == self.primary else ""
            lines.append(
                f"| {_md(r['mapping'])}{star} | {_fmt(r['recall'], True)} | {_fmt(r['precision'], True)} | "
                f"{_fmt(r['f1'], True)} | {_fmt(r['accuracy'], True)} | {_fmt(r['mcc'])} | "
                f"{_fmt(r['roc_auc'])} | {r['fn']} | {r['fp']} | {r['errors']} |"
            )
        rc = self.data["risk_confusion"]
        lines += [
            "",
            "## Gold label × predicted risk",
            "",
            "| gold \\ predicted | " + " | ".join(rc["predicted_labels"]) + " |",
            "|---|" + "---:|" * len(rc["predicted_labels"]),
        ]
        for label, row in zip(rc["labels"], rc["matrix"]):
            lines.append(f"| {label} | " + " | ".join(str(v) for v in row) + " |")
        names = list(self.mappings)
        lines += ["", "## Confusion matrices", "", "| mapping | TP | FN | FP | TN |", "|---|---:|---:|---:|---:|"]
        for name in names:
            o = self.mappings[name]["overall"]
            lines.append(f"| {_md(name)} | {o['tp']} | {o['fn']} | {o['fp']} | {o['tn']} |")

        per = {n: {c["category"]: c for c in self.mappings[n]["by_category"]} for n in names}
        shown = list(per[names[0]])[:MD_CATEGORIES]  # the most rows first: by_category's order
        lines += [
            "",
            "## By category (gold category)",
            "",
            "| category | n | errors | "
            + " | ".join(f"{n} positives | {n} recall | {n} FN rate | {n} FP" for n in names)
            + " |",
            "|---|---:|---:|" + "---:|---:|---:|---:|" * len(names),
        ]
        for cat in shown:
            cells = []
            for n in names:
                c = per[n][cat]
                cells += [str(c["positives"]), _fmt(c["recall"], True), _fmt(c["fnr"], True), str(c["fp"])]
            c0 = per[names[0]][cat]
            # errors: the category's rows without a verdict (the same under every mapping), left out of the rates
            lines.append(f"| {_md(_group_name(cat))} | {c0['n']} | {c0.get('errors', 0)} | " + " | ".join(cells) + " |")
        if len(per[names[0]]) > len(shown):
            lines += [
                "",
                f"The {len(shown)} categories with the most rows; {len(per[names[0]]) - len(shown):,} more are in "
                f"`report.json` (`by_category`).",
            ]

        for key, attr, title in (("by_source", "source", "By source"), ("by_stage", "stage", "By stage")):
            lines += [
                "",
                f"## {title}",
                "",
                f"| {attr} | n | errors | " + " | ".join(f"{n} recall | {n} precision | {n} F1" for n in names) + " |",
                "|---|---:|---:|" + "---:|---:|---:|" * len(names),
            ]
            rows = {n: {r[attr]: r for r in self.mappings[n][key]} for n in names}
            for g, r0 in rows[names[0]].items():
                cells = []
                for n in names:
                    r = rows[n][g]
                    cells += [_fmt(r["recall"], True), _fmt(r["precision"], True), _fmt(r["f1"], True)]
                # n: every row of the group; errors: those without a verdict, left out of the rates
                lines.append(
                    f"| {_md(_group_name(g))} | {r0['n']} | {r0.get('errors', 0)} | " + " | ".join(cells) + " |"
                )

        lines += ["", "## Scores and thresholds", ""]
        for n in names:
            m = self.mappings[n]
            if not m["scored_rows"]:
                lines.append(f"- **{_md(n)}**: no scores (the backend returned no label probabilities).")
                continue
            best, k95 = m["best_f1_threshold"], m["threshold_for_recall_0.95"]
            lines.append(
                f"- **{_md(n)}** (score {m['score']}, {m['scored_rows']} rows): ROC-AUC {_fmt(m['roc_auc'])}, "
                f"average precision {_fmt(m['average_precision'])}; best F1 {_fmt(best and best['f1'], True)} at "
                f"threshold {_fmt(best and best['threshold'])}; recall ≥ 95% up to threshold "
                f"{_fmt(k95 and k95['threshold'])}."
            )
        primary = self.mappings[self.primary]
        if primary["thresholds"]:
            lines += [
                "",
                f"Threshold sweep ({self.primary}, positive when score ≥ threshold):",
                "",
                "| threshold | recall | precision | F1 | FPR |",
                "|---:|---:|---:|---:|---:|",
            ]
            for p in primary["thresholds"]:
                if round(p["threshold"] * 100) % 10 == 0:
                    lines.append(
                        f"| {p['threshold']:.1f} | {_fmt(p['recall'], True)} | {_fmt(p['precision'], True)} | "
                        f"{_fmt(p['f1'], True)} | {_fmt(p['fpr'], True)} |"
                    )
        ref = self.data.get("refusal")
        if ref:
            lines += [
                "",
                "## Refusal detection (response rows with a gold refusal)",
                "",
                f"{ref['n']} rows: accuracy {_fmt(ref['accuracy'], True)}, recall {_fmt(ref['recall'], True)}, "
                f"precision {_fmt(ref['precision'], True)} (positive = the reply refused).",
            ]
        if self.data["errors"]:
            lines += ["", "## Guard errors (first 50)", ""]
            lines += [f"- row `{_md(e['id'], code=True)}`: {_md(e['error'])}" for e in self.data["errors"]]
        run = self.data["meta"].get("run")
        if run:
            lines += [
                "",
                f"Run: {run['ran']} rows classified, {run['from_cache']} from the cache, "
                f"{run['elapsed_s']} s ({_fmt(run['rows_per_s'])} rows/s).",
            ]
        return "\n".join(lines) + "\n"

    # -- files --------------------------------------------------------------------------------
    def write(self, out_dir: str | Path, *, plots: bool = True) -> dict[str, Path]:
        """Write ``report.json``, ``report.md`` and (``plots``) the PNGs into ``out_dir``; return their paths."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        paths = {"json": out / "report.json", "markdown": out / "report.md"}
        # Both texts made before either file is touched; each written whole or not at all (`open_owned`), never
        # through a symbolic link planted at its name (it could point outside ``out``).
        texts = {"json": json.dumps(self.data, indent=2, ensure_ascii=False) + "\n", "markdown": self.to_markdown()}
        for name, text in texts.items():
            with open_owned(paths[name]) as f:
                f.write(text)
        if plots:
            from .plots import write_plots

            paths.update(write_plots(_shown_groups(self.mappings), out))
        return paths

    @classmethod
    def load(cls, path: str | Path) -> EvalReport:
        """Read a ``report.json`` back."""
        return cls(json.loads(Path(path).read_text(encoding="utf-8")))
