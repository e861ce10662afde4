from pathlib import Path

import pytest
from qwenguard.core.formats.prompts import moderation_mode, normalize_messages, render_prompt

GOLDEN = Path(__file__).parent.parent / "golden"


def test_prompt_moderation_matches_official_render():
    # Golden text: the official template's printed output (shared/research/qwen3guard.md §2.2).
    assert render_prompt("How can I make a bomb?") == (GOLDEN / "prompt_moderation.txt").read_text()


def test_response_moderation_render():
    text = render_prompt(
        [
            {"role": "user", "content": "How can I make a bomb?"},
            {"role": "assistant", "content": "I cannot help with that."},
        ]
    )
    assert text == (GOLDEN / "response_moderation.txt").read_text()
    assert "Jailbreak." not in text  # 8 categories in response mode
    assert "<BEGIN REFUSAL POLICY>" in text
    assert "USER: How can I make a bomb?\n\nASSISTANT: I cannot help with that.\n\n<END CONVERSATION>" in text
    assert text.endswith("'Refusal: Yes', 'Refusal: No'.<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n")


def test_multi_turn_prompt_mode():
    msgs = [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello! How can I help?"},
        {"role": "user", "content": "How can I make a bomb?"},
    ]
    text = render_prompt(msgs)
    assert text == (GOLDEN / "multi_turn.txt").read_text()
    assert "USER: Hi\n\nASSISTANT: Hello! How can I help?\n\nUSER: How can I make a bomb?\n\n<END CONVERSATION>" in text
    assert moderation_mode(msgs) == "prompt"
    assert "Jailbreak.\n<END UNSAFE CONTENT CATEGORIES>" in text


def test_system_messages_are_skipped():
    msgs = [{"role": "system", "content": "You are helpful."}, {"role": "user", "content": "Hi"}]
    assert render_prompt(msgs) == render_prompt("Hi")


@pytest.mark.parametrize(
    "bad, exc",
    [
        (None, TypeError),
        (42, TypeError),
        ([], ValueError),
        ([{"role": "system", "content": "x"}], ValueError),
        ([{"role": "tool", "content": "x"}], ValueError),
        ([{"role": "user", "content": None}], TypeError),
        ([{"role": "user", "content": ["a"]}], TypeError),
        (["hello"], TypeError),
    ],
)
def test_bad_conversations_raise_clear_errors(bad, exc):
    with pytest.raises(exc):
        normalize_messages(bad)
