"""ArviZ conversion of any :class:`~bayesgmm.FitResult`, and convergence diagnostics (ESS, R-hat).

:func:`to_inference_data` builds an ``arviz.InferenceData`` from the fields of a result only, so
it works for every engine. Groups:

==========================  ============================================================================
group                       content
==========================  ============================================================================
``posterior``               ``weights`` (chain, draw, component), ``means`` (chain, draw, component,
                            feature), ``covariances`` with dims by structure (below). Label-aligned
                            ``draws``; a point estimate (EM) is one chain of one draw.
``sample_stats``            sampler statistics under ArviZ's names (``lp``, ``diverging``,
                            ``acceptance_rate``, ``step_size``, ``tree_depth``, ``n_steps``, ``energy``),
                            plus ``lp`` = log p(x, theta) when it can be computed.
``log_likelihood``          ``x`` (chain, draw, obs): per-observation marginal log-likelihood,
                            z summed out, so ``az.loo`` / ``az.waic`` are right (needs ``x``).
``observed_data``           ``x`` (obs, feature) (needs ``x``).
``posterior_predictive``    ``x`` (chain, draw, obs, feature): data sets simulated from the model at
                            each draw (``posterior_predictive=True``).
``point_estimate``          the result's ``weights``, ``means``, ``covariances`` (exact round trip).
``fit_trace``               ``objective`` (iteration): the engine's objective trace (see ``attrs``).
``raw_posterior``           ``raw_draws`` before label alignment, when they differ from ``draws``.
``predictive``              the closed-form predictive (VB), when present: ``weights``, ``loc``,
                            ``scale`` and ``df`` of a Student-t mixture (``scale`` (component,
                            feature, feature_bis)), or for diagonal covariances of a mixture of
                            products of univariate t's (``scale`` (component, feature)).
==========================  ============================================================================

``covariances`` dims: ``(component, feature, feature_bis)`` full, ``(component, feature)`` diag,
``(component,)`` spherical, ``(feature, feature_bis)`` tied. Coordinates: ``component`` 0..K-1,
``feature`` and ``feature_bis`` the result's feature names (DataFrame column names when given).

``idata.attrs`` holds ``inference_library="bayesgmm"``, its version, ``method``,
``covariance_type`` and one JSON string ``bayesgmm_result`` with every remaining field (prior,
info, convergence facts), so :func:`bayesgmm.storage.from_inference_data` rebuilds the result
exactly; :mod:`bayesgmm.storage` writes and reads that as NetCDF (nothing is pickled).

ArviZ and xarray are imported inside the functions, so ``import bayesgmm`` stays light.
"""

from __future__ import annotations

import functools
import json
import warnings

import jax
import jax.numpy as jnp
import numpy as np

from . import _numerics
from ._compile import jit
from ._files import jsonable, unjsonable_keys
from ._sharding import row_bucket
from .params import GMMParams, PriorArrays, check_data, seed_to_key

__all__ = ["ess_bulk", "rhat", "to_inference_data"]

def import_arviz():
    """ArviZ, imported without its import-time ``FutureWarning`` about its coming refactor (ArviZ
    0.22-0.23 print it on the first import of each day; it says nothing about the user's fit). Its
    message starts with a newline.

    That first import also writes a day stamp in the user's cache folder, by a rename that fails
    with ``FileNotFoundError`` when another process writes it at the same moment (parallel test
    workers, a process pool). The stamp is then there, and a second import succeeds."""
    from ._executors import recorded_warnings

    with recorded_warnings("ignore", FutureWarning, message=r"\s*ArviZ is undergoing a major refactor"):
        try:
            import arviz
        except FileNotFoundError:  # another process renamed the stamp first: it is written
            import arviz

    return arviz


#: NumPyro ``extra_fields`` name -> (ArviZ name, sign), as arviz.io_numpyro renames them.
NUMPYRO_STAT_NAMES = {
    "potential_energy": ("lp", -1.0),
    "accept_prob": ("acceptance_rate", 1.0),
    "adapt_state.step_size": ("step_size", 1.0),
    "num_steps": ("n_steps", 1.0),
}

META_KEY = "bayesgmm_result"


# ----------------------------------------------------------------------------------------------
# Convergence diagnostics in NumPy (no ArviZ import on the sampler's path)
# ----------------------------------------------------------------------------------------------
def _chains_last(draws) -> np.ndarray:
    """(chain, draw, ...) -> (chain, draw, P) float64, the scalars flattened."""
    a = np.asarray(draws, dtype=np.float64)
    if a.ndim < 2:
        raise ValueError(f"draws must have leading (chain, draw) dimensions, got shape {a.shape}.")
    return a.reshape(a.shape[0], a.shape[1], -1)


def _split_chains(a: np.ndarray) -> np.ndarray:
    """Each chain's first and last halves as two chains (the middle draw of an odd count dropped)."""
    half = a.shape[1] // 2
    return np.concatenate([a[:, :half], a[:, a.shape[1] - half :]], axis=0)


def average_ranks(a: np.ndarray) -> np.ndarray:
    """Ranks 1..n of every column of ``a`` (n, p), tied values sharing their average rank, and
    NaN for a column with a NaN (as ``scipy.stats.rankdata(a, method="average", axis=0)``,
    without importing ``scipy.stats``, which took 0.4 s of a first sampler fit)."""
    n = a.shape[0]
    order = np.argsort(a, axis=0, kind="stable")
    ordered = np.take_along_axis(a, order, axis=0)
    position = np.broadcast_to(np.arange(n)[:, None], a.shape)
    starts = np.ones(a.shape, bool)
    starts[1:] = ordered[1:] != ordered[:-1]  # the first of each run of equal values
    ends = np.ones(a.shape, bool)
    ends[:-1] = starts[1:]  # the last of each run
    first = np.maximum.accumulate(np.where(starts, position, 0), axis=0)
    last = (n - 1) - np.maximum.accumulate(np.where(ends, n - 1 - position, 0)[::-1], axis=0)[::-1]
    ranks = np.empty(a.shape, np.float64)
    np.put_along_axis(ranks, order, 0.5 * (first + last) + 1.0, axis=0)
    ranks[:, np.isnan(a).any(axis=0)] = np.nan  # as rankdata's default nan_policy ("propagate")
    return ranks


# Wichura's algorithm AS 241 (PPND16; Applied Statistics 37, 477-484, 1988): the standard normal
# quantile to about 1e-16 relative, as rational functions of the probability in three ranges.
_AS241_CENTRAL = (
    (3.3871328727963666080e0, 1.3314166789178437745e2, 1.9715909503065514427e3, 1.3731693765509461125e4,
     4.5921953931549871457e4, 6.7265770927008700853e4, 3.3430575583588128105e4, 2.5090809287301226727e3),
    (1.0, 4.2313330701600911252e1, 6.8718700749205790830e2, 5.3941960214247511077e3,
     2.1213794301586595867e4, 3.9307895800092710610e4, 2.8729085735721942674e4, 5.2264952788528545610e3),
)
_AS241_INTERMEDIATE = (
    (1.42343711074968357734e0, 4.63033784615654529590e0, 5.76949722146069140550e0, 3.64784832476320460504e0,
     1.27045825245236838258e0, 2.41780725177450611770e-1, 2.27238449892691845833e-2, 7.74545014278341407640e-4),
    (1.0, 2.05319162663775882187e0, 1.67638483018380384940e0, 6.89767334985100004550e-1,
     1.48103976427480074590e-1, 1.51986665636164571966e-2, 5.47593808499534494600e-4, 1.05075007164441684324e-9),
)
_AS241_TAIL = (
    (6.65790464350110377720e0, 5.46378491116411436990e0, 1.78482653991729133580e0, 2.96560571828504891230e-1,
     2.65321895265761230930e-2, 1.24266094738807843860e-3, 2.71155556874348757815e-5, 2.01033439929228813265e-7),
    (1.0, 5.99832206555887937690e-1, 1.36929880922735805310e-1, 1.48753612908506148525e-2,
     7.86869131145613259100e-4, 1.84631831751005468180e-5, 1.42151175831644588870e-7, 2.04426310338993978564e-15),
)


def _rational(coefficients, r):
    numerator, denominator = (np.polynomial.polynomial.polyval(r, c) for c in coefficients)
    return numerator / denominator


def normal_quantile(p) -> np.ndarray:
    """The standard normal quantile (``scipy.special.ndtri``) of probabilities ``p`` in (0, 1), in
    NumPy (Wichura's AS 241, within about 1e-15 of it relative): the rank normalisation of every
    sampler fit's diagnostics needs it, and importing ``scipy.special`` for it cost a second NUTS
    process about 0.04 s (0.14 s against 0.10 s outside compiling and sampling, medians of 5).
    0 and 1 give -inf and inf, NaN and values outside [0, 1] NaN."""
    p = np.asarray(p, np.float64)
    q = p - 0.5
    with np.errstate(divide="ignore", invalid="ignore"):
        central = q * _rational(_AS241_CENTRAL, 0.180625 - q * q)
        r = np.sqrt(-np.log(np.minimum(p, 1.0 - p)))
        outer = np.where(r <= 5.0, _rational(_AS241_INTERMEDIATE, r - 1.6), _rational(_AS241_TAIL, r - 5.0))
    z = np.where(np.abs(q) <= 0.425, central, np.copysign(np.where(r == np.inf, np.inf, outer), q))
    return np.where((p >= 0.0) & (p <= 1.0), z, np.nan)


def _z_scale(a: np.ndarray) -> np.ndarray:
    """Rank normalisation per scalar over all chains and draws (average ranks for ties)."""
    c, s, p = a.shape
    ranks = average_ranks(a.reshape(c * s, p)).reshape(c, s, p)
    return normal_quantile((ranks - 0.375) / (c * s + 0.25))


def _autocovariance(a: np.ndarray) -> np.ndarray:
    """Biased autocovariance of every chain and scalar along the draws (FFT), (C, S, P)."""
    s = a.shape[1]
    size = 1 << int(np.ceil(np.log2(2 * s)))
    f = np.fft.rfft(a - a.mean(axis=1, keepdims=True), n=size, axis=1)
    return np.fft.irfft(f * np.conj(f), n=size, axis=1)[:, :s] / s


def _ess(a: np.ndarray) -> np.ndarray:
    """Effective sample size of (C, S, P) draws: Stan's estimator (Geyer's initial positive and
    monotone sequences on the multi-chain autocorrelation; Vehtari et al. 2021, eq. 10-12)."""
    c, s, p = a.shape
    acov = _autocovariance(a)
    mean_var = acov[:, 0].mean(axis=0) * s / (s - 1.0)
    var_plus = mean_var * (s - 1.0) / s
    if c > 1:
        var_plus = var_plus + a.mean(axis=1).var(axis=0, ddof=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        rho = 1.0 - (mean_var - acov.mean(axis=0)) / var_plus  # (S, P) autocorrelation at each lag
    out = np.empty(p)
    for j in range(p):
        r = rho[:, j]
        if not np.all(np.isfinite(r)):  # a constant scalar
            out[j] = np.nan
            continue
        rho_hat = np.zeros(s)
        rho_hat[0], rho_hat[1] = 1.0, r[1]
        even, odd = 1.0, r[1]
        t = 1
        while t < s - 3 and even + odd > 0.0:  # initial positive sequence of pair sums
            even, odd = r[t + 1], r[t + 2]
            if even + odd >= 0.0:
                rho_hat[t + 1], rho_hat[t + 2] = even, odd
            t += 2
        max_t = t - 2
        if even > 0:
            rho_hat[max_t + 1] = even
        t = 1
        while t <= max_t - 2:  # initial monotone sequence
            if rho_hat[t + 1] + rho_hat[t + 2] > rho_hat[t - 1] + rho_hat[t]:
                rho_hat[t + 1] = rho_hat[t + 2] = (rho_hat[t - 1] + rho_hat[t]) / 2.0
            t += 2
        tau = -1.0 + 2.0 * np.sum(rho_hat[: max_t + 1]) + np.sum(rho_hat[max_t + 1 : max_t + 2])
        out[j] = c * s / max(tau, 1.0 / np.log10(c * s))
    return out


def ess_bulk(draws) -> np.ndarray:
    """Bulk effective sample size of every scalar: the ESS of the rank-normalised split chains
    (Vehtari, Gelman, Simpson, Carpenter & Bürkner 2021), as ``arviz.ess(method="bulk")``.

    Parameters
    ----------
    draws : array (chain, draw, ...)
        Posterior draws of one quantity, chains first; every trailing position is a separate
        scalar. At least two dimensions.

    Returns
    -------
    np.ndarray
        One value per scalar (the trailing dimensions flattened); NaN for a constant scalar.
    """
    return _ess(_z_scale(_split_chains(_chains_last(draws))))


def rhat(draws) -> np.ndarray:
    """Rank-normalised split R-hat of every scalar (Vehtari et al. 2021), as ``arviz.rhat``: the
    larger of the R-hat of the rank-normalised split chains and of their folded version.

    Parameters
    ----------
    draws : array (chain, draw, ...)
        Posterior draws of one quantity, chains first; every trailing position is a separate
        scalar. At least two dimensions.

    Returns
    -------
    np.ndarray
        One value per scalar; NaN for a constant scalar.

    """
    a = _chains_last(draws)

    def gelman_rubin(z):
        c, s, _ = z.shape
        within = z.var(axis=1, ddof=1).mean(axis=0)
        between = s * z.mean(axis=1).var(axis=0, ddof=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.sqrt(((s - 1.0) / s * within + between / s) / within)

    split = _split_chains(a)  # an odd draw count drops the middle draw; the fold's median is of these, as ArviZ's
    folded = np.abs(split - np.median(split, axis=(0, 1), keepdims=True))
    bulk, tail = gelman_rubin(_z_scale(split)), gelman_rubin(_z_scale(folded))
    constant = np.ptp(a.reshape(-1, a.shape[2]), axis=0) == 0
    return np.where(constant, np.nan, np.maximum(bulk, tail))


FORMAT_VERSION = 1


def _cov_dims(covariance_type: str) -> list[str]:
    return {
        "full": ["component", "feature", "feature_bis"],
        "diag": ["component", "feature"],
        "spherical": ["component"],
        "tied": ["feature", "feature_bis"],
    }[covariance_type]


def _param_dims(covariance_type: str, lead=()) -> dict:
    lead = list(lead)
    return {
        "weights": lead + ["component"],
        "means": lead + ["component", "feature"],
        "covariances": lead + _cov_dims(covariance_type),
    }


# ----------------------------------------------------------------------------------------------
# Jitted kernels (one compiled program per shape; draws are vmapped, never looped)
# ----------------------------------------------------------------------------------------------
@functools.partial(jit, static_argnames=("covariance_type",))
def log_prior_draws(weights, means, covariances, prior_arrays, covariance_type):
    """Log prior density per draw. Weights that underflowed to 0 (draws from a sparse Dirichlet,
    concentration << 1) are floored at the smallest normal number: the density stays finite."""
    from .model import log_prior

    weights = _numerics.floored_weights(weights)
    return jax.vmap(lambda w, m, c: log_prior(GMMParams(w, m, c), prior_arrays, covariance_type))(
        weights, means, covariances
    )


@functools.partial(jit, static_argnames=("num_obs", "covariance_type"))
def _simulate_draws(keys, weights, means, covariances, num_obs, covariance_type):
    """One simulated data set (num_obs, D) per draw: the model run forward, vmapped over draws.
    JAX draws by position, so the first n rows of a larger ``num_obs`` are the data set of n."""
    from .model import simulate

    def one(key, w, m, c):
        return simulate(key, GMMParams(w, m, c), num_obs, covariance_type)[0]

    return jax.vmap(one)(keys, weights, means, covariances)


# ----------------------------------------------------------------------------------------------
# FitResult -> InferenceData
# ----------------------------------------------------------------------------------------------
def _posterior_arrays(result):
    """Draws as (C, S, ...) float64 arrays; a point estimate becomes one chain of one draw."""
    if result.draws is None:
        names = ("weights", "means", "covariances")
        return {name: np.asarray(v, dtype=np.float64)[None, None] for name, v in zip(names, result.params)}
    missing = [n for n in ("weights", "means", "covariances") if n not in result.draws]
    if missing:
        raise ValueError(f"result.draws lacks {missing}; draws need 'weights', 'means' and 'covariances'.")
    out = {n: np.asarray(result.draws[n], dtype=np.float64) for n in ("weights", "means", "covariances")}
    k, d = result.num_components, result.num_features
    w, m, c = out["weights"], out["means"], out["covariances"]
    expected_cov = {"full": (k, d, d), "diag": (k, d), "spherical": (k,), "tied": (d, d)}[result.covariance_type]
    if w.ndim != 3 or w.shape[2:] != (k,) or m.shape != w.shape[:2] + (k, d) or c.shape != w.shape[:2] + expected_cov:
        raise ValueError(
            "result.draws must hold arrays of shape (chains, draws, ...): weights (C, S, K), means "
            f"(C, S, K, D), covariances (C, S) + {expected_cov} for covariance_type="
            f"{result.covariance_type!r}; got {w.shape}, {m.shape}, {c.shape}."
        )
    return out


def _flat(a):
    return a.reshape((a.shape[0] * a.shape[1],) + a.shape[2:])


def _sample_stats_arrays(result, chains, draws):
    """Rename NumPyro's statistics to ArviZ's; returns (data, [[original, stored, sign], ...])."""
    data, mapping = {}, []
    stats = dict(result.sample_stats or {})
    for name, value in stats.items():
        value = np.asarray(value)
        if value.shape[:2] != (chains, draws):
            raise ValueError(
                f"result.sample_stats[{name!r}] has shape {value.shape}; sampler statistics must have "
                f"leading shape (chains, draws) = {(chains, draws)}."
            )
        target, sign = NUMPYRO_STAT_NAMES.get(name, (name, 1.0))
        if target != name and (target in stats or target in data):
            target, sign = name, 1.0  # the engine already gave ArviZ's name: keep both as they are
        data[target] = -value if sign < 0 else value
        mapping.append([name, target, sign])
    if "num_steps" in stats and "tree_depth" not in data:
        data["tree_depth"] = np.log2(np.maximum(np.asarray(stats["num_steps"]), 1)).astype(int) + 1
    return data, mapping


def _metadata(result, sample_stats_map, raw_mode) -> str:
    meta = {
        "format_version": FORMAT_VERSION,
        "method": result.method,
        "covariance_type": result.covariance_type,
        "covariance_model": result.covariance_model,
        "log_likelihood": float(result.log_likelihood),
        "converged": bool(result.converged),
        "n_iter": int(result.n_iter),
        "objective": result.objective,
        "feature_names": list(result.feature_names),
        "num_obs": int(result.num_obs),
        "degenerate_components": [int(i) for i in result.degenerate_components],
        "prior": None if result.prior is None else result.prior.to_dict(),
        "info": {str(k): jsonable(v) for k, v in dict(result.info).items()},
        "has_draws": result.draws is not None,
        "raw_draws": raw_mode,
        "sample_stats_map": sample_stats_map,
        "has_predictive": result.predictive is not None,
    }
    bad = unjsonable_keys(result.info)
    if bad:  # kept as text rather than failing the whole file; said, not silent
        warnings.warn(f"info entries {bad} hold values JSON cannot store; they are stored as their repr() text.",
                      UserWarning, stacklevel=4)
    return json.dumps(meta, default=repr)


def _raw_mode(result) -> str:
    if result.raw_draws is None:
        return "none"
    if result.draws is not None and all(
        n in result.raw_draws and np.array_equal(np.asarray(result.raw_draws[n]), np.asarray(result.draws[n]))
        for n in ("weights", "means", "covariances")
    ):
        return "same"
    return "stored"


def to_inference_data(result, x=None, *, posterior_predictive: bool = False, num_predictive=None, seed=0):
    """ArviZ ``InferenceData`` of a fit (see the module docstring for the groups and dims).

    Parameters
    ----------
    result : FitResult
        Any engine's result. With ``draws`` the posterior is the label-aligned draws; without
        (EM) it is the point estimate as one chain of one draw: ``az.summary`` and the plots
        work, ``az.waic`` gives the plug-in log-likelihood (no spread, so no penalty), and
        ``az.loo`` / ``az.compare`` refuse it, as they must (Pareto-smoothed importance sampling
        needs posterior draws; ArviZ 0.23 raises an ``IndexError`` there). Compare EM fits by :meth:`FitResult.bic` or
        :func:`bayesgmm.select`, or fit a Bayesian engine for LOO.
    x : array (N, D) or DataFrame, optional
        Data for the ``log_likelihood`` and ``observed_data`` groups (usually the training data).
        ``log_likelihood`` is the per-observation marginal density with z summed out, computed
        for all draws in one jitted, vmapped call.
    posterior_predictive : bool
        Add a ``posterior_predictive`` group: one data set of N rows (N of ``x``, else the
        training size) simulated from the model at each draw.
    num_predictive : int, optional
        Draws per chain to simulate from (evenly thinned; all by default). For a point estimate
        it is the number of replicated data sets (default 1).
    seed : int or jax key
        Seed of the posterior predictive simulation; the same seed gives the same data sets.

    Returns
    -------
    arviz.InferenceData

    Notes
    -----
    ``sample_stats.lp``: the engine's value under ArviZ's name when present (NUTS and Gibbs:
    ``log p(x, theta)`` of the aligned draw on the original scale; NUTS's
    ``potential_energy`` in its unconstrained parameterisation is kept beside it); otherwise,
    when computable, ``log p(x | theta) + log p(theta)`` on the original scale (the log prior
    only when the result has a prior; without ``x`` only for a point estimate, from
    ``result.log_likelihood``).

    What ArviZ takes and what it needs told:

    * ``observed_data`` and ``posterior_predictive`` hold rows of D features (dims ``obs``,
      ``feature``) while ``log_likelihood`` has one value per row (z and the features summed
      out), so ``az.loo_pit`` and ``az.plot_loo_pit`` need one feature given as arrays:
      ``az.loo_pit(idata, y=idata.observed_data.x.sel(feature=f).values,
      y_hat=idata.posterior_predictive.x.sel(feature=f).stack(s=("chain", "draw")).values)``;
      ``az.plot_ppc`` pools the features into one curve unless given ``flatten=["obs"]``.
    * The ``point_estimate`` and ``fit_trace`` groups (and VB's ``predictive``) have no chain
      and draw: ``az.concat`` over chains or draws needs them dropped first (keep the
      standard groups: ``az.InferenceData(**{g: idata[g] for g in ("posterior",
      "sample_stats", "log_likelihood", "observed_data")})``).
    * A point estimate's ``az.waic`` has no penalty: ``az.compare(..., ic="waic")`` ranks such
      fits first by construction. Compare point fits by BIC, and posterior fits by LOO.
    """
    az = import_arviz()

    import bayesgmm

    ct = result.covariance_type
    k, d = result.num_components, result.num_features
    post = _posterior_arrays(result)
    chains, draws = post["weights"].shape[:2]
    names = [str(n) for n in result.feature_names]
    coords = {"component": np.arange(k), "feature": names, "feature_bis": names}
    lib = {"inference_library": "bayesgmm", "inference_library_version": bayesgmm.__version__}
    attrs = dict(lib, method=result.method, covariance_type=ct, covariance_model=result.covariance_model)
    dims = _param_dims(ct, ())

    def dataset(data, dims_, default_dims=None, extra_coords=None, extra_attrs=None):
        return az.dict_to_dataset(
            data,
            attrs=dict(attrs, **(extra_attrs or {})),
            coords=dict(coords, **(extra_coords or {})),
            dims=dims_,
            default_dims=default_dims,
        )

    groups = {"posterior": dataset(post, dims)}

    # Reported totals in float64 (the log-likelihood on the host, the prior's part with x64 on for
    # that call). Data, means and the prior mean are centred on the mixture mean in float64 first:
    # densities are translation invariant, and data far from zero keep their precision.
    frame = result._frame()
    origin = frame.shift
    arr = None
    if x is not None:
        arr, _ = check_data(x, num_features=d, allow_constant=True, feature_names=result.feature_names,
                        missing="marginalize")  # NaN: missing values, each row scored on its observed columns
    centred_means = np.asarray(_flat(post["means"]), np.float64) - origin

    stats, stats_map = _sample_stats_arrays(result, chains, draws)
    loglik = None
    if arr is not None:
        # per draw and row, float64 on the host (no compilation, whatever N): LOO and WAIC read these
        n = arr.shape[0]
        loglik = _numerics.draws_log_density(
            arr, *(np.asarray(_flat(post[name]), np.float64) for name in ("weights", "means", "covariances")), ct,
            frame=frame).reshape(chains, draws, n)
        groups["log_likelihood"] = dataset({"x": loglik}, {"x": ["obs"]}, extra_coords={"obs": np.arange(n)})
        groups["observed_data"] = dataset(
            {"x": np.asarray(arr)}, {"x": ["obs", "feature"]}, default_dims=[], extra_coords={"obs": np.arange(n)}
        )
    if "lp" not in stats:
        total = None
        if loglik is not None:
            total = loglik.sum(axis=-1)
        elif result.draws is None:
            total = np.full((1, 1), float(result.log_likelihood))
        if total is not None:
            if result.prior is not None:
                # in float64, as every reported total: in float32 weights below its smallest normal
                # (a sparse Dirichlet's draws hold weights of 1e-234) were floored at 1.2e-38, tens
                # to hundreds of nats off the prior density of the draws
                pa = result.prior.arrays(k, ct)
                pa = PriorArrays(*(np.asarray(a, np.float64) for a in pa._replace(mean=pa.mean - origin)))
                with jax.enable_x64(True):  # the draws are float64 already (_posterior_arrays)
                    prior_part = log_prior_draws(_flat(post["weights"]), centred_means, _flat(post["covariances"]), pa,
                                                 covariance_type=ct)
                    total = total + np.asarray(prior_part, np.float64).reshape(chains, draws)
            stats["lp"] = total
    if stats:
        groups["sample_stats"] = dataset(stats, None)

    if posterior_predictive:
        groups["posterior_predictive"] = _posterior_predictive(
            result, post, arr.shape[0] if arr is not None else result.num_obs, num_predictive, seed, dataset
        )

    groups["point_estimate"] = dataset(
        {n: np.asarray(v, dtype=np.float64) for n, v in zip(("weights", "means", "covariances"), result.params)},
        dims,
        default_dims=[],
    )
    trace = np.asarray(result.trace, dtype=np.float64).reshape(-1)
    groups["fit_trace"] = dataset(
        {"objective": trace},
        {"objective": ["iteration"]},
        default_dims=[],
        extra_coords={"iteration": np.arange(trace.shape[0])},
        extra_attrs={"objective": result.objective},
    )
    raw_mode = _raw_mode(result)
    if raw_mode == "stored":
        raw = {n: np.asarray(result.raw_draws[n], dtype=np.float64) for n in ("weights", "means", "covariances")}
        groups["raw_posterior"] = dataset(raw, dims)
    if result.predictive is not None:
        w, loc, scale, df = (np.asarray(a, dtype=np.float64) for a in result.predictive)
        groups["predictive"] = dataset(
            {"weights": w, "loc": loc, "scale": scale, "df": df},
            {
                "weights": ["component"],
                "loc": ["component", "feature"],
                "scale": ["component", "feature", "feature_bis"] if scale.ndim == 3 else ["component", "feature"],
                "df": ["component"],
            },
            default_dims=[],
        )
    idata_attrs = dict(attrs, **{META_KEY: _metadata(result, stats_map, raw_mode)})
    return az.InferenceData(attrs=idata_attrs, **groups)


def _posterior_predictive(result, post, num_obs, num_predictive, seed, dataset):
    chains, draws = post["weights"].shape[:2]
    if num_predictive is None:
        idx = np.arange(draws)
    else:
        if isinstance(num_predictive, bool) or not isinstance(num_predictive, (int, np.integer)) or num_predictive < 1:
            raise ValueError(f"num_predictive must be a positive integer or None, got {num_predictive!r}.")
        if draws == 1:
            idx = np.zeros(int(num_predictive), dtype=int)  # replicated data sets from one point
        elif num_predictive > draws:
            raise ValueError(
                f"num_predictive={num_predictive} exceeds the {draws} draws per chain; pass at most "
                f"{draws} (or None for all)."
            )
        else:
            idx = np.unique(np.round(np.linspace(0, draws - 1, int(num_predictive))).astype(int))
    sel = {n: v[:, idx] for n, v in post.items()}
    m = idx.shape[0]
    keys = jax.random.split(seed_to_key(seed), chains * m)
    # simulated in the mixture's own frame (centred, each feature on its own scale: data in any
    # units stay within the compute type's range), mapped back in float64
    frame = result._frame()
    w, mu, cov, frame_ct = _numerics.to_frame(frame, *(_flat(sel[name]) for name in ("weights", "means", "covariances")),
                                              result.covariance_type)
    sims = _simulate_draws(
        keys, jnp.asarray(w), jnp.asarray(mu), jnp.asarray(cov),
        num_obs=row_bucket(int(num_obs)),  # one program for every N of the bucket: its first rows kept
        covariance_type=frame_ct,
    )
    sims = np.asarray(sims, np.float64)[:, :num_obs] * frame.scale + frame.shift
    sims = sims.reshape(chains, m, num_obs, result.num_features)
    draw_coord = idx if draws > 1 else np.arange(m)
    return dataset(
        {"x": sims},
        {"x": ["obs", "feature"]},
        extra_coords={"obs": np.arange(num_obs), "draw": draw_coord},
    )
