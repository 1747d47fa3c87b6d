"""Shared pytest setup: import the flat modules (model.py, data.py, ...) from the repo root, keep tests on CPU."""
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

import torch  # noqa: E402

# Tests are small: one or two threads are faster than oversubscribing a 2-core machine.
torch.set_num_threads(min(2, torch.get_num_threads()))

# Triton decorates its own library functions (tl.sum's combine functions, ...) once, when it is first imported,
# for the mode TRITON_INTERPRET says then. The kernel tests run under the interpreter, so Triton must be first
# imported with the variable on, whichever test module happens to import it first; the variable is then put
# back, so that every other test keeps the plain CPU path (kernels.use_triton reads it at each call).
_prev = os.environ.get("TRITON_INTERPRET")
os.environ["TRITON_INTERPRET"] = "1"
try:
    import triton  # noqa: E402,F401
    import triton.language  # noqa: E402,F401
except ImportError:
    pass
finally:
    if _prev is None:
        del os.environ["TRITON_INTERPRET"]
    else:
        os.environ["TRITON_INTERPRET"] = _prev


import pytest  # noqa: E402


@pytest.fixture(scope="module")
def one_thread():
    """One thread: on a busy 2-core machine two threads per op are many times slower for tiny shapes. A module
    opts in with pytestmark = pytest.mark.usefixtures("one_thread")."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def tok():
    """The shipped toy tokenizer."""
    import tokenizer
    return tokenizer.get_tokenizer("toy")
