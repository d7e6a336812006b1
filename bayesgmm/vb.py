r"""Closed-form variational Bayes (coordinate ascent, CAVI) for the conjugate Gaussian mixture.

The model is :func:`bayesgmm.model.gmm_model` with the conjugate :class:`~bayesgmm.Prior`
(Bishop, *PRML* §10.2). The variational family is the usual mean-field

.. math::

    q(z, \pi, \mu, \Sigma) = \prod_n q(z_n)\; \mathrm{Dir}(\pi \mid \alpha)\;
        \prod_k \mathcal{N}(\mu_k \mid m_k, \Sigma_k / \beta_k)\, \mathcal{W}^{-1}(\Sigma_k \mid \nu_k, \Psi_k),

i.e. the precision :math:`\Lambda_k = \Sigma_k^{-1} \sim \mathcal{W}(\nu_k, W_k = \Psi_k^{-1})`, which
is PRML's parameterisation (PRML's ``W_k`` is our ``inv(Psi_k)``). For ``diag`` every coordinate
has its own Normal-InverseGamma factor: :math:`\sigma^2_{kj} \sim \mathrm{InvGamma}(\nu_k/2, \Psi_{kj}/2)`,
:math:`\mu_{kj} \mid \sigma^2_{kj} \sim \mathcal{N}(m_{kj}, \sigma^2_{kj}/\beta_k)` (the one-dimensional
case of the same formulas, applied per coordinate).

Updates (all from the shared sufficient statistics of :mod:`bayesgmm._stats`)::

    alpha_k = alpha0 + N_k          beta_k = kappa0 + N_k        nu_k = nu0 + N_k
    m_k     = (kappa0 m0 + N_k xbar_k) / beta_k
    Psi_k   = Psi0 + S_k + N_k reg_covar I + kappa0 N_k / beta_k (xbar_k - m0)(xbar_k - m0)^T

(``reg_covar`` enters exactly as in scikit-learn's ``BayesianGaussianMixture``; with
``reg_covar=0`` the updates are exact CAVI and the ELBO never decreases.)

The ELBO is complete: :math:`\mathbb{E}_q[\log p(x, z, \pi, \mu, \Sigma)] - \mathbb{E}_q[\log q]`,
no constant dropped, so it is a lower bound on the log marginal likelihood :math:`\log p(x)` and
comparable across K and with other evidence estimates. It is evaluated after each E-step, where
:math:`q(z)` is optimal for the current :math:`q(\pi, \mu, \Sigma)`, as

.. math::

    \mathcal{L} = \sum_n \log \sum_k \exp \mathbb{E}_q[\log \pi_k + \log \mathcal{N}(x_n \mid \mu_k, \Sigma_k)]
        - \mathrm{KL}(q(\pi)\,\|\,p(\pi)) - \sum_k \mathrm{KL}(q(\mu_k, \Sigma_k)\,\|\,p(\mu_k, \Sigma_k)).

Units: the data are standardised internally. The map ``x -> (x - shift)/sd`` with the prior and
the variational family transformed alongside is a bijection of both the model and ``q``; the
parameter-space Jacobians appear in ``log p`` and in ``log q`` alike and cancel, so the ELBO on the
original scale is the standardised ELBO plus the data log-Jacobian ``-N sum(log sd)`` only
(checked in the tests against the closed-form evidence on unstandardised data).

Structure as :mod:`bayesgmm.em`: pure :func:`vb_m_step` / :func:`vb_e_step`, a jitted
``lax.while_loop`` driver, ``vmap``-ped restarts, static shapes (a second fit on same-shaped data
reuses the compiled program).
"""

from __future__ import annotations

import math
import warnings
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.special import digamma, gammaln, multigammaln

from . import _sharding, _stats
from ._compile import CompiledProgram
from .kmeans import INIT_METHODS, initial_responsibilities
from .params import (
    ConvergenceWarning,
    DegenerateComponentWarning,
    GMMParams,
    Prior,
    check_covariance_type,
    check_data,
    check_nonnegative,
    check_num_components,
    check_positive_integers,
    check_sample_weight,
    log_jacobians,
    params_to_original,
    seed_to_key,
    standardisation,
)
from .results import FitResult, StudentTMixture

VB_COVARIANCE_TYPES = ("full", "diag")
LOG_2 = math.log(2.0)

# Incremented each time a VB program is traced; tests use it to prove "compile once per shape".
_TRACE_COUNT = {"fit": 0}


class VBParams(NamedTuple):
    """Parameters of the variational posterior q(pi, mu, Sigma) (one row per component).

    concentration : (K,) Dirichlet alpha_k
    mean_precision : (K,) beta_k (the posterior kappa)
    means : (K, D) m_k
    degrees_of_freedom : (K,) nu_k
    scale : Psi_k = inv(W_k), (K, D, D) for full, (K, D) for diag (inverse-gamma scale x 2)
    """

    concentration: jax.Array
    mean_precision: jax.Array
    means: jax.Array
    degrees_of_freedom: jax.Array
    scale: jax.Array


class VBState(NamedTuple):
    """Loop carry: ``q`` after ``n_iter`` M-steps; ``objective`` the total ELBO of the previous q
    (for the tolerance test); ``trace[t]`` the total ELBO of q after t M-steps."""

    q: VBParams
    objective: jax.Array
    n_iter: jax.Array
    converged: jax.Array
    trace: jax.Array


class VBConfig(NamedTuple):
    num_components: int
    covariance_type: str


# ----------------------------------------------------------------------------------------------
# Pure pieces
# ----------------------------------------------------------------------------------------------
def vb_m_step(nk, sx, sxx, prior, reg_covar, covariance_type: str) -> VBParams:
    """Conjugate update of q(pi, mu, Sigma) from sufficient statistics (PRML 10.58-10.63)."""
    alpha0, m0, kappa0, nu0, psi0 = prior
    nk, xbar, s = _stats.scatter(nk, sx, sxx, covariance_type)  # nk + 10 eps, as scikit-learn
    d = sx.shape[1]
    beta = kappa0 + nk
    means = (kappa0 * m0[None] + nk[:, None] * xbar) / beta[:, None]
    dev = xbar - m0[None]
    shrink = kappa0 * nk / beta
    if covariance_type == "full":
        eye = jnp.eye(d, dtype=sx.dtype)
        scale = _stats.symmetrise(
            psi0[None] + s + (nk * reg_covar)[:, None, None] * eye + shrink[:, None, None] * dev[:, :, None] * dev[:, None, :]
        )
    else:
        scale = psi0[None] + s + (nk * reg_covar)[:, None] + shrink[:, None] * dev**2
    return VBParams(alpha0 + nk, beta, means, nu0 + nk, scale)


def _precision_terms(q: VBParams, prior, covariance_type: str):
    """Per-component log|Psi_k|, tr(Psi0 Psi_k^-1), (m_k - m0)^T Psi_k^-1 (m_k - m0),
    E[log|Lambda_k|] + log|Psi_k| (= multivariate digamma + D log 2) and log Gamma_D(nu_k/2)."""
    _, m0, _, nu0, psi0 = prior
    nu = q.degrees_of_freedom
    k, d = q.means.shape
    dev = q.means - m0[None]
    if covariance_type == "full":
        chol = jnp.linalg.cholesky(q.scale)
        chol0 = jnp.linalg.cholesky(psi0)
        logdet = 2.0 * jnp.sum(jnp.log(jnp.diagonal(chol, axis1=-2, axis2=-1)), -1)
        logdet0 = 2.0 * jnp.sum(jnp.log(jnp.diagonal(chol0)))
        a = jax.scipy.linalg.solve_triangular(chol, jnp.broadcast_to(chol0, (k, d, d)), lower=True)
        trace = jnp.sum(a**2, axis=(-2, -1))
        y = jax.scipy.linalg.solve_triangular(chol, dev[:, :, None], lower=True)[..., 0]
        maha = jnp.sum(y**2, -1)
        half = jnp.arange(d, dtype=nu.dtype) / 2.0
        mvdigamma = jnp.sum(digamma(nu[:, None] / 2.0 - half[None]), -1) + d * LOG_2
        lgam = multigammaln(nu / 2.0, d)
        lgam0 = multigammaln(nu0 / 2.0, d)
    else:
        logdet = jnp.sum(jnp.log(q.scale), -1)
        logdet0 = jnp.sum(jnp.log(psi0))
        trace = jnp.sum(psi0[None] / q.scale, -1)
        maha = jnp.sum(dev**2 / q.scale, -1)
        mvdigamma = d * (digamma(nu / 2.0) + LOG_2)
        lgam = d * gammaln(nu / 2.0)
        lgam0 = d * gammaln(nu0 / 2.0)
    return logdet, logdet0, trace, maha, mvdigamma, lgam, lgam0


def kl_divergence(q: VBParams, prior, covariance_type: str):
    """KL(q(pi, mu, Sigma) || p(pi, mu, Sigma)), complete (no dropped constants)."""
    alpha0, _, kappa0, nu0, _ = prior
    alpha, beta, nu = q.concentration, q.mean_precision, q.degrees_of_freedom
    d = q.means.shape[1]
    a_sum = jnp.sum(alpha)
    kl_dir = (
        gammaln(a_sum) - jnp.sum(gammaln(alpha)) - gammaln(jnp.sum(alpha0)) + jnp.sum(gammaln(alpha0))
        + jnp.sum((alpha - alpha0) * (digamma(alpha) - digamma(a_sum)))
    )
    logdet, logdet0, trace, maha, mvdigamma, lgam, lgam0 = _precision_terms(q, prior, covariance_type)
    kl_mean = 0.5 * (d * kappa0 / beta - d + d * jnp.log(beta / kappa0) + kappa0 * nu * maha)
    e_logdet_prec = mvdigamma - logdet
    kl_prec = (
        0.5 * (nu - nu0) * e_logdet_prec - 0.5 * nu * d + 0.5 * nu * trace - 0.5 * (nu - nu0) * d * LOG_2
        + 0.5 * nu * logdet - 0.5 * nu0 * logdet0 - lgam + lgam0
    )
    return kl_dir + jnp.sum(kl_mean + kl_prec)


def expected_natural_params(q: VBParams, prior, covariance_type: str):
    """Rows theta_k with Z @ theta_k = E_q[log pi_k + log N(x | mu_k, Sigma_k)] (PRML 10.46)."""
    alpha, beta, m, nu, psi = q
    k, d = m.shape
    cov = psi / (nu[:, None, None] if covariance_type == "full" else nu[:, None])  # inv(E[Lambda_k])
    theta = _stats.natural_params(GMMParams(jnp.ones_like(alpha), m, cov), covariance_type)
    _, _, _, _, mvdigamma, _, _ = _precision_terms(q, prior, covariance_type)
    e_log_pi = digamma(alpha) - digamma(jnp.sum(alpha))
    adjust = e_log_pi + 0.5 * (mvdigamma - d * jnp.log(nu)) - 0.5 * d / beta
    return theta.at[:, -1].add(adjust)


def _weighted_sum(values, sample_weight):
    return jnp.sum(values) if sample_weight is None else values @ sample_weight


def vb_e_step(z, q: VBParams, prior, covariance_type: str, sample_weight=None):
    """Responsibilities (N, K) and the complete ELBO of q (with q(z) optimal).

    ``sample_weight`` (N,), optional: row weights (frequency weights; 0 for padding rows).
    """
    theta = expected_natural_params(q, prior, covariance_type)
    resp, ll = _stats.e_step(z, theta)
    return resp, _weighted_sum(ll, sample_weight) - kl_divergence(q, prior, covariance_type)


def m_step_from_resp(z, resp, prior, reg_covar, covariance_type: str, sample_weight=None) -> VBParams:
    d = prior.mean.shape[0]
    if sample_weight is not None:
        resp = resp * sample_weight[:, None]
    nk, sx, sxx = _stats.suff_stats(resp, z, d, covariance_type)
    return vb_m_step(nk, sx, sxx, prior, reg_covar, covariance_type)


def vb_init(q: VBParams, max_iter: int) -> VBState:
    dtype = q.means.dtype
    return VBState(q, jnp.asarray(-jnp.inf, dtype), jnp.int32(0), jnp.asarray(False), jnp.full((max_iter + 1,), jnp.nan, dtype))


class VBLoop(NamedTuple):
    """The ``while_loop`` carry: the CAVI state, whether the last E-step was the final one, and
    that E-step's total ELBO and expected counts (weighted) N_k."""

    state: VBState
    done: jax.Array
    elbo: jax.Array
    counts: jax.Array


def vb_step(loop: VBLoop, z, prior, tol, reg_covar, max_iter, config: VBConfig, sample_weight=None) -> VBLoop:
    """One CAVI sweep: q(z) given q(theta), recording the ELBO of q(theta); then, unless that was
    the last sweep (converged at the previous one, or ``max_iter`` M-steps made), q(theta) given q(z).

    The final E-step is thus the loop's own, not a second copy after it: the program holds one
    E-step, which is where most of its compile time goes.
    """
    state = loop.state
    resp, elbo = vb_e_step(z, state.q, prior, config.covariance_type, sample_weight)
    weighted = resp if sample_weight is None else resp * sample_weight[:, None]
    done = state.converged | (state.n_iter >= max_iter)
    trace = state.trace.at[state.n_iter].set(elbo)
    stepped = VBState(
        q=m_step_from_resp(z, resp, prior, reg_covar, config.covariance_type, sample_weight),
        objective=elbo,
        n_iter=state.n_iter + 1,
        converged=jnp.abs(elbo - state.objective) < tol,  # the total ELBO, as scikit-learn's BGM
        trace=trace,
    )
    kept = jax.tree_util.tree_map(lambda old, new: jnp.where(done, old, new), state._replace(trace=trace), stepped)
    return VBLoop(kept, done, elbo, jnp.sum(weighted, 0))


def _fit_restarts(xs, key, resp_given, prior, tol, reg_covar, sample_weight, *, config: VBConfig, init_method: str,
                  max_iter: int, num_restarts: int):
    """All restarts of one VB fit as a single compiled program; returns the best one and the key
    (as raw bits) from which the host draws from q.

    ``sample_weight`` (N,) or None: row weights (0 for the padding rows of a sharded fit).
    """
    _TRACE_COUNT["fit"] += 1
    init_key, draw_key = jax.random.split(key)
    keys = jax.random.split(init_key, num_restarts)
    z = _stats.suff_features(xs, config.covariance_type)
    ct = config.covariance_type
    k = config.num_components

    def run_one(key):
        if init_method == "given":
            resp0 = resp_given
        else:
            resp0 = initial_responsibilities(key, xs, k, init_method, sample_weight=sample_weight)
        q0 = m_step_from_resp(z, resp0, prior, reg_covar, ct, sample_weight)
        start = VBLoop(vb_init(q0, max_iter), jnp.asarray(False), jnp.asarray(-jnp.inf, xs.dtype), jnp.zeros(k, xs.dtype))
        loop = jax.lax.while_loop(
            lambda c: ~c.done,
            lambda c: vb_step(c, z, prior, tol, reg_covar, max_iter, config, sample_weight),
            start,
        )
        return loop.state, loop.elbo, loop.counts

    state, finals, nks = jax.vmap(run_one)(keys)
    best = jnp.argmax(jnp.where(jnp.isfinite(finals), finals, -jnp.inf))
    state_best, nk_best = jax.tree_util.tree_map(lambda a: a[best], (state, nks))
    point, has_mean = point_estimate(state_best.q, ct)
    log_lik = _weighted_sum(_stats.e_step(z, _stats.natural_params(point, ct))[1], sample_weight)
    return {"state": state_best, "finals": finals, "nk": nk_best, "best": best, "point": point,
            "has_mean": has_mean, "log_lik": log_lik, "draw_key": jax.random.key_data(draw_key)}


#: The VB program, compiled ahead of time once per shapes and static settings.
PROGRAM = CompiledProgram(
    _fit_restarts, static_argnames=("config", "init_method", "max_iter", "num_restarts")
)


def point_estimate(q: VBParams, covariance_type: str):
    """Posterior means E[pi], m_k and E[Sigma_k] = Psi_k / (nu_k - D - 1) (diag: / (nu_k - 2)) where
    that mean exists, else Psi_k / nu_k (= E[Sigma_k^-1]^-1); returns (GMMParams, has_mean (K,))."""
    alpha, _, m, nu, psi = q
    d = m.shape[1]
    extra = d + 1.0 if covariance_type == "full" else 2.0
    has_mean = nu > extra
    denom = jnp.where(has_mean, nu - extra, nu)
    cov = psi / (denom[:, None, None] if covariance_type == "full" else denom[:, None])
    return GMMParams(alpha / jnp.sum(alpha), m, cov), has_mean


def sample_q(rng: np.random.Generator, q: VBParams, covariance_type: str, num_draws: int):
    """``num_draws`` joint draws of (pi, mu, Sigma) from q (standardised scale; NumPy, host side).

    Drawn on the host rather than in the compiled program: XLA's gamma rejection sampler alone
    took about 2 s to compile, more than the whole CAVI loop, for a millisecond of work.
    Weights are normalised gammas drawn in log space (``log G(a) = log G(a + 1) + log(U) / a``)
    so that tiny concentrations do not underflow. Full covariances use Bartlett's decomposition:
    Sigma = U A^-T A^-1 U^T with Psi = U U^T, A lower triangular, A_ii^2 ~ chi2(nu - i),
    A_ij ~ N(0, 1) below the diagonal; diagonal ones are inverse gammas.
    """
    alpha, beta, m, nu, psi = (np.asarray(a, np.float64) for a in q)
    k, d = m.shape
    s = num_draws
    log_g = np.log(rng.gamma(alpha + 1.0, size=(s, k))) + np.log(rng.uniform(size=(s, k))) / alpha
    log_g -= log_g.max(axis=1, keepdims=True)
    weights = np.exp(log_g)
    weights /= weights.sum(axis=1, keepdims=True)
    eps = rng.standard_normal((s, k, d))
    if covariance_type == "full":
        chi2 = 2.0 * rng.gamma((nu[:, None] - np.arange(d)[None]) / 2.0, size=(s, k, d))
        a = np.tril(rng.standard_normal((s, k, d, d)), -1) + np.sqrt(chi2)[..., None] * np.eye(d)
        factor = np.linalg.cholesky(psi)[None] @ np.swapaxes(np.linalg.inv(a), -1, -2)  # Sigma = F F^T
        cov = factor @ np.swapaxes(factor, -1, -2)
        means = m[None] + np.einsum("skij,skj->ski", factor, eps) / np.sqrt(beta)[None, :, None]
    else:
        cov = (psi[None] / 2.0) / rng.gamma(np.broadcast_to((nu / 2.0)[:, None], (k, d)), size=(s, k, d))
        means = m[None] + np.sqrt(cov / beta[None, :, None]) * eps
    return weights, means, cov


# ----------------------------------------------------------------------------------------------
# Public entry point
# ----------------------------------------------------------------------------------------------
def fit_vb(
    x,
    num_components: int,
    *,
    covariance_type: str = "full",
    prior: Prior | None = None,
    n_init: int = 1,
    init_params: str = "kmeans",
    tol: float = 1e-3,
    max_iter: int = 100,
    reg_covar: float = 1e-6,
    sample_weight=None,
    devices=None,
    seed=0,
    num_draws: int = 500,
) -> FitResult:
    r"""Fit a Bayesian Gaussian mixture by closed-form coordinate-ascent variational Bayes.

    Parameters
    ----------
    x : array-like (N, D) or (N,)
        Data; a 1-D array is one feature. DataFrame column names become feature names.
    num_components : int
        K, the (maximum) number of components. With a sparse Dirichlet
        (``Prior.default(x, K, weight_concentration=1e-3)``) superfluous components empty out.
    covariance_type : {"full", "diag"}
        ``"spherical"`` and ``"tied"`` are not supported by VB (ValueError); use
        :func:`bayesgmm.fit_em` (MAP with a prior) or the NumPyro engines for them.
    prior : Prior, optional
        Conjugate prior; default ``Prior.default(x, K)``. Any ``weight_concentration > 0``.
    n_init : int
        Restarts, run together as one vmapped program; the one with the highest final ELBO is kept.
    init_params : {"kmeans", "k-means++", "random", "random_from_data"}
        Starting responsibilities (scikit-learn's meanings); the first update of q is the
        conjugate update from them (scikit-learn's ``_initialize``).
    tol : float
        Stop when the total ELBO changes by less than ``tol`` in a sweep (as scikit-learn's
        ``BayesianGaussianMixture``, whose lower bound is a total; EM's ``tol``, like
        ``GaussianMixture``'s, is per observation). A per-observation test stops sparse-prior
        fits on the slow plateau before superfluous components have emptied.
    max_iter : int
        Maximum CAVI sweeps per restart (static: changing it recompiles).
    reg_covar : float
        ``N_k * reg_covar`` is added to the diagonal of each ``Psi_k`` (scikit-learn's
        convention), in units of each feature's variance. 0 gives exact CAVI.
    sample_weight : array (N,), optional
        Non-negative row weights (frequency weights): row ``n`` counts ``sample_weight[n]``
        times in every sufficient statistic and in the ELBO.
    devices : None, "all", int, list of jax.Device or jax.sharding.Mesh
        Shard the rows over these devices (data parallelism, as :func:`bayesgmm.fit_em`); the
        result equals the single-device fit up to floating-point reduction order.
    seed : int or jax key
        Same seed, same result (including the draws), bit for bit.
    num_draws : int
        Draws S from q stored in ``draws`` (shape (1, S, ...)).

    Returns
    -------
    FitResult
        ``method="vb"``, ``objective="elbo"``; ``trace`` is the complete ELBO of q after each
        sweep (original scale), ``trace[0]`` that of the q initialised from the starting
        responsibilities. Point estimate: ``weights = E[pi]``, ``means = m_k`` (= E[mu_k]),
        ``covariances = E[Sigma_k] = Psi_k / (nu_k - D - 1)`` (diag: ``Psi_k / (nu_k - 2)``)
        when that mean exists, else ``Psi_k / nu_k = E[Sigma_k^{-1}]^{-1}`` (listed in
        ``info["covariance_estimate"]``). ``log_likelihood`` is the training log-likelihood
        at that point. ``predictive`` is the exact posterior predictive, a Student-t mixture
        (PRML 10.81) for ``full``; for ``diag`` the exact predictive is a product of univariate
        t's per coordinate, which ``StudentTMixture`` cannot express, so ``predictive=None``
        and ``score_samples`` averages the Gaussian mixture density over ``draws``. ``info`` holds
        ``elbo``, ``effective_components`` (components with ``E[pi_k] >= max(1%, 1/N)``, the
        same rule as :attr:`FitResult.effective_components`), ``empty_components`` (expected
        count ``N_k = alpha_k - alpha0_k < 1``) and the variational parameters ``alpha``,
        ``beta``, ``m``, ``nu``, ``psi`` (original scale; ``W_k = inv(psi_k)``).

    Warns
    -----
    ConvergenceWarning
        ``max_iter`` reached before the tolerance.
    DegenerateComponentWarning
        A covariance point estimate collapsed onto the regularisation floor. Components that
        merely empty out are the intended behaviour of VB and are not warned about.

    Raises
    ------
    ValueError
        Invalid input or an unsupported ``covariance_type``.
    """
    return _fit_vb(
        x, num_components, covariance_type=covariance_type, prior=prior, n_init=n_init,
        init_params=init_params, tol=tol, max_iter=max_iter, reg_covar=reg_covar, seed=seed,
        num_draws=num_draws, resp_init=None, sample_weight=sample_weight, devices=devices,
    )


def _fit_vb_from_resp(x, resp, **kwargs) -> FitResult:
    """VB started from given responsibilities (N, K) (scikit-learn's ``_initialize(X, resp)``).

    Private: used by the scikit-learn oracle tests. ``kwargs`` as :func:`fit_vb`.
    """
    resp = np.asarray(resp, dtype=np.float64)
    if resp.ndim != 2 or np.any(resp < 0) or not np.allclose(resp.sum(1), 1.0):
        raise ValueError("resp must be an (N, K) array of non-negative rows summing to 1.")
    return _fit_vb(x, resp.shape[1], resp_init=resp, **kwargs)


def _check_inputs(covariance_type, init_params, n_init, max_iter, tol, reg_covar, num_draws):
    check_covariance_type(covariance_type)
    if covariance_type not in VB_COVARIANCE_TYPES:
        raise ValueError(
            f"covariance_type={covariance_type!r} is not supported by fit_vb (closed-form VB "
            f"covers {VB_COVARIANCE_TYPES}). Use covariance_type='diag' or 'full', or fit a "
            f"{covariance_type!r} model with fit_em(..., prior=Prior.default(x, K)) or the NumPyro engines."
        )
    if init_params not in INIT_METHODS:
        raise ValueError(f"init_params must be one of {INIT_METHODS}, got {init_params!r}.")
    check_positive_integers(n_init=n_init, max_iter=max_iter, num_draws=num_draws)
    check_nonnegative(tol=tol, reg_covar=reg_covar)


def _fit_vb(x, num_components, *, covariance_type, prior, n_init, init_params, tol, max_iter, reg_covar, seed, num_draws,
            resp_init, sample_weight=None, devices=None):
    arr, names = check_data(x)
    n, d = arr.shape
    k = check_num_components(num_components, n)
    _check_inputs(covariance_type, init_params, n_init, max_iter, tol, reg_covar, num_draws)
    if prior is None:
        prior = Prior.default(arr, k)
    elif not isinstance(prior, Prior):
        raise ValueError("prior must be a bayesgmm.Prior (e.g. Prior.default(x, K)) or None.")
    if prior.num_features != d:
        raise ValueError(f"prior is for {prior.num_features} feature(s) but x has {d}; build it from this x.")
    prior.concentration(k)  # validates a vector concentration against K
    if resp_init is not None and resp_init.shape != (n, k):
        raise ValueError(f"resp must have shape ({n}, {k}), got {resp_init.shape}.")
    rows = _sharding.resolve(devices, n)
    if resp_init is not None and rows.mesh is not None:
        raise ValueError("starting responsibilities cannot be combined with devices=; shard without them.")

    weight = check_sample_weight(sample_weight, n)
    dtype = jax.dtypes.canonicalize_dtype(arr.dtype)  # float32 unless jax_enable_x64 and float64 input
    shift, sd = standardisation(arr.astype(np.float64), covariance_type, weight)
    xs = ((arr - shift) / sd).astype(dtype)
    prior_std = prior.standardised(shift, sd)
    prior_arrays = prior_std.arrays(k, covariance_type, dtype=dtype)  # NumPy; jit transfers it
    key = seed_to_key(seed)
    config = VBConfig(k, covariance_type)
    given = resp_init is not None
    resp_given = np.asarray(resp_init if given else np.zeros((1, k)), dtype)

    xs, weight_dev = _sharding.shard_rows(rows, xs, None if weight is None else weight.astype(xs.dtype))
    timed = PROGRAM(
        xs, key, resp_given, prior_arrays, np.asarray(tol, dtype), np.asarray(reg_covar, dtype), weight_dev,
        config=config, init_method="given" if given else init_params, max_iter=int(max_iter),
        num_restarts=1 if given else int(n_init),
    )
    out = jax.device_get(timed.outputs)  # one transfer; everything below is NumPy
    finals = np.asarray(out["finals"], dtype=np.float64)
    if not np.isfinite(finals).any():
        raise ValueError(
            "VB failed: the ELBO is not finite in any restart (a variational scale matrix became "
            "singular). Increase reg_covar or the prior scale, or use fewer components."
        )
    best = int(out["best"])
    st = out["state"]
    q = VBParams(*(np.asarray(p, np.float64) for p in st.q))
    n_iter = int(st.n_iter)
    converged = bool(st.converged)
    ll_shift, _ = log_jacobians(sd, n if weight is None else float(weight.sum()), k, covariance_type)
    trace = np.asarray(st.trace, np.float64)[: n_iter + 1] + ll_shift
    elbo = float(finals[best] + ll_shift)

    # ---- point estimate (computed in the compiled program), original scale
    alpha, beta, m, nu, psi = q
    params_std = GMMParams(*(np.asarray(p, np.float64) for p in out["point"]))
    cov_std = params_std.covariances
    has_mean = np.asarray(out["has_mean"])
    log_lik = float(out["log_lik"]) + ll_shift
    draw_rng = np.random.default_rng(np.asarray(out["draw_key"]).ravel().tolist())
    w_d, m_d, c_d = sample_q(draw_rng, st.q, covariance_type, int(num_draws))
    params = params_to_original(params_std, shift, sd, covariance_type)
    psi_orig = params_to_original(GMMParams(alpha, m, psi), shift, sd, covariance_type).covariances

    draws_orig = params_to_original(GMMParams(*(np.asarray(a, np.float64) for a in (w_d, m_d, c_d))), shift, sd, covariance_type)
    draws = {"weights": draws_orig.weights[None], "means": draws_orig.means[None], "covariances": draws_orig.covariances[None]}

    predictive = None
    if covariance_type == "full":
        df = nu + 1.0 - d
        t_scale = psi_orig * ((1.0 + beta) / (beta * df))[:, None, None]
        predictive = StudentTMixture(alpha / alpha.sum(), params.means, t_scale, df)

    # ---- diagnostics
    alpha0 = prior.concentration(k)
    n_expected = np.asarray(out["nk"], np.float64)
    thresh = max(0.01, 1.0 / n)
    effective = int(np.sum(params.weights >= thresh))
    empty = tuple(int(i) for i in np.flatnonzero(n_expected < 1.0))
    if covariance_type == "full":
        min_eig = np.linalg.eigvalsh(cov_std)[:, 0]
    else:
        min_eig = cov_std.min(axis=1)
    floor = max(10 * reg_covar, 100 * np.finfo(np.dtype(dtype)).eps)
    degenerate = tuple(int(i) for i in np.flatnonzero(min_eig <= floor))
    if degenerate:
        warnings.warn(
            f"VB component(s) {list(degenerate)} have a covariance collapsed onto the regularisation "
            "floor. Increase reg_covar or the prior scale (Prior(..., scale=...)), or use fewer components.",
            DegenerateComponentWarning,
            stacklevel=3,
        )
    if not converged:
        warnings.warn(
            f"VB did not converge in max_iter={max_iter} iterations (tol={tol}); increase max_iter or tol.",
            ConvergenceWarning,
            stacklevel=3,
        )
    return FitResult(
        method="vb",
        covariance_type=covariance_type,
        weights=params.weights,
        means=params.means,
        covariances=params.covariances,
        log_likelihood=log_lik,
        converged=converged,
        n_iter=n_iter,
        trace=trace,
        objective="elbo",
        feature_names=names,
        num_obs=n,
        degenerate_components=degenerate,
        prior=prior,
        draws=draws,
        raw_draws=dict(draws),
        predictive=predictive,
        info={
            "elbo": elbo,
            "effective_components": effective,
            "empty_components": list(empty),
            "expected_counts": n_expected.tolist(),
            "alpha": alpha.tolist(),
            "beta": beta.tolist(),
            "m": params.means.tolist(),
            "nu": nu.tolist(),
            "psi": psi_orig.tolist(),
            "alpha0": alpha0.tolist(),
            "covariance_estimate": ["posterior_mean" if h else "inverse_expected_precision" for h in has_mean],
            "seed": seed if isinstance(seed, (int, np.integer)) else None,
            "n_init": int(n_init),
            "init_params": "given" if given else init_params,
            "best_restart": best,
            "restart_elbos": (finals + ll_shift).tolist(),
            "tol": float(tol),
            "reg_covar": float(reg_covar),
            "num_draws": int(num_draws),
            "compile_seconds": timed.compile_seconds,
            "run_seconds": timed.run_seconds,
            "fit_seconds": timed.compile_seconds + timed.run_seconds,
            "num_devices": rows.num_devices,
            "dtype": str(dtype),
        },
    )
