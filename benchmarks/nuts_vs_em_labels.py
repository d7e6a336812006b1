"""Why does NUTS's ARI trail EM's in poorly separated simulation cells? (an investigation, not a
timing benchmark).

For each data set (N = 200, K = 2, D = 2, ``make_mixture`` at separation 1.5 and 2.5) it fits EM
(defaults) and NUTS (2 chains x (300 + 300)) and prints, per data set and averaged per cell:

* the RMS error of the component means (aligned to the truth) of EM's estimate, of NUTS's
  posterior mean (the point estimate), of its highest-density draw and of its posterior median;
* the ARI of EM's labels, of NUTS's posterior-predictive labels (``predict``: label probabilities
  averaged over the draws), and of plug-in labels at NUTS's posterior mean and highest draw;
* NUTS's share of relabelled draws and its max R-hat.

    python benchmarks/nuts_vs_em_labels.py [--datasets 12]
"""

from __future__ import annotations

import argparse
import dataclasses
import warnings

import numpy as np
import pandas as pd

import bayesgmm as bg
from bayesgmm.experiments import adjusted_rand_index
from bayesgmm.labels import align_draws
from bayesgmm.params import GMMParams


def means_error(params: GMMParams, truth: GMMParams) -> float:
    point = {"weights": params.weights[None, None], "means": params.means[None, None],
             "covariances": params.covariances[None, None]}
    aligned = align_draws(point, truth, "full")[0]
    return float(np.sqrt(np.mean((aligned["means"][0, 0] - truth.means) ** 2)))


def one_data_set(separation: float, r: int) -> dict:
    data = bg.datasets.make_mixture(200, 2, 2, separation=separation, seed=100 + r)
    x, labels, truth = data.x, data.labels, data.params
    em = bg.fit_em(x, 2, seed=r)
    nuts = bg.fit_mcmc(x, 2, num_warmup=300, num_samples=300, num_chains=2, seed=r)
    flat = {k: np.asarray(v).reshape((-1,) + v.shape[2:]) for k, v in nuts.draws.items()}
    best = int(np.argmax(np.asarray(nuts.sample_stats["lp"]).reshape(-1)))
    mode = GMMParams(flat["weights"][best], flat["means"][best], flat["covariances"][best])
    median = GMMParams(*(np.median(flat[k], axis=0) for k in ("weights", "means", "covariances")))

    def plug_in(p: GMMParams):
        return dataclasses.replace(em, weights=p.weights / p.weights.sum(), means=p.means, covariances=p.covariances)

    return dict(
        separation=separation, dataset=r,
        em_err=means_error(em.params, truth), nuts_mean_err=means_error(nuts.params, truth),
        nuts_mode_err=means_error(mode, truth), nuts_median_err=means_error(median, truth),
        em_ari=adjusted_rand_index(labels, em.predict(x)), nuts_ari=adjusted_rand_index(labels, nuts.predict(x)),
        nuts_plugin_ari=adjusted_rand_index(labels, plug_in(nuts.params).predict(x)),
        nuts_mode_ari=adjusted_rand_index(labels, plug_in(mode).predict(x)),
        relabelled=nuts.info["label_switch_fraction"], max_rhat=nuts.info["max_rhat"],
    )


def main(args=None) -> pd.DataFrame:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--datasets", type=int, default=12, help="data sets per separation")
    a = p.parse_args(args)
    warnings.simplefilter("ignore")
    table = pd.DataFrame([one_data_set(s, r) for s in (1.5, 2.5) for r in range(a.datasets)])
    pd.set_option("display.width", 250)
    pd.set_option("display.max_columns", 20)
    print(table.round(3).to_string(index=False))
    print(table.drop(columns="dataset").groupby("separation").mean().round(3))
    return table


if __name__ == "__main__":
    main()
