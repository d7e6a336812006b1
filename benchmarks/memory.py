"""Peak memory of in-memory EM against the size of the data.

Each case runs in a fresh process (peak RSS is per process) that fits ``fit_em(x, K, n_init=1,
max_iter=3, tol=0)`` (memory does not depend on the number of iterations) on float64 data, and
prints the peak resident memory, the process's memory before the fit (Python, JAX and the data),
XLA's own account of the compiled program, and the ratio of the growth during the fit to the
data's size. ``whole`` cases switch the row blocks of the E-step off (the features Z of every row
materialised: the layout before blocks), ``large-blocks`` only the CPU's cache-sized blocks (the
memory bound's blocks of about 2^24 feature elements remain), for comparison in the same run.

Usage: ``python benchmarks/memory.py [N ...]`` (default 1e6 and 5e6; D = 16, K = 4, full).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

CHILD = r"""
import json, resource, sys
import numpy as np
n, d, k, whole = int(float(sys.argv[1])), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4] == "whole"
import jax
jax.config.update("jax_enable_x64", True)
import bayesgmm as bg
from bayesgmm import _em_core, _stats
if whole:
    _stats.BLOCKED_ABOVE = _stats.CACHE_BLOCKED_ABOVE = 2**62
if sys.argv[4] == "large-blocks":  # only the memory bound's blocks (2^24 elements of features), no cache-sized ones
    _stats.CACHE_BLOCKED_ABOVE = 2**62
x = np.random.default_rng(0).normal(size=(n, d))
x[: n // 2] += 3.0
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
fit = bg.fit_em(x, k, n_init=1, max_iter=3, tol=0)
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
program = max(m for m in _em_core.PROGRAM._memory.values() if m is not None)
print(json.dumps(dict(data=x.nbytes, before=before, peak=peak, program=program)))
"""


def run(n: float, d: int, k: int, layout: str) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1")
    out = subprocess.run([sys.executable, "-c", CHILD, str(n), str(d), str(k), layout], env=env,
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    sizes = [float(a) for a in sys.argv[1:]] or [1e6, 5e6]
    d, k = 16, 4
    print(f"load average {os.getloadavg()[0]:.2f}; D={d}, K={k}, full covariances, float64; GiB")
    print(f"{'N':>9} {'layout':>12} {'data':>6} {'before':>7} {'peak':>6} {'XLA program':>12} {'(peak-before)/data':>19}")
    for n in sizes:
        layouts = ["blocks", "large-blocks", "whole"] if n <= 1e6 else ["blocks", "large-blocks"]
        for layout in layouts:
            r = run(n, d, k, layout)
            gib = {key: value / 2**30 for key, value in r.items()}
            growth = (r["peak"] - r["before"]) / r["data"]
            print(f"{n:9.0e} {layout:>12} {gib['data']:6.2f} {gib['before']:7.2f} {gib['peak']:6.2f} "
                  f"{gib['program']:12.2f} {growth:19.1f}")


if __name__ == "__main__":
    main()
