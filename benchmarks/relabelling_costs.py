"""How much do a sampler's per-component summaries depend on the relabelling cost? (an
investigation, not a timing benchmark; docs/workflow.md quotes it).

For Gibbs (300 + 500 draws) and NUTS (300 + 300), four chains each, on two overlapping 2-D
clusters (150 rows, K = 2), the galaxies (K = 3 and K = 4) and Old Faithful (K = 2), it
prints the posterior variance, summed over components, of the weights and of the means (in
units of each feature's sd): in the raw draws, aligned to the fit's pivot (the MAP start) with
``cost="kl"`` (the samplers' default where every component is filled) and with
``cost="joint_kl"``, and aligned with ``"kl"`` to a pivot re-estimated from the aligned draws
(10 rounds). Lower is a more consistent labelling; no cost is lowest everywhere.

    python benchmarks/relabelling_costs.py
"""

from __future__ import annotations

import warnings

import jax
import numpy as np

jax.config.update("jax_enable_x64", True)

import bayesgmm as bg  # noqa: E402
from bayesgmm import _chains  # noqa: E402 -- to see the pivot the sampler aligned to (not part of a result)
from bayesgmm.labels import align_draws  # noqa: E402
from bayesgmm.params import GMMParams  # noqa: E402

_seen = {}


def _recording(draws, pivot, covariance_type, **kwargs):
    _seen.update(draws=draws, pivot=pivot)
    return align_draws(draws, pivot, covariance_type, **kwargs)


def spread(draws: dict, sd: np.ndarray) -> tuple[float, float]:
    """Summed posterior variance of the weights and of the means (per-feature sd units)."""
    k = draws["weights"].shape[-1]
    w = draws["weights"].reshape(-1, k)
    m = draws["means"].reshape(-1, k, sd.size) / sd
    return float(w.var(0).sum()), float(m.var(0).sum())


def main() -> None:
    _chains.align_draws = _recording
    rng = np.random.default_rng(2)
    in_second = rng.random(150) < 0.4
    overlap = rng.normal(size=(150, 2)) + np.where(in_second[:, None], [1.2, 0.6], [0.0, 0.0])
    galaxies = np.asarray(bg.datasets.load_galaxies(), float).reshape(-1, 1)
    sets = {"overlap K=2": (overlap, 2), "galaxies K=3": (galaxies, 3), "galaxies K=4": (galaxies, 4),
            "faithful K=2": (np.asarray(bg.datasets.load_faithful(), float), 2)}
    fits = {"Gibbs": (bg.fit_gibbs, {"num_warmup": 300, "num_samples": 500}),
            "NUTS": (bg.fit_mcmc, {"num_warmup": 300, "num_samples": 300})}
    print(f"{'data':14s} {'engine':6s} {'R-hat':>6s}  {'raw':>15s} {'kl':>15s} {'joint_kl':>15s} {'kl, re-pivoted':>15s}")
    print(f"{'':29s}" + "  weights  means" * 4)
    for name, (x, k) in sets.items():
        sd = x.std(0)
        for engine, (fit, kwargs) in fits.items():
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # the overlapping sets' chains are not converged: that is the point
                result = fit(x, k, seed=5, **kwargs)
            raw, pivot = _seen["draws"], _seen["pivot"]
            columns = [spread(raw, sd)]
            for cost in ("kl", "joint_kl"):
                columns.append(spread(align_draws(raw, pivot, result.covariance_type, cost=cost, num_obs=len(x))[0], sd))
            for _ in range(10):
                aligned = align_draws(raw, pivot, result.covariance_type)[0]
                pivot = GMMParams(*(np.mean(aligned[n], axis=(0, 1)) for n in ("weights", "means", "covariances")))
            columns.append(spread(aligned, sd))
            cells = "".join(f" {w:8.4f} {m:6.3f}" for w, m in columns)
            print(f"{name:14s} {engine:6s} {result.info['max_rhat']:6.3f} {cells}", flush=True)


if __name__ == "__main__":
    main()
