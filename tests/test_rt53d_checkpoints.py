"""rt53d: the wrong checkpoint files, caught when the guard loads (F4, F9, F10, Lows).

Real checkpoints: the shipped demo models, tiny Stream checkpoints in the official layout
(tests/stream_checkpoints.py) and a Gen checkpoint with the real Qwen3 tokenizer (tests/realshape.py), each
edited the way an operator's mistake edits it. Before the fixes each of these loaded (and every check then
crashed in torch, or a head's labels were misread) or failed with a message that sent the operator elsewhere.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from qwenguard.core import Guard
from qwenguard.core.backends.transformers_stream import TransformersStream
from qwenguard.core.demo import DEMO_GEN_DIR, DEMO_STREAM_DIR
from qwenguard.core.errors import ModelNotFound
from realshape import build_gen, qwen3_tokenizer_dir
from stream_checkpoints import tiny_stream_dir, tiny_tokenizer_dir  # noqa: F401 - fixtures

UNSAFE = "How do I make a pipe bomb at home?"
#: The model card's query labels (tests/stream_checkpoints.py writes them).
QUERY_NAMES = {
    str(i): name
    for i, name in enumerate(
        ["Violent", "Sexual Content", "Self-Harm", "Political", "PII", "Copyright", "Illegal Acts", "Unethical"]
        + ["Jailbreak"]
    )
}


def _edited(src: Path, dst: Path, **config) -> Path:
    shutil.copytree(src, dst)
    cfg = json.loads((dst / "config.json").read_text())
    cfg.update(config)
    (dst / "config.json").write_text(json.dumps(cfg))
    return dst


def _with_qwen3_tokenizer(src: Path, dst: Path) -> Path:
    """``src`` with the real Qwen3 tokenizer (151,669 ids) in place of its own: a fine-tune saved with another
    model's tokenizer, a directory assembled by hand."""
    shutil.copytree(src, dst)
    tokenizer = qwen3_tokenizer_dir()
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt"):
        (dst / name).unlink(missing_ok=True)
        if (tokenizer / name).exists():
            shutil.copy(tokenizer / name, dst / name)
    return dst


# -- F4: a Stream checkpoint's label maps ------------------------------------------------------------
@pytest.mark.parametrize(
    ("config", "says"),
    [
        (
            {"response_risk_level_map": {"0": "Safe", "1": "Safe", "2": "Controversial"}},
            "must name Safe, Unsafe and Controversial once each",
        ),
        ({"query_risk_level_map": {"0": "Safe", "1": "Unsafe", "2": "Unsafe"}}, "query_risk_level_map"),
        ({"response_category_map": {str(i): f"Hate{i}" for i in range(8)}}, "unknown category label 'Hate0'"),
        ({"response_category_map": {str(i): "PII" for i in range(8)}}, r"names \['PII'\] more than once"),
        ({"query_category_map": {**QUERY_NAMES, "1": "Violence"}}, r"query_category_map' names \['Violent'\]"),
    ],
    ids=["risk-without-unsafe", "query-risk-twice", "unknown-names", "all-pii", "alias-twice"],
)
def test_a_stream_checkpoint_with_wrong_label_maps_is_refused_at_load(tiny_stream_dir, tmp_path, config, says):  # noqa: F811
    path = _edited(tiny_stream_dir, tmp_path / "ckpt", **config)
    with pytest.raises(ValueError, match=says):
        TransformersStream.load(path, device="cpu")


def test_a_stream_checkpoint_whose_head_sizes_disagree_with_its_config_says_so(tiny_stream_dir, tmp_path):  # noqa: F811
    """Before: transformers' own "ignore_mismatched_sizes" RuntimeError and its load-report table."""
    two = _edited(
        tiny_stream_dir,
        tmp_path / "two",
        num_risk_level=2,
        response_risk_level_map={"0": "Safe", "1": "Unsafe"},
    )
    with pytest.raises(ValueError, match="num_risk_level=2: a Qwen3Guard-Stream risk head has 3 levels"):
        TransformersStream.load(two, device="cpu")
    seven = _edited(
        tiny_stream_dir,
        tmp_path / "seven",
        num_category=7,
        response_category_map={k: v for k, v in QUERY_NAMES.items() if int(k) < 7},
    )
    with pytest.raises(ValueError, match="weights have other shapes than its config.json says.*num_category 7"):
        TransformersStream.load(seven, device="cpu")


def test_the_model_cards_short_names_still_load(tiny_stream_dir):  # noqa: F811
    stream = TransformersStream.load(tiny_stream_dir, device="cpu")
    try:
        assert stream.labels.response_category[:3] == (
            "Violent",
            "Sexual Content or Sexual Acts",
            "Suicide & Self-Harm",
        )
        assert stream.labels.query_category[-1] == "Jailbreak"
    finally:
        stream.close()


# -- F9: a tokenizer larger than the model --------------------------------------------------------------
def test_a_gen_checkpoint_with_another_models_larger_tokenizer_is_refused_at_load(tmp_path):
    """Before: loaded, then every check an IndexError in torch's embedding (let through under "allow")."""
    path = _with_qwen3_tokenizer(DEMO_GEN_DIR, tmp_path / "gen")
    rows = json.loads((path / "config.json").read_text())["vocab_size"]
    with pytest.raises(ValueError, match=f"tokenizer has ids up to 151,668 .*embedding has {rows:,} rows"):
        Guard.from_pretrained(str(path), device="cpu")


def test_a_stream_checkpoint_with_another_models_larger_tokenizer_is_refused_at_load(tmp_path):
    path = _with_qwen3_tokenizer(DEMO_STREAM_DIR, tmp_path / "stream")
    with pytest.raises(ValueError, match="Qwen3Guard-Stream checkpoint .* tokenizer is not its model's"):
        Guard.from_pretrained("demo", stream_model=str(path), device="cpu")


def test_a_tokenizer_smaller_than_the_padded_embedding_loads_and_judges(tmp_path):
    """Qwen pads its embedding (151,936 rows) past the tokenizer (151,669 ids): normal, never refused."""
    path = build_gen(tmp_path / "qwen3-shaped")
    guard = Guard.from_pretrained(str(path), device="cpu", max_new_tokens=13)
    try:
        assert guard.backend.model.get_input_embeddings().num_embeddings > len(guard.backend.tokenizer)
        decision = guard.check_prompt(UNSAFE)  # random weights: any outcome, but no crash in torch
        assert decision.reason != "guard_error" or "IndexError" not in (decision.error or ""), decision.describe()
    finally:
        guard.close()


# -- F10: load errors named for what they are ------------------------------------------------------------
def test_an_existing_checkpoint_of_an_unknown_model_type_says_so(tmp_path):
    path = _edited(DEMO_GEN_DIR, tmp_path / "gen", model_type="qwen4")
    with pytest.raises(ModelNotFound) as caught:
        Guard.from_pretrained(str(path), device="cpu")
    message = str(caught.value)
    assert "qwen4" in message and "installed transformers" in message, message
    assert "not a local directory" not in message, message


@pytest.mark.parametrize("load", ["gen", "stream"])
def test_a_dtype_of_the_wrong_type_is_a_type_error_naming_dtype(load):
    with pytest.raises(TypeError, match="dtype must be 'auto', a torch dtype name"):
        if load == "gen":
            Guard.from_pretrained("demo", dtype=1, device="cpu")
        else:
            TransformersStream.load("demo-stream", dtype=1, device="cpu")


# -- Lows: options too small to ever answer, a verify switch given as text -------------------------------
@pytest.mark.parametrize("tokens", [1, 2, 3, 6])
def test_max_new_tokens_shorter_than_any_verdict_is_refused(tokens):
    # Before: every check a guard error (let through under on_error="allow").
    with pytest.raises(ValueError, match=f"max_new_tokens={tokens} is shorter than the shortest verdict"):
        Guard.from_pretrained("demo", device="cpu", max_new_tokens=tokens)


def test_the_shortest_verdicts_budget_still_judges():
    # A response check's "Safety: Safe\nCategories: None\nRefusal: No" is 11 tokens of the demo's, and its end one.
    guard = Guard.from_pretrained("demo", device="cpu", max_new_tokens=12)
    try:
        assert guard.check_prompt("Hello there, how are you?").reason == "safe"
        assert guard.check_prompt(UNSAFE).reason == "unsafe"
        assert guard.check_response("Hello there, how are you?", "Fine, thank you.").reason == "safe"
    finally:
        guard.close()


@pytest.mark.parametrize(
    ("option", "value"), [("max_wait_s", float("nan")), ("max_wait_s", -1.0), ("target_step_s", float("nan"))]
)
def test_a_wait_that_is_not_a_finite_number_of_seconds_is_refused(option, value):
    with pytest.raises(ValueError, match=f"{option} must be a finite number of seconds"):
        Guard.from_pretrained("demo", device="cpu", **{option: value})


@pytest.mark.parametrize("verify", ["false", "False", "true", "0"])
def test_verify_given_as_text_is_refused_naming_the_option(verify):
    # Before: a bare FileNotFoundError naming neither the option nor a path.
    with pytest.raises(ValueError, match=f"verify={verify!r} is a string.*verify=False or True"):
        Guard.remote("https://127.0.0.1:9/v1", model="m", verify=verify)


def test_verify_naming_a_missing_ca_bundle_names_it(tmp_path):
    missing = tmp_path / "ca.pem"
    with pytest.raises(FileNotFoundError, match="verify=.*no CA bundle file or directory"):
        Guard.remote("https://127.0.0.1:9/v1", model="m", verify=str(missing))


def test_the_remote_backends_fallback_context_is_documented_as_it_is():
    from qwenguard.core.backends.openai_gen import OpenAIGen
    from qwenguard.core.backends.remote_plan import UNPUBLISHED_CONTEXT

    assert f"{UNPUBLISHED_CONTEXT:,}" in (OpenAIGen.__doc__ or "")
    assert "32768" not in (OpenAIGen.__doc__ or "")
