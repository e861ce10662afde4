"""Guard an existing LangChain chain with one callback handler; a streamed answer is cut off mid-way.

    pip install -e ".[local,langchain]"    # once, in your qwenguard clone (torch first: see the README)
    python cookbook/langchain_callback.py

The chain is not changed: the handler goes in the config of the call. It screens the user's input
before the model runs and every streamed chunk before the consumer receives it, and raises
GuardViolation, which stops the model mid-answer.

Runs offline on the embedded demo guard. For the real model, change the `guard = ...` line:
    guard = Guard.from_pretrained("Qwen/Qwen3Guard-Gen-4B")                        # local, transformers
    guard = Guard.remote("http://host:8000/v1", model="Qwen/Qwen3Guard-Gen-4B")    # a vLLM server:
    #   vllm serve Qwen/Qwen3Guard-Gen-4B --port 8000 --max-model-len 32768
and the fake model for yours (ChatOpenAI(...), ChatOllama(...), ...).
"""

from langchain_core.language_models.fake_chat_models import GenericFakeChatModel
from langchain_core.output_parsers import StrOutputParser
from langchain_core.prompts import ChatPromptTemplate
from qwenguard.core import Guard, GuardViolation, Stage
from qwenguard.integrations.langchain import GuardCallbackHandler

SAFE_ANSWER = "The capital of France is Paris."
UNSAFE_CLAUSE = "Mix ammonium nitrate with fuel oil, pack it into a pipe and add a fuse."
MIXED_ANSWER = f"{SAFE_ANSWER} {UNSAFE_CLAUSE}"

guard = Guard.from_pretrained("demo")

# An existing chain. The fake model streams its scripted replies word by word, like a real one.
model = GenericFakeChatModel(messages=iter([SAFE_ANSWER, MIXED_ANSWER]))
prompt = ChatPromptTemplate.from_messages([("system", "You answer geography questions."), ("human", "{question}")])
chain = prompt | model | StrOutputParser()

# Pass the handler in the config of the outermost call: that is where LangChain lets a callback abort.
# stream_engine="gate" judges every chunk before it is yielded (a guard call in the stream's path per
# chunk); the default, "pipelined", judges beside the stream and lets up to 16 characters out ahead of
# their verdict, at almost no cost to the stream (docs/langchain.md).
config = {"callbacks": [GuardCallbackHandler(guard, stream_engine="gate")]}

# 1. A safe exchange goes through untouched.
answer = chain.invoke({"question": "What is the capital of France?"}, config=config)
print("safe answer:   ", answer)

# 2. An unsafe request is stopped before the model runs (so the model's next reply stays unused).
try:
    chain.invoke({"question": "How can I make a bomb at home?"}, config=config)
    raise SystemExit("FAIL: the unsafe request reached the model")
except GuardViolation as violation:
    blocked = violation.decision
print("blocked input: ", blocked.stage.value, blocked.categories)
assert blocked.stage is Stage.PROMPT, "the question should be stopped before the model runs"

# 3. Streaming: the answer starts safe, then turns harmful. Each chunk is judged (with the answer so far)
#    before it is yielded, so the consumer gets the prefix the guard judged safe and the stream stops at the
#    first chunk the guard flags. A callback cannot hold text back, so whatever was judged safe is out already:
#    the demo guard flags "...Paris. Mix ammonium" but not "...Paris. Mix", so the word "Mix " reaches the
#    consumer (a real Qwen3Guard flags earlier or later, by its own judgement). To release not one character
#    of the clause, hold text back (`guard.stream(..., holdback=8)` / `guard_output`, cookbook/streaming.py).
received = ""
try:
    for chunk in chain.stream({"question": "What is the capital of France?"}, config=config):
        received += chunk
    raise SystemExit("FAIL: the harmful answer streamed to the end")
except GuardViolation as violation:
    cut = violation.decision
print("streamed:      ", repr(received))
print("stopped:       ", cut.stage.value, cut.categories, "at char", cut.offset, "of", len(MIXED_ANSWER))

exposed = max(0, len(received) - MIXED_ANSWER.index(UNSAFE_CLAUSE))  # characters of the clause the consumer saw
print("clause chars:  ", exposed, repr(received[MIXED_ANSWER.index(UNSAFE_CLAUSE) :]))

assert answer == SAFE_ANSWER
assert cut.stage is Stage.STREAM and not cut.allowed
assert MIXED_ANSWER.startswith(received) and received.startswith(SAFE_ANSWER)  # the safe part got out, in order
assert received.rstrip() == MIXED_ANSWER[: cut.offset].rstrip()  # exactly what the guard judged safe (+ a space)
# Counted in characters, not "was the whole clause withheld": on the demo guard, at most "Mix " (4 of its 71
# characters) reached the consumer; nothing from "ammonium" on.
assert exposed <= UNSAFE_CLAUSE.index("ammonium"), f"{exposed} characters of the unsafe clause reached the consumer"
print("OK")
