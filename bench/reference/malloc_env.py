"""glibc malloc settings for the PyTorch benchmarks.

glibc serves large blocks (PyTorch's activations) with mmap and unmaps them on free, so
every batch page-faults its activations in again. Page faults are very expensive on our
VMs: EfficientNet-Lite0 batch 32 ran at 38 img/s with the defaults and 100 img/s with
these two settings, which keep freed memory in the heap. glibc reads them at start-up,
so a running interpreter cannot set them for itself: it re-executes itself instead.
"""

import os
import sys

MALLOC_ENV = {"MALLOC_MMAP_MAX_": "0", "MALLOC_TRIM_THRESHOLD_": "100000000000"}


def ensure_malloc_env():
    """Re-executes this script with MALLOC_ENV when the caller has not set those variables.

    Call it first thing, before importing torch (the first process is thrown away).
    """
    missing = {k: v for k, v in MALLOC_ENV.items() if k not in os.environ}
    if missing:
        os.execve(sys.executable, [sys.executable, *sys.argv], {**os.environ, **missing})
