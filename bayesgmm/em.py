"""Expectation-maximisation for Gaussian mixtures, compiled with JAX.

The iteration and the batched program live in :mod:`bayesgmm._em_core`; this module is the
host side: validation, units, the default search, and packaging the result.

**Defaults that reach the optimum.** ``fit_em(x, K)`` runs the em-EM search of
:mod:`bayesgmm._em_core`: ``n_init="auto"`` k-means++ starts (up to 256 on small data, fewer as
the data grow, see :func:`auto_starts`) each run :data:`INIT_ITER` iterations, and the best few
continue until the Aitken-projected remaining gain of the objective is below ``tol`` per
observation (:mod:`bayesgmm._iterate`). The fit kept is the best *non-degenerate* one
(:func:`bayesgmm._numerics.degenerate_mask`). Above :data:`bayesgmm._split_merge.SPLIT_MERGE_ABOVE`
components split-and-merge moves (:mod:`bayesgmm._split_merge`) follow the search: merge two components
on one cluster, split one on two, keep what raises the objective. Every reported total is
recomputed in float64 from the returned parameters (:mod:`bayesgmm._numerics`), whatever the
compute precision.

**Compile once.** K, D, the covariance structure, the number of starts and the trace's size
bucket are static; ``max_iter``, ``tol``, ``reg_covar``, the data values, the starting values
and the seed are not, so fits differing only in those reuse the compiled program.

**Units.** The data are standardised internally (:func:`bayesgmm.params.standardisation`), so
the fit does not depend on the units; everything reported is on the original scale.
"""

from __future__ import annotations

import numpy as np

from . import _covariance_models, _numerics, _sharding, _split_merge
from ._em_core import INIT_ITER, EMConfig, auto_starts, resolve_starts, short_run_length  # noqa: F401 (auto_starts: the docs)
from ._em_host import (
    DEFAULT_TOL,
    check_em_options,
    choose_run,
    data_info,
    objective_shift,
    package,
    prepare,
    refuse_dependent_columns,
    run_search,
    search_rows,
    user_init,
)
from ._executors import recorded_warnings
from .params import (
    ConvergenceWarning,
    Prior,
    check_bool,
    check_int,
    check_sample_weight,
    prepare_data,
    seed_to_key,
)
from .results import FitResult

__all__ = ["fit_em", "fit_em_path"]

def fit_em(
    x,
    num_components: int,
    *,
    covariance_type: str = "full",
    prior: Prior | None = None,
    n_init="auto",
    init_iter: int | None = None,
    init_params: str = "k-means++",
    weights_init=None,
    means_init=None,
    precisions_init=None,
    tol: float | None = None,
    max_iter: int = 1000,
    reg_covar: float = 1e-10,
    hard: bool = False,
    allow_degenerate: bool = False,
    sample_weight=None,
    devices=None,
    missing: str = "error",
    seed=0,
) -> FitResult:
    """Fit a Gaussian mixture by EM: maximum likelihood, or MAP when a ``prior`` is given.

    With the defaults the fit reaches the best optimum that many restarts find (see the
    module docstring): many k-means++ starts run :data:`INIT_ITER` iterations each, the best
    continue to convergence, and the best non-degenerate one is returned.

    Parameters
    ----------
    x : array-like (N, D) or (N,)
        Data; a 1-D array is one feature. DataFrame column names become feature names.
    num_components : int
        K, the number of components.
    covariance_type : {"full", "diag", "spherical", "tied"} or str
        Covariance structure, as scikit-learn names it, or one of mclust's 14 models
        (:data:`bayesgmm.params.COVARIANCE_MODELS`, ``"EII"`` ... ``"VVV"``), whose
        covariances are stored in the layout of the smallest of the four structures that holds
        them (``FitResult.covariance_model`` keeps the model).
    prior : Prior, optional
        Conjugate prior (e.g. ``Prior.default(x, K)``). Given: MAP-EM, maximising
        log-likelihood + log prior density of :func:`bayesgmm.model.gmm_model`; the
        Dirichlet concentration must then be >= 1. For mclust's constrained models the prior
        is that of the storage layout restricted to the model's constraint set (one conjugate
        term per component; see "The model and how each engine fits it" in the documentation).
        Omitted: maximum likelihood.
    n_init : "auto" or int
        ``"auto"``: the em-EM search, as many starts as the data size makes cheap
        (:func:`auto_starts`: 256 on data of a few hundred rows, 4 for N=1e5, D=16, K=16, one
        for K = 1, where every start gives the same fit; above 32 components 8 (K - 32) up to 128 where
        affordable: fewer missed well-separated clusters, merging two and splitting a third), of
        which the best short runs (``init_iter`` iterations) continue; above
        :data:`bayesgmm._split_merge.SPLIT_MERGE_ABOVE` components, split-and-merge moves follow
        (:func:`bayesgmm._split_merge.improve`: where large data leave few starts). Where one run continues
        (16 starts or fewer: larger data), the k-means++ starts are the best of 32 seedings by
        their k-means potential on 8192 rows (:func:`bayesgmm.kmeans.screened_seedings`), so
        that few starts still give every cluster a centre. An int: that many
        independent restarts, each run to convergence (scikit-learn's meaning), unless
        ``init_iter`` is given. One compiled program runs them all, in one call or, for the
        short runs, in calls of as many lanes as runs are kept. When ``weights_init``,
        ``means_init`` and ``precisions_init`` are all given there is one start whatever ``n_init``.
    init_iter : int, optional
        Length of the em-EM short runs. With ``n_init="auto"`` the default is :data:`INIT_ITER`
        (and the number of starts is sized for the given length). With an int ``n_init`` and
        ``init_iter`` given, the starts run ``init_iter`` iterations each (counted in
        ``max_iter``) and the best one in 16 (at least one, at most 16) continue to convergence.
        Measured on N=1e5, D=K=16 with 8 iterations in float32 (``benchmarks/em_vs_sklearn.py
        --restarts-only``), ``n_init=10, init_iter=2`` cost 1.7-2.1 times one start where ten
        independent restarts cost 6.8-8.2 times (1.99 and 7.54 on 2026-12-07); the saving grows
        with the iterations a fit needs.
    init_params : {"k-means++", "kmeans", "random", "random_from_data"}
        Starting responsibilities, with scikit-learn's meanings. The default seeds each start at
        K data points chosen by k-means++ (different per start and per seed); ``"kmeans"``
        refines them by Lloyd's algorithm first, which makes most starts alike.
    weights_init, means_init, precisions_init : array, optional
        User-given starting parameters (original scale), overriding ``init_params`` piecewise.
    tol : float, optional
        Convergence threshold per observation on the projected remaining gain of the objective
        (Aitken acceleration: ``(l_t - l_{t-1}) / (1 - a_t)`` with ``a_t`` the ratio of the last
        two gains), default :data:`DEFAULT_TOL`. Unlike a test on the last gain alone it is not
        fooled by a slow start. A tolerance finer than the compute precision resolves is met at
        that precision (``info["precision_floor_per_obs"]``), with a :class:`PrecisionWarning`
        when it was asked for explicitly.
    max_iter : int
        Maximum EM iterations per run (short runs included). 0 returns the initialisation: the
        start of highest initial objective, not updated (``n_iter=0``; no ConvergenceWarning
        nor DegenerateComponentWarning).
    reg_covar : float
        Added to the diagonal of every covariance after each M-step, in units of each
        feature's robust variance (the data are standardised internally), so it depends on
        neither the units nor a few outliers. The default keeps covariances positive definite
        and widens a component's variance by 1e-10 times the ratio of the feature's robust
        variance to it: negligible unless a cluster is some 1e4 times narrower (in standard
        deviation) than the data's spread (standard deviations of 0.3 around means 5000 apart:
        1.5% wider; of 0.1: 15%, and flagged). For such clusters pass a smaller ``reg_covar``
        (e.g. 1e-14, or 0).
    hard : bool
        Classification EM: hard assignments in the E-step (the classification log-likelihood
        ``sum_n max_k log pi_k N(x_n | mu_k, Sigma_k)`` is the objective; with a ``prior``, that
        plus the log prior density, ``objective="classification_log_posterior"``).
    allow_degenerate : bool
        Keep the run of highest objective even when it is degenerate (an empty, collapsed or
        spurious component; :func:`bayesgmm._numerics.degenerate_mask`). By default the best
        non-degenerate run is kept and a degenerate one only when every run is.
    sample_weight : array (N,), optional
        Non-negative row weights (frequency weights, bootstrap counts): row ``n`` counts
        ``sample_weight[n]`` times in every sum. The log-likelihood reported is the weighted one.
        Weights are counts of observations, not probabilities: a component holding less than
        one observation's worth is flagged as empty, and counts as small as about 1e-5 (weights
        normalised to sum to 1 on small data) are biased in float32 by the M-step's floor of 10
        machine epsilons on every count (scikit-learn's); rescale such weights to a mean of 1
        for a maximum-likelihood fit (which does not depend on their scale).
    devices : None, "all", int, list of jax.Device or jax.sharding.Mesh
        Shard the rows over these devices (data parallelism; see :mod:`bayesgmm._sharding`).
        None: no sharding. The result equals the single-device fit up to floating-point
        reduction order (in float32 the E-step then takes its centred form throughout), missing
        values included; in float32 that order can change the iteration count and, among
        near-equal starts, which one wins (the components then come in another order). Sharded
        rows keep one E-step form (float64: the fast one) where one device switches to the
        centred form for a component on one or two points, so such a degenerate component's
        covariance can differ in its last digits (relative 1e-2 of a 1e-11 variance, measured). Across
        processes (:func:`bayesgmm.initialize_distributed`) every process passes the same call;
        a difference is a ValueError in every process.
    missing : {"error", "marginalize"}
        ``"marginalize"``: NaN entries are missing at random, and EM maximises the observed-data
        likelihood (each row's density is the mixture of the Gaussians' marginals over its
        observed columns) with the exact conditional E-step of :mod:`bayesgmm._missing`; the
        reported ``log_likelihood`` is the observed-data one. The default refuses NaN.
    seed : int or jax key
        Same seed, same result, bit for bit.

    Returns
    -------
    FitResult
        ``method`` is "em", "map-em" or "hard-em". ``log_likelihood``, ``trace[-1]`` and
        ``info["entropy"]`` are float64 recomputations at the returned parameters; earlier
        ``trace`` entries are in the compute precision. ``info`` holds ``compile_seconds`` (0.0
        when the compiled program was reused), ``run_seconds``, ``n_init`` (starts) and
        ``num_kept``, ``init_iter`` (the short runs' length; None when every start ran to
        convergence), the final objective of every kept run (``restart_objectives``) and of
        every start after its short run (``start_objectives``), which rank the runs in the compute
        precision, as the earlier ``trace`` entries; after split-and-merge moves,
        ``split_merge`` (:func:`bayesgmm._split_merge.improve`'s record), and then ``n_iter`` and ``trace``
        are the last kept move's run (from its start).

    Raises
    ------
    ValueError
        Invalid input, or every run ended with a singular covariance.
    """
    with _sharding.ProcessCall(devices, "fit_em") as call:  # an error here stops every process
        x = prepare_data(x, missing=missing)  # validated once: prepare() below takes the record as is
        arr = x.values
        weight = check_sample_weight(sample_weight, arr.shape[0])
        if weight is not None and isinstance(num_components, (int, np.integer)) and np.count_nonzero(weight) < num_components:
            raise ValueError(
                f"sample_weight has {np.count_nonzero(weight)} row(s) of positive weight, fewer than the "
                f"{num_components} components; give more rows positive weight or use fewer components."
            )
        tol_explicit = tol is not None
        tol = DEFAULT_TOL if tol is None else tol
        prep = prepare(x, num_components, covariance_type, prior, sample_weight=weight, missing=missing)
        max_iter = check_int("max_iter", max_iter, 0)
        hard, allow_degenerate = check_bool("hard", hard), check_bool("allow_degenerate", allow_degenerate)
        init_only = max_iter == 0
        check_em_options(init_params, n_init, 1 if init_only else max_iter, tol, reg_covar)
        n, d = prep.arr.shape
        k = prep.num_components
        layout = prep.covariance_type  # the covariances' layout; covariance_type may name an mclust model
        short_iter = short_run_length(init_iter)
        starts, kept = resolve_starts(n_init, search_rows(prep), k, d, layout, init_iter)
        given = user_init(weights_init, means_init, precisions_init, k, d, layout, prep.shift, prep.sd, prep.dtype)
        if all(u is not None for u in given):
            starts = kept = 1  # one given start: nothing to search (any other start would be the same)
        key = seed_to_key(seed)
        rows = _sharding.resolve(devices, n)
        call.agree(
            rows, data=prep.xs, observed=prep.observed, sample_weight=weight, num_components=k,
            covariance_model=prep.covariance_model,
            prior=prep.prior_arrays, start=given, key=key, options=dict(
                init_params=init_params, starts=starts, kept=kept, max_iter=max_iter, tol=tol, reg_covar=reg_covar,
                hard=hard, allow_degenerate=allow_degenerate, init_iter=short_iter))
    xs, weight_dev = _sharding.shard_rows(rows, prep.xs, None if weight is None else weight.astype(prep.xs.dtype))
    observed = _sharding.pad_observed(prep.observed, xs.shape[0], rows)
    config = EMConfig(k, d, layout, bool(hard), prior is not None, covariance_model=prep.covariance_model)
    found = run_search(
        prep, key, given, prep.prior_arrays, tol=tol, reg_covar=reg_covar, sample_weight=weight_dev, active=None,
        max_iter=max_iter, config=config, init_method=init_params, num_groups=1, num_starts=starts, num_kept=kept,
        init_iter=short_iter, data=xs, allow_degenerate=allow_degenerate, sharded=rows.mesh is not None, observed=observed,
        host_weight=weight,
    )
    out = found.output
    finals = np.asarray(out.lanes.objective, dtype=np.float64)
    best = choose_run(finals, out.degenerate, allow_degenerate=allow_degenerate)
    search_best, search_degenerate = best, np.asarray(out.degenerate).any(axis=-1)
    moves = None
    if splits_and_merges(n_init, prep, given, hard, max_iter, found) and best >= 0:
        out, best, moves = _split_merge.improve(prep.xs, weight, found, best, prep.covariance_type, tol=tol,
                                                reg_covar=reg_covar)
    unbounded = best >= 0 and reg_covar == 0 and bool(np.any(_numerics.collapsed_mask(
        np.asarray(out.lanes.params.covariances[best], np.float64), layout, 0.0,
        float(np.finfo(prep.dtype).eps), k, d)))  # without regularisation the likelihood has no maximum there
    if best < 0 or unbounded or np.asarray(out.degenerate[best]).all():
        refuse_dependent_columns(prep)  # no component fits: say why when the columns are the reason
    if best < 0 or unbounded:
        raise ValueError(
            "EM failed: a covariance became singular in every run (ill-defined empirical "
            "covariance, e.g. duplicated points or a component on too few points). Increase "
            "reg_covar, use fewer components, or fit MAP-EM with prior=bayesgmm.Prior.default(x, K)"
            + ("; if the data hold real clusters some 1e4 times narrower than their spread, pass a smaller "
               "reg_covar instead (e.g. 1e-14, or 0)." if reg_covar > 0 else ".")
        )
    obj_shift = objective_shift(prep, k, weight)
    info = {
        "seed": seed if isinstance(seed, (int, np.integer)) else None,
        "n_init": int(starts),
        "num_kept": int(kept),
        "init_iter": min(short_iter, max_iter) if kept < starts else None,
        "init_params": init_params,
        "best_restart": search_best,  # the search's runs (split-and-merge moves may follow)
        "restart_objectives": (finals + obj_shift).tolist(),
        "restart_degenerate": search_degenerate.tolist(),
        "start_objectives": (found.start_objective[0] + obj_shift).tolist(),
        "compile_seconds": found.compile_seconds + (moves["compile_seconds"] if moves else 0.0),
        "run_seconds": found.run_seconds + (moves["run_seconds"] + moves["host_seconds"] if moves else 0.0),
        "fit_seconds": found.compile_seconds + found.run_seconds + (moves["seconds"] if moves else 0.0),
        **({} if moves is None else {"split_merge": moves}),
        "num_devices": rows.num_devices,
        **data_info(prep, missing, weight),
    }
    return package(prep, out, best, hard=hard, reg_covar=reg_covar, sample_weight=weight, info=info, max_iter=max_iter,
                   tol=tol, tol_explicit=tol_explicit)


def splits_and_merges(n_init, prep, given, hard: bool, max_iter: int, found) -> bool:
    """Whether :func:`fit_em` follows its search with split-and-merge moves
    (:func:`bayesgmm._split_merge.improve`): the default search (``n_init="auto"``, no given
    start) of more than :data:`bayesgmm._split_merge.SPLIT_MERGE_ABOVE` components, soft EM,
    complete data, one of the four covariance structures (not mclust's constrained models)."""
    return (isinstance(n_init, str) and _split_merge.applies(prep.num_components) and not hard and max_iter > 0
            and prep.observed is None and all(g is None for g in given) and found.run_from is not None
            and prep.covariance_model in _covariance_models.NATIVE)


def fit_em_path(x, num_components: int, iterations, **options) -> dict:
    """EM's fit after each of ``iterations`` steps, all from the same start (for figures of EM at work).

    Runs :func:`fit_em` with ``max_iter=t, tol=0`` for each ``t`` (one compiled program serves
    every ``t``); stopping at ``max_iter`` is the point here, so the ``ConvergenceWarning`` is
    silenced. ``t = 0`` is the start itself and needs all three of ``weights_init``,
    ``means_init`` and ``precisions_init``; otherwise pieces of the start not given are
    fit_em's own (deterministic for a fixed ``seed``).

    Parameters
    ----------
    x : array-like or Data
        The data, as :func:`fit_em` takes them.
    num_components : int
        K, the number of components.
    iterations : sequence of int

        Distinct numbers of EM steps (M-steps), 0 for the start.
    **options
        Passed to :func:`fit_em` (``weights_init``, ``means_init``, ``precisions_init``,
        ``covariance_type``, ``hard``, ``prior``, ``reg_covar``, ``seed``, ...), except
        ``max_iter`` and ``tol``.

    Returns
    -------
    dict int -> FitResult
    """
    its = [int(t) for t in np.atleast_1d(iterations)]
    if not its or min(its) < 0 or len(set(its)) != len(its):
        raise ValueError(f"iterations must be distinct non-negative integers, got {iterations!r}.")
    clash = sorted({"max_iter", "tol"} & set(options))
    if clash:
        raise ValueError(f"fit_em_path sets {clash} itself (one run per number of iterations); leave them out.")
    given = all(options.get(name) is not None for name in ("weights_init", "means_init", "precisions_init"))
    if 0 in its and not given:
        raise ValueError(
            "iteration 0 (the starting point) needs weights_init, means_init and precisions_init; "
            "pass all three or drop 0 from iterations."
        )
    fits = {}
    for t in its:
        with recorded_warnings("ignore", ConvergenceWarning):  # one thread at a time (_executors)
            fits[t] = fit_em(x, num_components, max_iter=t, tol=0.0, **options)
    return fits
