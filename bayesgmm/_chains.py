"""What the two Markov chain samplers, NUTS (:mod:`bayesgmm.mcmc`) and Gibbs
(:mod:`bayesgmm.gibbs`), do with their chains outside the compiled program.

* per-chain starting values given by the user (:func:`chain_starts`);
* draws back to the original scale, relabelled to the MAP pivot, with the posterior-mean point
  estimate (:func:`finish_draws`);
* convergence diagnostics and their warnings (:func:`chain_diagnostics`, :func:`warn_if_unconverged`).

The samplers never import each other; everything they share after sampling lives here. Private
to the package; its names may change without notice.
"""

from __future__ import annotations

import warnings
from typing import NamedTuple

import numpy as np

from . import _numerics
from ._numpyro_common import standard_init
from .labels import align_draws
from .params import ConvergenceWarning, GMMParams, log_jacobians, params_to_original

__all__ = ["ESS_PER_CHAIN", "RHAT_MAX", "FinishedDraws", "chain_diagnostics", "chain_starts", "finish_draws",
           "training_log_likelihood", "warn_if_unconverged"]

#: Thresholds of the convergence warnings: max R-hat and min bulk ESS per chain.
RHAT_MAX = 1.01
ESS_PER_CHAIN = 100


def chain_starts(init, k: int, d: int, num_chains: int, covariance_type: str, shift, sd, dtype) -> GMMParams:
    """Per-chain starting parameters (standardised, leading chain axis) from one ``GMMParams`` on
    the original scale (every chain starts there) or a sequence of ``num_chains`` of them.

    Raises
    ------
    ValueError
        Not a GMMParams nor a sequence of ``num_chains`` of them, or invalid parameters.
    """
    if isinstance(init, GMMParams):
        inits = [init] * num_chains
    else:
        try:
            inits = list(init)
        except TypeError:
            inits = []
        if len(inits) != num_chains or not all(isinstance(p, GMMParams) for p in inits):
            raise ValueError(
                f"init must be 'map', a GMMParams or a sequence of num_chains={num_chains} GMMParams "
                f"(one start per chain), got {type(init).__name__}."
            )
    std = [standard_init(p, k, d, covariance_type, shift, sd) for p in inits]
    return GMMParams(*(np.stack(a).astype(dtype) for a in zip(*std)))


class FinishedDraws(NamedTuple):
    """A sampler's output on the original scale (NumPy float64).

    Attributes
    ----------
    pivot : GMMParams
        The MAP start the draws are aligned to.
    raw_draws, draws : dict
        ``weights``/``means``/``covariances`` with leading axes (chains, draws), before and after
        relabelling.
    point : GMMParams
        Posterior mean of the aligned draws.
    log_posterior : np.ndarray (chains, draws)
        ``log p(x, theta)`` of every draw, original units.
    label_switch_fraction : float
        Draws whose best permutation is not the identity.
    """

    pivot: GMMParams
    raw_draws: dict
    draws: dict
    point: GMMParams
    log_posterior: np.ndarray
    label_switch_fraction: float


def finish_draws(pivot_std, draws_std, log_posterior_std, shift, sd, num_obs: int, covariance_type: str,
                 align: bool) -> FinishedDraws:
    """Map a sampler's standardised output to the original scale and undo label switching.

    ``align`` relabels every draw to the pivot (:func:`bayesgmm.labels.align_draws`); with
    False (or K = 1) the aligned draws are the raw ones.
    """
    pivot = params_to_original(GMMParams(*(np.asarray(a) for a in pivot_std)), shift, sd, covariance_type)
    raw = params_to_original(GMMParams(*(np.asarray(a) for a in draws_std)), shift, sd, covariance_type)
    raw_draws = {"weights": raw.weights, "means": raw.means, "covariances": raw.covariances}
    k = raw.means.shape[-2]
    ll_shift, prior_shift = log_jacobians(sd, num_obs, k, covariance_type)
    lp = np.asarray(log_posterior_std, np.float64) + ll_shift + prior_shift
    if align and k > 1:
        draws, perms = align_draws(raw_draws, pivot, covariance_type)
        switched = float(np.mean(np.any(perms != np.arange(k), axis=-1)))
    else:
        draws, switched = dict(raw_draws), 0.0
    point = GMMParams(*(np.mean(draws[name], axis=(0, 1)) for name in ("weights", "means", "covariances")))
    return FinishedDraws(pivot, raw_draws, draws, point, lp, switched)


def chain_diagnostics(draws: dict) -> tuple[float, float]:
    """``(min bulk ESS, max rank-normalised R-hat)`` over every scalar of the (aligned) draws.

    NumPy implementations that equal ArviZ's (:func:`bayesgmm.diagnostics.ess_bulk`,
    :func:`~bayesgmm.diagnostics.rhat`; importing ArviZ would add ~1 s to the first fit of a
    process). With one chain, R-hat compares its two halves. Constant scalars (the weight of a
    one-component mixture) are skipped; NaN when nothing is left.
    """
    from .diagnostics import ess_bulk, rhat

    ess = np.concatenate([ess_bulk(v) for v in draws.values()])
    rh = np.concatenate([rhat(v) for v in draws.values()])
    ess_min = float(np.nanmin(ess)) if np.isfinite(ess).any() else float("nan")
    rhat_max = float(np.nanmax(rh)) if np.isfinite(rh).any() else float("nan")
    return ess_min, rhat_max


def warn_if_unconverged(sampler: str, rhat_max: float, ess_min: float, num_chains: int, advice: str) -> bool:
    """Warn (``ConvergenceWarning``) when max R-hat >= :data:`RHAT_MAX` or the min bulk ESS is
    below :data:`ESS_PER_CHAIN` per chain; return whether R-hat says converged."""
    converged = bool(rhat_max < RHAT_MAX) if np.isfinite(rhat_max) else False
    if not converged or not ess_min >= ESS_PER_CHAIN * num_chains:
        warnings.warn(
            f"{sampler} chains may not have converged: max R-hat {rhat_max:.4f} (want < {RHAT_MAX}), "
            f"min bulk ESS {ess_min:.0f} (want >= {ESS_PER_CHAIN * num_chains}). {advice}",
            ConvergenceWarning,
            stacklevel=3,
        )
    return converged


def training_log_likelihood(arr, params: GMMParams, covariance_type: str) -> float:
    """The float64 log-likelihood of the data at ``params`` (what a sampler's result reports)."""
    return _numerics.totals(np.asarray(arr, np.float64), *params, covariance_type).log_likelihood
