"""Expectation-maximisation for Gaussian mixtures, compiled with JAX.

Structure (after blackjax): a pure :func:`em_init` and :func:`em_step` over an immutable
:class:`EMState`; a ``lax.while_loop`` driver; restarts ``vmap``-ped so ``n_init`` runs are one
compiled call. Shapes, K, the covariance structure, ``max_iter`` and the initialisation method
are static, so a second fit on same-shaped data reuses the compiled program.

The data are standardised internally (centred; divided by each feature's standard deviation, or
by one common scale for ``spherical``), so the fit does not depend on the units; everything
reported is on the original scale.
"""

from __future__ import annotations

import functools
import time
import warnings
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from . import _stats
from .kmeans import INIT_METHODS, initial_responsibilities
from .model import log_prior
from .params import (
    ConvergenceWarning,
    DegenerateComponentWarning,
    GMMParams,
    Prior,
    check_covariance_type,
    check_data,
    check_num_components,
    log_jacobians,
    params_to_original,
    params_to_standard,
    seed_to_key,
    standardisation,
)
from .results import FitResult

# Incremented each time the EM driver is traced; tests use it to prove "compile once per shape".
_TRACE_COUNT = {"fit": 0}


class EMState(NamedTuple):
    """Loop carry of the EM driver (standardised scale).

    ``objective`` is the mean per-observation objective at ``params`` *before* the last M-step
    (scikit-learn's convention for the tolerance test); ``trace[t]`` is the total objective
    after ``t`` M-steps.
    """

    params: GMMParams
    objective: jax.Array
    n_iter: jax.Array
    converged: jax.Array
    trace: jax.Array


class EMConfig(NamedTuple):
    """Static choices of one EM program."""

    num_components: int
    covariance_type: str
    hard: bool
    use_prior: bool


def objective_terms(z, params: GMMParams, prior, config: EMConfig):
    """E-step: responsibilities and the total objective (log-likelihood [+ log prior])."""
    theta = _stats.natural_params(params, config.covariance_type)
    resp, ll = _stats.e_step(z, theta, hard=config.hard)
    total = jnp.sum(ll)
    if config.use_prior:
        total = total + log_prior(params, prior, config.covariance_type)
    return resp, total


def m_step(z, resp, prior, reg_covar, config: EMConfig, num_features: int) -> GMMParams:
    stats = _stats.suff_stats(resp, z, num_features, config.covariance_type)
    return _stats.m_step(*stats, config.covariance_type, reg_covar, prior if config.use_prior else None)


def em_init(params: GMMParams, max_iter: int) -> EMState:
    dtype = params.means.dtype
    return EMState(
        params=params,
        objective=jnp.asarray(-jnp.inf, dtype),
        n_iter=jnp.int32(0),
        converged=jnp.asarray(False),
        trace=jnp.full((max_iter + 1,), jnp.nan, dtype),
    )


def em_step(state: EMState, z, prior, tol, reg_covar, config: EMConfig) -> EMState:
    """One E-step and M-step; the tolerance test is on the change of the mean objective."""
    n, _ = z.shape
    d = state.params.means.shape[1]
    resp, total = objective_terms(z, state.params, prior, config)
    new_params = m_step(z, resp, prior, reg_covar, config, d)
    mean_obj = total / n
    converged = jnp.abs(mean_obj - state.objective) < tol
    return EMState(
        params=new_params,
        objective=mean_obj,
        n_iter=state.n_iter + 1,
        converged=converged,
        trace=state.trace.at[state.n_iter].set(total),
    )


@functools.partial(jax.jit, static_argnames=("config", "init_method", "max_iter"))
def _fit_restarts(xs, keys, user_init, prior, tol, reg_covar, *, config: EMConfig, init_method: str, max_iter: int):
    """All restarts of one EM fit as a single compiled program (vmapped over ``keys``)."""
    _TRACE_COUNT["fit"] += 1
    d = xs.shape[1]
    z = _stats.suff_features(xs, config.covariance_type)
    ml_config = config._replace(use_prior=False, hard=False)

    def run_one(key):
        resp0 = initial_responsibilities(key, xs, config.num_components, init_method)
        params0 = m_step(z, resp0, prior, reg_covar, ml_config, d)
        params0 = GMMParams(*(p if u is None else u for p, u in zip(params0, user_init)))
        state = jax.lax.while_loop(
            lambda s: (s.n_iter < max_iter) & ~s.converged,
            lambda s: em_step(s, z, prior, tol, reg_covar, config),
            em_init(params0, max_iter),
        )
        resp, final = objective_terms(z, state.params, prior, config)
        trace = state.trace.at[state.n_iter].set(final)
        log_lik = final
        if config.hard or config.use_prior:  # the marginal log-likelihood alone
            theta = _stats.natural_params(state.params, config.covariance_type)
            log_lik = jnp.sum(_stats.e_step(z, theta)[1])
        return state._replace(trace=trace), final, log_lik, jnp.sum(resp, 0)

    return jax.vmap(run_one)(keys)


# ----------------------------------------------------------------------------------------------
# Public entry point
# ----------------------------------------------------------------------------------------------
def _user_init(weights_init, means_init, precisions_init, k, d, covariance_type, shift, sd, dtype):
    """User-given starting parameters (scikit-learn's names), standardised; None where not given."""
    w = m = c = None
    if weights_init is not None:
        w = np.asarray(weights_init, dtype=np.float64)
        if w.shape != (k,) or np.any(w < 0) or not np.isclose(w.sum(), 1.0):
            raise ValueError(f"weights_init must be a non-negative vector of shape ({k},) summing to 1.")
    if means_init is not None:
        m = np.asarray(means_init, dtype=np.float64)
        if m.shape != (k, d):
            raise ValueError(f"means_init must have shape ({k}, {d}), got {m.shape}.")
    if precisions_init is not None:
        p = np.asarray(precisions_init, dtype=np.float64)
        shape = {"full": (k, d, d), "tied": (d, d), "diag": (k, d), "spherical": (k,)}[covariance_type]
        if p.shape != shape:
            raise ValueError(f"precisions_init for covariance_type={covariance_type!r} must have shape {shape}, got {p.shape}.")
        if covariance_type in ("full", "tied"):
            mats = p.reshape(-1, d, d)
            if not np.allclose(mats, np.swapaxes(mats, -1, -2)) or np.linalg.eigvalsh(mats).min() <= 0:
                raise ValueError("precisions_init must be symmetric positive definite.")
            c = np.linalg.inv(p)
        else:
            if np.any(p <= 0):
                raise ValueError("precisions_init must be positive.")
            c = 1.0 / p
    unit_cov = {"full": np.tile(np.eye(d), (k, 1, 1)), "tied": np.eye(d), "diag": np.ones((k, d)), "spherical": np.ones(k)}
    placeholder = GMMParams(  # standardised piecewise; the pieces not given stay None
        w if w is not None else np.full(k, 1.0 / k),
        m if m is not None else np.zeros((k, d)) + shift,
        c if c is not None else unit_cov[covariance_type],
    )
    std = params_to_standard(placeholder, shift, sd, covariance_type)
    return tuple(None if given is None else jnp.asarray(v, dtype) for given, v in zip((w, m, c), std))


def _degenerate(params: GMMParams, nk, reg_covar, covariance_type, dtype) -> tuple:
    """Components that hold less than one observation's worth or whose variance hit the floor."""
    w, m, c = (np.asarray(p, np.float64) for p in params)
    k, d = m.shape
    if covariance_type in ("full", "tied"):
        eig = np.linalg.eigvalsh(np.broadcast_to(c, (k, d, d)))[..., 0]
    elif covariance_type == "diag":
        eig = c.min(axis=1)
    else:
        eig = c
    floor = max(10 * reg_covar, 100 * np.finfo(dtype).eps)
    bad = (np.asarray(nk) < 1.0) | (eig <= floor)
    return tuple(int(i) for i in np.flatnonzero(bad))


def fit_em(
    x,
    num_components: int,
    *,
    covariance_type: str = "full",
    prior: Prior | None = None,
    n_init: int = 1,
    init_params: str = "kmeans",
    weights_init=None,
    means_init=None,
    precisions_init=None,
    tol: float = 1e-3,
    max_iter: int = 100,
    reg_covar: float = 1e-6,
    hard: bool = False,
    seed=0,
) -> FitResult:
    """Fit a Gaussian mixture by EM: maximum likelihood, or MAP when a ``prior`` is given.

    Parameters
    ----------
    x : array-like (N, D) or (N,)
        Data; a 1-D array is one feature. DataFrame column names become feature names.
    num_components : int
        K, the number of components.
    covariance_type : {"full", "diag", "spherical", "tied"}
    prior : Prior, optional
        Conjugate prior (e.g. ``Prior.default(x, K)``). Given: MAP-EM, maximising
        log-likelihood + log prior density of :func:`bayesgmm.model.gmm_model`; the
        Dirichlet concentration must then be >= 1. Omitted: maximum likelihood.
    n_init : int
        Restarts, run together as one vmapped program; the best final objective is kept.
    init_params : {"kmeans", "k-means++", "random", "random_from_data"}
        Starting responsibilities, with scikit-learn's meanings.
    weights_init, means_init, precisions_init : array, optional
        User-given starting parameters (original scale), overriding ``init_params`` piecewise.
    tol : float
        Convergence threshold on the change of the mean per-observation objective.
    max_iter : int
        Maximum EM iterations per restart (static: changing it recompiles).
    reg_covar : float
        Added to the diagonal of every covariance after each M-step, in units of each
        feature's variance (the data are standardised internally), so it does not depend on units.
    hard : bool
        Classification EM: hard assignments in the E-step (the classification likelihood is
        the objective).
    seed : int or jax key
        Same seed, same result, bit for bit.

    Returns
    -------
    FitResult
        ``method`` is "em", "map-em" or "hard-em".

    Raises
    ------
    ValueError
        Invalid input, or every restart ended with a singular covariance.
    """
    arr, names = check_data(x)
    n, d = arr.shape
    k = check_num_components(num_components, n)
    check_covariance_type(covariance_type)
    if init_params not in INIT_METHODS:
        raise ValueError(f"init_params must be one of {INIT_METHODS}, got {init_params!r}.")
    if not (isinstance(n_init, (int, np.integer)) and n_init >= 1):
        raise ValueError(f"n_init must be a positive integer, got {n_init!r}.")
    if not (isinstance(max_iter, (int, np.integer)) and max_iter >= 1):
        raise ValueError(f"max_iter must be a positive integer, got {max_iter!r}.")
    if not (np.isfinite(tol) and tol >= 0):
        raise ValueError(f"tol must be a non-negative number, got {tol!r}.")
    if not (np.isfinite(reg_covar) and reg_covar >= 0):
        raise ValueError(f"reg_covar must be a non-negative number, got {reg_covar!r}.")
    if prior is not None:
        if not isinstance(prior, Prior):
            raise ValueError("prior must be a bayesgmm.Prior (e.g. Prior.default(x, K)).")
        if prior.num_features != d:
            raise ValueError(f"prior is for {prior.num_features} feature(s) but x has {d}.")
        if np.any(prior.concentration(k) < 1):
            raise ValueError(
                "MAP-EM needs weight_concentration >= 1 (the Dirichlet mode is undefined below 1); "
                "use fit_vb for sparse priors that empty components."
            )

    dtype = jnp.asarray(arr[:1]).dtype  # float32 unless jax_enable_x64 and float64 input
    shift, sd = standardisation(arr.astype(np.float64), covariance_type)
    xs = jnp.asarray(((arr - shift) / sd).astype(dtype))
    prior_arrays = None
    if prior is not None:
        prior_arrays = jax.tree_util.tree_map(
            lambda a: jnp.asarray(a, dtype), prior.standardised(shift, sd).arrays(k, covariance_type, dtype=np.float64)
        )
    user_init = _user_init(weights_init, means_init, precisions_init, k, d, covariance_type, shift, sd, dtype)
    key = seed_to_key(seed)
    config = EMConfig(k, covariance_type, bool(hard), prior is not None)

    start = time.perf_counter()
    state, finals, log_liks, nks = _fit_restarts(
        xs,
        jax.random.split(key, n_init),
        user_init,
        prior_arrays,
        jnp.asarray(tol, dtype),
        jnp.asarray(reg_covar, dtype),
        config=config,
        init_method=init_params,
        max_iter=int(max_iter),
    )
    finals = np.asarray(finals, dtype=np.float64)
    elapsed = time.perf_counter() - start
    ok = np.isfinite(finals)
    if not ok.any():
        raise ValueError(
            "EM failed: a covariance became singular in every restart (ill-defined empirical "
            "covariance, e.g. duplicated points or a component on too few points). Increase "
            "reg_covar, use fewer components, or fit MAP-EM with prior=bayesgmm.Prior.default(x, K)."
        )
    best = int(np.argmax(np.where(ok, finals, -np.inf)))
    pick = lambda a: np.asarray(a[best])  # noqa: E731
    params_std = GMMParams(*(pick(p) for p in state.params))
    n_iter = int(pick(state.n_iter))
    converged = bool(pick(state.converged))
    ll_shift, prior_shift = log_jacobians(sd, n, k, covariance_type)
    trace = pick(state.trace).astype(np.float64)[: n_iter + 1] + ll_shift + (prior_shift if prior is not None else 0.0)
    params = params_to_original(params_std, shift, sd, covariance_type)

    log_lik = float(np.asarray(log_liks[best], np.float64) + ll_shift)
    degenerate = _degenerate(params_std, pick(nks), reg_covar, covariance_type, dtype)
    if degenerate:
        warnings.warn(
            f"EM component(s) {list(degenerate)} are degenerate (almost no data, or a covariance "
            "collapsed onto the regularisation floor). Use fewer components, increase reg_covar, "
            "or fit MAP-EM with prior=bayesgmm.Prior.default(x, K).",
            DegenerateComponentWarning,
            stacklevel=2,
        )
    if not converged:
        warnings.warn(
            f"EM did not converge in max_iter={max_iter} iterations (tol={tol}); increase "
            "max_iter or tol, or check the initialisation.",
            ConvergenceWarning,
            stacklevel=2,
        )
    method = "hard-em" if hard else ("map-em" if prior is not None else "em")
    objective = "classification_log_likelihood" if hard else ("log_posterior" if prior is not None else "log_likelihood")
    return FitResult(
        method=method,
        covariance_type=covariance_type,
        weights=params.weights,
        means=params.means,
        covariances=params.covariances,
        log_likelihood=log_lik,
        converged=converged,
        n_iter=n_iter,
        trace=trace,
        objective=objective,
        feature_names=names,
        num_obs=n,
        degenerate_components=degenerate,
        prior=prior,
        info={
            "seed": seed if isinstance(seed, (int, np.integer)) else None,
            "n_init": int(n_init),
            "init_params": init_params,
            "best_restart": best,
            "restart_objectives": (finals + ll_shift + (prior_shift if prior is not None else 0.0)).tolist(),
            "tol": float(tol),
            "reg_covar": float(reg_covar),
            "fit_seconds": elapsed,
            "dtype": str(dtype),
        },
    )
