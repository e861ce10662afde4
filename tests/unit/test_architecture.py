"""The layers stay layers: what each part of qwenguard.core may import (docs/architecture.md)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CORE = ROOT / "core"

FRAMEWORKS = ("langchain", "langchain_core", "langgraph", "llama_index")
TORCH = ("torch", "transformers", "huggingface_hub")
SERVER = ("fastapi", "starlette", "uvicorn", "prometheus_client")
# Where the heavy imports may live (paths relative to core/).
TORCH_ALLOWED = (
    "backends/torch_runtime.py",
    "backends/transformers_gen.py",
    "backends/stream_model.py",
    "backends/transformers_stream.py",
    "backends/stream_batching.py",
    "backends/hf_tokenizer.py",
    "backends/hub.py",
    "demo/",
)
SERVER_ALLOWED = ("server/",)


def _imports(path: Path, *, top_level_only: bool = False) -> list[tuple[str, int]]:
    """Absolute module names imported by ``path`` (relative imports resolved), skipping TYPE_CHECKING blocks."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = ["qwenguard", "core", *path.relative_to(CORE).with_suffix("").parts][:-1]
    out: list[tuple[str, int]] = []

    def visit(node: ast.AST, depth: int) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                continue
            if isinstance(child, ast.Import):
                out.extend((a.name, depth) for a in child.names)
            elif isinstance(child, ast.ImportFrom):
                if child.level:
                    base = package[: len(package) - child.level + 1]
                    mod = ".".join(base + ([child.module] if child.module else []))
                    if child.module is None:  # from . import x: x may be a module
                        out.extend((f"{mod}.{a.name}", depth) for a in child.names)
                        continue
                else:
                    mod = child.module or ""
                out.append((mod, depth))
            elif not top_level_only or not isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                nested = depth + isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef))
                visit(child, nested)

    visit(tree, 0)
    return out


def _core_files() -> list[Path]:
    return sorted(p for p in CORE.rglob("*.py"))


def _rel(path: Path) -> str:
    return path.relative_to(CORE).as_posix()


def test_core_imports_no_framework() -> None:
    bad = [(_rel(p), m) for p in _core_files() for m, _ in _imports(p) if m.split(".")[0] in FRAMEWORKS]
    assert bad == []


def test_torch_and_transformers_only_in_the_local_backends() -> None:
    bad = [
        (_rel(p), m)
        for p in _core_files()
        if not _rel(p).startswith(TORCH_ALLOWED)
        for m, _ in _imports(p)
        if m.split(".")[0] in TORCH
    ]
    assert bad == []


def test_server_libraries_only_in_the_server() -> None:
    bad = [
        (_rel(p), m)
        for p in _core_files()
        if not _rel(p).startswith(SERVER_ALLOWED)
        for m, _ in _imports(p)
        if m.split(".")[0] in SERVER
    ]
    assert bad == []


def _module_name(path: Path) -> str:
    parts = ["qwenguard", "core", *path.relative_to(CORE).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def test_no_import_cycles_at_module_level() -> None:
    """Module-level imports form a DAG (lazy imports inside functions are how a layer reaches up, on purpose)."""
    modules = {_module_name(p): p for p in _core_files()}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        deps = set()
        for mod, depth in _imports(path, top_level_only=True):
            if depth:
                continue
            # "from .x import y" may name a module x.y or an attribute of x; keep the longest known module.
            while mod and mod not in modules:
                mod = mod.rpartition(".")[0]
            if mod and mod != name and not name.startswith(mod + "."):  # a package's own __init__ is no cycle
                deps.add(mod)
        graph[name] = deps
    state: dict[str, int] = {}
    stack: list[str] = []

    def dfs(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for dep in sorted(graph[node]):
            if state.get(dep) == 1:
                return stack[stack.index(dep) :] + [dep]
            if dep not in state and (cycle := dfs(dep)):
                return cycle
        state[node] = 2
        stack.pop()
        return None

    for node in sorted(graph):
        if node not in state:
            cycle = dfs(node)
            assert cycle is None, " -> ".join(cycle)


def test_importing_the_core_loads_no_heavy_library() -> None:
    code = (
        "import sys, qwenguard.core\n"
        f"heavy = sorted(m for m in sys.modules if m.split('.')[0] in {FRAMEWORKS + TORCH + SERVER!r})\n"
        "print(heavy)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "[]"
