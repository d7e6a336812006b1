"""Compile once per structure: fits on new N and new ``max_iter`` after a first fit, one process.

For EM and VB: a first fit on N=999 rows (compilation included), then six fits on N in
1100-2000 with ``max_iter`` in 37-250 (default options otherwise, K=3, D=2, full); for the Gibbs
sampler the same sizes with ``num_warmup`` in 250-500 and ``num_samples`` in 600-1000 (its
lengths are traced, the draws filling a buffer of ``num_samples``' power-of-two bucket). Prints
each time, the number of XLA compilations, and the ratio (six fits) / (first fit) (target <= 0.5).

For NUTS and full-batch SVI (default settings, K=2, full): a first fit on Old Faithful's 272 rows,
then one on its first 250 rows; the ratio second / first (target <= 0.35 for NUTS); then fits of
other lengths on the 272 rows (NUTS ``num_samples=600`` and ``num_warmup=500``, SVI
``num_steps=20000`` and ``num_draws=300``: traced, as EM's ``max_iter``) and NUTS with ``target_accept_prob=0.95`` (traced
too), with their times and compilations.

``kmeans`` on N=999, then 1300 and 2000 (``max_iter=50``): its rows are padded to their bucket too.

Starting values (EM and VB, after their default fits): ``n_init`` of 1, 3 and 10 and given
starting values (EM: means only, and all three pieces) on N=1500; each line gives the time and
the number of compilations (0: the default fit's program was reused). The samplers
pad the rows to a bucket and mask the padding out of the model, so the second fit reuses the
first one's program.

Bootstrap (:func:`bayesgmm.bootstrap`, nonparametric, of a default EM fit on N=999): a first
call of 200 replicates, then 100, 150 and 30 replicates, and 200 on N=1300 (its own fit):
replicates run in batches of 64 on such small data (elsewhere a power of two up to 64) on rows
padded to their bucket, so none compiles.
A simulation study (:func:`bayesgmm.simulation_study`, EM and VB, 3 data sets per N, EM's
bootstrap intervals): first over N=300, then over N in 330-400 (the same row bucket).

Usage: ``python benchmarks/compile_once.py`` (float64; BLAS threads pinned to 1).
"""

from __future__ import annotations

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")

import time  # noqa: E402
import warnings  # noqa: E402

import jax  # noqa: E402

jax.config.update("jax_enable_x64", True)

import jax.monitoring  # noqa: E402
import numpy as np  # noqa: E402

import bayesgmm as bg  # noqa: E402

bg.set_compilation_cache(None)  # every program compiled in this process, none loaded from disk

COMPILES = [0]
jax.monitoring.register_event_duration_secs_listener(
    lambda name, duration, **kw: COMPILES.__setitem__(0, COMPILES[0] + name.endswith("backend_compile_duration")))

SIZES = [1100, 1300, 1500, 1700, 1850, 2000]
MAX_ITERS = [37, 60, 100, 150, 200, 250]
GIBBS_LENGTHS = [(500, 600), (250, 1000), (400, 700), (300, 900), (450, 800), (350, 1000)]
LENGTHS = {"fit_mcmc": [{"num_samples": 600}, {"num_warmup": 500}, {"target_accept_prob": 0.95}],
           "fit_svi": [{"num_steps": 20000}, {"num_draws": 300}]}


def data(n: int, seed: int) -> np.ndarray:
    return bg.datasets.make_mixture(n, 3, 2, seed=seed).x


def timed(fit, x, **kw):
    return timed_k(fit, x, 3, **kw)


def main() -> None:
    print(f"load average {os.getloadavg()[0]:.2f}; K=3, D=2, full, float64")
    for name, fit in (("fit_em", bg.fit_em), ("fit_vb", bg.fit_vb), ("fit_gibbs", bg.fit_gibbs)):
        first, first_compiles = timed(fit, data(999, 0))
        options = ([{"max_iter": m} for m in MAX_ITERS] if fit is not bg.fit_gibbs
                   else [{"num_warmup": w, "num_samples": s} for w, s in GIBBS_LENGTHS])
        rest = [timed(fit, data(n, i + 1), **kw) for i, (n, kw) in enumerate(zip(SIZES, options))]
        total = sum(t for t, _ in rest)
        varied = "max_iter 37-250" if fit is not bg.fit_gibbs else "num_warmup 250-500, num_samples 600-1000"
        print(f"{name}: first fit (N=999) {first:.2f} s, {first_compiles} compilations; six fits (N 1100-2000, "
              f"{varied}) {total:.2f} s, {sum(c for _, c in rest)} compilations "
              f"[{', '.join(f'{t:.2f}' for t, _ in rest)}]; ratio {total / first:.2f}")

    # starting values: n_init up to the default's 16 lanes and given starts reuse the first fit's program
    first_fit = bg.fit_em(data(999, 0), 3, seed=0)
    p = first_fit.params
    variants = {
        "n_init=1": {"n_init": 1}, "n_init=3": {"n_init": 3}, "n_init=10": {"n_init": 10},
        "means_init": {"means_init": p.means},
        "all three given": {"weights_init": p.weights, "means_init": p.means,
                            "precisions_init": np.linalg.inv(p.covariances)},
    }
    for fit_name, fit in (("fit_em", bg.fit_em), ("fit_vb", bg.fit_vb)):
        cells = []
        for label, kw in variants.items():
            if fit is bg.fit_vb and label in ("means_init", "all three given"):
                continue  # VB's starting values are responsibilities (resp_init)
            seconds, compiles = timed(fit, data(1500, 7), **kw)
            cells.append(f"{label}: {seconds:.2f} s, {compiles} compilations")
        print(f"{fit_name} (N=1500) after its default fit: " + "; ".join(cells))

    bootstrap_lines = []
    for label, n, replicates in (("first, 200 replicates (N=999)", 999, 200), ("100 replicates", 999, 100),
                                 ("150 replicates", 999, 150), ("30 replicates", 999, 30),
                                 ("200 replicates on N=1300", 1300, 200)):
        x = data(n, 0)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            fitted = bg.fit_em(x, 3, seed=0)
        before, start = COMPILES[0], time.perf_counter()
        bg.bootstrap(fitted, x, num_replicates=replicates, seed=0)
        bootstrap_lines.append(f"{label} {time.perf_counter() - start:.2f} s, {COMPILES[0] - before} compilations")
    print("bootstrap: " + "; ".join(bootstrap_lines))
    study_cells = []
    for sizes in ((300,), (330, 360, 400)):
        before, start = COMPILES[0], time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            bg.simulation_study(3, num_obs=sizes, methods=("em", "vb"), progress_bar=False, seed=0)
        study_cells.append(f"N={'/'.join(map(str, sizes))} {time.perf_counter() - start:.2f} s, "
                           f"{COMPILES[0] - before} compilations")
    print("simulation_study (em, vb; 3 data sets per N): " + "; ".join(study_cells))
    kmeans_cells = []
    for label, n, kw in (("first (N=999)", 999, {}), ("N=1300", 1300, {}), ("N=2000, max_iter=50", 2000, {"max_iter": 50})):
        seconds, compiles = timed(bg.kmeans, data(n, 3), **kw)
        kmeans_cells.append(f"{label} {seconds:.2f} s, {compiles} compilations")
    print("kmeans (K=3): " + "; ".join(kmeans_cells))

    faithful = bg.datasets.load_faithful()
    for name, fit in (("fit_mcmc", bg.fit_mcmc), ("fit_svi", bg.fit_svi)):
        first, first_compiles = timed_k(fit, faithful, 2)
        second, second_compiles = timed_k(fit, faithful[:250], 2)
        lengths = []
        for options in LENGTHS[name]:
            seconds, compiles = timed_k(fit, faithful, 2, **options)
            (option, value), = options.items()
            lengths.append(f"{option}={value} {seconds:.2f} s, {compiles} compilations")
        print(f"{name}: first fit (Old Faithful, N=272) {first:.2f} s, {first_compiles} compilations; a fit on "
              f"N=250 {second:.2f} s, {second_compiles} compilations; ratio {second / first:.2f}; "
              f"{'; '.join(lengths)}  (load {os.getloadavg()[0]:.2f})")


def timed_k(fit, x, k, **kw):
    before = COMPILES[0]
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fit(x, k, seed=0, **kw)
    return time.perf_counter() - start, COMPILES[0] - before


if __name__ == "__main__":
    main()
