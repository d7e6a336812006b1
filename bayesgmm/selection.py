"""Choosing the number of components and the covariance structure.

:func:`select` fits every (K, structure) of a grid by EM and tabulates BIC, AIC and ICL, the
mclust way. The K grid of one structure runs as **one** compiled, vmapped program: every fit
uses arrays sized for the largest K, with the components beyond its own K switched off by a
traced mask (:func:`bayesgmm._stats.mask_components`), so the grid costs one compilation per
structure instead of one per (K, structure), and all its restarts run together.

Sign convention (scikit-learn's): **lower is better** for every criterion here,

* ``bic = -2 log L + p log N``;
* ``aic = -2 log L + 2 p``;
* ``icl = bic - 2 sum_n log max_k r_nk``: BIC penalised by the log-probability of each row's most
  probable label under the fitted responsibilities (the integrated completed likelihood of
  Biernacki, Celeux & Govaert 2000, as mclust's ``icl`` computes it), so overlapping components
  cost more. The ``entropy`` column is the responsibilities' entropy ``-sum_n sum_k r_nk log r_nk``
  (McLachlan & Peel's ICL-BIC is ``bic + 2 * entropy``).

(mclust reports ``-bic`` and ``-icl``, higher better.) ``p`` counts free parameters
(:func:`bayesgmm._numerics.num_free_parameters`): as scikit-learn does for its four structures,
and for mclust's models as mclust does (its ``nVarParams`` plus the means and weights).

:func:`select_bayesian` compares K for the Bayesian engines by PSIS-LOO and WAIC (ArviZ,
from the per-observation marginal log-likelihood of each posterior draw) and reports the
effective number of components of an overfitted sparse mixture.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
import warnings
from typing import Any, Mapping

import jax
import numpy as np

from . import _covariance_models, _em_core, _em_host, _sharding, _split_merge
from ._covariance_models import MODELS
from ._executors import recorded_warnings
from ._numerics import num_free_parameters
from .em import fit_em
from .engines import get_engine
from .params import (
    COVARIANCE_TYPES,
    ConvergenceWarning,
    DegenerateComponentWarning,
    Prior,
    check_bool,
    check_data,
    check_num_components,
    prepare_data,
    seed_to_key,
)
from .results import FitResult

__all__ = ["SelectionResult", "select", "select_bayesian"]

CRITERIA = ("bic", "aic", "icl")


@dataclasses.dataclass(frozen=True, eq=False)
class SelectionResult:
    """The fits of a model-selection grid and their criteria.

    Attributes
    ----------
    table : pandas.DataFrame
        One row per (covariance_type, num_components): ``log_likelihood``, ``num_parameters``,
        ``bic``, ``aic``, ``icl`` (lower is better; the module docstring has their formulas),
        ``entropy`` (of the responsibilities), ``converged``, ``n_iter``,
        ``degenerate`` (a component collapsed or emptied: its criteria are unreliable).
    fits : mapping
        ``(covariance_type, num_components) -> FitResult``.
    info : mapping
        Timing (``seconds``, ``compile_seconds`` per structure) and settings.
    """

    table: Any
    fits: Mapping[tuple, FitResult]
    info: Mapping[str, Any]

    def best(self, criterion: str = "bic", *, allow_degenerate: bool = False) -> FitResult:
        """The fit with the lowest ``criterion`` (skipping degenerate fits unless allowed).

        Parameters
        ----------
        criterion : {"bic", "aic", "icl"}
            The criterion minimised (lower is better).
        allow_degenerate : bool
            Also consider fits flagged ``degenerate`` in :attr:`table`, whose criteria are
            unreliable.

        Returns
        -------
        FitResult
            The fit of the best (covariance_type, num_components) cell.

        Raises
        ------
        ValueError
            An unknown criterion, or every fit degenerate while ``allow_degenerate`` is False.
        """
        if criterion not in CRITERIA:
            raise ValueError(f"criterion must be one of {CRITERIA}, got {criterion!r}.")
        table = self.table if allow_degenerate else self.table[~self.table["degenerate"]]
        if table.empty:
            raise ValueError("every fit of the grid is degenerate; pass allow_degenerate=True or use prior='default'.")
        row = table.loc[table[criterion].idxmin()]
        return self.fits[(row["covariance_type"], int(row["num_components"]))]

    def criterion_table(self, criterion: str = "bic", *, mclust_sign: bool = False):
        """The criterion as a K-by-structure table, mclust's ``mclustBIC`` layout.

        Parameters
        ----------
        criterion : {"bic", "aic", "icl"}
            The criterion tabulated.
        mclust_sign : bool
            False: lower is better (this module's sign). True: ``-criterion``, higher is better,
            the numbers ``mclustBIC`` / ``mclustICL`` print.

        Returns
        -------
        pandas.DataFrame
            Index ``num_components``, one column per structure in the grid's order. A fit whose
            every run was degenerate is NaN (mclust's NA).
        """
        if criterion not in CRITERIA:
            raise ValueError(f"criterion must be one of {CRITERIA}, got {criterion!r}.")
        table = self.table.copy()
        values = table[criterion].where(~table["degenerate"])
        table[criterion] = -values if mclust_sign else values
        wide = table.pivot(index="num_components", columns="covariance_type", values=criterion)
        wide = wide[list(dict.fromkeys(self.table["covariance_type"]))]
        wide.columns.name = None
        return wide

    def plot(self, criterion: str = "bic", ax=None):
        """The mclust-style criterion-versus-K plot (:func:`bayesgmm.plotting.plot_selection`).

        Parameters
        ----------
        criterion : {"bic", "aic", "icl"}
            The criterion plotted; the best model by it is ringed.
        ax : matplotlib Axes, optional
            Axes to draw in; default a new figure.

        Returns
        -------
        matplotlib Axes
        """
        from .plotting import plot_selection

        return plot_selection(self.table, criterion=criterion, ax=ax)


def _check_k_range(k_range, num_obs: int) -> list[int]:
    try:
        k_range = list(k_range)  # once: a generator is consumed by the first pass
        ks = sorted({int(k) for k in k_range})
    except TypeError:
        raise ValueError(f"k_range must be an iterable of positive integers, got {k_range!r}.") from None
    if not ks or ks[0] < 1 or any(int(k) != k for k in k_range):
        raise ValueError(f"k_range must hold positive integers, got {list(k_range)!r}.")
    if ks[-1] > num_obs:
        raise ValueError(
            f"k_range goes up to {ks[-1]} components but x has {num_obs} observations; use fewer components."
        )
    return ks


def _grid_prior(prior, x, ks, k_max, covariance_type, prep):
    """The prior arrays for the grid's groups: None, one shared prior, or mclust's per-K default."""
    if prior is None:
        return None
    if isinstance(prior, str):
        priors = [Prior.default(x, k) for k in ks]
    else:
        priors = [prior] * len(ks)
    arrays = [p.standardised(prep.shift, prep.sd).arrays(k_max, covariance_type, dtype=np.dtype(prep.dtype)) for p in priors]
    return jax.tree_util.tree_map(lambda *a: np.stack(a), *arrays)


def _precisions_init(fit: FitResult, layout: str) -> np.ndarray:
    """The inverse covariances of ``fit`` in ``layout`` (a nested model's fit as a feasible start)."""
    cov = fit.full_covariances
    if layout == "full":
        return np.linalg.inv(cov)
    if layout == "tied":
        return np.linalg.inv(cov[0])
    variances = np.einsum("kii->ki", cov)
    return 1.0 / (variances if layout == "diag" else variances[:, 0])


def _climb_nested(x, fits, failed, types, ks, allow_degenerate: bool, **options) -> None:
    """Where a model's fit is worse than that of a model nested in it (whose optimum is a point of
    the larger model), refit the larger from the smaller's fit, a feasible start, so that EM can
    only climb from there: the table then orders nested models' likelihoods as their optima do."""
    names = {_covariance_models.resolve(t)[1]: t for t in types}
    for _ in range(3):  # a few passes: an improved fit can lift the models above it in turn
        changed = False
        for small, large in _covariance_models.nested_pairs(names):  # chains too: spherical in diag, tied in full
            for k in ks:
                a, b = (names[small], k), (names[large], k)
                if failed[a] or fits[b].log_likelihood >= fits[a].log_likelihood - 1e-9 * abs(fits[a].log_likelihood):
                    continue
                start = fits[a]
                layout = _covariance_models.storage(large)
                with recorded_warnings("ignore"):  # one thread at a time (_executors)
                    refit = fit_em(x, k, covariance_type=names[large], weights_init=start.weights,
                                   means_init=start.means, precisions_init=_precisions_init(start, layout), n_init=1,
                                   **options)
                usable = allow_degenerate or not refit.degenerate_components  # a flagged refit does not replace a fit
                if refit.log_likelihood > fits[b].log_likelihood and usable:
                    info = {**refit.info, "selection_grid": True, "started_from": f"{small}, K={k}"}
                    fits[b] = dataclasses.replace(refit, info=info)
                    failed[b] = False
                    changed = True
        if not changed:
            return


def select(
    x,
    k_range=range(1, 6),
    *,
    covariance_types=COVARIANCE_TYPES,
    prior=None,
    n_init="auto",
    init_params: str = "k-means++",
    tol: float | None = None,
    max_iter: int = 1000,
    reg_covar: float = 1e-10,
    allow_degenerate: bool = False,
    missing: str = "error",
    seed=0,
) -> SelectionResult:
    """BIC, AIC and ICL of EM fits over a grid of K and covariance structures.

    Every (K, structure) is fitted by :func:`bayesgmm.fit_em`'s search with the same options
    (the default em-EM search, the best non-degenerate run kept, then above 4 components its
    split-and-merge moves, :func:`bayesgmm._split_merge.improve_cells`), and its criteria are
    computed in float64 from the returned parameters. Its starts are its own (each K a split of the seed's
    key, as many as the grid's largest K takes), not those of ``fit_em(x, K, seed=seed)``: where
    a K has several optima of nearly equal likelihood, the grid and ``fit_em`` may return
    different ones, and a grid of other K's may too.

    Parameters
    ----------
    x : array-like (N, D) or (N,)
        Data; DataFrame column names become feature names.
    k_range : iterable of int
        Numbers of components to try.
    covariance_types : str or iterable of str
        Structures to try: scikit-learn's ``"full"``, ``"diag"``, ``"spherical"``, ``"tied"``
        and mclust's 14 models (``"EII"`` ... ``"VVV"``, :data:`bayesgmm.params.COVARIANCE_MODELS`);
        ``"all"`` is mclust's 14, so the table and ``criterion_table("bic", mclust_sign=True)``
        are mclust's BIC table. A single name is one structure.
    prior : None, "default" or Prior
        None: maximum likelihood. ``"default"``: MAP-EM with mclust's default prior for each K
        (``Prior.default(x, K)``), which keeps covariances from collapsing at large K (mclust's
        ``priorControl()``); the criteria then use the log-likelihood at the MAP estimate, as
        mclust does. A :class:`Prior` is used for every K.
    n_init : "auto" or int
        Starts per (K, structure), as :func:`bayesgmm.fit_em` (``"auto"`` sizes them for the
        largest K).
    init_params, tol, max_iter, reg_covar, allow_degenerate, missing, seed
        As :func:`bayesgmm.fit_em` (``missing="marginalize"``: the criteria use the observed-data
        log-likelihood). Each K uses its own split of the seed's key.

    Returns
    -------
    SelectionResult
        ``table`` sorted by structure and K; criteria are lower-is-better. A row whose every run
        was degenerate has ``degenerate=True`` (its criteria are unreliable).
    """
    import pandas as pd

    arr, names = check_data(x, missing=missing)
    n = arr.shape[0]
    ks = _check_k_range(k_range, n)
    if isinstance(covariance_types, str):  # one name, not its letters
        covariance_types = MODELS if covariance_types == "all" else [covariance_types]
    types = list(dict.fromkeys(covariance_types))
    for name in types:
        _covariance_models.resolve(name)  # a ValueError listing the valid names
    if not types:
        raise ValueError("covariance_types is empty; pass 'all' or at least one of " + str(COVARIANCE_TYPES + MODELS) + ".")
    if prior is not None and not (isinstance(prior, Prior) or prior == "default"):
        raise ValueError(f"prior must be None, 'default' or a bayesgmm.Prior, got {prior!r}.")
    tol = _em_host.DEFAULT_TOL if tol is None else tol
    _em_host.check_em_options(init_params, n_init, max_iter, tol, reg_covar)
    allow_degenerate = check_bool("allow_degenerate", allow_degenerate)  # "no" would be taken as true
    k_max = ks[-1]
    d = arr.shape[1]
    rows, fits, failed, compile_seconds = [], {}, {}, {}
    start = time.perf_counter()
    for ct in types:
        active = np.arange(k_max)[None] < np.asarray(ks)[:, None]
        shared_prior = prior if isinstance(prior, Prior) else None
        prep = _em_host.prepare(arr, k_max, ct, shared_prior, max_components=k_max, missing=missing)
        layout = prep.covariance_type
        starts, kept = _em_core.resolve_starts(n_init, _em_host.search_rows(prep), k_max, d, layout)
        prior_arrays = _grid_prior(prior, arr, ks, k_max, layout, prep)
        config = _em_core.EMConfig(k_max, d, layout, False, prior is not None, covariance_model=prep.covariance_model)
        # rows padded to fit_em's bucket (weight 0): grids on other N of the bucket reuse the program
        xs, row_weight = _sharding.shard_rows(_sharding.resolve(None, n), prep.xs, None)
        found = _em_host.run_search(
            prep, seed_to_key(seed), (None, None, None), prior_arrays, tol=tol, reg_covar=reg_covar,
            sample_weight=row_weight, active=active, max_iter=max_iter, config=config, init_method=init_params,
            num_groups=len(ks), num_starts=starts, num_kept=kept, allow_degenerate=allow_degenerate,
            data=xs, observed=_sharding.pad_observed(prep.observed, xs.shape[0]),
        )
        compile_seconds[ct] = found.compile_seconds
        objective = np.asarray(found.output.lanes.objective, np.float64).reshape(len(ks), kept)
        degenerate = np.asarray(found.output.degenerate).reshape(len(ks), kept, k_max)
        bests = [_em_host.choose_run(objective[j], degenerate[j], allow_degenerate=allow_degenerate)
                 for j in range(len(ks))]
        # split-and-merge moves, as fit_em's default search takes them, for every cell of more than
        # SPLIT_MERGE_ABOVE components, all in the grid's own program (_split_merge.improve_cells)
        moved = [j for j, k in enumerate(ks) if bests[j] >= 0 and _split_merge.applies(k)] if (
            isinstance(n_init, str) and max_iter > 0 and prep.observed is None
            and prep.covariance_model in _covariance_models.NATIVE) else []
        improved = dict(zip(moved, _split_merge.improve_cells(
            prep.xs, None, found, [(j, j * kept + bests[j], ks[j]) for j in moved], layout, tol=tol,
            reg_covar=reg_covar))) if moved else {}
        for j, k in enumerate(ks):
            best = bests[j]
            out, index = found.output, j * kept + max(best, 0)
            moves = None
            if j in improved:
                out, index, moves = improved[j]
            k_prior = Prior.default(arr, k) if prior == "default" else shared_prior
            prep_k = prep._replace(num_components=k, prior=k_prior, feature_names=names)
            shift = _em_host.objective_shift(prep_k, k)  # the runs' objectives in the data's units, as fit_em's
            # a cell whose every run failed (best < 0) is packaged from a run whose covariance is not
            # positive definite: its totals are NaN (the table says degenerate, BIC inf), not a warning
            quiet = np.errstate(invalid="ignore", divide="ignore") if best < 0 else contextlib.nullcontext()
            try:
                with quiet:
                    fit = _em_host.package(
                        prep_k, out, index, hard=False, reg_covar=reg_covar, num_components=k, warn=False,
                        max_iter=max_iter, tol=tol,
                        info={"seed": seed if isinstance(seed, (int, np.integer)) else None, "n_init": int(starts),
                              "num_kept": int(kept), "init_params": init_params, "best_restart": best,
                              "restart_objectives": (objective[j] + shift).tolist(), "selection_grid": True,
                              **({} if moves is None else {"split_merge": moves}),
                              **_em_host.data_info(prep, missing)},
                    )
            except np.linalg.LinAlgError:  # every run of this cell ended on a singular covariance
                raise ValueError(
                    f"select: EM failed for covariance_type={ct!r}, K={k}: a covariance became singular in every "
                    "run (duplicated points, or a component on too few points). Leave this K out of k_range, "
                    "increase reg_covar, or use prior='default' (MAP-EM)."
                ) from None
            fits[(ct, k)] = fit
            failed[(ct, k)] = best < 0
    if prior is None:
        _climb_nested(x, fits, failed, types, ks, allow_degenerate, tol=tol, max_iter=max_iter, reg_covar=reg_covar,
                      seed=seed, missing=missing)
    for ct in types:
        for k in ks:
            fit = fits[(ct, k)]
            p = num_free_parameters(k, d, ct)
            ll = fit.log_likelihood if not failed[(ct, k)] else -np.inf
            bic = -2 * ll + p * np.log(n)
            entropy, labels = float(fit.info["entropy"]), float(fit.info["classification_entropy"])
            rows.append({
                "covariance_type": ct, "num_components": k, "log_likelihood": ll, "num_parameters": p,
                "bic": bic, "aic": -2 * ll + 2 * p, "icl": bic + 2 * labels, "entropy": entropy,
                "converged": fit.converged, "n_iter": fit.n_iter,
                "degenerate": bool(fit.degenerate_components) or failed[(ct, k)],
            })
    table = pd.DataFrame(rows)
    seconds = time.perf_counter() - start
    degenerate = table[table["degenerate"]]
    if len(degenerate):
        cases = ", ".join(f"{r.covariance_type} K={r.num_components}" for r in degenerate.itertuples())
        warnings.warn(
            f"degenerate fits in the grid ({cases}): every run left a component empty, collapsed or resting on a "
            "handful of points, so their criteria are unreliable. Use prior='default' (MAP-EM) or fewer components.",
            DegenerateComponentWarning,
            stacklevel=2,
        )
    stalled = [key for key, fit in fits.items()  # float32 rounding stopped EM short (a float64 step still gains)
               if _em_host.stopped_short_info(fit.info, n)]
    if stalled:
        cases = ", ".join(f"{ct} K={k}" for ct, k in stalled)
        warnings.warn(
            f"fits in the grid stopped short in {np.dtype(prep.dtype).name} ({cases}): their covariances are beyond "
            "what it resolves, so their criteria are a little off and they are not converged. Fit in float64 "
            "(jax.config.update('jax_enable_x64', True)).",
            ConvergenceWarning,
            stacklevel=2,
        )
    info = {"seconds": seconds, "compile_seconds": compile_seconds, "n_init": n_init, "k_range": ks,
            "covariance_types": types, "prior": None if prior is None else ("default" if prior == "default" else "given")}
    return SelectionResult(table=table, fits=fits, info=info)


def select_bayesian(
    x,
    k_range=range(1, 5),
    *,
    method: str = "vb",
    covariance_type: str = "full",
    prior=None,
    overfit_components: int | None = None,
    sparse_concentration: float = 1e-3,
    seed=0,
    **engine_kwargs,
):
    """Compare K for a Bayesian engine by PSIS-LOO and WAIC, and estimate the effective K.

    Every K is fitted with ``method`` (``prior=None`` uses ``Prior.default(x, K)`` for each K),
    converted to ArviZ with the per-observation marginal log-likelihood of every posterior
    draw, and compared with ``arviz.compare`` (ELPD, higher is better). Separately, an
    overfitted mixture with ``overfit_components`` (default ``max(k_range) + 2``) components and
    a sparse Dirichlet prior (``weight_concentration = sparse_concentration``) is fitted by
    closed-form VB with its default search; the number of components it keeps (expected count
    ``N_k >= 1``, :attr:`bayesgmm.FitResult.effective_components`) is the effective K (Rousseau &
    Mengersen 2011).

    Parameters
    ----------
    x : array-like (N, D)
        Data.
    k_range : iterable of int
        Numbers of components to compare.
    method : {"vb", "svi", "mcmc", "gibbs"}
        The Bayesian engine fitted at every K (the overfitted mixture is always fitted by VB).
    covariance_type : str
        ``"full"`` or ``"diag"`` for VB; any structure for SVI/MCMC.
    prior : Prior, optional
        One prior for every K (its concentration must be a scalar); default per-K ``Prior.default``.
    overfit_components : int, optional
        Components of the overfitted mixture whose effective K is reported; default
        ``max(k_range) + 2``, at most N (a number above N is an error, raised before any fit).
    sparse_concentration : float
        Dirichlet concentration of the overfitted mixture's sparse prior.
    seed : int
        Every fit gets this seed.
    **engine_kwargs
        Passed to the engine (e.g. ``num_samples=500`` for MCMC, ``num_steps=3000`` for SVI).

    Returns
    -------
    comparison : pandas.DataFrame
        ``arviz.compare`` (LOO) indexed by ``"K=<k>"``, with ``elpd_waic`` and ``p_waic`` columns
        added and, for VB, the ``elbo``.
    fits : dict
        ``K -> FitResult``.
    effective : dict
        ``effective_components``, the sparse fit's ``weights`` and the ``fit`` itself.
    """
    from .diagnostics import import_arviz

    az = import_arviz()
    with _sharding.ProcessCall(engine_kwargs.get("devices"), "select_bayesian"):  # one process's error stops all
        missing = engine_kwargs.get("missing", "error")
        data = prepare_data(x, missing=missing)  # validated once for every K (missing= reached it too late)
        arr = data.values
        ks = _check_k_range(k_range, arr.shape[0])
        # the overfitted VB fit's K, checked before any fit (it failed after all of them when above N)
        k_over = min(ks[-1] + 2, arr.shape[0]) if overfit_components is None else check_num_components(
            overfit_components, arr.shape[0])
        engine = get_engine(method, draws=True, purpose="for Bayesian model comparison")
        engine.check_covariance_type(covariance_type)
        fit_fn = engine.load()
    fits, idatas, rows = {}, {}, {}
    for k in ks:
        fit = fit_fn(data, k, covariance_type=covariance_type, prior=prior if prior is not None else Prior.default(arr, k),
                     seed=seed, **engine_kwargs)
        if fit.draws is None:  # a point mass (SVI's guide="delta"): LOO and WAIC need posterior draws
            raise ValueError(f"select_bayesian compares posterior draws by PSIS-LOO, and method={method!r} with "
                             f"{engine_kwargs or 'its defaults'} returned a point estimate (no draws); use a guide "
                             "with spread (guide='normal' or 'mvn'), or bayesgmm.select for point fits (BIC/ICL).")
        fits[k] = fit
        idatas[f"K={k}"] = fit.to_inference_data(arr)
    with recorded_warnings("ignore", UserWarning):  # ArviZ's Pareto-k / WAIC variance notes
        comparison = az.compare(idatas, ic="loo")
        for label, idata in idatas.items():
            waic = az.waic(idata)
            rows[label] = (float(waic.elpd_waic), float(waic.p_waic))
    comparison["elpd_waic"] = [rows[i][0] for i in comparison.index]
    comparison["p_waic"] = [rows[i][1] for i in comparison.index]
    if method == "vb":
        comparison["elbo"] = [fits[int(i.split("=")[1])].diagnostics.elbo for i in comparison.index]
    from .vb import fit_vb

    sparse_prior = Prior.default(arr, k_over, weight_concentration=sparse_concentration)
    sparse = fit_vb(data, k_over, covariance_type="diag" if covariance_type == "diag" else "full",
                    prior=sparse_prior, seed=seed, missing=missing)
    effective = {"effective_components": sparse.effective_components, "weights": sparse.weights, "fit": sparse}
    return comparison, fits, effective
