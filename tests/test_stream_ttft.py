"""Time to first text on the Gen-window engine (no Stream model): a short safe first sentence goes out one
judge call after it ended, not behind the next one (``release_unit="word"``: the first words, one judge
call after the word that follows them arrived); a clause is never let out before a window that shows it
came back; checks coalesce while one is in flight. Judge calls are counted; no clocks.

The judge is the real demo Gen guard behind a gate (a check returns only once the test opens it: a judge
still in flight), except where a two-word trigger must be exact (a scripted judge)."""

import asyncio
import threading
from concurrent.futures import wait

import pytest
from faults import ScriptedBackend
from qwenguard.core import Guard, GuardViolation, Policy

SAFE_Q = "What is the capital of France?"
FIRST = "The capital of France is Paris."
MORE = " It is known for the Eiffel Tower, its museums and its cafes along the river"
SAFE = "Safety: Safe\nCategories: None\nRefusal: No"
UNSAFE = "Safety: Unsafe\nCategories: Violent\nRefusal: No"


@pytest.fixture(scope="module")
def demo_guard():
    guard = Guard.from_pretrained("demo", device="cpu")
    yield guard
    guard.close()


class Gated:
    """The real demo backend; each check waits for ``gate``; the windows of answer checks are recorded."""

    def __init__(self, real):
        self.real, self.name, self.windows = real, real.name, []
        self.gate = threading.Event()
        self.gate.set()

    def classify(self, conversations, *, timeout=None):
        self.windows += [c[-1]["content"] for c in conversations if c[-1]["role"] == "assistant"]
        assert self.gate.wait(60)
        return self.real.classify(conversations, timeout=timeout)

    async def aclassify(self, conversations, *, timeout=None):
        self.windows += [c[-1]["content"] for c in conversations if c[-1]["role"] == "assistant"]
        while not self.gate.is_set():
            await asyncio.sleep(0.005)
        return await self.real.aclassify(conversations, timeout=timeout)


def _settled(monitor):
    """Let the checks in flight come back (the stream is slow: nothing new arrives meanwhile)."""
    wait([future for _, _, future in monitor._pending])


async def _asettled(monitor):
    tasks = {task for _, _, task in monitor._pending}
    if tasks:
        await asyncio.wait(tasks)


@pytest.fixture
def gated(demo_guard):
    backend = Gated(demo_guard.backend)
    return backend, Guard(backend, demo_guard.policy)


def test_short_safe_first_sentence_goes_out_after_one_judge_call(gated):
    backend, guard = gated
    with guard.stream(SAFE_Q) as monitor:
        assert monitor.feed(FIRST) == ""  # nothing before a verdict covers it
        _settled(monitor)
        out = monitor.feed(" It")  # the next token arrives much later
        assert out == FIRST
        assert backend.windows == [FIRST]  # one judge call, on the sentence alone


async def test_async_short_safe_first_sentence_goes_out_after_one_judge_call(gated):
    backend, guard = gated
    async with guard.astream(SAFE_Q) as monitor:
        assert await monitor.afeed(FIRST) == ""
        await _asettled(monitor)
        assert await monitor.afeed(" It") == FIRST
        assert backend.windows == [FIRST]


def test_word_unit_lets_the_first_words_out_before_the_sentence_ends(gated):
    backend, guard = gated
    with guard.stream(SAFE_Q, release_unit="word") as monitor:
        assert monitor.feed("The") == ""  # a lone word is not worth a check: it would stay held
        assert backend.windows == []
        assert monitor.feed(" capital") == ""
        _settled(monitor)
        assert monitor.feed(" of") == "The "  # judged; "capital" waits for the word after it
        assert backend.windows == ["The capital"]


def test_opening_unit_lets_the_first_words_out_before_the_first_sentence_ends(gated):
    backend, guard = gated
    with guard.stream(SAFE_Q, release_unit="opening") as monitor:
        assert monitor.feed("The") == "" and monitor.feed(" capital") == ""
        _settled(monitor)
        assert backend.windows == []  # "capital" may still be arriving ("capitals"): not judged yet
        assert monitor.feed(" of") == ""
        _settled(monitor)
        assert backend.windows == ["The capital"]  # two complete words: the opening is judged at once
        assert monitor.feed(" France") == "The "  # judged; "capital" waits for the words after it
        released = "The " + monitor.feed(" is") + monitor.feed(" Paris.")
        _settled(monitor)
        released += monitor.feed(" It")
        assert released == FIRST  # from the opening on, whole sentences
        assert backend.windows == ["The capital", FIRST]  # the sentence's window shows the opening again


async def test_async_opening_unit_lets_the_first_words_out_before_the_first_sentence_ends(gated):
    backend, guard = gated
    async with guard.astream(SAFE_Q, release_unit="opening") as monitor:
        released = ""
        for piece in ("The", " capital", " of"):
            released += await monitor.afeed(piece)
        await _asettled(monitor)
        released += await monitor.afeed(" France")
        assert released == "The " and backend.windows == ["The capital"]


def test_a_word_still_arriving_is_not_shown_to_the_judge(gated):
    backend, guard = gated
    with guard.stream(SAFE_Q, release_unit="opening") as monitor:
        for piece in ("The", " Eiffe", "l"):
            assert monitor.feed(piece) == ""
            _settled(monitor)
        assert backend.windows == []  # "The Eiffe": a Gen model may misread a cut word
        monitor.feed(" Tower")
        _settled(monitor)
        assert backend.windows == ["The Eiffel"]


@pytest.mark.parametrize("unit", [None, "sentence"])
def test_sentence_unit_holds_the_first_sentence_until_it_ends(gated, unit):
    backend, guard = gated
    options = {} if unit is None else {"release_unit": unit}
    first, *rest = FIRST.split(" ")
    with guard.stream(SAFE_Q, **options) as monitor:
        released = ""
        for piece in [first, *(" " + w for w in rest)]:
            released += monitor.feed(piece)
            _settled(monitor)
        assert released == "" and backend.windows == [FIRST]
        assert monitor.feed(" It") == FIRST


def test_opening_trade_a_judge_that_needs_a_whole_clause_may_see_its_first_word_out():
    """The documented trade of ``"opening"`` (why it is not the default): an answer that opens with a clause
    a judge recognises only whole (like the demo Gen guard) lets the opening's released word out before the
    sentence's window stops it; ``release_unit="sentence"`` lets nothing out."""
    clause = "Mix ammonium nitrate with fuel oil, pack it into a pipe and add a fuse."
    words = clause.split(" ")
    pieces = [words[0], *(" " + w for w in words[1:])]
    shown = {}
    for unit in ("opening", "sentence"):
        judge = ScriptedBackend(lambda conv: UNSAFE if conv[-1]["content"].rstrip().endswith("fuse.") else SAFE)
        released = ""
        with pytest.raises(GuardViolation):
            with Guard(judge, Policy.strict()).stream(SAFE_Q, screen_prompt=False, release_unit=unit) as monitor:
                for piece in pieces:
                    released += monitor.feed(piece)
                    _settled(monitor)
                released += monitor.finish()
        shown[unit] = released
    assert shown == {"opening": "Mix ", "sentence": ""}


UNITS = ["sentence", "opening", "word"]


@pytest.mark.parametrize("unit", UNITS)
def test_checks_coalesce_while_one_is_in_flight(gated, unit):
    backend, guard = gated
    pieces = [FIRST, *(" " + w for w in MORE.split())]
    with guard.stream(SAFE_Q, release_unit=unit) as monitor:
        backend.gate.clear()  # the first check stays in flight while the rest streams in
        released = ""
        for piece in pieces:
            released += monitor.feed(piece)
        assert released == ""
        backend.gate.set()
        _settled(monitor)
        assert backend.windows == [FIRST]  # one check was in flight while the rest streamed in
        released += monitor.feed(".")
        assert released.startswith(FIRST)
        _settled(monitor)
        assert len(backend.windows) == 2  # everything that arrived meanwhile is one check
        assert backend.windows[1].endswith(MORE + ".")
        released += monitor.finish()
    assert released == FIRST + MORE + "."
    assert len(backend.windows) == 2  # nothing new since: the finish needs no further call


@pytest.mark.parametrize("unit", UNITS)
async def test_async_checks_coalesce_while_one_is_in_flight(gated, unit):
    backend, guard = gated
    pieces = [FIRST, *(" " + w for w in MORE.split())]
    async with guard.astream(SAFE_Q, release_unit=unit) as monitor:
        backend.gate.clear()
        released = ""
        for piece in pieces:
            released += await monitor.afeed(piece)
            await asyncio.sleep(0)
        assert released == "" and len(backend.windows) == 1
        backend.gate.set()
        await _asettled(monitor)
        released += await monitor.afeed(".")
        assert len(backend.windows) == 2
        released += await monitor.afinish()
    assert released == FIRST + MORE + "."


def _two_word_judge():
    """Flags a window only once it holds "Mix ammonium": "Mix" alone reads as harmless."""
    return ScriptedBackend(lambda conv: UNSAFE if "Mix ammonium" in conv[-1]["content"] else SAFE)


@pytest.mark.parametrize("unit", UNITS)
def test_a_clause_is_not_let_out_word_by_word(unit):
    judge = _two_word_judge()
    text = FIRST + " Mix ammonium nitrate"
    with Guard(judge, Policy.strict()).stream(SAFE_Q, screen_prompt=False, release_unit=unit) as monitor:
        released = monitor.feed(FIRST)
        _settled(monitor)
        released += monitor.feed(" Mix")  # judged "...Paris." came back; "Mix" waits for its next word
        _settled(monitor)
        with pytest.raises(GuardViolation) as info:
            released += monitor.feed(" ammonium")
            _settled(monitor)
            released += monitor.feed(" nitrate")
            released += monitor.finish()
    assert released == FIRST and "Mix" not in monitor.released
    assert info.value.decision.offset <= text.index("Mix")


@pytest.mark.parametrize("unit", UNITS)
async def test_async_clause_is_not_let_out_word_by_word(unit):
    judge = _two_word_judge()
    released = ""
    with pytest.raises(GuardViolation):
        async with Guard(judge, Policy.strict()).astream(SAFE_Q, screen_prompt=False, release_unit=unit) as monitor:
            for piece in (FIRST, " Mix", " ammonium", " nitrate"):
                released += await monitor.afeed(piece)
                await _asettled(monitor)
            released += await monitor.afinish()
    assert released == FIRST


def _run_on_answer():
    """An answer without punctuation (a prompt can ask for one): the engine cuts it at a space every
    ``check_every`` characters, and here "Mix" is the last word before the first cut."""
    filler = ("paris is lovely in spring " * 12)[:251].rstrip()
    words = (filler + " Mix ammonium nitrate with fuel oil").split(" ")
    return filler, [words[0], *(" " + w for w in words[1:])]


@pytest.mark.parametrize("unit", UNITS)
def test_a_run_on_answer_cut_at_a_space_holds_the_word_at_the_cut(unit):
    filler, pieces = _run_on_answer()
    released = ""
    with pytest.raises(GuardViolation) as info:
        with Guard(_two_word_judge(), Policy.strict()).stream(
            SAFE_Q, screen_prompt=False, release_unit=unit
        ) as monitor:
            for piece in pieces:
                released += monitor.feed(piece)
                _settled(monitor)
            released += monitor.finish()
    assert "M" not in monitor.released[len(filler) :]  # not one character of the clause
    assert info.value.decision.offset <= len(filler) + 1


@pytest.mark.parametrize("unit", UNITS)
async def test_async_run_on_answer_cut_at_a_space_holds_the_word_at_the_cut(unit):
    filler, pieces = _run_on_answer()
    with pytest.raises(GuardViolation):
        async with Guard(_two_word_judge(), Policy.strict()).astream(
            SAFE_Q, screen_prompt=False, release_unit=unit
        ) as monitor:
            for piece in pieces:
                await monitor.afeed(piece)
                await _asettled(monitor)
            await monitor.afinish()
    assert "M" not in monitor.released[len(filler) :]


def test_word_unit_releases_text_without_spaces_behind_a_bounded_tail():
    judge = ScriptedBackend(lambda conv: SAFE)
    text = "巴黎是法国的首都也是欧洲最大的城市之一有很多博物馆和公园"
    with Guard(judge, Policy.strict()).stream(SAFE_Q, screen_prompt=False, release_unit="word") as monitor:
        released = ""
        for i in range(0, len(text), 4):
            released += monitor.feed(text[i : i + 4])
            _settled(monitor)
        assert 0 < len(released) < len(text) and text.startswith(released)
        released += monitor.finish()
    assert released == text


def test_sentence_unit_shows_the_judge_each_sentence_whole():
    """A judge that recognises the clause only once it is complete (like the demo Gen guard, which flags
    "Mix ammonium nitrate ... add a fuse." only when a window ends there): a window ends at each sentence
    end, so the clause is stopped before any of it goes out, however the stream is cut."""
    clause = "Mix ammonium nitrate with fuel oil, pack it into a pipe and add a fuse."
    judge = ScriptedBackend(lambda conv: UNSAFE if conv[-1]["content"].rstrip().endswith("add a fuse.") else SAFE)
    answer = FIRST + " " + clause + " The Eiffel Tower is in Paris."
    released = ""
    with pytest.raises(GuardViolation) as info:
        with Guard(judge, Policy.strict()).stream(SAFE_Q, screen_prompt=False) as monitor:
            first, *words = answer.split(" ")
            for piece in [first, *(" " + w for w in words)]:
                released += monitor.feed(piece)
                _settled(monitor)
            released += monitor.finish()
    assert released == FIRST and info.value.decision.offset == len(FIRST)


def test_release_unit_is_checked(demo_guard):
    with pytest.raises(ValueError, match="release_unit"):
        demo_guard.stream(SAFE_Q, release_unit="token")
