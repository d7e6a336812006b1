"""How uncertain are EM's estimates? Bootstrap, observed information and the NUTS posterior.
=========================================================================================

EM gives a point estimate. Three ways to put error bars on it, on the Old Faithful data with
K = 2 full-covariance components:

* the **nonparametric bootstrap**: refit on data resampled with replacement, here as 200
  refits in one compiled, vmapped call (resampling = multinomial row weights);
* the **parametric bootstrap**: refit on data simulated from the fitted mixture;
* the **observed information**: invert the Hessian of the log-likelihood at the estimate
  (automatic differentiation) and carry it to weights, means and covariances (delta method);

and, for comparison, the posterior standard deviations of NUTS under mclust's weak default
prior (whose posterior, with 272 observations, is dominated by the likelihood, so its sd should
be close to the frequentist standard errors).

Printed: a table with one row per parameter (estimate and the four standard errors) and the
time of the 200 bootstrap refits. The figure shows each standard error relative to the observed
information's, per parameter and method.

Run ``python examples/em_uncertainty.py --help`` for options.
"""

from __future__ import annotations

import argparse
import pathlib
import sys
import time
import warnings

import numpy as np

# this folder's output/; sphinx-gallery runs the script without __doc__ and __file__
OUTPUT = pathlib.Path(globals().get("__file__", sys.argv[0])).resolve().parent / "output"


def parse_args(args):
    p = argparse.ArgumentParser(description=(__doc__ or " ").splitlines()[0])
    p.add_argument("--replicates", type=int, default=200, help="bootstrap refits (default: %(default)s)")
    p.add_argument("--num-samples", type=int, default=1000, help="NUTS draws per chain (default: %(default)s)")
    p.add_argument("--num-chains", type=int, default=4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=pathlib.Path, default=OUTPUT, help="output folder")
    p.add_argument("--dpi", type=int, default=150)
    return p.parse_args(args)


def label(row) -> str:
    if row.parameter == "weights":
        return f"w[{row.component}]"
    if row.parameter == "means":
        return f"mu[{row.component}].{row.feature_name}"
    return f"S[{row.component}].{row.feature_name}/{row.feature_bis_name}"


def main(args=None):
    a = parse_args(sys.argv[1:] if args is None else args)
    import jax

    jax.config.update("jax_enable_x64", True)  # an example script may choose float64 for the Hessian
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import pandas as pd

    import bayesgmm as bg
    from bayesgmm.labels import align_draws

    x = bg.datasets.load_faithful(as_frame=True)
    fit = bg.fit_em(x, 2, n_init=5, tol=1e-8, max_iter=500, seed=a.seed)
    start = time.perf_counter()
    nonpar = bg.bootstrap(fit, x, num_replicates=a.replicates, kind="nonparametric", seed=a.seed)
    first_call = time.perf_counter() - start
    par = bg.bootstrap(fit, x, num_replicates=a.replicates, kind="parametric", seed=a.seed)
    info = bg.observed_information(fit, x)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", bg.ConvergenceWarning)
        post = bg.fit_mcmc(x, 2, num_warmup=a.num_samples, num_samples=a.num_samples, num_chains=a.num_chains, seed=a.seed)
    draws = align_draws(post.draws, fit.params, "full")[0]  # the EM labelling
    flat = np.concatenate([draws[n].reshape(-1, int(np.prod(draws[n].shape[2:]))) for n in ("weights", "means", "covariances")], 1)

    table = info.table[["parameter", "component", "feature_name", "feature_bis_name", "estimate"]].copy()
    table["se_information"] = info.table["se"]
    table["se_bootstrap"] = nonpar.table["se"]
    table["se_parametric"] = par.table["se"]
    table["sd_posterior"] = flat.std(0, ddof=1)
    keep = ~((table.parameter == "covariances") & (table.feature_name > table.feature_bis_name))  # symmetric twins
    keep &= table.se_information > 0
    table = table[keep].reset_index(drop=True)
    table.insert(0, "name", [label(r) for r in table.itertuples()])
    with pd.option_context("display.width", 160, "display.float_format", "{:.4g}".format):
        print(table.drop(columns=["parameter", "component", "feature_name", "feature_bis_name"]).to_string(index=False))
    print(f"\n{a.replicates} nonparametric bootstrap refits: {first_call:.2f} s in the first call "
          f"({nonpar.info['compile_seconds']:.2f} s compiling, {nonpar.info['run_seconds'] * 1e3:.0f} ms running); "
          f"all converged: {nonpar.info['converged_fraction'] == 1.0}")

    methods = {"nonparametric bootstrap": "se_bootstrap", "parametric bootstrap": "se_parametric",
               "NUTS posterior sd": "sd_posterior"}
    fig, ax = plt.subplots(figsize=(8.5, 3.6), layout="constrained")
    pos = np.arange(len(table))
    for j, (name, col) in enumerate(methods.items()):
        ax.plot(pos + (j - 1) * 0.2, table[col] / table.se_information, "o", ms=5, label=name)
    ax.axhline(1.0, color="0.3", lw=1)
    ax.set_xticks(pos, table.name, rotation=45, ha="right", fontsize="small")
    ax.set_ylabel("relative to observed information")
    ax.set_title("Old Faithful, K = 2: standard errors of the EM estimate", fontsize="medium")
    ax.legend(frameon=False, fontsize="small", ncols=3, loc="upper center")
    ax.set_ylim(0.5, 1.6)
    a.out.mkdir(parents=True, exist_ok=True)
    path = a.out / "em_uncertainty.png"
    fig.savefig(path, dpi=a.dpi)
    plt.close(fig)
    print(f"wrote {path}")
    return {"table": table, "figures": [path], "bootstrap_seconds": first_call, "bootstrap_info": nonpar.info}


if __name__ == "__main__":
    main()
