"""What the EM benchmarks share: a fixed start from the first rows, and the time per iteration
of a fit with ``tol=0`` measured as ``(run(T) - run(1)) / (T - 1)`` from the fits' own
``run_seconds`` (compile and host set-up excluded).

Imported by ``scale.py``, ``matmul_precision.py`` and ``accelerator_em.py`` (run as scripts, so
this folder is on ``sys.path``).
"""

from __future__ import annotations

import statistics
import time


def first_rows_start(x, num_components: int):
    """One start from the first ``20 K`` rows, ``(weights, means, covariances)``: equal weights,
    every 20th row as a mean, the rows' covariance (plus 1e-3 on its diagonal) for every component.
    No initialisation cost in the timings, and the same start for every setting compared."""
    import numpy as np

    k = num_components
    head = np.asarray(x[: 20 * k], np.float64)
    cov = np.cov(head, rowvar=False) + 1e-3 * np.eye(head.shape[1])
    return np.full(k, 1.0 / k), head[::20][:k], np.tile(cov, (k, 1, 1))


def fixed_start(x, num_components: int) -> dict:
    """:func:`first_rows_start` as ``fit_em`` keyword arguments (the covariances as precisions)."""
    import numpy as np

    weights, means, covariances = first_rows_start(x, num_components)
    return dict(weights_init=weights, means_init=means, precisions_init=np.linalg.inv(covariances))


def per_iteration(fit, iters: int, reps: int, *, warm_short: bool = True) -> dict:
    """Time per EM iteration of ``fit(max_iter)`` (a fit with ``tol=0``, so it runs ``max_iter``
    iterations): a first ``fit(iters)`` (compiles; its result is returned), with ``warm_short``
    one ``fit(1)``, then ``reps`` interleaved pairs of ``fit(iters)`` and ``fit(1)``.

    Returns ``per_iter`` (s), ``first`` (the first fit's result), ``first_wall`` (its wall
    seconds), ``whole_fit`` and ``short_fit`` (median ``run_seconds`` of the T- and 1-iteration fits).
    """
    t0 = time.perf_counter()
    first = fit(iters)
    first_wall = time.perf_counter() - t0
    if warm_short:
        fit(1)
    long, short = [], []
    for _ in range(reps):
        long.append(fit(iters).info["run_seconds"])
        short.append(fit(1).info["run_seconds"])
    whole, one = statistics.median(long), statistics.median(short)
    return dict(per_iter=max(whole - one, 1e-9) / (iters - 1), first=first, first_wall=first_wall,
                whole_fit=whole, short_fit=one)
