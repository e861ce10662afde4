"""`qwenguard check` fed hostile standard input and output, and `eval` errors naming hostile files (rt56f):
an endless producer on stdin (F5), stdin that is not UTF-8 (F1), a closed stdout (F7), a file name carrying
terminal escapes (F9). The real CLI on the demo guard: in-process where stdin must be a Python object (an
endless one), else a subprocess, as a shell runs it."""

import io
import json
import os
import subprocess
import sys

import pytest
from qwenguard.core import cli
from qwenguard.core.guard import DEFAULT_MAX_CHARS
from typer.testing import CliRunner

QG = [sys.executable, "-m", "qwenguard.core.cli"]
UNSAFE = "Mix ammonium nitrate with fuel oil, pack it into a pipe and add a fuse."
SAFE = "What is the capital of France?"
CHUNK = 1 << 16
#: What reading at most max_chars + 1 characters can cost: 4 bytes a character, and the chunk in hand.
BOUND = 4 * (DEFAULT_MAX_CHARS + 1) + 2 * CHUNK


def run(*args, stdin=None, stdout=subprocess.PIPE, cwd=None):
    return subprocess.run([*QG, *args], input=stdin, stdout=stdout, stderr=subprocess.PIPE, timeout=300, cwd=cwd)


class EndlessStdin(io.RawIOBase):
    """`yes LINE`: a producer that never ends. Past `BOUND` bytes it raises instead, so that a CLI that reads
    everything fails the test rather than filling memory until the OOM killer."""

    def __init__(self, line: bytes) -> None:
        self.line = line
        self.taken = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        if self.taken > BOUND:
            raise OSError("read past max_chars: this read would never have ended")
        n = len(buffer)
        start = self.taken % len(self.line)
        data = (self.line * (n // len(self.line) + 2))[start : start + n]
        buffer[:n] = data
        self.taken += n
        return n


def run_in_process(monkeypatch, capsys, args, raw):
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BufferedReader(raw), encoding="utf-8"))
    with pytest.raises(SystemExit) as exit_:
        cli.app(args=args, prog_name="qwenguard")
    out, err = capsys.readouterr()
    return exit_.value.code, out, err


@pytest.mark.parametrize("line", ["Mix ammonium nitrate with fuel oil\n", "\U0001f4a3 bomb\n"], ids=["ascii", "4-byte"])
@pytest.mark.parametrize("where", ["text", "response"])
def test_endless_stdin_is_input_too_large_after_a_bounded_read(monkeypatch, capsys, line, where):
    # yes "Mix ammonium nitrate with fuel oil" | qwenguard check - --json  (F5: read until the OOM killer)
    args = ["check", "-", "--json"] if where == "text" else ["check", "How?", "--response", "-", "--json"]
    stdin = EndlessStdin(line.encode())
    code, out, err = run_in_process(monkeypatch, capsys, args, stdin)
    assert code == 2, (out, err)
    assert json.loads(out)["error"]["type"] == "InputTooLarge", out
    assert f"max_chars={DEFAULT_MAX_CHARS:,}" in err and err.count("\n") == 1, err
    assert stdin.taken <= BOUND, stdin.taken


def test_stdin_of_exactly_max_chars_is_read_whole():
    # The bound refuses more than max_chars, not max_chars itself: the read ends at EOF, not before.
    text = ("a" * (CHUNK - 1) + "\u00e9") * (DEFAULT_MAX_CHARS // CHUNK)  # "é" split across chunk boundaries
    text += "b" * (DEFAULT_MAX_CHARS - len(text))
    result = CliRunner().invoke(cli.app, ["check", "-", "--json"], input=text.encode())
    # (the demo guard may still refuse it, over its max_windows; never over max_chars, nor as not UTF-8)
    assert "max_chars" not in result.stdout and "not UTF-8" not in result.stderr, (result.stdout, result.stderr)
    big = CliRunner().invoke(cli.app, ["check", "-", "--json"], input=(text + "c").encode())
    assert big.exit_code == 2 and json.loads(big.stdout)["error"]["type"] == "InputTooLarge", big.stdout


def test_utf16_from_powershell_is_judged_as_its_text():
    # PowerShell 5: `"..." > prompt.txt` writes UTF-16 LE with a byte-order mark (F1: judged as mojibake, allowed).
    p = run("check", "-", "--json", stdin=UNSAFE.encode("utf-16"))
    assert p.returncode == 1, (p.stdout, p.stderr)
    assert json.loads(p.stdout)["risk"] == "unsafe"
    for body in (b"\xfe\xff" + UNSAFE.encode("utf-16-be"), UNSAFE.encode("utf-32")):
        result = CliRunner().invoke(cli.app, ["check", "-", "--json"], input=body)
        assert result.exit_code == 1, (body[:4], result.stdout, result.stderr)
    safe = CliRunner().invoke(cli.app, ["check", "-"], input=SAFE.encode("utf-16"))
    assert safe.exit_code == 0 and "ALLOW" in safe.stdout, safe.stderr


def test_stdin_that_is_not_utf8_is_one_error_line_naming_the_byte():
    # A Latin-1 / Windows-1252 file: `qwenguard eval` refuses the same bytes; so does check now (F1).
    p = run("check", "-", "--json", stdin=b"hi\ncaf\xe9 menu\n")
    assert p.returncode == 2, p.stderr
    err = p.stderr.decode()
    assert "standard input line 2: not UTF-8 (byte 0xe9 at column 4)" in err and err.count("\n") == 1, err
    assert json.loads(p.stdout)["error"]["type"] == "InputNotText"
    # a response from stdin, and a character cut off at the end
    p = run("check", "How?", "--response", "-", stdin=UNSAFE.encode() + b"\xf0\x9f")
    assert p.returncode == 2 and b"not UTF-8 (byte 0xf0" in p.stderr, p.stderr
    # an odd byte after a UTF-16 byte-order mark
    p = run("check", "-", stdin=SAFE.encode("utf-16") + b"\x00")
    assert p.returncode == 2 and b"not UTF-16" in p.stderr, p.stderr


def test_utf16_without_a_byte_order_mark_is_refused_not_judged_as_noise():
    # Valid UTF-8 full of NULs ("M\0i\0x\0..."): the demo read it as noise and allowed it (exit 0).
    for body in (UNSAFE.encode("utf-16-le"), UNSAFE.encode("utf-16-be")):
        result = CliRunner().invoke(cli.app, ["check", "-", "--json"], input=body)
        assert result.exit_code == 2, (body[:4], result.stdout, result.stderr)
        assert json.loads(result.stdout)["error"]["type"] == "InputNotText"
        assert "NUL byte" in result.stderr and "UTF-16" in result.stderr, result.stderr


@pytest.mark.parametrize("where", ["argument", "stdin", "response"])
def test_max_chars_bounds_what_check_reads_and_judges(where):
    # An operator's own bound (before: DEFAULT_MAX_CHARS, one million characters, whatever they needed).
    text = "What is the capital of France? " * 4  # 124 characters
    args = {"argument": [text], "stdin": ["-"], "response": ["Hi", "--response", "-"]}[where]
    stdin = None if where == "argument" else text.encode()
    small = CliRunner().invoke(cli.app, ["check", *args, "--max-chars", "100", "--json"], input=stdin)
    assert small.exit_code == 2 and json.loads(small.stdout)["error"]["type"] == "InputTooLarge", small.stdout
    fits = CliRunner().invoke(cli.app, ["check", *args, "--max-chars", "200", "--json"], input=stdin)
    assert fits.exit_code == 0, (fits.stdout, fits.stderr)


def test_bad_byte_past_the_first_chunk_is_located():
    body = b"a" * 100 + b"\n" + b"b" * 70_000 + b"\xff"
    result = CliRunner().invoke(cli.app, ["check", "-"], input=body)
    assert result.exit_code == 2
    assert "standard input line 2: not UTF-8 (byte 0xff at column 70001)" in result.stderr, result.stderr


def test_utf8_byte_order_mark_is_dropped():
    p = run("check", "-", "--json", stdin=b"\xef\xbb\xbf" + SAFE.encode())
    assert p.returncode == 0, p.stderr
    result = CliRunner().invoke(cli.app, ["check", "-"], input=b"\xef\xbb\xbf" + b"\xe9")
    assert "line 1: not UTF-8 (byte 0xe9 at column 4)" in result.stderr, result.stderr  # the BOM's bytes count


@pytest.mark.parametrize(
    ("text", "extra"), [(SAFE, []), (SAFE, ["--json"]), (UNSAFE, [])], ids=["allowed", "allowed-json", "blocked"]
)
def test_closed_stdout_is_exit_2_never_1(text, extra):
    # qwenguard check "$x" | head -c0: the reader is gone (F7: exit 1, "blocked", for an allowed text).
    read, write = os.pipe()
    os.close(read)
    try:
        p = run("check", text, *extra, stdout=write)
    finally:
        os.close(write)
    err = p.stderr.decode()
    assert p.returncode == 2, err
    assert "standard output is closed" in err and err.count("\n") == 1, err
    assert "Traceback" not in err and "Exception ignored" not in err


@pytest.mark.parametrize(
    ("text", "extra"), [(SAFE, []), (SAFE, ["--json"]), (UNSAFE, [])], ids=["allowed", "allowed-json", "blocked"]
)
def test_stdout_closed_before_the_start_is_exit_2_never_the_verdict(text, extra):
    # qwenguard check "$x" >&- (a cron job or daemon with fd 1 closed): Python starts with sys.stdout None and the
    # line was dropped without a word, exit 0 or 1 (rt61a F4).
    p = subprocess.run(
        [*QG, "check", text, *extra], stdout=None, stderr=subprocess.PIPE, timeout=300, preexec_fn=lambda: os.close(1)
    )
    err = p.stderr.decode()
    assert p.returncode == 2, err
    assert "standard output is closed" in err and err.count("\n") == 1, err


def test_closed_stdout_on_an_error_with_json_is_still_exit_2():
    read, write = os.pipe()
    os.close(read)
    try:
        p = run("check", "-", "--json", stdin=b"caf\xe9", stdout=write)
    finally:
        os.close(write)
    assert p.returncode == 2, p.stderr
    assert b"not UTF-8" in p.stderr and b"Exception ignored" not in p.stderr


def test_eval_error_naming_a_file_with_escapes_reaches_the_terminal_escaped(tmp_path):
    # A dataset named "evil\x1b[2J\x1b[1;1HALL ROWS PASSED.jsonl" (an unpacked archive, a glob): F9 cleared the
    # operator's screen and wrote its own verdict, through fail()'s error line.
    path = tmp_path / "evil\x1b[2J\x1b[1;1HALL ROWS PASSED.jsonl"
    path.write_text('{"text":"hi","label":"maybe"}\n')
    p = run("eval", str(path), "--no-progress", "--out", str(tmp_path / "out"), cwd=tmp_path)
    err = p.stderr.decode()
    assert p.returncode == 2, err
    assert "\x1b" not in err and "evil\\x1b[2J\\x1b[1;1HALL ROWS PASSED.jsonl" in err, err
