"""Experiments across engines: one comparison table, and simulation studies.

This is the one module that knows every engine. :func:`compare` fits the same data with each
requested engine and returns one tidy row per engine; :func:`simulation_study` repeats that on
many data sets drawn from the generative story with known parameters and stacks the rows;
:func:`summarise_study` aggregates them (coverage, error, time).

Every engine returns a :class:`~bayesgmm.FitResult`, so nothing here branches on the method
except to call it and to read engine-specific facts (ESS for NUTS, the ELBO for VI) from
``info``.

Columns of the comparison (NaN where a column does not apply):

``method``, ``fit_seconds`` (wall time of the call, compilation included), ``run_seconds``
(without compilation, as the engine reports it; NaN for k-means, not timed apart), ``compile_seconds``, ``log_likelihood``
(training data, at the point estimate), ``test_lpd`` (mean held-out log predictive density per
observation: the plug-in density for EM and k-means-free engines without draws, the posterior
predictive for VB/SVI/NUTS), ``ari`` / ``nmi`` (against ``labels``), ``min_ess_bulk``,
``ess_per_second`` (NUTS, Gibbs: minimum bulk ESS over parameters per second of the whole run, its
start and warm-up included, as ``run_seconds``),
``divergences``, ``max_rhat``, ``elbo`` (VB, SVI), ``effective_components``, ``converged``;
with ``truth``: ``weights_error``, ``means_error``, ``covariances_error`` (RMSE of the point
estimate after aligning its labels to the truth) and ``coverage_weights``, ``coverage_means``,
``coverage_covariances`` (share of the scalar parameters of that kind inside the central
``interval``-level interval: posterior quantiles for the Bayesian engines, bootstrap percentile
intervals for EM).
"""

from __future__ import annotations

import contextlib
import time
import warnings
from typing import Mapping

import jax
import numpy as np

from . import _covariance_models, _sharding
from ._checkpoint import frame_codec, open_checkpoint
from ._executors import FIT_ERRORS, check_executor, recorded_warnings, run_tasks
from .engines import SET_BY_CALLER, check_engine_options, engine_names, get_engine
from .labels import align_draws, permute_draws
from .params import GMMParams, Prior, check_data, check_int, check_num_components, check_params, prepare_data
from .results import FitResult

__all__ = [
    "METHODS",
    "adjusted_rand_index",
    "compare",
    "fit",
    "normalized_mutual_info",
    "simulation_study",
    "summarise_study",
]

#: The registry's engines, and plain k-means as a baseline.
METHODS = engine_names() + ("kmeans",)


# ----------------------------------------------------------------------------------------------
# Clustering agreement (NumPy; scikit-learn is not a dependency of the library)
# ----------------------------------------------------------------------------------------------
def _missing_labels(labels: np.ndarray) -> np.ndarray:
    """(N,) bool: the labels that are missing (None, NaN, pandas' NA)."""
    import pandas as pd

    return np.asarray(pd.isna(labels), bool)


def _contingency(a, b):
    a = np.unique(np.asarray(a), return_inverse=True)[1]
    b = np.unique(np.asarray(b), return_inverse=True)[1]
    table = np.zeros((a.max() + 1, b.max() + 1))
    np.add.at(table, (a, b), 1)
    return table


def adjusted_rand_index(labels_true, labels_pred) -> float:
    """Adjusted Rand index (Hubert & Arabie 1985): 1 for identical partitions, ~0 for chance.

    Parameters
    ----------
    labels_true : array-like (N,)
        One partition of the N items, e.g. the true components; any hashable labels.
    labels_pred : array-like (N,)
        The other, e.g. the fitted assignments. The index does not depend on how either
        partition's labels are named, and is symmetric in the two.

    Returns
    -------
    float
        At most 1; negative when the agreement is below chance. 1 when both partitions are
        trivial (one cluster each, or all singletons).
    """
    table = _contingency(labels_true, labels_pred)
    n = table.sum()
    comb = lambda v: v * (v - 1) / 2  # noqa: E731
    index = comb(table).sum()
    rows, cols = comb(table.sum(1)).sum(), comb(table.sum(0)).sum()
    expected = rows * cols / comb(n)
    best = (rows + cols) / 2
    if best == expected:  # both partitions trivial (one cluster each, or all singletons)
        return 1.0
    return float((index - expected) / (best - expected))


def normalized_mutual_info(labels_true, labels_pred) -> float:
    """Normalised mutual information (arithmetic-mean normalisation, scikit-learn's default).

    Parameters
    ----------
    labels_true : array-like (N,)
        One partition of the N items, e.g. the true components; any hashable labels.
    labels_pred : array-like (N,)
        The other, e.g. the fitted assignments; the score does not depend on how either
        partition's labels are named, and is symmetric in the two.

    Returns
    -------
    float
        In [0, 1]: the mutual information divided by the mean of the two entropies; 1 when both
        partitions are a single cluster.
    """
    table = _contingency(labels_true, labels_pred)
    p = table / table.sum()
    pa, pb = p.sum(1), p.sum(0)
    nz = p > 0
    mi = float(np.sum(p[nz] * np.log(p[nz] / np.outer(pa, pb)[nz])))
    ha = -float(np.sum(pa * np.log(pa)))
    hb = -float(np.sum(pb * np.log(pb)))
    if ha == 0 and hb == 0:
        return 1.0
    return mi / max((ha + hb) / 2, np.finfo(float).tiny)


# ----------------------------------------------------------------------------------------------
# One engine call
# ----------------------------------------------------------------------------------------------
#: compare's way to the option the engines' missing-value advice names (compare has no ``missing``)
COMPARE_MISSING_ADVICE = "pass engine_kwargs={method: {'missing': 'marginalize'}} for each method"


@contextlib.contextmanager
def _compare_advice():
    """The data checks' errors with compare's own way to treat NaN as missing values."""
    try:
        yield
    except ValueError as err:
        said = str(err)
        if "pass missing='marginalize'" not in said:
            raise
        raise ValueError(said.replace("pass missing='marginalize'", COMPARE_MISSING_ADVICE)) from None


def _check_methods(methods) -> tuple:
    methods = (methods,) if isinstance(methods, str) else tuple(methods)
    bad = [m for m in methods if m not in METHODS]
    if bad or not methods:
        raise ValueError(f"methods must be a non-empty selection of {METHODS}; got {list(methods)!r}.")
    repeated = sorted({m for m in methods if methods.count(m) > 1})
    if repeated:  # a second fit of the same engine would count as another data set's in the summaries
        raise ValueError(f"methods names {repeated} more than once; give each method once.")
    return methods


def fit(x, num_components: int, method: str, *, covariance_type: str = "full", prior: Prior | None = None,
        seed=0, **kwargs) -> FitResult:
    """Fit ``x`` with the engine named ``method`` ("em", "map-em", "vb", "svi", "mcmc" or "gibbs").

    ``"map-em"`` is EM with ``prior`` (default ``Prior.default(x, K)``); the Bayesian engines
    receive ``prior`` too (their own default when None). ``prior="default"`` is
    ``Prior.default(x, K)``. ``"em"`` is maximum likelihood: giving it a prior is an error
    (use "map-em"), never silently dropped. ``kwargs`` go to the engine, whose own defaults
    (the em-EM search for EM and VB) apply otherwise; an option the engine does not take is a
    ValueError listing the options it does take.

    Parameters
    ----------
    x : array-like (N, D) or Data
        The data.
    num_components : int
        K, the number of components.
    method : str
        A registered engine's name (:func:`bayesgmm.engines.engine_names`).
    covariance_type : str
        Covariance structure, handed to the engine (which may cover only some structures).
    prior : Prior, "default" or None
        The prior of ``"map-em"`` and of the Bayesian engines; ``"default"``:
        ``Prior.default(x, K)``; None: the engine's own default. Must be None for ``"em"``.
    seed : int or jax key
        The engine's seed.
    **kwargs
        Further options of the engine (e.g. ``num_samples=500`` for ``"mcmc"``).

    Returns
    -------
    FitResult
        The engine's result.
    """
    spec = get_engine(method)
    engine = spec.load()
    check_engine_options(engine, method, kwargs)
    kw = {**spec.options, **kwargs}
    if isinstance(prior, str):
        if prior != "default":
            raise ValueError(f"prior must be a bayesgmm.Prior, 'default' or None, got {prior!r}.")
        prior = Prior.default(x, num_components)
    if spec.prior == "none" and prior is not None:
        raise ValueError(f"method {method!r} is maximum likelihood and takes no prior; use method 'map-em' for "
                         "MAP-EM with a prior (the default prior when none is given).")
    if method == "map-em":
        kw["prior"] = prior if prior is not None else Prior.default(x, num_components)
    elif spec.prior != "none":
        kw["prior"] = prior
    return engine(x, num_components, covariance_type=covariance_type, seed=seed, **kw)


def _check_engine_kwargs_table(engine_kwargs, methods: tuple) -> None:
    """:func:`compare`'s ``engine_kwargs`` (``{method: {option: value}}``), every engine's options
    checked before anything runs (:func:`bayesgmm.engines.check_engine_options`); options for a
    method not in ``methods`` are an error, not dropped."""
    if not isinstance(engine_kwargs, Mapping):
        raise ValueError(f"engine_kwargs must be a dict of {{method: dict of options}}, got {engine_kwargs!r}.")
    unknown = set(engine_kwargs) - set(METHODS)
    if unknown:
        raise ValueError(f"engine_kwargs has keys {sorted(unknown)} that are not methods of {METHODS}.")
    unused = [m for m in engine_kwargs if m not in methods]
    if unused:
        raise ValueError(f"engine_kwargs has options for {unused}, which are not among the methods run "
                         f"({list(methods)}); add them to methods, or drop their options.")
    for method, kw in engine_kwargs.items():
        if not isinstance(kw, Mapping):
            raise ValueError(f"engine_kwargs[{method!r}] must be a dict of engine options, got {kw!r}.")
        own = sorted(set(kw) & ({"x", "num_components", "seed"} if method == "kmeans" else set(SET_BY_CALLER)))
        if own:
            raise ValueError(f"engine_kwargs[{method!r}] sets {own}, which compare sets itself (its own arguments "
                             "x, num_components, covariance_type, prior, seed); pass them to compare.")
        if method == "kmeans":
            from .kmeans import kmeans as engine
        else:
            engine = get_engine(method).load()
        check_engine_options(engine, method, kw)


def _check_interval_and_replicates(interval, bootstrap_replicates) -> None:
    """The coverage settings of :func:`compare` and :func:`simulation_study`."""
    if not (isinstance(bootstrap_replicates, (int, np.integer)) and not isinstance(bootstrap_replicates, bool)
            and (bootstrap_replicates == 0 or bootstrap_replicates >= 2)):
        raise ValueError(f"bootstrap_replicates must be 0 (no intervals for EM) or an integer >= 2, got "
                         f"{bootstrap_replicates!r}.")
    if isinstance(interval, bool) or not isinstance(interval, (int, float, np.floating)) or not 0 < interval < 1:
        raise ValueError(f"interval must be a number in (0, 1), got {interval!r}.")


def _align_to(draws: Mapping, truth: GMMParams, covariance_type: str) -> tuple[dict, np.ndarray | None]:
    """``draws`` relabelled to the truth and the permutations used (None for K = 1)."""
    if truth.means.shape[0] == 1:
        return dict(draws), None
    return align_draws(draws, truth, covariance_type)


def _point_draws(result: FitResult) -> dict:
    return {"weights": result.weights[None, None], "means": result.means[None, None],
            "covariances": result.covariances[None, None]}


#: The parameters whose errors, coverage and interval widths a row with a truth reports.
_PARAMETER_NAMES = ("weights", "means", "covariances")


def _truth_columns(result: FitResult, x, truth: GMMParams, interval: float, seed, bootstrap_replicates: int) -> dict:
    """Errors of the aligned point estimate and coverage of the central intervals."""
    ct = result.covariance_type
    truth = GMMParams(*(np.asarray(a, np.float64) for a in truth))
    point, perm = _align_to(_point_draws(result), truth, ct)
    out = {}
    for name in _PARAMETER_NAMES:
        diff = np.asarray(point[name][0, 0]) - getattr(truth, name)
        out[f"{name}_error"] = float(np.sqrt(np.mean(diff**2)))
    draws = None
    if result.draws is not None:
        draws = result.draws
    elif result.method in ("em", "map-em") and bootstrap_replicates:
        from .uncertainty import bootstrap

        try:
            with recorded_warnings("ignore"):
                draws = bootstrap(result, x, num_replicates=bootstrap_replicates, seed=seed).draws
        except FIT_ERRORS as err:  # too few usable refits (small data): the fit stands, its intervals do not
            warnings.warn(f"no bootstrap intervals for EM (coverage and width NaN): {err}", UserWarning, stacklevel=2)
    if draws is not None and perm is not None:
        # the draws are in the fit's own labels (aligned to its pivot, or the bootstrap's to the fit):
        # the point estimate's one matching to the truth carries them over. Matching every draw to
        # the truth on its own pooled draws of different components into one label, so intervals
        # widened until they covered the truth (coverage 1.0 where the posterior's own covered none)
        lead = np.shape(draws["weights"])[:-1]
        draws = permute_draws(draws, np.broadcast_to(perm[0, 0], lead + perm.shape[-1:]), ct)
    alpha = (1 - interval) / 2
    for name in _PARAMETER_NAMES:
        if draws is None:
            out[f"coverage_{name}"] = out[f"width_{name}"] = np.nan
            continue
        flat = np.asarray(draws[name]).reshape((-1,) + getattr(truth, name).shape)
        lo, hi = np.quantile(flat, alpha, axis=0), np.quantile(flat, 1 - alpha, axis=0)
        value = getattr(truth, name)
        if name == "covariances" and ct in ("full", "tied"):  # each distinct scalar once (a symmetric matrix)
            upper = np.triu_indices(value.shape[-1])
            lo, hi, value = lo[..., upper[0], upper[1]], hi[..., upper[0], upper[1]], value[..., upper[0], upper[1]]
        out[f"coverage_{name}"] = float(np.mean((lo <= value) & (value <= hi)))
        out[f"width_{name}"] = float(np.mean(hi - lo))
    return out


#: A fit's timings (its ``diagnostics`` fields of those names); k-means is not timed apart.
_TIMING_COLUMNS = ("run_seconds", "compile_seconds", "warmup_seconds", "sampling_seconds")
_KMEANS_TIMING_COLUMNS = ("run_seconds", "compile_seconds")
#: Column -> ``diagnostics`` field, the same typed facts for every engine (NaN where not applicable).
_FACT_COLUMNS = {"min_ess_bulk": "min_ess_bulk", "ess_per_second": "ess_per_second", "divergences": "num_divergences",
                 "max_rhat": "max_rhat", "label_switch_fraction": "label_switch_fraction", "elbo": "elbo"}


def _row(method, result, seconds, x_test, labels, x, truth, interval, seed, bootstrap_replicates) -> dict:
    row = {"method": method, "fit_seconds": seconds}
    if not isinstance(result, FitResult):  # k-means
        row.update(dict.fromkeys(_KMEANS_TIMING_COLUMNS, np.nan))  # not timed apart
        if labels is not None:
            row["ari"] = adjusted_rand_index(labels, result.labels)
            row["nmi"] = normalized_mutual_info(labels, result.labels)
        row["converged"] = bool(result.converged)
        return row
    facts = result.diagnostics
    row.update({column: getattr(facts, column) for column in _TIMING_COLUMNS})
    row["log_likelihood"] = result.log_likelihood
    if x_test is not None:
        row["test_lpd"] = result.score(x_test)
    if labels is not None:
        pred = result.predict(x)
        row["ari"] = adjusted_rand_index(labels, pred)
        row["nmi"] = normalized_mutual_info(labels, pred)
    row.update({column: getattr(facts, field) for column, field in _FACT_COLUMNS.items()})
    row["effective_components"] = result.effective_components
    row["converged"] = bool(result.converged)
    if truth is not None:
        row.update(_truth_columns(result, x, truth, interval, seed, bootstrap_replicates))
    return row


def _failed_row(method, settings, error: str) -> dict:
    """The row of an engine that failed (``on_error="record"``): :func:`_row`'s columns, in its
    order, missing, so that a table's columns never depend on which fits failed."""
    nan = float("nan")
    kmeans = method == "kmeans"
    row = {"method": method, "fit_seconds": nan}
    row.update(dict.fromkeys(_KMEANS_TIMING_COLUMNS if kmeans else _TIMING_COLUMNS, nan))
    if not kmeans:
        row["log_likelihood"] = nan
        if settings["x_test"] is not None:
            row["test_lpd"] = nan
    if settings["labels"] is not None:
        row.update(ari=nan, nmi=nan)
    if not kmeans:
        row.update(dict.fromkeys(_FACT_COLUMNS, nan), effective_components=nan)
    row["converged"] = False
    if not kmeans and settings["truth"] is not None:
        row.update({f"{name}_error": nan for name in _PARAMETER_NAMES})
        row.update({f"{kind}_{name}": nan for name in _PARAMETER_NAMES for kind in ("coverage", "width")})
    row["error"] = error
    return row


def _check_on_error(on_error) -> None:
    if on_error not in ("raise", "record"):
        raise ValueError(f"on_error must be 'raise' or 'record', got {on_error!r}.")


def _sharded_devices(methods, engine_kwargs: Mapping):
    """The ``devices`` the first of ``methods`` given any in ``engine_kwargs`` shards over (None:
    none): where they span processes, a process whose own checks refuse the call must tell the
    others, which would otherwise wait for it in that engine (:class:`bayesgmm._sharding.ProcessCall`)."""
    names = [methods] if isinstance(methods, str) else list(methods) if isinstance(methods, tuple) else []
    for name in names:
        kw = engine_kwargs.get(name) if isinstance(name, str) else None
        if isinstance(kw, Mapping) and kw.get("devices") is not None:
            return kw["devices"]
    return None


def compare(
    x,
    num_components: int,
    *,
    methods=("em", "vb", "svi", "mcmc"),
    covariance_type: str = "full",
    prior: Prior | None = None,
    x_test=None,
    labels=None,
    truth: GMMParams | None = None,
    interval: float = 0.9,
    bootstrap_replicates: int = 200,
    engine_kwargs: Mapping[str, Mapping] | None = None,
    seed=0,
    progress_bar: bool = False,
    return_fits: bool = False,
    executor=None,
    on_error: str = "raise",
):
    """Fit the same data with several engines; one tidy row per engine.

    ``executor``: any :class:`concurrent.futures.Executor` (a ``ProcessPoolExecutor`` made with
    the "spawn" context, or a Dask cluster's ``client.get_executor()``) fits the engines in
    parallel, one task per engine. Every engine is seeded by ``seed`` alone, so the table equals
    the serial run's, in the same row order (up to the timing columns).

    Parameters
    ----------
    x : array-like (N, D)
        Training data.
    num_components : int
        K, the same for every engine.
    methods : sequence of {"em", "map-em", "vb", "svi", "mcmc", "gibbs", "kmeans"}
        The engines to run (names of :data:`METHODS`), in the order of the table's rows; one name
        alone is also accepted. ``"kmeans"`` is :func:`bayesgmm.kmeans` (10 starts by default).
    covariance_type : str

        Used by every engine (VB covers "full" and "diag").
    prior : Prior, optional
        The prior of the Bayesian engines and of "map-em"; default ``Prior.default(x, K)``,
        the same for all of them, so they are compared on one model.
    x_test : array-like, optional
        Held-out data for ``test_lpd``; NaN entries are missing values, whatever the engines'
        ``missing``: a row is scored on its observed entries (their marginal density, as
        ``score_samples`` scores them).
    labels : array-like (N,), optional
        True components of ``x``, for ``ari`` and ``nmi``.
    truth : GMMParams, optional
        True parameters (simulated data), for errors and interval coverage: the point estimate
        is matched to the truth's labels once, and its draws carried over with it. Covariances
        in the layout of ``covariance_type`` (checked, except that with K = D a diagonal truth
        and a tied one have the same shape).
    interval : float
        Level of the central intervals whose coverage is reported (0.9: 5%-95%).
    bootstrap_replicates : int
        Nonparametric bootstrap refits for EM's intervals (0: no EM coverage).
    engine_kwargs : mapping, optional
        Per-method keyword arguments, e.g. ``{"mcmc": {"num_samples": 500}, "svi": {"num_steps": 3000}}``.
    seed : int
        Every engine gets this seed.
    progress_bar : bool
        Show a tqdm bar over the methods.
    return_fits : bool
        Also return ``{method: FitResult}`` (fitted in the workers and sent back when an
        ``executor`` runs them); an engine that failed under ``on_error="record"`` maps to None.
    executor : concurrent.futures.Executor, optional
        Runs the engines in parallel (see above); serial when omitted. A process pool must
        spawn (a forking one is refused: forked workers of a process that has run JAX wait
        forever); on threads (a ``ThreadPoolExecutor``, Dask's threaded workers) the tasks run one
        at a time, since each records its warnings in the process-wide warnings module.
    on_error : {"raise", "record"}
        An engine that fails (a ValueError such as "a covariance became singular in every run",
        a numerical failure) stops the comparison, its error naming the engine (``"raise"``), or
        gives a row with ``converged=False``, NaN numbers and the message in an ``error`` column
        (``"record"``). EM's bootstrap intervals failing (too few usable refits on small data)
        never stops it: their coverage and width are NaN, with a warning in the row.

    Returns
    -------
    pandas.DataFrame (and the fits when ``return_fits``)
        Columns described in the module docstring. Engine warnings (e.g. convergence) are
        collected in a ``warnings`` column instead of being raised.
    """
    import pandas as pd

    check_executor(executor)
    _check_on_error(on_error)
    engine_kwargs = dict(engine_kwargs or {})
    if not isinstance(methods, str) and hasattr(methods, "__iter__"):
        methods = tuple(methods)  # a generator or an array read once, by both uses below
    with _sharding.ProcessCall(_sharded_devices(methods, engine_kwargs), "compare"):  # one stops all
        # validated once; every engine takes the record and skips the checks (NaN let through where an
        # engine is told missing="marginalize"; the others then refuse them with their own message)
        marginalize = any(isinstance(kw, Mapping) and kw.get("missing") == "marginalize" for kw in engine_kwargs.values())
        with _compare_advice():
            data = prepare_data(x, missing="marginalize" if marginalize else "error")
        arr = data.values
        k = check_num_components(num_components, arr.shape[0])
        methods = _check_methods(methods)
        _check_engine_kwargs_table(engine_kwargs, methods)
        if labels is not None:
            labels = np.asarray(labels)
            if labels.shape != (arr.shape[0],):
                raise ValueError(f"labels must have shape ({arr.shape[0]},), one per row of x; got {labels.shape}.")
            empty = _missing_labels(labels)
            if empty.any():
                raise ValueError(f"labels has {int(empty.sum())} missing value(s) (None or NaN; first at row "
                                 f"{int(np.flatnonzero(empty)[0])}); every row needs a label to score the clusters "
                                 "(ARI/NMI): fill them, or drop those rows from x and labels.")
        if truth is not None:
            if not isinstance(truth, (GMMParams, FitResult)):
                raise ValueError(f"truth must be a GMMParams (weights, means, covariances), e.g. make_mixture(...).params, "
                                 f"got {type(truth).__name__}.")
            truth = GMMParams(*(np.asarray(a, np.float64) for a in (truth.params if isinstance(truth, FitResult) else truth)))
            if truth.means.shape != (k, arr.shape[1]):
                raise ValueError(f"truth.means must have shape ({k}, {arr.shape[1]}), got {truth.means.shape}.")
            # weights on the simplex, covariances in the fits' layout (one component's for K was
            # broadcast, a diagonal truth read as a matrix where K = D: errors of nothing)
            layout = _covariance_models.storage(covariance_type)
            try:
                truth = check_params(truth, layout, name="truth")
            except ValueError as err:
                raise ValueError(f"truth: {err} Give the truth in the fits' layout (covariance_type={covariance_type!r}: "
                                 f"{layout}), e.g. make_mixture(..., covariance_type={layout!r}).params.") from None
        if x_test is not None:  # its columns matched by name (a reordered DataFrame was scored by position)
            with _compare_advice():
                x_test, _ = check_data(x_test, name="x_test", num_features=arr.shape[1], allow_constant=True,
                                       feature_names=data.feature_names, missing="marginalize")
        _check_interval_and_replicates(interval, bootstrap_replicates)
        prior = prior if prior is not None else Prior.default(arr, k)
    settings = dict(num_components=k, covariance_type=covariance_type, prior=prior, x_test=x_test, labels=labels,
                    truth=truth, interval=interval, bootstrap_replicates=bootstrap_replicates, seed=seed,
                    engine_kwargs=engine_kwargs, return_fit=return_fits, on_error=on_error,
                    x64=bool(jax.config.jax_enable_x64))
    # every engine is seeded by `seed` alone: on an executor, the same rows as the serial run, in its order
    outcomes = run_tasks(_compare_task, methods, (data, settings), executor,
                         ("compare", "engine") if progress_bar else None)
    rows = [row for row, _ in outcomes]
    fits = {method: result for method, (_, result) in zip(methods, outcomes)}
    table = pd.DataFrame(rows)
    return (table, fits) if return_fits else table


def _compare_task(method, data, settings):
    """One engine of :func:`compare` (a module-level function, so process pools and Dask can run
    it): fit the validated ``data`` record with ``method`` and build its row; returns
    ``(row, result or None)``."""
    with jax.enable_x64(settings["x64"]):
        k, seed, engine_kwargs = settings["num_components"], settings["seed"], settings["engine_kwargs"]
        arr = data.values
        with recorded_warnings() as caught:  # one task at a time on threads (_executors)
            start = time.perf_counter()
            try:
                if method == "kmeans":
                    from .kmeans import kmeans

                    kw = {"n_init": 10, **engine_kwargs.get("kmeans", {})}
                    result = kmeans(data, k, seed=seed, **kw)
                else:
                    result = fit(data, k, method, covariance_type=settings["covariance_type"],
                                 prior=None if method == "em" else settings["prior"], seed=seed,
                                 **engine_kwargs.get(method, {}))
                seconds = time.perf_counter() - start
                row = _row(method, result, seconds, settings["x_test"], settings["labels"], arr, settings["truth"],
                           settings["interval"], seed, settings["bootstrap_replicates"])
            except FIT_ERRORS as err:
                if settings["on_error"] == "raise":
                    err.add_note(f"(in compare, method {method!r})")
                    raise
                result = None
                row = _failed_row(method, settings, f"{type(err).__name__}: {err}")
        if settings["on_error"] == "record":
            row.setdefault("error", None)  # the column is there whether or not a fit failed
        row["warnings"] = "; ".join(sorted({f"{w.category.__name__}: {w.message}" for w in caught}))
        return row, (result if settings["return_fit"] else None)


def simulation_study(
    num_datasets: int = 20,
    *,
    num_obs=(200,),
    separation=(3.0,),
    num_components=(2,),
    num_features: int = 2,
    methods=("em", "vb", "mcmc"),
    covariance_type: str = "full",
    test_size: int = 500,
    interval: float = 0.9,
    bootstrap_replicates: int = 100,
    engine_kwargs: Mapping[str, Mapping] | None = None,
    seed: int = 0,
    progress_bar: bool = True,
    executor=None,
    checkpoint=None,
    on_error: str = "raise",
):
    """Run :func:`compare` on many simulated data sets with known truth; rows stacked.

    For every combination of ``num_obs`` x ``separation`` x ``num_components`` (a grid) and each
    of ``num_datasets`` replicates, a data set is drawn from the generative story at known
    parameters (:func:`bayesgmm.datasets.make_mixture`), with ``test_size`` held-out points from
    the same mixture, and every method is fitted. Engines compile once per shape, so the
    replicates of one grid cell reuse the compiled programs.

    ``executor``: any :class:`concurrent.futures.Executor` (a ``ProcessPoolExecutor`` made with
    the "spawn" context, or a Dask cluster's ``client.get_executor()``) runs the data sets in
    parallel, across cores or machines; every data set is seeded by its position in the study,
    so the table equals the serial run's (up to the timing columns). Each worker compiles the engines once per shape (the persistent
    compilation cache shares the programs between processes on one machine).

    Parameters
    ----------
    num_datasets : int
        Simulated data sets per grid cell.
    num_obs, separation, num_components : int, float, int or sequences of them
        The grid: training rows per data set, separation of the component means (as in
        :func:`bayesgmm.datasets.make_mixture`) and number of components. Every combination is
        a cell.
    num_features : int
        Dimension D of every simulated data set.
    methods : sequence of str
        Engines to fit (names of :data:`METHODS`).
    covariance_type : str
        Covariance structure of the simulated truth and of every fit.
    test_size : int
        Held-out rows per data set, for the test log predictive density.
    interval : float
        Nominal level of the intervals whose coverage of the truth is reported.
    bootstrap_replicates : int
        Bootstrap refits behind EM's intervals (0: no intervals for EM).
    engine_kwargs : mapping of str to mapping, optional
        Options per engine, e.g. ``{"mcmc": {"num_samples": 500}}``.
    seed : int
        Seed of the study; data set ``i`` is seeded by ``seed`` and its position ``i``.
    progress_bar : bool
        Show a progress bar over the data sets.
    executor : concurrent.futures.Executor, optional
        Runs the data sets in parallel (see above); serial when omitted. A process pool must
        spawn, and threads run the tasks one at a time (as :func:`compare`'s).
    checkpoint : str or os.PathLike, optional
        A folder (created if missing) where each data set's rows are saved, as a Parquet file,
        as soon as they are computed. Called again with the same arguments and folder (after a
        job's time limit, a crash or Ctrl-C), the study loads the data sets found there and runs
        only the others: its table equals the uninterrupted run's (the timing columns are those
        of the run that computed each row). A folder holding another study's data sets (another
        seed, grid, engine option, precision or bayesgmm version) is refused.
    on_error : {"raise", "record"}
        As :func:`compare`'s: a failing fit stops the study, its error naming the data set, its
        grid cell, its seed and the engine (``"raise"``), or is a row with ``converged=False``
        and its message in the ``error`` column (``"record"``; :func:`summarise_study` counts it
        in ``num_failed`` and ``num_flagged``, and its numbers are missing from the averages,
        which biases them where failures depend on the data: small ``num_obs``, say). EM's
        bootstrap intervals failing never stops the study (NaN coverage, a warning in the row).

    Returns
    -------
    pandas.DataFrame
        The :func:`compare` columns plus ``dataset``, ``num_obs``, ``separation``,
        ``num_components``. Aggregate with :func:`summarise_study`.
    """
    import pandas as pd

    check_int("num_datasets", num_datasets)
    check_int("num_features", num_features)
    check_int("test_size", test_size, 0)
    for name, values in (("num_obs", num_obs), ("num_components", num_components)):  # the design, as run
        for value in np.atleast_1d(values).tolist():
            check_int(name, value)
    for value in np.atleast_1d(separation).tolist():
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not np.isfinite(value) or value < 0:
            raise ValueError(f"separation must hold non-negative numbers, got {value!r}.")
    if not (isinstance(seed, (int, np.integer)) and not isinstance(seed, bool) and 0 <= seed <= 2**44):
        # data set i is seeded by seed * 1_000_003 + i, which must stay below 2**64
        raise ValueError(f"seed must be an integer in [0, 2**44], got {seed!r}.")
    check_executor(executor)
    _check_on_error(on_error)
    methods = _check_methods(methods)  # one name, or several; the engines' options too, before any work
    if engine_kwargs is not None:
        _check_engine_kwargs_table(engine_kwargs, methods)
    _check_interval_and_replicates(interval, bootstrap_replicates)
    grid = [(n, s, k) for n in np.atleast_1d(num_obs) for s in np.atleast_1d(separation) for k in np.atleast_1d(num_components)]
    small = sorted({(int(n), int(k)) for n, _, k in grid if n < max(2, k)})
    if small:
        raise ValueError(f"num_obs must be at least num_components (and 2): the grid has (num_obs, num_components) = "
                         f"{small}.")
    settings = dict(num_features=num_features, methods=methods, covariance_type=covariance_type,
                    test_size=test_size, interval=interval, bootstrap_replicates=bootstrap_replicates,
                    engine_kwargs=None if engine_kwargs is None else {m: dict(v) for m, v in engine_kwargs.items()},
                    on_error=on_error, x64=bool(jax.config.jax_enable_x64))  # a worker computes in this process's precision
    tasks = [(index, (int(n), float(s), int(k)), r, seed * 1_000_003 + index)
             for index, ((n, s, k), r) in enumerate((cell, r) for cell in grid for r in range(num_datasets))]
    # each data set is independent and seeded by its index: on an executor, the same rows as the serial run
    saved = open_checkpoint(checkpoint, "simulation_study", dict(
        settings, engine_kwargs=settings["engine_kwargs"] or {}, num_datasets=num_datasets, grid=grid, seed=seed),
        len(tasks), frame_codec())
    frames = run_tasks(_study_task, tasks, (settings,), executor,
                       ("simulation study", "data set") if progress_bar else None, saved)
    return pd.concat(frames, ignore_index=True)


def _study_task(task, settings):
    """One data set of :func:`simulation_study` (a module-level function, so process pools and
    Dask can run it): simulate it from its seed, :func:`compare` the methods on it."""
    from .datasets import make_mixture

    with jax.enable_x64(settings["x64"]):
        return _study_data_set(task, settings, make_mixture)


def _study_data_set(task, settings, make_mixture):
    index, (n, s, k), r, data_seed = task
    test_size = settings["test_size"]
    data = make_mixture(n + test_size, k, settings["num_features"], covariance_type=settings["covariance_type"],
                        separation=s, seed=data_seed)
    x, x_test, labels = data.x[:n], data.x[n:], data.labels[:n]
    try:
        table = compare(
            x, k, methods=settings["methods"], covariance_type=settings["covariance_type"],
            x_test=x_test if test_size else None, labels=labels, truth=data.params, interval=settings["interval"],
            bootstrap_replicates=settings["bootstrap_replicates"], engine_kwargs=settings["engine_kwargs"], seed=data_seed,
            on_error=settings["on_error"],
        )
    except Exception as err:
        err.add_note(f"(in simulation_study data set {r} of the cell num_obs={n}, separation={s:g}, num_components={k}; "
                     f"data seed {data_seed})")
        raise
    table.insert(0, "dataset", r)
    table.insert(1, "num_obs", n)
    table.insert(2, "separation", s)
    table.insert(3, "num_components", k)
    return table


def summarise_study(study, *, exclude_flagged: bool = False):
    """Aggregate a :func:`simulation_study` table per method and grid cell, with Monte Carlo
    standard errors.

    Every numeric column is averaged over the cell's data sets (a coverage column becomes the
    empirical coverage of the nominal intervals, beside ``width_*``, the intervals' mean width) and
    gets a ``<column>_mcse`` beside it: the standard deviation over the data sets divided by the
    square root of their number (those where the column is defined: data sets are independent;
    the scalars within one are not, so they are never counted separately). Fits that did not converge or raised a warning are
    counted per cell (``num_flagged``, ``flagged_share``, out of ``num_fits``) and, with
    ``exclude_flagged=True``, left out of the averages (``num_datasets`` counts what was averaged).
    Fits that failed (``on_error="record"``) are flagged too, counted in ``num_failed`` and never
    averaged.

    Parameters
    ----------
    study : pandas.DataFrame
        From :func:`simulation_study`.
    exclude_flagged : bool
        Average only the fits that converged without a warning.

    Returns
    -------
    pandas.DataFrame
        One row per (method, num_obs, separation, num_components).
    """
    import pandas as pd

    keys = ["method", "num_obs", "separation", "num_components"]
    lacking = [] if not isinstance(study, pd.DataFrame) else [c for c in keys if c not in study.columns]
    if not isinstance(study, pd.DataFrame) or lacking or study.empty:
        what = "not a DataFrame" if not isinstance(study, pd.DataFrame) else (
            f"lacks column(s) {lacking}" if lacking else "empty")
        raise ValueError(f"study must be a table from simulation_study; it is {what}.")
    converged = study["converged"].astype(bool) if "converged" in study else pd.Series(True, index=study.index)
    warned = study["warnings"].fillna("").astype(str) != "" if "warnings" in study else False
    failed = study["error"].notna() if "error" in study else pd.Series(False, index=study.index)
    flagged = ~converged | warned | failed
    counts = study.assign(_flagged=flagged).groupby(keys, sort=False)["_flagged"].agg(["size", "sum"])
    kept = study[~flagged] if exclude_flagged else study[~failed]  # a failed fit has nothing to average
    numeric = [c for c in study.columns
               if c not in keys + ["dataset", "warnings"] and pd.api.types.is_numeric_dtype(study[c])]
    grouped = kept.assign(**{c: kept[c].astype(float) for c in numeric}).groupby(keys, sort=False)
    means, sds, sizes = grouped[numeric].mean(), grouped[numeric].std(ddof=1), grouped.size()
    observed = grouped[numeric].count()  # a column's values in the cell (NaN where not defined)
    out = pd.DataFrame(index=counts.index)
    for c in numeric:
        out[c] = means[c]
        out[f"{c}_mcse"] = sds[c] / np.sqrt(observed[c])
    out["num_datasets"] = sizes.reindex(counts.index).fillna(0).astype(int)
    out["num_fits"] = counts["size"].astype(int)
    out["num_flagged"] = counts["sum"].astype(int)
    out["num_failed"] = study.assign(_failed=failed).groupby(keys, sort=False)["_failed"].sum().astype(int)
    out["flagged_share"] = counts["sum"] / counts["size"]
    return out.reset_index()
