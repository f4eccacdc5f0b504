"""The package boundaries the brief sets: the bot never imports torch, generation never discord;
imports flow one way (pyproject.toml's import-linter contracts) and no module imports one that imports it back.

"generation never imports discord" is an import-linter contract: it reads every import, those inside
functions too, where importing every module here would see only the top-level ones (and take 16 s).
The bot's check runs the imports: the queue service the bot runs also holds the worker's code, which
imports torch inside its functions and runs only in the worker's process, so a static contract would
see torch behind the bot; only a run can tell.
"""

from __future__ import annotations

import os
import subprocess
import sys
from itertools import pairwise
from pathlib import Path

import grimp
import pytest

ROOT = Path(__file__).resolve().parents[2]

IMPORT_ALL = """
import importlib, pkgutil, sys
package = importlib.import_module({package!r})
for module in pkgutil.walk_packages(package.__path__, package.__name__ + "."):
    if module.name.split(".")[-1] != "__main__":
        importlib.import_module(module.name)
print(sorted(name for name in ("torch", "discord", "librosa", "pedalboard") if name in sys.modules))
"""


def imported_heavy_modules(package: str) -> list[str]:
    run = subprocess.run([sys.executable, "-c", IMPORT_ALL.format(package=package)], capture_output=True, text=True, check=True)
    return eval(run.stdout.strip().splitlines()[-1])


def test_bot_never_imports_torch_nor_the_audio_analysis() -> None:
    """Keys are named and parsed in the bot; detecting and shifting them (librosa, pedalboard) is the worker's."""
    assert imported_heavy_modules("bot") == ["discord"]


def test_the_import_contracts_in_pyproject_hold() -> None:
    """Layers (command line -> bot -> jobs -> storage, engine, loop -> music), only the CLI imports the bot,
    generation never imports discord, no sibling cycles."""
    lint = subprocess.run(
        [sys.executable, "-c", "from importlinter.cli import lint_imports_command; lint_imports_command()", "--no-cache"],
        capture_output=True, text=True, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    if lint.returncode != 0:
        pytest.fail(lint.stdout[lint.stdout.find("Broken contracts"):] + lint.stderr, pytrace=False)


def import_cycles(graph: grimp.ImportGraph) -> list[list[str]]:
    """One shortest cycle through each group of modules that import each other (directly or not)."""
    cycles: list[list[str]] = []
    seen: set[str] = set()
    for module in sorted(graph.modules):
        if module in seen:
            continue
        for imported in sorted(graph.find_modules_directly_imported_by(module)):
            back = graph.find_shortest_chain(importer=imported, imported=module)
            if back is not None:
                cycles.append([module, *back])
                seen.update(back)
                break
    return cycles


def describe(graph: grimp.ImportGraph, cycle: list[str]) -> str:
    """`a -> b (a.py line 3) -> a (b.py line 9)`."""
    steps = [cycle[0]]
    for importer, imported in pairwise(cycle):
        lines = sorted(detail["line_number"] for detail in graph.get_import_details(importer=importer, imported=imported))
        steps.append(f"{imported} (line {', '.join(map(str, lines))} of {importer})")
    return " -> ".join(steps)


def test_no_module_imports_one_that_imports_it_back() -> None:
    """Counting imports inside functions and under TYPE_CHECKING: a cycle there is still a knot to untie."""
    graph = grimp.build_graph("bot", "generation", cache_dir=None)
    cycles = [describe(graph, cycle) for cycle in import_cycles(graph)]
    if cycles:
        pytest.fail("import cycles:\n" + "\n".join(cycles), pytrace=False)
