"""Simulation-based calibration of NUTS and closed-form VB on a two-component mixture.
===================================================================================

Simulation-based calibration (SBC; Talts et al. 2018, arXiv:1804.06788) checks an inference
engine against the model it claims to invert: draw parameters from the prior, simulate a data
set from the model at them, fit it, and rank label-invariant test quantities of the true
parameters among L posterior draws. For an exact posterior the ranks are uniform on 0..L, so a
rank histogram with bars outside the band, or an ECDF curve leaving its band, is a
miscalibrated engine.

Here (defaults) K = 2 components in D = 2 dimensions with full covariances, N = 100 observations
per data set, 200 replications, L = 99 draws per fit, under the conjugate prior

    Prior(weight_concentration=5, mean=0, mean_precision=0.2, degrees_of_freedom=D + 4, scale=(D + 3) I)

(no near-empty components; E[Sigma_k] = (D + 3) I / 3, 5/3 I here; component means about 2.2 component standard
deviations apart, so the components overlap moderately). Two engines fit every data set:

- NUTS (``fit_mcmc``; 4 chains of 500 warmup and 500 kept draws, thinned to L): asymptotically
  exact, so its ranks should be uniform;
- closed-form mean-field VB (``fit_vb``): for K >= 2 its factorised q(z) q(theta) is known to
  understate the posterior spread, which SBC shows as a U-shaped histogram (the truth falls
  in the tails of the draws too often) for the component means and weights.

Printed: the chi-square and ECDF (Säilynoja et al. 2022) uniformity p-values per test quantity
and engine, with the time taken and the engines' warnings. The figure (``sbc_ranks.png``) has,
per engine, a row of rank histograms (with the 95% band of each bar's count under uniformity)
and a row of ECDF differences (with the 95% simultaneous band). At the default sizes (about 2
minutes on two CPU cores, float64) NUTS's smallest p-value is 0.02 (chi-square of
``sorted_means[1]``; its ECDF test gives 0.74), unremarkable among 16 (the 1% line for the
smallest of 16 is 0.01 / 16), while VB's p-values for the sorted means and the smaller weight
are all below 0.004 (ECDF: 0.0001, the smallest the test's 10,000 simulations give).

Run ``python examples/sbc_calibration.py --help`` for options.
"""

from __future__ import annotations

import argparse
import pathlib
import sys
import time
import warnings

import numpy as np

ENGINES = {"mcmc": "NUTS", "vb": "VB"}

# this folder's output/; sphinx-gallery runs the script without __doc__ and __file__
OUTPUT = pathlib.Path(globals().get("__file__", sys.argv[0])).resolve().parent / "output"


def make_prior(num_features: int):
    """The prior of the simulations (see the module docstring)."""
    import bayesgmm as bg

    d = num_features
    return bg.Prior(weight_concentration=5.0, mean=np.zeros(d), mean_precision=0.2, degrees_of_freedom=d + 4.0,
                    scale=(d + 3.0) * np.eye(d))


def parse_args(args):
    p = argparse.ArgumentParser(description=(__doc__ or " ").splitlines()[0])
    p.add_argument("--num-components", type=int, default=2, help="K")
    p.add_argument("--num-features", type=int, default=2, help="D")
    p.add_argument("--num-obs", type=int, default=100, help="observations per simulated data set (N)")
    p.add_argument("--replications", type=int, default=200, help="simulated data sets (R)")
    p.add_argument("--num-ranks", type=int, default=99, help="posterior draws kept per fit (L)")
    p.add_argument("--methods", nargs="+", default=["mcmc", "vb"], choices=sorted(ENGINES), help="engines to calibrate")
    p.add_argument("--mcmc-warmup", type=int, default=500)
    p.add_argument("--mcmc-samples", type=int, default=500, help="kept draws per chain")
    p.add_argument("--mcmc-chains", type=int, default=4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--progress-bar", action="store_true")
    p.add_argument("--dpi", type=int, default=100, help="resolution of the PNG figure")
    p.add_argument("--out", type=pathlib.Path, default=OUTPUT, help="output folder")
    return p.parse_args(args)


def main(args=()):
    """Run the example; returns a dict with the SBC results, the p-values and the figure path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import pandas as pd

    from bayesgmm import plotting
    from bayesgmm.calibration import sbc

    a = parse_args(list(args))
    a.out.mkdir(parents=True, exist_ok=True)
    prior = make_prior(a.num_features)
    engine_kwargs = {
        "mcmc": {"num_warmup": a.mcmc_warmup, "num_samples": a.mcmc_samples, "num_chains": a.mcmc_chains},
        "vb": {},
    }
    print(
        f"SBC: K = {a.num_components}, D = {a.num_features}, N = {a.num_obs}, full covariances, "
        f"{a.replications} replications, L = {a.num_ranks} posterior draws per fit"
    )
    results, seconds, warned = {}, {}, {}
    for method in a.methods:
        start = time.perf_counter()
        with warnings.catch_warnings(record=True) as caught:  # the summary warnings of sbc, printed below
            warnings.simplefilter("always")
            res = sbc(a.num_components, a.num_obs, prior=prior, method=method, covariance_type="full",
                      num_replications=a.replications, num_ranks=a.num_ranks, seed=a.seed,
                      engine_kwargs=engine_kwargs[method], progress_bar=a.progress_bar)
        seconds[method] = time.perf_counter() - start
        warned[method] = [str(w.message) for w in caught]
        results[ENGINES[method]] = res

    table = pd.concat({name: res.p_values for name, res in results.items()}, axis=1)
    with pd.option_context("display.float_format", "{:.4f}".format, "display.width", 120):
        print("\nUniformity p-values (chi-square on the rank histogram; ECDF test of Säilynoja et al. 2022):")
        print(table.to_string())
    q = len(table)
    print(f"(a calibrated engine's smallest of these {2 * q} p-values per engine is below 0.01 / {2 * q} "
          "with probability about 1%)")
    for method in a.methods:
        res = results[ENGINES[method]]
        reps = res.replications
        line = f"{ENGINES[method]}: {seconds[method]:.0f} s, {int((reps['num_warnings'] > 0).sum())} replications with engine warnings"
        if "num_divergences" in reps:
            line += f", {int(reps['num_divergences'].sum())} divergent transitions in total"
        print(line)
        for msg in warned[method]:
            print(f"  warning: {msg[:200]}")

    names = list(results)
    quantities = list(next(iter(results.values())).quantities)
    nq, ne = len(quantities), len(names)
    fig, axes = plt.subplots(2 * ne, nq, figsize=(2.15 * nq, 2.05 * 2 * ne + 0.6), layout="constrained", squeeze=False)
    plotting.plot_sbc_ranks(results, "hist", axes=axes[:ne], legend=False)
    plotting.plot_sbc_ranks(results, "ecdf", axes=axes[ne:], legend=False)
    handles, labels = [], []
    for ax in (axes[0, 0], axes[ne, 0]):
        h, lab = ax.get_legend_handles_labels()
        handles, labels = handles + h, labels + lab
    fig.legend(handles, labels, loc="outside lower center", ncols=len(handles), frameon=False, fontsize="small")
    fig.suptitle(
        f"SBC ranks, K = {a.num_components}, D = {a.num_features}, N = {a.num_obs}: {a.replications} replications, "
        f"L = {a.num_ranks} draws (bands: 95%, histogram per bar, ECDF simultaneous)",
        fontsize="medium",
    )
    path = a.out / "sbc_ranks.png"
    fig.savefig(path, dpi=a.dpi)
    plt.close(fig)
    print(f"figure: {path}")
    return {"results": results, "p_values": table, "seconds": seconds, "figures": [path]}


if __name__ == "__main__":
    import jax

    jax.config.update("jax_enable_x64", True)  # a script, not library code: float64 throughout
    main(sys.argv[1:])
