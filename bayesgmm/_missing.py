"""Missing values (missing at random) in the EM iteration: the exact conditional E-step (JAX).

With a row's observed columns ``o`` and missing columns ``m``, the observed-data likelihood of
component ``k`` is the marginal Gaussian ``N(x_o | mu_o, Sigma_oo)``, and the E-step needs the
missing coordinates' conditional distribution given the observed ones (Ghahramani & Jordan 1994):

* ``E[x_m | x_o, k] = mu_m + Sigma_mo Sigma_oo^-1 (x_o - mu_o)``,
* ``Cov[x_m | x_o, k] = Sigma_mm - Sigma_mo Sigma_oo^-1 Sigma_om``,

so the M-step's expected statistics are ``sum_n r_nk x^_nk`` and ``sum_n r_nk (x^_nk x^_nk^T +
C_nk)`` with ``x^`` the row completed by its conditional mean and ``C`` the conditional
covariance (zero outside the missing block). Any missingness pattern runs in one compiled
program: with ``O = diag(o)``, the matrix ``S~ = O Sigma O + (I - O)`` is ``Sigma_oo`` on the
observed block and the identity on the missing one, so with the residual ``r = O (x - mu)``

* ``log N(x_o | mu_o, Sigma_oo) = log N(r | 0, S~) + |m|/2 log 2 pi``,
* ``x^ = mu + Sigma S~^-1 r`` (equal to ``x`` on ``o``),
* ``C = Sigma - (O Sigma)^T S~^-1 (O Sigma)``.

Diagonal and spherical covariances need none of this: the missing coordinates are independent
of the observed ones. The statistics returned are the centred ``(N_k, xbar_k, S_k)`` of
:mod:`bayesgmm._stats`, so every M-step (ML, MAP, mclust's constrained models) applies unchanged.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax.scipy.special import logsumexp

from . import _numerics
from ._stats import safe_counts
from .params import GMMParams

__all__ = ["conditional_components", "e_step_stats", "observed_log_density"]

LOG_2PI = math.log(2.0 * math.pi)


def _full(covariances, covariance_type: str, k: int):
    return jnp.broadcast_to(covariances, (k,) + covariances.shape[-2:]) if covariance_type == "tied" else covariances


def _variances(covariances, covariance_type: str, k: int, d: int):
    return jnp.broadcast_to(covariances[:, None], (k, d)) if covariance_type == "spherical" else covariances


class _Masked(NamedTuple):
    """The pieces every missing-value computation shares (see the module docstring)."""

    o: jax.Array  # (N, D) 1.0 where observed
    resid: jax.Array  # (N, K, D) O (x - mu_k)
    log_density: jax.Array  # (N, K) log N(x_o | mu_k,o, Sigma_k,oo)
    factor: jax.Array  # (N, K, D, D) Cholesky factors of S~ (full, tied), or (K, D) variances (diag, spherical)
    half: jax.Array | None  # (N, K, D) L^-1 r (full, tied)


def _masked(x, observed, params: GMMParams, covariance_type: str) -> _Masked:
    means = params.means
    k, d = means.shape
    o = observed.astype(x.dtype)
    resid = o[:, None, :] * (x[:, None, :] - means[None])  # (N, K, D), 0 where missing
    if covariance_type in ("diag", "spherical"):
        var = _variances(params.covariances, covariance_type, k, d)
        log_density = -0.5 * jnp.sum(o[:, None, :] * (resid**2 / var[None] + jnp.log(var)[None] + LOG_2PI), -1)
        return _Masked(o, resid, log_density, var, None)
    cov = _full(params.covariances, covariance_type, k)  # (K, D, D)
    eye = jnp.eye(d, dtype=x.dtype)
    masked = (o[:, :, None] * o[:, None, :])[:, None] * cov[None] + ((1.0 - o)[:, :, None] * eye)[:, None]
    chol = jnp.linalg.cholesky(masked)  # (N, K, D, D)
    half = jax.scipy.linalg.solve_triangular(chol, resid[..., None], lower=True)[..., 0]
    logdet = 2.0 * jnp.sum(jnp.log(jnp.diagonal(chol, axis1=-2, axis2=-1)), -1)  # missing block: log 1 = 0
    log_density = -0.5 * (jnp.sum(half**2, -1) + logdet + jnp.sum(o, -1)[:, None] * LOG_2PI)
    return _Masked(o, resid, log_density, chol, half)


#: Largest D whose factorisation is written out entry by entry: elementwise code over the (N, K)
#: batch, which XLA fuses, is several times faster on the CPU than batched LAPACK calls on tiny
#: matrices (D = 2: about 10x for the Cholesky factor). Larger D uses ``jnp.linalg``.
UNROLL_MAX = 4


def _unrolled(x, observed, params: GMMParams, covariance_type: str):
    """:func:`conditional_components` for full and tied covariances, entry by entry (D small).

    Every entry is an (N, K) array: ``S~``'s Cholesky factor ``L``, the forward solve ``L^-1 r``,
    the backward solve for the completed row and the forward solves of ``O Sigma``'s columns for
    the conditional covariance. Under ``jit`` the outputs not used are never computed."""
    means = params.means
    k, d = means.shape
    cov = _full(params.covariances, covariance_type, k)
    o = observed.astype(x.dtype)
    oc = [o[:, i : i + 1] for i in range(d)]  # (N, 1) each
    c = [[cov[None, :, i, j] for j in range(d)] for i in range(d)]  # (1, K) each

    def forward(lower, b):
        y = []
        for i in range(d):
            v = b[i]
            for j in range(i):
                v = v - lower[i][j] * y[j]
            y.append(v / lower[i][i])
        return y

    lower = [[None] * d for _ in range(d)]
    for j in range(d):
        v = oc[j] * oc[j] * c[j][j] + (1.0 - oc[j])
        for m in range(j):
            v = v - lower[j][m] ** 2
        lower[j][j] = jnp.sqrt(v)
        for i in range(j + 1, d):
            v = oc[i] * oc[j] * c[i][j]
            for m in range(j):
                v = v - lower[i][m] * lower[j][m]
            lower[i][j] = v / lower[j][j]
    resid = [oc[i] * (x[:, None, i] - means[None, :, i]) for i in range(d)]
    half = forward(lower, resid)
    logdet = 2.0 * sum(jnp.log(lower[i][i]) for i in range(d))
    log_density = -0.5 * (sum(h * h for h in half) + logdet + jnp.sum(o, -1, keepdims=True) * LOG_2PI)
    solved = [None] * d
    for i in reversed(range(d)):
        v = half[i]
        for j in range(i + 1, d):
            v = v - lower[j][i] * solved[j]
        solved[i] = v / lower[i][i]
    completed = jnp.stack([means[None, :, i] + sum(c[i][j] * solved[j] for j in range(d)) for i in range(d)], -1)
    columns = [forward(lower, [oc[i] * c[i][col] for i in range(d)]) for col in range(d)]  # L^-1 (O Sigma)
    conditional = jnp.stack([jnp.stack([c[i][m] - sum(columns[i][j] * columns[m][j] for j in range(d))
                                        for m in range(d)], -1) for i in range(d)], -2)
    return log_density, completed, conditional


def _written_out(covariance_type: str, num_features: int) -> bool:
    return covariance_type in ("full", "tied") and num_features <= UNROLL_MAX


def observed_log_density(x, observed, params: GMMParams, covariance_type: str):
    """``log N(x_o | mu_k,o, Sigma_k,oo)`` for every row and component, shape (N, K).

    ``x`` (N, D) holds any finite value at its missing entries; ``observed`` (N, D) bool is True
    where it is observed. One program for every missingness pattern (the module docstring).
    """
    if _written_out(covariance_type, params.means.shape[1]):
        return _unrolled(x, observed, params, covariance_type)[0]
    return _masked(x, observed, params, covariance_type).log_density


def conditional_components(x, observed, params: GMMParams, covariance_type: str):
    """Per row and component: observed-data log density, completed row and conditional covariance.

    Parameters
    ----------
    x : (N, D), any finite value at the missing entries
    observed : (N, D) bool, True where ``x`` is observed
    params : GMMParams (standardised), stored for ``covariance_type``

    Returns
    -------
    log_density : (N, K) ``log N(x_o | mu_k,o, Sigma_k,oo)``
    completed : (N, K, D) ``x`` with the missing entries replaced by their conditional means
    conditional : (N, K, D, D) conditional covariances (full and tied), or (N, K, D) variances
        (diag and spherical), zero on the observed coordinates
    """
    if _written_out(covariance_type, params.means.shape[1]):
        return _unrolled(x, observed, params, covariance_type)
    m = _masked(x, observed, params, covariance_type)
    means = params.means
    if covariance_type in ("diag", "spherical"):
        return m.log_density, means[None] + m.resid, (1.0 - m.o)[:, None, :] * m.factor[None]
    cov = _full(params.covariances, covariance_type, means.shape[0])
    solved = jax.scipy.linalg.solve_triangular(jnp.swapaxes(m.factor, -1, -2), m.half[..., None], lower=False)[..., 0]
    completed = means[None] + jnp.einsum("kij,nkj->nki", cov, solved)
    # L^-1 (O Sigma), after the solve above: two batches of N x K solves that XLA may otherwise run
    # at once, each waiting on XLA's thread pool for its pieces (_numerics.in_turn)
    b = jax.scipy.linalg.solve_triangular(m.factor, _numerics.in_turn(solved, m.o[:, None, :, None] * cov[None]),
                                          lower=True)
    conditional = cov[None] - jnp.einsum("nkji,nkjl->nkil", b, b)
    return m.log_density, completed, conditional


def e_step_stats(x, observed, sample_weight, params: GMMParams, covariance_type: str, *, active=None,
                 hard: bool = False, const_shift=None):
    """The observed-data E-step and the M-step's expected statistics: ``(per_row, stats)``.

    ``per_row`` (N,) is ``log sum_k pi_k N(x_o | k)`` (``max_k`` for ``hard``); ``stats`` the
    centred ``(N_k, xbar_k, S_k)`` of the completed data with the conditional covariances added
    (diag: per feature; spherical: summed over features). ``const_shift`` (K,) is added to every
    row's ``log pi_k + log N``: closed-form VB passes ``E_q[log pi_k + 1/2 log|Lambda_k|] - ...``
    with the components ``N(m_k, E_q[Lambda_k]^-1)``, whose conditional given ``x_o`` is then the
    optimal ``q(x_m | z = k)`` and whose observed-data density the optimal ``q(z)`` (the
    entropy of ``q(x_m)`` included).
    """
    log_density, completed, conditional = conditional_components(x, observed, params, covariance_type)
    logp = log_density + jnp.log(params.weights)[None]
    if const_shift is not None:
        logp = logp + const_shift[None]
    if active is not None:
        logp = jnp.where(active[None], logp, -jnp.inf)
    if hard:
        best = jnp.argmax(logp, axis=1)
        resp, per_row = jax.nn.one_hot(best, logp.shape[1], dtype=logp.dtype), jnp.max(logp, axis=1)
    else:
        per_row = logsumexp(logp, axis=1)
        resp = jnp.exp(logp - per_row[:, None])
    if sample_weight is not None:
        resp = resp * sample_weight[:, None]
    nk = safe_counts(jnp.sum(resp, 0))
    xbar = jnp.einsum("nk,nkd->kd", resp, completed) / nk[:, None]
    diff = completed - xbar[None]
    if covariance_type in ("full", "tied"):
        s = jnp.einsum("nk,nki,nkj->kij", resp, diff, diff) + jnp.einsum("nk,nkij->kij", resp, conditional)
    else:
        s = jnp.einsum("nk,nkd->kd", resp, diff**2 + conditional)
        if covariance_type == "spherical":
            s = jnp.sum(s, -1)
    return per_row, (nk, xbar, s)
