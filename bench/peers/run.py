"""Streaming exposure, qwenguard beside its peers: one combined table.

    python bench/peers/run.py               # full: warm-up + medians of 3 (about half an hour on 2 cores)
    python bench/peers/run.py --quick       # one run per setting
    python bench/peers/run.py --json out.json --only nemo qwenguard

Runs each peer's runner (bench/peers/<peer>.py) with the Python of its own virtual environment
(``${PEERS_VENVS:-/work/peer-venvs}/<peer>``, made by setup.sh) and bench/exposure.py with this
interpreter, all in JSON mode; a runner that is missing or fails becomes a row with its error.
Everything consumes the same scripted stream from the same scripted server code with the same
judges (bench/streamkit.py). Not part of CI.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
BENCH = HERE.parent
sys.path.insert(0, str(BENCH))

import streamkit as sk  # noqa: E402

VENVS = Path(os.environ.get("PEERS_VENVS", "/work/peer-venvs"))
RUNNERS = {  # framework -> (venv, runner)
    "nemo": ("nemo", HERE / "nemo.py"),
    "guardrails-ai": ("guardrails_ai", HERE / "guardrails_ai.py"),
    "llm-guard": ("llm_guard", HERE / "llm_guard.py"),
    "langchain": ("langchain_pii", HERE / "langchain_pii.py"),
}


def _log(message: str) -> None:
    print(f"[peers {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def run_one(name: str, python: str, script: Path, args: list[str], timeout: float) -> list[dict]:
    if not Path(python).exists():
        return [
            sk.Row(name, "-", "-", error=f"no venv at {Path(python).parent.parent}: run bench/peers/setup.sh").to_dict()
        ]
    cmd = [python, str(script), "--json", *args]
    _log(f"{name}: {' '.join(cmd)}")
    started = time.perf_counter()
    try:
        # the runner's progress log (stderr) goes straight through; its rows come back on stdout
        proc = subprocess.run(
            cmd, stdout=subprocess.PIPE, stderr=None, text=True, timeout=timeout, cwd=str(BENCH.parent)
        )
    except subprocess.TimeoutExpired:
        return [sk.Row(name, "-", "-", error=f"runner timed out after {timeout:.0f} s").to_dict()]
    _log(f"{name}: exit {proc.returncode} in {time.perf_counter() - started:.0f} s")
    lines = [ln for ln in proc.stdout.strip().splitlines() if ln.startswith("[")]
    if proc.returncode != 0 or not lines:
        tail = (proc.stdout or "no output; see the log above").strip().splitlines()[-3:]
        return [sk.Row(name, "-", "-", error=f"runner exit {proc.returncode}: {' / '.join(tail)}"[:300]).to_dict()]
    return json.loads(lines[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--pace", type=float, default=0.02)
    parser.add_argument("--latency", type=float, default=0.07)
    parser.add_argument("--judges", default="oracle,demo", help="oracle,demo (qwenguard also runs demo-stream)")
    parser.add_argument("--only", nargs="*", help="frameworks to run: qwenguard nemo guardrails-ai llm-guard langchain")
    parser.add_argument("--qwenguard-paths", nargs="*", help="passed to exposure.py --paths")
    parser.add_argument("--json", metavar="FILE", help="also write the rows to FILE")
    parser.add_argument("--timeout", type=float, default=3000, help="seconds per runner")
    args = parser.parse_args(argv)
    common = ["--reps", str(args.reps), "--pace", str(args.pace), "--latency", str(args.latency)]
    if args.quick:
        common.append("--quick")
    only = set(args.only or ["qwenguard", *RUNNERS])
    rows: list[dict] = []
    started = time.perf_counter()
    if "qwenguard" in only:
        judges = args.judges + (",demo-stream" if "demo" in args.judges else "")
        extra = ["--paths", *args.qwenguard_paths] if args.qwenguard_paths else []
        rows += run_one(
            "qwenguard", sys.executable, BENCH / "exposure.py", [*common, "--judges", judges, *extra], args.timeout
        )
    for name, (venv, script) in RUNNERS.items():
        if name in only:
            rows += run_one(
                name, str(VENVS / venv / "bin" / "python"), script, [*common, "--judges", args.judges], args.timeout
            )
    _log(f"all runners done in {time.perf_counter() - started:.0f} s")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    oracle = [r for r in rows if str(r.get("judge", "")).startswith("oracle") or r.get("judge") == "-"]
    demo = [r for r in rows if r not in oracle]
    print(
        f"pace {args.pace * 1000:.0f} ms/token, oracle {args.latency * 1000:.0f} ms, "
        f"{'1 run' if args.quick else f'median of {args.reps} after a warm-up'}; "
        f"{os.cpu_count()} CPUs"
    )
    print("\n## Oracle judge (deterministic: the rows compare the plumbing)\n")
    print(sk.format_table(oracle))
    if demo:
        print("\n## Demo guard as the judge (the real model path: exposure measures the model too)\n")
        print(sk.format_table(demo))
    return 0


if __name__ == "__main__":
    sys.exit(main())
