"""Where float32 EM stops by default, and how much rounding its objective's changes carry.

float32 EM's steps carry rounding, in the objective's changes and in the iteration itself, so one
step's Aitken rate scatters; the convergence test (:func:`bayesgmm._iterate.convergence`) then
also asks for :data:`~bayesgmm._iterate.COARSE_PERSIST` close evaluations in a row and for the
projections over windows of :data:`~bayesgmm._iterate.COARSE_STRIDES` updates. This script
measures, for a few data sets, (a) the rounding of the float32 objective's changes: along one
float32 run from a common start, the change the program computed against the change of the
float64 recomputation at the same parameters (each iterate is obtained by re-running with
``max_iter=t``), next to the precision floor ``FLOOR_ULPS * eps * sum_n |l_n|`` and the
tolerance (totals); and (b) where the default fit stops: its iterations and the gain it leaves
per observation against a long float64 run from the same start (the default tol is 1e-5 per
observation), for float32 and for float64.

Usage: ``python benchmarks/float32_floor.py [--iters 30]`` (JAX's default float32; minutes).
"""

from __future__ import annotations

import argparse
import os
import warnings

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import jax  # noqa: E402
import numpy as np  # noqa: E402

import bayesgmm as bg  # noqa: E402

CASES = [(2000, 2, 3), (20000, 5, 4), (20000, 16, 16), (100000, 16, 16)]  # (N, D, K)


def data(n, d, k, seed=1):
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 3, size=(k, d))
    return (centres[rng.integers(0, k, n)] + rng.normal(size=(n, d))).astype(np.float32)


def case(n, d, k, iters):
    x = data(n, d, k)
    start = bg.fit_em(x, k, max_iter=3, n_init=1, seed=0)
    given = dict(weights_init=start.weights, means_init=start.means,
                 precisions_init=np.linalg.inv(start.covariances), n_init=1)
    run = bg.fit_em(x, k, **given, tol=0.0, max_iter=iters)
    program = np.asarray(run.trace[:-1], np.float64)  # float32 objectives the program computed, t = 0..iters-1
    exact = np.array([bg.fit_em(x, k, **given, tol=0.0, max_iter=t).trace[-1] for t in range(1, iters)])
    rounding = np.abs(np.diff(program[1:]) - np.diff(exact))
    default = bg.fit_em(x, k, **given)
    with jax.enable_x64(True):
        x64 = x.astype(np.float64)
        best = bg.fit_em(x64, k, **given, tol=0.0, max_iter=1000).log_likelihood
        f64 = bg.fit_em(x64, k, **given)
    floor = run.info["precision_floor_per_obs"] * n
    return dict(floor=floor, tol=1e-5 * n, rounding=float(rounding.max()),
                f32_iter=default.n_iter, f32_left=(best - default.log_likelihood) / n,
                f64_iter=f64.n_iter, f64_left=(best - f64.log_likelihood) / n)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--iters", type=int, default=30)
    args = ap.parse_args(argv)
    warnings.simplefilter("ignore")
    print(f"# float32 EM (x64 off), given start, changes over {args.iters} iterations; load {os.getloadavg()[0]:.2f}")
    print(f"{'N':>7} {'D':>3} {'K':>3} | {'floor':>7} {'tol N':>7} {'max rounding':>12} {'floor/rnd':>9} | "
          f"{'f32 it':>6} {'f32 left/obs':>12} | {'f64 it':>6} {'f64 left/obs':>12}")
    for n, d, k in CASES:
        r = case(n, d, k, args.iters)
        print(f"{n:>7} {d:>3} {k:>3} | {r['floor']:7.3f} {r['tol']:7.3f} {r['rounding']:12.4f} "
              f"{r['floor'] / max(r['rounding'], 1e-12):9.1f} | {r['f32_iter']:>6} {r['f32_left']:12.2e} | "
              f"{r['f64_iter']:>6} {r['f64_left']:12.2e}", flush=True)


if __name__ == "__main__":
    main()
