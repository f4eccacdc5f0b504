"""Benchmarks that print figures; run them as modules (`python -m bench.NAME`).

Some reuse the tests' helpers (the Discord API double, the MIDI corpus): tests/support is put on
the path here, once, before any bench module imports them.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "support"))
