"""The embedded demo guard: tiny Qwen3-architecture checkpoints trained by `python -m qwenguard.core.demo.train`."""
