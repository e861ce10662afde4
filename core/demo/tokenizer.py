"""The demo guard's tokenizer: a small byte-level BPE with Qwen3's special tokens and the Qwen3Guard-Gen chat template.

Like Qwen3's tokenizer it splits text with Qwen2's pre-tokenizer regex, then byte-level BPE; ``<|endoftext|>``
(pad), ``<|im_start|>`` and ``<|im_end|>`` (eos) are special added tokens and ``<think>`` / ``</think>`` are
added, non-special tokens, all placed after the BPE vocabulary as in Qwen3. The chat template renders any
user/assistant conversation exactly like `qwenguard.core.formats.prompts.render_prompt` (it is generated from it), so
``tokenizer.apply_chat_template(messages, tokenize=False)`` works with no ``add_generation_prompt``, like the
official Qwen3Guard-Gen checkpoints.

`encode_guard_input` is the tokenization path the demo guard is trained with: the template's own control
tokens are tokens, and control-token strings inside messages are plain text (DESIGN.md decision 2), via
transformers' ``apply_chat_template(..., sanitize_control_tokens=True)``.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from typing import Any

from ..formats.prompts import Message, render_prompt

__all__ = [
    "TEMPLATE_TOKENS",
    "PRETOKENIZE_REGEX",
    "SPECIAL_TOKENS",
    "THINK_TOKENS",
    "BPE_VOCAB_SIZE",
    "build_chat_template",
    "train_tokenizer",
    "encode_guard_input",
]

#: Qwen2/Qwen3's pre-tokenizer split pattern (transformers `models/qwen2/tokenization_qwen2.py`).
PRETOKENIZE_REGEX = r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""
SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
THINK_TOKENS = ("<think>", "</think>")
#: BPE entries (256 bytes + merges); with the five added tokens the vocabulary has 4096 ids.
BPE_VOCAB_SIZE = 4091

# Private-use characters: the content rule (which `render_prompt` applies) leaves them as they are.
_USER_SENTINEL = "\ue010USER\ue010"


def _template_tokens() -> tuple[str, ...]:
    """The template's fixed text before and after the conversation, in both modes (four strings)."""
    from ..formats.prompts import render_conversation

    out: list[str] = []
    for conv in (
        [{"role": "user", "content": "\ue000"}],
        [{"role": "user", "content": "\ue000"}, {"role": "assistant", "content": "\ue001"}],
    ):
        text = render_conversation(conv)
        cut = text.index("<BEGIN CONVERSATION>\n\n") + len("<BEGIN CONVERSATION>\n\n")
        out += [text[:cut], text[text.index("\n\n<END CONVERSATION>") :]]
    return tuple(out)


#: The demo tokenizer's one liberty: the template's boilerplate (task, policy, categories, output format;
#: ~270 BPE tokens) is four added tokens, so a 1M-parameter model sees ~60-token sequences and learns to read
#: the conversation in minutes on a CPU. The rendered text is unchanged (byte-identical to `render_prompt`);
#: the library treats these like any added token (content cannot produce them), and real Qwen3Guard
#: checkpoints, which lack them, go through the same code.
TEMPLATE_TOKENS = _template_tokens()
_ASSISTANT_SENTINEL = "\ue011ASSISTANT\ue011"


def _jinja_str(text: str) -> str:
    """A Jinja string literal for `text` (Jinja decodes backslash escapes like Python)."""
    return json.dumps(text)


def build_chat_template() -> str:
    """The Jinja chat template, generated from `render_prompt` so the two cannot drift apart.

    System messages are skipped; the mode follows the role of the last remaining message; turns are
    ``USER: ...`` / ``ASSISTANT: ...`` joined by a blank line; the generation prefix is always appended.
    """
    one = render_prompt([{"role": "user", "content": _USER_SENTINEL}])
    prompt_head, prompt_foot = one.split("USER: " + _USER_SENTINEL)
    two = render_prompt(
        [{"role": "user", "content": _USER_SENTINEL}, {"role": "assistant", "content": _ASSISTANT_SENTINEL}]
    )
    response_head, rest = two.split("USER: " + _USER_SENTINEL)
    joiner, response_foot = rest.split(_ASSISTANT_SENTINEL)
    if joiner != "\n\nASSISTANT: ":  # render_prompt's turn layout, which the loop below reproduces
        raise AssertionError(f"unexpected turn layout {joiner!r}")
    return (
        "{%- set ns = namespace(turns=[]) -%}"
        "{%- for message in messages -%}"
        "{%- if message['role'] == 'user' or message['role'] == 'assistant' -%}"
        "{%- if message['content'] is not string -%}"
        "{{- raise_exception('message content must be a string') -}}"
        "{%- endif -%}"
        "{%- set ns.turns = ns.turns + [message] -%}"
        "{%- elif message['role'] != 'system' -%}"
        "{{- raise_exception(\"message role must be 'user', 'assistant' or 'system'\") -}}"
        "{%- endif -%}"
        "{%- endfor -%}"
        "{%- if ns.turns | length == 0 -%}"
        "{{- raise_exception('the conversation has no user or assistant message to moderate') -}}"
        "{%- endif -%}"
        "{%- set response_mode = ns.turns[-1]['role'] == 'assistant' -%}"
        f"{{%- if response_mode -%}}{{{{- {_jinja_str(response_head)} -}}}}"
        f"{{%- else -%}}{{{{- {_jinja_str(prompt_head)} -}}}}{{%- endif -%}}"
        "{%- for message in ns.turns -%}"
        "{%- if not loop.first -%}{{- '\\n\\n' -}}{%- endif -%}"
        "{%- if message['role'] == 'user' -%}{{- 'USER: ' -}}{%- else -%}{{- 'ASSISTANT: ' -}}{%- endif -%}"
        "{{- message['content'] -}}"
        "{%- endfor -%}"
        f"{{%- if response_mode -%}}{{{{- {_jinja_str(response_foot)} -}}}}"
        f"{{%- else -%}}{{{{- {_jinja_str(prompt_foot)} -}}}}{{%- endif -%}}"
    )


def _strip_control(text: str) -> str:
    for token in (*SPECIAL_TOKENS, *THINK_TOKENS):
        text = text.replace(token, "\n")
    return text


def train_tokenizer(texts: Iterable[str], vocab_size: int = BPE_VOCAB_SIZE, model_max_length: int = 512) -> Any:
    """Train the BPE on `texts` and wrap it as a transformers tokenizer with the chat template.

    Control-token strings are removed from the training text so no merges are spent on them; they are then
    added as whole tokens after the BPE vocabulary (ids ``vocab_size`` .. ``vocab_size + 4``), in Qwen3's order.
    """
    from tokenizers import (
        AddedToken,
        Regex,
        Tokenizer,
        decoders,
        models,
        normalizers,
        pre_tokenizers,
        trainers,
    )
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE(unk_token=None, fuse_unk=False, byte_fallback=False))
    backend.normalizer = normalizers.NFC()
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=[],
    )
    backend.train_from_iterator((_strip_control(t) for t in texts), trainer=trainer)
    backend.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIAL_TOKENS])
    backend.add_tokens([AddedToken(t, special=False, normalized=False) for t in THINK_TOKENS])
    backend.add_tokens([AddedToken(t, special=False, normalized=False) for t in TEMPLATE_TOKENS])
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        clean_up_tokenization_spaces=False,
        model_max_length=model_max_length,
    )
    tokenizer.chat_template = build_chat_template()
    return tokenizer


def encode_guard_input(tokenizer: Any, messages: Sequence[Message]) -> list[int]:
    """Token ids of the guard prompt for `messages`, with control-token strings in content kept as plain text."""
    ids = tokenizer.apply_chat_template(list(messages), tokenize=True, sanitize_control_tokens=True, return_dict=False)
    return list(ids)
