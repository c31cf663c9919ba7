"""Suite-wide settings: offline, quiet, few threads (CI has 2 cores)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# One thread, here and in the processes tests start (CLI, servers): the tiny models' cost is per call, and on the
# 2-core CI machine two OpenMP threads made the suite several times slower (measured: 311 s vs 46 s for the
# crosscheck, learning and attach tests).
os.environ.setdefault("OMP_NUM_THREADS", "1")

ROOT = Path(__file__).resolve().parents[1]
TESTS = Path(__file__).resolve().parent
for path in (str(ROOT), str(TESTS)):
    if path not in sys.path:
        sys.path.insert(0, path)

import torch  # noqa: E402

torch.set_num_threads(1)
