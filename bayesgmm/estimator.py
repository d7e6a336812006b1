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
import importlib
import inspect
import warnings

import numpy as np

from .params import COVARIANCE_TYPES, Prior, check_data

try:  # scikit-learn is optional
    from sklearn.base import BaseEstimator as _Base
    from sklearn.base import DensityMixin as _DensityMixin
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


METHODS = ("em", "vb", "svi", "mcmc")
_ENGINES = {
    "em": ("bayesgmm.em", "fit_em"),
    "vb": ("bayesgmm.vb", "fit_vb"),
    "svi": ("bayesgmm.svi", "fit_svi"),
    "mcmc": ("bayesgmm.mcmc", "fit_mcmc"),
}
# Estimator parameters handed to an engine when (and only when) its signature takes them.
_SHARED = ("covariance_type", "prior", "n_init", "init_params", "tol", "max_iter", "reg_covar")
_RESERVED = ("x", "num_components", "seed") + _SHARED
_MAX_SEED = 2**32 - 1


def _engine(method: str):
    """The engine function for ``method``, imported lazily (engines never import each other)."""
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}.")
    module, name = _ENGINES[method]
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as err:
        raise ValueError(
            f"method={method!r} needs {module}.{name}, which this installation of bayesgmm "
            f"does not provide ({err}). Use one of the other methods."
        ) from err


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
        return int(np.random.randint(0, np.iinfo(np.int32).max))
    if isinstance(random_state, np.random.RandomState):
        return int(random_state.randint(0, np.iinfo(np.int32).max))
    if isinstance(random_state, np.random.Generator):
        return int(random_state.integers(0, np.iinfo(np.int32).max))
    raise ValueError(
        "random_state must be None, an int in [0, 2**32 - 1], a numpy.random.RandomState or a "
        f"numpy.random.Generator, got {random_state!r}."
    )


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


class GaussianMixture(_DensityMixin, _Base):
    """Gaussian mixture fitted by EM, variational Bayes, SVI or NUTS, as a scikit-learn estimator.

    Parameters
    ----------
    n_components : int, default=1
        Number of mixture components K.
    method : {"em", "vb", "svi", "mcmc"}, default="em"
        Engine: :func:`bayesgmm.fit_em` (maximum likelihood, or MAP with a ``prior``),
        :func:`bayesgmm.fit_vb`, ``bayesgmm.fit_svi``, :func:`bayesgmm.fit_mcmc`.
    covariance_type : {"full", "diag", "spherical", "tied"}, default="full"
        As scikit-learn; the Bayesian engines may support only some structures (they raise a
        ValueError saying which).
    tol, reg_covar, max_iter, n_init, init_params
        Handed to the engine when its signature takes them (EM and VB take all of them), with
        the engines' defaults, which reach the optimum (see :func:`bayesgmm.fit_em`): ``tol=None``
        (the engine's), ``n_init="auto"`` (the em-EM search), ``init_params="k-means++"``,
        ``max_iter=1000``, ``reg_covar=1e-10`` (relative to each feature's robust variance).
        scikit-learn's own defaults (``n_init=1``, ``tol=1e-3``, ``max_iter=100``) stop early on
        ordinary data. Setting one away from its default for an engine that does not take it
        (e.g. ``max_iter`` with ``method="mcmc"``) warns that it is ignored.
    prior : None, "default" or bayesgmm.Prior, default=None
        ``None``: the engine's default (EM: maximum likelihood; Bayesian engines:
        ``Prior.default(X, K)``). ``"default"``: ``Prior.default(X, n_components)`` computed on
        the training data at ``fit`` (for EM: MAP-EM; useful in a grid over ``n_components``,
        since that prior depends on K). A :class:`~bayesgmm.Prior` is used as given.
    random_state : None, int, RandomState or Generator, default=None
        See :func:`seed_from_random_state`: an int is the engine's ``seed``; ``None`` draws a
        fresh seed from NumPy's global state at each ``fit`` (scikit-learn's convention), kept
        as ``seed_`` so the fit can be repeated exactly.
    engine_kwargs : dict, optional
        Further keyword arguments of the engine, e.g. ``{"num_samples": 500}`` for ``"mcmc"``
        or ``{"means_init": m, "weights_init": w, "precisions_init": p}`` for ``"em"``. Must
        not repeat an estimator parameter.

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
    n_iter_ : int
    lower_bound_ : float
        Final value of the engine's objective per training observation (EM: mean
        log-likelihood, or log posterior for MAP; VB: ELBO). Note: scikit-learn's
        GaussianMixture reports the value *before* its last M-step; this is the value at the
        returned parameters. For MCMC (no iterations to bound), the mean training
        log-likelihood at the point estimate.
    lower_bounds_ : ndarray
        ``result_.trace`` per training observation: the objective per iteration (EM, VB,
        SVI), or the log posterior of each draw (MCMC).
    n_features_in_ : int
    feature_names_in_ : ndarray of str
        Only when ``X`` was a DataFrame with string column names.
    result_ : bayesgmm.FitResult
        The engine's full result (draws, diagnostics, ``to_inference_data()``).
    seed_ : int
        The integer seed the engine received.
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
        prior=None,
        random_state=None,
        engine_kwargs=None,
    ):
        self.n_components = n_components
        self.method = method
        self.covariance_type = covariance_type
        self.tol = tol
        self.reg_covar = reg_covar
        self.max_iter = max_iter
        self.n_init = n_init
        self.init_params = init_params
        self.prior = prior
        self.random_state = random_state
        self.engine_kwargs = engine_kwargs

    # ------------------------------------------------------------------ validation
    def _validate_X(self, X, *, reset: bool):
        if HAVE_SKLEARN:
            return _sk_validate_data(
                self, X, reset=reset, dtype=[np.float64, np.float32], ensure_min_samples=2 if reset else 1
            )
        if reset:
            arr, _ = check_data(X, name="X", allow_constant=True)
            self.n_features_in_ = arr.shape[1]
            if hasattr(X, "columns") and all(isinstance(c, str) for c in X.columns):
                self.feature_names_in_ = np.asarray(list(X.columns), dtype=object)
            elif hasattr(self, "feature_names_in_"):
                del self.feature_names_in_
            return arr
        arr, _ = check_data(X, name="X", num_features=self.n_features_in_, allow_constant=True)
        return arr

    def _check_fitted(self):
        if HAVE_SKLEARN:
            _sk_check_is_fitted(self, "result_")
        elif not hasattr(self, "result_"):
            raise NotFittedError(
                f"This {type(self).__name__} instance is not fitted yet. Call 'fit' with "
                "appropriate arguments before using this estimator."
            )

    def _engine_call(self, X):
        """The engine function and its keyword arguments for this configuration."""
        fit_fn = _engine(self.method)
        k = self.n_components
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
            raise ValueError(f"n_components must be a positive integer, got {k!r}.")
        if self.covariance_type not in COVARIANCE_TYPES:
            raise ValueError(f"covariance_type must be one of {COVARIANCE_TYPES}, got {self.covariance_type!r}.")
        if X.shape[0] < k:
            raise ValueError(
                f"Expected n_samples >= n_components but got n_components = {k}, "
                f"n_samples = {X.shape[0]}. Use fewer components or more data."
            )
        prior = self.prior
        if isinstance(prior, str) and prior == "default":
            prior = Prior.default(X, int(k))
        elif prior is not None and not isinstance(prior, Prior):
            raise ValueError(f"prior must be None, 'default' or a bayesgmm.Prior, got {prior!r}.")

        accepted = inspect.signature(fit_fn).parameters
        values = {name: getattr(self, name) for name in _SHARED}
        values["prior"] = prior
        defaults = inspect.signature(type(self).__init__).parameters
        kwargs, ignored = {}, []
        for name, value in values.items():
            if name in accepted:
                kwargs[name] = value
            elif name != "prior" and value != defaults[name].default:
                ignored.append(name)
            elif name == "prior" and value is not None:
                ignored.append(name)
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
    def fit(self, X, y=None):
        """Fit the mixture to ``X`` (n_samples, n_features); ``y`` is ignored.

        Returns
        -------
        self
        """
        X = self._validate_X(X, reset=True)
        fit_fn, k, kwargs = self._engine_call(X)
        seed = seed_from_random_state(self.random_state)
        result = fit_fn(X, k, seed=seed, **kwargs)
        if hasattr(self, "feature_names_in_"):
            result = dataclasses.replace(result, feature_names=tuple(str(c) for c in self.feature_names_in_))
        self._set_fitted(result, seed)
        return self

    def _set_fitted(self, result, seed):
        cov_type = result.covariance_type
        self.result_ = result
        self.seed_ = seed
        self.weights_ = np.asarray(result.weights, dtype=np.float64)
        self.means_ = np.asarray(result.means, dtype=np.float64)
        self.covariances_ = np.asarray(result.covariances, dtype=np.float64)
        self.precisions_cholesky_ = precision_cholesky(self.covariances_, cov_type)
        self.precisions_ = precisions_from_cholesky(self.precisions_cholesky_, cov_type)
        self.converged_ = bool(result.converged)
        self.n_iter_ = int(result.n_iter)
        n = max(int(result.num_obs), 1)
        trace = np.asarray(result.trace, dtype=np.float64).ravel()
        finite = trace[np.isfinite(trace)]
        self.lower_bounds_ = finite / n
        if result.method == "mcmc" or not finite.size:  # a sampler's trace is per draw, not per iteration
            self.lower_bound_ = float(result.log_likelihood) / n
        else:
            self.lower_bound_ = float(finite[-1] / n)

    def fit_predict(self, X, y=None):
        """Fit, then return the most probable component of each training row."""
        return self.fit(X, y).predict(X)

    # ------------------------------------------------------------------ prediction
    def predict(self, X):
        """Most probable component of each row, shape (n_samples,)."""
        X = self._transform_input(X)
        return self.result_.predict(X)

    def predict_proba(self, X):
        """Posterior component probabilities, shape (n_samples, n_components).

        Bayesian methods average them over the (label-aligned) posterior draws.
        """
        X = self._transform_input(X)
        return self.result_.predict_proba(X)

    def score_samples(self, X):
        """Log (predictive) density of each row, shape (n_samples,).

        EM: the plug-in mixture density (as scikit-learn); Bayesian methods: the posterior
        predictive (see :meth:`bayesgmm.FitResult.score_samples`).
        """
        X = self._transform_input(X)
        return self.result_.score_samples(X)

    def score(self, X, y=None):
        """Mean log (predictive) density per row; higher is better (GridSearchCV's default score)."""
        return float(np.mean(self.score_samples(X)))

    def bic(self, X):
        """Bayesian information criterion at the point estimate; lower is better."""
        X = self._transform_input(X)
        return self.result_.bic(X)

    def aic(self, X):
        """Akaike information criterion at the point estimate; lower is better."""
        X = self._transform_input(X)
        return self.result_.aic(X)

    def sample(self, n_samples=1):
        """Draw ``n_samples`` observations from the fitted mixture.

        The randomness comes from ``random_state`` as at ``fit`` (an int gives the same
        draws at every call, as scikit-learn), folded so it differs from the fit's stream.

        Returns
        -------
        X : ndarray (n_samples, n_features)
        y : ndarray (n_samples,)
            Component of each draw.
        """
        self._check_fitted()
        if isinstance(n_samples, bool) or not isinstance(n_samples, (int, np.integer)) or n_samples < 1:
            raise ValueError(
                f"Invalid value for 'n_samples': {n_samples!r}. The sampling requires at least one sample."
            )
        import jax

        key = jax.random.fold_in(jax.random.key(seed_from_random_state(self.random_state)), 1)
        x, z = self.result_.sample(int(n_samples), seed=key)
        return np.asarray(x, dtype=np.float64), np.asarray(z, dtype=np.int64)

    def _transform_input(self, X):
        self._check_fitted()
        return self._validate_X(X, reset=False)
