"""Run every code block of the README and the docs/ pages as a reader would paste it.

    python docs/check_snippets.py README.md docs/*.md        # what .ci/run does (2 blocks at a time)
    python docs/check_snippets.py --list README.md           # show the blocks and how each is treated

A ```` ```python ```` block runs on its own in a fresh empty directory (so it must build the `guard` it
uses), with a timeout; a ```` ```bash ```` / ```` ```console ```` block runs only when its info string
says ``run`` (```` ```bash run ````). A block that needs what CI does not have says so in its info
string, and is listed but not run: ``needs-gpu``, ``needs-checkpoint`` (a real Qwen3Guard checkpoint),
``needs-server`` (a server or engine that is not started by the block itself), ``needs-network``;
``fragment`` marks a block that is not meant to run alone (a config excerpt, an output sample).
Exit 1 when a block fails, naming the file and line. ``--jobs N`` runs N blocks at once (default 2: each
block is its own process in its own directory, and blocks that serve pick a free port); results are
printed in the pages' order.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

SKIP_MARKS = ("needs-gpu", "needs-checkpoint", "needs-server", "needs-network", "fragment")
_FENCE = re.compile(r"^(?P<indent> {0,3})(?P<fence>`{3,}|~{3,})(?P<info>[^`\n]*)$")


@dataclass
class Block:
    path: Path
    line: int
    lang: str
    marks: tuple[str, ...]
    code: str

    @property
    def skip_reason(self) -> str | None:
        for mark in self.marks:
            if mark in SKIP_MARKS:
                return mark
        if self.lang == "python":
            return None
        if self.lang in ("bash", "sh", "console", "shell") and "run" in self.marks:
            return None
        return f"{self.lang or 'plain'} block"


def blocks(path: Path) -> list[Block]:
    out: list[Block] = []
    lines = path.read_text(encoding="utf-8").splitlines()
    i = 0
    while i < len(lines):
        m = _FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        fence, info = m.group("fence"), m.group("info").strip().split()
        lang, marks = (info[0].lower(), tuple(info[1:])) if info else ("", ())
        start = i + 1
        j = start
        while j < len(lines) and not lines[j].strip().startswith(fence):
            j += 1
        out.append(Block(path, start, lang, marks, "\n".join(lines[start:j]) + "\n"))
        i = j + 1
    return out


def run_block(block: Block, timeout: float) -> tuple[bool, str, float]:
    with tempfile.TemporaryDirectory(prefix="qwenguard-snippet-") as tmp:
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONDONTWRITEBYTECODE": "1"}
        if block.lang == "python":
            script = Path(tmp) / "snippet.py"
            script.write_text(block.code, encoding="utf-8")
            cmd = [sys.executable, str(script)]
        else:
            cmd = ["bash", "-euo", "pipefail", "-c", block.code]
        start = time.perf_counter()
        try:
            p = subprocess.run(cmd, cwd=tmp, env=env, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            return False, f"timed out after {timeout:.0f} s", time.perf_counter() - start
        ok = p.returncode == 0 or (block.lang != "python" and "exit-nonzero" in block.marks)
        return ok, (p.stdout + p.stderr)[-3000:], time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("files", nargs="+", type=Path)
    parser.add_argument("--list", action="store_true", help="list the blocks and what would happen; run nothing")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds per block")
    parser.add_argument("--jobs", type=int, default=2, help="blocks run at once")
    args = parser.parse_args(argv)
    failures = ran = skipped = 0
    runnable: list[Block] = []
    for path in args.files:
        for block in blocks(path):
            where = f"{block.path}:{block.line}"
            reason = block.skip_reason
            if reason is not None:
                skipped += 1
                if args.list:
                    print(f"skip  {where}  ({reason})")
                continue
            if args.list:
                print(f"run   {where}  ({block.lang})")
                continue
            runnable.append(block)
    with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        results = pool.map(lambda b: run_block(b, args.timeout), runnable)  # in order, as each is done
        for block, (ok, output, seconds) in zip(runnable, results, strict=True):
            ran += 1
            print(f"{'ok  ' if ok else 'FAIL'}  {block.path}:{block.line}  ({seconds:.1f} s)", flush=True)
            if not ok:
                failures += 1
                print("      " + output.replace("\n", "\n      "))
    if not args.list:
        print(f"{ran} blocks ran, {failures} failed, {skipped} not run (marked or not runnable)")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
