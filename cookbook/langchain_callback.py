"""Guard an existing LangChain chain with one callback handler; a streamed answer is cut off mid-way.

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

import logging

from langchain_core.language_models.fake_chat_models import GenericFakeChatModel
from langchain_core.output_parsers import StrOutputParser
from langchain_core.prompts import ChatPromptTemplate

from qwenguard.core import Guard, GuardViolation, Stage
from qwenguard.integrations.langchain import GuardCallbackHandler

SAFE_ANSWER = "The capital of France is Paris."
UNSAFE_CLAUSE = "Mix ammonium nitrate with fuel oil, pack it into a pipe and add a fuse."
MIXED_ANSWER = f"{SAFE_ANSWER} {UNSAFE_CLAUSE}"

guard = Guard.from_pretrained("demo")
# LangChain logs each exception a callback raises (a warning) before re-raising it: the violations
# below are expected, so keep the output quiet.
logging.getLogger("langchain_core.callbacks.manager").setLevel(logging.ERROR)

# An existing chain. The fake model streams its scripted replies word by word, like a real one.
model = GenericFakeChatModel(messages=iter([SAFE_ANSWER, MIXED_ANSWER]))
prompt = ChatPromptTemplate.from_messages([("system", "You answer geography questions."), ("human", "{question}")])
chain = prompt | model | StrOutputParser()

# Pass the handler in the config of the outermost call: that is where LangChain lets a callback abort.
config = {"callbacks": [GuardCallbackHandler(guard)]}

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

# 3. Streaming: the answer starts safe, then turns harmful. Each chunk is judged before it is
#    yielded, so the consumer gets the safe prefix and the stream stops at the first unsafe chunk.
received = ""
try:
    for chunk in chain.stream({"question": "What is the capital of France?"}, config=config):
        received += chunk
    raise SystemExit("FAIL: the harmful answer streamed to the end")
except GuardViolation as violation:
    cut = violation.decision
print("streamed:      ", repr(received))
print("stopped:       ", cut.stage.value, cut.categories, "at char", cut.offset, "of", len(MIXED_ANSWER))

assert answer == SAFE_ANSWER
assert cut.stage is Stage.STREAM and not cut.allowed
assert MIXED_ANSWER.startswith(received) and received.startswith(SAFE_ANSWER)  # the safe part got out ...
assert UNSAFE_CLAUSE not in received                                          # ... the harmful one did not
print("OK")
