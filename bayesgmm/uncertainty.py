r"""Standard errors and intervals for EM estimates: bootstrap and observed information.

:func:`bootstrap` refits EM on resampled data, the replicates vmapped in calls of **one** compiled
EM program (:data:`bayesgmm._em_core.PROGRAM`) of up to 64 replicates each, on the rows padded to
their size bucket, so that another number of replicates or another data set of a similar size
compiles nothing:

* ``kind="nonparametric"``: resampling rows with replacement is the same as refitting with
  multinomial counts as row weights, so every replicate keeps the data's shape and only the
  (B, N) weight matrix differs;
* ``kind="parametric"``: B data sets are simulated from the fitted mixture (the generative story
  run forward) and refitted, a (B, N, D) batch.

Each refit starts at the original estimate (the usual choice: it finds the replicate's optimum
near the original one and keeps the labels). Replicates are then aligned to the original fit by
the Hungarian relabelling of :mod:`bayesgmm.labels`, in case a refit swapped two components.

:func:`observed_information` inverts the Hessian of the log-likelihood (log posterior for
MAP-EM) at the estimate, computed by automatic differentiation in an unconstrained
parameterisation (weight logits relative to the last component, means, and log-Cholesky factors
or log variances), and carries the covariance to weights, means and covariances by the delta
method. Computations follow JAX's precision: enable ``jax_enable_x64`` for accurate Hessians.

Both return a :class:`ParameterUncertainty` whose ``table`` has one row per scalar parameter.
"""

from __future__ import annotations

import dataclasses
import functools
import time
import warnings
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from . import _covariance_models, _em_core, _em_host, _iterate, _missing, _numerics, _sharding
from ._compile import jit, length_bucket
from ._tables import flatten_draws, flatten_parameters, parameter_frame
from .labels import align_draws
from .params import (
    ConvergenceWarning,
    GMMParams,
    check_data,
    check_int,
    check_nonnegative,
    params_to_original,
    params_to_standard,
    seed_to_key,
    standardisation,
)
from .results import FitResult

__all__ = ["ParameterUncertainty", "bootstrap", "observed_information"]

KINDS = ("nonparametric", "parametric")

#: Most replicates of one call of the EM program by default (:func:`bootstrap`'s ``batch_size``),
#: and every call's on small data: elsewhere fewer replicates run in the power of two that holds
#: them (at least :data:`MIN_BATCH`), more in calls of this many, so that every ``num_replicates``
#: shares one of four programs (on small data one).
MAX_BATCH = 64
MIN_BATCH = 8


@dataclasses.dataclass(frozen=True, eq=False)
class ParameterUncertainty:
    """Standard errors and intervals of a fit's weights, means and covariances.

    Attributes
    ----------
    table : pandas.DataFrame
        One row per scalar parameter: ``parameter`` ("weights", "means", "covariances"),
        ``component``, ``feature``, ``feature_bis`` (-1 where not applicable), ``estimate``,
        ``se``, ``lower``, ``upper`` (bootstrap percentiles, or Wald intervals).
    method : str
        ``"bootstrap-nonparametric"``, ``"bootstrap-parametric"`` or ``"observed-information"``.
    level : float
        Interval coverage.
    draws : mapping or None
        Bootstrap replicates (label-aligned) as ``{"weights": (1, B, K), "means": (1, B, K, D),
        "covariances": (1, B, ...)}``, the layout of posterior draws.
    covariance : np.ndarray or None
        Observed information: the covariance of the unconstrained parameters, ``inv(-H)``.
    info : mapping
        Timing and facts (``compile_seconds``, ``run_seconds``, ``converged_fraction``, ...).
    """

    table: Any
    method: str
    level: float
    draws: Mapping[str, np.ndarray] | None = None
    covariance: np.ndarray | None = None
    info: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    def standard_errors(self) -> GMMParams:
        """Standard errors with the shapes of the fit's ``weights``, ``means``, ``covariances``."""
        shapes = self.info["shapes"]
        out = []
        for name in ("weights", "means", "covariances"):
            rows = self.table[self.table["parameter"] == name]
            out.append(rows["se"].to_numpy().reshape(shapes[name]))
        return GMMParams(*out)


def _check_fit(fit, x):
    if not isinstance(fit, FitResult) or fit.method not in ("em", "map-em"):
        raise ValueError(
            "fit must be a FitResult of bayesgmm.fit_em (maximum likelihood or MAP, soft EM); "
            f"got {getattr(fit, 'method', type(fit).__name__)!r}. Bayesian engines carry posterior draws instead."
        )
    if fit.info.get("sample_weighted"):
        raise ValueError(
            "fit was made with sample_weight; bootstrap and observed_information treat every row once, "
            "so their standard errors would be those of the unweighted data. Refit without weights (with "
            "integer weights, repeat each row that many times)."
        )
    arr, _ = check_data(x, num_features=fit.num_features, feature_names=fit.feature_names,
                        missing=fit.info.get("missing", "error"))  # a fit made with missing values takes them
    if arr.shape[0] != fit.num_obs:
        raise ValueError(f"x has {arr.shape[0]} rows but the fit was made on {fit.num_obs}; pass the training data.")
    return arr


# ----------------------------------------------------------------------------------------------
# Bootstrap
# ----------------------------------------------------------------------------------------------
def bootstrap(
    fit: FitResult,
    x,
    *,
    num_replicates: int = 200,
    kind: str = "nonparametric",
    level: float = 0.95,
    max_iter: int = 200,
    tol: float = 1e-6,
    batch_size: int | None = None,
    seed=0,
) -> ParameterUncertainty:
    """Bootstrap standard errors and percentile intervals of an EM fit.

    Parameters
    ----------
    fit : FitResult
        From :func:`bayesgmm.fit_em` (ML or MAP) on ``x``; its covariance structure, prior and
        ``reg_covar`` are reused.
    x : array-like (N, D)
        The training data.
    num_replicates : int
        B, the number of refits.
    kind : {"nonparametric", "parametric"}
        Resample rows (multinomial counts as row weights), or simulate from the fitted mixture.
    level : float
        Coverage of the percentile intervals.
    max_iter, tol : int, float
        EM settings of each refit (started at the original estimate).
    batch_size : int, optional
        Replicates per call of the compiled EM program. The default runs calls of 64 on small
        data (N x K x p up to about 39,000, where EM's own search pads its lanes too: a lane
        costs microseconds there against seconds of compiling), so that every number of
        replicates shares one program; on larger data the power of two that holds
        ``num_replicates`` (at least 8) or, above 64, calls of 64: one of four programs. They
        compile once per data shape (a second bootstrap with another ``num_replicates``, or on
        other data of a similar size, compiles nothing). The last call is filled with further
        replicates, which are dropped. Lower it for
        large N: a call holds ``batch_size`` x N responsibilities (and as many simulated rows
        for ``parametric``). The same seed resamples the same rows whatever the batch; in
        float64 the replicates are bit-identical, in float32 they can differ in rounding.
    seed : int or jax key
        Seed of the resampling (and of the parametric bootstrap's simulations).

    Raises
    ------
    ValueError
        For a fit made with ``sample_weight`` (the rows would be resampled as if unweighted), for
        a non-EM fit, or when fewer than two refits end without a singular covariance or a
        degenerate component.

    Returns
    -------
    ParameterUncertainty
        ``draws`` holds the aligned replicates; ``info["converged_fraction"]`` the share of refits
        that met ``tol`` (the rest are kept, at ``max_iter``). Refits that ended with a singular
        covariance (``info["num_singular"]``) or a degenerate component (``info["num_degenerate"]``:
        collapsed, or spurious as :func:`bayesgmm.fit_em` flags them) are dropped with a
        ``ConvergenceWarning``; ``info["num_used"]`` counts the rest.
    """
    arr = _check_fit(fit, x)
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}.")
    for name, v in (("num_replicates", num_replicates), ("max_iter", max_iter)):
        if isinstance(v, bool) or not (isinstance(v, (int, np.integer)) and v >= 2 - (name == "max_iter")):
            raise ValueError(f"{name} must be an integer >= {2 - (name == 'max_iter')}, got {v!r}.")
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level!r}.")
    check_nonnegative(tol=tol)
    n, d = arr.shape
    k, ct = fit.num_components, fit.covariance_type
    batch = None if batch_size is None else check_int("batch_size", batch_size)
    reg_covar = float(fit.info.get("reg_covar", 1e-10))
    if kind == "parametric" and np.isnan(arr).any():
        raise ValueError("a parametric bootstrap simulates complete data sets; with missing values use "
                         "kind='nonparametric' (rows resampled with their missing entries).")
    prep = _em_host.prepare(arr, k, fit.covariance_model, fit.prior,  # refits keep the fit's mclust model
                            missing=fit.info.get("missing", "error"))
    if batch is None:  # small data as EM's own search judges it (rows with missing values count 4 D times)
        batch = default_batch(num_replicates, small=_iterate.pooled(_em_host.search_rows(prep), k, d, ct))
    start = params_to_standard(fit.params, prep.shift, prep.sd, ct)
    user_init = tuple(jnp.asarray(p, prep.dtype) for p in start)
    config = _em_core.EMConfig(k, d, ct, False, fit.prior is not None, covariance_model=fit.covariance_model)
    key_resample, key_runs = jax.random.split(seed_to_key(seed))
    num_batches = -(-num_replicates // batch)
    # one key per replicate, whatever the batching: batch_size changes memory, not the resampled rows (in float64
    # the replicates are bit-identical; in float32 programs of other shapes round differently: standard errors
    # moved by about 1e-4 relative in a review)
    batch_indices = np.arange(batch, dtype=np.uint32)
    resample_keys = [_replicate_keys(key_resample, b * batch + batch_indices) for b in range(num_batches)]
    run_keys = [jax.random.fold_in(key_runs, b * batch) for b in range(num_batches)]  # each batch's first replicate

    # the rows padded to their bucket with zero rows of weight 0: another N in the bucket (and
    # another num_replicates, see default_batch) reuses the program
    rows = _sharding.resolve(None, n)
    padded = rows.num_padded
    data, real_rows = _sharding.shard_rows(rows, prep.xs, None)
    if real_rows is None:  # no padding
        real_rows = np.ones(n, prep.dtype)
    observed = _sharding.pad_observed(prep.observed, padded)

    def batch_data(b):
        """Replicates b*batch ... (b+1)*batch - 1, generated only when their turn comes."""
        if kind == "nonparametric":
            return data, np.asarray(_resample_counts(resample_keys[b], np.int32(n), num_padded=padded), prep.dtype)
        # simulated on the standardised scale (the fit's parameters mapped there in float64), so
        # that data far from zero keep their precision in float32
        simulated = _simulate_replicates(resample_keys[b], GMMParams(*user_init), np.int32(n), num_padded=padded,
                                         covariance_type=ct)
        return np.asarray(simulated, prep.dtype), real_rows

    outs, compile_seconds, run_seconds = [], 0.0, 0.0
    for b in range(num_batches):
        xs, weights = batch_data(b)
        found = _em_host.run_search(
            prep, run_keys[b], user_init, prep.prior_arrays, tol=tol, reg_covar=reg_covar,
            sample_weight=weights, active=None, max_iter=int(max_iter), config=config, init_method="given",
            num_groups=batch, num_starts=1, num_kept=1, data=xs, observed=observed,
        )
        compile_seconds += found.compile_seconds
        run_seconds += found.run_seconds
        outs.append(found.output)
    params = [np.concatenate([np.asarray(getattr(o.lanes.params, f)) for o in outs])[:num_replicates] for f in GMMParams._fields]
    converged = np.concatenate([np.asarray(o.lanes.converged) for o in outs])[:num_replicates]
    objective = np.concatenate([np.asarray(o.lanes.objective) for o in outs])[:num_replicates]
    # a component that collapsed (or rests on a few points nearly on a line) keeps a finite
    # objective through reg_covar: such refits are dropped as the singular ones (their
    # covariances sit on the regularisation floor, and would set the intervals' lower ends)
    degenerate = np.concatenate([np.asarray(o.degenerate).reshape(len(o.lanes.objective), -1)
                                 for o in outs])[:num_replicates].any(axis=-1)
    singular = ~np.isfinite(objective)
    ok = ~singular & ~degenerate
    dropped = (f"{int(singular.sum())} of {num_replicates} bootstrap refits ended with a singular covariance and "
               f"{int((degenerate & ~singular).sum())} with a degenerate component (collapsed, or resting on a few "
               "points with a tiny variance)")
    if ok.sum() < 2:
        raise ValueError(
            f"{dropped}, leaving fewer than two to estimate a spread. Fit MAP-EM (prior=Prior.default(x, K)) or "
            "fewer components."
        )
    if not ok.all():
        warnings.warn(
            f"{dropped}; they were dropped and the standard errors and intervals use the other {int(ok.sum())}, "
            "which understates the uncertainty when many were dropped. Consider MAP-EM "
            "(prior=Prior.default(x, K)) or fewer components.",
            ConvergenceWarning,
            stacklevel=2,
        )
    orig = params_to_original(GMMParams(*(p[ok] for p in params)), prep.shift, prep.sd, ct)
    draws = {"weights": orig.weights[None], "means": orig.means[None], "covariances": orig.covariances[None]}
    if k > 1:
        draws, _ = align_draws(draws, fit.params, ct)
    flat = flatten_draws(draws)
    alpha = (1 - level) / 2
    table = parameter_frame(fit, flatten_parameters(fit.params), flat.std(0, ddof=1), np.quantile(flat, alpha, 0),
                            np.quantile(flat, 1 - alpha, 0))
    info = {
        "kind": kind, "num_replicates": int(num_replicates), "num_used": int(ok.sum()),
        "num_singular": int(singular.sum()), "num_degenerate": int((degenerate & ~singular).sum()),
        "converged_fraction": float(converged[ok].mean()) if ok.any() else 0.0,
        "compile_seconds": compile_seconds, "run_seconds": run_seconds, "batch_size": batch,
        "shapes": {"weights": fit.weights.shape, "means": fit.means.shape, "covariances": fit.covariances.shape},
    }
    return ParameterUncertainty(table, f"bootstrap-{kind}", level, draws=draws, info=info)


# ----------------------------------------------------------------------------------------------
# Observed information
# ----------------------------------------------------------------------------------------------
def to_unconstrained(params: GMMParams, covariance_type: str):
    w, m, c = params
    logits = jnp.log(w[:-1]) - jnp.log(w[-1])
    if covariance_type in ("full", "tied"):
        chol = jnp.linalg.cholesky(c)
        d = m.shape[1]
        i, j = np.tril_indices(d)
        chol = chol.at[..., np.arange(d), np.arange(d)].set(jnp.log(jnp.diagonal(chol, axis1=-2, axis2=-1)))
        cov_free = chol[..., i, j]
    else:
        cov_free = jnp.log(c)
    return jnp.concatenate([logits, jnp.ravel(m), jnp.ravel(cov_free)])


def from_unconstrained(theta, k: int, d: int, covariance_type: str) -> GMMParams:
    logits = jnp.concatenate([theta[: k - 1], jnp.zeros(1, theta.dtype)])
    w = jax.nn.softmax(logits)
    m = theta[k - 1 : k - 1 + k * d].reshape(k, d)
    rest = theta[k - 1 + k * d :]
    if covariance_type in ("full", "tied"):
        i, j = np.tril_indices(d)
        lead = (k,) if covariance_type == "full" else ()
        chol = jnp.zeros(lead + (d, d), theta.dtype).at[..., i, j].set(rest.reshape(lead + (-1,)))
        diag = jnp.exp(jnp.diagonal(chol, axis1=-2, axis2=-1))
        chol = chol.at[..., np.arange(d), np.arange(d)].set(diag)
        c = chol @ jnp.swapaxes(chol, -1, -2)
    else:
        c = jnp.exp(rest).reshape((k, d) if covariance_type == "diag" else (k,))
    return GMMParams(w, m, c)


def _objective(theta, xs, row_weight, prior, k, d, covariance_type, observed=None):
    """The log-likelihood (log posterior with ``prior``) at unconstrained ``theta``: rows ``xs``
    weighted by ``row_weight`` (1, or 0 for the padding rows of a row bucket)."""
    params = from_unconstrained(theta, k, d, covariance_type)
    if observed is None:
        per_row = _numerics.mixture_log_density(xs, *params, covariance_type)
    else:  # the observed-data likelihood: each row's density over its observed columns
        log_joint = _missing.observed_log_density(xs, observed, params, covariance_type) + jnp.log(params.weights)
        per_row = jax.scipy.special.logsumexp(log_joint, axis=-1)
    total = per_row @ row_weight
    if prior is not None:
        from .model import log_prior  # NumPyro's densities: imported by MAP fits only

        total = total + log_prior(params, prior, covariance_type)
    return total


@jit
def _replicate_keys(key, indices):
    """The keys of replicates ``indices`` (one program per shape, whatever ``num_replicates``):
    ``fold_in(key, i)``, which under JAX's default (partitionable threefry) keys is
    ``jax.random.split(key, n)[i]`` for every n > i."""
    return jax.vmap(jax.random.fold_in, in_axes=(None, 0))(key, indices)


def default_batch(num_replicates: int, *, small: bool = False) -> int:
    """:func:`bootstrap`'s replicates per call when ``batch_size`` is not given: :data:`MAX_BATCH`
    on ``small`` data (:func:`bayesgmm._iterate.pooled`), elsewhere the power of two that holds
    ``num_replicates``, at least :data:`MIN_BATCH` and at most :data:`MAX_BATCH`."""
    if small:
        return MAX_BATCH
    return min(MAX_BATCH, length_bucket(int(num_replicates), MIN_BATCH))


@functools.partial(jit, static_argnames=("num_padded",))
def _resample_counts(keys, num_obs, *, num_padded: int):
    """A nonparametric bootstrap's row weights (B, ``num_padded``): per key, how often each of the
    first ``num_obs`` (traced) rows is drawn in ``num_obs`` draws with replacement, 0 for the
    padding rows. The first ``num_obs`` of the ``num_padded`` draws are the draws an unpadded
    call makes (JAX's threefry draws by position), so padding does not change the resample."""
    real = (jnp.arange(num_padded) < num_obs).astype(jnp.int32)
    rows = jax.vmap(lambda key: jax.random.randint(key, (num_padded,), 0, num_obs))(keys)
    return jax.vmap(lambda r: jnp.bincount(r, weights=real, length=num_padded))(rows)


@functools.partial(jit, static_argnames=("num_padded", "covariance_type"))
def _simulate_replicates(keys, params: GMMParams, num_obs, *, num_padded: int, covariance_type: str):
    """A parametric bootstrap's data sets (B, ``num_padded``, D), one per key, from the model at
    ``params``: ``num_obs`` (traced) simulated rows, then zeros (padding, of weight 0)."""
    from .model import simulate

    real = (jnp.arange(num_padded) < num_obs)[:, None]
    return jax.vmap(lambda key: jnp.where(real, simulate(key, params, num_padded, covariance_type)[0], 0.0))(keys)


@functools.partial(jit, static_argnums=(4, 5, 6))
def _objective_hessian(theta, xs, row_weight, prior, k, d, covariance_type, observed=None):
    """The Hessian of :func:`_objective` in the unconstrained parameters, compiled once per shape
    (rows padded to their bucket: once per bucket; ``observed``: the mask of observed entries, or
    None when nothing is missing)."""
    return jax.hessian(_objective)(theta, xs, row_weight, prior, k, d, covariance_type, observed)


@functools.partial(jit, static_argnums=(3, 4, 5))
def _natural_jacobian(theta, shift, sd, k, d, covariance_type):
    """d(weights, means, covariances on the data's scale, flattened) / d(unconstrained standardised
    parameters), compiled once per shape (the delta method's Jacobian)."""

    def natural(t):
        p = from_unconstrained(t, k, d, covariance_type)
        m = p.means * sd + shift
        if covariance_type in ("full", "tied"):
            c = p.covariances * jnp.outer(sd, sd)
        elif covariance_type == "diag":
            c = p.covariances * sd**2
        else:
            c = p.covariances * sd[0] ** 2
        return jnp.concatenate([p.weights, jnp.ravel(m), jnp.ravel(c)])

    return jax.jacobian(natural)(theta)


def observed_information(fit: FitResult, x, *, level: float = 0.95) -> ParameterUncertainty:
    """Standard errors from the inverse observed information (Hessian of the log-likelihood).

    For MAP-EM the Hessian is that of the log posterior (a Laplace approximation). A fit made
    with missing values (``missing="marginalize"``) gets the Hessian of the observed-data
    likelihood it maximised (each row's density over its observed columns).

    Parameters
    ----------
    fit : FitResult
        From :func:`bayesgmm.fit_em` on ``x``, converged.
    x : array-like (N, D)
        The data ``result`` was fitted to.
    level : float
        Coverage of the Wald intervals ``estimate +- z * se``.

    Returns
    -------
    ParameterUncertainty
        ``covariance`` is ``inv(-H)`` of the unconstrained parameters; ``info["min_eigenvalue"]``
        the smallest eigenvalue of ``-H`` (must be positive at a maximum).

    Warns
    -----
    ConvergenceWarning
        ``-H`` is not positive definite (not at a strict maximum: unconverged, a degenerate
        component, or non-identified parameters); the standard errors are then NaN.
    """
    from scipy.stats import norm

    arr = _check_fit(fit, x)
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level!r}.")
    if fit.covariance_model != _covariance_models.ALIASES.get(fit.covariance_type):
        raise ValueError(
            f"observed_information parameterises the four scikit-learn structures, not mclust's constrained model "
            f"{fit.covariance_model!r} (its free parameters are fewer than its stored covariances'); use "
            "bayesgmm.bootstrap(fit, x), which refits the same model."
        )
    k, ct = fit.num_components, fit.covariance_type
    d = fit.num_features
    start = time.perf_counter()
    shift, sd = standardisation(arr.astype(np.float64), ct)  # NaN entries left out of the statistics
    dtype = jnp.asarray(arr[:1]).dtype
    missing = np.isnan(arr)
    # the rows padded to their bucket (zero rows of weight 0): data of another size in the bucket
    # reuse the compiled Hessian
    rows = _sharding.resolve(None, arr.shape[0])
    xs, row_weight = _sharding.shard_rows(rows, np.where(missing, 0.0, (arr - shift) / sd).astype(dtype), None)
    row_weight = np.ones(arr.shape[0], dtype) if row_weight is None else row_weight
    # missing values: the observed-data likelihood
    observed = jnp.asarray(_sharding.pad_observed(~missing, rows.num_padded)) if missing.any() else None
    std = GMMParams(*(jnp.asarray(p, dtype) for p in params_to_standard(fit.params, shift, sd, ct)))
    prior = None
    if fit.prior is not None:
        prior = jax.tree_util.tree_map(lambda a: jnp.asarray(a, dtype), fit.prior.standardised(shift, sd).arrays(k, ct))
    theta = to_unconstrained(std, ct)
    hessian = _objective_hessian(theta, xs, row_weight, prior, k, d, ct, observed)
    neg_h = -np.asarray(hessian, np.float64)
    neg_h = (neg_h + neg_h.T) / 2
    eig = np.linalg.eigvalsh(neg_h)
    if eig[0] <= 0:
        warnings.warn(
            f"the observed information is not positive definite (smallest eigenvalue {eig[0]:.3g}): the fit is not "
            "at a strict maximum (unconverged, a degenerate component, or non-identified parameters). Standard "
            "errors are NaN; refit with a tighter tol or use bootstrap().",
            ConvergenceWarning,
            stacklevel=2,
        )
        cov_theta = np.full_like(neg_h, np.nan)
    else:
        cov_theta = np.linalg.inv(neg_h)

    jac = np.asarray(_natural_jacobian(theta, jnp.asarray(shift, dtype), jnp.asarray(sd, dtype), k, d, ct), np.float64)
    cov_nat = jac @ cov_theta @ jac.T
    se = np.sqrt(np.clip(np.diag(cov_nat), 0, None)) if eig[0] > 0 else np.full(cov_nat.shape[0], np.nan)
    est = flatten_parameters(fit.params)
    z = norm.ppf(0.5 + level / 2)
    table = parameter_frame(fit, est, se, est - z * se, est + z * se)
    info = {
        "seconds": time.perf_counter() - start, "min_eigenvalue": float(eig[0]), "dtype": str(dtype),
        "shapes": {"weights": fit.weights.shape, "means": fit.means.shape, "covariances": fit.covariances.shape},
    }
    return ParameterUncertainty(table, "observed-information", level, covariance=cov_theta, info=info)
