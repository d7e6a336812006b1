"""A scikit-learn estimator facade over every bayesgmm engine.

:class:`GaussianMixture` speaks scikit-learn's estimator protocol (``fit`` / ``predict`` /
``predict_proba`` / ``score_samples`` / ``score`` / ``sample`` / ``bic`` / ``aic``, fitted
attributes named as :class:`sklearn.mixture.GaussianMixture` names them), so it works in
``Pipeline``, ``GridSearchCV`` and ``cross_val_score``. The work is done by one of the engines,
chosen by ``method``; the engine's :class:`~bayesgmm.FitResult` is kept as ``result_`` (so
``est.result_.to_inference_data()`` gives ArviZ).

scikit-learn is an optional dependency. This module is not imported by ``import bayesgmm``
(the package exposes ``GaussianMixture`` lazily); when scikit-learn is importable the class
inherits :class:`sklearn.base.BaseEstimator` and :class:`sklearn.base.DensityMixin` and validates
input with scikit-learn's ``validate_data`` (its error messages, ``n_features_in_``,
``feature_names_in_``). Without scikit-learn it is a plain class with the same methods,
``get_params`` / ``set_params`` and bayesgmm's own validation.

Like :class:`sklearn.mixture.GaussianMixture`, it is a density estimator, not a
``ClusterMixin`` (it has ``fit_predict`` and ``predict`` but no ``labels_``).
"""

from __future__ import annotations

import dataclasses
import inspect
import warnings

import numpy as np

from . import _covariance_models
from ._executors import WARNINGS_LOCK, recorded_warnings
from .engines import engine_names, get_engine
from .params import COVARIANCE_MODELS, COVARIANCE_TYPES, Prior, check_data, check_sample_weight
from .params import ConvergenceWarning as _ConvergenceWarning

__all__ = ["ConvergenceWarning", "GaussianMixture"]

try:  # scikit-learn is optional
    from sklearn.base import BaseEstimator as _Base
    from sklearn.base import DensityMixin as _DensityMixin
    from sklearn.exceptions import ConvergenceWarning as _SkConvergenceWarning
    from sklearn.exceptions import NotFittedError
    from sklearn.utils.validation import check_is_fitted as _sk_check_is_fitted
    from sklearn.utils.validation import validate_data as _sk_validate_data

    HAVE_SKLEARN = True
except ImportError:  # pragma: no cover - exercised only where scikit-learn is absent
    HAVE_SKLEARN = False

    class NotFittedError(ValueError, AttributeError):
        """The estimator is used before ``fit`` (as scikit-learn's NotFittedError)."""

    class _Base:
        """Minimal ``get_params`` / ``set_params`` for use without scikit-learn."""

        @classmethod
        def _get_param_names(cls):
            sig = inspect.signature(cls.__init__)
            return sorted(p.name for p in sig.parameters.values() if p.name != "self")

        def get_params(self, deep=True):
            return {name: getattr(self, name) for name in self._get_param_names()}

        def set_params(self, **params):
            valid = self._get_param_names()
            for key, value in params.items():
                if key not in valid:
                    raise ValueError(
                        f"Invalid parameter {key!r} for estimator {type(self).__name__}. "
                        f"Valid parameters are: {valid}."
                    )
                setattr(self, key, value)
            return self

        def __repr__(self):
            args = ", ".join(f"{k}={v!r}" for k, v in self.get_params().items())
            return f"{type(self).__name__}({args})"

    class _DensityMixin:
        _estimator_type = "DensityEstimator"

    class _SkConvergenceWarning(UserWarning):
        """Stands in for scikit-learn's ConvergenceWarning when scikit-learn is absent."""


class ConvergenceWarning(_ConvergenceWarning, _SkConvergenceWarning):
    """The estimator's non-convergence warning: both :class:`bayesgmm.ConvergenceWarning` and
    :class:`sklearn.exceptions.ConvergenceWarning` (when scikit-learn is installed), so filters on
    either catch it (``warnings.simplefilter("ignore", sklearn.exceptions.ConvergenceWarning)``)."""


#: The first sentence of scikit-learn's warning, kept so that message filters written for
#: scikit-learn (``"ignore:Best performing initialization did not converge"``) keep working.
SKLEARN_CONVERGENCE_MESSAGE = (
    "Best performing initialization did not converge. Try different init parameters, or increase "
    "max_iter, tol, or check for degenerate data."
)


#: The registry's engines; MAP-EM is ``method="em"`` with a ``prior`` here, as in ``fit_em``.
METHODS = tuple(name for name in engine_names() if name != "map-em")
# Estimator parameters handed to an engine when (and only when) its signature takes them.
_SHARED = ("covariance_type", "prior", "n_init", "init_params", "tol", "max_iter", "reg_covar", "missing")
_INITS = ("weights_init", "means_init", "precisions_init")  # the same, default None
_RESERVED = ("x", "num_components", "seed", "sample_weight") + _SHARED + _INITS
_MAX_SEED = 2**32 - 1


def _engine(method: str):
    """The engine function for ``method``, imported lazily (engines never import each other)."""
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}.")
    return get_engine(method).load()


def seed_from_random_state(random_state) -> int:
    """An integer seed for the JAX engines from scikit-learn's ``random_state``.

    * int in ``[0, 2**32 - 1]``: used as the seed itself, so ``random_state=s`` fits exactly
      what ``bayesgmm.fit_em(..., seed=s)`` fits.
    * ``None``: scikit-learn's meaning, a fresh seed drawn from NumPy's global random state
      (so repeated fits differ; the seed used is stored as ``seed_``).
    * ``numpy.random.RandomState`` or ``numpy.random.Generator``: a seed drawn from it.
    """
    if isinstance(random_state, (int, np.integer)) and not isinstance(random_state, (bool, np.bool_)):
        if not 0 <= int(random_state) <= _MAX_SEED:
            raise ValueError(f"random_state must be in [0, 2**32 - 1], got {random_state}.")
        return int(random_state)
    if random_state is None:
        return int(np.random.randint(0, np.iinfo(np.int32).max))  # noqa: NPY002 (scikit-learn: None is the global RNG)
    if isinstance(random_state, np.random.RandomState):
        return int(random_state.randint(0, np.iinfo(np.int32).max))
    if isinstance(random_state, np.random.Generator):
        return int(random_state.integers(0, np.iinfo(np.int32).max))
    raise ValueError(
        "random_state must be None, an int in [0, 2**32 - 1], a numpy.random.RandomState or a "
        f"numpy.random.Generator, got {random_state!r}."
    )


def _as_float_array(value, name):
    arr = np.asarray(value)
    if not (np.issubdtype(arr.dtype, np.number) and not np.issubdtype(arr.dtype, np.complexfloating)):
        raise ValueError(f"The parameter {name!r} must be an array of real numbers, got dtype {arr.dtype}.")
    arr = arr.astype(np.float64)
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"The parameter {name!r} contains NaN or infinite values; starting values must be finite.")
    return arr


def _check_shape(arr, shape, name):
    if arr.shape != tuple(shape):
        raise ValueError(f"The parameter {name!r} should have the shape of {tuple(shape)}, but got {arr.shape}.")


def check_initial_parameters(weights_init, means_init, precisions_init, num_components, num_features,
                             covariance_type):
    """Validate user-given starting parameters as scikit-learn's ``GaussianMixture`` does.

    The messages begin as scikit-learn's (``"The parameter 'weights' should have the shape of
    ..."``, ``"'full precision' should be symmetric, positive-definite"``), except that the range
    message reports the maximum as the maximum (scikit-learn's swaps them).

    Parameters
    ----------
    weights_init, means_init, precisions_init : array-like or None
        As :class:`GaussianMixture` takes them (``None``: not given).
    num_components, num_features : int
    covariance_type : {"full", "tied", "diag", "spherical"}

    Raises
    ------
    ValueError
        A wrong shape, weights outside [0, 1] or not summing to 1, precisions not symmetric
        positive definite (full, tied) or not positive (diag, spherical), or non-finite values.
    """
    k, d = num_components, num_features
    if weights_init is not None:
        w = _as_float_array(weights_init, "weights")
        _check_shape(w, (k,), "weights")
        if np.any(w < 0) or np.any(w > 1):
            raise ValueError(
                f"The parameter 'weights' should be in the range [0, 1], but got max value {np.max(w):.5f}, "
                f"min value {np.min(w):.5f}."
            )
        if not np.isclose(np.sum(w), 1.0, rtol=0.0, atol=1e-8):
            raise ValueError(f"The parameter 'weights' should be normalized, but got sum(weights) = {np.sum(w):.5f}.")
    if means_init is not None:
        _check_shape(_as_float_array(means_init, "means"), (k, d), "means")
    if precisions_init is not None:
        name = f"{covariance_type} precision"
        p = _as_float_array(precisions_init, name)
        shape = {"full": (k, d, d), "tied": (d, d), "diag": (k, d), "spherical": (k,)}[covariance_type]
        _check_shape(p, shape, name)
        if covariance_type in ("full", "tied"):
            mats = p.reshape(-1, d, d)
            if not np.allclose(mats, np.swapaxes(mats, -1, -2)) or np.any(np.linalg.eigvalsh(mats) <= 0):
                raise ValueError(f"{name!r} should be symmetric, positive-definite.")
        elif np.any(p <= 0):
            raise ValueError(f"{name!r} should be positive.")


def _aitken_converged(history, tol_total: float, floor_total: float, dtype) -> bool:
    """The engine's convergence test (:func:`bayesgmm._iterate.convergence`, for fits computed in
    ``dtype``) at the end of an objective history that spans several warm-started fits (totals,
    oldest first), or the history's last changes all within the fits' precision floor.

    The history is of float64 totals at parameters computed in ``dtype``: at the fixed point its
    changes are that arithmetic's rounding, of either sign and any ratio (float32, Old
    Faithful: 1e-8 up and down, under a floor of 1e-4), where the Aitken projection of two
    growing changes is infinite; the engine's own objective does not resolve them."""
    from ._iterate import COARSE_PERSIST, coarse, convergence

    history = np.asarray(history, np.float64)
    persist = COARSE_PERSIST if coarse(dtype) else 2
    changes = np.diff(history)[-persist:]
    if changes.size == persist and np.all(np.abs(changes) <= floor_total):
        return True
    close, converged = 0, False
    for t in range(2, len(history)):
        delta_prev = np.float64(history[t - 1] - history[t - 2])
        delta = np.float64(history[t] - history[t - 1])
        close, converged = convergence(delta_prev, delta, t, np.float64(tol_total), np.float64(floor_total), close,
                                       trace=history[: t + 1], coarse_precision=coarse(dtype))
        close, converged = int(close), bool(converged)
    return converged


def precision_cholesky(covariances, covariance_type: str) -> np.ndarray:
    """scikit-learn's ``precisions_cholesky_`` from covariances (as ``_compute_precision_cholesky``).

    full/tied: upper-triangular ``P`` with ``P @ P.T = inv(Sigma)`` (``P = inv(L).T`` for
    ``Sigma = L L^T``); diag/spherical: ``1 / sqrt(variance)``.
    """
    cov = np.asarray(covariances, dtype=np.float64)
    if covariance_type in ("full", "tied"):
        from scipy.linalg import solve_triangular

        mats = cov.reshape(-1, *cov.shape[-2:])
        d = mats.shape[-1]
        out = np.empty_like(mats)
        for k, m in enumerate(mats):  # K small matrices; done once per fit, not in a hot loop
            chol = np.linalg.cholesky(m)
            out[k] = solve_triangular(chol, np.eye(d), lower=True).T
        return out.reshape(cov.shape)
    return 1.0 / np.sqrt(cov)


def precisions_from_cholesky(prec_chol, covariance_type: str) -> np.ndarray:
    """``precisions_`` from ``precisions_cholesky_`` (scikit-learn's convention)."""
    if covariance_type == "full":
        return np.einsum("kij,klj->kil", prec_chol, prec_chol)
    if covariance_type == "tied":
        return prec_chol @ prec_chol.T
    return prec_chol**2


def _data_key(x, sample_weight) -> str:
    """A digest of the rows and their weights: a warm start's objective history spans fits of one data set."""
    import hashlib

    digest = hashlib.blake2b(digest_size=16)
    for a in (x, sample_weight):
        if a is not None:
            a = np.ascontiguousarray(a)
            digest.update(repr((a.shape, a.dtype.str)).encode())
            digest.update(a.data)
        digest.update(b"|")
    return digest.hexdigest()


def _as_names(names):
    return None if names is None else tuple(str(n) for n in names)


class GaussianMixture(_DensityMixin, _Base):
    """Gaussian mixture fitted by EM, variational Bayes, SVI or NUTS, as a scikit-learn estimator.

    It takes every parameter of :class:`sklearn.mixture.GaussianMixture`, with the same meaning
    except for the deliberate differences listed below, plus ``method``, ``prior`` and
    ``engine_kwargs``. The engine's options among them (``tol``, ``reg_covar``, ``max_iter``,
    ``n_init`` and ``init_params``, which EM and VB take; the ``*_init`` starting values, which
    EM takes) are handed to it when its signature takes them, and their defaults are the
    engines' own, which reach the optimum (see :func:`bayesgmm.fit_em`). Setting one away from
    its default for an engine that does not take it (e.g. ``max_iter`` with ``method="mcmc"``)
    warns that it is ignored.

    Parameters
    ----------
    n_components : int, default=1
        Number of mixture components K.
    method : {"em", "vb", "svi", "mcmc", "gibbs"}, default="em"
        Engine: :func:`bayesgmm.fit_em` (maximum likelihood, or MAP with a ``prior``),
        :func:`bayesgmm.fit_vb`, :func:`bayesgmm.fit_svi`, :func:`bayesgmm.fit_mcmc` (NUTS), :func:`bayesgmm.fit_gibbs`.
    covariance_type : {"full", "diag", "spherical", "tied"}, default="full"
        As scikit-learn; the Bayesian engines may support only some structures (they raise a
        ValueError saying which).
    tol : float, optional
        Convergence threshold per observation on the Aitken-projected remaining gain of the
        objective (see :func:`bayesgmm.fit_em`); None (default): the engine's own, 1e-5.
    reg_covar : float, default=1e-10
        Added to the diagonal of every covariance after each update, relative to each feature's
        robust variance (not in the data's units).
    max_iter : int, default=1000
        Maximum iterations per run. ``max_iter=0`` (EM) returns the initialisation.
    n_init : "auto" or int, default="auto"
        ``"auto"``: the em-EM search (many short starts, the best continued); an int: that many
        independent restarts, each run to convergence (scikit-learn's meaning).
    init_params : {"k-means++", "kmeans", "random", "random_from_data"}, default="k-means++"
        How the starts are drawn, with scikit-learn's meanings.
    weights_init : array (K,), optional
        Starting weights (EM; scikit-learn's checks and meaning).
    means_init : array (K, D), optional
        Starting means (EM).
    precisions_init : array, optional
        Starting precisions (inverse covariances), shaped as scikit-learn shapes them for
        ``covariance_type`` (EM). Pieces not given come from ``init_params``.
    prior : None, "default" or bayesgmm.Prior, default=None
        ``None``: the engine's default (EM: maximum likelihood; Bayesian engines:
        ``Prior.default(X, K)``). ``"default"``: ``Prior.default(X, n_components)`` computed on
        the training data at ``fit`` (for EM: MAP-EM; useful in a grid over ``n_components``,
        since that prior depends on K). A :class:`~bayesgmm.Prior` is used as given.
    random_state : None, int, RandomState or Generator, default=None
        See :func:`seed_from_random_state`: an int is the engine's ``seed``; ``None`` draws a
        fresh seed from NumPy's global state at each ``fit`` (scikit-learn's convention), kept
        as ``seed_`` so the fit can be repeated exactly.
    warm_start : bool, default=False
        EM: a second ``fit`` continues from the parameters of an earlier EM fit (one start, the
        ``*_init`` parameters and ``n_init`` are not used); after another method's fit it starts
        afresh. While the data and weights stay the same, convergence is judged on the
        objective's history over the successive fits, so fits of ``max_iter=1`` each converge
        too; a fit on other data is judged on its own iterations.
    verbose : int, default=0
        1: one line per fit (initialisation, iterations, converged or not); 2 and more: also the
        objective's change every ``verbose_interval`` iterations. Printed after the compiled
        fit returns, from its trace (scikit-learn prints during its Python loop).
    verbose_interval : int, default=10
        Iterations between two progress lines when ``verbose >= 2``.
    engine_kwargs : dict, optional
        Further keyword arguments of the engine, e.g. ``{"num_samples": 500}`` for ``"mcmc"``
        or ``{"hard": True}`` for ``"em"``. Must not repeat an estimator parameter.
    missing : {"error", "marginalize"}, default="error"
        ``"marginalize"``: NaN entries of ``X`` are missing at random; every engine fits the
        observed-data likelihood, and ``predict``, ``predict_proba`` and ``score_samples`` score
        each row on its observed columns. The default refuses NaN, as scikit-learn does.

    Attributes
    ----------
    weights_ : ndarray (K,)
    means_ : ndarray (K, D)
    covariances_ : ndarray
        Shapes as scikit-learn: full (K, D, D), tied (D, D), diag (K, D), spherical (K,).
    precisions_ : ndarray
        Inverses of ``covariances_``, same shapes.
    precisions_cholesky_ : ndarray
        Cholesky factors of the precisions (scikit-learn's convention, upper triangular).
    converged_ : bool
        EM and VB: the tolerance was met. SVI: the ELBO's drift over the last steps, and its
        steady climb over the last half of the run, were within its noise. NUTS and Gibbs: every
        quantity's split R-hat is below 1.01 (with one chain, over its two halves); a
        ``ConvergenceWarning`` says which check failed.
    degenerate_components_ : tuple of int
        Components the fit flags as degenerate (empty, collapsed onto the regularisation floor,
        or resting on a few points: ``result_.degenerate_components``); a
        ``DegenerateComponentWarning`` named them. Empty for a regular fit.
    n_iter_ : int
        EM: the updates that led to the returned parameters (scikit-learn's meaning).
    lower_bound_ : float
        EM: the objective per training observation (mean log-likelihood, or log posterior for
        MAP) at the returned parameters, computed in float64 whatever the compute precision
        (``score(X)`` for a maximum-likelihood fit); ``-inf`` when ``max_iter=0``. (scikit-learn
        reports the objective of its last E-step, at the parameters before the last M-step, at
        most that update's gain lower: a value no one can recompute from the fitted parameters,
        and in float32 rounded by more than a converged fit's last gain.) VB: the
        ELBO per observation at the returned parameters. MCMC (no iterations to bound): the
        mean training log-likelihood at the point estimate. SVI: the last one-particle ELBO.
    lower_bounds_ : ndarray
        EM: the objective per observation after each update of this ``fit``, ending with
        ``lower_bound_`` (the earlier entries in the compute precision). Otherwise ``result_.trace`` per
        observation: the objective per iteration (VB, SVI), or the log posterior of each draw
        (MCMC).
    n_features_in_ : int
    feature_names_in_ : ndarray of str
        Only when ``X`` was a DataFrame with string column names.
    result_ : bayesgmm.FitResult
        The engine's full result (draws, diagnostics, ``to_inference_data()``). ``predict``,
        ``predict_proba``, ``score_samples``, ``score``, ``bic``, ``aic`` and ``sample`` all read
        it; the parameter attributes above are copies (editing one changes none of them).
    seed_ : int
        The integer seed the engine received.

    Warns
    -----
    ConvergenceWarning
        :class:`bayesgmm.estimator.ConvergenceWarning`, a subclass of both
        :class:`bayesgmm.ConvergenceWarning` and scikit-learn's ``ConvergenceWarning``; for EM
        its message begins with scikit-learn's sentence. The engines' other warnings pass through.

    Notes
    -----
    Deliberate differences from :class:`sklearn.mixture.GaussianMixture` (scikit-learn's own
    ``mixture/tests/test_gaussian_mixture.py`` runs against this class in bayesgmm's tests, with
    these marked):

    * **Units.** The data are standardised internally (per feature, robustly), so a fit does not
      depend on the data's units; ``reg_covar`` is added in those units, i.e. relative to each
      feature's robust variance, not in the data's units.
    * **Defaults.** ``n_init="auto"`` (many short k-means++ starts, the best continued),
      ``init_params="k-means++"``, ``max_iter=1000``, ``reg_covar=1e-10`` and ``tol`` as the
      projected remaining gain of the objective per observation (Aitken), where scikit-learn
      has one start, k-means labels, 100 iterations, ``1e-6`` and the last gain. scikit-learn's
      defaults stop early on ordinary data; the results therefore differ from scikit-learn's
      unless the same starting values and a tight ``tol`` are given. An explicit ``n_init=n``
      runs n independent restarts, as scikit-learn, but the default's search is usually better
      than a small n. The run kept is the best by the objective at the returned parameters
      (scikit-learn: by ``lower_bound_``, the objective one M-step earlier).
    * **Singular data.** Data whose covariance is singular (a constant column; for full and tied
      covariances, linearly dependent columns; fewer distinct points than components) are
      refused with a ValueError naming the problem, whatever ``reg_covar``, where scikit-learn
      fits them on ``reg_covar`` alone (a covariance of that size, no longer the data's).
    * **Output precision.** Fitted attributes and scores are float64, float32 input included
      (scikit-learn returns float32 for float32 input); the engines compute in JAX's default
      float and report float64 recomputations.
    * **Sample weights.** ``fit(X, sample_weight=w)`` for EM and VB; SVI, NUTS and Gibbs refuse
      weights with a ValueError.
    * **Messages.** Errors and warnings have bayesgmm's wording (they name the fix); the checks
      of ``*_init`` and the convergence warning begin as scikit-learn's.
    * **Private API.** scikit-learn's private methods (``_initialize``, ``_set_parameters``,
      ``_estimate_*``) do not exist; ``_n_parameters()`` does.
    """

    def __init__(
        self,
        n_components=1,
        *,
        method="em",
        covariance_type="full",
        tol=None,
        reg_covar=1e-10,
        max_iter=1000,
        n_init="auto",
        init_params="k-means++",
        weights_init=None,
        means_init=None,
        precisions_init=None,
        prior=None,
        random_state=None,
        warm_start=False,
        verbose=0,
        verbose_interval=10,
        engine_kwargs=None,
        missing="error",
    ):
        self.n_components = n_components
        self.method = method
        self.covariance_type = covariance_type
        self.tol = tol
        self.reg_covar = reg_covar
        self.max_iter = max_iter
        self.n_init = n_init
        self.init_params = init_params
        self.weights_init = weights_init
        self.means_init = means_init
        self.precisions_init = precisions_init
        self.prior = prior
        self.random_state = random_state
        self.warm_start = warm_start
        self.verbose = verbose
        self.verbose_interval = verbose_interval
        self.engine_kwargs = engine_kwargs
        self.missing = missing

    def __sklearn_tags__(self):
        """scikit-learn's tags: NaN entries are allowed with ``missing="marginalize"``."""
        tags = super().__sklearn_tags__()
        tags.input_tags.allow_nan = self.missing == "marginalize"
        return tags

    # ------------------------------------------------------------------ validation
    def _validate_X(self, X, *, reset: bool):
        if HAVE_SKLEARN:
            try:
                return _sk_validate_data(
                    self, X, reset=reset, dtype=[np.float64, np.float32], ensure_min_samples=2 if reset else 1,
                    ensure_all_finite="allow-nan" if self.missing == "marginalize" else True,
                )
            except ValueError as err:
                message = str(err)
                if "infinity" in message:  # scikit-learn's words first (its checks match them), then the fix
                    raise ValueError(f"{message} Remove the rows with infinite values, or set those entries to NaN "
                                     "to treat them as missing (missing='marginalize').") from None
                if "could not convert" in message and hasattr(X, "columns"):  # name the columns
                    names = [str(c) for c in X.columns if np.asarray(X[c]).dtype.kind not in "biuf"]
                    raise ValueError(f"{message}: X has non-numeric column(s) {names}; select numeric columns "
                                     "only, or encode them as numbers.") from None
                if "NaN" not in message or self.missing == "marginalize":
                    raise
                first = message.split(".")[0]  # "Input X contains NaN" (scikit-learn's own advice is not ours)
                raise ValueError(f"{first}. To treat NaN entries as missing at random, pass missing='marginalize'; "
                                 "otherwise remove or impute them.") from None
        if reset:
            arr, _ = check_data(X, name="X", allow_constant=True, missing=self.missing)
            self.n_features_in_ = arr.shape[1]
            if hasattr(X, "columns") and all(isinstance(c, str) for c in X.columns):
                self.feature_names_in_ = np.asarray(list(X.columns), dtype=object)
            elif hasattr(self, "feature_names_in_"):
                del self.feature_names_in_
            return arr
        # without scikit-learn's own check, a DataFrame's columns are matched by name here (they were taken by position)
        arr, _ = check_data(X, name="X", num_features=self.n_features_in_, allow_constant=True, missing=self.missing,
                            feature_names=None if HAVE_SKLEARN else _as_names(getattr(self, "feature_names_in_", None)))
        return arr

    def _check_fitted(self):
        if HAVE_SKLEARN:
            _sk_check_is_fitted(self, "result_")
        elif not hasattr(self, "result_"):
            raise NotFittedError(
                f"This {type(self).__name__} instance is not fitted yet. Call 'fit' with "
                "appropriate arguments before using this estimator."
            )

    def _engine_call(self, X, sample_weight=None):
        """The engine function and its keyword arguments for this configuration (``prior="default"``
        from the rows as ``sample_weight`` weights them)."""
        fit_fn = _engine(self.method)
        k = self.n_components
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
            raise ValueError(f"n_components must be a positive integer, got {k!r}.")
        if self.covariance_type not in COVARIANCE_TYPES + COVARIANCE_MODELS:
            raise ValueError(f"covariance_type must be one of {COVARIANCE_TYPES} or mclust's models "
                             f"{COVARIANCE_MODELS}, got {self.covariance_type!r}.")
        get_engine(self.method).check_covariance_type(self.covariance_type)
        layout = _covariance_models.storage(self.covariance_type)
        if X.shape[0] < k:
            raise ValueError(
                f"Expected n_samples >= n_components but got n_components = {k}, "
                f"n_samples = {X.shape[0]}. Use fewer components or more data."
            )
        prior = self.prior
        if isinstance(prior, str) and prior == "default":
            prior = Prior.default(X, int(k), sample_weight=sample_weight)
        elif prior is not None and not isinstance(prior, Prior):
            raise ValueError(f"prior must be None, 'default' or a bayesgmm.Prior, got {prior!r}.")

        for name in ("warm_start",):
            if not isinstance(getattr(self, name), (bool, np.bool_)):
                raise ValueError(f"{name} must be True or False, got {getattr(self, name)!r}.")
        for name in ("verbose", "verbose_interval"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < (0 if name == "verbose" else 1):
                raise ValueError(f"{name} must be an integer >= {0 if name == 'verbose' else 1}, got {value!r}.")
        check_initial_parameters(self.weights_init, self.means_init, self.precisions_init, int(k), X.shape[1],
                                 layout)

        accepted = inspect.signature(fit_fn).parameters
        values = {name: getattr(self, name) for name in _SHARED + _INITS}
        values["prior"] = prior
        defaults = inspect.signature(type(self).__init__).parameters
        kwargs, ignored = {}, []
        for name, value in values.items():
            if name in accepted:
                kwargs[name] = value
            elif name in ("prior",) + _INITS:
                if value is not None:
                    ignored.append(name)
            elif value != defaults[name].default:
                ignored.append(name)
        if self.warm_start and self.method != "em":
            ignored.append("warm_start")
        if ignored:
            warnings.warn(
                f"method={self.method!r} does not take {ignored}; they are ignored. Engine options "
                "go in engine_kwargs.",
                UserWarning,
                stacklevel=3,
            )
        extra = {} if self.engine_kwargs is None else self.engine_kwargs
        if not isinstance(extra, dict):
            raise ValueError(f"engine_kwargs must be a dict or None, got {type(extra).__name__}.")
        for name in extra:
            if name == "sample_weight":
                raise ValueError("engine_kwargs must not set 'sample_weight': pass it to fit "
                                 "(estimator.fit(X, sample_weight=w)), which scales lower_bound_ by it.")
            if name in _RESERVED:
                raise ValueError(
                    f"engine_kwargs must not set {name!r}: it is set by the estimator "
                    "(n_components, random_state or the estimator parameter of that name)."
                )
            if name not in accepted:
                options = sorted(set(accepted) - set(_RESERVED))
                raise ValueError(f"engine_kwargs key {name!r} is not an option of method={self.method!r}; options: {options}.")
        kwargs.update(extra)
        return fit_fn, int(k), kwargs

    # ------------------------------------------------------------------ fitting
    def fit(self, X, y=None, sample_weight=None):
        """Fit the mixture to ``X`` (n_samples, n_features); ``y`` is ignored.

        With ``warm_start=True`` and a fitted EM estimator, continue from the fitted parameters.

        Parameters
        ----------
        X : array-like (n_samples, n_features)
            Training data, at least two rows and ``n_components`` of them; a DataFrame's string
            column names become ``feature_names_in_``. NaN entries only with
            ``missing="marginalize"``.
        y : None
            Ignored; accepted for scikit-learn's API (pipelines pass it).
        sample_weight : array-like (n_samples,), optional
            Non-negative row weights (frequency weights: weight 2 counts a row twice), for the
            engines that take them (``"em"``, ``"vb"``); ``lower_bound_`` is then the objective
            per unit of weight. scikit-learn's cross-validation slices it per fold
            (``cross_val_score(..., params={"sample_weight": w})``).

        Returns
        -------
        self
        """
        from ._sharding import ProcessCall

        devices = self.engine_kwargs.get("devices") if isinstance(self.engine_kwargs, dict) else None
        with ProcessCall(devices, "GaussianMixture.fit"):  # across processes, one process's error stops all
            # a warm start continues an EM fit (another method's fit leaves none to continue: a cold start)
            warm = self.method == "em" and self.warm_start and getattr(self, "_objective_history", None) is not None
            if warm:
                self._check_warm_start(X)  # before validate_data replaces n_features_in_ and the names
            X = self._validate_X(X, reset=True)
            sample_weight = check_sample_weight(sample_weight, X.shape[0])  # before the default prior looks at X
            fit_fn, k, kwargs = self._engine_call(X, sample_weight)
            if sample_weight is not None:
                if "sample_weight" not in inspect.signature(fit_fn).parameters:
                    takes = [m for m in METHODS if "sample_weight" in inspect.signature(_engine(m)).parameters]
                    raise ValueError(f"method={self.method!r} does not take sample_weight; the methods that do: {takes}.")
                kwargs["sample_weight"] = sample_weight
            seed = seed_from_random_state(self.random_state)
            # the data's digest only where a later warm start may read it (a pass over X)
            data_key = _data_key(X, sample_weight) if self.warm_start and self.method == "em" else None
            if warm:  # one start: the fitted parameters
                kwargs.update(weights_init=self.weights_, means_init=self.means_, precisions_init=self.precisions_,
                              n_init=1)
        caught = []
        try:
            with recorded_warnings() as caught:  # one thread at a time (_executors)
                result = fit_fn(X, k, seed=seed, **kwargs)
        except BaseException:  # outside the recording block: the caller's filters apply
            with WARNINGS_LOCK:  # but not inside another thread's recording block
                self._reemit(caught)
            raise
        if hasattr(self, "feature_names_in_"):
            result = dataclasses.replace(result, feature_names=tuple(str(c) for c in self.feature_names_in_))
        # convergence over the successive fits' objectives only while they are those of one data set
        history = self._objective_history if warm and data_key == getattr(self, "_history_data", None) else None
        self._set_fitted(result, seed, history, None if sample_weight is None else float(np.sum(sample_weight)))
        self._history_data = data_key
        # a warm start is judged over the fits' joint history: one that converged there does not
        # also warn that its last max_iter iterations did not
        with WARNINGS_LOCK:  # the caller's filters, not another thread's recording block
            self._reemit(caught, converged=warm and self.converged_)
        if self.verbose:
            self._print_verbose(result, self._total_weight)
        return self

    def _check_warm_start(self, X):
        """A warm start needs the fitted structure: the same K, covariance model and features."""
        if np.ndim(X) != 2:  # validate_data's error names the shape
            return
        num_features = np.shape(X)[1]
        if (self.result_.covariance_model != _covariance_models.resolve(self.covariance_type)[1]
                or self.means_.shape != (self.n_components, num_features)):
            raise ValueError(
                "warm_start=True continues the previous fit, which had a different n_components, "
                "covariance_type or number of features; set warm_start=False to start afresh."
            )

    def _reemit(self, caught, converged: bool = False):
        """Re-issue the engine's warnings; non-convergence as this module's ConvergenceWarning,
        and not at all where the estimator judged the fit ``converged`` (warm starts)."""
        for record in caught:
            category, message = record.category, str(record.message)
            if converged and issubclass(category, _ConvergenceWarning):
                continue
            if issubclass(category, _ConvergenceWarning) and not issubclass(category, ConvergenceWarning):
                category = ConvergenceWarning
                if self.method == "em" and message.startswith("EM did not converge"):
                    message = f"{SKLEARN_CONVERGENCE_MESSAGE} {message}"
            warnings.warn(message, category, stacklevel=3)

    def _set_fitted(self, result, seed, history=None, total_weight=None):
        """Fitted attributes from the engine's result (``history``: the objective totals of the
        previous warm-started fits, EM; ``total_weight``: the sum of the row weights, which the
        objective's totals are per unit of, when the fit was weighted)."""
        cov_type = result.covariance_type
        self.result_ = result
        self.seed_ = seed
        # writable copies, as scikit-learn's fitted attributes are (the result's arrays are read-only)
        self.weights_ = np.array(result.weights, dtype=np.float64)
        self.means_ = np.array(result.means, dtype=np.float64)
        self.covariances_ = np.array(result.covariances, dtype=np.float64)
        self.precisions_cholesky_ = precision_cholesky(self.covariances_, cov_type)
        self.precisions_ = precisions_from_cholesky(self.precisions_cholesky_, cov_type)
        self.converged_ = bool(result.converged)
        self.degenerate_components_ = tuple(int(j) for j in result.degenerate_components)
        self.n_iter_ = int(result.n_iter)
        self._total_weight = total_weight
        n = max(int(result.num_obs), 1) if total_weight is None else total_weight
        trace = np.asarray(result.trace, dtype=np.float64).ravel()
        if self.method == "em":
            # trace[t] is the objective at the parameters after t updates, its last entry the float64
            # value at the returned parameters (scikit-learn's is one E-step earlier)
            self.lower_bounds_ = trace[1 : self.n_iter_ + 1] / n
            self.lower_bound_ = float(self.lower_bounds_[-1]) if self.n_iter_ else -np.inf
            self._objective_history = trace if history is None else np.concatenate([history, trace[1:]])
            # float32 rounding stopped it short (a float64 step still gains): not a slow climb to extrapolate
            from ._em_host import stopped_short_info

            stalled = stopped_short_info(result.info, n)
            if history is not None and not self.converged_ and self.n_iter_ > 0 and not stalled:
                info = result.info
                self.converged_ = _aitken_converged(self._objective_history, float(info["tol"]) * n,
                                                    float(info.get("precision_floor_per_obs") or 0.0) * n,
                                                    np.dtype(info.get("dtype", "float64")))
            return
        self._objective_history = None  # nothing for an EM warm start to continue
        finite = trace[np.isfinite(trace)]
        self.lower_bounds_ = finite / n
        if result.sample_stats or not finite.size:  # a sampler's trace is per draw, not per iteration
            self.lower_bound_ = float(result.log_likelihood) / n
        else:
            self.lower_bound_ = float(finite[-1] / n)

    def _print_verbose(self, result, total_weight=None):
        """scikit-learn's progress lines, from the fit's trace (printed after the fit)."""
        n = max(int(result.num_obs), 1) if total_weight is None else total_weight
        trace = np.asarray(result.trace, dtype=np.float64).ravel() / n
        print(f"Initialization: {result.info.get('n_init', 1)} start(s), {self.method} engine")
        if self.verbose >= 2:
            for t in range(self.verbose_interval, len(trace), self.verbose_interval):
                print(f"  Iteration {t}\t objective change {trace[t] - trace[t - 1]:.5g} per observation")
        state = "converged" if self.converged_ else "did not converge"
        print(f"Initialization {state}: n_iter={self.n_iter_}, objective {trace[-1]:.6g} per observation.")

    def _n_parameters(self):
        """Number of free parameters of the fitted mixture (scikit-learn's private method)."""
        self._check_fitted()
        return int(self.result_.num_parameters)

    def fit_predict(self, X, y=None, sample_weight=None):
        """Fit, then return the most probable component of each training row.

        Parameters
        ----------
        X : array-like (n_samples, n_features)
            Training data, as :meth:`fit` takes them.
        y : None
            Ignored; accepted for scikit-learn's API.
        sample_weight : array-like (n_samples,), optional
            Row weights, as :meth:`fit` takes them.

        Returns
        -------
        ndarray (n_samples,)
            The component of highest posterior probability of each row of ``X``.
        """
        return self.fit(X, y, sample_weight=sample_weight).predict(X)

    # ------------------------------------------------------------------ prediction
    def predict(self, X):
        """Most probable component of each row, shape (n_samples,).

        Parameters
        ----------
        X : array-like (n_samples, n_features)
            Data with the features the estimator was fitted on.

        Returns
        -------
        ndarray (n_samples,)
            Component indices in ``0 .. n_components - 1``.
        """
        X = self._transform_input(X)
        return self.result_.predict(X)

    def predict_proba(self, X):
        """Posterior component probabilities, shape (n_samples, n_components).

        Bayesian methods average them over the (label-aligned) posterior draws.

        Parameters
        ----------
        X : array-like (n_samples, n_features)
            Data with the features the estimator was fitted on.

        Returns
        -------
        ndarray (n_samples, n_components)
            Each row sums to one.
        """
        X = self._transform_input(X)
        return self.result_.predict_proba(X)

    def score_samples(self, X):
        """Log (predictive) density of each row, shape (n_samples,).

        EM: the plug-in mixture density (as scikit-learn); Bayesian methods: the posterior
        predictive (see :meth:`bayesgmm.FitResult.score_samples`).

        Parameters
        ----------
        X : array-like (n_samples, n_features)
            Data with the features the estimator was fitted on.

        Returns
        -------
        ndarray (n_samples,)
            Natural-log densities.
        """
        X = self._transform_input(X)
        return self.result_.score_samples(X)

    def score(self, X, y=None):
        """Mean log (predictive) density per row; higher is better (GridSearchCV's default score).

        Parameters
        ----------
        X : array-like (n_samples, n_features)
            Data with the features the estimator was fitted on.
        y : None
            Ignored; accepted for scikit-learn's API.

        Returns
        -------
        float
            The mean of :meth:`score_samples` over the rows of ``X``.
        """
        return float(np.mean(self.score_samples(X)))

    def bic(self, X):
        """Bayesian information criterion at the point estimate; lower is better.

        Parameters
        ----------
        X : array-like (n_samples, n_features)
            The data to score, usually the training data.

        Returns
        -------
        float
            ``-2 log L + p log N``, with ``p`` the fitted model's free parameters.
        """
        X = self._transform_input(X)
        return self.result_.bic(X)

    def aic(self, X):
        """Akaike information criterion at the point estimate; lower is better.

        Parameters
        ----------
        X : array-like (n_samples, n_features)
            The data to score, usually the training data.

        Returns
        -------
        float
            ``-2 log L + 2 p``, with ``p`` the fitted model's free parameters.
        """
        X = self._transform_input(X)
        return self.result_.aic(X)

    def sample(self, n_samples=1):
        """Draw ``n_samples`` observations from the fitted mixture.

        The randomness comes from ``random_state`` as at ``fit`` (an int gives the same
        draws at every call, as scikit-learn), folded so it differs from the fit's stream.
        The draws are i.i.d. in random order (scikit-learn's are grouped by component), made in
        float64 whatever JAX's default float (the same ``random_state`` gives the same draws with
        x64 on or off; :meth:`bayesgmm.FitResult.sample`); the sampler is compiled once per
        bucket of ``n_samples``, so calls with many different sizes stay fast.

        Parameters
        ----------
        n_samples : int, default=1
            Number of observations to draw, at least one.

        Returns
        -------
        X : ndarray (n_samples, n_features)
            The observations drawn, in the units of the training data.
        y : ndarray (n_samples,)
            Component of each draw.
        """
        self._check_fitted()
        if isinstance(n_samples, bool) or not isinstance(n_samples, (int, np.integer)) or n_samples < 1:
            raise ValueError(
                f"Invalid value for 'n_samples': {n_samples!r}. The sampling requires at least one sample."
            )
        import jax

        from .params import seed_to_key

        key = jax.random.fold_in(seed_to_key(seed_from_random_state(self.random_state)), 1)
        return self.result_.sample(n_samples, seed=key)  # what predict and score read too (the attributes are copies)

    def _transform_input(self, X):
        self._check_fitted()
        return self._validate_X(X, reset=False)
