"""The E-step and the sufficient statistics of the M-step, compiled with JAX: shared by EM, VB and
streaming EM.

Two forms of the same computation:

* **fast** (the exponential-family form). Each observation is mapped once per fit to features
  ``Z = [x_i x_j (i <= j) | x | 1]`` (full and tied), ``[x**2 | x | 1]`` (diag) or
  ``[|x|**2 | x | 1]`` (spherical). For all components at once the E-step is ``Z @ theta.T``
  (``theta`` the natural parameters, the log weight folded into the constant column) and the
  M-step statistics are ``R.T @ Z``: two skinny matrix products per iteration and no (N, K, D)
  temporary.

* **precise** (the centred form): ``log N`` through ``L^-1 (x - mu_k)`` and scatter matrices
  ``sum r (x - xbar_k)(x - xbar_k)^T`` about each component's own mean, one component at a time
  (``lax.map``) on the CPU, all at once (``vmap``) on accelerators (:func:`each_component`).
  About twice the work, and exact where the fast form cancels.

**Layout.** Inside the E-step the per-component arrays are *component-major*, (K, N): the
log densities ``theta @ Z.T``, the responsibilities and their products with ``Z`` or ``x``. The
sums over components are then K-fold elementwise operations on rows of length N, which XLA
vectorises and splits over threads along N. In the row-major (N, K) layout they are reductions
over a minor axis of a few elements: measured on two cores, the E-step of N=1500, K=3 with 16
lanes ran 3.6 times slower, and of N=1e5, D=16, K=16 1.3 times slower.

The fast form loses precision when a component is tight and far from the data's centre: the
scatter ``sum r x x^T - N xbar xbar^T`` then cancels, with a relative error of about
``eps * (|mu|^2 + tr Sigma) tr Sigma^-1`` (float32: a component of sd 1e-3 at 1 loses 10% of its
variance). Diagonal and spherical covariances have no products across features: a variance loses
about ``eps (mu_d^2 + var_d) / var_d`` and a row's log density about the sum of those over the
features (in nats), so their factor is ``eps * sum_d (mu_d^2 + var_d) / var_d``; the formula
above, a bound for full matrices, overstates it up to D-fold there (well-separated clusters with
D = K = 16 took the centred form in float32 at 4e-4; they take the fast form at 3e-5). For full
covariances float32 EM uses a tighter bound, ``eps (|W |mu||^2 + tr(W |Sigma| W^T))`` with ``W = |L^-1|``
elementwise (rows within 2.4 of it, covariances within 4.5, on tight, far, correlated
components), together with a *centred endgame*: a lane past :data:`ENDGAME_THRESHOLD` but not
past :data:`PRECISE_THRESHOLD` runs the fast form until its convergence test is first close and
the centred form from there to the end, so that the objective's last changes, which decide where
the run stops, are the centred form's. (With that bound alone and the earlier single-step test,
a float32 default fit on such clusters stopped 31 nats, 3e-4 a row, short of the float64
optimum.) The float32 per-fit benchmark's clusters (N=1e5, D = K = 16) then run at about 21 ms
an iteration instead of 33. VB, and float64 EM, keep the conservative bound (no endgame).
:func:`needs_precise` measures the factor; the drivers switch to the precise form while any
component needs it, so tight, far-apart clusters and heavy outliers are fitted as accurately as
ordinary data, at the fast form's speed otherwise. EM's em-EM short runs, which
only rank the starts, switch at a looser factor (:data:`SHORT_RUN_PRECISE_THRESHOLD`).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from . import _constrained, _numerics
from ._covariance_models import constrained_models
from .params import GMMParams

LOG_2PI = _numerics.LOG_2PI

ROUNDOFF_ULPS = _numerics.ROUNDOFF_ULPS  # the round-off floor of full and tied covariances (m_step)

#: The fast form is used while ``eps * (|mu|^2 + tr Sigma) tr Sigma^-1`` stays below this for every
#: component (relative error of the moment-form covariance, up to a factor D).
PRECISE_THRESHOLD = 1e-4

#: The guard of the em-EM short runs, which only rank the starts: the fast form until the error
#: factor passes this (float32 covariances then within about 0.1% of their centred values; the
#: objective within about 1e-3 nats a row). Runs continued from them take :data:`PRECISE_THRESHOLD`
#: and start their convergence test afresh (:func:`bayesgmm._iterate.restart_convergence`).
SHORT_RUN_PRECISE_THRESHOLD = 1e-3

#: EM's *centred endgame*: a lane whose factor (the tight bound of :func:`needs_precise`) passes
#: this, though not :data:`PRECISE_THRESHOLD`, runs the fast form until its convergence test is
#: first close and the centred form from there to the end (:func:`bayesgmm._iterate.iterate`).
ENDGAME_THRESHOLD = 1e-6


# ----------------------------------------------------------------------------------------------
# Exponential-family features and natural parameters (the fast form)
# ----------------------------------------------------------------------------------------------
def _triu(d: int):
    return np.triu_indices(d)


def num_suff_features(num_features: int, covariance_type: str) -> int:
    d = num_features
    quad = {"full": d * (d + 1) // 2, "tied": d * (d + 1) // 2, "diag": d, "spherical": 1}[covariance_type]
    return quad + d + 1


def quad_features(x, covariance_type: str):
    """The quadratic block of the features, (N, q): ``x_i x_j`` (i <= j, :func:`numpy.triu_indices`
    order) for full and tied, ``x^2`` for diag, ``sum x^2`` for spherical."""
    if covariance_type in ("full", "tied"):  # the upper triangle row by row, from static slices:
        # XLA fuses them, where an index gather runs slowly on CPU
        return jnp.concatenate([x[:, i : i + 1] * x[:, i:] for i in range(x.shape[1])], axis=1)
    if covariance_type == "diag":
        return x * x
    return jnp.sum(x * x, axis=1, keepdims=True)


def suff_features(x, covariance_type: str):
    """Map observations to exponential-family features Z = [quad | x | 1], shape (N, p)."""
    return jnp.concatenate([quad_features(x, covariance_type), x, jnp.ones((x.shape[0], 1), x.dtype)], axis=1)


def _inverse_factors(covariances, covariance_type: str, k: int, d: int):
    """Per component ``L^-1`` (K, D, D) of ``Sigma_k = L L^T`` and ``log |Sigma_k|`` (full and
    tied), or the variances (K, D) and their log determinants (diag and spherical)."""
    if covariance_type in ("full", "tied"):
        chol = jnp.linalg.cholesky(_numerics.expand_covariances(covariances, covariance_type, k, d))
        eye = jnp.broadcast_to(jnp.eye(d, dtype=chol.dtype), chol.shape)
        inverse = jax.scipy.linalg.solve_triangular(chol, eye, lower=True)
        return inverse, 2.0 * jnp.sum(jnp.log(jnp.diagonal(chol, axis1=-2, axis2=-1)), -1)
    var = _numerics.diagonal_variances(covariances, covariance_type, k, d)
    return var, jnp.sum(jnp.log(var), -1)


def _precisions(covariances, covariance_type: str, k: int, d: int):
    """Precision matrices (K, D, D) (full/tied) or precisions (K, D) / (K,), and half log|prec|."""
    if covariance_type in ("full", "tied"):
        chol_inv, logdet = _inverse_factors(covariances, covariance_type, k, d)
        return jnp.swapaxes(chol_inv, -1, -2) @ chol_inv, -0.5 * logdet
    prec = 1.0 / covariances
    half = 0.5 * jnp.sum(jnp.log(prec), -1) if covariance_type == "diag" else 0.5 * d * jnp.log(prec)
    return prec, half


def natural_params(params: GMMParams, covariance_type: str):
    """Rows theta_k with Z @ theta_k = log pi_k + log N(x | mu_k, Sigma_k); shape (K, p)."""
    w, mu, cov = params
    k, d = mu.shape
    prec, half_logdet_prec = _precisions(cov, covariance_type, k, d)
    if covariance_type in ("full", "tied"):
        prec_mu = jnp.einsum("kij,kj->ki", prec, mu)
        i, j = _triu(d)
        quad = prec[:, i, j] * jnp.where(i == j, -0.5, -1.0).astype(mu.dtype)
    elif covariance_type == "diag":
        prec_mu = prec * mu
        quad = -0.5 * prec
    else:
        prec_mu = prec[:, None] * mu
        quad = -0.5 * prec[:, None]
    const = jnp.log(w) - 0.5 * jnp.sum(prec_mu * mu, -1) + half_logdet_prec - 0.5 * d * LOG_2PI
    return jnp.concatenate([quad, prec_mu, const[:, None]], axis=1)


def mask_components(theta, active):
    """Natural parameters with inactive components switched off (log weight -inf).

    ``active`` is a (K,) boolean mask or None (every component active). Switched-off components
    get zero responsibility and contribute nothing to the log-likelihood, so one compiled
    program serves every K up to the array's K (model-selection grids run batched).
    """
    if active is None:
        return theta
    return theta.at[:, -1].set(jnp.where(active, theta[:, -1], -jnp.inf))


def log_joint_fast(z, params: GMMParams, covariance_type: str, active=None, const_shift=None):
    """``log pi_k + log N(x_n | k)`` (K, N) in the fast form; ``const_shift`` (K,) is added to
    each component's constant (VB's expectation terms)."""
    theta = natural_params(params, covariance_type)
    if const_shift is not None:
        theta = theta.at[:, -1].add(const_shift)
    return mask_components(theta, active) @ z.T


#: Up to this many features the centred form is written out feature by feature on rows of length
#: N (the data transposed once, (D, N)): ``y_i = sum_{j<=i} (L^-1)_ij (x_j - mu_j)``, then
#: ``sum_i y_i^2``, elementwise operations that XLA fuses into one pass. Measured on two cores
#: against the matrix-product form (:func:`bayesgmm._numerics.component_log_density`): 6-13 times
#: faster at D <= 8, twice as fast at N=1e5, D=K=16.
UNROLLED_FEATURES = 16


def each_component(fn, args, together: bool = False):
    """``fn`` of every component (the leading axis of ``args``): one after another (``lax.map``),
    or with ``together`` all at once (``vmap``).

    One after another suits the CPU: a component's centred intermediates stay in a core's cache.
    On an accelerator every iteration of a loop costs kernel launches and a round trip to the host
    for the loop's condition, and one component's rows are too little work to hide them: on an
    H200 the float32 centred form of N=1e7, D=K=16 (153 row blocks of 16 components, twice an
    iteration) took 61.6 ms an iteration one after another (see ``benchmarks/scale.py``).
    """
    return jax.vmap(fn)(args) if together else jax.lax.map(fn, args)


#: Whether the centred form computes its components at once (:func:`each_component`): None, off
#: the CPU only (the default); True or False, everywhere (``benchmarks/accelerator_em.py`` compares
#: the two on a GPU; the tests compare them on the CPU).
COMPONENTS_TOGETHER: bool | None = None


def components_together(array) -> bool:
    """The centred form's layout for data placed as ``array`` (a ``jax.Array``, or a NumPy array
    bound for the default device): every component at once off the CPU (:func:`each_component`,
    :data:`COMPONENTS_TOGETHER`)."""
    if COMPONENTS_TOGETHER is not None:
        return COMPONENTS_TOGETHER
    if not isinstance(array, jax.Array):
        return jax.default_backend() != "cpu"
    return any(device.platform != "cpu" for device in array.devices())


def _mahalanobis_rows(xt, mean, factor, covariance_type: str):
    """``(x_n - mu)^T Sigma^-1 (x_n - mu)`` (N,) for one component from the features' rows
    ``xt`` (D, N), written out feature by feature (:data:`UNROLLED_FEATURES`)."""
    d = xt.shape[0]
    diff = [xt[j] - mean[j] for j in range(d)]
    if covariance_type in ("full", "tied"):
        whitened = [sum(factor[i, j] * diff[j] for j in range(i + 1)) for i in range(d)]
        return sum(y * y for y in whitened)
    return sum(diff[j] * diff[j] / factor[j] for j in range(d))


def log_joint_precise(x, params: GMMParams, covariance_type: str, active=None, const_shift=None, *,
                      together: bool = False):
    """``log pi_k + log N(x_n | k)`` (K, N) in the centred form, one component at a time (all at
    once with ``together``, :func:`each_component`)."""
    w, mu, cov = params
    k, d = mu.shape
    if d <= UNROLLED_FEATURES:
        xt = x.T
        factors, logdet = _inverse_factors(cov, covariance_type, k, d)
        quad = each_component(lambda args: _mahalanobis_rows(xt, *args, covariance_type), (mu, factors), together)
        logp = -0.5 * (quad + logdet[:, None] + d * LOG_2PI)  # (K, N)
    else:
        if covariance_type in ("full", "tied"):
            per_component = _numerics.expand_covariances(cov, covariance_type, k, d)
            form = "full"
        else:
            per_component, form = cov, covariance_type

        def one(args):
            m, c = args
            return _numerics.component_log_density(x, m[None], c[None], form)[:, 0]

        logp = each_component(one, (mu, per_component), together)  # (K, N)
    log_w = jnp.log(w) if const_shift is None else jnp.log(w) + const_shift
    logp = logp + log_w[:, None]
    if active is not None:
        logp = jnp.where(active[:, None], logp, -jnp.inf)
    return logp


def _over_components(op, a):
    """``op`` folded over the leading (component) axis as K - 1 elementwise operations on rows
    (see the module docstring: XLA vectorises these along N, unlike a reduction over K)."""
    rows = [a[k] for k in range(a.shape[0])]
    while len(rows) > 1:  # pairwise: depth log2 K
        rows = [op(rows[i], rows[i + 1]) if i + 1 < len(rows) else rows[i] for i in range(0, len(rows), 2)]
    return rows[0]


def responsibilities_by_row(logp, *, hard: bool = False):
    """:func:`responsibilities` of row-major ``logp`` (N, K): ``(resp (N, K), per_row (N,))``.

    The row blocks of the fast form (:func:`e_step_totals`) take this layout, with the statistics
    ``resp^T Z``: one blocked fast E-step of N = 1e5, D = K = 16 (float32, blocks of 8192 rows)
    took 14.8 ms against 18.1 ms component-major (medians of 9 interleaved calls). On whole small
    data the component-major layout stayed faster (a loop of the same work: D = 2, K = 3 and
    N = 1e5, 1.4 ms against 1.8 ms; D = K = 8 and N = 2e4, 1.1 ms against 1.3 ms), so the
    unblocked forms keep it.
    """
    if hard:
        best = jnp.argmax(logp, axis=1)
        return jax.nn.one_hot(best, logp.shape[1], dtype=logp.dtype), jnp.max(logp, axis=1)
    top = jnp.max(logp, axis=1)
    top = jnp.where(jnp.isfinite(top), top, 0.0)  # a row with every component at -inf: no shift
    shifted = jnp.exp(logp - top[:, None])
    total = jnp.sum(shifted, axis=1)
    return shifted / total[:, None], top + jnp.log(total)


def responsibilities(logp, *, hard: bool = False):
    """Responsibilities and the per-row objective from ``log pi_k + log N`` (K, N), component-major.

    Returns ``(resp (K, N), per_row (N,))``: soft responsibilities and ``log sum_k`` (the
    marginal log density), or for ``hard`` one-hot assignments and ``max_k`` (the
    classification likelihood).
    """
    if hard:
        best = jnp.argmax(logp, axis=0)
        return jax.nn.one_hot(best, logp.shape[0], dtype=logp.dtype, axis=0), jnp.max(logp, axis=0)
    top = _over_components(jnp.maximum, logp)
    top = jnp.where(jnp.isfinite(top), top, 0.0)  # a row with every component at -inf: no shift
    shifted = jnp.exp(logp - top[None])
    total = _over_components(jnp.add, shifted)
    return shifted / total[None], top + jnp.log(total)


def e_step(z, theta, *, hard: bool = False):
    """Fast E-step from features and natural parameters: ``(resp (K, N), per-row objective (N,))``."""
    return responsibilities(theta @ z.T, hard=hard)


# ----------------------------------------------------------------------------------------------
# Sufficient statistics: counts, means and scatter matrices about each component's mean
# ----------------------------------------------------------------------------------------------
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


def safe_counts(nk):
    return nk + 10 * jnp.finfo(nk.dtype).eps  # as scikit-learn: an empty component stays finite


def scatter(nk, sx, sxx, covariance_type: str):
    """Centred statistics ``(nk_safe, xbar, S)`` from moment sums (the fast form):
    ``S_k = sum r x x^T - N_k xbar xbar^T`` (diag: per feature; spherical: summed over features)."""
    nk_safe = safe_counts(nk)
    xbar = sx / nk_safe[:, None]
    if covariance_type in ("full", "tied"):
        s = sxx - nk_safe[:, None, None] * xbar[:, :, None] * xbar[:, None, :]
    elif covariance_type == "diag":
        s = sxx - nk_safe[:, None] * xbar**2
    else:
        s = sxx - nk_safe * jnp.sum(xbar**2, -1)
    return nk_safe, xbar, s


def stats_fast(resp_weighted, z, num_features: int, covariance_type: str):
    """Centred statistics from one product ``R @ Z`` (``R`` (K, N), rows already weighted)."""
    return scatter(*unpack_stats(resp_weighted @ z, num_features, covariance_type), covariance_type)


def centred_moments(resp_weighted, x, covariance_type: str, centres, *, together: bool = False):
    """Moments about given ``centres`` (K, D) of responsibilities (K, N):
    ``(N_k, sum_n r x~, sum_n r x~ x~^T)`` with ``x~ = x - c_k``, one component at a time, or all
    at once with ``together`` (:func:`each_component`) (diag: per feature; spherical: summed).
    Sums over row blocks add up; :func:`finish_centred` turns them into centred statistics."""
    if x.shape[1] <= UNROLLED_FEATURES:  # the features' rows (D, N), as log_joint_precise
        xt = x.T

        def one(args):  # products with r, not sums over rows: a batch of lanes (vmap) joins their free axis
            r, c = args
            diff = xt - c[:, None]
            if covariance_type in ("full", "tied"):
                second = (diff * r[None]) @ diff.T
            elif covariance_type == "diag":
                second = (diff * diff) @ r
            else:
                second = jnp.sum(diff * diff, axis=0) @ r
            return diff @ r, second
    else:
        def one(args):
            r, c = args
            diff = x - c[None]
            first = r @ diff
            if covariance_type in ("full", "tied"):  # contracting the rows directly: no (D, N) transpose
                second = jax.lax.dot_general(diff * r[:, None], diff, (((0,), (0,)), ((), ())))
            elif covariance_type == "diag":
                second = r @ (diff * diff)
            else:
                second = r @ jnp.sum(diff * diff, axis=1)
            return first, second

    first, second = each_component(one, (resp_weighted, centres), together)
    return jnp.sum(resp_weighted, axis=1), first, second


def finish_centred(nk, first, second, centres, covariance_type: str):
    """Centred statistics ``(nk_safe, xbar, S)`` from moments about ``centres``: the scatter about
    the mean is ``S(c) - N_k (xbar - c)(xbar - c)^T``, a small correction when c is near it."""
    nk_safe = safe_counts(nk)
    delta = first / nk_safe[:, None]
    xbar = centres + delta
    if covariance_type in ("full", "tied"):
        s = second - nk_safe[:, None, None] * delta[:, :, None] * delta[:, None, :]
    elif covariance_type == "diag":
        s = second - nk_safe[:, None] * delta**2
    else:
        s = second - nk_safe * jnp.sum(delta**2, -1)
    return nk_safe, xbar, s


def fold_row_blocks(num_rows: int, block_rows: int, step, init):
    """``step(start, new, acc)`` folded over the row blocks ``[start, start + block_rows)`` of
    ``num_rows`` rows (``lax.fori_loop``): the last block overlaps the one before it, and ``new``
    (block_rows,) marks the rows not counted by an earlier block."""
    def body(i, acc):
        start = jnp.minimum(i * block_rows, num_rows - block_rows)
        return step(start, (start + jnp.arange(block_rows)) >= i * block_rows, acc)

    return jax.lax.fori_loop(0, -(-num_rows // block_rows), body, init)


def stats_precise(resp_weighted, x, covariance_type: str, centres=None, block_rows: int | None = None, *,
                  together: bool = False):
    """Centred statistics ``(nk_safe, xbar, S)`` of responsibilities (K, N), every scatter taken
    about a centre near the component's mean, one component at a time (no cancellation).

    ``centres`` (K, D): the shifts; None computes the weighted means first (two passes over the
    rows, exact). With given centres (one pass, e.g. the previous means while streaming) the
    scatter about the new mean is ``S(c) - N_k (xbar - c)(xbar - c)^T``, a small correction.
    ``block_rows`` (static): the moments summed over row blocks of that many rows (the last block
    overlapping the one before it, counting only its new rows), so that the centred copies of the
    data never exist whole (a start's M-step on N=5e6, D=16 held 1.1 GiB of them). ``together``:
    the components at once (:func:`each_component`).
    """
    if centres is None:  # the exact weighted mean (one point's mean is that point), unless empty
        nk = jnp.sum(resp_weighted, axis=1)
        centres = (resp_weighted @ x) / jnp.where(nk > 0, nk, safe_counts(nk))[:, None]
    if block_rows is None or block_rows >= x.shape[0]:
        return finish_centred(*centred_moments(resp_weighted, x, covariance_type, centres, together=together),
                              centres, covariance_type)

    def step(start, new, acc):
        rb = jnp.where(new[None], jax.lax.dynamic_slice_in_dim(resp_weighted, start, block_rows, axis=1), 0.0)
        moments = centred_moments(rb, jax.lax.dynamic_slice_in_dim(x, start, block_rows), covariance_type, centres,
                                  together=together)
        return tuple(a + b for a, b in zip(acc, moments))

    shapes = jax.eval_shape(lambda: centred_moments(resp_weighted[:, :1], x[:1], covariance_type, centres))
    moments = fold_row_blocks(x.shape[0], block_rows, step, tuple(jnp.zeros(m.shape, m.dtype) for m in shapes))
    return finish_centred(*moments, centres, covariance_type)


def e_step_stats(z, x, sample_weight, params: GMMParams, covariance_type: str, precise, *, active=None,
                 const_shift=None, hard: bool = False, together: bool = False):
    """The E-step and the M-step's statistics at ``params``: ``(per_row, stats)``.

    ``per_row`` (N,) is each row's ``log sum_k`` (``max_k`` for ``hard``) of
    ``log pi_k + log N(x_n | k) (+ const_shift_k)``; ``stats`` the centred statistics
    ``(N_k, xbar_k, S_k)`` of the (row-weighted) responsibilities. ``precise`` (a Python or traced
    bool) selects the centred form; a traced one is a real branch (``lax.cond``), so only the form
    taken is computed and everything that does not depend on it stays outside. ``together``
    (static): the centred form's components at once (:func:`each_component`).
    """
    d = x.shape[1]

    def branch(use_precise):
        def run(_):
            if use_precise:
                logp = log_joint_precise(x, params, covariance_type, active, const_shift, together=together)
            else:
                logp = log_joint_fast(z, params, covariance_type, active, const_shift)
            resp, per_row = responsibilities(logp, hard=hard)
            if sample_weight is not None:
                resp = resp * sample_weight[None]
            if use_precise:
                stats = stats_precise(resp, x, covariance_type, together=together)
            else:
                stats = stats_fast(resp, z, d, covariance_type)
            return per_row, stats

        return run

    if isinstance(precise, bool):
        return branch(precise)(None)
    return jax.lax.cond(precise, branch(True), branch(False), None)


#: Rows per block of the blocked E-step: the features of a block take about this many elements.
BLOCK_ELEMENTS = 2**24

#: The E-step runs in blocks when the features of all rows would take more elements than this
#: (1 GiB in float64): below it, features made once are faster than features made per block.
BLOCKED_ABOVE = 2**27


#: On the CPU, features that would take more elements than this, and at least
#: :data:`CACHE_BLOCKED_RATIO` times the data, are made block by block (see :func:`block_rows`):
#: blocks of about :data:`CACHE_BLOCK_BYTES` of features in the fast form, of rows whose features
#: would take about :data:`CACHE_BLOCK_ELEMENTS` elements in the centred form.
CACHE_BLOCKED_ABOVE = 2**23
CACHE_BLOCKED_RATIO = 4
CACHE_BLOCK_BYTES = 2**23
CACHE_BLOCK_ELEMENTS = 2**18

#: On the CPU, features not much larger than the data (fewer than :data:`CACHE_BLOCKED_RATIO`
#: times: diagonal and spherical covariances, full and tied up to D = 4) are made block by
#: block, component-major, where all rows' would take more than this many elements, in blocks of
#: rows whose features take about :data:`SMALL_FEATURES_BLOCK_ELEMENTS` (see :func:`block_rows`).
SMALL_FEATURES_BLOCKED_ABOVE = 2**20
SMALL_FEATURES_BLOCK_ELEMENTS = 2**19

#: Those blocks are row-major instead, of at most :data:`ROW_MAJOR_SMALL_FEATURES_ROWS` rows, in
#: float64 with this many components or more: the sums over a row's K log densities are then
#: a few vector registers each, where component-major they are K streams (see :func:`block_rows`).
ROW_MAJOR_MIN_COMPONENTS = 16
ROW_MAJOR_SMALL_FEATURES_ROWS = 2**14


class RowBlocks(NamedTuple):
    """Rows per block of the blocked E-step (:func:`e_step_totals`) in each form, and the fast
    form's layout there: row-major (:func:`responsibilities_by_row`, measured faster on the CPU)
    or component-major (:func:`responsibilities`, as the whole-data form; accelerators)."""

    fast: int
    precise: int
    row_major: bool = False


def _power_of_two_rows(elements: float, p: int, smallest: int) -> int:
    return 2 ** max(smallest, int(math.floor(math.log2(elements / p))))


def block_rows(num_obs: int, num_features: int, covariance_type: str, *, cpu: bool = False,
               itemsize: int = 8, num_components: int | None = None) -> RowBlocks | None:
    """Rows per block for :func:`e_step_totals` (static), or None for one block.

    The fast form works on the features Z (N, p), p = 1 + D + D(D+1)/2 for full covariances:
    materialised whole they take p / D times the data (9.6 times at D = 16). Above
    :data:`BLOCKED_ABOVE` elements the E-step runs over row blocks of about
    :data:`BLOCK_ELEMENTS` (a power of two of rows), making its features block by block, so that
    peak memory stays a small multiple of the data.

    On the CPU (``cpu``), where the features are much larger than the data (p at least
    :data:`CACHE_BLOCKED_RATIO` D: full and tied covariances from D = 5) and would take more than
    :data:`CACHE_BLOCKED_ABOVE` elements, the blocks stay in the caches: both products of an
    iteration then read each block's features from there instead of all of Z from memory twice,
    and no Z is written. Measured on two cores (N = 1e5, D = K = 16, 8 iterations, whole
    ``fit_em`` calls, interleaved): blocks of 1024 rows took 0.52 s instead of 0.68 s in float64,
    0.37-0.47 s instead of 0.51-0.66 s in float32. Where the features are not much larger than
    the data these row-major blocks of 1024 rows did not pay: N = 1e6, D = 2, K = 3 took 0.68 s in blocks against 0.44 s; N = 2e4,
    D = K = 8 0.050 s against 0.042 s. On accelerators the whole-data products are faster.

    The two forms want different blocks. The fast form's products run faster on larger blocks,
    up to about :data:`CACHE_BLOCK_BYTES` of features (``itemsize`` bytes an element): the
    compiled program of the same fit (its 9 E-steps and 8 M-steps) took 0.160 s in blocks of
    8192 rows in float32 against 0.197 s in 1024 (0.196 s in 4096, 0.182 s in 16384), and 0.271 s
    in blocks of 4096 rows in float64 against 0.345 s in 1024 (0.305 s in 8192); medians of 7-11
    interleaved calls. The centred form, a loop over components of elementwise passes, is fastest
    on blocks of about :data:`CACHE_BLOCK_ELEMENTS` elements of features (1024 rows at D = 16:
    0.283 s in float32 against 0.325 s in 8192-row blocks, 0.529 s against 0.561 s in float64).

    Features not much larger than the data (p below :data:`CACHE_BLOCKED_RATIO` D) go in blocks
    too on the CPU above :data:`SMALL_FEATURES_BLOCKED_ABOVE` elements of features, of about
    :data:`SMALL_FEATURES_BLOCK_ELEMENTS` in the fast form, component-major: made whole, the
    features and the (K, N) log densities and responsibilities are new memory at every call of
    the compiled program (14,000 page faults in a float64 fit at N = 1e5, D = K = 16, diagonal:
    about 10 ms), and for few features the whole-data products are slow. Whole ``fit_em`` calls
    of 8 iterations (medians of 5-11 interleaved in one process, two cores): diagonal at
    N = 1e5, D = K = 16 108-110 ms in blocks of 8192 or 16384 rows against 116-117 ms in float64,
    74-76 ms against 86-91 ms in float32 (row-major blocks: 89-93 ms); N = 1e5, D = K = 8 75 ms
    against 84 ms (float64); N = 1e6, D = 2, K = 3 179 ms in blocks of 65536 rows against 224 ms
    (float64) and 159 ms against 343 ms (float32); full covariances there 168 ms against 253 ms
    (float64) and 135 ms against 326 ms (float32). Below the threshold the whole-data form
    stayed as fast or faster: N = 3e4, D = K = 16 diagonal 38.5 ms against 40.4 ms, N = 2e4,
    D = K = 8 15.7 ms against 17.1 ms.

    With many components (``num_components`` at least :data:`ROW_MAJOR_MIN_COMPONENTS`) those
    blocks are row-major in float64 (``itemsize`` 8), of at most
    :data:`ROW_MAJOR_SMALL_FEATURES_ROWS` rows. Whole 8-iteration ``fit_em`` calls, interleaved in
    one process (medians of 9-15, two cores; component-major / row-major): diagonal at N = 1e5,
    D = 16 1.12 times as long at K = 16 (compiled program 131 ms against 123 ms) and 1.20 times at
    K = 32 (236 ms against 177 ms); full covariances at N = 2e5, D = 4, K = 16 1.09 times;
    ``fit_vb``, diagonal, K = 16, 1.05 times. In float32 the row-major blocks were slower (0.86
    times at D = K = 16, 0.93 at K = 32), and at K of 12 or fewer they were no faster (isolated
    E-steps: equal at K = 12; at D = 2, K = 3, 1.15 times as long in blocks of 65536
    rows, twice as long in 8192).
    """
    p = num_suff_features(num_features, covariance_type)
    if cpu and p >= CACHE_BLOCKED_RATIO * num_features and num_obs * p > CACHE_BLOCKED_ABOVE:
        return RowBlocks(fast=_power_of_two_rows(CACHE_BLOCK_BYTES / itemsize, p, 9),
                         precise=_power_of_two_rows(CACHE_BLOCK_ELEMENTS, p, 9), row_major=True)
    if cpu and p < CACHE_BLOCKED_RATIO * num_features and num_obs * p > SMALL_FEATURES_BLOCKED_ABOVE:
        fast = _power_of_two_rows(SMALL_FEATURES_BLOCK_ELEMENTS, p, 9)
        precise = _power_of_two_rows(CACHE_BLOCK_ELEMENTS, p, 9)
        if itemsize >= 8 and num_components is not None and num_components >= ROW_MAJOR_MIN_COMPONENTS:
            return RowBlocks(fast=min(fast, ROW_MAJOR_SMALL_FEATURES_ROWS), precise=precise, row_major=True)
        return RowBlocks(fast=fast, precise=precise, row_major=False)
    if num_obs * p <= BLOCKED_ABOVE:
        return None
    rows = _power_of_two_rows(BLOCK_ELEMENTS, p, 10)
    return RowBlocks(rows, rows, row_major=cpu)


def block_rows_for(xs, num_features: int, covariance_type: str, num_components: int) -> RowBlocks | None:
    """:func:`block_rows` for data ``xs`` as placed (a ``jax.Array``): its rows, its devices'
    platform (the CPU's cache-sized blocks) and its dtype's size, for a mixture of
    ``num_components`` components."""
    on_cpu = all(device.platform == "cpu" for device in xs.devices())
    return block_rows(xs.shape[-2], num_features, covariance_type, cpu=on_cpu, itemsize=np.dtype(xs.dtype).itemsize,
                      num_components=num_components)


#: XLA:CPU's option naming the operations it hands to YNNPACK's kernels (jaxlib 0.10: each
#: matrix product and reduction); the empty value hands none, XLA's own code and Eigen's
#: products then run them.
YNN_FUSION_OPTION = "xla_cpu_experimental_ynn_fusion_type"


def library_kernels(covariance_type: str, engine: str = "em") -> dict:
    """XLA:CPU options of an EM (``engine="em"``) or VB (``"vb"``) program for covariances of
    ``covariance_type`` (their layout): YNNPACK's kernels off, except for tied covariances and
    for VB's full ones, where they were faster (:class:`bayesgmm._compile.CompiledProgram`'s
    ``cpu_options``).

    The E-step's products are long and thin (rows by K or by the p features, p = 18 to 153 at
    D = 16), which YNNPACK ran slower than XLA's own loops and Eigen's products. Compiled
    program of whole 8-iteration ``fit_em`` calls at N = 1e5, D = K = 16, the same program
    compiled both ways and called alternately in one process (``benchmarks/library_kernels.py``
    and its first drafts; medians of 9, two cores; without / with YNNPACK): spherical 0.38-0.52
    times as long, diagonal 0.64-0.82 (float32) and 0.86-0.93 (float64), full 0.71-0.81
    (float32) and 0.94-1.07 (float64: no difference); full at N = 1e6, D = 2, K = 3 0.88-0.95;
    Old Faithful's default search 0.92-1.02; tied 1.00-1.08 (float64) and 1.54-1.59 (float32);
    mclust's models at N = 1e5, D = K = 8 (float64, 7 calls) VEV 0.88-0.89, EVI 0.82-0.84, VII
    0.49-0.52. VB, 20 iterations: diagonal 0.88-0.96, full 1.01-1.17.
    """
    keep = covariance_type == "tied" or (engine == "vb" and covariance_type == "full")
    return {} if keep else {YNN_FUSION_OPTION: ""}


def e_step_totals(z, x, sample_weight, params: GMMParams, covariance_type: str, precise, *, active=None,
                  const_shift=None, hard: bool = False, block_rows: RowBlocks | int | None = None,
                  together: bool = False):
    """The E-step's totals and the M-step's statistics at ``params``: ``(total, magnitude, stats)``.

    ``total`` is the (row-weighted) sum of :func:`e_step_stats`'s per-row objective, as a pair
    ``(high, low)`` (:func:`bayesgmm._numerics.compensated_sum`), and ``magnitude`` the sum of its
    absolute values. With ``block_rows`` (static: :class:`RowBlocks`, or one count for both
    forms, component-major; ``z`` then unused, may be None) the rows are visited in blocks of the form's count by
    a loop that makes each block's features on the fly and sums moments (about the current means
    in the precise form), so no (N, p) array exists; the last block overlaps the one before it
    and counts only its new rows. ``const_shift`` (K,) is added to each component's log density
    (VB's expectation terms, as in :func:`e_step_stats`).
    ``together`` (static): the centred form's components at once (:func:`each_component`).
    """
    if block_rows is None:
        per_row, stats = e_step_stats(z, x, sample_weight, params, covariance_type, precise, active=active,
                                      const_shift=const_shift, hard=hard, together=together)
        if sample_weight is None:
            return _numerics.compensated_sum(per_row), jnp.sum(jnp.abs(per_row)), stats
        return _numerics.compensated_sum(per_row, sample_weight), jnp.abs(per_row) @ sample_weight, stats
    blocks = RowBlocks(block_rows, block_rows) if isinstance(block_rows, int) else block_rows
    n, d = x.shape
    centres = params.means
    weight = jnp.ones((n,), x.dtype) if sample_weight is None else sample_weight
    pairs = jnp.finfo(x.dtype).bits < 64  # as compensated_sum: float64 keeps its plain sum

    def branch(use_precise):
        rows = blocks.precise if use_precise else blocks.fast

        def run(_):
            # the fast form's natural parameters (a factorisation per component) once, not per block
            if use_precise:
                theta = None
            else:
                theta = natural_params(params, covariance_type)
                if const_shift is not None:
                    theta = theta.at[:, -1].add(const_shift)
                theta = mask_components(theta, active)

            def step(start, new, acc):
                xb = jax.lax.dynamic_slice_in_dim(x, start, rows)
                wb = jnp.where(new, jax.lax.dynamic_slice_in_dim(weight, start, rows), 0.0)
                if use_precise:
                    logp = log_joint_precise(xb, params, covariance_type, active, const_shift, together=together)
                    resp, per_row = responsibilities(logp, hard=hard)
                    moments = centred_moments(resp * wb[None], xb, covariance_type, centres, together=together)
                elif blocks.row_major:
                    zb = suff_features(xb, covariance_type)
                    resp, per_row = responsibilities_by_row(zb @ theta.T, hard=hard)
                    moments = (jax.lax.dot_general(resp * wb[:, None], zb, (((0,), (0,)), ((), ()))),)
                else:
                    zb = suff_features(xb, covariance_type)
                    resp, per_row = responsibilities(theta @ zb.T, hard=hard)
                    moments = ((resp * wb[None]) @ zb,)
                per_row = jnp.where(wb > 0, per_row, 0.0)
                (high, low), magnitude, summed = acc
                if pairs:  # each row's slot: a pair (elementwise TwoSum) and |l_n|, all elementwise, so
                    # one fusion (|l_n| summed by a product cost 1.1 ms more an E-step at N=1e5,
                    # D=K=16 in blocks of 8192 rows)
                    high, error = _numerics.two_sum(high, per_row * wb)
                    low = low + error
                    magnitude = magnitude + jnp.abs(per_row) * wb
                else:
                    high = high + per_row @ wb
                    magnitude = magnitude + jnp.abs(per_row) @ wb
                return ((high, low), magnitude, tuple(a + b for a, b in zip(summed, moments)))

            k = params.means.shape[0]
            if use_precise:
                zero_moments = jax.eval_shape(lambda: centred_moments(jnp.zeros((k, 1), x.dtype), x[:1], covariance_type, centres))
            else:
                zero_moments = (jax.ShapeDtypeStruct((k, num_suff_features(d, covariance_type)), x.dtype),)
            slots = jnp.zeros((rows,) if pairs else (), x.dtype)
            acc0 = ((slots, slots), slots, tuple(jnp.zeros(m.shape, m.dtype) for m in zero_moments))
            (high, low), magnitude, moments = fold_row_blocks(n, rows, step, acc0)
            magnitude = jnp.sum(magnitude)
            total = (high, low)
            if pairs:  # the slots' pairs summed (compensated_sum's float32 case)
                high, rounding = _numerics.compensated_sum(high)
                total = (high, rounding + jnp.sum(low))
            if use_precise:
                stats = finish_centred(*moments, centres, covariance_type)
            else:
                stats = scatter(*unpack_stats(moments[0], d, covariance_type), covariance_type)
            return total, magnitude, stats

        return run

    if isinstance(precise, bool):
        return branch(precise)(None)
    return jax.lax.cond(precise, branch(True), branch(False), None)


def needs_precise(params: GMMParams, covariance_type: str, active=None, reg_covar=0.0, threshold=PRECISE_THRESHOLD,
                  endgame_threshold=None, spare_collapsed=True):
    """For every lane (``params`` with a leading lane axis, L), whether the fast form would lose
    precision on any (active) component: true when
    ``eps * (|mu_k|^2 + tr Sigma_k) * tr Sigma_k^-1 > threshold`` (diag and spherical:
    ``eps * sum_d (mu_kd^2 + var_kd) / var_kd``; standardised scale; default
    :data:`PRECISE_THRESHOLD`, may be traced). ``active``: None, (K,) or (L, K). Returns (L,) bool.

    With ``endgame_threshold`` (may be traced) full and tied covariances take the tight bound
    ``eps (|W |mu||^2 + tr(W |Sigma| W^T))``, ``W = |L^-1|`` elementwise (it equals the diag
    formula for diagonal matrices; on tight, far, correlated components the fast form's rows
    stayed within 2.4 of it and its covariances within 4.5), and the result is a pair of (L,)
    bools: the lanes past ``threshold`` (the precise form now) and those past
    ``endgame_threshold`` (the precise form once close to convergence: the tight bound keeps the
    statistics, not the objective's last digits, which decide where a run stops).

    With ``spare_collapsed`` (may be traced; the em-EM short runs, which only rank the starts),
    components collapsed onto the regularisation floor (smallest variance <= 10 ``reg_covar``) do
    not count: their run is degenerate and ranks last, and must not drag every other run of the
    batch into the slower form. Their eigenvalues are computed only when some component's factor
    is past the threshold (a conditional: on small data the check cost about a tenth of an
    iteration),
    and after the Cholesky factors (:func:`bayesgmm._numerics.in_turn`: one batched LAPACK call at
    a time). A run that is reported must not spare them: in float32 the fast form cannot hold a
    variance below its own rounding of the moments (about ``eps |mu|^2``), so a component on
    repeated values, collapsed by the precise step, was lifted back to about 1e-6 by the fast one,
    the run alternated between the two (its objective at the fast form's evaluations wild), and
    the returned component sat just above every floor, unflagged."""
    _, mu, cov = params
    k, d = mu.shape[-2:]
    eps = jnp.finfo(mu.dtype).eps
    tight = endgame_threshold is not None

    def error_factor(mu, cov):  # (K,)
        if covariance_type in ("full", "tied"):
            chol_inv, _ = _inverse_factors(cov, covariance_type, k, d)
            if tight:
                w = jnp.abs(chol_inv)
                spread = jnp.abs(_numerics.expand_covariances(cov, covariance_type, k, d))
                centre = jnp.sum((w @ jnp.abs(mu)[..., None])[..., 0] ** 2, -1)
                return eps * (centre + jnp.sum((w @ spread) * w, axis=(-2, -1)))
            return _numerics.fast_form_error(mu, cov, covariance_type, eps, jnp.sum(chol_inv**2, axis=(-2, -1)))
        return _numerics.fast_form_error(mu, cov, covariance_type, eps)

    factor = jax.vmap(error_factor)(mu, cov)  # (L, K)
    now = ~(factor <= threshold)  # NaN counts as bad
    bad = (now | ~(factor <= endgame_threshold)) if tight else now
    if active is not None:
        now, bad = now & active, bad & active
    if covariance_type != "tied" and spare_collapsed is not False:
        def spare(masks):  # only where some component would need the precise form
            smallest = jax.vmap(lambda c: _numerics.smallest_variances(c, covariance_type, k, d))(
                _numerics.in_turn(factor, cov))  # one batched LAPACK call at a time
            return tuple(m & ~(spare_collapsed & (smallest <= 10.0 * reg_covar)) for m in masks)

        now, bad = jax.lax.cond(jnp.any(bad) & jnp.any(spare_collapsed), spare, lambda m: m, (now, bad))
    if tight:  # the lanes past the threshold, and those past the endgame's
        return jnp.any(now, axis=-1), jnp.any(bad, axis=-1)
    return jnp.any(now, axis=-1)


# ----------------------------------------------------------------------------------------------
# The closed-form M-step
# ----------------------------------------------------------------------------------------------
def symmetrise(a):
    """``(A + A^T) / 2`` over the last two axes: exactly symmetric in floating point.

    Outer products written as ``n * x[:, None] * x[None, :]`` round differently in (i, j) and
    (j, i); NumPyro's Wishart-family densities return -inf for a matrix that is not symmetric.
    """
    return 0.5 * (a + jnp.swapaxes(a, -1, -2))


def covariance_floor(cov, reg_covar):
    """The variance floor :func:`m_step` adds to full and tied covariances: ``reg_covar`` plus a
    round-off floor of :data:`ROUNDOFF_ULPS` ulps of each covariance's mean variance."""
    d = cov.shape[-1]
    return reg_covar + ROUNDOFF_ULPS * jnp.finfo(cov.dtype).eps * jnp.trace(cov, axis1=-2, axis2=-1) / d


def raise_to_floor(params: GMMParams, covariance_type: str, reg_covar) -> GMMParams:
    """Covariances with every variance (eigenvalue) at least the floor :func:`m_step` adds.

    The moment form ``sum r x x^T - N_k xbar xbar^T`` (:func:`scatter`) cancels: for a component on
    few points far from the origin its round-off (about ``eps |xbar|^2`` a variance, float32:
    1e-6 of the data's variance) outgrows ``reg_covar`` and leaves eigenvalues below the floor, even
    negative ones, which make the next E-step NaN. Those eigenvalues are raised to the floor; a covariance
    already above it is returned unchanged, bit for bit. The fit then reports the component as
    collapsed (:func:`bayesgmm._numerics.collapsed_mask`), as it would from exact arithmetic.
    """
    w, mu, cov = params
    if covariance_type in ("full", "tied"):
        floor = covariance_floor(cov, reg_covar)
        values, vectors = jnp.linalg.eigh(cov)
        low = values[..., 0] < floor
        raised = symmetrise((vectors * jnp.maximum(values, floor[..., None])[..., None, :]) @ jnp.swapaxes(vectors, -1, -2))
        cov = jnp.where(low[..., None, None], raised, cov)
    else:
        cov = jnp.maximum(cov, reg_covar)
    return GMMParams(w, mu, cov)


def _map_weights_and_means(nk, xbar, prior, active):
    """The conjugate prior's MAP weights (Dirichlet) and means (Normal given the covariance), with
    the means' shrinkage ``kappa0 N_k / (kappa0 + N_k)`` and deviations ``xbar_k - m0``."""
    k = xbar.shape[0]
    alpha, m0, kappa0 = prior.concentration, prior.mean, prior.mean_precision
    alpha = jnp.broadcast_to(alpha, (k,))
    if active is None:
        k_active, alpha_total = k, jnp.sum(alpha)
    else:
        k_active, alpha_total = jnp.sum(active), jnp.sum(jnp.where(active, alpha, 0.0))
    weights = (nk + alpha - 1.0) / (jnp.sum(nk) + alpha_total - k_active)
    kappa_n = kappa0 + nk
    means = (nk[:, None] * xbar + kappa0 * m0[None]) / kappa_n[:, None]
    return weights, means, kappa0 * nk / kappa_n, xbar - m0[None]


def _map_constrained_statistics(nk, nk_safe, xbar, s, layout: str, prior, active):
    """MAP of a constrained model: weights, means, and the counts and scatter that turn the
    constrained maximum-likelihood M-step into the MAP one.

    A constrained model's prior is its storage layout's prior (:func:`bayesgmm.model.log_prior`)
    restricted to the model's constraint set: every component's covariance has the conjugate
    density (inverse-Wishart in the full layout, inverse-gamma per variance in the diagonal one,
    inverse-gamma in the spherical one) and its mean the Normal given that covariance. Each adds
    to ``-N_k/2 log|Sigma_k| - 1/2 tr(S_k Sigma_k^-1)`` a term of the same form, so the MAP
    covariances are the constrained ML ones with ``N_k`` raised by the prior's degrees of freedom
    (``nu0 + D + 2`` full, ``nu0 + 3`` per diagonal entry, ``(nu0 + 2 + D) / D`` spherical) and
    ``S_k`` by ``Psi0 + kappa0 N_k/(kappa0 + N_k) (xbar_k - m0)(xbar_k - m0)^T`` (the classic
    MAP covariance of VVV, VVI and VII is the case without constraint). Shared parts (a common
    volume, shape or orientation) thus carry one prior term per component, where mclust's
    priors (Fraley & Raftery 2007) count one per parameter.
    """
    d = xbar.shape[1]
    nu0, psi = prior.degrees_of_freedom, prior.scale
    weights, means, shrink, dev = _map_weights_and_means(nk, xbar, prior, active)
    if layout == "full":
        counts = nk_safe + nu0 + d + 2.0
        scatter = s + psi[None] + shrink[:, None, None] * dev[:, :, None] * dev[:, None, :]
    elif layout == "diag":
        counts = nk_safe + nu0 + 3.0
        scatter = s + psi[None] + shrink[:, None] * dev**2
    else:
        counts = nk_safe + (nu0 + 2.0 + d) / d
        scatter = s + psi + shrink * jnp.sum(dev**2, -1)
    return weights, means, counts, scatter


def m_step(nk_safe, xbar, s, covariance_type: str, reg_covar, prior=None, active=None, *, constrained: bool = False,
           model_index=0, previous=None):
    """Maximum-likelihood (``prior=None``) or MAP M-step, in closed form, from centred statistics.

    ``constrained``: fit the mclust model ``constrained_models(covariance_type)[model_index]``
    (:mod:`bayesgmm._covariance_models`; ``model_index`` may be traced, so one program serves
    every model of the layout) by :func:`bayesgmm._constrained.covariances`, started from
    ``previous`` (the covariances being updated) where it iterates; under a prior, from the MAP
    statistics of :func:`_map_constrained_statistics`.

    ``prior`` is a :class:`bayesgmm.params.PriorArrays`. The MAP covariance of the conjugate
    prior is ``(Psi0 + S_k + kappa0 N_k/(kappa0 + N_k) (xbar_k - m0)(...)^T) / (nu0 + N_k + D + 2)``
    (full; the other structures use their own denominators, see :class:`bayesgmm.Prior`).
    ``reg_covar`` is added to every variance afterwards, as scikit-learn does.
    ``active`` (K,) boolean, optional: inactive components get weight 0, mean 0 and unit
    covariance (finite placeholders that :func:`mask_components` switches off).
    """
    k, d = xbar.shape
    nk = nk_safe - 10 * jnp.finfo(nk_safe.dtype).eps
    n = jnp.sum(nk)
    if constrained:
        if prior is None:
            weights = nk_safe / jnp.sum(nk_safe if active is None else nk_safe * active)
            means, counts, scatter = xbar, nk_safe, s
        else:
            weights, means, counts, scatter = _map_constrained_statistics(nk, nk_safe, xbar, s, covariance_type,
                                                                          prior, active)
        branches = [lambda m=m: _constrained.covariances(counts, scatter, m, d, reg_covar, active, previous)
                    for m in constrained_models(covariance_type)]
        cov = jax.lax.switch(model_index, branches)
    elif prior is None:
        weights = nk_safe / jnp.sum(nk_safe if active is None else nk_safe * active)
        means = xbar
        if covariance_type == "full":
            cov = s / nk_safe[:, None, None]
        elif covariance_type == "tied":
            s_all = s if active is None else jnp.where(active[:, None, None], s, 0.0)
            cov = jnp.sum(s_all, 0) / jnp.sum(nk_safe if active is None else nk_safe * active)
        elif covariance_type == "diag":
            cov = s / nk_safe[:, None]
        else:
            cov = s / (nk_safe * d)
    else:
        nu0, psi = prior.degrees_of_freedom, prior.scale
        k_active = k if active is None else jnp.sum(active)
        weights, means, shrink, dev = _map_weights_and_means(nk, xbar, prior, active)
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
        # a round-off floor relative to the component's own scale keeps a rank-deficient scatter
        # (few points, collinear points) positive definite in floating point without widening it
        # (float32: 2e-6 of its mean variance); reg_covar, in the data's units, handles collapse
        eye = jnp.eye(d, dtype=cov.dtype)
        floor = 0.0 if constrained else covariance_floor(cov, reg_covar)  # the constrained M-steps floor the scatter themselves
        cov = symmetrise(cov + jnp.asarray(floor)[..., None, None] * eye)
    elif not constrained:  # the constrained M-steps regularise the scatter themselves
        cov = cov + reg_covar
    if active is not None:
        weights = jnp.where(active, weights, 0.0)
        means = jnp.where(active[:, None], means, 0.0)
        if covariance_type == "full":
            cov = jnp.where(active[:, None, None], cov, jnp.eye(d, dtype=cov.dtype))
        elif covariance_type in ("diag", "spherical"):
            cov = jnp.where(active.reshape((k,) + (1,) * (cov.ndim - 1)), cov, 1.0)
    return GMMParams(weights, means, cov)
