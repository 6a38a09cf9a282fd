"""Test set-up. The benchmarks are the installed package ``fedlego_bench`` (``bench/``, installed by
``make setup``), imported like any other. ``make test`` runs the files on two pytest-xdist workers
(``--dist loadfile``: a file's tests stay together, in order); each worker then keeps PyTorch to one
thread, so that two workers share two cores without oversubscribing them."""

import os

if os.environ.get("PYTEST_XDIST_WORKER"):
    import torch

    torch.set_num_threads(1)

SLOW_FILES = ("test_deployment.py", "test_readme.py")
"""Files of several minutes each: collected first, so that the workers start them before the many
short files instead of finishing with them alone."""


def pytest_collection_modifyitems(items):
    """Put ``SLOW_FILES`` first, keeping every file's own order (a stable sort)."""
    items.sort(key=lambda item: item.path.name not in SLOW_FILES)
