"""rt52b F6: a large delta fed to a Stream-model session is tokenized in pieces.

The ``tokenizers`` binding holds the GIL for a whole ``encode``: one 177,000-character delta (what a
`/v1/stream` client may send in one frame) tokenized on a worker thread still held the event loop 0.2-0.45 s
(tokenizing it whole, up to four times). The delta now goes into the re-tokenizer in pieces, as a client's
smaller deltas would, and the tokens are the text's own."""

from __future__ import annotations

import pytest
from qwenguard.core.backends.transformers_stream import PUSH_CHARS, TransformersStream

TEXT = "The capital of France is Paris, and it is lovely in spring; the Seine runs through it. " * 1200


@pytest.fixture(scope="module")
def demo_stream() -> TransformersStream:
    return TransformersStream.load("demo-stream", device="cpu")


def test_a_large_delta_is_never_tokenized_whole(demo_stream, monkeypatch):
    codec = demo_stream.codec
    encode = codec.encode
    sizes: list[int] = []

    def counted(text, *args, **kwargs):
        sizes.append(len(text))
        return encode(text, *args, **kwargs)

    monkeypatch.setattr(codec, "encode", counted)
    with demo_stream.open_session("Tell me about Paris.") as session:
        verdicts = session.feed_text(TEXT) + session.finish()
    assert len(TEXT) > 20 * PUSH_CHARS and max(sizes) <= 2 * PUSH_CHARS
    whole = [t for t, _, _ in encode(TEXT)]
    assert [v.token for v in verdicts] == whole  # the same tokens as the text tokenized whole
