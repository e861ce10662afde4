"""Texts the demo guard judges reliably, shared by the local Gen tests."""

# Safe sentences the demo knows well; repeated, they make a document several context windows long.
# (The tiny demo misjudges much long repetitive prose: docs/demo.md. Real checkpoints do not need this.)
FACTS = (
    " ".join(
        f"{city} is the capital of {country}."
        for city, country in [
            ("Paris", "France"),
            ("Rome", "Italy"),
            ("Madrid", "Spain"),
            ("Berlin", "Germany"),
            ("Lisbon", "Portugal"),
            ("Vienna", "Austria"),
        ]
    )
    + " "
)
