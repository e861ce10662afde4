"""Synthetic, labelled moderation data for the demo guard: our own templated text, no third-party data set.

The demo guard is a tiny Qwen3-architecture model (`qwenguard.core.demo.train`) that must behave like
Qwen3Guard-Gen on the shapes qwenguard shows it. Every example is therefore built with the functions of
`qwenguard.core.formats.conversations`, exactly as the library builds its checks:

- ``prompt``      `prompt_conversation(text, history)`: unsafe requests in the eight harm categories, jailbreaks
  (including special-token strings written as plain text), controversial questions, everyday safe questions,
  multi-turn histories;
- ``response``    `response_conversation(prompt, response)`: refusals, harmful compliance, safe answers, replies
  that start safe and turn unsafe (with the character span of the unsafe part), political opinions;
- ``tool_call``   `tool_call_conversation(name, args, messages)`: ``Tool call: name({json})`` with safe or unsafe
  argument values, after an unrelated (usually safe) user request;
- ``tool_result`` / ``retrieval``  `untrusted_conversation(text)`: injected instructions (alone, after prefixes such
  as ``"Top result: "``, or inside longer safe text), harmful documents, safe documents, and long documents (most
  of the context window) whose only unsafe sentence sits near the end.

Record (`Example.to_dict`)::

    {"messages": [{"role": "user", "content": ...}, ...],   # as built by core/conversations.py
     "risk": "safe" | "unsafe" | "controversial",
     "categories": ["Violent"] | [],                      # one primary category, official names
     "refusal": true | false | null,                       # null for user-final (prompt-mode) examples
     "stage": "prompt" | "response" | "tool_call" | "tool_result" | "retrieval",
     "source": "prompt.unsafe.violent",                    # template family
     "unsafe_span": [start, end] | null}                   # chars of the last message that are unsafe

``unsafe_span`` is set for every unsafe/controversial example whose unsafe part is known (all assistant-final
ones, and untrusted documents); a streaming head can learn token-level labels from it.
`Example.answer` is the official target text (``Safety: Unsafe\\nCategories: Violent``, plus
``\\nRefusal: No`` when the last message is the assistant's).

Counterfactual frames. Requests are also built as *frame x task* ("How can I {task}?", "Write {text}.", "What is
{info}?", "Which {choice} should I ...?") where the same frame takes a harmless or a harmful task, so the wording
around the task never predicts the label and a small model learns to read the task itself. A broad everyday
vocabulary (`_benign`) keeps unfamiliar harmless words from looking like harm, and so do three more sources of
harmless text: made-up words in everyday frames (`_unfamiliar`), a small clause grammar (`_prose`), harmless twins of
harmful sentences (`SAFE_TWINS`: same shape, harmless words) and word swaps from the harmless vocabulary
(`_scramble`), so the model cannot learn "a sentence I have not seen is harmful".

Splits. Every template list and filler list is cut by position: items at index 3, 8, 13, ... are *held out*.
``split="train"`` never draws a held-out template or filler; ``split="heldout"`` draws only held-out templates,
with fillers from the whole list (lists shorter than four items are shared), so held-out accuracy measures
paraphrases the model never saw, partly with unseen fillers. The exact probe strings the tests use
(`EVAL_PROBES`) never appear in generated data.

Evaluation sample (``core/demo/data/sample.jsonl``, written by `write_sample`; the `qwenguard eval` CLI ships it),
one JSON object per line, held-out split, its own seed:

- ``text``      the content checked: the user prompt, the assistant response, the ``Tool call: ...`` line, or the
  tool result / document;
- ``label``     ``safe`` | ``unsafe`` | ``controversial``;
- ``category``  the primary category, or null when safe;
- ``source``    template family; ``stage`` as above;
- ``prompt``, ``response``  for ``response`` and ``tool_call`` rows: the user turn and the assistant turn
  (``response == text``); null otherwise (check those rows as a prompt / untrusted text);
- ``refusal``   true/false for ``response`` and ``tool_call`` rows, null otherwise.

Where things are (one concept per module)::

    example.py            Example, category names, SPLITS, EVAL_PROBES, TEST_SENTENCE_PROBES (kept out of the data)
    slots.py              slot fillers ({weapon}, {crime}, {celebrity} ...) and the country rows
    qa.py                 everyday question/answer families (safe prompts and safe answers)
    prompt_texts.py       unsafe requests per category, controversial questions, jailbreaks, special tokens
    frames.py             counterfactual frames (one wording, a harmless or a harmful task)
    everyday.py           harmless text: everyday sentences, made-up words, clause grammar, SAFE_TWINS, _scramble
    answer_texts.py       assistant texts: refusals, HARMFUL_STATEMENTS per category, opinions, intros
    tool_texts.py         safe and unsafe tool calls
    document_texts.py     injections, untrusted prefixes, safe facts, filler prose for long documents
    maker.py              the seeded drawing machinery (_Maker, _Slots) that keeps the splits apart
    parts.py              pieces several families share (a safe Q/A, an unsafe request, a history, filler)
    onset.py              harm_onset: where an unsafe span becomes harmful (its first word harmless text never uses)
    prompt_families.py    the families, one function each, grouped by the stage that is judged;
    response_families.py  each returns one Example
    tool_families.py
    document_families.py
    composite_families.py  requests with harmless text (or forged turns) around them
    stream_families.py    answers cut mid-stream, and harm after many harmless sentences
    household_texts.py    household questions, agent instructions and confirmations, long facts about places
    household_families.py  the families built from them (a fine-tune draws them more often: mix.boosted_mix)
    mix.py                FAMILIES (weights), generate, training_set, heldout_set
    sample.py             the shipped evaluation sample (sample_rows, write_sample)
"""

from __future__ import annotations

from .example import EVAL_PROBES, HARM_CATEGORIES, SPLITS, Example
from .mix import BASE_MIX, FAMILIES, generate, heldout_set, training_set
from .sample import SAMPLE_MIX, sample_rows, write_sample

__all__ = [
    "Example",
    "EVAL_PROBES",
    "HARM_CATEGORIES",
    "SPLITS",
    "FAMILIES",
    "BASE_MIX",
    "generate",
    "training_set",
    "heldout_set",
    "SAMPLE_MIX",
    "sample_rows",
    "write_sample",
]
