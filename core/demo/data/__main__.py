"""A quick look at the mix: ``python -m qwenguard.core.demo.data``."""

from collections import Counter

from .mix import training_set

data = training_set(2000)
print(Counter(e.source.split(".")[0] + ":" + e.risk for e in data).most_common())
for e in data[:12]:
    print(repr(e.messages[-1]["content"][:160]), "->", e.answer.replace("\n", " | "))
