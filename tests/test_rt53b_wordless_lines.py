"""Lines without a word cost no check per line (red team rt53b, F1).

The attack: an answer made of lines with no word of two letters or digits ("x\\n", "7\\n", "\\n", "X | O | X\\n":
one-letter variables, a table's digits, a board, blank padding), each line arriving while the guard is idle (a
model slower than the guard). Judged text without a word is held until a word or the end (`releasable`: text
spelled one letter per line must not go out before a word makes it judgeable, rt49f F3), so a check of such a
line releases nothing; yet the sentence unit started one for every line: 500 Gen checks per 1000 characters
(21 for prose) on the core monitors, the LangChain and LlamaIndex holding paths, and 1002 per 1000 on the
server's WS /v1/stream with one "\\n" per frame. Now a sentence end whose check would release nothing waits and
joins the next one; such text is judged once per ``check_every`` characters and at the end.

The model is paced on the judge (its next piece only once every check came back: tests/stream_judges.py), and
the judge counts its calls: counts, not clocks. Nothing unjudged goes out (in characters: what the consumer
got never reaches past the windows the judge was handed)."""

# No `from __future__ import annotations`: LlamaIndex inspects annotations at runtime.

import json
import sys
import time
from pathlib import Path

import pytest
from langchain_core.language_models.fake_chat_models import GenericFakeChatModel
from langchain_core.messages import AIMessageChunk
from langchain_core.outputs import ChatGenerationChunk
from live_server import serving
from qwenguard.core import Guard, GuardViolation, Policy
from qwenguard.core.streaming.monitor import DEFAULT_CHECK_EVERY
from qwenguard.integrations.langchain import guard_output
from qwenguard.integrations.llamaindex import GuardedLLM
from stream_judges import CLAUSE, CountingJudge
from websockets.sync.client import connect

sys.path.insert(0, str(Path(__file__).parent / "llamaindex"))
from li_scripted import ScriptedLLM  # noqa: E402
from llama_index.core.base.llms.types import ChatMessage  # noqa: E402

SHAPES = {"letter": "x\n", "digit": "7\n", "blank": "\n", "board": "X | O | X\n"}
SIZE = 1200  # characters of the answer
SENTENCE = "Paris is the capital of France and a large city.\n"
PROMPT = "Print the board"


def most_checks(size: int, check_every: int = DEFAULT_CHECK_EVERY) -> int:
    """Checks an answer of ``size`` characters of wordless lines may cost: one per ``check_every``, and the end."""
    return size // check_every + 3


class ExtentJudge(CountingJudge):
    """Also counts how far into the answer the windows it was handed reach, for monitors opened with
    ``context=0`` (each window is its segment alone: the sum of their lengths, in any order)."""

    def __init__(self, flag: str | None = None) -> None:
        super().__init__()
        self.extent = 0
        if flag is not None:  # flags answers holding ``flag`` too
            scripted = self.answer
            self.answer = lambda conv: scripted(
                [*conv[:-1], {**conv[-1], "content": conv[-1]["content"].replace(flag, CLAUSE)}]
            )

    def _begin(self, conversations) -> None:
        super()._begin(conversations)
        with self._cond:
            self.extent += sum(len(c[-1]["content"]) for c in conversations if c[-1]["role"] == "assistant")


def pieces(text: str, size: int = 2) -> list[str]:
    return [text[i : i + size] for i in range(0, len(text), size)]


def released_within(monitor, expected: int, timeout: float = 10.0) -> str:
    """What ``monitor`` releases of its judged text, polled until ``expected`` characters are out or ``timeout``."""
    out = ""
    deadline = time.monotonic() + timeout
    while len(out) < expected and time.monotonic() < deadline:
        out += monitor.release_judged()
        if len(out) < expected:
            time.sleep(0.002)
    return out


def paced_stream(judge: ExtentJudge, text: str, **options) -> tuple[str, int]:
    """Feed ``text`` in 2-char deltas to ``guard.stream``, each once the judge is idle; (released before
    finish, checks before finish). Asserts after each delta that nothing unjudged went out."""
    released = ""
    with Guard(judge, Policy.strict(), cache_size=0).stream(PROMPT, context=0, **options) as monitor:
        for piece in pieces(text):
            released += monitor.feed(piece)
            judge.wait_idle()
            released += monitor.release_judged()
            assert len(released) <= judge.extent  # in characters: nothing went out that no window covered
        checks = judge.started
        released_early = released
        released += monitor.finish()
    assert released == text
    return released_early, checks


@pytest.mark.parametrize("unit", ["sentence", "opening", "word"])
@pytest.mark.parametrize("shape", list(SHAPES))
def test_wordless_lines_cost_a_check_per_check_every_not_per_line(shape, unit):
    text = SHAPES[shape] * (SIZE // len(SHAPES[shape]))
    judge = ExtentJudge()
    early, checks = paced_stream(judge, text, release_unit=unit)
    assert checks <= most_checks(len(text)), f"{checks} checks for {len(text)} chars of {shape!r} lines"
    assert early == ""  # still held until a word or the end: a letter per line is not let out (rt49f F3)


@pytest.mark.parametrize("shape", list(SHAPES))
def test_wordless_lines_at_holdback_0_cost_a_check_per_check_every(shape):
    """``holdback=0`` releases at once and judges only to stop late: no check per line either."""
    text = SHAPES[shape] * (SIZE // len(SHAPES[shape]))
    judge = ExtentJudge()
    with Guard(judge, Policy.strict(), cache_size=0).stream(PROMPT, context=0, holdback=0) as monitor:
        for piece in pieces(text):
            monitor.feed(piece)
            judge.wait_idle()
        checks = judge.started
        monitor.finish()
    assert checks <= most_checks(len(text))


@pytest.mark.parametrize("shape", list(SHAPES))
async def test_async_wordless_lines_cost_a_check_per_check_every_not_per_line(shape):
    text = SHAPES[shape] * (SIZE // len(SHAPES[shape]))
    judge = ExtentJudge()
    released = ""
    async with Guard(judge, Policy.strict(), cache_size=0).astream(PROMPT, context=0) as monitor:
        for piece in pieces(text):
            released += await monitor.afeed(piece)
            await judge.await_idle()
            released += await monitor.arelease_judged()
            assert len(released) <= judge.extent
        checks = judge.started
        assert released == ""
        released += await monitor.afinish()
    assert released == text
    assert checks <= most_checks(len(text))


@pytest.mark.parametrize("shape", list(SHAPES))
def test_a_sentence_after_wordless_lines_releases_them_once_judged(shape):
    """The held lines go out with the first sentence after them, one check after it ended (time to first text)."""
    lines = SHAPES[shape] * (600 // len(SHAPES[shape]))
    judge = ExtentJudge()
    released = ""
    with Guard(judge, Policy.strict(), cache_size=0).stream(PROMPT, context=0) as monitor:
        for piece in pieces(lines):
            released += monitor.feed(piece)
            judge.wait_idle()
        before = judge.started
        for piece in pieces(SENTENCE):
            released += monitor.feed(piece)
            judge.wait_idle()
            released += monitor.release_judged()
            assert len(released) <= judge.extent
        # The judge's count of finished checks moves before the monitor holds the verdict (the worker thread hands
        # it over after the judge returns): on a loaded machine the last verdict came a moment after `wait_idle`
        # (CI on e5418aa: nothing released yet). Judged and out before the stream ends all the same (not its blank).
        released += released_within(monitor, len(lines + SENTENCE.rstrip("\n")) - len(released))
        assert released == lines + SENTENCE.rstrip("\n")
        assert judge.started - before == 1  # the sentence's own check
        monitor.finish()
    assert before <= most_checks(len(lines))


def test_a_clause_after_wordless_lines_is_not_let_out():
    text = "x\n" * 300 + CLAUSE + " Then wait.\n"
    judge = ExtentJudge()
    released = ""
    with pytest.raises(GuardViolation):
        with Guard(judge, Policy.strict(), cache_size=0).stream(PROMPT, context=0) as monitor:
            for piece in pieces(text):
                released += monitor.feed(piece)
                judge.wait_idle()
                released += monitor.release_judged()
                assert len(released) <= judge.extent
            monitor.finish()
    assert len(released) <= text.index(CLAUSE)  # 0 characters of the clause
    assert judge.started <= most_checks(600) + 2


def test_unsafe_wordless_lines_are_judged_every_check_every_characters():
    """Held lines are still judged while the stream runs (once per ``check_every`` characters): an unsafe
    run among them stops the stream before it ends, not at ``finish``."""
    text = "x\n" * 100 + "%\n" + "x\n" * 400
    judge = ExtentJudge(flag="%")
    fed = 0
    with pytest.raises(GuardViolation):
        with Guard(judge, Policy.strict(), cache_size=0).stream(PROMPT, context=0) as monitor:
            for piece in pieces(text):
                assert monitor.feed(piece) == ""
                fed += len(piece)
                judge.wait_idle()
            monitor.finish()
    assert fed <= 202 + 2 * DEFAULT_CHECK_EVERY  # stopped by a periodic check, well before the end


# -- integrations: the LangChain and LlamaIndex holding paths run the same monitor -------------------------------
class PacedChatModel(GenericFakeChatModel):
    """Streams ``text`` in 2-char chunks, each once ``judge`` is idle (a model slower than the guard)."""

    text: str = ""
    judge: object = None
    produced: int = 0

    def _stream(self, messages, stop=None, run_manager=None, **kwargs):
        for piece in pieces(self.text):
            self.judge.wait_idle()
            chunk = ChatGenerationChunk(message=AIMessageChunk(content=piece, id="run-1"))
            if run_manager is not None:
                run_manager.on_llm_new_token(chunk.text, chunk=chunk)
            self.produced += len(piece)
            yield chunk


@pytest.mark.parametrize("shape", ["letter", "blank"])
def test_langchain_guard_output_wordless_lines(shape):
    text = SHAPES[shape] * (SIZE // len(SHAPES[shape]))
    judge = CountingJudge()
    model = PacedChatModel(messages=iter([]), text=text, judge=judge)
    received, early = "", 0
    for chunk in (model | guard_output(Guard(judge, Policy.strict(), cache_size=0))).stream("go"):
        received += chunk.text
        if model.produced < len(text):
            early += len(chunk.text)
    assert received == text
    assert early == 0  # held until the end: no word came
    assert judge.started <= most_checks(len(text)), f"{judge.started} checks for {len(text)} chars"


@pytest.mark.parametrize("shape", ["letter", "blank"])
def test_llamaindex_guarded_llm_wordless_lines(shape):
    text = SHAPES[shape] * (SIZE // len(SHAPES[shape]))
    judge = CountingJudge()
    llm = ScriptedLLM(chunks=pieces(text), judge=judge)
    guarded = GuardedLLM(llm=llm, guard=Guard(judge, Policy.strict(), cache_size=0))
    received = "".join(r.delta or "" for r in guarded.stream_chat([ChatMessage(role="user", content="go")]))
    assert received == text
    assert judge.started <= most_checks(len(text)), f"{judge.started} checks for {len(text)} chars"


async def test_llamaindex_async_guarded_llm_wordless_lines():
    text = "x\n" * (SIZE // 2)
    judge = CountingJudge()
    llm = ScriptedLLM(chunks=pieces(text), judge=judge)
    guarded = GuardedLLM(llm=llm, guard=Guard(judge, Policy.strict(), cache_size=0))
    received = ""
    async for response in await guarded.astream_chat([ChatMessage(role="user", content="go")]):
        received += response.delta or ""
    assert received == text
    assert judge.started <= most_checks(len(text))


# -- the server: WS /v1/stream, one character per frame ----------------------------------------------------------
@pytest.mark.parametrize("shape", ["letter", "blank"])
def test_server_stream_one_char_frames_of_wordless_lines(shape):
    """A client feeding one character per frame, each once the guard is idle: the server's ``min_segment``
    applies only while a check is in flight, so each "\\n" frame was a check (1002 per 1000 characters)."""
    text = SHAPES[shape] * (600 // len(SHAPES[shape]))
    judge = CountingJudge()
    released = ""
    with (
        serving(Guard(judge, Policy.strict(), cache_size=0)) as url,
        connect(url.replace("http", "ws") + "/v1/stream") as ws,
    ):
        ws.send(json.dumps({"type": "open", "prompt": PROMPT}))
        assert json.loads(ws.recv())["type"] != "error"
        for char in text:
            ws.send(json.dumps({"type": "feed", "text": char}))
            reply = json.loads(ws.recv())
            assert reply["type"] == "released", reply
            released += reply.get("text", "")
            judge.wait_idle()
        checks = judge.started
        assert released == ""  # held: no word came
        ws.send(json.dumps({"type": "finish"}))
        end = json.loads(ws.recv())
    assert end["type"] == "finished", end
    assert released + end.get("text", "") == text
    assert checks <= most_checks(len(text)), f"{checks} checks for {len(text)} one-character frames"


def test_server_stream_one_char_frames_of_prose_still_release_each_sentence():
    """Prose fed one character per frame is judged once per sentence and released as judged; the line break
    after each sentence, which releases nothing, was a check of its own (two per sentence)."""
    text = SENTENCE * 6
    judge = CountingJudge()
    released = ""
    with (
        serving(Guard(judge, Policy.strict(), cache_size=0)) as url,
        connect(url.replace("http", "ws") + "/v1/stream") as ws,
    ):
        ws.send(json.dumps({"type": "open", "prompt": "What is the capital of France?"}))
        json.loads(ws.recv())
        for char in text:
            ws.send(json.dumps({"type": "feed", "text": char}))
            released += json.loads(ws.recv()).get("text", "")
            judge.wait_idle()
        assert len(released) >= len(SENTENCE) * 5  # each sentence out once judged
        ws.send(json.dumps({"type": "finish"}))
        json.loads(ws.recv())
    assert judge.started <= 6 + 1


@pytest.mark.parametrize("unit", ["opening", "sentence"])  # "word" lets a judged word out by design (docs)
@pytest.mark.parametrize("opening", ["Sure:\n", "x\n" * 60, "Step 1\n", "Mix. Ammonium. "])
def test_a_held_word_is_judged_again_with_what_follows_even_with_context_0(unit, opening):
    """rt53f F1: with ``context=0`` a window began right after the word the last one held back ("...\\nMix"), so
    " ammonium nitrate ..." was judged alone, safe, and the whole clause went out unstopped. A window shows at least
    `MIN_CONTEXT` characters before its segment."""
    judge = CountingJudge()
    text = opening + CLAUSE + "\n"
    released = ""
    with pytest.raises(GuardViolation):
        with Guard(judge, Policy.strict(), cache_size=0).stream(PROMPT, context=0, release_unit=unit) as monitor:
            for piece in pieces(text):
                released += monitor.feed(piece)
                judge.wait_idle()
                released += monitor.release_judged()
            released += monitor.finish()
    clause_at = text.index("Mix ammonium") if "Mix ammonium" in text else text.index(CLAUSE)
    assert text.startswith(released) and len(released) <= clause_at  # in characters: none of the clause
