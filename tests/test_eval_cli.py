"""`qwenguard eval` end to end on the shipped sample with the demo guard: subprocess, resume, plots, remote."""

import json
import subprocess
import sys

import pytest
from qwenguard.core import Guard, Risk
from qwenguard.core.cli import app
from qwenguard.core.eval import CACHE_FILE, load_dataset, sample_path
from qwenguard.core.eval.runner import example_key
from sklearn import metrics as skm
from typer.testing import CliRunner

QG = [sys.executable, "-m", "qwenguard.core.cli"]
PNGS = ("confusion_matrix.png", "precision_recall_threshold.png", "recall_by_category.png")


@pytest.fixture(scope="module")
def demo_guard():
    guard = Guard.from_pretrained("demo")
    yield guard
    guard.close()


class Counting:
    """Wraps a backend and counts the conversations it is asked (to see what a resumed run re-asks)."""

    def __init__(self, inner, interrupt_after_batches=None):
        self.inner, self.name = inner, inner.name
        self.asked = 0
        self.left = interrupt_after_batches

    def classify(self, conversations, *, timeout=None):
        if self.left == 0:
            raise KeyboardInterrupt  # fault injection: the user's Ctrl-C mid-run
        if self.left is not None:
            self.left -= 1
        self.asked += len(conversations)
        return self.inner.classify(conversations, timeout=timeout)

    async def aclassify(self, conversations, *, timeout=None):
        self.asked += len(conversations)
        return await self.inner.aclassify(conversations, timeout=timeout)

    def close(self):
        pass  # the module's demo guard outlives each run


def _independent_metrics(out_dir, examples, model="demo"):
    """Recompute the strict/loose headline from predictions.jsonl with scikit-learn."""
    cached = {}
    for line in (out_dir / CACHE_FILE).read_text().splitlines():
        row = json.loads(line)
        cached[row["key"]] = row
    preds = [cached[example_key(model, e)] for e in examples]
    out = {}
    for name, blocked in (("strict", {"unsafe", "controversial"}), ("loose", {"unsafe"})):
        y = [e.label.value in blocked for e in examples]
        p = [r["risk"] in blocked for r in preds]
        out[name] = {
            "recall": skm.recall_score(y, p),
            "precision": skm.precision_score(y, p),
            "f1": skm.f1_score(y, p),
            "mcc": skm.matthews_corrcoef(y, p),
        }
        if all(r["probs"] for r in preds):
            score = [1 - r["probs"]["safe"] if name == "strict" else r["probs"]["unsafe"] for r in preds]
            out[name]["roc_auc"] = skm.roc_auc_score(y, score)
    return out


def test_shipped_sample_loads():
    examples = load_dataset(sample_path())
    assert len(examples) >= 200
    assert {e.label for e in examples} == {Risk.SAFE, Risk.UNSAFE, Risk.CONTROVERSIAL}
    assert {"prompt", "response"} <= {e.stage.value for e in examples}


@pytest.mark.slow
def test_eval_subprocess_limit_then_resume_writes_report_and_plots(tmp_path):
    out = tmp_path / "ev"
    first = subprocess.run(
        [*QG, "eval", "sample", "--out", str(out), "--limit", "40", "--no-progress"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert first.returncode == 0, first.stderr
    assert "strict *" in first.stdout and "loose" in first.stdout and "recall" in first.stdout
    assert len((out / CACHE_FILE).read_text().splitlines()) == 40

    full = subprocess.run(
        [*QG, "eval", str(sample_path()), "--out", str(out), "--batch-size", "32"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert full.returncode == 0, full.stderr
    assert "resuming: 40 predictions cached" in full.stderr
    report = json.loads((out / "report.json").read_text())
    examples = load_dataset(sample_path())
    run = report["meta"]["run"]
    assert (run["from_cache"], run["ran"], run["rows"]) == (40, len(examples) - 40, len(examples))
    assert report["meta"]["rows"] == len(examples) and report["meta"]["errors"] == 0
    for name in PNGS:
        data = (out / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000, name
    md = (out / "report.md").read_text()
    assert "| strict * |" in md and "## By category" in md and "## By source" in md

    ref = _independent_metrics(out, examples)
    for name, values in ref.items():
        mapping = report["mappings"][name]
        for metric, value in values.items():
            got = mapping[metric] if metric == "roc_auc" else mapping["overall"][metric]
            assert got == pytest.approx(value, abs=1e-6), (name, metric)
    # The demo guard gives label probabilities, so the sweep and ROC-AUC exist and recall falls with the threshold.
    sweep = report["mappings"]["strict"]["thresholds"]
    assert report["mappings"]["strict"]["scored_rows"] == len(examples)
    assert sweep[0]["recall"] == 1.0 and sweep[-1]["recall"] <= sweep[0]["recall"]


def test_interrupt_then_resume_asks_only_the_rest(tmp_path, demo_guard, monkeypatch):
    out = tmp_path / "ev"
    runner = CliRunner()
    interrupting = Counting(demo_guard.backend, interrupt_after_batches=2)
    monkeypatch.setattr(
        Guard, "from_pretrained", classmethod(lambda cls, *a, **k: Guard(interrupting, k.get("policy")))
    )
    args = ["eval", "sample", "--out", str(out), "--limit", "48", "--batch-size", "8", "--no-progress"]
    res = runner.invoke(app, args)
    assert res.exit_code == 130, res.output
    assert "interrupted" in res.output and "16 predictions are saved" in res.output
    assert len((out / CACHE_FILE).read_text().splitlines()) == 16 and not (out / "report.json").exists()

    counting = Counting(demo_guard.backend)
    monkeypatch.setattr(Guard, "from_pretrained", classmethod(lambda cls, *a, **k: Guard(counting, k.get("policy"))))
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    assert counting.asked == 32
    report = json.loads((out / "report.json").read_text())
    assert (report["meta"]["run"]["from_cache"], report["meta"]["run"]["ran"]) == (16, 32)
    assert all((out / name).stat().st_size > 0 for name in PNGS)


def test_bad_data_is_one_clear_error(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "hi", "label": "safe"}\n{"text": "yo", "label": "perhaps"}\n')
    p = subprocess.run(
        [*QG, "eval", str(bad), "--out", str(tmp_path / "o")], capture_output=True, text=True, timeout=120
    )
    assert p.returncode == 2
    assert "row 2 (line 2): label 'perhaps'" in p.stderr and "Traceback" not in p.stderr
    p = subprocess.run([*QG, "eval", "sample", "--policy", "medium"], capture_output=True, text=True, timeout=120)
    assert p.returncode == 2 and "strict" in p.stderr


def test_remote_eval_against_a_qwenguard_server_matches_local(tmp_path, demo_guard):
    from live_server import serving

    runner = CliRunner()
    with serving(demo_guard) as url:
        res = runner.invoke(
            app,
            [
                "eval",
                "sample",
                "--remote",
                f"{url}/v1",
                "--limit",
                "24",
                "--out",
                str(tmp_path / "remote"),
                "--no-progress",
            ],
        )
    assert res.exit_code == 0, res.output
    remote = json.loads((tmp_path / "remote" / "report.json").read_text())
    assert remote["meta"]["remote"] == f"{url}/v1" and remote["meta"]["rows"] == 24 and remote["meta"]["errors"] == 0
    local = runner.invoke(app, ["eval", "sample", "--limit", "24", "--out", str(tmp_path / "local"), "--no-progress"])
    assert local.exit_code == 0, local.output
    local_report = json.loads((tmp_path / "local" / "report.json").read_text())
    assert remote["risk_confusion"] == local_report["risk_confusion"]
    for name in ("strict", "loose"):
        assert remote["mappings"][name]["overall"] == local_report["mappings"][name]["overall"]


def test_remote_server_down_is_a_clear_error(tmp_path):
    """Nothing listening: said as such (a newcomer's first hour, fh46: "pass --model NAME" was the advice, and with
    a model every row was a guard error)."""
    p = subprocess.run(
        [*QG, "eval", "sample", "--remote", "http://127.0.0.1:9/v1", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert p.returncode == 2 and "Traceback" not in p.stderr
    assert "cannot reach the server at http://127.0.0.1:9/v1" in p.stderr and "--model" not in p.stderr


# -- run isolation (issue 18): a prediction cache belongs to one dataset, model, stage and policy ---------
def _write_rows(path, texts):
    path.write_text("".join(json.dumps({"text": t, "label": "safe"}) + "\n" for t in texts), encoding="utf-8")
    return path


def test_two_datasets_in_a_row_never_share_predictions(tmp_path, demo_guard, monkeypatch):
    monkeypatch.chdir(tmp_path)
    counting = Counting(demo_guard.backend)
    monkeypatch.setattr(Guard, "from_pretrained", classmethod(lambda cls, *a, **k: Guard(counting, k.get("policy"))))
    runner = CliRunner()
    first = runner.invoke(app, ["eval", "sample", "--limit", "12", "--no-progress"])
    assert first.exit_code == 0, first.output
    mine = _write_rows(tmp_path / "my.jsonl", ["What is the capital of France?", "Paris is in France."])
    second = runner.invoke(app, ["eval", str(mine), "--no-progress"])
    assert second.exit_code == 0, second.output
    assert "resuming" not in second.output
    assert counting.asked == 12 + 2  # the second dataset was asked in full
    runs = sorted(p.name for p in (tmp_path / "qwenguard-eval").iterdir())
    assert len(runs) == 2 and runs[0].startswith("my-") and runs[1].startswith("sample-")
    for run in runs:  # each directory holds its own report
        assert (tmp_path / "qwenguard-eval" / run / "report.json").is_file()


def test_an_out_dir_of_another_run_is_refused_then_replaced_with_fresh(tmp_path, demo_guard, monkeypatch):
    shared = Counting(demo_guard.backend)  # survives each run's close()
    monkeypatch.setattr(Guard, "from_pretrained", classmethod(lambda cls, *a, **k: Guard(shared, k.get("policy"))))
    runner = CliRunner()
    out = tmp_path / "ev"
    assert runner.invoke(app, ["eval", "sample", "--out", str(out), "--limit", "8", "--no-progress"]).exit_code == 0
    before = (out / CACHE_FILE).read_text()
    mine = _write_rows(tmp_path / "my.jsonl", ["What is the capital of France?"])
    res = runner.invoke(app, ["eval", str(mine), "--out", str(out), "--no-progress"])
    assert res.exit_code == 2, res.output
    assert "holds the predictions of another run" in res.output
    assert (out / CACHE_FILE).read_text() == before  # untouched
    # --policy and --stage are not the run's identity: predictions do not depend on them, so they are shared.
    for args in (["--policy", "loose"], ["--stage", "prompt"]):
        res = runner.invoke(app, ["eval", "sample", "--out", str(out), "--limit", "8", *args, "--no-progress"])
        assert res.exit_code == 0 and "resuming: 8 predictions" in res.output, res.output
    res = runner.invoke(app, ["eval", str(mine), "--out", str(out), "--fresh", "--no-progress"])
    assert res.exit_code == 0, res.output
    assert len((out / CACHE_FILE).read_text().splitlines()) == 1


def test_a_retrained_demo_is_another_model(tmp_path):
    import shutil

    from qwenguard.core.demo import DEMO_GEN_DIR
    from qwenguard.core.eval.identity import run_identity

    copy = tmp_path / "demo-copy"
    shutil.copytree(DEMO_GEN_DIR, copy)
    same = run_identity(data_path=sample_path(), model=str(copy), remote=None, remote_mode=None)
    assert same["id"] == run_identity(data_path=sample_path(), model=str(copy), remote=None, remote_mode=None)["id"]
    weights = copy / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1  # one bit of a weight changed: a different model with the same name
    weights.write_bytes(bytes(data))
    assert run_identity(data_path=sample_path(), model=str(copy), remote=None, remote_mode=None)["id"] != same["id"]
