"""Build README.md from the section files in this folder: python docs/readme/assemble.py"""

from pathlib import Path

HERE = Path(__file__).parent
ORDER = ["head", "where", "streaming", "langchain", "llamaindex", "remote", "eval", "performance", "cookbook", "tail"]

text = "\n\n".join((HERE / f"{name}.md").read_text().strip() for name in ORDER) + "\n"
(HERE.parent.parent / "README.md").write_text(text)
print(f"README.md: {len(text.splitlines())} lines")
