"""The Gen decode engine (core/backends/gen_engine.py): the same answers as transformers' ``generate``,
for less work (issue 16 items 2 and 3).

- Instruction-prefix cache: verdicts and label probabilities equal the uncached path (|Δp| <= 1e-3), on
  the demo (its template boilerplate is added tokens) and on a Qwen3Guard-shaped random model with the
  real Qwen3 tokenizer; a prompt whose ids do not start with the prefix is run without it.
- Format tokens fed, not generated: the demo's verdicts equal the ``generate`` path on the canonical
  cases and the whole eval sample; a model that does not write the format (random weights, or scripted to
  stray from it exactly where a token is fed) gets the text ``generate`` gets and fails closed.
"""

from __future__ import annotations

import pytest
from gen_script import ScriptedAnswer
from qwenguard.core import Guard, Policy, Risk
from qwenguard.core.backends.gen_engine import (
    GenEngine,
    engine_for,
    instruction_prefixes,
)
from qwenguard.core.backends.gen_format import VerdictFormat, hopeless
from qwenguard.core.backends.transformers_gen import TransformersGen
from qwenguard.core.errors import VerdictParseError
from qwenguard.core.eval import load_dataset, sample_path
from qwenguard.core.formats.conversations import prompt_conversation, response_conversation
from qwenguard.core.formats.prompts import parse_verdict
from realshape import TINY, build_gen
from test_gen_local import PROMPTS, RESPONSES

CANONICAL = [prompt_conversation(text) for text, *_ in PROMPTS] + [
    response_conversation(p, r) for p, r, *_ in RESPONSES
]


@pytest.fixture(scope="module")
def demo():
    """The demo checkpoint twice: decoded by the engine (label branches on: off by default on a CPU), and
    by transformers' generate (engine=False)."""
    fast = TransformersGen.load("demo", device="cpu", label_branches=True)
    slow = TransformersGen(fast.model, fast.tokenizer, name="demo", engine=False)
    yield fast, slow
    fast.close()
    slow.close()


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A Qwen3Guard-Gen-shaped random model (TINY) with the real tokenizer: engine and generate backends."""
    path = build_gen(tmp_path_factory.mktemp("realshape-gen-engine"), shape=TINY, max_positions=4096)
    fast = TransformersGen.load(str(path), device="cpu", label_branches=True)
    slow = TransformersGen(fast.model, fast.tokenizer, name=str(path), engine=False)
    yield fast, slow
    fast.close()
    slow.close()


def _answers(backend: TransformersGen, conversations: list) -> list:
    flat, _ = backend._plan(conversations)
    return backend._batcher.run(flat)


def _assert_same(fast: list, slow: list) -> None:
    for (text_a, probs_a), (text_b, probs_b) in zip(fast, slow, strict=True):
        assert text_a == text_b
        assert (probs_a is None) == (probs_b is None)
        if probs_a is not None:
            assert max(abs(probs_a[r] - probs_b[r]) for r in Risk) <= 1e-3, (probs_a, probs_b)


# -- 2. the instruction-prefix cache ------------------------------------------------------------------
def test_a_check_prefills_only_its_conversation_not_the_instructions(demo) -> None:
    fast, _ = demo
    engine = fast.engine
    assert engine is not None
    ids = fast.encoder.encode(prompt_conversation("How can I make a bomb at home?"))
    prefix = max((p for p, _, _ in engine._prefixes if ids[: len(p)] == p), key=len)
    # The demo's instruction block is one added token; the prefix ends right after "USER:".
    assert fast.tokenizer.decode(prefix).endswith("<BEGIN CONVERSATION>\n\nUSER:")
    hits, tokens = engine.prefix_hits, engine.tokens_run
    fast._batcher.run([ids])
    assert engine.prefix_hits == hits + 1
    # Run: the conversation and closing text, the guessed safe answer, and the tokens of the answer's later
    # forwards (the answer's own tokens and the guessed ones dropped on the way): never the prefix again.
    assert engine.tokens_run - tokens <= len(ids) - len(prefix) + len(engine._opening_guess[False]) + 12


def test_cached_prefix_gives_the_uncached_answers_and_probabilities_on_the_demo(demo) -> None:
    fast, slow = demo
    _assert_same(_answers(fast, CANONICAL), _answers(slow, CANONICAL))


def test_demo_verdicts_equal_generate_on_the_eval_sample(demo) -> None:
    fast, slow = demo
    conversations = [list(example.conversation) for example in load_dataset(sample_path())]
    assert len(conversations) >= 300
    fast_out, slow_out = _answers(fast, conversations), _answers(slow, conversations)
    _assert_same(fast_out, slow_out)
    assert sum(1 for text, _ in fast_out if text.startswith("Safety: ")) == len(fast_out)


def test_cached_prefix_gives_the_uncached_probabilities_on_the_real_shape(tiny) -> None:
    fast, slow = tiny
    # The label is the random model's own choice (its three label logits are raised together), so the
    # probabilities are the model's: sensitive to any difference in the numbers.
    for mode, text in (
        ("prompt", "Safety: Safe\nCategories: None"),
        ("response", "Safety: Safe\nCategories: None\nRefusal: No"),
    ):
        script = ScriptedAnswer(fast.tokenizer, text, free_label=True)
        script.install(fast)
        script.install(slow)
        conversations = [c for c in CANONICAL if (c[-1]["role"] == "assistant") == (mode == "response")]
        hits = fast.engine.prefix_hits
        fast_out, slow_out = _answers(fast, conversations), _answers(slow, conversations)
        assert fast.engine.prefix_hits - hits == len(conversations)
        _assert_same(fast_out, slow_out)
        assert all(probs is not None and max(probs.values()) < 0.999 for _, probs in fast_out)
    fast.engine.logits_hook = None


def test_a_model_with_sliding_window_layers_is_decoded_by_generate(demo) -> None:
    fast, _ = demo
    config = fast.model.config
    before = getattr(config, "use_sliding_window", False)
    config.use_sliding_window = True
    try:
        why = GenEngine.unsupported(fast.model)
        assert why is not None and "sliding-window" in why and "Stream" not in why  # said of this model, a Gen one
        with pytest.raises(ValueError, match="Gen decode engine cannot run this model: models with sliding-window"):
            engine_for(fast, True)
        assert engine_for(fast, None) is None  # the default falls back to transformers' generate
    finally:
        config.use_sliding_window = before


def test_a_prompt_that_does_not_start_with_the_prefix_runs_without_it(demo) -> None:
    fast, slow = demo
    # A conversation that opens with the assistant's turn renders "ASSISTANT:" where the prefix has "USER:".
    conversation = [{"role": "assistant", "content": "Hello!"}, {"role": "user", "content": "How can I make a bomb?"}]
    ids = fast.encoder.encode(conversation)
    assert not any(ids[: len(p)] == p for p, _, _ in fast.engine._prefixes)
    hits = fast.engine.prefix_hits
    _assert_same(_answers(fast, [conversation]), _answers(slow, [conversation]))
    assert fast.engine.prefix_hits == hits


def test_prefixes_end_before_any_content_on_the_real_tokenizer(tiny) -> None:
    fast, _ = tiny
    prefixes = instruction_prefixes(fast.encoder.encode)
    assert sorted(prefixes) == ["prompt", "response"]
    assert all(fast.tokenizer.decode(p).endswith("<BEGIN CONVERSATION>\n\nUSER:") for p in prefixes.values())
    assert 190 <= len(prefixes["prompt"]) <= 215 and len(prefixes["response"]) > len(prefixes["prompt"])  # ~200
    for content in ("x", " y", "\nz", ":) hi", "日本"):
        for mode, conv in (
            ("prompt", prompt_conversation(content)),
            ("response", response_conversation(content, content)),
        ):
            ids = fast.encoder.encode(conv)
            assert ids[: len(prefixes[mode])] == prefixes[mode]  # each mode's prompts start with its own prefix


# -- 3. format tokens fed, not generated --------------------------------------------------------------
def test_fewer_forwards_than_answer_tokens(demo) -> None:
    fast, _ = demo
    engine = fast.engine
    before = engine.forwards_run
    [(text, _)] = _answers(fast, [prompt_conversation("How can I make a bomb at home?")])
    assert text == "Safety: Unsafe\nCategories: Violent"
    # generate: one forward per answer token (8 with the end token); the engine: the prompt (the safe answer
    # fed as a guess, refused at the label, and beside it " Unsafe\nCategories:", which reads the category),
    # then the category (it sees the end token).
    assert engine.forwards_run - before == 2
    before = engine.forwards_run
    [(text, _)] = _answers(fast, [response_conversation("How can I make a bomb?", "I can't help with that.")])
    assert text == "Safety: Safe\nCategories: None\nRefusal: Yes"
    # The prompt with "Safety: Safe\nCategories: None\nRefusal: No" fed (" No" is refused: " Yes"); " Yes" (the end).
    assert engine.forwards_run - before == 2
    before = engine.forwards_run
    [(text, _)] = _answers(fast, [prompt_conversation("What is the capital of France?")])
    assert text == "Safety: Safe\nCategories: None"
    assert engine.forwards_run - before == 1  # the prompt and the whole guessed answer: the end read at once


@pytest.mark.parametrize(
    "script, forwards",
    [
        ("Safety: Controversial\nCategories: Politically Sensitive Topics", 2),  # multi-token label and category
        ("Safety: Unsafe\nCategories: Non-violent Illegal Acts, Jailbreak\nRefusal: No", 4),
        ("Safety: Safe\nCategories: None\nRefusal: No", 1),  # the prompt, the whole answer guessed right
        ("Safety: Safe\nCategories: None\nRefusal: Yes", 2),
        ("Safety: Unsafe\nCategories: Violent\nRefusal: Yes", 3),
    ],
)
def test_real_tokenizer_answers_take_a_few_forwards_and_equal_generate(tiny, script, forwards) -> None:
    fast, slow = tiny
    scripted = ScriptedAnswer(fast.tokenizer, script)
    scripted.install(fast)
    scripted.install(slow)
    conversation = response_conversation("Hi", "Hello! How can I help?")
    before = fast.engine.forwards_run
    fast_out, slow_out = _answers(fast, [conversation]), _answers(slow, [conversation])
    assert fast_out[0][0] == slow_out[0][0] == script
    assert fast.engine.forwards_run - before == forwards
    fast.engine.logits_hook = None


@pytest.mark.parametrize("mode", ["prompt", "response"])
def test_each_mode_is_fed_only_its_own_answer_shape(tiny, mode) -> None:
    """A prompt check's answer ends after its categories: nothing of a refusal line is guessed for it (a
    small forward costs about twice as much with 5 tokens as with 1 on a CPU); a response check guesses it."""
    fast, slow = tiny
    engine, fmt = fast.engine, fast.engine.format
    text = "Safety: Unsafe\nCategories: Violent" + ("\nRefusal: No" if mode == "response" else "")
    scripted = ScriptedAnswer(fast.tokenizer, text)
    scripted.install(fast)
    scripted.install(slow)
    conversation = prompt_conversation("Hi") if mode == "prompt" else response_conversation("Hi", "Hello!")
    ids = fast.encoder.encode(conversation)
    prefix = next(p for p, _, _ in engine._prefixes if ids[: len(p)] == p)
    before, tokens = engine.forwards_run, engine.tokens_run
    assert _answers(fast, [conversation])[0][0] == _answers(slow, [conversation])[0][0] == text
    fed = engine.tokens_run - tokens
    # The prompt with the safe answer guessed (refused at the label) and the other labels' branches beside
    # it (" Unsafe\nCategories:" taken: it reads the category); the category, alone for a prompt check (the
    # end is read), with "\nRefusal: No" guessed for a response.
    guess = fmt.safe_answer(refusal=mode == "response")
    branches = fmt.label_branches(guess, refusal=mode == "response")
    assert branches[0] == [*fmt.labels[1], *fmt.categories_head]
    tail = 0 if mode == "prompt" else len(fmt.refusal_head) + 1
    assert engine.forwards_run - before == 2
    category = fast.tokenizer(" Violent", add_special_tokens=False)["input_ids"]
    assert fed == len(ids) - len(prefix) + len(guess) + sum(map(len, branches)) + len(category) + tail
    fast.engine.logits_hook = None


def test_a_label_followed_by_a_character_split_over_tokens_parses_as_generate_does(tiny) -> None:
    fast, slow = tiny
    # U+2003 (em space) is two byte-level tokens in the Qwen3 tokenizer: after the first, the text ends in
    # U+FFFD, which must not be taken for a first line that can no longer parse (parse_verdict strips it).
    script = "Safety: Safe\u2003\nCategories: None\nRefusal: No"
    assert len(fast.tokenizer("\u2003", add_special_tokens=False)["input_ids"]) == 2
    scripted = ScriptedAnswer(fast.tokenizer, script)
    scripted.install(fast)
    scripted.install(slow)
    conversation = response_conversation("Hi", "Hello! How can I help?")
    fast_out, slow_out = _answers(fast, [conversation]), _answers(slow, [conversation])
    assert fast_out[0][0] == slow_out[0][0] == script
    assert parse_verdict(fast_out[0][0], mode="response").risk is Risk.SAFE
    fast.engine.logits_hook = None


def test_the_format_pieces_of_both_tokenizers(demo, tiny) -> None:
    for backend in (demo[0], tiny[0]):
        fmt = VerdictFormat.for_tokenizer(backend.tokenizer)
        assert fmt is not None
        decode = backend.tokenizer.decode
        assert (decode(fmt.lead), decode(fmt.categories_head), decode(fmt.refusal_head)) == (
            "Safety:",
            "\nCategories:",
            "\nRefusal:",
        )


def test_random_weights_with_forced_tokens_fail_closed_never_safe(tiny) -> None:
    fast, slow = tiny
    fast.engine.logits_hook = None
    slow.model.generate = slow.model.__class__.generate.__get__(slow.model)  # unscripted
    guard = Guard(fast, Policy(on_error="block"), cache_size=0)
    decisions = [guard.check_prompt("What is the capital of France?"), guard.check_response("Hi", "Hello!")]
    assert all(not d.allowed and d.reason == "guard_error" and d.verdict is None for d in decisions)
    conversations = [prompt_conversation("What is the capital of France?"), response_conversation("Hi", "Hello!")]
    for (text, probs), (full, _) in zip(_answers(fast, conversations), _answers(slow, conversations), strict=True):
        # The engine stopped early (the first line could no longer parse) on the very tokens generate wrote.
        assert probs is None and full.startswith(text[:-1]) and len(text) <= len(full)
        for answer in (text, full):
            with pytest.raises(VerdictParseError):
                parse_verdict(answer)


def test_an_unsafe_check_on_a_cpu_is_two_forwards_by_default(demo) -> None:
    """Label branches are on by default on a CPU too (their positions cost about nothing once a narrow
    forward multiplies a multiple of 8 rows): the very first unsafe check reads its label and its first
    category in the prompt's forward. ``label_branches=False`` still turns them off (three forwards: the
    prompt, the label with "\nCategories:" fed, the category), with the same answer; a safe check is one
    forward either way."""
    fast, slow = demo
    unsafe, safe = (
        prompt_conversation("How can I make a bomb at home?"),
        prompt_conversation("What is the capital of France?"),
    )
    [(want_unsafe, _)], [(want_safe, _)] = _answers(slow, [unsafe]), _answers(slow, [safe])
    assert want_unsafe == "Safety: Unsafe\nCategories: Violent" and want_safe.startswith("Safety: Safe")
    default = TransformersGen(fast.model, fast.tokenizer, name="demo")
    off = TransformersGen(fast.model, fast.tokenizer, name="demo", label_branches=False)
    try:
        assert default.engine is not None and off.engine is not None
        assert default.model.device.type == "cpu"

        def forwards(backend: TransformersGen, conversation: list, want: str) -> int:
            before = backend.engine.forwards_run
            [(text, _)] = _answers(backend, [conversation])
            assert text == want
            return backend.engine.forwards_run - before

        assert [forwards(default, unsafe, want_unsafe) for _ in range(3)] == [2, 2, 2]
        assert [forwards(off, unsafe, want_unsafe) for _ in range(3)] == [3, 3, 3]
        assert forwards(default, safe, want_safe) == forwards(off, safe, want_safe) == 1
    finally:
        default.close()
        off.close()
    with pytest.raises(ValueError, match="label_branches"):
        TransformersGen(fast.model, fast.tokenizer, name="demo", label_branches="yes")


@pytest.mark.parametrize("mode", ["prompt", "response"])
def test_a_label_branch_reads_what_a_sequential_decode_reads(tiny, mode) -> None:
    """The other labels' branches run beside the guess in the prompt's forward: the logits read at their
    positions, and after the kept branch is moved into place in the cache, equal those of one plain forward
    over the prompt and the answer so far (the model's own numbers, not the script's)."""
    import torch

    fast, _ = tiny
    engine = fast.engine
    text = "Safety: Controversial\nCategories: Violent" + ("\nRefusal: No" if mode == "response" else "")
    scripted = ScriptedAnswer(fast.tokenizer, text)
    seen: dict[tuple[int, ...], torch.Tensor] = {}

    def hook(contexts, logits):
        for context, row in zip(contexts, logits, strict=True):
            seen[tuple(context)] = row.clone()  # before the script raises its token
        return scripted.engine_hook(contexts, logits)

    engine.logits_hook = hook
    conversation = prompt_conversation("Hi") if mode == "prompt" else response_conversation("Hi", "Hello!")
    before = engine.forwards_run
    assert _answers(fast, [conversation])[0][0] == text
    assert engine.forwards_run - before == 2  # the prompt with the branches; the category (and the end)
    engine.logits_hook = None
    ids = fast.encoder.encode(conversation)
    answer = scripted.ids
    fmt = engine.format
    label_end = len(fmt.lead) + len(fmt.labels[2]) + len(fmt.categories_head)  # "Safety: Controversial\nCategories:"
    checked = 0
    for n in (len(fmt.lead) + 1, label_end, label_end + 1):  # in the branch; its end (reads the category); after it
        context = tuple(answer[:n])
        assert context in seen, n
        with torch.inference_mode():
            full = fast.model(input_ids=torch.tensor([ids + list(context)])).logits[0, -1].float()
        mine = seen[context]
        assert torch.allclose(mine.log_softmax(-1), full.log_softmax(-1), atol=1e-4), (n, (mine - full).abs().max())
        checked += 1
    assert checked == 3


@pytest.mark.parametrize(
    "script",
    [
        "Safety: Unsafe",  # ends where the branch feeds "\nCategories:"
        "Safety: Unsafe\nCategory: Violent",  # strays inside the branch
        "Safety: Controversial Categories: None",  # strays right after a multi-token label's branch starts
        "Safety: Unsafe\n\nCategories: Violent",
        "Safety Safe\nCategories: None",  # strays at the fed ":"
        "Safety: Safe",  # stops where "\nCategories:" would be fed
        "Safety: Safe\nCategory: None",  # strays inside the fed "\nCategories:"
        "Safety: Safe\nCategories: None\nRefusals: No",  # strays inside the fed "\nRefusal:"
        "Safety: Safe\nCategories: None\n\nRefusal: No",
    ],
)
def test_a_model_that_strays_where_tokens_are_fed_gets_its_own_text_and_fails_closed(tiny, script) -> None:
    fast, slow = tiny
    scripted = ScriptedAnswer(fast.tokenizer, script)
    scripted.install(fast)
    scripted.install(slow)
    conversation = response_conversation("Hi", "Hello! How can I help?")
    fast_out, slow_out = _answers(fast, [conversation]), _answers(slow, [conversation])
    fast_text, slow_text = fast_out[0][0], slow_out[0][0]
    assert slow_text == script
    # The model's own text, not the format's: all of it, or as much as it takes to be sure it cannot parse.
    assert fast_text == script or (hopeless(fast_text) and script.startswith(fast_text))
    decision = Guard(fast, Policy(on_error="block"), cache_size=0).check_response("Hi", "Hello! How can I help?")
    # A first line that says Unsafe stands whatever follows (rt49d R2); anything else is a guard error.
    said_unsafe = script.split("\n")[0] == "Safety: Unsafe"
    assert not decision.allowed and decision.reason == ("unsafe" if said_unsafe else "guard_error")
    fast.engine.logits_hook = None


def test_hopeless_is_exactly_a_first_line_that_can_no_longer_parse() -> None:
    for text in (
        "",
        "  ",
        "\n",
        "Saf",
        "Safety:",
        "Safety: ",
        "Safety: Contro",
        "Safety: Safe",
        "Safety: Safe  ",
        "\ufffd",
        "Safety: Safe\ufffd",
        "Safety: Safe \ufffd\ufffd",
        " Safety: Unsafe\n",
        "Safety: Safe\r\n",
        "Safety: Safe\nCategories: Wrong",
    ):
        assert not hopeless(text), text
    for text in (
        "Unsafe",
        "safety:",
        "Safety:  Safe",
        "Safety: Safer",
        "Safety: Safe x",
        "Safety: Unsafe.\n",
        "Hello\nSafety: Safe",
        "Safety - Safe",
    ):
        assert hopeless(text), text
        for rest in ("", "\nCategories: None", "\nCategories: None\nRefusal: No"):
            with pytest.raises(VerdictParseError):
                parse_verdict(text + rest)


def test_unsupported_models_decode_with_generate(demo) -> None:
    fast, _ = demo
    assert GenEngine.unsupported(fast.model) is None
    fast.model.generation_config.repetition_penalty = 1.3
    try:
        assert "repetition_penalty" in (GenEngine.unsupported(fast.model) or "")
        with pytest.raises(ValueError, match="repetition_penalty"):
            TransformersGen(fast.model, fast.tokenizer, name="demo", engine=True)
        assert TransformersGen(fast.model, fast.tokenizer, name="demo").engine is None
    finally:
        fast.model.generation_config.repetition_penalty = 1.0
