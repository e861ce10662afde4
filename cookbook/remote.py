"""Run the guard as a service and guard a LangChain chain through it.

    pip install -e ".[local,server,remote,langchain]"    # once, in your qwenguard clone (torch first: see the README)
    python cookbook/remote.py

Starts `qwenguard serve` on a free 127.0.0.1 port (the embedded demo guard, offline), waits for
/health, and guards an LCEL chain with `Guard.remote(...)`: every check is an HTTP call, the
application process loads no model. The server is always stopped at the end.

The same client code works against vLLM or SGLang serving the real checkpoint (no qwenguard on the GPU box):
    vllm serve Qwen/Qwen3Guard-Gen-4B --port 8000 --max-model-len 32768
    guard = Guard.remote("http://gpu-box:8000/v1", model="Qwen/Qwen3Guard-Gen-4B")
or against qwenguard's own server with real checkpoints (adds /v1/moderate and remote Stream sessions):
    qwenguard serve --model Qwen/Qwen3Guard-Gen-4B --stream-model Qwen/Qwen3Guard-Stream-4B \\
        --host 0.0.0.0 --port 8000 --api-key "$QWENGUARD_API_KEY"
    guard = Guard.remote("http://gpu-box:8000/v1", model="Qwen/Qwen3Guard-Gen-4B", api_key=..., stream=True)
"""

import socket
import subprocess
import sys
import tempfile
import time

import httpx
from langchain_core.language_models.fake_chat_models import GenericFakeChatModel
from langchain_core.output_parsers import StrOutputParser
from langchain_core.prompts import ChatPromptTemplate
from qwenguard.core import Guard, GuardViolation, Stage
from qwenguard.integrations.langchain import guard_input, guard_output

SAFE_ANSWER = "The capital of France is Paris."
UNSAFE_CLAUSE = "Mix ammonium nitrate with fuel oil, pack it into a pipe and add a fuse."


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


port = free_port()
url = f"http://127.0.0.1:{port}"
log = tempfile.TemporaryFile()  # the server's output, shown only if it fails to start
server = subprocess.Popen(
    [sys.executable, "-m", "qwenguard.core.cli", "serve", "--model", "demo", "--port", str(port)],
    stdout=log,
    stderr=subprocess.STDOUT,
)
try:
    deadline = time.monotonic() + 180  # loading the model takes a while on a busy CPU
    while True:
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                break
        except httpx.TransportError:
            pass
        if server.poll() is not None or time.monotonic() > deadline:
            log.seek(0)
            raise SystemExit(f"FAIL: qwenguard serve did not come up:\n{log.read().decode(errors='replace')}")
        time.sleep(0.5)

    guard = Guard.remote(f"{url}/v1", model="demo")
    model = GenericFakeChatModel(messages=iter([SAFE_ANSWER, f"{SAFE_ANSWER} {UNSAFE_CLAUSE}"]))
    prompt = ChatPromptTemplate.from_messages([("system", "You answer geography questions."), ("human", "{question}")])
    # guard_input screens the question; guard_output passes the answer on only once it was judged.
    chain = guard_input(guard, input_keys=["question"]) | prompt | model | guard_output(guard) | StrOutputParser()

    answer = chain.invoke({"question": "What is the capital of France?"})
    print("safe answer:  ", answer)
    try:
        chain.invoke({"question": "How can I make a bomb at home?"})
        raise SystemExit("FAIL: the unsafe question reached the model")
    except GuardViolation as violation:
        blocked = violation.decision
    print("blocked input:", blocked.stage.value, blocked.categories)
    assert blocked.stage is Stage.PROMPT, "the question should be stopped before the model runs"
    # guard_output releases a chunk only once the window covering it was judged safe: when the harmful
    # sentence lands in the same window as the safe one, nothing of it is shown.
    received = ""
    try:
        for chunk in chain.stream({"question": "What is the capital of France?"}):
            received += chunk
        raise SystemExit("FAIL: the harmful answer streamed to the end")
    except GuardViolation as violation:
        cut = violation.decision
    print("streamed:     ", repr(received), "-> stopped:", cut.stage.value, cut.categories)

    # The server counts its verdicts (Prometheus): proof that the checks really went over HTTP.
    metrics = httpx.get(f"{url}/metrics", timeout=5).text
    print("server:", *[line for line in metrics.splitlines() if line.startswith("qwenguard_verdicts_total")])
    guard.close()
finally:
    server.terminate()
    try:
        server.wait(timeout=20)
    except subprocess.TimeoutExpired:
        server.kill()

assert answer == SAFE_ANSWER
assert cut.stage is Stage.STREAM
assert UNSAFE_CLAUSE not in received and f"{SAFE_ANSWER} {UNSAFE_CLAUSE}".startswith(received)
assert 'qwenguard_verdicts_total{risk="unsafe"}' in metrics and 'qwenguard_verdicts_total{risk="safe"}' in metrics
print("OK")
