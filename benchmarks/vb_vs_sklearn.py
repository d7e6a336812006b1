"""Wall-clock time of ``bayesgmm.fit_vb`` against scikit-learn's ``BayesianGaussianMixture``.

Both fit the same data with the same conjugate prior (``Prior.default(x, K)`` mapped one to one
onto scikit-learn's parameters), full covariances, float64, k-means initialisation, one restart,
``max_iter=100``. Both stop when the change of the total lower bound is below the same ``tol``.
Repetitions are interleaved (sklearn, vb, sklearn, vb, ...)
with seed = repetition, so drifting machine load hits both alike; medians are reported. BLAS is
limited to one thread for scikit-learn (threadpoolctl) and XLA to one CPU thread for JAX, so it
is one core against one core. JAX compile time (first call per shape) is reported separately.
``vb ms`` is the wall time of the whole ``fit_vb`` call (validation, the compiled program, the
NumPy post-processing); ``vb run ms`` is the part spent in the compiled program
(``info["run_seconds"]``). ``load1`` is the 1-minute load average when the row finished (the
machine may be shared).

Run::

    /work/venv/bin/python benchmarks/vb_vs_sklearn.py [--reps 15] [--num-draws 500]
"""

from __future__ import annotations

import argparse
import os
import sys

os.environ.setdefault("XLA_FLAGS", "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1")

import time  # noqa: E402
import warnings  # noqa: E402

import jax  # noqa: E402

jax.config.update("jax_enable_x64", True)  # a script, not library code: float64 like scikit-learn

import numpy as np  # noqa: E402
from sklearn.mixture import BayesianGaussianMixture  # noqa: E402
from threadpoolctl import threadpool_limits  # noqa: E402

import bayesgmm as bg  # noqa: E402
from bayesgmm.vb import fit_vb  # noqa: E402


def sklearn_fit(x, k, prior, seed, tol, max_iter):
    bgm = BayesianGaussianMixture(
        n_components=k,
        covariance_type="full",
        weight_concentration_prior_type="dirichlet_distribution",
        weight_concentration_prior=float(prior.weight_concentration),
        mean_prior=prior.mean,
        mean_precision_prior=prior.mean_precision,
        degrees_of_freedom_prior=prior.degrees_of_freedom,
        covariance_prior=prior.scale,
        tol=tol,
        max_iter=max_iter,
        n_init=1,
        init_params="kmeans",
        random_state=seed,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        bgm.fit(x)
    return bgm


def vb_fit(x, k, prior, seed, tol, max_iter, num_draws):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        # one k-means start, as scikit-learn's (fit_vb's default searches hundreds of short runs)
        return fit_vb(x, k, prior=prior, seed=seed, tol=tol, max_iter=max_iter, num_draws=num_draws,
                      n_init=1, init_params="kmeans")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=15)
    parser.add_argument("--num-draws", type=int, default=500)
    parser.add_argument("--tol", type=float, default=1e-3)
    parser.add_argument("--max-iter", type=int, default=100)
    args = parser.parse_args(argv)

    sim = bg.datasets.make_mixture(1000, 3, 2, separation=4.0, seed=0)
    faithful = bg.datasets.load_faithful()
    cases = [
        ("faithful K=2", faithful, 2, args.tol),
        ("sim N1000 K=3", sim.x, 3, args.tol),
        ("faithful K=2 100it", faithful, 2, 0.0),  # tol=0: exactly max_iter sweeps for both
        ("sim N1000 K=3 100it", sim.x, 3, 0.0),
    ]
    print(f"python {sys.version.split()[0]}, jax {jax.__version__}, cpu count {os.cpu_count()}, "
          f"XLA_FLAGS={os.environ.get('XLA_FLAGS')!r}")
    print(f"load average at start (1, 5, 15 min): {tuple(round(v, 2) for v in os.getloadavg())}")
    print(f"reps={args.reps} (interleaved), tol={args.tol} on the total lower bound (0 in the '100it' rows), "
          f"max_iter={args.max_iter}, num_draws={args.num_draws}")
    header = (f"{'data':<22}{'compile s':>10}{'vb ms':>9}{'vb run ms':>10}{'vb(S=1) ms':>11}{'sklearn ms':>11}"
              f"{'ratio':>7}{'vb it':>7}{'sk it':>7}{'|dELBO/N|':>11}{'load1':>7}")
    print(header)
    print("-" * len(header))
    for name, x, k, tol in cases:
        prior = bg.Prior.default(x, k)
        t0 = time.perf_counter()
        vb_fit(x, k, prior, 0, tol, args.max_iter, args.num_draws)
        vb_fit(x, k, prior, 0, tol, args.max_iter, 1)
        compile_s = time.perf_counter() - t0
        t_vb, t_run, t_vb1, t_sk, it_vb, it_sk = [], [], [], [], [], []
        for rep in range(args.reps):
            with threadpool_limits(limits=1, user_api="blas"):
                t0 = time.perf_counter()
                b = sklearn_fit(x, k, prior, rep, tol, args.max_iter)
                t_sk.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            r = vb_fit(x, k, prior, rep, tol, args.max_iter, args.num_draws)
            t_vb.append(time.perf_counter() - t0)
            t_run.append(r.info.get("run_seconds", np.nan))
            t0 = time.perf_counter()
            vb_fit(x, k, prior, rep, tol, args.max_iter, 1)
            t_vb1.append(time.perf_counter() - t0)
            it_vb.append(r.n_iter)
            it_sk.append(b.n_iter_)
        # spread of our ELBO per observation over 3 seeds (different k-means starts)
        elbo_spread = np.ptp([vb_fit(x, k, prior, s, tol, args.max_iter, 1).info["elbo"] for s in range(3)]) / x.shape[0]
        med = lambda a: 1e3 * float(np.median(a))  # noqa: E731
        print(f"{name:<22}{compile_s:>10.2f}{med(t_vb):>9.2f}{med(t_run):>10.2f}{med(t_vb1):>11.2f}{med(t_sk):>11.2f}"
              f"{med(t_vb) / med(t_sk):>7.2f}{np.median(it_vb):>7.0f}{np.median(it_sk):>7.0f}{elbo_spread:>11.2e}"
              f"{os.getloadavg()[0]:>7.2f}", flush=True)
    print(f"load average at end (1, 5, 15 min): {tuple(round(v, 2) for v in os.getloadavg())}")
    print("ratio = median vb time (with num_draws draws) / median sklearn time; < 1 means fit_vb is faster.")


if __name__ == "__main__":
    main()
