"""Tasks of the experiments (:func:`bayesgmm.compare`, :func:`bayesgmm.simulation_study`,
:func:`bayesgmm.sbc`) on a user's :class:`concurrent.futures.Executor`.

Two things an executor's workers share with the caller are checked or guarded here:

* A process pool that *forks* a parent which has run JAX copies XLA's thread pools without
  their threads, and its workers wait forever (a serial ``simulation_study`` and then the same
  call on ``ProcessPoolExecutor(2)``, Linux's default start method: killed after 150 s, where a
  fresh parent finished in 1.9 s). Such a pool is refused with the fix.
* Python's warning capture (:class:`warnings.catch_warnings`) swaps process-wide state: two
  threads recording at once took each other's warnings (a thread pool's ``simulation_study``
  put its EM rows' ConvergenceWarning on VB rows, or lost it) and left an ``"always"`` filter
  behind. Tasks record under one lock, so on a thread pool (or Dask's threads) they run one at
  a time and report what the serial run reports; processes run them in parallel.
"""

from __future__ import annotations

import contextlib
import threading
import warnings

#: Held while a task records (or silences) warnings: the warnings module's state is process-wide.
_WARNINGS_LOCK = threading.RLock()


def check_executor(executor) -> None:
    """Raise where ``executor`` cannot run the tasks: not an executor, or a process pool that
    forks (see the module docstring)."""
    if executor is None:
        return
    if not callable(getattr(executor, "submit", None)):
        raise ValueError(f"executor must be a concurrent.futures.Executor (or have its submit method), got {executor!r}.")
    context = getattr(executor, "_mp_context", None)  # concurrent.futures.ProcessPoolExecutor's
    if context is not None and context.get_start_method() == "fork":
        raise ValueError(
            "executor is a process pool that forks this process, whose JAX thread pools a forked worker "
            "cannot use (it waits forever once JAX has run here). Make it with the spawn context: "
            "ProcessPoolExecutor(n, mp_context=multiprocessing.get_context('spawn')).")


@contextlib.contextmanager
def recorded_warnings(action: str = "always"):
    """``warnings.catch_warnings(record=True)`` with ``simplefilter(action)``, one task at a time
    in this process (:data:`_WARNINGS_LOCK`): yields the list of warnings recorded (empty with
    ``action="ignore"``)."""
    with _WARNINGS_LOCK, warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter(action)
        yield caught
