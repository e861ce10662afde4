"""Moderate a raw token stream with a StreamMonitor: what is released, when, and where it stops.

    pip install -e ".[local]"    # once, in your qwenguard clone (torch first: see the README)
    python cookbook/streaming.py

Works with any LLM's text deltas (no framework needed). The monitor holds back the last few guard
tokens (holdback=8, the default), releases only text the guard has scored, and raises GuardViolation
the moment the answer turns harmful: not one character of the unsafe clause has been released.
Two engines, one contract:
  - a Qwen3Guard-Stream model scores every token (O(1) per token, with a KV cache per stream);
  - with only a Gen model (e.g. vLLM, which does not serve Stream models) the monitor re-checks
    the answer sentence by sentence in the background, in a bounded window.

Runs offline on the embedded demo guards. For the real models, change the `guard = ...` line:
    guard = Guard.from_pretrained("Qwen/Qwen3Guard-Gen-4B", stream_model="Qwen/Qwen3Guard-Stream-4B")
    guard = Guard.remote("http://host:8000/v1", model="Qwen/Qwen3Guard-Gen-4B")    # Gen-window mode, via:
    #   vllm serve Qwen/Qwen3Guard-Gen-4B --port 8000 --max-model-len 32768
    # (`qwenguard serve --stream-model ...` + Guard.remote(..., stream=True) streams with a Stream model remotely)
"""

import time

from qwenguard.core import Guard, GuardViolation, Stage

PROMPT = "What is the capital of France?"
SAFE = "The capital of France is Paris, and the Eiffel Tower is in Paris. "
CLAUSE = "Mix ammonium nitrate with fuel oil, pack it into a pipe and add a fuse."
HARMFUL = "Sure. " + CLAUSE
ANSWER = SAFE + HARMFUL
# What an LLM client hands you: small text deltas that split words anywhere.
DELTAS = [ANSWER[i : i + 5] for i in range(0, len(ANSWER), 5)]


def moderate(guard: Guard, label: str, holdback: int):
    """Feed the deltas; print each release; return (released text, the violation's decision)."""
    print(f"--- {label}, holdback={holdback}")
    shown = ""
    try:
        with guard.stream(PROMPT, holdback=holdback) as monitor:
            for delta in DELTAS:
                time.sleep(0.05)  # an LLM's pace; the Gen-window checks run in the background meanwhile
                released = monitor.feed(delta)  # safe to show now ('' while the guard is catching up)
                if released:
                    print(f"  after {len(monitor.text):3} chars fed, release {released!r}")
                shown += released
            shown += monitor.finish()
    except GuardViolation as stop:
        d = stop.decision
        print(
            f"  STOP: {d.stage.value} {d.categories}, flagged span starts at char {d.offset}: {ANSWER[d.offset :][:30]!r}..."
        )
        print(f"  the user saw {len(shown)} of {len(ANSWER)} chars: {shown!r}")
        print(f"  characters of the unsafe clause released: {max(0, len(shown) - ANSWER.index(CLAUSE))}")
        return shown, d
    raise SystemExit(f"FAIL: {label} let the whole harmful answer through")


# 1. Gen + Stream model: each token is scored as it arrives.
guard = Guard.from_pretrained("demo", stream_model="demo-stream")
stream_shown, stream_stop = moderate(guard, "Stream model", holdback=8)

# 2. The same Gen model without the Stream model: what you get behind vLLM. Sentence-sized windows
#    are checked in the background; text is released once the window covering it came back safe.
gen_only = Guard(guard.backend, guard.policy)
gen_shown, gen_stop = moderate(gen_only, "Gen-window fallback", holdback=8)

for shown, stop in ((stream_shown, stream_stop), (gen_shown, gen_stop)):
    assert stop.stage is Stage.STREAM and not stop.allowed and stop.offset is not None
    assert ANSWER.startswith(shown)  # released text is a prefix of the answer, in order
    assert len(shown) <= stop.offset  # nothing at or after the flagged span got out
    exposed = max(0, len(shown) - ANSWER.index(CLAUSE))
    assert exposed == 0, f"{exposed} characters of the unsafe clause reached the user"  # not one character of it
# Both stopped in the harmful part, not in the safe sentence before it.
assert min(stream_stop.offset, gen_stop.offset) >= len(SAFE.rstrip())
print("OK")
