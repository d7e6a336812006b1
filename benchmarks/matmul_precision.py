"""What full-float32 matrix products cost and buy on an accelerator.

JAX lets a GPU compute a float32 product with TensorFloat-32 inputs (10 bits of mantissa) unless
told otherwise; bayesgmm traces its programs with full float32 products unless the user chose a
precision (``bayesgmm._compile.FULL_PRECISION``). This script fits the same float32 EM (N rows,
D=16, K=16, full covariances, one fixed start, ``tol=0``) three ways, each in a fresh process:

* ``full``: the package's default (full float32 products);
* ``tf32``: ``JAX_DEFAULT_MATMUL_PRECISION=tensorfloat32``, JAX's own default on such a GPU;
* ``float64``: the same fit in float64 (x64 on), the reference.

and prints for each the time per EM iteration, ``(run(T) - run(1)) / (T - 1)`` with compile
excluded, the log-likelihood after T iterations (every reported total is a float64 recomputation
at the returned parameters, so the differences are the fits' own) and the largest difference
of the means from the float64 fit's. On a CPU the three float32 settings compute the same
numbers (XLA's CPU products are float32 whatever the setting).

Usage::

    python benchmarks/matmul_precision.py              # N=2e6 on a GPU, 1e5 elsewhere
    python benchmarks/matmul_precision.py --iters 10 --reps 2   # what ran on an H200 in under 110 s
    python benchmarks/matmul_precision.py --n 1000000 --iters 20
    python benchmarks/matmul_precision.py --centre-sd 1 --settings float64,full   # the fast form in float32
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

from _em_timing import fixed_start, per_iteration

D, K = 16, 16


def worker(n: int, iters: int, reps: int, dtype: str, centre_sd: float) -> dict:
    import warnings

    import jax

    if dtype == "float64":
        jax.config.update("jax_enable_x64", True)
    import numpy as np

    import bayesgmm as bg

    warnings.simplefilter("ignore")  # tol=0 runs to max_iter: ConvergenceWarning by design
    rng = np.random.default_rng(0)
    centres = rng.normal(0.0, centre_sd, size=(K, D))
    x = (centres[rng.integers(0, K, n)] + rng.normal(size=(n, D))).astype(dtype)
    start = fixed_start(x, K)
    timed = per_iteration(lambda t: bg.fit_em(x, K, **start, tol=0.0, max_iter=t, seed=0), iters, reps)
    first, per_iter = timed["first"], timed["per_iter"]
    return dict(device=f"{jax.devices()[0].platform}:{jax.devices()[0].device_kind}", per_iter=per_iter,
                whole_fit=timed["whole_fit"], first_wall=timed["first_wall"], compile=first.info["compile_seconds"],
                loglik=first.log_likelihood, means=np.asarray(first.params.means, np.float64).tolist(),
                precision=jax.config.jax_default_matmul_precision)


def run(setting: str, n: int, iters: int, reps: int, centre_sd: float) -> dict:
    env = dict(os.environ)
    env.pop("JAX_DEFAULT_MATMUL_PRECISION", None)
    if setting == "tf32":
        env["JAX_DEFAULT_MATMUL_PRECISION"] = "tensorfloat32"
    dtype = "float64" if setting == "float64" else "float32"
    args = [sys.executable, __file__, "--worker", json.dumps([n, iters, reps, dtype, centre_sd])]
    proc = subprocess.run(args, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"{setting} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=None, help="rows (default 2e6 on a GPU, 1e5 elsewhere; at 1e7 each "
                    "setting's process takes over a minute on an H200's host, mostly host set-up)")
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--centre-sd", type=float, default=3.0,
                    help="sd of the components' centres (unit noise); 3: float32 takes the precise form, 1: the fast one")
    ap.add_argument("--settings", default="float64,full,tf32", help="comma-separated subset of float64,full,tf32")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(*json.loads(args.worker))))
        return
    import numpy as np

    probe = subprocess.run([sys.executable, "-c", "import jax; print(jax.default_backend())"],
                           capture_output=True, text=True, check=True).stdout.strip()
    n = args.n or (2_000_000 if probe == "gpu" else 100_000)
    print(f"# float32 EM, N={n:.0e}, D={D}, K={K}, full, centres ~N(0, {args.centre_sd:g}^2), "
          f"{args.iters} iterations from one start, tol=0; "
          f"backend {probe}; load {'/'.join(f'{v:.2f}' for v in os.getloadavg())}")
    results = {s: run(s, n, args.iters, args.reps, args.centre_sd) for s in args.settings.split(",")}
    ref = results.get("float64", next(iter(results.values())))
    print(f"{'products':<9} {'device':<24} | {'ms/iter':>8} {'fit s':>7} {'compile s':>9} | "
          f"{'log-likelihood':>18} {'diff/row':>9} {'max |dmean|':>11}")
    for name, r in results.items():
        dmean = float(np.max(np.abs(np.asarray(r["means"]) - np.asarray(ref["means"]))))
        print(f"{name:<9} {r['device']:<24} | {r['per_iter'] * 1e3:>8.2f} {r['whole_fit']:>7.3f} {r['compile']:>9.2f} | "
              f"{r['loglik']:>18.6f} {(r['loglik'] - ref['loglik']) / n:>9.1e} {dmean:>11.1e}")
    print("diff/row: (log-likelihood - float64's) / N after the same iterations; max |dmean|: largest "
          "difference of a mean from the float64 fit's (the first setting's without float64).")


if __name__ == "__main__":
    main()
