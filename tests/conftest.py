"""Shared pytest setup: import the flat modules (model.py, data.py, ...) from the repo root, keep tests on CPU."""
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

import torch  # noqa: E402

# Tests are small: one or two threads are faster than oversubscribing a 2-core machine.
torch.set_num_threads(min(2, torch.get_num_threads()))
