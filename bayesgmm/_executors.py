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
  behind. Every place of the package that records or silences warnings does it under one lock
  (:func:`recorded_warnings`), so on a thread pool (or Dask's threads) the tasks run one at a
  time and report what the serial run reports; processes run them in parallel. A task that
  itself runs an experiment on an executor (a user's engine calling ``compare``, say) runs
  that one in its own thread (:func:`inside_task`): its workers would wait for the lock the
  task holds while the task waits for them. A user's own ``warnings.catch_warnings`` in another
  thread, and a warning the package raises outside these blocks (a plain ``fit_em`` call's),
  still share the process-wide state (Python's warnings module becomes context-local only in
  Python 3.14). The estimator's fits on a user's threads run one at a time too.
"""

from __future__ import annotations

import contextlib
import functools
import threading
import warnings

import numpy as np

#: A fit's failures that an experiment can record instead of raising (``on_error="record"``): the
#: package's refusals and numerical failures; any other exception is a bug and is raised.
FIT_ERRORS = (ValueError, FloatingPointError, np.linalg.LinAlgError)

#: Held while a task records (or silences) warnings: the warnings module's state is process-wide.
WARNINGS_LOCK = threading.RLock()
#: How many :func:`recorded_warnings` blocks this thread is inside.
_DEPTH = threading.local()


def inside_task() -> bool:
    """Whether this thread is inside a :func:`recorded_warnings` block (holding the lock)."""
    return getattr(_DEPTH, "value", 0) > 0


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
def recorded_warnings(action: str = "always", category=Warning, message: str = ""):
    """``warnings.catch_warnings(record=True)`` with ``filterwarnings(action, message, category)``
    (the caller's filters and display kept for other warnings when ``category`` or ``message``
    narrows it), one block at a time in this process (:data:`WARNINGS_LOCK`): yields the list of
    warnings recorded (empty when narrowed: the others then reach the caller as before).

    Only warnings raised inside such a block are kept apart: one that the package raises
    elsewhere (a fit's own warning, outside any block) in one thread can still land in another
    thread's recording, as any ``warnings.catch_warnings`` of the user's can."""
    narrow = category is not Warning or message != ""
    with WARNINGS_LOCK, warnings.catch_warnings(record=not narrow) as caught:
        _DEPTH.value = getattr(_DEPTH, "value", 0) + 1
        try:
            warnings.filterwarnings(action, message=message, category=category)
            yield [] if caught is None else caught
        finally:
            _DEPTH.value -= 1


def run_tasks(fn, items, args, executor, bar_labels, checkpoint=None) -> list:
    """``[fn(item, *args) for item in items]``, in this process or submitted to ``executor``,
    with a tqdm bar ``(desc, unit)`` when ``bar_labels`` is given.

    ``checkpoint`` (a :class:`bayesgmm._checkpoint.Checkpoint`, optional): the tasks it holds are
    loaded instead of run, and every other task's result is saved there as soon as it finishes
    (on an executor, in the order they finish). Results come back in the items' order whatever
    the order of finishing. On an error, as in the serial loop, the error of the first failing
    task (by position) is raised; on an executor the tasks not yet started are cancelled first,
    and those already running are waited for and, where they succeed, saved.
    """
    results = {} if checkpoint is None else checkpoint.finished()
    todo = [i for i in range(len(items)) if i not in results]
    bar = None
    if bar_labels is not None:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(items), initial=len(results), desc=bar_labels[0], unit=bar_labels[1])
    if inside_task():  # an experiment inside a task: its workers would wait for the task's lock
        executor = None

    def finish(index, value):
        if checkpoint is not None:
            checkpoint.save(index, value)
        results[index] = value
        if bar is not None:
            bar.update(1)

    try:
        if executor is None:
            for i in todo:
                finish(i, fn(items[i], *args))
        else:
            _run_on(executor, fn, items, args, todo, finish, None if checkpoint is None else checkpoint.save)
    finally:
        if bar is not None:
            bar.close()
    return [results[i] for i in range(len(items))]


def _keep_later(keep, index, future) -> None:
    """A task that was running when the caller was interrupted: save its result in the checkpoint
    (its file is written whole) when it succeeded."""
    if not future.cancelled() and future.exception() is None:
        with contextlib.suppress(Exception):
            keep(index, future.result())


def _run_on(executor, fn, items, args, todo, finish, keep) -> None:
    """:func:`run_tasks`' executor path: ``finish(index, value)`` as tasks succeed; after the first
    failure, the tasks not started are cancelled, the running ones finished, and the failure of
    the lowest position raised. Interrupted (Ctrl-C), the tasks not started are cancelled and the
    running ones' results are given to ``keep(index, value)`` (the checkpoint's save) as they end."""
    from concurrent.futures import FIRST_COMPLETED, Future, wait

    pending = {}
    for i in todo:
        future = executor.submit(fn, items[i], *args)
        if not isinstance(future, Future):
            raise ValueError(f"executor.submit returned a {type(future).__name__}, not a concurrent.futures.Future; "
                             "pass a concurrent.futures.Executor (a process or thread pool, or Dask's "
                             "client.get_executor()).")
        pending[future] = i
    failed = {}
    try:
        while pending:
            done, _ = wait(pending, return_when=FIRST_COMPLETED)
            for future in sorted(done, key=pending.get):
                index = pending.pop(future)
                if future.cancelled():
                    continue
                error = future.exception()
                if error is None:
                    finish(index, future.result())
                else:
                    failed[index] = error
            if failed:
                for future in pending:
                    future.cancel()  # a no-op for those already running: they are waited for next
    except BaseException:  # Ctrl-C while waiting: nothing more is started, and what is running is kept
        for future, index in pending.items():
            if not future.cancel() and keep is not None:  # running: its result is saved when it ends
                future.add_done_callback(functools.partial(_keep_later, keep, index))
        raise
    if failed:
        raise failed[min(failed)]
