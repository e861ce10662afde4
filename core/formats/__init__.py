"""The Qwen3Guard formats: pure text and token logic, no model and no I/O.

- `content`: the one content rule (cleaning, neutralising special-token strings and turn labels, forged-turn segments).
- `prompts`: the official Gen prompt (rendered byte for byte) and the strict verdict parser.
- `conversations`: how each check (prompt, response, tool call, tool result, document) becomes a conversation.
- `encoding`: conversation → guard token ids, with content never becoming control tokens; the template check.
- `blank_runs`: long runs of whitespace shortened before windowing (a reader sees one gap).
- `windows`: a conversation too long for one prompt → bounded, overlapping windows, never truncated.
- `rendered`: text as a Markdown/HTML renderer shows it (references, tags, comments, emphasis).
- `identifiers`: opaque ids (UUIDs, digests, numbers) that the integrations leave out of a document's judged text.
"""
