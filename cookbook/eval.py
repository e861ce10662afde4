"""Measure a guard before deploying it: strict vs loose on the shipped labelled sample.

    pip install -e ".[local,eval]"    # once, in your qwenguard clone (torch first: see the README)
    python cookbook/eval.py

Runs the embedded demo guard (offline, CPU) over the sample that ships with qwenguard, prints the
headline table, writes report.json / report.md / PNG plots into ./qwenguard-eval-cookbook, and checks
the numbers that matter for choosing a policy.

Runs offline on the embedded demo guard. For the real model, change the `Guard.from_pretrained("demo")` line:
    Guard.from_pretrained("Qwen/Qwen3Guard-Gen-4B")                        # local, transformers
    Guard.remote("http://host:8000/v1", model="Qwen/Qwen3Guard-Gen-4B")    # a vLLM server:
    #   vllm serve Qwen/Qwen3Guard-Gen-4B --port 8000 --max-model-len 32768
and sample_path() for your own labelled JSONL / CSV / Parquet file (columns: see docs/eval.md).
"""

from qwenguard.core import Guard
from qwenguard.core.eval import evaluate, sample_path
from rich.console import Console

OUT = "qwenguard-eval-cookbook"

with Guard.from_pretrained("demo") as guard:
    report = evaluate(guard, sample_path(), out=OUT, policy="strict", progress=True)

Console().print(report.table())
strict, loose = report.mappings["strict"], report.mappings["loose"]
# The two recalls are over different rows: gold "controversial" is harmful under strict only (docs/eval.md).
for name, m in (("strict (controversial is harmful)", strict), ("loose (controversial is not)", loose)):
    harmful = m["overall"]["tp"] + m["overall"]["fn"]
    print(
        f"{name:34s} recall {m['overall']['recall']:.1%} of {harmful} harmful rows, precision {m['overall']['precision']:.1%}"
    )
worst = max((c for c in strict["by_category"] if c["positives"]), key=lambda c: c["fnr"])
print(f"most missed category (strict): {worst['category']} — {worst['fnr']:.0%} of {worst['positives']} slip through")
print(f"report and plots in ./{OUT}/")

# Self-checks: both mappings are reported over the same rows; every row got a verdict and a score.
assert strict["overall"]["n"] == loose["overall"]["n"] == report.data["meta"]["rows"] >= 200
assert report.data["meta"]["errors"] == 0 and strict["scored_rows"] == report.data["meta"]["rows"]
assert strict["roc_auc"] is not None and 0.5 < strict["roc_auc"] <= 1.0
# Strict counts the controversial rows as harmful, so it has more harmful rows to find than loose.
assert strict["overall"]["tp"] + strict["overall"]["fn"] > loose["overall"]["tp"] + loose["overall"]["fn"]
# The demo guard is a tiny model trained on this kind of data: far better than chance (MCC 0, AUC 0.5),
# far from the real Qwen3Guard. (Landed demo, 300 rows: recall 74.8%, MCC 0.50, ROC-AUC 0.85.)
assert strict["overall"]["recall"] > 0.6 and strict["overall"]["mcc"] > 0.3 and strict["roc_auc"] > 0.75
print("OK")
