"""EM and VB with and without YNNPACK's kernels on the CPU (``_stats.library_kernels``).

jaxlib 0.10's XLA:CPU hands every matrix product and reduction to YNNPACK by default. The
package turns that off for its EM and VB programs except for tied covariances (EM and VB) and
VB's full ones (:func:`bayesgmm._stats.library_kernels`). This script compiles the same program
three ways in one process: ``package`` (that rule), ``ynn`` (XLA's default, YNNPACK on) and
``no ynn`` (off), then calls them alternately, each call after a short idle, and prints the
median of the compiled program's own time (``info["run_seconds"]``) and of the whole call, and
each variant's program time as a ratio to ``ynn`` (below 1: faster than XLA's default). Calls
of one case alternate, so the slow and fast phases of this shared VM fall on every variant.

Usage::

    python benchmarks/library_kernels.py             # every case, 9 calls each
    python benchmarks/library_kernels.py --reps 5 --cases "em f32 full" "em f64 diag"
"""

from __future__ import annotations

import argparse
import collections
import os
import statistics
import time
import warnings

import jax

jax.config.update("jax_enable_x64", True)  # the benchmark needs float64 too; the library never does this

import numpy as np  # noqa: E402
from em_vs_sklearn import bayesgmm_fit, initial_params, load  # noqa: E402
from threadpoolctl import threadpool_limits  # noqa: E402

import bayesgmm as bg  # noqa: E402
from bayesgmm import _compile, _stats  # noqa: E402

PACKAGE_RULE = _stats.library_kernels
VARIANTS = {
    "package": PACKAGE_RULE,
    "ynn": lambda covariance_type, engine="em": {},
    "no ynn": lambda covariance_type, engine="em": {_stats.YNN_FUSION_OPTION: ""},
}


def clusters(n, d, k, dtype, seed=1):
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 3, size=(k, d))
    return (centres[rng.integers(0, k, n)] + rng.normal(size=(n, d))).astype(dtype)


def em_fixed(n, d, k, dtype, covariance_type, iters=8):
    """``iters`` EM iterations from a common start (``em_per_fit.py``'s fit), or for tied and
    spherical covariances (no common start given) from one k-means++ start."""
    x = clusters(n, d, k, dtype)
    if covariance_type in ("full", "diag"):
        init = initial_params(x, k, covariance_type)
        return lambda: bayesgmm_fit(x, k, covariance_type, init, iters)

    def fit():
        with jax.enable_x64(np.dtype(dtype) == np.float64):
            return bg.fit_em(x, k, covariance_type=covariance_type, n_init=1, max_iter=iters, tol=0.0, seed=0)
    return fit


def vb_fixed(n, d, k, dtype, covariance_type, iters=20):
    x = clusters(n, d, k, dtype)

    def fit():
        with jax.enable_x64(np.dtype(dtype) == np.float64):
            return bg.fit_vb(x, k, covariance_type=covariance_type, n_init=1, max_iter=iters, tol=0.0, seed=0)
    return fit


def cases():
    faithful = np.asarray(bg.datasets.load_faithful())
    out = {f"em {p} {ct}": em_fixed(100_000, 16, 16, f"float{p[1:]}", ct)
           for p in ("f64", "f32") for ct in ("full", "diag", "spherical", "tied")}
    out["em f64 full N=1e6 D=2 K=3"] = em_fixed(1_000_000, 2, 3, "float64", "full")
    out["em Old Faithful default"] = lambda: bg.fit_em(faithful, 2, seed=0)
    out.update({f"vb {p} {ct}": vb_fixed(100_000, 16, 16, f"float{p[1:]}", ct) for p in ("f64", "f32") for ct in ("full", "diag")})
    return out


def programs():
    return [p for p in (ref() for ref in list(_compile._PROGRAMS)) if p is not None]


def compare(fit, reps: int, settle: float):
    """Median program and call seconds of each variant, the programs compiled once each."""
    executables = {}
    for name, rule in VARIANTS.items():
        _stats.library_kernels = rule
        for program in programs():
            program._cache = collections.OrderedDict()  # compiled afresh under this rule
        fit()
        executables[name] = {program: program._cache for program in programs()}
    _stats.library_kernels = PACKAGE_RULE
    run, call = collections.defaultdict(list), collections.defaultdict(list)
    for _ in range(reps):
        for name in VARIANTS:
            for program in programs():
                program._cache = executables[name].get(program, collections.OrderedDict())
            time.sleep(settle)
            start = time.perf_counter()
            result = fit()
            call[name].append(time.perf_counter() - start)
            run[name].append(result.info["run_seconds"])
    return ({name: statistics.median(v) for name, v in run.items()},
            {name: statistics.median(v) for name, v in call.items()})


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--reps", type=int, default=9)
    ap.add_argument("--settle", type=float, default=0.25, help="idle seconds before each call")
    ap.add_argument("--cases", nargs="*", default=None)
    args = ap.parse_args(argv)
    every = cases()
    chosen = args.cases or list(every)
    print(f"# {os.cpu_count()} cores; BLAS threads 1; {args.reps} alternated calls per variant; load at start {load()}")
    print(f"{'case':28s} " + "  ".join(f"{name:>22s}" for name in VARIANTS) + "   load")
    print(f"{'':28s} " + "  ".join(f"{'program ms (ratio) call':>22s}" for _ in VARIANTS))
    with warnings.catch_warnings(), threadpool_limits(1):
        warnings.simplefilter("ignore")
        for case in chosen:
            run, call = compare(every[case], args.reps, args.settle)
            cells = [f"{run[n] * 1e3:7.1f} ({run[n] / run['ynn']:4.2f}) {call[n] * 1e3:6.1f}" for n in VARIANTS]
            print(f"{case:28s} " + "  ".join(f"{c:>22s}" for c in cells) + f"   {load()}", flush=True)
    print("\nratio = the variant's program time / with YNNPACK (XLA's default); 'package' is the rule in "
          "bayesgmm._stats.library_kernels. Run with BAYESGMM_COMPILE_CACHE=0 to compile every variant here.")


if __name__ == "__main__":
    main()
