"""EM's time per iteration on an accelerator: how the centred form's components and the row
blocks are laid out.

The float32 EM of ``benchmarks/scale.py`` (N rows, D=16, K=16, full covariances, one fixed
start, ``tol=0``) on two data sets, in one process:

* centres ~ N(0, 3^2): tight components far apart, where float32 takes the centred form
  (``bayesgmm._stats.needs_precise``);
* centres ~ N(0, 1): float32 stays in the fast (exponential-family) form.

For each, the variants:

* ``apart``: the centred form's components one after another (``lax.map``), as on the CPU and
  as every device did before (``bayesgmm._stats.COMPONENTS_TOGETHER = False``);
* ``together``: all components at once (``vmap``), the default off the CPU;
* ``together, blocks xN``: the same with row blocks N times as large
  (``bayesgmm._stats.BLOCK_ELEMENTS``).

Time per iteration is ``(run(T) - run(1)) / (T - 1)`` from the fits' ``run_seconds`` (compile and
host set-up excluded); the ratio is against ``apart`` on the same data, in the same process.
Every variant's log-likelihood (a float64 recomputation at the returned parameters) is printed:
they must agree to float32 round-off.

Usage::

    python benchmarks/accelerator_em.py                      # N=1e7 on an accelerator, 2e5 on a CPU
    python benchmarks/accelerator_em.py --n 2000000 --iters 6
"""

from __future__ import annotations

import argparse
import os
import warnings

from _em_timing import fixed_start, per_iteration

D, K = 16, 16


def load() -> str:
    return "/".join(f"{v:.2f}" for v in os.getloadavg())


def make_data(n: int, centre_sd: float, seed: int = 0):
    import numpy as np

    rng = np.random.default_rng(seed)
    centres = rng.normal(0.0, centre_sd, size=(K, D))
    x = np.empty((n, D), np.float32)
    for start in range(0, n, 250_000):  # block by block: no float64 copy of it all
        m = min(250_000, n - start)
        x[start : start + m] = centres[rng.integers(0, K, m)] + rng.normal(size=(m, D))
    return x


def time_fit(x, iters: int, reps: int) -> dict:
    import bayesgmm as bg

    start = fixed_start(x, K)
    timed = per_iteration(lambda t: bg.fit_em(x, K, **start, tol=0.0, max_iter=t, seed=0), iters, reps,
                          warm_short=False)
    first = timed["first"]
    return dict(per_iter=timed["per_iter"], compile=first.info["compile_seconds"], ll=first.log_likelihood,
                run1=timed["short_fit"])


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=None, help="rows (default 1e7 on an accelerator, 2e5 on a CPU)")
    ap.add_argument("--iters", type=int, default=8)
    ap.add_argument("--reps", type=int, default=1)
    ap.add_argument("--block-factors", default="4", help="comma-separated multiples of BLOCK_ELEMENTS to try")
    ap.add_argument("--data", default="precise,fast", help="comma-separated subset of precise,fast")
    args = ap.parse_args(argv)
    import jax

    from bayesgmm import _stats

    warnings.simplefilter("ignore")  # tol=0 runs to max_iter: ConvergenceWarning by design
    device = jax.devices()[0]
    n = args.n or (200_000 if device.platform == "cpu" else 10_000_000)
    print(f"# float32 EM per iteration, N={n:.0e}, D={D}, K={K}, full, {args.iters} iterations from one start, "
          f"tol=0; {device.platform}:{device.device_kind} x{len(jax.devices())}, jax {jax.__version__}; load {load()}")
    base_elements = _stats.BLOCK_ELEMENTS
    variants = [("apart", False, 1), ("together", True, 1)]
    variants += [(f"together, blocks x{f}", True, int(f)) for f in args.block_factors.split(",") if f]
    print(f"{'data':<8} {'variant':<22} {'block rows':>10} | {'ms/iter':>8} {'ratio':>6} | {'compile s':>9} "
          f"{'1-iter run s':>12} | {'log-likelihood':>18} | load")
    for data in args.data.split(","):
        x = make_data(n, 3.0 if data == "precise" else 1.0)
        reference = None
        for name, together, factor in variants:
            if data == "fast" and name == "apart":
                continue  # the fast form has no per-component loop
            _stats.COMPONENTS_TOGETHER = together
            _stats.BLOCK_ELEMENTS = base_elements * factor
            blocks = _stats.block_rows(n, D, "full", cpu=device.platform == "cpu", itemsize=x.dtype.itemsize)
            rows = n if blocks is None else (blocks.precise if data == "precise" else blocks.fast)
            r = time_fit(x, args.iters, args.reps)
            reference = reference or r["per_iter"]
            print(f"{data:<8} {name:<22} {rows:>10} | {r['per_iter'] * 1e3:>8.2f} "
                  f"{r['per_iter'] / reference:>5.2f}x | {r['compile']:>9.2f} {r['run1']:>12.3f} | "
                  f"{r['ll']:>18.6f} | {load()}", flush=True)
        del x
    _stats.COMPONENTS_TOGETHER, _stats.BLOCK_ELEMENTS = None, base_elements
    print("ratio: time per iteration / the first variant's on the same data; 1-iter run s: a 1-iteration fit's "
          "device time (its start E-step, one iteration and the final evaluation)")


if __name__ == "__main__":
    main()
