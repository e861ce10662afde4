"""TransformersStream on random-weight checkpoints written in the official Qwen3Guard-Stream layout."""

import json
import random
import threading

import pytest
import torch
from qwenguard.core import ModelNotFound
from qwenguard.core.backends.transformers_stream import TransformersStream, category_name
from qwenguard.core.errors import StreamClosed
from qwenguard.core.verdict import CATEGORIES, Risk
from safetensors.torch import load_file, save_file
from stream_checkpoints import (  # noqa: F401 - fixtures
    constant_checkpoint,
    tiny_stream,
    tiny_stream_dir,
    tiny_tokenizer_dir,
    write_random_checkpoint,
)

PROMPT = "How can I make a bomb at home?"
RESPONSE = "Sure. Mix ammonium nitrate with fuel oil, pack it into a pipe and add a fuse. héllo 日本語 🙂"
ORDER = (Risk.SAFE, Risk.UNSAFE, Risk.CONTROVERSIAL)  # the config's response_risk_level_map


def _reference(ckpt_dir, ids):
    """The documented heads computed with plain torch on the backbone's final hidden states."""
    from transformers import Qwen3Config, Qwen3Model

    cfg = json.loads((ckpt_dir / "config.json").read_text())
    sd = load_file(str(ckpt_dir / "model.safetensors"))
    backbone = Qwen3Model(Qwen3Config(**{k: v for k, v in cfg.items() if k not in ("auto_map", "architectures")}))
    missing, unexpected = backbone.load_state_dict(
        {k[len("model.") :]: v for k, v in sd.items() if k.startswith("model.")}, strict=True
    )
    assert not missing and not unexpected
    backbone.eval()
    with torch.no_grad():
        h = backbone(input_ids=torch.tensor([ids])).last_hidden_state[0]

    def head(prefix):
        x = h @ sd[f"{prefix}risk_level_category_pre.weight"].T
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + cfg["rms_norm_eps"])
        x = x * sd[f"{prefix}risk_level_category_layernorm.weight"]
        return torch.softmax(x @ sd[f"{prefix}risk_level_head.weight"].T, -1), (
            x @ sd[f"{prefix}category_head.weight"].T
        ).argmax(-1)

    return head(""), head("query_")


def test_official_layout_loads_without_remote_code(tiny_stream, tiny_stream_dir):  # noqa: F811
    keys = set(load_file(str(tiny_stream_dir / "model.safetensors")))
    assert {"risk_level_category_pre.weight", "query_category_head.weight", "model.embed_tokens.weight"} <= keys
    assert set(tiny_stream.model.state_dict()) == keys
    assert tiny_stream.labels.response_category == tuple(CATEGORIES[i] for i in (0, 2, 4, 6, 3, 7, 1, 5))


def test_per_token_probabilities_equal_plain_torch_reference(tiny_stream, tiny_stream_dir):  # noqa: F811
    prompt_verdict, verdicts = tiny_stream.score(PROMPT, RESPONSE)
    prefix, user_end = tiny_stream.encode_prompt(PROMPT)
    ids = prefix + [v.token for v in verdicts]
    (risk_p, cat), (q_risk_p, q_cat) = _reference(tiny_stream_dir, ids)
    for j, v in enumerate(verdicts):
        expected = risk_p[len(prefix) + j]
        for k, risk in enumerate(ORDER):
            assert v.probs[risk] == pytest.approx(float(expected[k]), abs=1e-5)
        assert v.risk is ORDER[int(expected.argmax())]
        if v.risk is not Risk.SAFE:
            assert v.category == tiny_stream.labels.response_category[int(cat[len(prefix) + j])]
    q = q_risk_p[user_end]
    assert prompt_verdict.probs[Risk.UNSAFE] == pytest.approx(float(q[1]), abs=1e-5)
    assert prompt_verdict.risk is ORDER[int(q.argmax())]
    assert len({v.risk for v in verdicts}) > 1, "random weights should give varied verdicts (a test that can fail)"


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_incremental_scoring_equals_one_full_forward(tiny_stream, seed):  # noqa: F811
    _, full = tiny_stream.score(PROMPT, RESPONSE)
    rnd = random.Random(seed)
    session = tiny_stream.open_session(PROMPT)
    got, i = [], 0
    while i < len(RESPONSE):
        j = i + rnd.randint(0, 7)
        got += session.feed_text(RESPONSE[i:j])
        i = j
    got += session.finish()
    assert [v.token for v in got] == [v.token for v in full]
    assert [(v.start, v.end, v.index) for v in got] == [(v.start, v.end, v.index) for v in full]
    for a, b in zip(got, full):
        assert a.risk is b.risk and a.category == b.category
        assert max(abs(a.probs[r] - b.probs[r]) for r in Risk) < 1e-5


def test_feed_tokens_one_at_a_time(tiny_stream):  # noqa: F811
    _, full = tiny_stream.score(PROMPT, RESPONSE)
    session = tiny_stream.open_session(PROMPT)
    got = [v for t in full for v in session.feed_tokens([t.token])]
    assert [v.risk for v in got] == [v.risk for v in full]
    assert got[0].start is None
    with pytest.raises(ValueError):
        session.feed_text("mixing")
    with pytest.raises(ValueError):
        session.feed_tokens([10**9])


def test_template_tokens_are_not_scored(tiny_stream):  # noqa: F811
    session = tiny_stream.open_session(PROMPT)
    assert session.feed_text("") == [] and session.finish() == []
    assert session.scored == 0


def test_session_lifecycle(tiny_stream):  # noqa: F811
    session = tiny_stream.open_session([{"role": "system", "content": "be nice"}, {"role": "user", "content": "hi"}])
    session.feed_text("Hello there, friend.")
    session.finish()
    with pytest.raises(StreamClosed):
        session.feed_text("more")
    session.close()
    session.close()
    with pytest.raises(StreamClosed):
        session.finish()
    with pytest.raises(ValueError):
        tiny_stream.open_session([{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}])
    with pytest.raises(TypeError):
        tiny_stream.open_session(PROMPT).feed_text(None)


def test_label_maps_come_from_the_config(tmp_path, tiny_tokenizer_dir):  # noqa: F811
    path = constant_checkpoint(tmp_path / "c", tiny_tokenizer_dir, response="Controversial", query="Unsafe")
    stream = TransformersStream.load(path, device="cpu")
    session = stream.open_session("What is the capital of France?")
    assert session.prompt_verdict.risk is Risk.UNSAFE
    assert session.prompt_verdict.categories and session.prompt_verdict.categories[0] in CATEGORIES
    verdicts = session.feed_text("Paris is the capital of France.") + session.finish()
    assert verdicts and all(v.risk is Risk.CONTROVERSIAL for v in verdicts)
    assert all(v.probs[Risk.CONTROVERSIAL] == pytest.approx(1 / 3) for v in verdicts)


def test_layout_mismatch_is_a_clear_error(tmp_path, tiny_tokenizer_dir):  # noqa: F811
    path = write_random_checkpoint(tmp_path / "extra", tiny_tokenizer_dir)
    sd = load_file(str(path / "model.safetensors"))
    sd["lm_head.weight"] = sd["model.embed_tokens.weight"].clone()
    del sd["query_category_head.weight"]
    save_file(sd, str(path / "model.safetensors"))
    with pytest.raises(ValueError, match="missing_keys|unexpected_keys"):
        TransformersStream.load(path, device="cpu")
    cfg = json.loads((path / "config.json").read_text())
    del cfg["query_category_map"]
    (path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="query_category_map"):
        TransformersStream.load(path, device="cpu")


def test_missing_checkpoint(tmp_path):
    with pytest.raises(ModelNotFound):
        TransformersStream.load(tmp_path / "nowhere", device="cpu", local_files_only=True)


def test_category_names_by_name_then_by_index():
    assert category_name("Self-Harm", 2) == "Suicide & Self-Harm"
    assert category_name('"Violent"', 0) == "Violent"  # the eval script's stray quotes
    assert category_name("Politically Sensitive Topics", 3) == "Politically Sensitive Topics"
    assert category_name("Hate", 1) == "Sexual Content or Sexual Acts"  # unknown label: documented index order
    with pytest.raises(ValueError):
        category_name("Hate", 12)


def test_long_streams_slide_with_bounded_memory(tmp_path, tiny_tokenizer_dir):  # noqa: F811
    path = write_random_checkpoint(tmp_path / "short", tiny_tokenizer_dir, max_positions=64)
    stream = TransformersStream.load(path, device="cpu")
    session = stream.open_session(PROMPT)
    text = "The capital of France is Paris. " * 40
    verdicts = []
    for i in range(0, len(text), 5):
        verdicts += session.feed_text(text[i : i + 5])
        assert session.cached_tokens <= 64
    verdicts += session.finish()
    assert [v.token for v in verdicts] == stream.codec.ids(text)
    assert verdicts[-1].index == len(verdicts) - 1
    # After slides, the cache holds the prompt and the most recent tokens; the last verdict equals a
    # full forward over exactly that.
    assert len(verdicts) > 64 and session.cached_tokens <= 64
    ids = [v.token for v in verdicts]
    window = session._prefix + ids[-(session.cached_tokens - len(session._prefix)) :]
    with torch.no_grad():
        out = stream.model(input_ids=torch.tensor([window]))
    expected = torch.softmax(out["risk_level_logits"][0, -1], -1)
    assert verdicts[-1].probs[Risk.UNSAFE] == pytest.approx(float(expected[1]), abs=1e-5)


def test_long_prompt_is_cut_to_its_end(tmp_path, tiny_tokenizer_dir):  # noqa: F811
    path = write_random_checkpoint(tmp_path / "short2", tiny_tokenizer_dir, max_positions=64)
    stream = TransformersStream.load(path, device="cpu")
    session = stream.open_session("word " * 200)
    assert len(session._prefix) <= 32
    assert session.feed_text("fine. ") + session.finish()


def test_concurrent_sessions_do_not_cross_talk(tiny_stream):  # noqa: F811
    texts = [
        f"Answer number {i}: "
        + " ".join(random.Random(i).choice(["Paris", "bomb", "café", "日本", "tea"]) for _ in range(12))
        for i in range(100)
    ]
    expected = [
        [(v.token, v.risk, v.category) for v in tiny_stream.score(f"question {i}", t)[1]] for i, t in enumerate(texts)
    ]
    sessions = [tiny_stream.open_session(f"question {i}") for i in range(100)]
    results: list[list] = [[] for _ in texts]
    errors = []

    def run(worker):
        try:
            rnd = random.Random(worker)
            for step in range(0, 200, 3):
                for i in range(worker, 100, 8):
                    piece = texts[i][step : step + 3]
                    if piece:
                        results[i] += sessions[i].feed_text(piece)
            for i in range(worker, 100, 8):
                results[i] += sessions[i].finish()
                sessions[i].close()
            rnd.random()
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(w,)) for w in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    for i in range(100):
        assert [(v.token, v.risk, v.category) for v in results[i]] == expected[i]
