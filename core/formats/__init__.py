"""The Qwen3Guard formats: pure text and token logic, no model and no I/O.

- `prompts`: the official Gen prompt (rendered byte for byte) and the strict verdict parser.
- `conversations`: how each check (prompt, response, tool call, tool result, document) becomes a conversation.
- `encoding`: conversation → guard token ids, with content never becoming control tokens.
"""
