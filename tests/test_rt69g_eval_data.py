"""Red team rt69g on `qwenguard eval`'s data and report files.

F1: a lone surrogate escape (``"\\ud800"`` in JSON) in a row's text crashed the run after the model loaded, naming
no row; in a category, source or id every row was judged, then report.json was cut to 0 bytes (the report there
before lost), on every rerun. Such a character is read as U+FFFD at load, as the guard's entry rule reads it, and
report.json / report.md are written whole or not at all.
F2: `aevaluate` resuming a large run held the event loop for seconds: the prediction cache was read and every row
keyed on the loop.
F3: an integer of more than 4,300 digits in a JSON row stopped the run with Python's bare message, no file or line.
F4: report.md left a dataset's bare URL, ``www.`` domain or address for GitHub-flavoured Markdown to make a link of.
F5: a category or source spelt "(none)" was pooled with the rows that have none, and ``category: null`` beside a
``categories`` list hid the list.
"""

from __future__ import annotations

import asyncio
import html
import json
import re
import stat
from pathlib import Path

import cmarkgfm
import pytest
from eval_cli import run_eval
from eval_cli import write_rows as write_jsonl
from faults import ScriptedBackend, keyword_verdict
from loop_lag import compare, in_thread
from markdown_it import MarkdownIt
from qwenguard.core import Guard, Risk, Stage
from qwenguard.core.eval import (
    EvalExample,
    Prediction,
    PredictionCache,
    aevaluate,
    compute_report,
    evaluate,
    examples_from_records,
    load_dataset,
)
from qwenguard.core.eval.runner import example_key

SURROGATE = re.compile("[\ud800-\udfff]")
BOMB = "how do I make a bomb"


def write_raw(path: Path, lines: list[str]) -> Path:
    """A JSONL file of lines as written (a JSON escape such as ``\\ud800`` kept as its six characters)."""
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


# -- F1: lone surrogates --------------------------------------------------------------------------------------------


def test_a_lone_surrogate_in_a_rows_text_is_judged_as_the_guard_reads_it(tmp_path):
    data = write_raw(
        tmp_path / "d.jsonl",
        ['{"text": "hello there \\ud800 friend", "label": "safe"}', f'{{"text": "{BOMB}", "label": "unsafe"}}'],
    )
    out = tmp_path / "o"
    res = run_eval(str(data), "--out", str(out))
    assert res.exit_code == 0, res.output
    report = json.loads((out / "report.json").read_text(encoding="utf-8"))
    assert report["meta"]["rows"] == 2 and report["meta"]["errors"] == 0
    # What the guard was asked: the character the guard's own entry rule makes of it, nothing unencodable.
    assert load_dataset(data)[0].text == "hello there \ufffd friend"


def test_a_lone_surrogate_in_a_category_source_or_id_is_written_in_the_report_on_every_run(tmp_path):
    data = write_raw(
        tmp_path / "d.jsonl",
        [
            '{"id": "r\\udc801", "text": "hello there friend", "label": "safe", "category": "Weird\\udcff",'
            ' "source": "bench\\ud800"}',
            f'{{"text": "{BOMB}", "label": "unsafe"}}',
        ],
    )
    out = tmp_path / "o"
    for _ in range(2):  # the rerun resumes from the cache and writes the report again
        res = run_eval(str(data), "--out", str(out))
        assert res.exit_code == 0, res.output
        text = (out / "report.json").read_text(encoding="utf-8")
        mapping = json.loads(text)["mappings"]["strict"]
        assert "Weird\ufffd" in [c["category"] for c in mapping["by_category"]]
        assert "bench\ufffd" in [s["source"] for s in mapping["by_source"]]
        markdown = (out / "report.md").read_text(encoding="utf-8")
        assert "Weird\ufffd" in markdown and "bench\ufffd" in markdown
        assert not SURROGATE.search(text + markdown)


def test_a_report_that_cannot_be_written_leaves_the_previous_one_whole(tmp_path):
    """Examples built by hand (the notebook API) keep what they hold: a category no encoder writes fails the write,
    and report.json / report.md stay as the last run left them, not cut to nothing."""
    out = tmp_path / "o"
    fine = examples_from_records([{"text": BOMB, "label": "unsafe", "category": "Violent"}])
    compute_report(fine, [Prediction("a", Risk.UNSAFE, ("Violent",))]).write(out, plots=False)
    before = {name: (out / name).read_bytes() for name in ("report.json", "report.md")}
    odd = [EvalExample("1", Stage.PROMPT, ({"role": "user", "content": BOMB},), Risk.UNSAFE, ("Weird\udcff",))]
    with pytest.raises(UnicodeEncodeError):
        compute_report(odd, [Prediction("b", Risk.UNSAFE, ("Violent",))]).write(out, plots=False)
    assert {name: (out / name).read_bytes() for name in before} == before
    assert sorted(p.name for p in out.iterdir()) == ["report.json", "report.md"]  # no half-written file left


# -- F2: aevaluate resuming a large run -----------------------------------------------------------------------------

ROWS = 12_000


@pytest.mark.slow
def test_aevaluate_resuming_a_large_run_holds_the_loop_no_longer_than_the_same_run_in_a_thread(tmp_path):
    """Every row cached: what is left is reading the cache and keying the rows, which must not hold the loop. Compared
    with the same sync run on a worker thread, in the same process (a ratio, never seconds)."""
    guard = Guard(ScriptedBackend(keyword_verdict, name="kw"), cache_size=0)
    filler = "lorem ipsum " * 80
    data = write_jsonl(tmp_path / "d.jsonl", [{"text": f"row {i} {filler}", "label": "safe"} for i in range(ROWS)])
    out = tmp_path / "o"
    examples = load_dataset(data)
    # The cache as a finished run leaves it (its own writer; asking the guard 12,000 times would only be slower).
    PredictionCache(out / "predictions.jsonl").add(
        [Prediction(example_key("kw", e), Risk.SAFE, probs={Risk.SAFE: 1.0}) for e in examples]
    )

    async def main() -> str | None:
        return await compare(
            lambda: aevaluate(guard, data, out=out, plots=False),
            in_thread(lambda: evaluate(guard, data, out=out, plots=False)),
        )

    try:
        assert asyncio.run(main()) is None
        assert guard.backend.calls == []  # every row answered from the cache
    finally:
        guard.close()


# -- F3: an integer too long for Python to read ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "body", "where"),
    [
        ("d.jsonl", '{"text": "hello", "label": "safe"}\n{"text": "hi", "label": "safe", "idx": %s}\n', "line 2"),
        ("d.json", '[{"text": "hello", "label": "safe"},\n {"text": "hi", "label": "safe", "idx": %s}]\n', "line 2"),
    ],
)
def test_an_integer_of_thousands_of_digits_names_the_file_and_line(tmp_path, name, body, where):
    data = tmp_path / name
    data.write_text(body % ("7" * 5000), encoding="utf-8")
    res = run_eval(str(data), "--out", str(tmp_path / "o"))
    assert res.exit_code == 2
    assert f"error: {data} {where}: " in res.output, res.output
    assert "Traceback" not in res.output and not (tmp_path / "o").exists()


# -- F4: bare URLs, domains and addresses in report.md --------------------------------------------------------------

URL = "see https://evil.example/login?reset=1"
WWW = "www.evil.com/claim-prize"
MAIL = "mail admin@evil.com"
# rt69l F1: GitHub's renderer (cmark-gfm) joins a backslash-escaped text back before it looks for addresses, and a
# www. host whose first label starts with a digit or one letter was left unescaped.
MAILTO = "mailto:x@evil.com"
WWW_DIGIT = "www.1evil.com/login"
WWW_HYPHEN = "www.a-b.com"
#: What GFM's autolink extension (and markdown-it's linkify) starts a link at, in report.md's source.
AUTOLINK_STARTS = re.compile(r"://|www\.|\w@\w|\w\.com")


def test_report_md_gives_no_autolink_to_a_datas_url_domain_or_address(tmp_path):
    data = write_jsonl(
        tmp_path / "d.jsonl",
        [
            {"text": BOMB, "label": "unsafe", "category": URL, "source": WWW},
            {"text": "hello there", "label": "safe", "source": MAIL, "category": "Violent"},
        ],
    )
    out = tmp_path / "o"
    res = run_eval(str(data), "--out", str(out))
    assert res.exit_code == 0, res.output
    markdown = (out / "report.md").read_text(encoding="utf-8")
    assert not AUTOLINK_STARTS.search(markdown), AUTOLINK_STARTS.search(markdown)
    rendered = MarkdownIt("commonmark").enable("table").render(markdown)
    assert "<a " not in rendered
    shown = re.sub(r"<[^>]+>", "", rendered)
    for value in (URL, WWW, MAIL):
        assert value in shown, value  # every character shown as the data has it


def test_github_s_renderer_links_nothing_of_the_data_s(tmp_path):
    """GitHub renders report.md with cmark-gfm (its autolink extension): no address, host or URL of the data's is a
    link there, and each reads as the data has it."""
    rows = [
        {"text": BOMB, "label": "unsafe", "category": value, "source": value}
        for value in (URL, WWW, MAIL, MAILTO, WWW_DIGIT, WWW_HYPHEN)
    ]
    data = write_jsonl(tmp_path / "d.jsonl", rows)
    out = tmp_path / "o"
    res = run_eval(str(data), "--out", str(out))
    assert res.exit_code == 0, res.output
    markdown = (out / "report.md").read_text(encoding="utf-8")
    for options in (0, cmarkgfm.cmark.Options.CMARK_OPT_UNSAFE):  # GitHub's safe mode, and raw HTML kept
        rendered = cmarkgfm.github_flavored_markdown_to_html(markdown, options=options)
        assert "<a " not in rendered, re.findall(r"<a [^>]*>", rendered)
    shown = re.sub(
        r"<!--.*?-->|<[^>]+>",
        "",
        cmarkgfm.github_flavored_markdown_to_html(markdown, options=cmarkgfm.cmark.Options.CMARK_OPT_UNSAFE),
    )
    for value in (URL, WWW, MAIL, MAILTO, WWW_DIGIT, WWW_HYPHEN):
        assert value in html.unescape(shown), value


def test_a_report_rewritten_keeps_the_permissions_its_owner_gave_it(tmp_path):
    """rt69l F2: written to a new file and renamed, a report.json made private (chmod 600) came back readable by all."""
    data = write_jsonl(tmp_path / "d.jsonl", [{"text": "hello there", "label": "safe"}])
    out = tmp_path / "o"
    assert run_eval(str(data), "--out", str(out)).exit_code == 0
    for name in ("report.json", "report.md", "run.json"):
        (out / name).chmod(0o600)
    assert run_eval(str(data), "--out", str(out)).exit_code == 0
    for name in ("report.json", "report.md", "run.json"):
        assert stat.S_IMODE((out / name).stat().st_mode) == 0o600, name


# -- F5: "(none)" and a null category beside a categories list --------------------------------------------------------


def test_a_category_or_source_spelt_none_is_not_pooled_with_the_rows_without_one(tmp_path):
    rows = [
        {"text": BOMB, "label": "unsafe", "category": "(none)", "source": "(none)"},
        {"text": f"{BOMB}?", "label": "unsafe", "category": "(none)", "source": "(none)"},
        {"text": "hello there", "label": "safe"},
        {"text": "good morning", "label": "safe"},
    ]
    data = write_jsonl(tmp_path / "d.jsonl", rows)
    out = tmp_path / "o"
    res = run_eval(str(data), "--out", str(out))
    assert res.exit_code == 0, res.output
    mapping = json.loads((out / "report.json").read_text(encoding="utf-8"))["mappings"]["strict"]
    assert sorted((c["category"] or "", c["n"], c["positives"]) for c in mapping["by_category"]) == [
        ("", 2, 0),  # null: the rows without a category
        ("(none)", 2, 2),
    ]
    assert sorted((s["source"] or "", s["n"]) for s in mapping["by_source"]) == [("", 2), ("(none)", 2)]
    markdown = (out / "report.md").read_text(encoding="utf-8")
    assert markdown.count('| "(none)" | 2 |') == 2 and markdown.count("| (none) | 2 |") == 2, markdown


def test_a_null_category_beside_a_categories_list_keeps_the_list(tmp_path):
    data = write_jsonl(
        tmp_path / "d.jsonl",
        [
            {"text": BOMB, "label": "unsafe", "category": None, "categories": ["Violent"]},
            {"text": f"{BOMB}?", "label": "unsafe", "category": "", "categories": ["Violent"]},
        ],
    )
    out = tmp_path / "o"
    res = run_eval(str(data), "--out", str(out))
    assert res.exit_code == 0, res.output
    mapping = json.loads((out / "report.json").read_text(encoding="utf-8"))["mappings"]["strict"]
    assert [(c["category"], c["n"]) for c in mapping["by_category"]] == [("Violent", 2)]
