"""The package boundaries the brief sets: the bot never imports torch, generation never discord."""

from __future__ import annotations

import subprocess
import sys

IMPORT_ALL = """
import importlib, pkgutil, sys
package = importlib.import_module({package!r})
for module in pkgutil.walk_packages(package.__path__, package.__name__ + "."):
    if module.name.split(".")[-1] != "__main__":
        importlib.import_module(module.name)
print(sorted(name for name in ("torch", "discord") if name in sys.modules))
"""


def imported_heavy_modules(package: str) -> list[str]:
    run = subprocess.run([sys.executable, "-c", IMPORT_ALL.format(package=package)], capture_output=True, text=True, check=True)
    return eval(run.stdout.strip().splitlines()[-1])


def test_generation_never_imports_discord() -> None:
    assert "discord" not in imported_heavy_modules("generation")


def test_bot_never_imports_torch() -> None:
    assert "torch" not in imported_heavy_modules("bot")
