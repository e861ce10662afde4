"""Backends: the models behind a `Guard`.

- `base`: the `GenBackend` protocol (the one seam between the Guard and a Gen model).
- `transformers_gen`: local Qwen3Guard-Gen (transformers + torch), micro-batched (`batching`).
- `stream_model` / `transformers_stream`: local Qwen3Guard-Stream, run natively with a KV cache per session.
- `openai_gen`: remote Gen on any OpenAI-compatible server (vLLM, SGLang, llama.cpp, ``qwenguard serve``).
- `remote_stream`: remote Stream sessions on a ``qwenguard serve`` ``/v1/stream`` WebSocket.

torch and transformers are imported only inside the local backends (`torch_runtime`).
"""
