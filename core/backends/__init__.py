"""Backends: the models behind a `Guard`.

- `base`: the `GenBackend` protocol (the one seam between the Guard and a Gen model).
- `transformers_gen`: local Qwen3Guard-Gen (transformers + torch), micro-batched (`batching`).
- `stream_model` / `transformers_stream`: local Qwen3Guard-Stream, run natively with a KV cache per session.
- `openai_gen`: remote Gen on any OpenAI-compatible server (vLLM, SGLang, llama.cpp, transformers serve,
  ``qwenguard serve``); `remote_plan` (the requests a check becomes: windows, forged-turn pieces),
  `remote_loop` (the client's own event loop thread), `openai_wire` (error bodies, logprobs),
  `hf_tokenizer` (the served checkpoint's tokenizer, for exact windows and token ids).
- `remote_stream`: remote Stream sessions on a ``qwenguard serve`` ``/v1/stream`` WebSocket; `stream_session`
  (the session protocol, and its failover: re-open on another replica, replay, release only judged text).
- `replicas`: several replica URLs behind one remote client (pick, cool down, per-attempt deadline share).

torch and transformers are imported only inside the local backends (`torch_runtime`), and transformers by
`hf_tokenizer` when a remote client is given a tokenizer; all on first use.
"""
