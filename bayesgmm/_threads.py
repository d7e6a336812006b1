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
import threading
from typing import Callable, Iterable, TypeVar

T = TypeVar("T")
R = TypeVar("R")


def usable_cores() -> int:
    """CPU cores this process may run on (its affinity mask where the OS has one)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


#: The shared pool of :func:`map_pieces` (made at its first threaded call) and its size.
_POOL: concurrent.futures.ThreadPoolExecutor | None = None
_POOL_SIZE = 0
_POOL_LOCK = threading.Lock()
#: Marks the pool's own threads: a piece that maps pieces runs them in turn (never waiting on
#: the pool it occupies).
_IN_POOL = threading.local()


def _mark_pool_thread():
    _IN_POOL.active = True


def _pool(workers: int) -> concurrent.futures.ThreadPoolExecutor:
    """The shared pool, grown (replaced) when more workers are wanted. Threads are started once
    per process, not per call: a thread's start cost about 1.4 ms beside JAX's busy threads, as
    much as a whole small fit's host work."""
    global _POOL, _POOL_SIZE
    with _POOL_LOCK:
        if _POOL is None or _POOL_SIZE < workers:
            old = _POOL
            _POOL = concurrent.futures.ThreadPoolExecutor(workers, thread_name_prefix="bayesgmm-host",
                                                          initializer=_mark_pool_thread)
            _POOL_SIZE = workers
            if old is not None:
                old.shutdown(wait=False)
        return _POOL


def _forget_pool():  # a forked child has the pool's object but none of its threads
    global _POOL, _POOL_SIZE, _POOL_LOCK
    _POOL, _POOL_SIZE, _POOL_LOCK = None, 0, threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_pool)


def map_pieces(fn: Callable[[T], R], pieces: Iterable[T]) -> list[R]:
    """``[fn(p) for p in pieces]``, on up to :func:`usable_cores` threads of a shared pool when there
    are several pieces and cores. Inside one of the pool's threads (a piece that maps pieces of
    its own) the pieces run in turn, so that the pool never waits on itself; other callers at
    once (several threads of the user's) share the pool's threads in order of arrival."""
    pieces = list(pieces)
    workers = min(len(pieces), usable_cores())
    if workers < 2 or getattr(_IN_POOL, "active", False):
        return [fn(p) for p in pieces]
    return list(_pool(usable_cores()).map(fn, pieces))
