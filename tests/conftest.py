"""Test set-up: the benchmark modules (``bench/``, not part of the installed library) import by name."""

import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "bench"
if str(BENCH) not in sys.path:
    sys.path.insert(0, str(BENCH))
