r"""Simulation-based calibration (SBC) of the Bayesian engines (Talts et al. 2018, arXiv:1804.06788).

If an engine returns draws from the exact posterior, then for parameters drawn from the prior and
data simulated from the model at them, the rank of any test quantity of the prior draw among
``L`` posterior draws is uniform on ``0..L``:

.. code-block:: text

    for r = 1..R:
        theta_r ~ p(theta)                              bayesgmm.model.sample_prior
        x_r ~ p(x | theta_r)                            bayesgmm.model.simulate (N observations)
        theta_r^(1..L) ~ engine posterior given x_r     fit_vb / fit_svi / fit_mcmc, same Prior
        rank_r = #{l : f(theta_r^(l)) < f(theta_r)}     ties broken at random

A non-uniform rank histogram shows a miscalibrated posterior: a U shape a posterior that is too
narrow, a hump one that is too wide, a slope a biased one. The prior, the model and the engine are
checked together; an exact engine passes whatever the prior, so choose a prior whose draws give
data sets the engine can handle.

Test quantities
---------------
A mixture's posterior is invariant to relabelling the components, so component-wise parameters
are not test quantities; label-invariant functions of the parameters are
(:func:`bayesgmm.labels.invariant_summaries`):

``sorted_means[k]``
    the component means of feature ``feature`` in ascending order, ``k = 0..K-1``;
``sorted_weights[k]``
    the weights in ascending order, ``k = 0..K-2`` (the largest is one minus the others, and for
    ``K = 1`` there is none);
``log_likelihood``
    ``log p(x_r | theta)``, the total log-likelihood of the simulated data set (z summed out),
    evaluated at the prior draw and at each posterior draw (a data-dependent test quantity, as
    Talts et al. recommend);
``mixture_mean[j]``, ``mixture_variance[j]``
    mean and variance of feature ``j`` under the mixture distribution of ``theta``.

Uniformity tests
----------------
Per quantity, on the ranks of the R replications:

* a chi-square test on the rank histogram with the bins of :func:`rank_bins` (at most 20 bins,
  with about ``R / 10`` or more replications expected per bin, so at least 5 when R >= 50);
* the ECDF test of Säilynoja, Bürkner & Vehtari (2022, *Statistics and Computing* 32:32): the
  statistic is the smallest two-sided binomial tail probability of the rank ECDF over the
  evaluation points ``z_i = i / (L + 1)``; its null distribution is simulated (``num_simulations``
  draws), and the same simulation gives the simultaneous confidence band of :func:`ecdf_band`.

Several quantities are tested at once; a small p-value for one of Q quantities is expected with
probability about ``Q`` times the nominal level (compare the smallest p-value with ``level / Q``).

Engines compile once per data shape; every replication has the same shapes, so one SBC run
compiles each engine program once, and the prior draw and data simulation one more program
(compiled once per K, structure and N, whatever the number of replications).
"""

from __future__ import annotations

import functools
import time
import warnings
from typing import Callable, Mapping, NamedTuple

import jax
import numpy as np

from . import _numerics
from ._checkpoint import category_name, describe, json_codec, open_checkpoint, warning_category
from ._compile import jit
from ._executors import FIT_ERRORS, check_executor, recorded_warnings, run_tasks
from ._files import jsonable
from .engines import check_engine_options, engine_names, get_engine
from .labels import invariant_summaries
from .model import sample_prior, simulate
from .params import (
    ConvergenceWarning,
    GMMParams,
    Prior,
    check_covariance_type,
    check_int,
    check_num_components,
    seed_to_key,
)
from .ranks import NUM_SIMULATIONS, ECDFBand, SBCResult, ecdf_band, rank_bins, uniformity_tests

__all__ = [
    "ECDFBand",
    "METHODS",
    "QUANTITIES",
    "SBCResult",
    "ecdf_band",
    "rank_bins",
    "sbc",
    "uniformity_tests",
]

#: The engines SBC calibrates: those that return posterior draws.
METHODS = engine_names(draws=True)
#: The label-invariant test quantities whose ranks SBC checks.
QUANTITIES = ("sorted_means", "sorted_weights", "log_likelihood", "mixture_mean", "mixture_variance")
_ENGINE_DEFAULTS = {
    "vb": {},
    "svi": {},
    "mcmc": {"num_warmup": 500, "num_samples": 500, "num_chains": 2},
    "gibbs": {"num_warmup": 200, "num_samples": 500, "num_chains": 2},
}
_RESERVED = ("x", "num_components", "prior", "covariance_type", "seed")
_INFO_FACTS = ("num_divergences", "max_rhat", "min_ess_bulk", "elbo", "label_switch_fraction")


# ----------------------------------------------------------------------------------------------
# Test quantities
# ----------------------------------------------------------------------------------------------
def _total_log_likelihood(x: np.ndarray, weights, means, covariances, covariance_type: str) -> np.ndarray:
    """log p(x | theta_p) summed over observations for P parameter sets, float64 NumPy, shape (P,)."""
    return _numerics.draws_log_density(x, weights, means, covariances, covariance_type).sum(axis=-1)


def _quantity_names(quantities, k: int, d: int) -> list:
    names = []
    for q in QUANTITIES:
        if q not in quantities:
            continue
        if q == "sorted_means":
            names += [f"sorted_means[{i}]" for i in range(k)]
        elif q == "sorted_weights":
            names += [f"sorted_weights[{i}]" for i in range(k - 1)]
        elif q == "log_likelihood":
            names.append("log_likelihood")
        elif q == "mixture_mean":
            names += [f"mixture_mean[{j}]" for j in range(d)]
        else:
            names += [f"mixture_variance[{j}]" for j in range(d)]
    return names


def _test_quantities(x, weights, means, covariances, covariance_type, quantities, feature) -> np.ndarray:
    """Test quantities of P parameter sets, shape (P, Q), in the order of :func:`_quantity_names`."""
    draws = {"weights": weights, "means": means, "covariances": covariances}
    summ = invariant_summaries(draws, covariance_type, feature=feature)
    cols = []
    for q in QUANTITIES:
        if q not in quantities:
            continue
        if q == "sorted_means":
            cols.append(summ["sorted_means"])
        elif q == "sorted_weights":
            cols.append(summ["sorted_weights"][:, :-1])
        elif q == "log_likelihood":
            cols.append(_total_log_likelihood(x, weights, means, covariances, covariance_type)[:, None])
        elif q == "mixture_mean":
            cols.append(summ["mixture_mean"])
        else:
            cols.append(np.diagonal(summ["mixture_cov"], axis1=-2, axis2=-1))
    return np.concatenate(cols, axis=1)


def _ranks(post: np.ndarray, at_truth: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Rank of each quantity's true value among its L posterior values (``post`` (L, Q)), in ``0..L``.

    ``#{l : post[l] < truth}`` plus, for the ``e`` draws equal to the truth, a uniform integer in
    ``0..e`` (random tie-breaking keeps the ranks of a calibrated engine uniform).
    """
    less = np.sum(post < at_truth[None], axis=0)
    equal = np.sum(post == at_truth[None], axis=0)
    return less + rng.integers(0, equal + 1)


# ----------------------------------------------------------------------------------------------
# Simulation of each replication: one compiled program per shape
# ----------------------------------------------------------------------------------------------
@functools.partial(jit, static_argnames=("num_components", "covariance_type", "num_obs"))
def _simulate_replication(key, replication, prior, *, num_components: int, covariance_type: str, num_obs: int):
    """Replication ``replication``'s prior draw, data set and keys, as one compiled program.

    The replication's key is ``fold_in(key, replication)``, so replication r is the same whatever
    the number of replications. Returns ``(params, x (N, D), z (N,), fit_key, tie_key)``.
    """
    k_prior, k_data, k_fit, k_tie = jax.random.split(jax.random.fold_in(key, replication), 4)
    params = sample_prior(k_prior, prior, num_components, covariance_type)
    x, z = simulate(k_data, params, num_obs, covariance_type)
    return params, x, z, k_fit, k_tie


# ----------------------------------------------------------------------------------------------
# Argument checks
# ----------------------------------------------------------------------------------------------
def _engine(method, covariance_type: str, num_ranks: int, engine_kwargs):
    """The fit function, its keyword arguments and the method's name."""
    if engine_kwargs is None:
        engine_kwargs = {}
    if not isinstance(engine_kwargs, Mapping):
        raise ValueError(f"engine_kwargs must be a dict of keyword arguments for the engine, got {engine_kwargs!r}.")
    reserved = sorted(set(engine_kwargs) & set(_RESERVED))
    if reserved:
        raise ValueError(
            f"engine_kwargs must not set {reserved}: sbc passes the simulated data, num_components, "
            "the prior, covariance_type and a per-replication seed itself. Give them as sbc's own arguments."
        )
    if callable(method):
        return method, dict(engine_kwargs), getattr(method, "__name__", repr(method))
    engine = get_engine(method, draws=True, purpose="(or a fit function) for SBC")
    engine.check_covariance_type(covariance_type)
    kwargs = {**engine.options, **_ENGINE_DEFAULTS.get(method, {}), **engine_kwargs}
    fit = engine.load()
    check_engine_options(fit, method, engine_kwargs)  # before any replication runs
    if method in ("vb", "svi"):
        kwargs.setdefault("num_draws", num_ranks)
        available, what = kwargs["num_draws"], "num_draws"
    else:
        available = kwargs["num_samples"] * kwargs["num_chains"]
        what = "num_samples * num_chains"
    if isinstance(available, (int, np.integer)) and available < num_ranks:
        raise ValueError(
            f"engine_kwargs give {what} = {available} posterior draws per fit, fewer than "
            f"num_ranks={num_ranks}; raise {what} or lower num_ranks."
        )
    return fit, kwargs, method


def _key_data(key) -> np.ndarray:
    if jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key):
        key = jax.random.key_data(key)
    return np.asarray(key, dtype=np.uint32)


# ----------------------------------------------------------------------------------------------
# Public entry point
# ----------------------------------------------------------------------------------------------
class _ReplicationTask(NamedTuple):
    """What every SBC replication needs (picklable, so that a process pool or a Dask cluster runs
    replications as the serial loop does)."""

    key_data: np.ndarray
    key_impl: str
    num_components: int
    num_obs: int
    covariance_type: str
    prior: Prior
    method: object
    engine_kwargs: dict | None
    num_ranks: int
    quantities: tuple
    feature: int
    on_error: str
    x64: bool
    num_replications: int


class _ReplicationOutcome(NamedTuple):
    theta: GMMParams
    fact: dict
    caught: list  # (warning category, message)
    ranks: np.ndarray | None  # None for a failed replication (on_error="record")
    at_truth: np.ndarray | None


def _encode_outcome(out: _ReplicationOutcome) -> dict:
    return dict(theta=[np.asarray(a) for a in out.theta], fact=out.fact, ranks=out.ranks, at_truth=out.at_truth,
                caught=[(category_name(category), message) for category, message in out.caught])


def _decode_outcome(saved: dict) -> _ReplicationOutcome:
    theta = GMMParams(*(np.asarray(a, np.float64) for a in saved["theta"]))
    ranks, at_truth = saved["ranks"], saved["at_truth"]
    return _ReplicationOutcome(
        theta, saved["fact"], [(warning_category(name), message) for name, message in saved["caught"]],
        None if ranks is None else np.asarray(ranks, np.int64), None if at_truth is None else np.asarray(at_truth, np.float64))


#: A replication's outcome in a checkpoint folder (``sbc(checkpoint=...)``): JSON, every bit kept.
_OUTCOME_CODEC = json_codec(_encode_outcome, _decode_outcome)


def _run_replication(r: int, task: _ReplicationTask) -> _ReplicationOutcome:
    """Replication ``r`` of :func:`sbc`: draw from the prior, simulate, fit, rank (a module-level
    function, so executors can run it; in this process's precision of the caller)."""
    with jax.enable_x64(task.x64):
        return _replication(task, r)


def _replication(task: _ReplicationTask, r: int) -> _ReplicationOutcome:
    k, ct, num_ranks = task.num_components, task.covariance_type, task.num_ranks
    fit, kwargs, method_name = _engine(task.method, ct, num_ranks, task.engine_kwargs)
    dtype = np.dtype(jax.dtypes.canonicalize_dtype(np.float64))
    prior_arrays = task.prior.arrays(k, ct, dtype=dtype)
    k_reps = jax.random.wrap_key_data(np.asarray(task.key_data, np.uint32), impl=task.key_impl)
    params, x, z, fit_key, tie_key = _simulate_replication(
        k_reps, np.int32(r), prior_arrays, num_components=k, covariance_type=ct, num_obs=task.num_obs
    )
    theta = GMMParams(*(np.asarray(a, dtype=np.float64) for a in jax.device_get(params)))
    x = np.asarray(x)
    fact = {
        "converged": False,
        "n_iter": 0,
        "fit_seconds": float("nan"),
        "min_component_count": int(np.bincount(np.asarray(z), minlength=k).min()),
        "num_warnings": 0,
        "warnings": "",
        "error": "",
    }
    caught_messages = []
    start = time.perf_counter()
    try:
        with recorded_warnings() as caught:  # one replication at a time on threads (_executors)
            res = fit(x, k, covariance_type=ct, prior=task.prior, seed=fit_key, **kwargs)
        fact["fit_seconds"] = time.perf_counter() - start
        fact["converged"] = bool(res.converged)
        fact["n_iter"] = int(res.n_iter)
        diagnostics = res.diagnostics
        for name in _INFO_FACTS:
            value = getattr(diagnostics, name)
            if not np.isnan(value):
                fact[name] = value
        if caught:
            fact["num_warnings"] = len(caught)
            fact["warnings"] = " | ".join(f"{w.category.__name__}: {w.message}" for w in caught)
            caught_messages = [(w.category, str(w.message)) for w in caught]
        if res.draws is None:
            raise ValueError(
                f"the engine ({method_name}) returned no posterior draws; SBC needs an engine whose "
                "FitResult carries draws."
            )
        w_d, m_d, c_d = (np.asarray(res.draws[name], dtype=np.float64) for name in ("weights", "means", "covariances"))
        total = w_d.shape[0] * w_d.shape[1]
        if total < num_ranks:
            raise ValueError(
                f"the engine returned {total} posterior draws but num_ranks={num_ranks}; ask the "
                "engine for more draws (engine_kwargs) or lower num_ranks."
            )
        idx = (np.arange(num_ranks) * total) // num_ranks  # evenly thinned over chains and draws
        flat = [a.reshape((total,) + a.shape[2:])[idx] for a in (w_d, m_d, c_d)]
        x64 = np.asarray(x, dtype=np.float64)
        post = _test_quantities(x64, *flat, ct, task.quantities, task.feature)
        at_truth = _test_quantities(x64, *(a[None] for a in theta), ct, task.quantities, task.feature)[0]
        if not (np.all(np.isfinite(post)) and np.all(np.isfinite(at_truth))):
            raise ValueError("a test quantity is not finite (a posterior draw with a singular covariance?).")
    except FIT_ERRORS as err:
        if task.on_error == "raise":
            err.add_note(f"(in SBC replication {r} of {task.num_replications}, method {method_name!r})")
            raise
        fact["error"] = f"{type(err).__name__}: {err}"
        return _ReplicationOutcome(theta, fact, caught_messages, None, None)
    except Exception as err:  # not recorded (e.g. a fit function's own error): raised, saying where
        err.add_note(f"(in SBC replication {r} of {task.num_replications}, method {method_name!r})")
        raise
    ranks = _ranks(post, at_truth, np.random.default_rng(_key_data(tie_key).tolist()))
    return _ReplicationOutcome(theta, fact, caught_messages, ranks, at_truth)


def _check_picklable_for(executor, fit, name: str) -> None:
    """Refuse, before any replication, a fit function that a process pool cannot send to its
    workers (a lambda, a function defined inside another): pickle's own error named neither the
    argument nor the fix."""
    import concurrent.futures
    import pickle

    if not isinstance(executor, concurrent.futures.ProcessPoolExecutor):
        return
    try:
        pickle.dumps(fit)
    except (pickle.PicklingError, AttributeError, TypeError) as err:
        raise ValueError(f"method {name!r} cannot be sent to the process pool's workers ({err}); define it at the top "
                         "level of a module they can import, or run on a ThreadPoolExecutor.") from None


def sbc(
    num_components: int,
    num_obs: int,
    *,
    prior: Prior | None = None,
    method: str | Callable = "vb",
    covariance_type: str = "full",
    num_replications: int = 100,
    num_ranks: int = 99,
    quantities=QUANTITIES,
    feature: int = 0,
    engine_kwargs: Mapping | None = None,
    seed=0,
    on_error: str = "raise",
    progress_bar: bool = False,
    executor=None,
    checkpoint=None,
) -> SBCResult:
    r"""Simulation-based calibration of a Bayesian engine on the model (Talts et al. 2018).

    Each replication draws mixture parameters from ``prior`` with the model's own sample sites
    (:func:`bayesgmm.model.sample_prior`), simulates ``num_obs`` observations through the model
    (:func:`bayesgmm.model.simulate`), fits them with the engine given the *same* ``prior``, and
    ranks label-invariant test quantities of the prior draw among ``num_ranks`` posterior draws
    (evenly thinned from the engine's draws; ties broken at random). The ranks of an exact
    posterior are uniform on ``0..num_ranks``; see the module docstring for the quantities and
    the tests.

    Parameters
    ----------
    num_components : int
        K, of the simulating model and of the fits.
    num_obs : int
        N, observations per simulated data set.
    prior : Prior
        Required. The data-dependent default of the engines (``Prior.default(x, K)``) cannot be
        used: SBC draws the parameters from the prior *before* there are data. A prior whose
        draws give data sets an engine can fit is, for D features::

            Prior(weight_concentration=5.0, mean=np.zeros(D), mean_precision=0.2,
                  degrees_of_freedom=D + 4.0, scale=(D + 3.0) * np.eye(D))

        (Dirichlet concentration of 5: no near-empty components; ``E[Sigma_k] = (D + 3) / 3 I``,
        the inverse Wishart's mean ``scale / (degrees_of_freedom - D - 1)``, 5/3 I in 2-D; the means
        spread about 2.2 standard deviations of a component, so components overlap moderately.)
        The number of features D is that of the prior.
    method : {"vb", "svi", "mcmc", "gibbs"} or callable
        Engine: :func:`bayesgmm.fit_vb`, :func:`bayesgmm.fit_svi`, :func:`bayesgmm.fit_mcmc` or
        :func:`bayesgmm.fit_gibbs`.
        A callable ``fit(x, num_components, *, covariance_type, prior, seed, **engine_kwargs)``
        returning a :class:`~bayesgmm.FitResult` with ``draws`` calibrates any other engine
        (or a deliberately broken one).
    covariance_type : {"full", "diag", "spherical", "tied"}
        Of the simulating model and the fits (VB covers ``full`` and ``diag``).
    num_replications : int
        R (at least 2; 100-1000 in practice, the tests' power grows with R).
    num_ranks : int
        L, posterior draws kept per replication; ranks lie in ``0..L``. L + 1 with many small
        divisors (e.g. 99, 199) gives equal-width histogram bins.
    quantities : sequence of str
        Any of ``"sorted_means"``, ``"sorted_weights"``, ``"log_likelihood"``,
        ``"mixture_mean"``, ``"mixture_variance"`` (default: all).
    feature : int
        The feature whose component means are sorted for ``"sorted_means"``.
    engine_kwargs : dict, optional
        Extra keyword arguments of the engine, e.g. ``{"reg_covar": 0.0}`` (VB) or
        ``{"num_warmup": 1000, "num_samples": 1000, "num_chains": 4}`` (MCMC). Defaults here:
        ``num_draws = num_ranks`` (VB, SVI); ``num_warmup=500, num_samples=500, num_chains=2``
        (MCMC); ``num_warmup=200, num_samples=500, num_chains=2`` (Gibbs). ``x``,
        ``num_components``, ``prior``, ``covariance_type`` and ``seed`` are set by sbc and may
        not appear.
    seed : int or jax key
        Same seed, same ranks, bit for bit. Replication r's prior draw, data, fit and tie-breaking
        use keys split from ``fold_in(key, r)``, so the first replications of a longer run are
        those of a shorter one; a further key seeds the ECDF test's simulated null distribution.
    on_error : {"raise", "record"}
        A fit that fails (ValueError, e.g. a non-finite ELBO) stops the run (``"raise"``), or
        is recorded in ``replications["error"]`` and left out of the ranks (``"record"``; this
        biases SBC if failures depend on the parameters, and a warning says how many failed).
    progress_bar : bool
        Show a tqdm progress bar over the replications.
    executor : concurrent.futures.Executor, optional
        Runs the replications in parallel (a ``ProcessPoolExecutor`` with the ``"spawn"`` context,
        or a Dask cluster's ``client.get_executor()``); each replication is seeded by its index,
        so the ranks equal the serial run's. ``method`` must then be a name or a picklable
        function. Each worker compiles the engine once per shape (the persistent compilation
        cache shares programs between processes on one machine). A forking process pool is
        refused (its workers wait forever once JAX has run here); on threads the replications
        run one at a time, each recording its own warnings.
    checkpoint : str or os.PathLike, optional
        A folder (created if missing) where each replication's outcome is saved (JSON, every
        float bit kept) as soon as it is computed. Called again with the same arguments and
        folder (after a job's time limit, a crash or Ctrl-C), ``sbc`` loads the replications found
        there and runs only the others: the result equals the uninterrupted run's (the
        ``fit_seconds`` are those of the run that computed each). As replication ``r`` does not
        depend on ``num_replications``, a larger ``num_replications`` extends a finished run. A
        folder of another run (another prior, method, option, seed or bayesgmm version) is
        refused. Functions (``method``, engine options) are compared by name, code, defaults and
        closure, other objects by their ``repr`` or attributes, so a changed option is refused.

    Returns
    -------
    SBCResult
        ``ranks`` (DataFrame, replication x quantity), ``tests`` / ``p_values`` (per quantity),
        ``replications`` (per-replication facts), ``true_values``, ``prior_draws``, ``settings``.

    Warns
    -----
    ConvergenceWarning, DegenerateComponentWarning, ...
        The engines' warnings are collected per replication (``replications["warnings"]``);
        once the run ends, one summary warning per category says in how many replications it
        occurred. Failed replications (``on_error="record"``) give one ``ConvergenceWarning``.

    Raises
    ------
    ValueError
        No prior, an unknown method (or ``"em"``), a covariance type the engine does not cover,
        engine_kwargs that set reserved arguments or give fewer draws than ``num_ranks``, a
        ``weight_concentration`` whose length is not K, or invalid counts.

    Examples
    --------
    >>> import numpy as np
    >>> import bayesgmm as bg
    >>> D = 1
    >>> prior = bg.Prior(weight_concentration=5.0, mean=np.zeros(D), mean_precision=0.2,
    ...                  degrees_of_freedom=D + 4.0, scale=(D + 3.0) * np.eye(D))
    >>> res = bg.sbc(2, 100, prior=prior, method="mcmc", num_replications=200, seed=0)  # doctest: +SKIP
    >>> res.p_values  # doctest: +SKIP
    """
    import pandas as pd

    k = check_num_components(num_components)
    n = check_int("num_obs", num_obs, 2)
    if n < k:
        raise ValueError(f"num_obs={n} is smaller than num_components={k}; simulate at least K observations.")
    check_covariance_type(covariance_type)
    r_total = check_int("num_replications", num_replications, 2)
    num_ranks = check_int("num_ranks", num_ranks, 1)
    if prior is None:
        raise ValueError(
            "sbc needs an explicit prior: the engines' data-dependent default Prior.default(x, K) does "
            "not exist before the data are simulated. Pass e.g. prior=bg.Prior(weight_concentration=5.0, "
            "mean=np.zeros(D), mean_precision=0.2, degrees_of_freedom=D + 4.0, scale=(D + 3.0) * np.eye(D))."
        )
    if not isinstance(prior, Prior):
        raise ValueError(f"prior must be a bayesgmm.Prior, got {type(prior).__name__}.")
    alpha = np.asarray(prior.weight_concentration)
    if alpha.ndim == 1 and alpha.shape[0] != k:
        raise ValueError(
            f"prior.weight_concentration has {alpha.shape[0]} entries but num_components={k}; "
            f"give a scalar or a vector of length {k}."
        )
    d = prior.num_features
    if isinstance(quantities, str):
        quantities = (quantities,)
    quantities = tuple(quantities)
    unknown = [q for q in quantities if q not in QUANTITIES]
    if unknown or not quantities:
        raise ValueError(f"quantities must be a non-empty selection of {QUANTITIES}, got {quantities!r}.")
    if isinstance(feature, bool) or not isinstance(feature, (int, np.integer)) or not 0 <= feature < d:
        raise ValueError(f"feature must index one of the prior's {d} feature(s), got {feature!r}.")
    names = _quantity_names(quantities, k, d)
    if not names:
        raise ValueError(
            f"no test quantity is defined for {quantities!r} with K={k} (sorted_weights needs K >= 2); "
            "add 'sorted_means' or 'log_likelihood'."
        )
    if on_error not in ("raise", "record"):
        raise ValueError(f"on_error must be 'raise' or 'record', got {on_error!r}.")
    fit, kwargs, method_name = _engine(method, covariance_type, num_ranks, engine_kwargs)
    check_executor(executor)
    _check_picklable_for(executor, fit, method_name)

    # ---- keys: replication r (prior draw, data, fit, ties) from fold_in(k_reps, r); the ECDF null
    k_reps, k_null = jax.random.split(seed_to_key(seed))
    null_seed = [int(a) for a in _key_data(k_null).ravel()]
    dtype = np.dtype(jax.dtypes.canonicalize_dtype(np.float64))  # float32 unless jax_enable_x64
    task = _ReplicationTask(
        key_data=np.asarray(_key_data(k_reps)), key_impl=str(jax.random.key_impl(k_reps)), num_components=k,
        num_obs=n, covariance_type=covariance_type,
        prior=prior, method=method, engine_kwargs=None if engine_kwargs is None else dict(engine_kwargs),
        num_ranks=num_ranks, quantities=quantities, feature=int(feature), on_error=on_error,
        x64=bool(jax.config.jax_enable_x64), num_replications=r_total,
    )
    saved = open_checkpoint(checkpoint, "sbc", dict(
        method=method if isinstance(method, str) else describe(method),
        num_components=k, num_obs=n, covariance_type=covariance_type, prior=prior.to_dict(),
        engine_kwargs=dict(engine_kwargs or {}), num_ranks=num_ranks, quantities=quantities, feature=int(feature),
        on_error=on_error, seed=np.asarray(_key_data(k_reps)), x64=task.x64), r_total, _OUTCOME_CODEC, extendable=True)
    # each replication is seeded by its index: on an executor, or loaded from the checkpoint, the same outcomes
    outcomes = run_tasks(_run_replication, range(r_total), (task,), executor,
                         (f"SBC ({method_name})", "fit") if progress_bar else None, saved)
    true_w, true_m, true_c = [], [], []
    rank_rows, true_rows, facts, ok = [], [], [], []
    caught_by_category: dict = {}
    for r, out in enumerate(outcomes):
        for store, a in zip((true_w, true_m, true_c), out.theta):
            store.append(a)
        for category, message in out.caught:
            caught_by_category.setdefault(category, {}).setdefault(r, message)
        facts.append(out.fact)
        if out.ranks is not None:
            rank_rows.append(out.ranks)
            true_rows.append(out.at_truth)
            ok.append(r)

    index = pd.Index(ok, name="replication")
    ranks = pd.DataFrame(np.asarray(rank_rows, dtype=np.int64).reshape(len(ok), len(names)), index=index, columns=names)
    true_values = pd.DataFrame(np.asarray(true_rows, dtype=np.float64).reshape(len(ok), len(names)), index=index, columns=names)
    replications = pd.DataFrame(facts, index=pd.Index(range(r_total), name="replication"))
    failed = replications.index[replications["error"] != ""]

    # ---- summary warnings (one per category) instead of one per replication
    for category, first in caught_by_category.items():
        r0, msg = next(iter(first.items()))
        warnings.warn(
            f"{category.__name__} in {len(first)} of {r_total} SBC replications ({method_name}); first, "
            f"replication {r0}: {msg} See SBCResult.replications['warnings'].",
            category,
            stacklevel=2,
        )
    if len(failed):
        warnings.warn(
            f"{len(failed)} of {r_total} SBC replications failed and are left out of the ranks (first, "
            f"replication {failed[0]}: {replications.loc[failed[0], 'error']}). Leaving out failures biases "
            "SBC when they depend on the parameters.",
            ConvergenceWarning,
            stacklevel=2,
        )
    if len(ok) < 2:
        raise ValueError(f"only {len(ok)} of {r_total} SBC replications succeeded; no uniformity test is possible.")

    edges = rank_bins(num_ranks, len(ok))
    tests = uniformity_tests(ranks, num_ranks, bin_edges=edges, num_simulations=NUM_SIMULATIONS, seed=null_seed)
    settings = {
        "method": method_name,
        "covariance_type": covariance_type,
        "num_components": k,
        "num_features": d,
        "num_obs": n,
        "num_replications": r_total,
        "num_ranks": num_ranks,
        "quantities": list(quantities),
        "feature": int(feature),
        "prior": prior.to_dict(),
        "engine_kwargs": jsonable(kwargs, default=repr),
        "seed": int(seed) if isinstance(seed, (int, np.integer)) else None,
        "dtype": str(dtype),
        "bin_edges": edges.tolist(),
        "null_seed": null_seed,
        "num_simulations": NUM_SIMULATIONS,
    }
    prior_draws = {"weights": np.stack(true_w), "means": np.stack(true_m), "covariances": np.stack(true_c)}
    return SBCResult(ranks, tests, replications, true_values, prior_draws, settings)
