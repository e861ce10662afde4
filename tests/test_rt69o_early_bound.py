"""rt69o (second look at 57b92a1's early refusal of a text that needs more than ``max_windows`` windows).

F2: characters past the BMP were counted as written, but the Qwen3 tokenizer normalizes NFC first: CJK compatibility
ideographs become BMP ideographs BPE merges ("拼多多" is one token), so a text 4 windows hold was refused at 8.
F3: every planner read the whole vocabulary again for its bound (a 151,669-entry dict built holding the GIL)."""

from __future__ import annotations

import unicodedata

import pytest
from qwenguard.core.errors import InputTooLarge
from qwenguard.core.formats.encoding import ConversationEncoder
from qwenguard.core.formats.windows import WindowPlanner, astral_per_token
from realshape import real_tokenizer


@pytest.fixture(scope="module")
def encoder() -> ConversationEncoder:
    return ConversationEncoder(real_tokenizer())


def _compatibility(word: str) -> str:
    """``word`` written in CJK compatibility ideographs past the BMP (NFC gives ``word`` back)."""
    inverse = {}
    for code in range(0x2F800, 0x2FA20):
        folded = unicodedata.normalize("NFC", chr(code))
        if len(folded) == 1:
            inverse.setdefault(folded, chr(code))
    return "".join(inverse[c] for c in word)


def test_text_the_windows_hold_is_not_refused_for_its_characters_past_the_bmp(encoder: ConversationEncoder) -> None:
    planner = WindowPlanner(encoder, max_prompt_tokens=4096, max_windows=8)
    room = planner.budget - planner._empty_prompt("user")
    word = _compatibility("拼多多")
    assert all(ord(c) > 0xFFFF for c in word)
    text = word * (8 * room // 3 + 300)  # more characters past the BMP than 8 windows hold tokens
    windows = planner.plan([{"role": "user", "content": text}])
    assert 1 < len(windows) <= 8
    with pytest.raises(InputTooLarge):  # and the bound still refuses what does not fit
        WindowPlanner(encoder, max_prompt_tokens=4096, max_windows=2).plan([{"role": "user", "content": text}])


def test_the_vocabulary_is_read_once_per_tokenizer(
    encoder: ConversationEncoder, monkeypatch: pytest.MonkeyPatch
) -> None:
    tokenizer = encoder.tokenizer
    bound = astral_per_token(tokenizer)
    assert bound >= 1
    calls = []
    monkeypatch.setattr(type(tokenizer), "get_vocab", lambda self: calls.append(1) or {})
    for _ in range(3):
        assert WindowPlanner(encoder, max_prompt_tokens=4096)._astral_per_token() == bound
    assert calls == []
