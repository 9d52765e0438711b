"""The house's shape: imports point one way (entry points -> the run -> building blocks), with no cycle.

- Entry points: the `ganbench` commands (cli dispatch, train's Hydra entry, eval/sample/features, report, bench).
- The run: ``ganbench.train``, the loop.
- Building blocks: everything else (config, rundir, build, step, losses, constraints, models, data, metrics,
  checkpoint, logger, ...). They never import the run or an entry point, so a metric or a model can be used alone.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "ganbench"
ENTRY_POINTS = {"ganbench.cli", "ganbench.__main__", "ganbench.launch", "ganbench.evaluate", "ganbench.report",
                "ganbench.bench"}
RUN = {"ganbench.train"}
# Function-level imports allowed: optional or heavy dependencies only, each with a comment at its import.
LAZY_OK = {"torch_fidelity", "matplotlib"}
# And two modules' own torch-pulling imports: `ganbench train` checks its command line and run directory before torch
# loads (test_cli checks that torch stays out), so config.py imports distributed only under torchrun, and rundir.py
# imports checkpoint (the file format and the atomic writes) only where it reads a checkpoint or writes a file.
LAZY_TORCH = {"ganbench.config": {"ganbench", "ganbench.distributed"},
              "ganbench.rundir": {"ganbench", "ganbench.checkpoint"}}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}
BLOCKS = sorted(set(MODULES) - ENTRY_POINTS - RUN)


def imports(path: Path) -> list[tuple[str, bool]]:
    """(imported module, imported inside a function) for every import statement of the file."""
    tree = ast.parse(path.read_text())
    out = []

    def visit(node, in_function: bool):
        for child in ast.iter_child_nodes(node):
            inner = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef))
            if isinstance(child, ast.Import):
                out.extend((alias.name, in_function) for alias in child.names)
            elif isinstance(child, ast.ImportFrom) and child.module and child.level == 0:
                out.append((child.module, in_function))
                # `from ganbench import checkpoint` imports the module ganbench.checkpoint
                out.extend((f"{child.module}.{a.name}", in_function) for a in child.names
                           if f"{child.module}.{a.name}" in MODULES)
            visit(child, inner)

    visit(tree, False)
    return out


def graph() -> dict[str, set[str]]:
    return {name: {m for m, _ in imports(path) if m in MODULES and m != name and m != "ganbench"}
            for name, path in MODULES.items()}


def test_no_import_cycle():
    edges = graph()
    state: dict[str, int] = {}

    def walk(node: str, stack: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(edges[node]):
            if state.get(nxt) == 1:
                pytest.fail("import cycle: " + " -> ".join(stack[stack.index(nxt):] + [nxt]))
            if nxt not in state:
                walk(nxt, stack + [nxt])
        state[node] = 2

    for name in sorted(edges):
        if name not in state:
            walk(name, [name])


def test_building_blocks_never_import_the_run_or_an_entry_point():
    edges = graph()
    bad = [f"{block} imports {m}" for block in BLOCKS for m in sorted(edges[block]) if m in ENTRY_POINTS | RUN]
    assert bad == []
    # the run imports no entry point either
    assert [m for m in edges["ganbench.train"] if m in ENTRY_POINTS] == []


def test_function_level_imports_are_only_optional_dependencies():
    lazy = [f"{name}: {m}" for name, path in MODULES.items() for m, in_function in imports(path)
            if in_function and m.split(".")[0] not in LAZY_OK and m not in LAZY_TORCH.get(name, ())]
    assert lazy == []


# Run in a fresh interpreter: it imports the heavy third-party libraries once, then forks one child per module
# (so each child starts with no ganbench module loaded) and prints what importing that module pulled in.
PROBE = """
import importlib, json, multiprocessing, sys
import torch, torchvision, hydra, omegaconf, numpy  # shared by the children, loaded once
names = json.loads(sys.argv[1])
def probe(name, queue):
    importlib.import_module(name)
    queue.put(sorted(m for m in sys.modules if m.startswith("ganbench")))
assert not [m for m in sys.modules if m.startswith("ganbench")]
ctx = multiprocessing.get_context("fork")
out = {}
for name in names:
    queue = ctx.Queue()
    child = ctx.Process(target=probe, args=(name, queue))
    child.start()
    out[name] = queue.get(timeout=120)
    child.join()
print(json.dumps(out))
"""


def test_each_building_block_imports_alone_without_the_loop():
    result = subprocess.run([sys.executable, "-c", PROBE, json.dumps(BLOCKS)], capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    loaded = json.loads(result.stdout.strip().splitlines()[-1])
    assert sorted(loaded) == BLOCKS
    assert all(name in loaded[name] for name in BLOCKS)
    pulled = {name: [m for m in mods if m in ENTRY_POINTS | RUN] for name, mods in loaded.items()}
    assert {name: mods for name, mods in pulled.items() if mods} == {}


def test_the_run_directory_module_is_the_one_home_of_its_ideas():
    """rundir.py owns the lock, the resume identity, finding checkpoints, metrics.json's writing and the seed rule:
    nothing else writes metrics.json or spells out the seed rule, and rundir imports no entry point, the loop, nor
    any torch-pulling block at module level (the CLI uses it before torch loads)."""
    writes = ("atomic_write", ".write_text(", ".write_bytes(", "json.dump(")
    seeds = [name for name, path in MODULES.items() if name != "ganbench.rundir" and "1_000_003" in path.read_text()]
    writers = [f"{name}: {line.strip()}" for name, path in MODULES.items() if name != "ganbench.rundir"
               for line in path.read_text().splitlines() if "metrics.json" in line and any(w in line for w in writes)]
    assert seeds == [] and writers == []
    top_level = {m for m, in_function in imports(MODULES["ganbench.rundir"]) if not in_function}
    assert top_level & set(MODULES) <= {"ganbench", "ganbench.config", "ganbench.errors"}, top_level
    assert {"torch", "ganbench.checkpoint"}.isdisjoint(top_level)


def test_every_function_fits_on_a_screen():
    """No function in ganbench/ is longer than 60 lines (the loop included): long bodies hide their duties."""
    long = []
    for name, path in MODULES.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno >= 60:
                long.append(f"{name}.{node.name}: {node.end_lineno - node.lineno + 1} lines")
    assert long == []
