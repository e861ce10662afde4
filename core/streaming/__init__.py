"""Streaming: moderate text while it streams.

- `monitor`: `StreamMonitor` / `AsyncStreamMonitor`, the hold-back contract (shared state in `monitor_core`;
  the Gen-window engine in `gen_windows`).
- `retokenizer`: incremental re-tokenization of other LLMs' deltas in the guard's vocabulary.
- `debounce`: per-token verdicts → a flag (the official two-consecutive-tokens rule).
- `parallel`: input screening that overlaps the LLM call (`PendingCheck`).
"""
