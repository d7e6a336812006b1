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
import functools
import json
from typing import Any, Mapping, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.special import gammaln, logsumexp

from ._stats import component_log_density, full_covariances, num_free_parameters
from .params import GMMParams, Prior, check_data


class StudentTMixture(NamedTuple):
    """A mixture of multivariate Student-t densities (the VB posterior predictive, PRML 10.81).

    weights (K,), loc (K, D), scale (K, D, D) shape matrices, df (K,) degrees of freedom.
    """

    weights: Any
    loc: Any
    scale: Any
    df: Any


def _student_t_log_density(x, mix: StudentTMixture):
    w, loc, scale, df = mix
    d = loc.shape[1]
    chol = jnp.linalg.cholesky(scale)
    diff = x[None] - loc[:, None]  # (K, N, D)
    y = jax.scipy.linalg.solve_triangular(chol, jnp.swapaxes(diff, -1, -2), lower=True)
    maha = jnp.sum(y**2, -2)  # (K, N)
    logdet = 2 * jnp.sum(jnp.log(jnp.diagonal(chol, axis1=-2, axis2=-1)), -1)
    dfk = df[:, None]
    logp = (
        gammaln((dfk + d) / 2)
        - gammaln(dfk / 2)
        - 0.5 * d * jnp.log(dfk * jnp.pi)
        - 0.5 * logdet[:, None]
        - 0.5 * (dfk + d) * jnp.log1p(maha / dfk)
    )
    return logsumexp(logp.T + jnp.log(w)[None], axis=1)


@functools.partial(jax.jit, static_argnames=("covariance_type",))
def _log_joint_components(x, weights, means, covariances, covariance_type):
    return component_log_density(x, means, covariances, covariance_type) + jnp.log(weights)[None]


@functools.partial(jax.jit, static_argnames=("covariance_type",))
def _draws_log_density_and_resp(x, weights, means, covariances, covariance_type):
    """Posterior predictive log density and responsibilities averaged over draws (S leading)."""

    def one(w, m, c):
        lj = component_log_density(x, m, c, covariance_type) + jnp.log(w)[None]
        ll = logsumexp(lj, axis=1)
        return ll, jnp.exp(lj - ll[:, None])

    ll, resp = jax.lax.map(lambda a: one(*a), (weights, means, covariances))
    s = weights.shape[0]
    return logsumexp(ll, axis=0) - jnp.log(s), jnp.mean(resp, axis=0)


_student_t_jit = jax.jit(_student_t_log_density)


@dataclasses.dataclass(frozen=True, eq=False)
class FitResult:
    """A fitted Gaussian mixture, the same shape for every engine.

    Attributes
    ----------
    method : str
        ``"em"``, ``"map-em"``, ``"hard-em"``, ``"vb"``, ``"svi"`` or ``"mcmc"``.
    covariance_type : str
    weights, means, covariances : np.ndarray
        Point estimate on the original scale: MLE/MAP (EM), posterior mean after label alignment
        (VB, SVI, MCMC). Shapes as scikit-learn stores them.
    log_likelihood : float
        Total log-likelihood of the training data at the point estimate (z summed out).
    converged : bool
    n_iter : int
    trace : np.ndarray
        The objective per iteration (see ``objective``), on the original data scale.
    objective : str
        What ``trace`` holds: ``"log_likelihood"``, ``"log_posterior"``,
        ``"classification_log_likelihood"`` or ``"elbo"``.
    feature_names : tuple of str
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
    predictive : StudentTMixture or None
        Closed-form posterior predictive (VB); otherwise the predictive averages over ``draws``.
    info : mapping
        Engine-specific scalars (ELBO, divergences, compile time, seed, ...).
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

    # ------------------------------------------------------------------ basic facts
    @property
    def num_components(self) -> int:
        return self.means.shape[0]

    @property
    def num_features(self) -> int:
        return self.means.shape[1]

    @property
    def params(self) -> GMMParams:
        return GMMParams(self.weights, self.means, self.covariances)

    @property
    def full_covariances(self) -> np.ndarray:
        """Covariances as (K, D, D) whatever the structure."""
        return np.asarray(
            full_covariances(jnp.asarray(self.covariances), self.covariance_type, self.num_components, self.num_features)
        )

    @property
    def num_parameters(self) -> int:
        return num_free_parameters(self.num_components, self.num_features, self.covariance_type)

    @property
    def effective_components(self) -> int:
        """Components holding at least 1% of the weight (or at least one observation's worth)."""
        thresh = max(0.01, 1.0 / max(self.num_obs, 1))
        return int(np.sum(self.weights >= thresh))

    def _origin(self) -> np.ndarray:
        """The mixture mean, float64: data and means are centred on it on the host before the
        device sees them, so that data far from zero (an offset of 1e8 in float32) lose nothing."""
        return np.asarray(self.weights, np.float64) @ np.asarray(self.means, np.float64)

    def _check(self, x):
        """Validated data (columns matched by name for DataFrames), centred on :meth:`_origin`."""
        arr, _ = check_data(x, num_features=self.num_features, allow_constant=True, feature_names=self.feature_names)
        return jnp.asarray((arr.astype(np.float64) - self._origin()).astype(arr.dtype))

    def _centred_params(self, dtype):
        w, m, c = self.params
        return tuple(jnp.asarray(a, dtype) for a in (w, np.asarray(m, np.float64) - self._origin(), c))

    def _has_draws(self) -> bool:
        return self.draws is not None

    def _flat_draws(self, dtype, max_draws: int = 200):
        """Up to ``max_draws`` evenly spaced draws, flattened over chains, means centred."""
        w, m, c = (np.asarray(self.draws[k]) for k in ("weights", "means", "covariances"))
        lead = w.shape[0] * w.shape[1]
        w, m, c = w.reshape(lead, *w.shape[2:]), m.reshape(lead, *m.shape[2:]), c.reshape(lead, *c.shape[2:])
        step = max(1, lead // max_draws)
        m = np.asarray(m[::step], np.float64) - self._origin()
        return tuple(jnp.asarray(a, dtype) for a in (w[::step], m, c[::step]))

    # ------------------------------------------------------------------ prediction
    def predict_proba(self, x) -> np.ndarray:
        """Posterior probability of each component for each row of ``x``, shape (N, K), float64.

        Bayesian results average the responsibilities over (label-aligned) posterior draws, so
        the probabilities carry parameter uncertainty.
        """
        xj = self._check(x)
        if self._has_draws():
            proba = _draws_log_density_and_resp(xj, *self._flat_draws(xj.dtype), self.covariance_type)[1]
        else:
            proba = jax.nn.softmax(_log_joint_components(xj, *self._centred_params(xj.dtype), self.covariance_type), axis=1)
        return np.asarray(proba, np.float64)

    def predict(self, x) -> np.ndarray:
        """Most probable component of each row of ``x``, shape (N,)."""
        return np.argmax(self.predict_proba(x), axis=1)

    def score_samples(self, x) -> np.ndarray:
        """Log predictive density of each row of ``x``, shape (N,), float64.

        EM: the plug-in mixture density. VB: the closed-form Student-t mixture. SVI / MCMC: the
        posterior predictive, log of the density averaged over draws.
        """
        xj = self._check(x)
        if self.predictive is not None:
            w, m, scale, df = self.predictive
            mix = StudentTMixture(*(jnp.asarray(a, xj.dtype) for a in (w, np.asarray(m, np.float64) - self._origin(), scale, df)))
            return np.asarray(_student_t_jit(xj, mix), np.float64)
        if self._has_draws():
            return np.asarray(_draws_log_density_and_resp(xj, *self._flat_draws(xj.dtype), self.covariance_type)[0], np.float64)
        return self.log_likelihood_samples(x)

    def log_likelihood_samples(self, x) -> np.ndarray:
        """Per-observation log-likelihood at the point estimate (plug-in), shape (N,), float64."""
        xj = self._check(x)
        lj = _log_joint_components(xj, *self._centred_params(xj.dtype), self.covariance_type)
        return np.asarray(logsumexp(lj, axis=1), np.float64)

    def score(self, x) -> float:
        """Mean log predictive density per observation (scikit-learn's ``score``)."""
        return float(np.mean(self.score_samples(x)))

    def bic(self, x) -> float:
        """Bayesian information criterion at the point estimate; lower is better."""
        ll = self.log_likelihood_samples(x)
        return float(-2 * np.sum(ll) + self.num_parameters * np.log(ll.shape[0]))

    def aic(self, x) -> float:
        """Akaike information criterion at the point estimate; lower is better."""
        return float(-2 * np.sum(self.log_likelihood_samples(x)) + 2 * self.num_parameters)

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
        from .model import simulate
        from .params import check_positive_integers, seed_to_key

        check_positive_integers(n=n)
        key = seed_to_key(seed)
        origin = self._origin()
        dtype = jax.dtypes.canonicalize_dtype(np.float64)
        params = GMMParams(*self._centred_params(dtype))
        x, z = simulate(key, params, int(n), self.covariance_type)
        return np.asarray(x, np.float64) + origin, np.asarray(z, np.int64)

    # ------------------------------------------------------------------ conversion
    def to_inference_data(self, x=None, **kwargs):
        """ArviZ ``InferenceData`` of this fit (see :func:`bayesgmm.diagnostics.to_inference_data`)."""
        from .diagnostics import to_inference_data

        return to_inference_data(self, x, **kwargs)

    def summary(self) -> dict:
        """Point estimate and fit facts as plain JSON-serialisable Python objects."""
        return {
            "method": self.method,
            "covariance_type": self.covariance_type,
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
            "info": {k: _jsonable(v) for k, v in self.info.items()},
        }

    def to_json(self, path=None) -> str:
        """JSON text of :meth:`summary`; also written to ``path`` when given."""
        text = json.dumps(self.summary(), indent=2)
        if path is not None:
            with open(path, "w") as f:
                f.write(text)
        return text

    @classmethod
    def from_json(cls, source) -> "FitResult":
        """Rebuild a point-estimate result from :meth:`to_json` text or a path to it."""
        text = source
        if not str(source).lstrip().startswith("{"):
            with open(source) as f:
                text = f.read()
        d = json.loads(text)
        prior = None if d["prior"] is None else Prior(**d["prior"])
        return cls(
            method=d["method"],
            covariance_type=d["covariance_type"],
            weights=np.asarray(d["weights"], float),
            means=np.asarray(d["means"], float),
            covariances=np.asarray(d["covariances"], float),
            log_likelihood=float(d["log_likelihood"]),
            converged=bool(d["converged"]),
            n_iter=int(d["n_iter"]),
            trace=np.asarray(d["trace"], float),
            objective=d["objective"],
            feature_names=tuple(d["feature_names"]),
            num_obs=int(d["num_obs"]),
            degenerate_components=tuple(d["degenerate_components"]),
            prior=prior,
            info=d.get("info", {}),
        )

    def __repr__(self) -> str:
        return (
            f"FitResult(method={self.method!r}, covariance_type={self.covariance_type!r}, "
            f"K={self.num_components}, D={self.num_features}, log_likelihood={self.log_likelihood:.6g}, "
            f"converged={self.converged}, n_iter={self.n_iter})"
        )


def _jsonable(v):
    if isinstance(v, np.ndarray):
        return v.tolist()
    if isinstance(v, (np.floating, np.integer, np.bool_)):
        return v.item()
    if isinstance(v, (list, tuple)):
        return [_jsonable(a) for a in v]
    if isinstance(v, dict):
        return {k: _jsonable(a) for k, a in v.items()}
    return v
