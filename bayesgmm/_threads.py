"""Host work on every core the process may use.

NumPy releases Python's lock inside its array operations (arithmetic, ``matmul``, ``partition``),
so independent pieces of float64 host work, such as the row blocks of a recomputed
log-likelihood or the columns of a median, run at once on threads. Each piece writes its own
result, and the results are combined in a fixed order afterwards, so the numbers do not depend on
the number of threads or on which thread ran what.
"""

from __future__ import annotations

import concurrent.futures
import os
from typing import Callable, Iterable, TypeVar

T = TypeVar("T")
R = TypeVar("R")


def usable_cores() -> int:
    """CPU cores this process may run on (its affinity mask where the OS has one)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def map_pieces(fn: Callable[[T], R], pieces: Iterable[T]) -> list[R]:
    """``[fn(p) for p in pieces]``, on up to :func:`usable_cores` threads when there are several
    pieces and cores (a pool of its own per call, so that callers on other pools cannot starve it)."""
    pieces = list(pieces)
    workers = min(len(pieces), usable_cores())
    if workers < 2:
        return [fn(p) for p in pieces]
    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
        return list(pool.map(fn, pieces))
