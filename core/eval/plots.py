"""PNG plots of an evaluation report's per-mapping figures (``EvalReport.mappings``): confusion matrices, precision/recall vs threshold, recall by category.

Figures are drawn with `matplotlib.figure.Figure` and its Agg canvas directly, never through pyplot,
so no global backend is switched and nothing needs a display.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ..errors import MissingDependency
from .data import printable
from .identity import open_owned

__all__ = ["write_plots", "require_matplotlib", "PLOT_FILES"]

PLOT_FILES = {
    "confusion": "confusion_matrix.png",
    "threshold": "precision_recall_threshold.png",
    "category": "recall_by_category.png",
}
_COLORS = {"strict": "#c0392b", "loose": "#2471a3"}
#: Categories drawn in recall_by_category.png (those with the most rows; the rest share one "other" bar), and the
#: characters of a category's label (longer ones end in "…"): the figure's size and cost do not grow with the data.
PLOT_CATEGORIES = 30
LABEL_CHARS = 40


def require_matplotlib() -> None:
    """`MissingDependency` (one line) when the plots cannot be drawn: checked before a run loads its model,
    so a missing extra is not found only after every row is scored."""
    try:
        import matplotlib  # noqa: F401
    except ImportError as exc:
        raise MissingDependency.for_extra("eval", "matplotlib") from exc


def _figure(width: float, height: float) -> Any:
    try:
        from matplotlib.figure import Figure
    except ImportError as exc:
        raise MissingDependency.for_extra("eval", "matplotlib") from exc
    return Figure(figsize=(width, height), dpi=110, layout="constrained")


def _literal_legend(legend: Any) -> None:
    """A legend's names drawn as written, never parsed as mathtext (a mapping named with ``$``)."""
    for text in legend.get_texts():
        text.set_parse_math(False)


def _nan(value: Any) -> float:
    return float("nan") if value is None else float(value)


def plot_confusion(mappings: Mapping[str, Any], path: Path) -> Path:
    names = list(mappings)
    fig = _figure(3.4 * len(names), 3.3)
    axes = fig.subplots(1, len(names), squeeze=False)[0]
    for ax, name in zip(axes, names):
        o = mappings[name]["overall"]
        m = [[o["tn"], o["fp"]], [o["fn"], o["tp"]]]
        total = max(1, sum(map(sum, m)))
        ax.imshow([[v / total for v in row] for row in m], cmap="Blues", vmin=0, vmax=1)
        for i in range(2):
            for j in range(2):
                share = m[i][j] / total
                ax.text(
                    j,
                    i,
                    f"{m[i][j]}\n{share:.0%}",
                    ha="center",
                    va="center",
                    color="white" if share > 0.5 else "black",
                    fontsize=11,
                )
        ax.set_xticks([0, 1], ["allow", "block"])
        ax.set_yticks([0, 1], ["harmless", "harmful"])
        ax.set_xlabel("guard")
        ax.set_ylabel("gold label")
        ax.set_title(
            f"{name}: recall {_pct(o['recall'])}, precision {_pct(o['precision'])}", fontsize=9, parse_math=False
        )
    return _save(fig, path)


def _pct(value: Any) -> str:
    return "–" if value is None else f"{value:.0%}"


def plot_threshold(mappings: Mapping[str, Any], path: Path) -> Path:
    fig = _figure(6.4, 4.0)
    ax = fig.subplots()
    drew = False
    for name, m in mappings.items():
        pts = m["thresholds"]
        if not pts:
            continue
        drew = True
        xs = [p["threshold"] for p in pts]
        color = _COLORS.get(name)
        ax.plot(xs, [_nan(p["recall"]) for p in pts], color=color, lw=2, drawstyle="steps-post", label=f"{name} recall")
        ax.plot(
            xs,
            [_nan(p["precision"]) for p in pts],
            color=color,
            lw=1.5,
            ls="--",
            drawstyle="steps-post",
            label=f"{name} precision",
        )
    if drew:
        ax.set_xlabel("threshold on the score (strict: 1 - P(safe); loose: P(unsafe))")
        ax.set_ylabel("rate")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1.02)
        ax.grid(alpha=0.3)
        _literal_legend(ax.legend(loc="lower left", fontsize=8))
        ax.set_title("Precision and recall vs threshold", fontsize=10)
    else:
        ax.axis("off")
        ax.text(
            0.5,
            0.5,
            "No scores: the backend returned no label probabilities,\nso there is no threshold sweep.",
            ha="center",
            va="center",
            fontsize=11,
        )
    return _save(fig, path)


def _label(name: Any) -> str:
    """A dataset's category as a tick label: its control characters as escapes (matplotlib's "Glyph 27 missing"
    warning would print an ESC raw to the terminal), cut to `LABEL_CHARS`."""
    text = printable(str(name))
    return text if len(text) <= LABEL_CHARS else text[: LABEL_CHARS - 1] + "…"


def _pooled(group: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """One bar for the categories past `PLOT_CATEGORIES`: recall over their harmful rows taken together."""
    tp = sum(int(c["tp"]) for c in group)
    positives = sum(int(c["positives"]) for c in group)
    return {
        "positives": positives,
        "recall": tp / positives if positives else None,
        "errors": sum(int(c.get("errors", 0)) for c in group),
    }


def plot_categories(mappings: Mapping[str, Any], path: Path) -> Path:
    """Recall per gold category, one bar per mapping: the `PLOT_CATEGORIES` categories with the most rows, the
    rest as one "other" bar, so the figure's size does not grow with the dataset's category column."""
    names = list(mappings)
    by = {n: {c["category"]: c for c in mappings[n]["by_category"]} for n in names}
    # by_category's order: the most rows first
    with_positives = [
        c for c in mappings[names[0]]["by_category"] if any(by[n][c["category"]]["positives"] for n in names)
    ]
    cats = [c["category"] for c in with_positives[:PLOT_CATEGORIES]]
    rest = [c["category"] for c in with_positives[PLOT_CATEGORIES:]]
    labels = [_label(c) for c in cats]
    bars = {n: [by[n][c] for c in cats] for n in names}
    if rest:
        labels.append(f"other ({len(rest):,} categories)")
        for n in names:
            bars[n].append(_pooled([by[n][c] for c in rest]))
    fig = _figure(6.8, max(2.4, 0.24 * len(labels) * len(names) + 1.2))
    ax = fig.subplots()
    if not labels:
        ax.axis("off")
        ax.text(0.5, 0.5, "No harmful rows: recall is undefined.", ha="center", va="center")
        return _save(fig, path)
    height = 0.8 / len(names)
    for k, name in enumerate(names):
        ys = [i + (k - (len(names) - 1) / 2) * height for i in range(len(labels))]
        vals = [_nan(c["recall"]) for c in bars[name]]
        ax.barh(
            ys, [0 if v != v else v for v in vals], height=height * 0.95, color=_COLORS.get(name), label=_label(name)
        )
        for y, v, c in zip(ys, vals, bars[name]):
            txt = "n/a" if v != v else f"{v:.0%} of {c['positives']}"
            if c.get("errors"):
                txt += f", {c['errors']} errors"  # rows without a verdict: left out of the recall
            ax.text(min(v if v == v else 0, 1) + 0.01, y, txt, va="center", fontsize=7)
    # Categories and mapping names are the dataset's and the caller's: "$5 ^$" is text, not mathtext to parse.
    ax.set_yticks(range(len(labels)), labels, fontsize=8, parse_math=False)
    ax.invert_yaxis()
    ax.set_xlim(0, 1.18)
    ax.set_xlabel("recall (share of harmful rows blocked)")
    ax.set_title("Recall by category", fontsize=10)
    _literal_legend(ax.legend(loc="lower right", fontsize=8))
    return _save(fig, path)


def _save(fig: Any, path: Path) -> Path:
    """Write the PNG, never through a symbolic link planted at its name."""
    with open_owned(path, "wb") as f:
        fig.savefig(f, format="png")
    return path


def write_plots(mappings: Mapping[str, Any], out_dir: Path) -> dict[str, Path]:
    """Draw the three PNGs into ``out_dir``."""
    return {
        "confusion": plot_confusion(mappings, out_dir / PLOT_FILES["confusion"]),
        "threshold": plot_threshold(mappings, out_dir / PLOT_FILES["threshold"]),
        "category": plot_categories(mappings, out_dir / PLOT_FILES["category"]),
    }
