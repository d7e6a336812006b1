"""Pure JAX math shared by EM and VB: Gaussian log densities, responsibilities and sufficient statistics.

The hot path uses the exponential-family form of the Gaussian. Each observation is mapped once
per fit to features ``Z = [x_i x_j (i <= j) | x | 1]`` (full and tied), ``[x**2 | x | 1]`` (diag)
or ``[|x|**2 | x | 1]`` (spherical). Then, for all components at once,

* E-step: ``log pi_k + log N(x_n | mu_k, Sigma_k) = Z @ theta.T`` with ``theta`` the natural
  parameters (one row per component, the log weight folded into the constant column);
* M-step: ``R.T @ Z`` holds every sufficient statistic (``N_k``, ``sum r x``, ``sum r x x^T``).

Two skinny matrix products per iteration and no (N, K, D) temporary. Data should be centred and
scaled first (the callers standardise) so that the moment form does not cancel in float32.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.special import logsumexp

from .params import GMMParams

LOG_2PI = math.log(2.0 * math.pi)


# ----------------------------------------------------------------------------------------------
# Covariance structures
# ----------------------------------------------------------------------------------------------
def full_covariances(covariances, covariance_type: str, num_components: int, num_features: int):
    """Expand stored covariances to shape (K, D, D)."""
    if covariance_type == "full":
        return covariances
    if covariance_type == "tied":
        return jnp.broadcast_to(covariances, (num_components, num_features, num_features))
    if covariance_type == "diag":
        return jax.vmap(jnp.diag)(covariances)
    eye = jnp.eye(num_features, dtype=covariances.dtype)
    return covariances[:, None, None] * eye


def num_free_parameters(num_components: int, num_features: int, covariance_type: str) -> int:
    """Free parameters of a K-component mixture (for BIC/AIC), as scikit-learn counts them."""
    k, d = num_components, num_features
    cov = {"full": k * d * (d + 1) / 2, "diag": k * d, "spherical": k, "tied": d * (d + 1) / 2}[covariance_type]
    return int(cov + k * d + k - 1)


def component_log_density(x, means, covariances, covariance_type: str):
    """log N(x_n | mu_k, Sigma_k) for every observation and component, shape (N, K).

    Direct Cholesky form (no moment cancellation); used off the hot path and as a reference.
    """
    k, d = means.shape
    if covariance_type == "diag":
        var = covariances
        quad = jnp.sum(((x[:, None, :] - means[None]) ** 2) / var[None], axis=-1)
        return -0.5 * (quad + jnp.sum(jnp.log(var), -1)[None] + d * LOG_2PI)
    if covariance_type == "spherical":
        var = covariances
        quad = jnp.sum((x[:, None, :] - means[None]) ** 2, axis=-1) / var[None]
        return -0.5 * (quad + d * jnp.log(var)[None] + d * LOG_2PI)
    cov = full_covariances(covariances, covariance_type, k, d)
    chol = jnp.linalg.cholesky(cov)  # (K, D, D)
    diff = x[None, :, :] - means[:, None, :]  # (K, N, D)
    y = jax.scipy.linalg.solve_triangular(chol, jnp.swapaxes(diff, -1, -2), lower=True)  # (K, D, N)
    quad = jnp.sum(y**2, axis=-2)  # (K, N)
    logdet = 2.0 * jnp.sum(jnp.log(jnp.diagonal(chol, axis1=-2, axis2=-1)), -1)  # (K,)
    return (-0.5 * (quad + logdet[:, None] + d * LOG_2PI)).T


def mixture_log_density(x, params: GMMParams, covariance_type: str):
    """Per-observation marginal log density log sum_k pi_k N(x_n | mu_k, Sigma_k), shape (N,)."""
    logp = component_log_density(x, params.means, params.covariances, covariance_type)
    return logsumexp(logp + jnp.log(params.weights)[None], axis=-1)


def log_responsibilities(x, params: GMMParams, covariance_type: str):
    """log p(z_n = k | x_n), shape (N, K)."""
    logp = component_log_density(x, params.means, params.covariances, covariance_type) + jnp.log(params.weights)
    return logp - logsumexp(logp, axis=-1, keepdims=True)


# ----------------------------------------------------------------------------------------------
# Exponential-family features and natural parameters
# ----------------------------------------------------------------------------------------------
def _triu(d: int):
    return np.triu_indices(d)


def num_suff_features(num_features: int, covariance_type: str) -> int:
    d = num_features
    quad = {"full": d * (d + 1) // 2, "tied": d * (d + 1) // 2, "diag": d, "spherical": 1}[covariance_type]
    return quad + d + 1


def suff_features(x, covariance_type: str):
    """Map observations to exponential-family features Z, shape (N, p)."""
    n, d = x.shape
    if covariance_type in ("full", "tied"):
        i, j = _triu(d)
        quad = x[:, i] * x[:, j]
    elif covariance_type == "diag":
        quad = x * x
    else:
        quad = jnp.sum(x * x, axis=1, keepdims=True)
    return jnp.concatenate([quad, x, jnp.ones((n, 1), x.dtype)], axis=1)


def natural_params(params: GMMParams, covariance_type: str):
    """Rows theta_k with Z @ theta_k = log pi_k + log N(x | mu_k, Sigma_k); shape (K, p)."""
    w, mu, cov = params
    k, d = mu.shape
    if covariance_type in ("full", "tied"):
        cov_k = full_covariances(cov, covariance_type, k, d)
        chol = jnp.linalg.cholesky(cov_k)
        eye = jnp.broadcast_to(jnp.eye(d, dtype=mu.dtype), cov_k.shape)
        chol_inv = jax.scipy.linalg.solve_triangular(chol, eye, lower=True)  # L^{-1}
        prec = jnp.swapaxes(chol_inv, -1, -2) @ chol_inv  # Sigma^{-1}
        prec_mu = jnp.einsum("kij,kj->ki", prec, mu)
        i, j = _triu(d)
        mult = jnp.where(i == j, -0.5, -1.0).astype(mu.dtype)
        quad = prec[:, i, j] * mult
        half_logdet_prec = -jnp.sum(jnp.log(jnp.diagonal(chol, axis1=-2, axis2=-1)), -1)
        mu_prec_mu = jnp.sum(prec_mu * mu, -1)
    elif covariance_type == "diag":
        prec = 1.0 / cov
        prec_mu = prec * mu
        quad = -0.5 * prec
        half_logdet_prec = 0.5 * jnp.sum(jnp.log(prec), -1)
        mu_prec_mu = jnp.sum(prec_mu * mu, -1)
    else:
        prec = 1.0 / cov
        prec_mu = prec[:, None] * mu
        quad = -0.5 * prec[:, None]
        half_logdet_prec = 0.5 * d * jnp.log(prec)
        mu_prec_mu = jnp.sum(prec_mu * mu, -1)
    const = jnp.log(w) - 0.5 * mu_prec_mu + half_logdet_prec - 0.5 * d * LOG_2PI
    return jnp.concatenate([quad, prec_mu, const[:, None]], axis=1)


def e_step(z, theta, *, hard: bool = False):
    """Responsibilities and per-observation log-likelihood from features and natural parameters.

    Returns
    -------
    resp : (N, K) responsibilities (one-hot when ``hard``)
    log_lik : (N,) marginal log density (for ``hard``: the classification log-likelihood,
        max_k log pi_k N(x_n | k))
    """
    logp = z @ theta.T
    if hard:
        best = jnp.argmax(logp, axis=1)
        resp = jax.nn.one_hot(best, logp.shape[1], dtype=logp.dtype)
        return resp, jnp.max(logp, axis=1)
    ll = logsumexp(logp, axis=1)
    return jnp.exp(logp - ll[:, None]), ll


def suff_stats(resp, z, num_features: int, covariance_type: str):
    """All sufficient statistics in one product ``resp.T @ z``; returns ``(nk, sx, sxx)``."""
    return unpack_stats(resp.T @ z, num_features, covariance_type)


def unpack_stats(s, num_features: int, covariance_type: str):
    """``(nk, sx, sxx)`` from summed statistics ``s = resp.T @ Z`` of shape (K, p)."""
    d = num_features
    nq = num_suff_features(d, covariance_type) - d - 1
    quad, sx, nk = s[:, :nq], s[:, nq : nq + d], s[:, -1]
    if covariance_type in ("full", "tied"):
        i, j = _triu(d)
        k = s.shape[0]
        sxx = jnp.zeros((k, d, d), s.dtype).at[:, i, j].set(quad).at[:, j, i].set(quad)
    elif covariance_type == "diag":
        sxx = quad
    else:
        sxx = quad[:, 0]
    return nk, sx, sxx


def degenerate_components(params: GMMParams, counts, reg_covar: float, covariance_type: str, dtype) -> tuple:
    """Components holding less than one observation's worth, or whose smallest variance sits on
    the regularisation floor ``max(10 reg_covar, 100 eps)`` (standardised scale; NumPy, host side)."""
    _, m, c = (np.asarray(p, np.float64) for p in params)
    k, d = m.shape
    if covariance_type in ("full", "tied"):
        smallest = np.linalg.eigvalsh(np.broadcast_to(c, (k, d, d)))[..., 0]
    elif covariance_type == "diag":
        smallest = c.min(axis=1)
    else:
        smallest = c
    floor = max(10 * reg_covar, 100 * np.finfo(dtype).eps)
    return tuple(int(i) for i in np.flatnonzero((np.asarray(counts) < 1.0) | (smallest <= floor)))


def degenerate_message(components, counts, map_fit: bool) -> str:
    """The warning for :func:`degenerate_components`: which components, why, and what to do."""
    counts = np.asarray(counts)
    empty = [i for i in components if counts[i] < 1.0]
    collapsed = [i for i in components if counts[i] >= 1.0]
    parts = []
    if empty:
        parts.append(f"component(s) {empty} hold less than one observation (the data support fewer than K components)")
    if collapsed:
        parts.append(f"component(s) {collapsed} have a covariance collapsed onto the regularisation floor")
    fixes = "use fewer components" + ("" if map_fit else ", increase reg_covar, or fit MAP-EM with prior=bayesgmm.Prior.default(x, K)")
    return "EM " + "; ".join(parts) + f". If unintended, {fixes}."


def scatter(nk, sx, sxx, covariance_type: str):
    """Weighted means and centred scatter matrices S_k = sum r (x - xbar)(x - xbar)^T.

    Returns ``(nk_safe, xbar, scatter)`` with ``nk_safe = nk + 10 eps`` (as scikit-learn) so
    that an empty component stays finite.
    """
    eps = 10 * jnp.finfo(nk.dtype).eps
    nk_safe = nk + eps
    xbar = sx / nk_safe[:, None]
    if covariance_type in ("full", "tied"):
        s = sxx - nk_safe[:, None, None] * xbar[:, :, None] * xbar[:, None, :]
    elif covariance_type == "diag":
        s = sxx - nk_safe[:, None] * xbar**2
    else:
        s = sxx - nk_safe * jnp.sum(xbar**2, -1)
    return nk_safe, xbar, s


def mask_components(theta, active):
    """Natural parameters with inactive components switched off (log weight -inf).

    ``active`` is a (K,) boolean mask or None (every component active). Switched-off components
    get zero responsibility and contribute nothing to the log-likelihood, so one compiled
    program serves every K up to the array's K (model-selection grids run batched).
    """
    if active is None:
        return theta
    return theta.at[:, -1].set(jnp.where(active, theta[:, -1], -jnp.inf))


def symmetrise(a):
    """``(A + A^T) / 2`` over the last two axes: exactly symmetric in floating point.

    Outer products written as ``n * x[:, None] * x[None, :]`` round differently in (i, j) and
    (j, i); NumPyro's Wishart-family densities return -inf for a matrix that is not symmetric.
    """
    return 0.5 * (a + jnp.swapaxes(a, -1, -2))


def m_step(nk, sx, sxx, covariance_type: str, reg_covar, prior=None, active=None):
    """Maximum-likelihood (``prior=None``) or MAP M-step, in closed form.

    ``prior`` is a :class:`bayesgmm.params.PriorArrays`. The MAP covariance of the conjugate
    prior is ``(Psi0 + S_k + kappa0 N_k/(kappa0 + N_k) (xbar_k - m0)(...)^T) / (nu0 + N_k + D + 2)``
    (full; the other structures use their own denominators, see :class:`bayesgmm.Prior`).
    ``reg_covar`` is added to every variance afterwards, as scikit-learn does.
    ``active`` (K,) boolean, optional: inactive components get weight 0, mean 0 and unit
    covariance (finite placeholders that :func:`mask_components` switches off).
    """
    k, d = sx.shape
    nk_safe, xbar, s = scatter(nk, sx, sxx, covariance_type)
    n = jnp.sum(nk)
    if prior is None:
        weights = nk_safe / jnp.sum(nk_safe if active is None else nk_safe * active)
        means = xbar
        if covariance_type == "full":
            cov = s / nk_safe[:, None, None]
        elif covariance_type == "tied":
            cov = jnp.sum(s, 0) / jnp.sum(nk_safe)
        elif covariance_type == "diag":
            cov = s / nk_safe[:, None]
        else:
            cov = s / (nk_safe * d)
    else:
        alpha, m0, kappa0, nu0, psi = prior
        alpha = jnp.broadcast_to(alpha, (k,))
        if active is None:
            k_active, alpha_total = k, jnp.sum(alpha)
        else:
            k_active, alpha_total = jnp.sum(active), jnp.sum(jnp.where(active, alpha, 0.0))
        weights = (nk + alpha - 1.0) / (n + alpha_total - k_active)
        kappa_n = kappa0 + nk
        means = (sx + kappa0 * m0[None]) / kappa_n[:, None]
        dev = xbar - m0[None]
        shrink = kappa0 * nk / kappa_n
        if covariance_type in ("full", "tied"):
            b = s + shrink[:, None, None] * dev[:, :, None] * dev[:, None, :]
            if covariance_type == "full":
                cov = (psi[None] + b) / (nu0 + nk + d + 2.0)[:, None, None]
            else:
                if active is not None:
                    b = jnp.where(active[:, None, None], b, 0.0)
                cov = (psi + jnp.sum(b, 0)) / (nu0 + d + 1.0 + k_active + n)
        elif covariance_type == "diag":
            cov = (psi[None] + s + shrink[:, None] * dev**2) / (nu0 + nk + 3.0)[:, None]
        else:
            cov = (psi + s + shrink * jnp.sum(dev**2, -1)) / (nu0 + 2.0 + d + nk * d)
    if covariance_type in ("full", "tied"):
        cov = symmetrise(cov + reg_covar * jnp.eye(d, dtype=cov.dtype))
    else:
        cov = cov + reg_covar
    if active is not None:
        weights = jnp.where(active, weights, 0.0)
        means = jnp.where(active[:, None], means, 0.0)
        if covariance_type == "full":
            cov = jnp.where(active[:, None, None], cov, jnp.eye(d, dtype=cov.dtype))
        elif covariance_type in ("diag", "spherical"):
            cov = jnp.where(active.reshape((k,) + (1,) * (cov.ndim - 1)), cov, 1.0)
    return GMMParams(weights, means, cov)
