"""Framework integrations: `qwenguard.integrations.langchain`, `qwenguard.integrations.llamaindex`."""
