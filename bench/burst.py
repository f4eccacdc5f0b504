"""What the burst benches share: the real `loopjam run` against the Discord API double, and their options."""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any


def bot_environment(double: Any, model: Path, data_dir: str, **settings: str) -> dict[str, str]:
    """`loopjam run`'s environment: pointed at the double, the tiny model, one candidate per job, a 500-job queue.

    `settings` adds LOOPJAM_* variables, e.g. `LOOPJAM_METRICS__ENABLED="true"`.
    """
    return {
        **os.environ, **double.bot_environment(), "LOOPJAM_MODEL__NAME": str(model),
        "LOOPJAM_MODEL__ALLOWED": f'["{model}"]', "LOOPJAM_STORAGE__DATA_DIR": data_dir,
        "LOOPJAM_GENERATION__CANDIDATES": "1", "LOOPJAM_GENERATION__RETRY_BUDGET": "0",
        "LOOPJAM_GENERATION__EXTRA_SECONDS": "1.0", "LOOPJAM_QUEUE__MAX_QUEUE": "500", **settings,
    }


def burst_options(description: str) -> argparse.ArgumentParser:
    """--interactions (default 200) and --users (default 50)."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--interactions", type=int, default=200)
    parser.add_argument("--users", type=int, default=50)
    return parser
