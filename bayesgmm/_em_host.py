"""The host side of an EM fit, shared by :func:`bayesgmm.fit_em`, :func:`bayesgmm.select` and
:func:`bayesgmm.bootstrap`: options and starting values checked, data and prior on the unit
scale (:class:`Prepared`), the search of :mod:`bayesgmm._em_core` run on them, the best run chosen
and packaged as a :class:`~bayesgmm.FitResult` with every total recomputed in float64.

Private to the package; the public entry points are in :mod:`bayesgmm.em`.
"""

from __future__ import annotations

import warnings
from typing import NamedTuple

import jax.numpy as jnp
import numpy as np

from . import _covariance_models, _numerics
from ._em_core import (
    INIT_ITER,
    EMConfig,
    EMOutput,
    search,
    trace_length,
)
from .kmeans import INIT_METHODS
from .params import (
    ConvergenceWarning,
    DegenerateComponentWarning,
    GMMParams,
    PrecisionWarning,
    Prior,
    check_data,
    check_nonnegative,
    check_num_components,
    check_positive_integers,
    check_prior,
    compute_dtype,
    linearly_dependent,
    log_jacobians,
    mark_missing,
    params_to_original,
    params_to_standard,
    standardise,
)
from .results import FitResult

#: Default convergence tolerance: projected remaining gain of the mean objective per observation.
DEFAULT_TOL = 1e-5


# ----------------------------------------------------------------------------------------------
# Validation and units
# ----------------------------------------------------------------------------------------------
def user_init(weights_init, means_init, precisions_init, k, d, covariance_type, shift, sd, dtype):
    """User-given starting parameters (scikit-learn's names), standardised; None where not given."""
    w = m = c = None
    for name, value in (("weights_init", weights_init), ("means_init", means_init), ("precisions_init", precisions_init)):
        if value is None:
            continue
        try:
            numbers = np.asarray(value, dtype=np.float64)
        except (TypeError, ValueError):
            raise ValueError(f"{name} must be an array of numbers, got {value!r}.") from None
        if not np.all(np.isfinite(numbers)):
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
    covariance_model: str = "VVV"  # the mclust model fitted, stored in the covariance_type layout
    observed: np.ndarray | None = None  # (N, D) bool, False at missing entries (0 in xs); None: none missing

    @property
    def num_obs(self) -> int:
        return self.arr.shape[0]


def check_em_options(init_params, n_init, max_iter, tol, reg_covar) -> None:
    """Validate EM's search options (shared by :func:`fit_em` and :func:`bayesgmm.select`)."""
    if init_params not in INIT_METHODS:
        raise ValueError(f"init_params must be one of {INIT_METHODS}, got {init_params!r}.")
    if not (isinstance(n_init, str) and n_init == "auto"):
        if isinstance(n_init, str):
            raise ValueError(f"n_init must be 'auto' or a positive integer, got {n_init!r}.")
        check_positive_integers(n_init=n_init)
    check_positive_integers(max_iter=max_iter)
    check_nonnegative(tol=tol, reg_covar=reg_covar)


def search_rows(prep: Prepared) -> int:
    """The row count the default search sizes its starts by: with missing values the conditional
    E-step (a D x D Cholesky factor per row and component) costs about 4 D times the complete-data
    one per row, so fewer starts fit the same budget."""
    n, d = prep.arr.shape
    return n if prep.observed is None else n * 4 * d


def observed_counts(prep: Prepared, sample_weight=None):
    """Per feature, the (weighted) number of observed entries; None when nothing is missing."""
    if prep.observed is None:
        return None
    return (prep.observed if sample_weight is None else prep.observed * np.asarray(sample_weight)[:, None]).sum(0)


def prepare(x, num_components, covariance_type: str, prior: Prior | None, *, max_components=None, sample_weight=None,
            missing: str = "error") -> Prepared:
    """Validate the data and prior and standardise both (see the module docstring).

    ``max_components`` (model-selection grids) is the K the arrays are built for.
    ``sample_weight`` (validated) weights the standardising statistics. ``covariance_type`` is
    a scikit-learn structure or an mclust model (:mod:`bayesgmm._covariance_models`); the
    record holds its layout and its model. ``missing="marginalize"``: NaN entries are missing at
    random; ``xs`` holds 0 there and ``observed`` marks them.
    """
    arr, names = check_data(x, missing=missing)
    n, d = arr.shape
    k = check_num_components(num_components, n)
    layout, model = _covariance_models.resolve(covariance_type)
    k_arrays = k if max_components is None else max_components
    check_prior(prior, d, k_arrays, map_estimate=True)
    dtype = compute_dtype()
    scale_as = "spherical" if _covariance_models.common_scale(model) else layout
    shift, sd, xs = standardise(arr, scale_as, sample_weight, dtype=dtype)
    xs, observed = mark_missing(xs)
    prior_arrays = None
    if prior is not None:
        prior_arrays = prior.standardised(shift, sd).arrays(k_arrays, layout, dtype=np.dtype(dtype))
    return Prepared(arr, names, k, layout, prior, shift, sd, xs, prior_arrays, dtype, model, observed)


def run_search(prep: Prepared, key, user_init, prior_arrays, *, tol, reg_covar, sample_weight, active, max_iter,
               config: EMConfig, init_method: str, num_groups: int, num_starts: int, num_kept: int,
               init_iter: int = INIT_ITER, data=None,
               allow_degenerate: bool = False, sharded: bool = False, observed=None, host_weight=None):
    """:func:`bayesgmm._em_core.search` with host arguments in the compute dtype (``observed``:
    the missing-value mask of ``data`` when it is padded, else ``prep.observed``; ``host_weight``:
    the row weights on the host when ``sample_weight`` is placed on devices). Starts are screened
    on ``prep.xs``, whatever the devices ``data`` lies on."""
    return search(
        prep.xs if data is None else data, key, user_init, prior_arrays, tol=tol, reg_covar=reg_covar,
        sample_weight=sample_weight, active=active, max_iter=int(max_iter), init_iter=int(init_iter), config=config,
        init_method=init_method, num_groups=num_groups, num_starts=num_starts, num_kept=num_kept,
        trace_len=trace_length(max_iter), avoid_degenerate=not allow_degenerate, adaptive=not sharded,
        num_rows=prep.num_obs, observed=prep.observed if observed is None else observed,
        host_rows=prep.xs, host_weight=host_weight,
    )


# ----------------------------------------------------------------------------------------------
# From the program's output to a FitResult
# ----------------------------------------------------------------------------------------------
def choose_run(objective, degenerate, *, allow_degenerate: bool = False) -> int:
    """Index of the run kept: the highest finite objective among the non-degenerate runs (among
    all runs when every one is degenerate, or with ``allow_degenerate``); -1 if none is finite."""
    objective = np.asarray(objective, np.float64)
    finite = np.isfinite(objective)
    if not finite.any():
        return -1
    clean = finite & ~np.asarray(degenerate).any(axis=-1)
    pool = clean if (clean.any() and not allow_degenerate) else finite
    return int(np.argmax(np.where(pool, objective, -np.inf)))


def refuse_dependent_columns(prep: Prepared) -> None:
    """Raise where full or tied covariances cannot exist: the data's columns are linearly
    dependent (one a linear combination of the others), so every component's covariance is
    singular, whatever the start (the Bayesian engines refuse such data through their default
    prior). Called when a fit has no component left that is not degenerate."""
    if prep.covariance_type not in ("full", "tied") or prep.observed is not None or prep.arr.shape[1] < 2:
        return
    cov = np.cov(np.asarray(prep.arr, np.float64), rowvar=False)
    # float32 data: their rounding (relative eps) is the least that dependent columns show
    if linearly_dependent(cov, max(1e-12, 100 * float(np.finfo(prep.arr.dtype).eps) ** 2)):
        model = prep.covariance_type if prep.covariance_model in _covariance_models.NATIVE else (
            f"{prep.covariance_model} (a {prep.covariance_type} layout)")
        raise ValueError(
            f"x has linearly dependent columns (one is a linear combination of the others), so every "
            f"{model} covariance fitted to them is singular. Drop the redundant column(s), or use "
            "covariance_type='diag' (or a diagonal mclust model: 'EEI', 'VEI', 'EVI', 'VVI').")


def objective_shift(prep: Prepared, num_components: int, sample_weight=None) -> float:
    """What turns the program's objective (on the standardised scale) into the data's units: the
    log-Jacobian of the standardisation, and for MAP fits (``prep.prior``) the prior's."""
    n_eff = prep.num_obs if sample_weight is None else float(np.sum(sample_weight))
    ll_shift, prior_shift = log_jacobians(prep.sd, n_eff, num_components, prep.covariance_type,
                                          observed_counts(prep, sample_weight))
    return ll_shift + (prior_shift if prep.prior is not None else 0.0)


def data_info(prep: Prepared, missing: str, sample_weight=None) -> dict:
    """The ``info`` entries every EM fit records about its data (what :mod:`bayesgmm.uncertainty`
    reads back to refit it): ``sample_weighted``, ``missing`` and ``num_missing``."""
    return {"sample_weighted": sample_weight is not None, "missing": missing,
            "num_missing": 0 if prep.observed is None else int((~prep.observed).sum())}


def exact_objective(prep: Prepared, params: GMMParams, sample_weight=None, hard: bool = False):
    """Float64 totals at ``params`` (original scale): ``(log_likelihood, objective, totals, counts)``
    (:class:`bayesgmm._numerics.Totals`).

    The objective is the log-likelihood, plus the log prior density for MAP fits, or the
    classification log-likelihood ``sum_n max_k log pi_k N(x_n | k)`` for hard EM. ``counts``
    are the components' (weighted) counts as the fit assigns rows: the expected counts
    ``sum_n r_nk``, or for hard EM the rows each component wins.
    """
    k, ct = params.means.shape[0], prep.covariance_type
    totals = _numerics.totals(prep.arr, *params, ct, sample_weight)
    objective, counts = totals.log_likelihood, totals.counts
    if hard:
        rows = _numerics.score_rows(prep.arr, *params, ct, responsibilities=True)
        label = np.argmax(rows.log_resp, axis=1)
        best = rows.log_density + rows.log_resp[np.arange(len(label)), label]
        objective = float(best.sum() if sample_weight is None else best @ sample_weight)
        counts = np.bincount(label, weights=sample_weight, minlength=k).astype(np.float64)
    if prep.prior is not None:
        objective += _numerics.log_prior(params, prep.prior.arrays(k, ct), ct)
    return totals.log_likelihood, objective, totals, counts


#: A fit computed in less than float64 is checked by one float64 EM step from its answer
#: (:func:`float64_step`) when a covariance's condition number times the compute type's
#: epsilon exceeds this: its Mahalanobis distances are then accurate to about that fraction, and
#: EM stops where those errors hide its progress (float32 at D = 50 with condition numbers of
#: 1e6 stopped, "converged", 49 nats below the optimum).
ILL_CONDITIONED = 1e-4

#: Rows per block of :func:`float64_step`'s pass.
_STEP_BLOCK_ROWS = 32768


def condition_numbers(covariances, covariance_type: str) -> np.ndarray:
    """Each component's covariance condition number (largest over smallest eigenvalue or
    variance; one for tied, 1 for spherical); infinite for a covariance that is not positive
    definite."""
    cov = np.asarray(covariances, np.float64)
    if covariance_type in ("full", "tied"):
        values = np.linalg.eigvalsh(cov.reshape((-1,) + cov.shape[-2:]))
    elif covariance_type == "diag":
        values = cov
    else:
        return np.ones(np.shape(cov))
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(values[:, 0] > 0, values[:, -1] / values[:, 0], np.inf) if covariance_type != "diag" else (
            np.where(values.min(-1) > 0, values.max(-1) / values.min(-1), np.inf))


def float64_step_needed(covariances, covariance_type: str, dtype) -> tuple[bool, float]:
    """``(whether, condition)``: whether a fit computed in ``dtype`` with these (standardised)
    covariances takes the float64 step (:data:`ILL_CONDITIONED`; never from float64, nor from
    covariances that are not positive definite, whose condition number is infinite), and their
    largest condition number."""
    eps = float(np.finfo(dtype).eps)
    condition = float(np.max(condition_numbers(covariances, covariance_type)))
    return eps > 1e-10 and np.isfinite(condition) and condition * eps > ILL_CONDITIONED, condition


def stopped_short(gain, tol: float, floor_per_obs, num_obs: float) -> bool:
    """Whether a float64 step's ``gain`` says EM stopped short: above the tolerance and twice the
    compute type's precision floor, both per observation times ``num_obs``."""
    return gain is not None and gain > max(tol * num_obs, 2.0 * float(floor_per_obs or 0.0) * num_obs)


def stopped_short_info(info, num_obs: float) -> bool:
    """:func:`stopped_short` from a result's ``info`` (``float64_step_gain``, ``tol``,
    ``precision_floor_per_obs``): what made a converged fit unconverged."""
    return stopped_short(info.get("float64_step_gain"), float(info["tol"]), info.get("precision_floor_per_obs"), num_obs)


def stopped_short_message(engine: str, dtype, gain: float, tol_n: float, condition: float, degenerate) -> str:
    """The ``ConvergenceWarning`` of a fit :func:`stopped_short`. With ``degenerate`` components
    the float64 step gains by collapsing them further, so float64 would not help (a review: wine at
    K = 6 gained 666 nats so), fewer components would."""
    name = np.dtype(dtype).name
    advice = (f"Its component(s) {list(degenerate)} are degenerate, and the step gains by narrowing them further: "
              "use fewer components, a prior (prior=bayesgmm.Prior.default(x, K)) or a larger reg_covar; float64 "
              "would collapse them further." if len(degenerate) else
              "Fit in float64 (jax.config.update('jax_enable_x64', True)).")
    return (f"{engine} stopped where {name} no longer resolved its progress, but one float64 EM step from its "
            f"answer still raises the objective by {gain:.3g} (tol x N = {tol_n:.3g}): covariance condition "
            f"numbers up to {condition:.2g} are beyond what {name} resolves, so converged is False. {advice}")


class Float64Step(NamedTuple):
    """One float64 EM step from a fit's answer (:func:`float64_step`): the objective's ``gain``,
    and the expected ``counts`` (K,) and ``covariances`` (standardised) it computed in float64."""

    gain: float
    counts: np.ndarray
    covariances: np.ndarray


def block_moments(arr, weight, params64: GMMParams, shift, sd, covariance_type: str, hard: bool = False):
    """Float64 ``(N_k, sum r (x - mu_k), second moments about mu_k)`` of the rows ``arr``
    (original units; NaN entries missing) at ``params64`` (standardised, float64): soft or
    (``hard``) one-hot responsibilities times the row weights ``weight`` (None: 1); rows with
    missing values through the observed-data E-step's completed rows and conditional covariances
    (:func:`bayesgmm._missing.e_step_stats`, run eagerly in float64). Blocks add up."""
    import jax

    from . import _missing

    ct, mu = covariance_type, params64.means
    xs = (np.asarray(arr, np.float64) - shift) / sd
    weight = None if weight is None else np.asarray(weight, np.float64)
    observed = ~np.isnan(xs)
    if not observed.all():
        with jax.enable_x64(True):
            _, (nk, xbar, scatter) = _missing.e_step_stats(np.where(observed, xs, 0.0), observed, weight, params64, ct,
                                                           hard=hard)
            nk, xbar, scatter = (np.asarray(a, np.float64) for a in (nk, xbar, scatter))
        offset = xbar - mu  # the block's centred statistics, moved to moments about mu
        first = nk[:, None] * offset
        if ct in ("full", "tied"):
            second = scatter + nk[:, None, None] * offset[:, :, None] * offset[:, None, :]
        elif ct == "diag":
            second = scatter + nk[:, None] * offset**2
        else:
            second = scatter + nk * np.sum(offset**2, axis=1)
        return nk, first, second
    log_resp = _numerics.score_rows(xs, *params64, ct, responsibilities=True).log_resp
    if hard:
        resp = np.zeros_like(log_resp)
        resp[np.arange(len(resp)), np.argmax(log_resp, axis=1)] = 1.0
    else:
        resp = np.exp(log_resp)
    if weight is not None:
        resp *= weight[:, None]
    k, d = mu.shape
    first = np.zeros((k, d))
    second = np.zeros({"full": (k, d, d), "tied": (k, d, d), "diag": (k, d), "spherical": (k,)}[ct])
    for j in range(k):  # about the current means: no cancellation
        dev = xs - mu[j]
        first[j] = resp[:, j] @ dev
        if ct in ("full", "tied"):
            second[j] = (dev * resp[:, j, None]).T @ dev
        elif ct == "diag":
            second[j] = resp[:, j] @ dev**2
        else:
            second[j] = resp[:, j] @ np.sum(dev**2, axis=1)
    return resp.sum(0), first, second


def float64_m_step(moments, params64: GMMParams, covariance_type: str, reg_covar: float, prior=None,
                   covariance_model: str | None = None) -> GMMParams:
    """The package's M-step (:func:`bayesgmm._stats.m_step`: any layout, mclust model and prior)
    run eagerly in float64 on summed :func:`block_moments` about ``params64``'s means;
    ``prior`` a standardised :class:`~bayesgmm.params.PriorArrays` in float64, or None."""
    import jax

    from . import _stats

    ct = covariance_type
    nk, first, second = moments
    safe = np.maximum(nk, np.finfo(np.float64).tiny)
    offset = first / safe[:, None]  # xbar_k - mu_k
    xbar = params64.means + offset
    if ct in ("full", "tied"):
        scatter = second - safe[:, None, None] * offset[:, :, None] * offset[:, None, :]
    elif ct == "diag":
        scatter = second - safe[:, None] * offset**2
    else:
        scatter = second - safe * np.sum(offset**2, axis=1)
    model = covariance_model or _covariance_models.ALIASES[ct]
    constrained = model not in _covariance_models.NATIVE
    with jax.enable_x64(True):
        new = _stats.m_step(nk + 10 * np.finfo(np.float64).eps, xbar, scatter, ct, np.float64(reg_covar), prior,
                            constrained=constrained,
                            model_index=_covariance_models.constrained_models(ct).index(model) if constrained else 0,
                            previous=params64.covariances)
        return GMMParams(*(np.asarray(a, np.float64) for a in new))


def float64_step(prep: Prepared, params_std: GMMParams, objective: float, reg_covar: float, sample_weight=None,
                 hard: bool = False) -> Float64Step:
    """One EM step in float64 from ``params_std`` (standardised), whose float64 objective is
    ``objective``: :func:`float64_m_step` on the data's float64 :func:`block_moments`, gathered in
    row blocks on the host (soft or hard, with missing values or not; mclust's iterated models may
    lose a little). For fits in less than float64 whose rounding may have stopped EM short and
    made well-filled components look collapsed (:data:`ILL_CONDITIONED`)."""
    k, ct = params_std.means.shape[0], prep.covariance_type
    params64 = GMMParams(*(np.asarray(a, np.float64) for a in params_std))
    n = prep.arr.shape[0]
    rows = _STEP_BLOCK_ROWS if prep.observed is None else _STEP_BLOCK_ROWS // 8  # (rows, K, D, D) conditionals
    moments = (0.0, 0.0, 0.0)
    for start in range(0, n, rows):
        block = block_moments(prep.arr[start:start + rows], None if sample_weight is None else sample_weight[start:start + rows],
                              params64, prep.shift, prep.sd, ct, hard)
        moments = tuple(a + b for a, b in zip(moments, block))
    prior = None if prep.prior is None else prep.prior.standardised(prep.shift, prep.sd).arrays(k, ct, dtype=np.float64)
    new = float64_m_step(moments, params64, ct, reg_covar, prior, prep.covariance_model)
    if not all(np.all(np.isfinite(a)) for a in new):  # a step that failed: no gain to report
        return Float64Step(float("nan"), np.asarray(moments[0], np.float64), new.covariances)
    stepped = params_to_original(new, prep.shift, prep.sd, ct)
    gain = exact_objective(prep, stepped, sample_weight, hard)[1] - objective
    return Float64Step(gain, np.asarray(moments[0], np.float64), new.covariances)


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
    tol_explicit: bool = False,
) -> FitResult:
    """One run of a batched EM output as a :class:`FitResult` on the original scale.

    ``index`` selects the run; ``num_components`` (model-selection grids) keeps only the first
    K active components of a K_max-sized program. Reported totals are float64 recomputations.
    """
    k = prep.num_components if num_components is None else num_components
    ct = prep.covariance_type
    n_eff = prep.num_obs if sample_weight is None else float(np.sum(sample_weight))
    pick = lambda a: np.asarray(a[index])  # noqa: E731
    lanes = out.lanes
    params_std = GMMParams(*(pick(p) for p in lanes.params))
    if params_std.means.shape[0] != k:  # a K-sized fit inside a larger program: first K components
        c = params_std.covariances if ct == "tied" else params_std.covariances[:k]
        params_std = GMMParams(params_std.weights[:k], params_std.means[:k], c)
    n_iter = int(pick(lanes.n_iter))
    converged = bool(pick(lanes.converged))
    obj_shift = objective_shift(prep, k, sample_weight)
    params = params_to_original(params_std, prep.shift, prep.sd, ct)
    log_lik, objective, totals, counts = exact_objective(prep, params, sample_weight, hard)
    trace = pick(lanes.trace).astype(np.float64)[: n_iter + 1] + obj_shift
    trace[-1] = objective  # the float64 value at the returned parameters
    eps = float(np.finfo(prep.dtype).eps)
    per_feature = prep.covariance_model not in _covariance_models.NATIVE  # its round-off floor (_constrained)
    floor = float(pick(lanes.floor)) / n_eff
    judged = (counts, np.asarray(params_std.covariances, np.float64), eps)  # what the degeneracy flags read
    step_gain, stalled = None, False
    needed, condition = float64_step_needed(params_std.covariances, ct, prep.dtype)
    if max_iter > 0 and needed:
        # below float64 with covariances it cannot resolve: one float64 step says whether EM is
        # done, and its float64 statistics whether a component collapsed (float32's own round-off
        # floor made well-filled, nearly flat clusters look collapsed, and select then dropped them).
        # Not from covariances that are not positive definite (a failed run: its step has no meaning)
        step = float64_step(prep, params_std, objective, reg_covar, sample_weight, hard)
        if all(np.all(np.isfinite(a)) for a in (step.gain, step.counts, step.covariances)):
            step_gain = step.gain
            judged = (step.counts, step.covariances, float(np.finfo(np.float64).eps))
        if converged and stopped_short(step_gain, tol, floor, n_eff):
            converged, stalled = False, True
    degenerate_mask = _numerics.degenerate_mask(judged[0], judged[1], ct, reg_covar, judged[2], prep.arr.shape[1],
                                                per_feature=per_feature)
    degenerate = tuple(int(i) for i in np.flatnonzero(degenerate_mask))
    if warn and stalled:
        warnings.warn(stopped_short_message("EM", prep.dtype, step_gain, tol * n_eff, condition, degenerate),
                      ConvergenceWarning, stacklevel=3)
    if warn and degenerate and max_iter > 0:  # an initialisation (max_iter=0) is expected to be rough
        warnings.warn(
            _numerics.degenerate_message(degenerate, judged[0], judged[1], ct, reg_covar, judged[2], prep.arr.shape[1],
                                         map_fit=prep.prior is not None, per_feature=per_feature),
            DegenerateComponentWarning,
            stacklevel=3,
        )
    if warn and not converged and not stalled and max_iter > 0:  # max_iter=0 asks for the initialisation itself
        wander = ""
        recent = np.diff(trace[-max(10, n_iter // 10) - 1:-1])  # the program's own values (not the float64 last)
        if eps > 1e-10 and n_iter >= 20 and (recent < 0).any():  # float32 going up and down: its rounding
            wander = (" Its float32 objective went up and down over the last iterations, rounding that float64 "
                      "resolves: fit in float64 (jax.config.update('jax_enable_x64', True)).")
        warnings.warn(
            f"EM did not converge in max_iter={max_iter} iterations (tol={tol:g} per observation); increase "
            "max_iter or tol, or check the initialisation." + wander,
            ConvergenceWarning,
            stacklevel=3,
        )
    elif warn and tol_explicit and converged and floor > tol:
        warnings.warn(
            f"tol={tol:g} per observation is finer than {np.dtype(prep.dtype).name} arithmetic resolves for these "
            f"data (about {floor:.1g} per observation): EM stopped when the objective stopped changing at that "
            "precision. For a finer tolerance fit in float64 (jax.config.update('jax_enable_x64', True) and "
            "float64 data).",
            PrecisionWarning,
            stacklevel=3,
        )
    method = "hard-em" if hard else ("map-em" if prep.prior is not None else "em")
    if hard:  # with a prior its log density is part of the objective too
        objective_name = "classification_log_posterior" if prep.prior is not None else "classification_log_likelihood"
    else:
        objective_name = "log_posterior" if prep.prior is not None else "log_likelihood"
    return FitResult(
        method=method,
        covariance_type=ct,
        covariance_model=prep.covariance_model,
        weights=params.weights,
        means=params.means,
        covariances=params.covariances,
        log_likelihood=log_lik,
        converged=converged,
        n_iter=n_iter,
        trace=trace,
        objective=objective_name,
        feature_names=prep.feature_names,
        num_obs=prep.num_obs,
        degenerate_components=degenerate,
        prior=prep.prior,
        info={**info, "entropy": totals.entropy, "classification_entropy": totals.classification_entropy,
              "expected_counts": counts.tolist(), "objective_value": objective,
              "dtype": str(prep.dtype), "reg_covar": float(reg_covar), "tol": float(tol),
              "precision_floor_per_obs": floor,
              **({} if step_gain is None else {"float64_step_gain": step_gain})},
    )


# ----------------------------------------------------------------------------------------------
# Public entry point
# ----------------------------------------------------------------------------------------------
