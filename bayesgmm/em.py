"""Expectation-maximisation for Gaussian mixtures, compiled with JAX.

Structure (after blackjax, in :mod:`bayesgmm._em_core`): a pure :func:`em_init` and
:func:`em_step` over an immutable :class:`EMState` and the fitted :class:`EMProblem`; a
``lax.while_loop`` driver (:func:`run_em`); restarts ``vmap``-ped so ``n_init`` runs are one
compiled call (:data:`PROGRAM`, compiled ahead of time so that compile and run times are
reported apart). This module is the host side: validation, units, packaging the result.
Shapes, K, the covariance structure, ``max_iter`` and the initialisation method are static, so
a second fit on same-shaped data reuses the compiled program.

The same program serves the rest of the library: row weights (``sample_weight``: frequency
weights, bootstrap counts, padding rows of a sharded fit) and a traced mask of active
components (one program for a whole grid of K in model selection), and a batch axis over data
sets (parametric bootstrap).

The data are standardised internally (centred; divided by each feature's standard deviation, or
by one common scale for ``spherical``), so the fit does not depend on the units; everything
reported is on the original scale.
"""

from __future__ import annotations

import warnings
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from . import _sharding
from ._em_core import _TRACE_COUNT, PROGRAM, EMConfig, EMOutput  # noqa: F401 (the program and its trace counter, for callers and tests)
from ._stats import degenerate_components, degenerate_message
from .kmeans import INIT_METHODS
from .params import (
    ConvergenceWarning,
    DegenerateComponentWarning,
    GMMParams,
    Prior,
    check_covariance_type,
    check_data,
    check_nonnegative,
    check_num_components,
    check_positive_integers,
    check_prior_for_map,
    check_sample_weight,
    log_jacobians,
    params_to_original,
    params_to_standard,
    seed_to_key,
    standardisation,
)
from .results import FitResult

# ----------------------------------------------------------------------------------------------
# Public entry point
# ----------------------------------------------------------------------------------------------
def _user_init(weights_init, means_init, precisions_init, k, d, covariance_type, shift, sd, dtype):
    """User-given starting parameters (scikit-learn's names), standardised; None where not given."""
    w = m = c = None
    for name, value in (("weights_init", weights_init), ("means_init", means_init), ("precisions_init", precisions_init)):
        if value is not None and not np.all(np.isfinite(np.asarray(value, dtype=np.float64))):
            raise ValueError(f"{name} contains NaN or infinite values; starting values must be finite.")
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


class Prepared(NamedTuple):
    """Validated, standardised inputs of an EM fit (the host-side half of :func:`fit_em`)."""

    arr: np.ndarray
    feature_names: tuple
    num_components: int
    covariance_type: str
    prior: Prior | None
    shift: np.ndarray
    sd: np.ndarray
    xs: np.ndarray  # standardised data in the compute dtype
    prior_arrays: object
    dtype: object

    @property
    def num_obs(self) -> int:
        return self.arr.shape[0]


def _check_options(init_params, n_init, max_iter, tol, reg_covar):
    if init_params not in INIT_METHODS:
        raise ValueError(f"init_params must be one of {INIT_METHODS}, got {init_params!r}.")
    check_positive_integers(n_init=n_init, max_iter=max_iter)
    check_nonnegative(tol=tol, reg_covar=reg_covar)


def prepare(x, num_components, covariance_type: str, prior: Prior | None, *, max_components=None, sample_weight=None) -> Prepared:
    """Validate the data and prior and standardise both (see the module docstring).

    ``max_components`` (model-selection grids) is the K the arrays are built for.
    ``sample_weight`` (validated) weights the standardising moments.
    """
    arr, names = check_data(x)
    n, d = arr.shape
    k = check_num_components(num_components, n)
    check_covariance_type(covariance_type)
    k_arrays = k if max_components is None else max_components
    check_prior_for_map(prior, d, k_arrays)
    dtype = jnp.asarray(arr[:1]).dtype  # float32 unless jax_enable_x64 and float64 input
    shift, sd = standardisation(arr.astype(np.float64), covariance_type, sample_weight)
    if np.any(sd == 0):
        raise ValueError("x has a constant column among the rows of positive sample_weight; drop it before fitting.")
    xs = ((arr - shift) / sd).astype(dtype)
    prior_arrays = None
    if prior is not None:
        prior_arrays = prior.standardised(shift, sd).arrays(k_arrays, covariance_type, dtype=np.dtype(dtype))
    return Prepared(arr, names, k, covariance_type, prior, shift, sd, xs, prior_arrays, dtype)


def package(
    prep: Prepared,
    out: EMOutput,
    index,
    *,
    hard: bool,
    reg_covar: float,
    num_components: int | None = None,
    sample_weight=None,
    info: dict,
    warn: bool = True,
    max_iter: int,
    tol: float,
) -> FitResult:
    """One run of a batched EM output as a :class:`FitResult` on the original scale.

    ``index`` selects the run; ``num_components`` (model-selection grids) keeps only the first
    K active components of a K_max-sized program.
    """
    k = prep.num_components if num_components is None else num_components
    ct = prep.covariance_type
    n_eff = prep.num_obs if sample_weight is None else float(np.sum(sample_weight))
    pick = lambda a: np.asarray(a[index])  # noqa: E731
    params_std = GMMParams(*(pick(p) for p in out.state.params))
    if params_std.means.shape[0] != k:  # a K-sized fit inside a larger program: first K components
        c = params_std.covariances if ct == "tied" else params_std.covariances[:k]
        params_std = GMMParams(params_std.weights[:k], params_std.means[:k], c)
    n_iter = int(pick(out.state.n_iter))
    converged = bool(pick(out.state.converged))
    ll_shift, prior_shift = log_jacobians(prep.sd, n_eff, k, ct)
    obj_shift = ll_shift + (prior_shift if prep.prior is not None else 0.0)
    trace = pick(out.state.trace).astype(np.float64)[: n_iter + 1] + obj_shift
    params = params_to_original(params_std, prep.shift, prep.sd, ct)
    log_lik = float(np.asarray(out.log_likelihood[index], np.float64) + ll_shift)
    counts = pick(out.counts)[:k]
    degenerate = degenerate_components(params_std, counts, reg_covar, ct, prep.dtype)
    if warn and degenerate:
        warnings.warn(
            degenerate_message(degenerate, counts, map_fit=prep.prior is not None),
            DegenerateComponentWarning,
            stacklevel=3,
        )
    if warn and not converged:
        warnings.warn(
            f"EM did not converge in max_iter={max_iter} iterations (tol={tol}); increase "
            "max_iter or tol, or check the initialisation.",
            ConvergenceWarning,
            stacklevel=3,
        )
    method = "hard-em" if hard else ("map-em" if prep.prior is not None else "em")
    objective = "classification_log_likelihood" if hard else ("log_posterior" if prep.prior is not None else "log_likelihood")
    return FitResult(
        method=method,
        covariance_type=ct,
        weights=params.weights,
        means=params.means,
        covariances=params.covariances,
        log_likelihood=log_lik,
        converged=converged,
        n_iter=n_iter,
        trace=trace,
        objective=objective,
        feature_names=prep.feature_names,
        num_obs=prep.num_obs,
        degenerate_components=degenerate,
        prior=prep.prior,
        info={**info, "entropy": float(pick(out.entropy)), "expected_counts": counts.astype(np.float64).tolist(),
              "dtype": str(prep.dtype), "reg_covar": float(reg_covar), "tol": float(tol)},
    )


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
    sample_weight=None,
    devices=None,
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
    sample_weight : array (N,), optional
        Non-negative row weights (frequency weights, bootstrap counts): row ``n`` counts
        ``sample_weight[n]`` times in every sum. The log-likelihood reported is the weighted one.
    devices : None, "all", int, list of jax.Device or jax.sharding.Mesh
        Shard the rows over these devices (data parallelism; see :mod:`bayesgmm._sharding`).
        None: no sharding. The result equals the single-device fit up to floating-point
        reduction order.
    seed : int or jax key
        Same seed, same result, bit for bit.

    Returns
    -------
    FitResult
        ``method`` is "em", "map-em" or "hard-em". ``info`` holds ``compile_seconds`` (0.0 when
        the compiled program was reused), ``run_seconds``, the objective of every restart and
        ``entropy`` (of the final responsibilities, for ICL).

    Raises
    ------
    ValueError
        Invalid input, or every restart ended with a singular covariance.
    """
    arr, _ = check_data(x)
    weight = check_sample_weight(sample_weight, arr.shape[0])
    if weight is not None and isinstance(num_components, (int, np.integer)) and np.count_nonzero(weight) < num_components:
        raise ValueError(
            f"sample_weight has {np.count_nonzero(weight)} row(s) of positive weight, fewer than the "
            f"{num_components} components; give more rows positive weight or use fewer components."
        )
    prep = prepare(x, num_components, covariance_type, prior, sample_weight=weight)
    _check_options(init_params, n_init, max_iter, tol, reg_covar)
    n, d = prep.arr.shape
    k = prep.num_components
    user_init = _user_init(weights_init, means_init, precisions_init, k, d, covariance_type, prep.shift, prep.sd, prep.dtype)
    rows = _sharding.resolve(devices, n)
    xs, weight_dev = _sharding.shard_rows(rows, prep.xs, None if weight is None else weight.astype(prep.xs.dtype))
    key = seed_to_key(seed)
    config = EMConfig(k, d, covariance_type, bool(hard), prior is not None)
    timed = PROGRAM(
        xs,
        jax.random.split(key, n_init),
        user_init,
        prep.prior_arrays,
        np.asarray(tol, prep.dtype),
        np.asarray(reg_covar, prep.dtype),
        weight_dev,
        None,
        config=config,
        init_method=init_params,
        max_iter=int(max_iter),
    )
    out = jax.device_get(timed.outputs)
    finals = np.asarray(out.objective, dtype=np.float64)
    ok = np.isfinite(finals)
    if not ok.any():
        raise ValueError(
            "EM failed: a covariance became singular in every restart (ill-defined empirical "
            "covariance, e.g. duplicated points or a component on too few points). Increase "
            "reg_covar, use fewer components, or fit MAP-EM with prior=bayesgmm.Prior.default(x, K)."
        )
    best = int(np.argmax(np.where(ok, finals, -np.inf)))
    n_eff = n if weight is None else float(weight.sum())
    ll_shift, prior_shift = log_jacobians(prep.sd, n_eff, k, covariance_type)
    obj_shift = ll_shift + (prior_shift if prior is not None else 0.0)
    info = {
        "seed": seed if isinstance(seed, (int, np.integer)) else None,
        "n_init": int(n_init),
        "init_params": init_params,
        "best_restart": best,
        "restart_objectives": (finals + obj_shift).tolist(),
        "compile_seconds": timed.compile_seconds,
        "run_seconds": timed.run_seconds,
        "fit_seconds": timed.compile_seconds + timed.run_seconds,
        "num_devices": rows.num_devices,
        "sample_weighted": weight is not None,
    }
    return package(prep, out, best, hard=hard, reg_covar=reg_covar, sample_weight=weight, info=info, max_iter=max_iter, tol=tol)
