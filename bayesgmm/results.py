"""One immutable result shape for every engine, with prediction, scoring and sampling.

Every engine (EM, VB, SVI, NUTS) returns a :class:`FitResult`. Experiment code reads the same
fields whatever the method: a point estimate (``weights``, ``means``, ``covariances``), the
training ``log_likelihood`` at it, convergence facts, an objective ``trace`` and, for Bayesian
engines, label-aligned posterior ``draws``.

Numerics follow JAX's precision: float32 unless ``jax_enable_x64`` is on. Arrays on the result
are NumPy float64 copies on the original data scale.
"""

from __future__ import annotations

import dataclasses
import json
import os
import warnings
from collections.abc import Mapping
from typing import Any, NamedTuple

import numpy as np

from . import _covariance_models, _numerics, _sticks
from ._files import from_strict_json, jsonable, strict_json, unjsonable_keys
from .params import COVARIANCE_TYPES, GMMParams, Prior, check_data

__all__ = ["FitDiagnostics", "FitResult", "IndependentStudentTMixture", "StudentTMixture"]

#: Version of :meth:`FitResult.to_dict`'s layout (``"format_version"``; files without it are
#: version 0, which reads the same). :meth:`FitResult.from_json` refuses newer versions.
JSON_FORMAT_VERSION = 1


class StudentTMixture(NamedTuple):
    """A mixture of multivariate Student-t densities (the VB posterior predictive, PRML 10.81).

    Attributes
    ----------
    weights : array (K,)
        Mixing weights, summing to one.
    loc : array (K, D)
        Location of each component.
    scale : array (K, D, D)
        Shape (scale) matrix of each component: the density falls with the Mahalanobis
        distance ``(x - loc)^T scale^-1 (x - loc)``.
    df : array (K,)
        Degrees of freedom of each component.
    """

    weights: Any
    loc: Any
    scale: Any
    df: Any


class IndependentStudentTMixture(NamedTuple):
    """A mixture of products of univariate Student-t densities (the VB posterior predictive for
    diagonal covariances).

    Component k's density is ``prod_d t(x_d | df_k, loc_kd, scale_kd)``: the features are
    independent given the component, each a univariate Student-t with the component's degrees of
    freedom. (A multivariate t with a diagonal scale matrix is not this density: its features
    share one scale draw.)

    Attributes
    ----------
    weights : array (K,)
        Mixing weights, summing to one.
    loc : array (K, D)
        Location of each component's features.
    scale : array (K, D)
        Squared scale of each component's features: the density falls with
        ``(x_d - loc_kd)^2 / scale_kd``.
    df : array (K,)
        Degrees of freedom of each component.
    """

    weights: Any
    loc: Any
    scale: Any
    df: Any


#: The closed-form predictives a :class:`FitResult` may hold (``predictive``).
PREDICTIVES = (StudentTMixture, IndependentStudentTMixture)


def predictive_from_arrays(weights, loc, scale, df):
    """The closed-form predictive stored as these four arrays: a
    :class:`IndependentStudentTMixture` when ``scale`` is (K, D), a :class:`StudentTMixture`
    when it is (K, D, D)."""
    kind = IndependentStudentTMixture if np.ndim(scale) == 2 else StudentTMixture
    return kind(weights, loc, scale, df)


class FrozenMapping(Mapping):
    """A read-only mapping: the ``info``, ``draws``, ``raw_draws`` and ``sample_stats`` of a
    :class:`FitResult`.

    It reads like a ``dict`` (``m[key]``, ``m.get``, ``dict(m)``, ``{**m}``, comparison with a
    dict) but has no ``__setitem__``, ``update``, ``pop`` or ``clear``. Unlike
    ``types.MappingProxyType`` it can be pickled and deep-copied (scikit-learn pickles and copies
    estimators, whose ``result_`` holds one).
    """

    __slots__ = ("_data",)

    def __init__(self, data=()):
        object.__setattr__(self, "_data", dict(data))

    def __getitem__(self, key):
        return self._data[key]

    def __iter__(self):
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)

    def __setattr__(self, name, value):
        raise AttributeError(f"{type(self).__name__} is read-only")

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._data!r})"

    def __reduce__(self):
        return (type(self), (self._data,))


def _frozen_array(value) -> np.ndarray:
    """A read-only NumPy array holding ``value``: a read-only array that owns its memory is kept,
    anything else is copied first (so that no caller's array is frozen, nor can change it)."""
    if isinstance(value, np.ndarray) and not value.flags.writeable and value.base is None:
        return value
    arr = np.array(value, copy=True)
    arr.setflags(write=False)
    return arr


def _frozen(value):
    """``value`` made deeply immutable: arrays read-only, mappings :class:`FrozenMapping`, lists
    and tuples tuples (named tuples keep their type), sets frozensets; other values (numbers,
    strings, NumPy scalars, a Prior) unchanged."""
    if isinstance(value, np.ndarray):
        return _frozen_array(value)
    if isinstance(value, Mapping):
        return FrozenMapping((k, _frozen(v)) for k, v in value.items())
    if isinstance(value, tuple) and hasattr(value, "_fields"):
        return type(value)(*(_frozen(v) for v in value))
    if isinstance(value, (list, tuple)):
        return tuple(_frozen(v) for v in value)
    if isinstance(value, (set, frozenset)):
        return frozenset(value)
    if not isinstance(value, np.generic) and hasattr(value, "__array__") and hasattr(value, "shape"):
        return _frozen_array(value)  # e.g. a JAX array
    return value


def _independent_t_log_density(x, mix: IndependentStudentTMixture, frame: _numerics.Frame):
    """log of the mixture of products of univariate t densities of every row of ``x`` (float64,
    evaluated in ``frame``); a row's NaN entries are left out (the marginal of the observed ones)."""
    from scipy.special import gammaln

    w, loc, scale, df = (np.asarray(a, np.float64) for a in mix)
    loc = (loc - frame.shift) / frame.scale
    sd = np.sqrt(scale) / frame.scale  # (K, D)
    const = gammaln((df + 1) / 2) - gammaln(df / 2) - 0.5 * np.log(df * np.pi)  # (K,) per feature
    with np.errstate(divide="ignore"):
        log_w = np.log(w)
    out = np.empty(len(x))
    for start in range(0, len(x), _numerics.HOST_BLOCK_ROWS):
        xs = (np.asarray(x[start : start + _numerics.HOST_BLOCK_ROWS], np.float64) - frame.shift) / frame.scale
        observed = ~np.isnan(xs)  # (n, D)
        y = (np.where(observed, xs, 0.0)[None] - loc[:, None]) / sd[:, None]  # (K, n, D)
        with np.errstate(over="ignore"):
            log_term = np.log1p(y**2 / df[:, None, None])
        far = ~np.isfinite(log_term)  # beyond float64's squares: log(y^2 / df)
        if far.any():
            with np.errstate(divide="ignore"):
                log_term = np.where(far, 2 * np.log(np.abs(y)) - np.log(df)[:, None, None], log_term)
        per_feature = (const[:, None, None] - np.log(sd)[:, None, :]
                       - 0.5 * (df[:, None, None] + 1) * log_term)  # (K, n, D)
        logp = np.sum(np.where(observed[None], per_feature, 0.0), axis=-1) + log_w[:, None]
        out[start : start + len(xs)] = _numerics.logsumexp(logp, axis=0) - observed @ np.log(frame.scale)
    return out


def _student_t_log_density(x, mix: StudentTMixture, frame: _numerics.Frame):
    """log of the Student-t mixture density of every row of ``x`` (float64, evaluated in ``frame``);
    a row with NaN entries gets the density of its observed columns (the marginal Student-t)."""
    from scipy.special import gammaln

    if isinstance(mix, IndependentStudentTMixture):
        return _independent_t_log_density(x, mix, frame)
    w, loc, scale, df = (np.asarray(a, np.float64) for a in mix)
    if np.isnan(x).any():
        patterns, inverse = np.unique(~np.isnan(x), axis=0, return_inverse=True)
        out = np.empty(len(x))
        for p, pattern in enumerate(patterns):
            rows, cols = np.flatnonzero(inverse.ravel() == p), np.flatnonzero(pattern)
            sub = StudentTMixture(w, loc[:, cols], scale[:, cols][:, :, cols], df)
            out[rows] = _student_t_log_density(x[np.ix_(rows, cols)], sub,
                                               _numerics.Frame(frame.shift[cols], frame.scale[cols]))
        return out
    d = loc.shape[1]
    loc = (loc - frame.shift) / frame.scale
    scale = scale / np.multiply.outer(frame.scale, frame.scale)
    chol = np.linalg.cholesky(scale)
    logdet = 2 * np.sum(np.log(np.diagonal(chol, axis1=-2, axis2=-1)), -1)
    const = gammaln((df + d) / 2) - gammaln(df / 2) - 0.5 * d * np.log(df * np.pi) - 0.5 * logdet
    with np.errstate(divide="ignore"):
        log_w = np.log(w)
    out = np.empty(len(x))
    for start in range(0, len(x), _numerics.HOST_BLOCK_ROWS):
        xs = (np.asarray(x[start : start + _numerics.HOST_BLOCK_ROWS], np.float64) - frame.shift) / frame.scale
        diff = xs[None] - loc[:, None]  # (K, n, D)
        y = np.linalg.solve(chol, np.swapaxes(diff, -1, -2))
        with np.errstate(over="ignore"):
            maha = np.sum(y**2, -2)  # (K, n)
        log_term = np.log1p(maha / df[:, None])
        far = ~np.isfinite(maha)  # beyond float64's squares: log(maha / df) from the scaled rows (finite tails)
        if far.any():
            size = np.max(np.abs(y), axis=-2)
            with np.errstate(divide="ignore", invalid="ignore"):
                scaled = np.sum((y / size[:, None, :]) ** 2, -2)
                log_term = np.where(far, 2 * np.log(size) + np.log(scaled) - np.log(df[:, None]), log_term)
        logp = const[:, None] - 0.5 * (df[:, None] + d) * log_term + log_w[:, None]
        out[start : start + len(xs)] = _numerics.logsumexp(logp, axis=0)
    return out - np.sum(np.log(frame.scale))


@dataclasses.dataclass(frozen=True)
class FitDiagnostics:
    """The facts every engine's fit reports, under one name each; NaN where a fact does not apply.

    Read from :attr:`FitResult.diagnostics`, so that code comparing engines never branches on
    the method (``info`` keeps each engine's further details).

    Attributes
    ----------
    compile_seconds : float
        Tracing and compiling (0.0 when a compiled program was reused).
    run_seconds : float
        Running, compilation excluded (NUTS: the MAP start, warmup and sampling).
    warmup_seconds, sampling_seconds : float
        The samplers' (NUTS, Gibbs) ``run_seconds`` split between warmup (with the MAP start) and
        sampling, in proportion to the work of each phase (NUTS: leapfrog steps; Gibbs: sweeps),
        since one compiled program runs both; NaN for the other engines.
    elbo : float
        The evidence lower bound at the end (VB: of the final q; SVI: the mean of the last
        10% of steps); NaN for EM and NUTS.
    num_divergences : float
        NUTS's divergent transitions after warmup; NaN for the other engines.
    max_rhat, min_ess_bulk : float
        The samplers' (NUTS, Gibbs) worst split R-hat and smallest bulk ESS over the parameters
        (on label-aligned draws); NaN for the other engines.
    label_switch_fraction : float
        Share of draws relabelled to match the pivot (NUTS, Gibbs, SVI); NaN otherwise.
    """

    compile_seconds: float = float("nan")
    run_seconds: float = float("nan")
    warmup_seconds: float = float("nan")
    sampling_seconds: float = float("nan")
    elbo: float = float("nan")
    num_divergences: float = float("nan")
    max_rhat: float = float("nan")
    min_ess_bulk: float = float("nan")
    label_switch_fraction: float = float("nan")

    @property
    def fit_seconds(self) -> float:
        """Compile plus run seconds."""
        return self.compile_seconds + self.run_seconds

    @property
    def ess_per_second(self) -> float:
        """``min_ess_bulk / run_seconds`` (NaN without draws or a run time)."""
        return self.min_ess_bulk / self.run_seconds if self.run_seconds > 0 else float("nan")


def _fact(info, name) -> float:
    value = info.get(name)
    try:
        return float(value)
    except (TypeError, ValueError):  # absent (None), or a non-number in a hand-made info
        return float("nan")


@dataclasses.dataclass(frozen=True, eq=False)
class FitResult:
    """A fitted Gaussian mixture, the same shape for every engine.

    Attributes
    ----------
    method : str
        ``"em"``, ``"map-em"``, ``"hard-em"``, ``"vb"``, ``"svi"``, ``"mcmc"`` or ``"gibbs"``.
    covariance_type : str
        The layout the covariances are stored in: ``"full"`` (K, D, D), ``"tied"`` (D, D),
        ``"diag"`` (K, D) or ``"spherical"`` (K,) (see ``covariance_model`` for the model).
    weights, means, covariances : np.ndarray
        Point estimate on the original scale: MLE/MAP (EM), posterior mean after label alignment
        (VB, SVI, MCMC). Shapes as scikit-learn stores them.
    log_likelihood : float
        Total log-likelihood of the training data at the point estimate (z summed out).
    converged : bool
        Whether the fit met its convergence criterion: the tolerance (EM, VB), a small drift of
        the ELBO over the last steps (SVI), or the largest split R-hat below 1.01 (the samplers,
        which warn too when the smallest bulk ESS is below 100 per chain: ``info["min_ess_bulk"]``).
    n_iter : int
        Iterations (EM, VB; passes for streamed EM), optimisation steps (SVI) or draws per chain
        (the samplers).
    trace : np.ndarray
        The objective per iteration (see ``objective``), on the original data scale.
    objective : str
        What ``trace`` holds: ``"log_likelihood"``, ``"log_posterior"``,
        ``"classification_log_likelihood"`` (hard EM), ``"classification_log_posterior"`` (hard
        EM under a prior: plus the log prior density) or ``"elbo"``.
    feature_names : tuple of str
        One name per feature: a DataFrame's column names, else ``x0``, ``x1``, ...
    num_obs : int
        Number of training observations.
    degenerate_components : tuple of int
        Components whose covariance collapsed (to ``reg_covar``) or that hold almost no data.
    prior : Prior or None
        The prior used (MAP-EM and Bayesian engines).
    draws : mapping or None
        Label-aligned posterior draws ``{"weights": (C, S, K), "means": (C, S, K, D),
        "covariances": (C, S, ...)}``.
    raw_draws : mapping or None
        The same before label alignment.
    sample_stats : mapping or None
        Per-draw sampler statistics, arrays of shape (C, S).
    predictive : StudentTMixture, IndependentStudentTMixture or None
        Closed-form posterior predictive (VB: full covariances a Student-t mixture, diagonal ones
        a mixture of products of univariate t's); otherwise the predictive averages over ``draws``.
    info : mapping
        Engine-specific scalars (ELBO, divergences, compile time, seed, ...).
    covariance_model : str
        The mclust model fitted (:mod:`bayesgmm._covariance_models`; e.g. ``"VEV"``), whose
        covariances are stored in the ``covariance_type`` layout. Defaults to the layout's own
        model: VVV (full), VVI (diag), VII (spherical), EEE (tied). It sets
        :attr:`num_parameters`, hence BIC and AIC.

    The result is deeply immutable: its arrays (also those inside ``draws``, ``raw_draws``,
    ``sample_stats``, ``predictive`` and ``info``) are read-only NumPy copies, its mappings are
    read-only (:class:`FrozenMapping`) and the sequences inside ``info`` are tuples. Derive a
    changed result with ``dataclasses.replace``; copy an array (``np.array(result.means)``) to
    change it.
    """

    method: str
    covariance_type: str
    weights: np.ndarray
    means: np.ndarray
    covariances: np.ndarray
    log_likelihood: float
    converged: bool
    n_iter: int
    trace: np.ndarray
    objective: str
    feature_names: tuple
    num_obs: int
    degenerate_components: tuple = ()
    prior: Prior | None = None
    draws: Mapping[str, np.ndarray] | None = None
    raw_draws: Mapping[str, np.ndarray] | None = None
    sample_stats: Mapping[str, np.ndarray] | None = None
    predictive: StudentTMixture | None = None
    info: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    covariance_model: str | None = None

    def __post_init__(self):
        """Deep immutability: every array is a read-only copy, every mapping a
        :class:`FrozenMapping`, every sequence a tuple (``dataclasses.replace`` freezes anew)."""
        if self.covariance_model is None:
            object.__setattr__(self, "covariance_model", _covariance_models.ALIASES.get(self.covariance_type))
        elif _covariance_models.resolve(self.covariance_model) != (self.covariance_type, self.covariance_model):
            raise ValueError(
                f"covariance_model={self.covariance_model!r} is not stored in the covariance_type="
                f"{self.covariance_type!r} layout (its layout is {_covariance_models.storage(self.covariance_model)!r})."
            )
        for name in ("weights", "means", "covariances", "trace"):
            object.__setattr__(self, name, _frozen_array(getattr(self, name)))
        for name in ("draws", "raw_draws", "sample_stats", "info"):
            value = getattr(self, name)
            if value is not None:
                object.__setattr__(self, name, _frozen(value))
        if self.predictive is not None:
            if not isinstance(self.predictive, PREDICTIVES):
                raise ValueError(f"predictive must be a StudentTMixture or an IndependentStudentTMixture, got "
                                 f"{type(self.predictive).__name__}.")
            object.__setattr__(self, "predictive", type(self.predictive)(*(_frozen_array(a) for a in self.predictive)))
        object.__setattr__(self, "feature_names", tuple(self.feature_names))
        object.__setattr__(self, "degenerate_components", tuple(self.degenerate_components))

    def __reduce__(self):
        """Pickled and copied through the constructor, so that the copy is frozen too (an
        unpickled NumPy array would otherwise come back writable)."""
        return (type(self), tuple(getattr(self, f.name) for f in dataclasses.fields(self)))

    # ------------------------------------------------------------------ basic facts
    @property
    def diagnostics(self) -> FitDiagnostics:
        """The typed facts of the fit (:class:`FitDiagnostics`; NaN where not applicable)."""
        return FitDiagnostics(**{f.name: _fact(self.info, f.name) for f in dataclasses.fields(FitDiagnostics)})

    @property
    def num_components(self) -> int:
        """K, the number of components (empty ones included)."""
        return self.means.shape[0]

    @property
    def num_features(self) -> int:
        """D, the number of features."""
        return self.means.shape[1]

    @property
    def params(self) -> GMMParams:
        """The point estimate as :class:`~bayesgmm.GMMParams` (weights, means, covariances in the
        ``covariance_type`` layout)."""
        return GMMParams(self.weights, self.means, self.covariances)

    @property
    def full_covariances(self) -> np.ndarray:
        """Covariances as (K, D, D) whatever the structure."""
        return np.array(_numerics.expand_covariances(
            np.asarray(self.covariances, np.float64), self.covariance_type, self.num_components, self.num_features))

    @property
    def num_parameters(self) -> int:
        """Free parameters of the fitted model (``covariance_model``): K - 1 weights, K D means
        and the covariance model's own count; the ``p`` of :meth:`bic` and :meth:`aic`."""
        return _numerics.num_free_parameters(self.num_components, self.num_features, self.covariance_model)

    @property
    def effective_components(self) -> int:
        """Components holding at least one observation's worth of the data.

        The expected counts ``N_k`` are the engine's (``info["expected_counts"]``: EM, VB,
        streaming) or, for posterior-mean weights under a Dirichlet prior, ``N_k = w_k (N +
        sum(alpha)) - alpha_k``: the prior's pseudo-counts are not data, so a component that only
        keeps its Dirichlet floor (weight ``alpha_k / (N + sum(alpha))``, 1/(N + K) for alpha = 1)
        does not count.
        """
        return int(np.sum(self.expected_counts() >= 1.0))

    def expected_counts(self) -> np.ndarray:
        """Observations' worth of the training data each component holds, ``N_k`` (K,), float64
        (see :attr:`effective_components`)."""
        counts = self.info.get("expected_counts") if isinstance(self.info, Mapping) else None
        if counts is not None and len(counts) == self.num_components:
            return np.asarray(counts, np.float64)
        w = np.asarray(self.weights, np.float64)
        if self.prior is not None and self.draws is not None and self.prior.weight_prior == "dirichlet":
            alpha = self.prior.concentration(self.num_components)
            return w * (self.num_obs + alpha.sum()) - alpha
        return w * self.num_obs

    def _check(self, x, allow_empty_rows: bool = False) -> np.ndarray:
        """Validated data (columns matched by name for DataFrames). NaN entries are missing
        values: every density and probability then uses the row's observed columns."""
        arr, _ = check_data(x, num_features=self.num_features, allow_constant=True, feature_names=self.feature_names,
                            missing="marginalize", allow_empty_rows=allow_empty_rows)
        return arr

    def _frame(self) -> _numerics.Frame:
        """The mixture's own centre and per-feature scale: everything is evaluated in that frame
        (float64, host), so data in any units, far from zero or on mixed scales, lose nothing."""
        return _numerics.mixture_frame(self.weights, self.means, self.covariances, self.covariance_type)

    def _has_draws(self) -> bool:
        return self.draws is not None

    def _flat_draws(self, max_draws: int = 200, *, at_most: bool = False):
        """Evenly spaced draws, flattened over chains (float64): every ``S // max_draws``-th of the
        S draws (from ``max_draws`` up to ``2 max_draws - 1`` of them), or with ``at_most`` every
        ``ceil(S / max_draws)``-th (at most ``max_draws``)."""
        w, m, c = (np.asarray(self.draws[k], np.float64) for k in ("weights", "means", "covariances"))
        lead = w.shape[0] * w.shape[1]
        w, m, c = w.reshape(lead, *w.shape[2:]), m.reshape(lead, *m.shape[2:]), c.reshape(lead, *c.shape[2:])
        step = max(1, -(-lead // max_draws) if at_most else lead // max_draws)
        return w[::step], m[::step], c[::step]

    def _draws_log_density_and_proba(self, arr):
        """Posterior predictive log density (N,) and responsibilities averaged over draws (N, K)."""
        w, m, c = self._flat_draws()
        frame = self._frame()
        density = np.empty(len(arr))
        proba = np.zeros((len(arr), self.num_components))
        for s in range(w.shape[0]):
            rows = _numerics.score_rows(arr, w[s], m[s], c[s], self.covariance_type, responsibilities=True, frame=frame)
            density = rows.log_density if s == 0 else np.logaddexp(density, rows.log_density)
            proba += np.exp(rows.log_resp)
        return density - np.log(w.shape[0]), proba / w.shape[0]

    def num_components_posterior(self, x=None, *, max_draws: int = 4000, seed=0):
        """Posterior distribution of the number of non-empty components, ``K+``.

        From an overfitted mixture (K larger than the data need) under a sparse prior on the
        weights (``Prior(weight_concentration=0.01)`` or so: Malsiner-Walli, Frühwirth-Schnatter &
        Grün 2016), the posterior of ``K+``, the number of components the labels ``z`` occupy,
        estimates how many clusters the data support. A Gibbs fit (:func:`bayesgmm.fit_gibbs`)
        samples the labels and records ``K+`` per draw (``sample_stats["num_nonempty"]``); for
        the other engines' draws (NUTS, SVI, VB) pass ``x``: the labels are then drawn from
        ``p(z | x, theta)`` once per draw (up to ``max_draws`` evenly spaced draws).

        Parameters
        ----------
        x : array-like (N, D), optional
            The training data; needed unless the fit sampled its labels.
        max_draws : int
            Draws used when labels are drawn here.
        seed : int
            Seed of those label draws.

        Returns
        -------
        pandas.Series
            ``P(K+ = k | x)`` for k = 1..K (index ``num_nonempty``), summing to one.

        Raises
        ------
        ValueError
            A point estimate (no draws), or draws without labels and no ``x``.

        Notes
        -----
        Caveats (Frühwirth-Schnatter & Malsiner-Walli 2019): ``K+`` is the number of *filled*
        components of one overfitted model, not the number of components K under a prior on K;
        its posterior depends on the weight concentration (smaller values empty more components)
        and on the component prior; a cluster that is not Gaussian is covered by several
        components, so ``K+`` counts components, which are clusters only when the Gaussian
        shape fits them. Label switching does not matter (``K+`` is invariant to it).
        """
        import pandas as pd

        k = self.num_components
        stats = self.sample_stats or {}
        if "num_nonempty" in stats:
            counts = np.asarray(stats["num_nonempty"]).ravel()
        elif not self._has_draws():
            raise ValueError(
                f"num_components_posterior needs posterior draws; this {self.method!r} fit is a point estimate. "
                "Fit an overfitted K with a sparse prior by fit_gibbs (or fit_mcmc, fit_vb) instead."
            )
        elif x is None:
            raise ValueError(
                f"num_components_posterior of a {self.method!r} fit needs the training data x: its draws carry no "
                "labels, so they are drawn from p(z | x, theta) for each draw. Pass x (fit_gibbs records them)."
            )
        else:
            arr = self._check(x)
            frame = self._frame()
            w, m, c, ct = _numerics.to_frame(frame, *self._flat_draws(max_draws, at_most=True), self.covariance_type)
            xs = (np.asarray(arr, np.float64) - frame.shift) / frame.scale
            u = np.random.default_rng(seed).uniform(size=(w.shape[0], len(arr), 1))
            counts = np.empty(w.shape[0], np.int64)
            block = max(1, _numerics.HOST_BLOCK_ROWS // len(arr))  # draws evaluated together
            for start in range(0, w.shape[0], block):
                part = slice(start, start + block)
                log_joint = _numerics.log_joint_components(xs, w[part], m[part], c[part], ct)  # (draws, N, K)
                cdf = np.cumsum(np.exp(log_joint - _numerics.logsumexp(log_joint, axis=-1)[..., None]), axis=-1)
                labels = np.minimum(np.sum(cdf < u[part] * cdf[..., -1:], axis=-1), k - 1)  # (draws, N)
                counts[part] = np.sum(np.any(labels[..., None] == np.arange(k), axis=1), axis=-1)
        probs = np.bincount(counts, minlength=k + 1)[1 : k + 1] / counts.size
        return pd.Series(probs, index=pd.RangeIndex(1, k + 1, name="num_nonempty"), name="probability")

    # ------------------------------------------------------------------ prediction
    def predict_proba(self, x) -> np.ndarray:
        """Posterior probability of each component for each row of ``x``, shape (N, K), float64.

        Bayesian results average the responsibilities over (label-aligned) posterior draws, so
        the probabilities carry parameter uncertainty: over the stored draws thinned evenly to
        about 200 (every ``S // 200``-th of S draws; all of them below 400). Evaluated on the host
        in float64: no compilation, whatever the number of rows.

        Parameters
        ----------
        x : array-like (N, D) or (N,)
            Rows to score, in the units of the training data; NaN entries are missing values
            (each row is scored on its observed columns), whatever the fit's ``missing``.

        Returns
        -------
        numpy.ndarray (N, K)
        """
        arr = self._check(x)
        if self._has_draws():
            return self._draws_log_density_and_proba(arr)[1]
        rows = _numerics.score_rows(arr, *self.params, self.covariance_type, responsibilities=True, frame=self._frame())
        return np.exp(rows.log_resp)

    def impute(self, x, *, num_draws: int | None = None, seed=0):
        """``x`` with its NaN entries filled from the fitted mixture (:mod:`bayesgmm.imputation`).

        ``num_draws=None``: the conditional means ``E[x_m | x_o]`` (N, D), averaged over
        posterior draws for Bayesian fits. ``num_draws=m``: ``m`` multiple imputations (m, N, D)
        drawn from the posterior predictive of the missing entries given the observed ones (for
        Bayesian fits each uses its own posterior draw of the parameters, the input to Rubin's
        rules; for EM the plug-in predictive, which ignores the parameters' uncertainty).

        Parameters
        ----------
        x : array-like (N, D)
            Data with NaN entries to fill.
        num_draws : int, optional
            Number of multiple imputations; the conditional means when omitted.
        seed : int
            Seed of the multiple imputations, an integer in [0, 2**64).

        Returns
        -------
        numpy.ndarray (N, D), or (num_draws, N, D)
            Columns in ``x``'s order; for a DataFrame ``x`` the conditional means are a
            DataFrame with its index and columns.
        """
        from .imputation import impute

        return impute(self, x, num_draws=num_draws, seed=seed)

    def predict(self, x) -> np.ndarray:
        """Most probable component of each row of ``x``.

        Parameters
        ----------
        x : array-like (N, D) or (N,)
            Rows to score, in the units of the training data; NaN entries are missing values
            (each row is scored on its observed columns), whatever the fit's ``missing``.

        Returns
        -------
        numpy.ndarray (N,) of int
        """
        return np.argmax(self.predict_proba(x), axis=1)

    def score_samples(self, x) -> np.ndarray:
        """Log predictive density of each row of ``x``, shape (N,), float64.

        EM: the plug-in mixture density. VB: the closed-form predictive (a Student-t mixture;
        for diagonal covariances a mixture of products of univariate t's). SVI / MCMC /
        Gibbs: the posterior predictive, log of the density averaged over the stored draws thinned
        evenly to about 200 (as :meth:`predict_proba`).

        Parameters
        ----------
        x : array-like (N, D) or (N,)
            Rows to score, in the units of the training data; NaN entries are missing values
            (each row is scored on its observed columns), whatever the fit's ``missing``.

        Returns
        -------
        numpy.ndarray (N,)
        """
        arr = self._check(x)
        if self.predictive is not None:
            return _student_t_log_density(arr, self.predictive, self._frame())
        if self._has_draws():
            return self._draws_log_density_and_proba(arr)[0]
        return self.log_likelihood_samples(arr)

    def log_likelihood_samples(self, x) -> np.ndarray:
        """Per-observation log-likelihood at the point estimate (plug-in), float64.

        Parameters
        ----------
        x : array-like (N, D) or (N,)
            Rows to score, in the units of the training data; NaN entries are missing values
            (each row is scored on its observed columns), whatever the fit's ``missing``.

        Returns
        -------
        numpy.ndarray (N,)
        """
        arr = self._check(x)
        return _numerics.score_rows(arr, *self.params, self.covariance_type, frame=self._frame()).log_density

    def score(self, x) -> float:
        """Mean log predictive density per observation (scikit-learn's ``score``).

        Parameters
        ----------
        x : array-like (N, D) or (N,)
            Rows to score, in the units of the training data; NaN entries are missing values
            (each row is scored on its observed columns), whatever the fit's ``missing``.

        Returns
        -------
        float
        """
        return float(np.mean(self.score_samples(x)))

    def _weighted_log_likelihood(self, x, sample_weight):
        """``(sum_n w_n log p(x_n), sum_n w_n)`` at the point estimate (all weights 1 when None)."""
        ll = self.log_likelihood_samples(x)
        if sample_weight is None:
            return float(np.sum(ll)), float(ll.shape[0])
        w = np.asarray(sample_weight, np.float64)
        if w.shape != ll.shape or not np.all(np.isfinite(w)) or np.any(w < 0) or not np.sum(w) > 0:
            raise ValueError(f"sample_weight must hold {ll.shape[0]} finite, non-negative weights (one per row of x) "
                             f"with a positive sum; got shape {w.shape}.")
        keep = w > 0  # a row of weight 0 counts for nothing, whatever its density
        return float(w[keep] @ ll[keep]), float(np.sum(w))

    def bic(self, x, sample_weight=None) -> float:
        """Bayesian information criterion at the point estimate; lower is better.

        Parameters
        ----------
        x : array-like (N, D) or (N,)
            Rows to score, in the units of the training data; NaN entries are missing values
            (each row is scored on its observed columns), whatever the fit's ``missing``.
        sample_weight : array-like (N,), optional
            Row weights, as a weighted fit took them (integer weights count a row that many
            times): ``log L`` is the weighted sum and ``N`` the weights' sum. Without them every
            row counts once, whatever the fit was given.

        Returns
        -------
        float
            ``-2 log L + p log N``, ``p`` counted as :attr:`num_parameters`.
        """
        total, n = self._weighted_log_likelihood(x, sample_weight)
        return float(-2 * total + self.num_parameters * np.log(n))

    def aic(self, x, sample_weight=None) -> float:
        """Akaike information criterion at the point estimate; lower is better.

        Parameters
        ----------
        x : array-like (N, D) or (N,)
            Rows to score, in the units of the training data; NaN entries are missing values
            (each row is scored on its observed columns), whatever the fit's ``missing``.
        sample_weight : array-like (N,), optional
            Row weights, as for :meth:`bic`.

        Returns
        -------
        float
            ``-2 log L + 2 p``.
        """
        return float(-2 * self._weighted_log_likelihood(x, sample_weight)[0] + 2 * self.num_parameters)

    def sample(self, n: int, *, seed=0):
        """Draw ``n`` new observations from the fitted mixture (the generative story run forward).

        Parameters
        ----------
        n : int
            Number of observations, at least 1.
        seed : int or jax key
            Random seed; the same seed gives the same sample.

        Returns
        -------
        x : np.ndarray, shape (n, D), float64
        z : np.ndarray, shape (n,), int64
            Component label of each observation.
        """

        from .model import simulate_rows
        from .params import check_positive_integers, seed_to_key

        check_positive_integers(n=n)
        key = seed_to_key(seed)
        # the story run forward in the mixture's own frame (unit scale, any precision), mapped back in float64
        frame = self._frame()
        w, m, c, ct = _numerics.to_frame(frame, *self.params, self.covariance_type)
        x, z = simulate_rows(key, GMMParams(w, m, c), n, ct)  # compiled once per row bucket and shapes
        z = z.astype(np.int64)
        return x * frame.scale + frame.shift, z

    # ------------------------------------------------------------------ conversion
    def relabel(self, order) -> "FitResult":
        """The same fit with its components reordered: component ``j`` of the result is component
        ``order[j]`` of this one.

        Permuted together: the point estimate, the aligned ``draws``, the closed-form
        ``predictive``, ``degenerate_components`` and the per-component entries of ``info``
        (``expected_counts``, VB's variational parameters, ``empty_components``) and a prior's
        per-component Dirichlet concentrations. ``raw_draws`` (before any alignment) and
        ``sample_stats`` are kept as they are, except that under stick-breaking weights (a
        Dirichlet-process prior, ordered by definition) ``sample_stats["lp"]`` becomes the log
        density of the reordered draws (and the ``trace``, which holds it), and the sticks are
        dropped from ``info``. ``info["order"]`` records the composed reordering
        relative to the fitted order.

        Parameters
        ----------
        order : sequence of int
            A permutation of ``range(K)``.

        Returns
        -------
        FitResult
            ``self`` when ``order`` is the identity.

        Raises
        ------
        ValueError
            ``order`` is not a permutation of ``range(K)``.
        """
        from .labels import permute_draws

        k = self.num_components
        try:
            perm = np.asarray(order)
        except (TypeError, ValueError):
            perm = np.empty(0)
        if perm.shape != (k,) or perm.dtype.kind not in "iu" or not np.array_equal(np.sort(perm), np.arange(k)):
            raise ValueError(f"order must be a permutation of range({k}) (component j of the result is component "
                             f"order[j]), got {_short(order)}.")
        if np.array_equal(perm, np.arange(k)):
            return self
        ct = self.covariance_type
        inverse = np.argsort(perm)  # old index -> new index
        point = permute_draws({"weights": self.weights, "means": self.means, "covariances": self.covariances}, perm, ct)
        draws = None
        if self.draws is not None:
            lead = np.asarray(self.draws["weights"]).shape[:-1]
            draws = permute_draws(self.draws, np.broadcast_to(perm, lead + (k,)), ct)
        predictive = None if self.predictive is None else type(self.predictive)(*(np.asarray(a)[perm] for a in self.predictive))
        info = dict(self.info)
        for key in ("expected_counts", "beta", "m", "nu", "psi", "covariance_estimate", "alpha", "alpha0"):
            if key not in info:
                continue
            arr = np.asarray(info[key])
            if arr.shape[:1] == (k,):
                info[key] = arr[perm].tolist()
            else:
                del info[key]  # (K - 1, 2) sticks: no meaning in another order
        if "empty_components" in info:
            info["empty_components"] = sorted(int(inverse[i]) for i in info["empty_components"])
        info["order"] = np.asarray(info.get("order", np.arange(k)))[perm].tolist()
        prior, stats, trace = self.prior, self.sample_stats, self.trace
        if prior is not None and np.ndim(prior.weight_concentration):
            # an uneven Dirichlet's concentrations are per component: renamed with them
            prior = dataclasses.replace(prior, weight_concentration=np.asarray(prior.weight_concentration)[perm])
        elif prior is not None and prior.weight_prior != "dirichlet" and draws is not None and stats and "lp" in stats:
            # sticks are ordered: the renamed draws have another prior density (lp is log p(x, theta)
            # of the draws under this prior)
            sticks = prior.arrays(k, ct).concentration
            underflow = float(np.finfo(np.dtype(self.info.get("dtype", "float64"))).tiny)  # as the sampler floored them
            shift = _sticks.relabelling_shift(self.draws["weights"], draws["weights"], sticks, underflow)
            stats = dict(stats, lp=np.asarray(stats["lp"]) + shift)
            if np.shape(trace) == (shift.size,):  # a sampler's trace: lp of every draw, chains concatenated
                trace = np.asarray(trace) + shift.reshape(-1)
        return dataclasses.replace(
            self, weights=point["weights"], means=point["means"], covariances=point["covariances"], draws=draws,
            predictive=predictive, info=info, prior=prior, sample_stats=stats, trace=trace,
            degenerate_components=tuple(sorted(int(inverse[i]) for i in self.degenerate_components)),
        )

    def align_to(self, reference: "FitResult", *, cost: str = "kl") -> "FitResult":
        """This fit relabelled to match ``reference``'s components (e.g. to tabulate or draw several
        engines' fits in one order).

        The point estimates are matched by the Hungarian algorithm on
        :func:`bayesgmm.labels.assignment_costs` (``cost="kl"``: the KL divergence between the
        Gaussians; ``"mahalanobis"``: the means' distance); see :meth:`relabel` for what moves.
        A reference of another covariance structure (EM full beside EM diagonal) is matched with
        both fits' covariances written out as full matrices.

        Parameters
        ----------
        reference : FitResult
            The same number of components and features; any covariance structure.
        cost : {"kl", "mahalanobis"}
            The assignment cost: the KL divergence between the Gaussians (default), or the
            squared Mahalanobis distance of the means.

        Returns
        -------
        FitResult
        """
        from .labels import align_draws

        if not isinstance(reference, FitResult):
            raise ValueError(f"reference must be a FitResult, got {type(reference).__name__}.")
        if self.means.shape != reference.means.shape:
            raise ValueError(
                f"cannot match components: means of shape {self.means.shape} and of shape "
                f"{reference.means.shape}; compare fits with the same number of components and features."
            )
        ct, pivot, covariances = self.covariance_type, reference.params, self.covariances
        if ct != reference.covariance_type:  # compare the Gaussians themselves: full matrices on both sides
            ct, covariances = "full", self.full_covariances
            pivot = GMMParams(reference.weights, reference.means, reference.full_covariances)
        point = {"weights": self.weights[None], "means": self.means[None], "covariances": np.asarray(covariances)[None]}
        _, perms = align_draws(point, pivot, ct, cost=cost)
        return self.relabel(perms[0])

    def to_inference_data(self, x=None, **kwargs):
        """ArviZ ``InferenceData`` of this fit.

        Parameters
        ----------
        x : array-like (N, D), optional
            Data for the ``log_likelihood`` and ``observed_data`` groups (usually the training data).
        **kwargs
            Passed to :func:`bayesgmm.diagnostics.to_inference_data`.

        Returns
        -------
        arviz.InferenceData
        """
        from .diagnostics import to_inference_data

        return to_inference_data(self, x, **kwargs)

    def summary(self):
        """A compact table of the fit: a row per component with its weight, means and standard
        deviations per feature (square roots of the covariance diagonal), and for fits with
        posterior draws the posterior sd of the weight and of each mean (``..._sd`` columns, from
        the aligned draws). ``attrs`` hold the method, covariance type, log-likelihood,
        convergence and number of observations; :meth:`to_dict` has everything.

        Returns
        -------
        pandas.DataFrame
            One row per component.
        """
        import pandas as pd

        names = self.feature_names
        sd = np.sqrt(np.diagonal(self.full_covariances, axis1=-2, axis2=-1))
        table = pd.DataFrame({"weight": self.weights}, index=pd.RangeIndex(self.num_components, name="component"))
        draws = self.draws
        if draws is not None:
            flat_w = np.asarray(draws["weights"], np.float64).reshape(-1, self.num_components)
            flat_m = np.asarray(draws["means"], np.float64).reshape(-1, self.num_components, self.num_features)
            table["weight_sd"] = flat_w.std(axis=0, ddof=1)
        for j, name in enumerate(names):
            table[f"mean[{name}]"] = self.means[:, j]
            if draws is not None:
                table[f"mean[{name}]_sd"] = flat_m[:, :, j].std(axis=0, ddof=1)
        for j, name in enumerate(names):
            table[f"sd[{name}]"] = sd[:, j]
        table.attrs.update(method=self.method, covariance_type=self.covariance_type, log_likelihood=self.log_likelihood,
                           converged=self.converged, num_obs=self.num_obs)
        return table

    def to_dict(self) -> dict:
        """Point estimate and fit facts as plain JSON-serialisable Python objects.

        Returns
        -------
        dict
            What :meth:`to_json` writes.
        """
        return {
            "format_version": JSON_FORMAT_VERSION,
            "method": self.method,
            "covariance_type": self.covariance_type,
            "covariance_model": self.covariance_model,
            "num_components": self.num_components,
            "feature_names": list(self.feature_names),
            "num_obs": self.num_obs,
            "weights": self.weights.tolist(),
            "means": self.means.tolist(),
            "covariances": self.covariances.tolist(),
            "log_likelihood": self.log_likelihood,
            "converged": self.converged,
            "n_iter": self.n_iter,
            "objective": self.objective,
            "trace": np.asarray(self.trace).tolist(),
            "degenerate_components": list(self.degenerate_components),
            "prior": None if self.prior is None else self.prior.to_dict(),
            "info": {k: jsonable(v) for k, v in self.info.items()},
            "posterior_omitted": self.posterior_omitted or self.draws is not None or self.predictive is not None,
        }

    def to_json(self, path=None) -> str:
        """JSON text of :meth:`to_dict`; also written to ``path`` when given (atomically: the
        file is complete or absent, never truncated).

        JSON holds the point estimate and the fit facts, not posterior draws nor the VB
        predictive: for a Bayesian result (VB, SVI, MCMC) the text says so
        (``"posterior_omitted": true``) and :meth:`from_json` returns a result that predicts with
        the plug-in point estimate, with a warning. Keep everything with
        :func:`bayesgmm.save_result` (NetCDF) and :func:`bayesgmm.load_result`.

        Parameters
        ----------
        path : str or os.PathLike, optional
            File to write.

        Returns
        -------
        str
            The JSON text.
        """
        bad = unjsonable_keys(self.info)
        if bad:
            kinds = ", ".join(sorted({type(self.info[k]).__name__ for k in bad}))
            raise ValueError(f"info entries {bad} hold values JSON cannot store ({kinds}); "
                             "make them lists, numbers, strings or dicts of these (dataclasses.replace(result, info=...)), "
                             "or save with bayesgmm.save_result, which stores their repr().")
        # standard JSON: a NaN or infinity (an undefined R-hat in info, a trace of -inf) as a string
        text = json.dumps(strict_json(self.to_dict()), indent=2, allow_nan=False)
        if path is not None:
            from ._files import write_text

            write_text(path, text)
        return text

    @property
    def posterior_omitted(self) -> bool:
        """True for a Bayesian result read back from JSON: its posterior draws and predictive
        were not saved, so ``predict``, ``predict_proba`` and ``score_samples`` use the plug-in
        point estimate instead of the posterior predictive of the original fit."""
        return bool(isinstance(self.info, Mapping) and self.info.get("posterior_omitted", False))

    @classmethod
    def from_json(cls, source) -> "FitResult":
        """Rebuild a result from :meth:`to_json` text or a path to it, validating every field.

        Parameters
        ----------
        source : str or os.PathLike
            JSON text (starting with ``{``) or the path of a file written by :meth:`to_json`.

        Returns
        -------
        FitResult
            The point estimate and fit facts. A Bayesian result (``method`` "vb", "svi" or
            "mcmc") comes back without its draws and predictive: it keeps its method name,
            :attr:`posterior_omitted` is True (``info["posterior_omitted"]``) and predictions use
            the plug-in point estimate; a ``UserWarning`` says so. Read a NetCDF file written by
            :func:`bayesgmm.save_result` with :func:`bayesgmm.load_result` for the full result.

        Raises
        ------
        ValueError
            The text is not JSON, or a field is missing or invalid (wrong type, unknown
            ``method``, ``covariance_type`` or ``objective``, shapes that do not agree, weights
            that are negative or do not sum to 1, covariances that are not positive definite,
            ...); the message names the field.
        OSError
            The file cannot be read.
        """
        if isinstance(source, str) and source.lstrip().startswith("{") and not os.path.exists(source):
            text, where = source, "FitResult JSON text"
        else:
            where = f"FitResult JSON file {str(source)!r}"
            try:
                with open(source, encoding="utf-8") as f:
                    text = f.read()
            except UnicodeDecodeError:
                raise ValueError(f"{where} holds binary data, not JSON text (a NetCDF file? read it with "
                                 "bayesgmm.load_result and a .nc name).") from None
        try:
            d = json.loads(text)
        except json.JSONDecodeError as err:
            raise ValueError(f"{where} is not valid JSON ({err}); is the file truncated? Write it again with "
                             "FitResult.to_json.") from None
        if isinstance(d, dict):  # the numbers strict JSON has none for, as to_json writes them
            d.update({name: from_strict_json(d[name]) for name in ("trace", "info") if name in d})
        fields = validated_summary(d, where)
        # files name what they left out; files without the field: every Bayesian result had draws
        omitted = d["posterior_omitted"] is True if "posterior_omitted" in d else fields["method"] in _BAYESIAN_METHODS
        if omitted:
            fields["info"] = {**fields["info"], "posterior_omitted": True}
            warnings.warn(
                f"{where} holds only the point estimate of a {fields['method']!r} fit: JSON does not keep the "
                "posterior draws or predictive, so predict, predict_proba and score_samples of the loaded result use "
                "the plug-in point estimate, not the posterior predictive of the original fit "
                "(result.posterior_omitted is True). Save with bayesgmm.save_result(result, 'fit.nc') and read "
                "with bayesgmm.load_result('fit.nc') to keep everything.",
                UserWarning,
                stacklevel=2,
            )
        return cls(**fields)

    def __repr__(self) -> str:
        return (
            f"FitResult(method={self.method!r}, covariance_type={self.covariance_type!r}, "
            + (f"covariance_model={self.covariance_model!r}, "
               if self.covariance_model != _covariance_models.ALIASES.get(self.covariance_type) else "")
            + f"K={self.num_components}, D={self.num_features}, log_likelihood={self.log_likelihood:.6g}, "
            f"converged={self.converged}, n_iter={self.n_iter}"
            + (", posterior omitted: point estimate only" if self.posterior_omitted else "") + ")"
        )




# ----------------------------------------------------------------------------------------------
# Validation of a JSON summary (FitResult.from_json)
# ----------------------------------------------------------------------------------------------
#: every ``method`` an engine reports
_METHODS = ("em", "map-em", "hard-em", "online-em", "online-map-em", "vb", "svi", "mcmc", "gibbs")
_BAYESIAN_METHODS = ("vb", "svi", "mcmc", "gibbs")
_OBJECTIVES = ("log_likelihood", "log_posterior", "classification_log_likelihood", "classification_log_posterior", "elbo")
_REQUIRED = ("method", "covariance_type", "weights", "means", "covariances", "log_likelihood", "converged", "n_iter",
             "trace", "objective", "feature_names", "num_obs")
#: the fields :meth:`FitResult.to_dict` writes beside the required ones
_OPTIONAL = {"format_version", "covariance_model", "num_components", "degenerate_components", "prior", "info",
             "posterior_omitted"}
#: tolerance on the sum of the weights (float32 fits round to ~1e-7)
_WEIGHT_SUM_TOL = 1e-5


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _number_array(where, name, value, ndim) -> np.ndarray:
    """A JSON array of numbers with ``ndim`` dimensions (None: any) as float64, or a ValueError naming the field."""
    def bad(what):
        return ValueError(f"{where}: field {name!r} must be {what}; got {_short(value)}.")

    expected = {None: "a list of numbers or of lists of numbers", 1: "a list of numbers", 2: "a list of lists of numbers",
                3: "a list of lists of lists of numbers"}[ndim]
    if not isinstance(value, list):
        raise bad(expected)
    try:
        raw = np.asarray(value)
    except ValueError:  # ragged
        raise bad(expected + " of equal lengths") from None
    if raw.size and raw.dtype.kind not in "iuf":
        raise bad(expected + " (not strings, booleans or null)")
    if ndim is None:
        return raw.astype(np.float64)
    if raw.ndim != ndim and not (raw.size == 0 and ndim == 1):
        raise bad(f"{expected} ({ndim}-dimensional), not {raw.ndim}-dimensional with shape {raw.shape}")
    return raw.astype(np.float64).reshape(raw.shape if raw.size else (0,) * ndim)


def _short(value, limit: int = 80) -> str:
    text = json.dumps(value) if not isinstance(value, np.ndarray) else repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def validated_summary(d, where: str) -> dict:
    """The :class:`FitResult` fields of a :meth:`FitResult.to_dict` dict, every one checked (for
    :meth:`FitResult.from_json`, and :func:`bayesgmm.storage.from_inference_data`'s metadata).

    Raises a ValueError, its message starting with ``where``, naming the first bad field.
    """
    if not isinstance(d, dict):
        raise ValueError(f"{where} must hold a JSON object (as FitResult.to_json writes), got {type(d).__name__}.")
    version = d.get("format_version", 0)  # files before version 1 have none
    if not _is_int(version):
        raise ValueError(f"{where}: field 'format_version' must be an integer; got {_short(version)}.")
    if version > JSON_FORMAT_VERSION:
        raise ValueError(f"{where} uses bayesgmm's JSON result format {version}, newer than this version reads "
                         f"({JSON_FORMAT_VERSION}); upgrade bayesgmm to load it.")
    unknown = sorted(set(d) - set(_REQUIRED) - _OPTIONAL)
    if unknown:  # a newer writer's field would be lost without a word
        warnings.warn(f"{where} has field(s) {unknown} that this version of bayesgmm does not know; they are ignored.",
                      UserWarning, stacklevel=4)
    missing = [key for key in _REQUIRED if key not in d]
    if missing:
        raise ValueError(f"{where} lacks the field(s) {missing}; a FitResult JSON has {list(_REQUIRED)} "
                         "(and optionally degenerate_components, prior, info).")

    def bad(name, what):
        return ValueError(f"{where}: field {name!r} must be {what}; got {_short(d[name])}.")

    method, ct, objective = d["method"], d["covariance_type"], d["objective"]
    if method not in _METHODS:
        raise bad("method", "one of " + ", ".join(map(repr, _METHODS)))
    if ct not in COVARIANCE_TYPES:
        raise bad("covariance_type", "one of " + ", ".join(map(repr, COVARIANCE_TYPES)))
    if objective not in _OBJECTIVES:
        raise bad("objective", "one of " + ", ".join(map(repr, _OBJECTIVES)))
    if not isinstance(d["converged"], bool):
        raise bad("converged", "true or false (a JSON boolean)")
    if not (_is_int(d["n_iter"]) and d["n_iter"] >= 0):
        raise bad("n_iter", "a non-negative integer")
    if not (_is_int(d["num_obs"]) and d["num_obs"] >= 1):
        raise bad("num_obs", "a positive integer")
    if not (_is_number(d["log_likelihood"]) and np.isfinite(d["log_likelihood"])):
        raise bad("log_likelihood", "a finite number")

    weights = _number_array(where, "weights", d["weights"], 1)
    means = _number_array(where, "means", d["means"], 2)
    k = weights.shape[0]
    if k < 1:
        raise bad("weights", "a non-empty list (one weight per component)")
    if means.shape[0] != k or means.shape[1] < 1:
        raise ValueError(f"{where}: field 'means' must have shape (K, D) = ({k}, D) with D >= 1, one row per weight; "
                         f"got shape {means.shape}.")
    dim = means.shape[1]
    cov_shape = {"full": (k, dim, dim), "diag": (k, dim), "spherical": (k,), "tied": (dim, dim)}[ct]
    covariances = _number_array(where, "covariances", d["covariances"], None)
    if covariances.shape != cov_shape:
        raise ValueError(f"{where}: field 'covariances' must have shape {cov_shape} for covariance_type={ct!r} with "
                         f"K={k}, D={dim}; got shape {covariances.shape}.")
    if "num_components" in d and d["num_components"] != k:
        raise ValueError(f"{where}: field 'num_components' is {_short(d['num_components'])} but there are {k} weights.")

    if not np.all(np.isfinite(weights)) or np.any(weights < 0):
        raise bad("weights", "finite and non-negative")
    if abs(weights.sum() - 1.0) > _WEIGHT_SUM_TOL:
        raise ValueError(f"{where}: field 'weights' must sum to 1 (mixture proportions); they sum to {weights.sum():.10g}.")
    if not np.all(np.isfinite(means)):
        raise bad("means", "finite numbers")
    if not np.all(np.isfinite(covariances)):
        raise bad("covariances", "finite numbers")
    if ct in ("diag", "spherical"):
        if np.any(covariances <= 0):
            raise ValueError(f"{where}: field 'covariances' must be positive variances for covariance_type={ct!r}; "
                             f"got a minimum of {covariances.min():.6g}.")
    else:
        mats = covariances.reshape(-1, dim, dim)
        for j, m in enumerate(mats):
            label = "the tied covariance" if ct == "tied" else f"the covariance of component {j}"
            if not np.allclose(m, m.T, rtol=1e-6, atol=1e-12 * np.max(np.abs(m))):
                raise ValueError(f"{where}: field 'covariances': {label} is not symmetric.")
            try:
                np.linalg.cholesky(m)
            except np.linalg.LinAlgError:
                raise ValueError(f"{where}: field 'covariances': {label} is not positive definite "
                                 f"(smallest eigenvalue {np.linalg.eigvalsh(m)[0]:.6g}).") from None

    trace = _number_array(where, "trace", d["trace"], 1)
    names = d["feature_names"]
    if not (isinstance(names, list) and all(isinstance(n, str) for n in names)):
        raise bad("feature_names", "a list of strings")
    if len(names) != dim or len(set(names)) != dim:
        raise ValueError(f"{where}: field 'feature_names' must name the D={dim} features once each; got {_short(names)}.")
    degenerate = d.get("degenerate_components", [])
    if not (isinstance(degenerate, list) and all(_is_int(i) and 0 <= i < k for i in degenerate)):
        raise ValueError(f"{where}: field 'degenerate_components' must be a list of component indices in [0, {k}); "
                         f"got {_short(degenerate)}.")
    prior = d.get("prior")
    if prior is not None:
        keys = ("weight_concentration", "mean", "mean_precision", "degrees_of_freedom", "scale")
        if not isinstance(prior, dict) or not set(keys) <= set(prior) <= set(keys) | {"weight_prior"}:
            raise ValueError(f"{where}: field 'prior' must be null or an object with the keys {list(keys)}; "
                             f"got {_short(prior)}.")
        try:
            prior = Prior(**prior)
        except (TypeError, ValueError) as err:
            raise ValueError(f"{where}: field 'prior' is not a valid prior: {err}") from None
        if prior.num_features != dim:
            raise ValueError(f"{where}: field 'prior' is for {prior.num_features} feature(s), the fit for {dim}.")
    info = d.get("info", {})
    if not isinstance(info, dict):
        raise ValueError(f"{where}: field 'info' must be a JSON object; got {_short(info)}.")
    model = d.get("covariance_model", _covariance_models.ALIASES[ct])
    if model not in _covariance_models.MODELS or _covariance_models.storage(model) != ct:
        stored = [m for m in _covariance_models.MODELS if _covariance_models.storage(m) == ct]
        raise bad("covariance_model", f"one of the mclust models stored as {ct!r}: " + ", ".join(map(repr, stored)))
    return dict(
        method=method, covariance_type=ct, weights=weights, means=means, covariances=covariances,
        log_likelihood=float(d["log_likelihood"]), converged=d["converged"], n_iter=d["n_iter"], trace=trace,
        objective=objective, feature_names=tuple(names), num_obs=d["num_obs"], degenerate_components=tuple(degenerate),
        prior=prior, info=info, covariance_model=model,
    )
