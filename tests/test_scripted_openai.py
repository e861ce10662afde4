"""The scripted OpenAI-compatible server (tests/scripted_openai.py) against real clients: the `openai`
SDK, LangChain's `ChatOpenAI` and LlamaIndex's `OpenAILike`, for text and tool-call streams, and the
count of pieces sent before a client closes the stream early."""

from __future__ import annotations

import json

import openai
import pytest
from scripted_openai import Reply, ToolCall, scripted_openai, word_pieces

TEXT = "The capital of France is Paris. It is on the Seine."
WEATHER = ToolCall("get_weather", json.dumps({"city": "Paris"}), id="call_weather1", fragments=3)


def get_weather(city: str) -> str:
    """Weather in a city."""
    return f"sunny in {city}"


def test_word_pieces_round_trip() -> None:
    pieces = word_pieces(TEXT)
    assert pieces[:3] == ["The", " capital", " of"]
    assert "".join(pieces) == TEXT


# -- the openai SDK ------------------------------------------------------------------------------
def test_openai_chat_stream_text_and_usage() -> None:
    with scripted_openai([Reply.words(TEXT)]) as url:
        client = openai.OpenAI(base_url=url, api_key="x", max_retries=0)
        chunks = list(
            client.chat.completions.create(
                model="scripted",
                messages=[{"role": "user", "content": "Capital of France?"}],
                stream=True,
                stream_options={"include_usage": True},
            )
        )
        assert chunks[0].object == "chat.completion.chunk"
        assert chunks[0].choices[0].delta.role == "assistant"
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        assert text == TEXT
        finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
        assert finishes == ["stop"]
        assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == len(word_pieces(TEXT))
        (response,) = url.responses
        assert response.wait(10)  # the client can finish reading before the server thread records the end
        assert response.completed and not response.closed_early and response.sent == response.planned
        assert url.requests[0].body["messages"][0]["content"] == "Capital of France?"


def test_openai_chat_stream_tool_calls() -> None:
    with scripted_openai([Reply(tool_calls=[WEATHER])]) as url:
        client = openai.OpenAI(base_url=url, api_key="x", max_retries=0)
        chunks = list(
            client.chat.completions.create(
                model="scripted", messages=[{"role": "user", "content": "Weather?"}], stream=True
            )
        )
        deltas = [d for c in chunks for d in (c.choices[0].delta.tool_calls or [])]
        assert deltas[0].id == "call_weather1" and deltas[0].type == "function"
        assert deltas[0].function.name == "get_weather" and deltas[0].function.arguments == ""
        assert all(d.index == 0 and d.id is None for d in deltas[1:])
        assert "".join(d.function.arguments for d in deltas) == WEATHER.arguments
        assert len(deltas) == 1 + 3
        assert chunks[-1].choices[0].finish_reason == "tool_calls"


def test_openai_whole_answers_and_completions() -> None:
    script = [Reply.words(TEXT), Reply(tool_calls=[WEATHER]), Reply.words("Paris.")]
    with scripted_openai(script) as url:
        client = openai.OpenAI(base_url=url, api_key="x", max_retries=0)
        first = client.chat.completions.create(model="scripted", messages=[{"role": "user", "content": "q"}])
        assert first.object == "chat.completion" and first.choices[0].message.content == TEXT
        assert first.choices[0].finish_reason == "stop"
        second = client.chat.completions.create(model="scripted", messages=[{"role": "user", "content": "q"}])
        call = second.choices[0].message.tool_calls[0]
        assert (call.id, call.function.name, call.function.arguments) == (
            "call_weather1",
            "get_weather",
            WEATHER.arguments,
        )
        assert second.choices[0].finish_reason == "tool_calls"
        pieces = [c.choices[0].text for c in client.completions.create(model="scripted", prompt="q", stream=True)]
        assert "".join(pieces) == "Paris."
        whole = client.completions.create(model="scripted", prompt="q")  # the script cycles: reply 0 again
        assert whole.object == "text_completion" and whole.choices[0].text == TEXT
        assert [r.path for r in url.requests] == ["/v1/chat/completions"] * 2 + ["/v1/completions"] * 2


def test_openai_early_close_is_counted() -> None:
    text = "The capital of France is Paris. " * 5
    with scripted_openai([Reply.words(text)], pace=0.02) as url:
        client = openai.OpenAI(base_url=url, api_key="x", max_retries=0)
        with client.chat.completions.create(
            model="scripted", messages=[{"role": "user", "content": "q"}], stream=True
        ) as stream:
            got = []
            for chunk in stream:
                got.append(chunk.choices[0].delta.content or "")
                if len(got) == 4:  # role chunk + 3 words
                    break
        response = url.responses[-1]
        assert response.wait(5)
        assert response.closed_early and not response.completed
        # the three words read, plus whatever the server wrote while the client was closing
        assert 3 <= response.sent < 10 < response.planned == 30


# -- LangChain ChatOpenAI ------------------------------------------------------------------------
def test_chat_openai_streams_text_and_closes_early() -> None:
    langchain_openai = pytest.importorskip("langchain_openai")
    text = "The capital of France is Paris. " * 5
    with scripted_openai([Reply.words(TEXT), Reply.words(text)], pace=0.01) as url:
        llm = langchain_openai.ChatOpenAI(base_url=url, api_key="x", model="scripted", max_retries=0)
        assert "".join(c.content for c in llm.stream("Capital of France?")) == TEXT
        assert url.responses[0].wait(10) and url.responses[0].completed
        stream = llm.stream("Again?")
        words = [next(stream).content for _ in range(4)]
        stream.close()  # what a raising callback does to the generator
        assert "".join(words).startswith("The capital")
        response = url.responses[1]
        assert response.wait(5) and response.closed_early
        assert response.sent < 10 < response.planned


def test_chat_openai_streams_tool_calls() -> None:
    langchain_openai = pytest.importorskip("langchain_openai")
    with scripted_openai([Reply(tool_calls=[WEATHER])]) as url:
        llm = langchain_openai.ChatOpenAI(base_url=url, api_key="x", model="scripted", max_retries=0)
        chunks = list(llm.bind_tools([get_weather]).stream("Weather in Paris?"))
        whole = chunks[0]
        for chunk in chunks[1:]:
            whole = whole + chunk
        assert whole.tool_calls == [
            {"name": "get_weather", "args": {"city": "Paris"}, "id": "call_weather1", "type": "tool_call"}
        ]
        assert len([c for c in chunks if c.tool_call_chunks]) == 4
        sent = url.requests[0].body
        assert sent["stream"] is True and sent["tools"][0]["function"]["name"] == "get_weather"


# -- LlamaIndex OpenAILike ------------------------------------------------------------------------
def _openai_like(url: str, **kwargs):
    openai_like = pytest.importorskip("llama_index.llms.openai_like")
    return openai_like.OpenAILike(
        model="scripted", api_base=url, api_key="x", is_chat_model=True, max_retries=0, **kwargs
    )


def test_openai_like_streams_text() -> None:
    from llama_index.core.llms import ChatMessage

    with scripted_openai([Reply.words(TEXT)], pace=0.001) as url:
        llm = _openai_like(url)
        deltas = [r.delta for r in llm.stream_chat([ChatMessage(role="user", content="Capital of France?")])]
        assert "".join(d or "" for d in deltas) == TEXT
        completion = "".join(r.delta or "" for r in llm.stream_complete("Capital of France?"))
        assert completion == TEXT  # a chat model serves complete() through /chat/completions
        assert [r.path for r in url.requests] == ["/v1/chat/completions"] * 2


def test_openai_like_streams_tool_calls() -> None:
    from llama_index.core.tools import FunctionTool

    with scripted_openai([Reply(tool_calls=[WEATHER])]) as url:
        llm = _openai_like(url, is_function_calling_model=True)
        tool = FunctionTool.from_defaults(get_weather)
        last = None
        for last in llm.stream_chat_with_tools([tool], user_msg="Weather in Paris?"):  # noqa: B007 - the last one
            pass
        calls = llm.get_tool_calls_from_response(last, error_on_no_tool_call=True)
        assert [(c.tool_id, c.tool_name, c.tool_kwargs) for c in calls] == [
            ("call_weather1", "get_weather", {"city": "Paris"})
        ]
        assert url.requests[0].body["tools"][0]["function"]["name"] == "get_weather"


def test_openai_like_early_close_is_counted_once_collected() -> None:
    """LlamaIndex's OpenAI stream does not close the HTTP response when its generator is closed; the
    connection goes when the abandoned stream is garbage-collected. The server counts either way."""
    import gc

    from llama_index.core.llms import ChatMessage

    text = "The capital of France is Paris. " * 10
    with scripted_openai([Reply.words(text)], pace=0.02) as url:
        stream = _openai_like(url).stream_chat([ChatMessage(role="user", content="q")])
        for _ in range(3):
            next(stream)
        stream.close()
        del stream
        gc.collect()
        response = url.responses[-1]
        assert response.wait(5)
        assert response.closed_early and response.sent < response.planned == 60
