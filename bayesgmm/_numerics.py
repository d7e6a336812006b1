"""Mixture numerics written once, for both array back ends, and the float64 evaluation of every
number a result reports.

The functions here take NumPy or JAX arrays alike (``xp`` is the array namespace, found from the
arguments): the compiled engines call them on device arrays inside ``jit``, and the host calls
them on float64 NumPy arrays to *report* numbers. Reported totals (log-likelihood, BIC/AIC/ICL
entropy, scores, the MAP objective) are therefore recomputed here in float64 from the returned
parameters, whatever precision the fit ran in, and compile nothing (a new row count costs no
compilation).

Host evaluation standardises first: data and parameters are centred on the mixture mean and
divided by the mixture's standard deviation per feature, and the log-Jacobian is added back. So
data in any units (1e-30 ... 1e30, or one column in 1e-6 and another in 1e6) are scored as
accurately as unit-scale data.

The direct (Cholesky) Gaussian log density is used: ``-0.5 |L^-1 (x - mu)|^2 - log|L| - D/2 log 2pi``.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

from ._covariance_models import num_covariance_parameters
from ._threads import map_pieces

LOG_2PI = math.log(2.0 * math.pi)

#: Rows evaluated at once on the host (bounds the (K, rows, D) temporaries).
HOST_BLOCK_ROWS = 16384

#: Elements of the (draws, K, rows, D) temporaries of one row block of :func:`draws_log_density`.
DRAWS_BLOCK_ELEMENTS = 2**22

#: Inside :func:`component_log_density` (NumPy) the (..., K, rows, D) temporaries are kept to about
#: this many elements (2 MiB in float64), so that they stay in cache: at N=1e5, D=K=16 that ran
#: 2.3 times faster than one block of HOST_BLOCK_ROWS rows.
HOST_CACHE_ELEMENTS = 2**18

#: :func:`component_log_density` (NumPy, one set of rows, diagonal covariances) takes the
#: *expanded* form of a row block's squared Mahalanobis distances (:func:`_expanded_quadratic`)
#: where the bound on its rounding is below this, in the distance's units (twice nats); elsewhere
#: the centred form ``(x - mu_k)``, which cannot cancel.
EXPANDED_ROUNDING = 1e-9


def array_namespace(*arrays):
    """``(xp, scipy-like)`` for the arrays: NumPy + SciPy, or jax.numpy + jax.scipy."""
    for a in arrays:
        if type(a).__module__.startswith(("jax", "jaxlib")):
            import jax.numpy as jnp
            import jax.scipy as jsp

            return jnp, jsp
    return np, _SCIPY


class _SciPy:
    """SciPy's ``linalg`` and ``special`` as one namespace, each imported when first used: most
    callers of :func:`array_namespace` on NumPy arrays need only NumPy, and ``scipy.special``
    takes about 0.1 s to import (a warm NUTS process spent that after sampling)."""

    @property
    def linalg(self):
        import scipy.linalg

        return scipy.linalg

    @property
    def special(self):
        import scipy.special

        return scipy.special


_SCIPY = _SciPy()


# ----------------------------------------------------------------------------------------------
# Covariance structures
# ----------------------------------------------------------------------------------------------
def expand_covariances(covariances, covariance_type: str, num_components: int, num_features: int, *, dtype=None):
    """Covariances as ``(..., K, D, D)`` whatever the structure (leading batch axes allowed).

    ``full`` (..., K, D, D) is returned as is; ``tied`` (..., D, D) is broadcast over K;
    ``diag`` (..., K, D) and ``spherical`` (..., K) become diagonal matrices. With ``dtype``
    (NumPy), the covariances are first converted to a NumPy array of that type.
    """
    if dtype is not None:
        covariances = np.asarray(covariances, dtype=dtype)
    xp, _ = array_namespace(covariances)
    c = covariances
    k, d = num_components, num_features
    if covariance_type == "full":
        return c
    if covariance_type == "tied":
        return xp.broadcast_to(c[..., None, :, :], c.shape[:-2] + (k, d, d))
    eye = xp.eye(d, dtype=c.dtype)
    if covariance_type == "diag":
        return c[..., :, :, None] * eye
    return c[..., :, None, None] * eye


def diagonal_variances(covariances, covariance_type: str, num_components: int, num_features: int):
    """Per-component variances of each feature, ``(..., K, D)``."""
    xp, _ = array_namespace(covariances)
    c = covariances
    if covariance_type == "full":
        return xp.diagonal(c, axis1=-2, axis2=-1)
    if covariance_type == "tied":
        v = xp.diagonal(c, axis1=-2, axis2=-1)
        return xp.broadcast_to(v[..., None, :], v.shape[:-1] + (num_components, num_features))
    if covariance_type == "diag":
        return c
    return xp.broadcast_to(c[..., :, None], c.shape + (num_features,))


def num_free_parameters(num_components: int, num_features: int, covariance_type: str) -> int:
    """Free parameters of a K-component mixture (for BIC/AIC): weights, means and the covariance
    structure's or mclust model's own (:func:`bayesgmm._covariance_models.num_covariance_parameters`;
    scikit-learn and mclust count the four shared structures alike)."""
    k, d = num_components, num_features
    return num_covariance_parameters(covariance_type, k, d) + k * d + k - 1


def two_sum(a, b):
    """``(s, e)`` with ``s = fl(a + b)`` and ``a + b = s + e`` exactly (Knuth's TwoSum; no branch)."""
    s = a + b
    b_virtual = s - a
    return s, (a - (s - b_virtual)) + (b - b_virtual)


def compensated_sum(values, weights=None):
    """The sum over the last axis (of ``values * weights`` with ``weights``) as an unevaluated pair
    ``(high, low)`` (JAX arrays).

    Pairwise, each addition's rounding error kept (:func:`two_sum`) and the errors added up apart:
    ``high + low`` is the sum to about the rows' own rounding, where a plain float32 sum of 2,000
    log densities of about -3 is off by a few thousandths of a nat. EM's convergence test
    projects the remaining gain from successive changes of its objective, which near a fixed
    point are that small (``benchmarks/float32_floor.py``). In float64 the plain sum, low = 0:
    its rounding is far below any tolerance, and the pairwise levels cost small fits about a
    sixth of their time (Old Faithful, K=3: 65 -> 77 ms).
    """
    import jax.numpy as jnp

    if jnp.finfo(values.dtype).bits >= 64:  # float64 resolves the changes already: the plain sum
        total = jnp.sum(values, axis=-1) if weights is None else values @ weights
        return total, jnp.zeros(values.shape[:-1], values.dtype)
    if weights is not None:
        values = values * weights
    n = values.shape[-1]
    size = 1 << max(0, (n - 1).bit_length())
    v = jnp.pad(values, [(0, 0)] * (values.ndim - 1) + [(0, size - n)])
    errors = [jnp.zeros(values.shape[:-1] + (1,), values.dtype)]
    while v.shape[-1] > 1:
        half = v.shape[-1] // 2
        v, error = two_sum(v[..., :half], v[..., half:])
        errors.append(error)
    return v[..., 0], jnp.sum(jnp.concatenate(errors, axis=-1), axis=-1)  # one reduction


def add_to_pair(pair, value):
    """``pair + value`` (``pair`` from :func:`compensated_sum`) as a pair."""
    high, error = two_sum(pair[0], value)
    return high, pair[1] + error


def floored_weights(weights):
    """Mixture weights (any leading axes) with those that underflowed to 0 raised to the smallest
    normal number, so that a Dirichlet's log density of them stays finite: draws from a sparse
    Dirichlet (concentration << 1) underflow in float32 for the components they leave empty, and
    ``(alpha - 1) log 0`` is +inf."""
    xp, _ = array_namespace(weights)
    return xp.maximum(weights, xp.finfo(weights.dtype).tiny)


def in_turn(first, then):
    """``then`` (an array or a pytree of float arrays), with the same values, but computed from
    ``first`` too, so that whatever uses it runs after ``first`` (NumPy: ``then`` as is).

    For compiled programs with several batched LAPACK calls (Cholesky factors, eigenvalues,
    triangular solves) that do not depend on each other. XLA may run such calls at once, and
    jaxlib 0.10's CPU kernels split a large batch (lanes x K matrices of D x D, past about 2e5
    flops) into pieces on XLA's thread pool and wait there for them: two such calls at once
    occupy every thread of a two-core machine and wait for each other forever. Passing the
    second call's input through ``in_turn(first_result, input)`` orders them. The dependency is
    arithmetic (``then + 0 * sum(first)``, the sum made finite), which XLA keeps; an optimisation
    barrier, or a conditional with equal branches, does not survive compilation.
    """
    xp, _ = array_namespace(first)
    if xp is np:
        return then
    import jax

    total = xp.sum(xp.asarray(first, np.float32))
    nothing = 0.0 * xp.where(xp.isfinite(total), total, 0.0)  # +-0, computed (XLA does not fold 0 * x)
    return jax.tree_util.tree_map(lambda a: a + nothing.astype(a.dtype), then)


def smallest_variances(covariances, covariance_type: str, num_components: int, num_features: int):
    """Smallest eigenvalue of each component's covariance, ``(..., K)``."""
    xp, _ = array_namespace(covariances)
    if covariance_type in ("full", "tied"):
        return xp.linalg.eigvalsh(expand_covariances(covariances, covariance_type, num_components, num_features))[..., 0]
    return xp.min(diagonal_variances(covariances, covariance_type, num_components, num_features), axis=-1)


# ----------------------------------------------------------------------------------------------
# Gaussian log densities (direct Cholesky form)
# ----------------------------------------------------------------------------------------------
def inverse_cholesky(chol):
    """``L^-1`` of lower Cholesky factors ``chol`` (..., D, D) (JAX): one triangular solve against
    the identity, so that rows then go through it by a matrix product (see
    :func:`component_log_density`; the model's components do the same)."""
    import jax.numpy as jnp
    from jax.scipy.linalg import solve_triangular

    eye = jnp.broadcast_to(jnp.eye(chol.shape[-1], dtype=chol.dtype), chol.shape)
    return solve_triangular(chol, eye, lower=True)


def solve_lower(chol, rhs):
    """``chol^-1 rhs`` for lower-triangular ``chol`` (..., D, D) and ``rhs`` (..., D, M).

    JAX: a triangular solve. NumPy: :func:`numpy.linalg.solve`, which takes the batch in compiled
    code; SciPy's ``solve_triangular`` loops over a batch in Python and, once JAX is imported,
    took 2.7 ms a call for one 2 x 2 factor (80% of the VB KL divergence that every closed-form
    VB fit reports).
    """
    xp, sp = array_namespace(chol, rhs)
    if xp is np:
        return np.linalg.solve(chol, rhs)
    return sp.linalg.solve_triangular(chol, rhs, lower=True)


def density_factors(covariances, covariance_type: str, num_components: int, num_features: int):
    """``(logdet, factor)`` of :func:`component_log_density`: each covariance's log determinant
    (..., K) and its factor, the variances (..., K, D) (diagonal and spherical) or ``L^-T``
    (..., K, D, D) of ``Sigma = L L^T`` (full and tied), made once for any number of row blocks."""
    xp, _ = array_namespace(covariances)
    k, d = num_components, num_features
    if covariance_type in ("diag", "spherical"):
        var = diagonal_variances(covariances, covariance_type, k, d)  # (..., K, D)
        return xp.sum(xp.log(var), axis=-1), var
    chol = xp.linalg.cholesky(expand_covariances(covariances, covariance_type, k, d))  # (..., K, D, D)
    logdet = 2.0 * xp.sum(xp.log(xp.diagonal(chol, axis1=-2, axis2=-1)), axis=-1)
    if xp is np:
        # SciPy's solve_triangular loops over a batch in Python (minutes for thousands of
        # draws); NumPy inverts a batch of triangles in compiled code, then one matmul in the
        # rows' own (N, D) layout (3.5x faster than through a (D, N) transpose at D = 16)
        return logdet, np.swapaxes(np.linalg.inv(chol), -1, -2)
    # L^-1 (D x D, per component), then one matrix product over the rows in (N, D) layout:
    # XLA:CPU's triangular solve with N right-hand sides, and any (D, N) layout, run 20-40
    # times slower (the precise E-step of float32 EM spent 0.7 s per iteration there at
    # N=1e5, D=K=16); the rows stay centred on each mean, so nothing cancels
    return logdet, xp.swapaxes(inverse_cholesky(chol), -1, -2)


def component_log_density(x, means, covariances, covariance_type: str, *, factors=None):
    """``log N(x_n | mu_k, Sigma_k)`` for every row and component.

    Parameters
    ----------
    x : array (N, D)
    means : array (..., K, D)
    covariances : array, stored for ``covariance_type`` with the same leading axes as ``means``
    covariance_type : str
    factors : tuple, optional
        :func:`density_factors` of ``covariances``, made once by a caller that evaluates many
        row blocks (ignored where ``x`` has missing values).

    Returns
    -------
    array (..., N, K)
        NaN entries of ``x`` (NumPy) are missing values: a row's density is then the marginal
        density of its observed columns (:func:`observed_log_density`).
    """
    xp, _ = array_namespace(x, means, covariances)
    if xp is np and np.isnan(x).any():
        return observed_log_density(x, means, covariances, covariance_type)
    k, d = means.shape[-2:]
    logdet, factor = density_factors(covariances, covariance_type, k, d) if factors is None else factors

    def mahalanobis(rows):  # (..., K, rows) from rows (..., B, D), centred on each mean
        diff = rows[..., None, :, :] - means[..., :, None, :]  # (..., K, B, D)
        if covariance_type in ("diag", "spherical"):
            return xp.sum(diff**2 / factor[..., :, None, :], axis=-1)
        return xp.sum((diff @ factor) ** 2, axis=-1)

    scratch: dict = {}

    def mahalanobis_into(rows, out):  # NumPy: mahalanobis(rows) written into out (..., K, B)
        # the (..., K, B, D) temporaries are made once per call and reused by every block: a new
        # array of a few MiB per block is new memory from the OS whenever the allocator has just
        # returned the last one, and its page faults cost more than the arithmetic (44 ms instead of
        # 7 ms for 16384 rows at D = K = 16)
        diagonal = covariance_type in ("diag", "spherical")
        shape = out.shape + (d,)
        if scratch.get("shape") != shape:
            scratch.update(shape=shape, diff=np.empty(shape), y=None if diagonal else np.empty(shape),
                           quad=np.empty(out.shape),
                           factor=np.ascontiguousarray(1.0 / factor[..., :, :, None] if diagonal else factor))
        diff, y, quad_block, weights = scratch["diff"], scratch["y"], scratch["quad"], scratch["factor"]
        np.subtract(rows[..., None, :, :], means[..., :, None, :], out=diff)
        if diagonal:
            np.multiply(diff, diff, out=diff)
            np.matmul(diff, weights, out=quad_block[..., None])
        else:
            np.matmul(diff, weights, out=y)
            np.multiply(y, y, out=y)
            np.matmul(y, np.ones(d), out=quad_block)
        out[...] = quad_block

    batch = max(1, int(np.prod(means.shape[:-2])))
    block = max(64, HOST_CACHE_ELEMENTS // (batch * k * d))
    if xp is np:  # in row blocks whose temporaries stay in cache (HOST_CACHE_ELEMENTS)
        n = x.shape[-2]
        # component-major (..., K, N), returned as its (..., N, K) view: the callers' reductions over
        # components (logsumexp, max) then run along rows of N values (3-4 times faster than along
        # rows of K values, measured at K = 16)
        quad = np.empty(np.broadcast_shapes(x.shape[:-2], means.shape[:-2]) + (k, n))
        expanded = None
        if x.ndim == 2 and covariance_type in ("diag", "spherical") and block * k * d <= HOST_CACHE_ELEMENTS:
            expanded = _Expanded.of(means, factor)  # one set of rows: the expanded form where exact enough
        for start in range(0, n, block):
            rows = x[..., start : start + block, :]
            fast = None if expanded is None else _expanded_quadratic(rows, expanded)
            if fast is not None:
                quad[..., start : start + block] = fast
            else:
                mahalanobis_into(rows, quad[..., start : start + block])
        quad += logdet[..., :, None] + d * LOG_2PI  # in place (no second array of that size)
        quad *= -0.5
        return np.swapaxes(quad, -1, -2)
    logp = -0.5 * (mahalanobis(x) + logdet[..., :, None] + d * LOG_2PI)  # (..., K, N)
    return xp.swapaxes(logp, -1, -2)


class _Expanded(NamedTuple):
    """Diagonal covariances' factors for :func:`_expanded_quadratic` (components (..., K))."""

    precisions: np.ndarray  # (..., K, D)
    cross: np.ndarray  # -2 mu P, (..., K, D)
    constant: np.ndarray  # sum_d mu^2 P, (..., K)

    @staticmethod
    def of(means, variances) -> "_Expanded":
        precision = 1.0 / variances
        return _Expanded(precision, -2.0 * means * precision, np.sum(means * means * precision, axis=-1))


def _expanded_quadratic(rows, expanded: _Expanded):
    """Squared Mahalanobis distances (..., K, B) of ``rows`` (B, D) from components with diagonal
    covariances, through products of the raw rows with all components at once:
    ``x^2 P^T - 2 x (mu P)^T + sum_d mu^2 P`` (1.7 times faster than the centred form at
    D = K = 16). The terms cancel where a component is tight and far from the rows' frame, so the
    block's rounding is bounded first (dot products of D terms: at most about D eps times the sum
    of their magnitudes, here ``2 (x^2 P + mu^2 P)``) and None is returned where the bound passes
    :data:`EXPANDED_ROUNDING` (the caller then takes the centred form). The products have
    B D K <= :data:`HOST_CACHE_ELEMENTS` multiply-adds, small enough that BLAS runs them on the
    calling thread (OpenBLAS splits larger ones over its own threads, which, from several host
    threads at once, ran ten times slower)."""
    rounding = (2 * rows.shape[-1] + 4) * np.finfo(np.float64).eps
    with np.errstate(over="ignore", invalid="ignore"):
        squares = expanded.precisions @ (rows * rows).T  # (..., K, B)
        if not (np.max(squares, initial=0.0) + np.max(expanded.constant)) * rounding <= EXPANDED_ROUNDING:
            return None
    squares += expanded.cross @ rows.T
    squares += expanded.constant[..., :, None]
    return squares


def observed_log_density(x, means, covariances, covariance_type: str):
    """``log N(x_n,o | mu_k,o, Sigma_k,oo)`` over each row's observed (non-NaN) columns ``o``,
    shape (..., N, K): rows are grouped by their pattern of observed columns, and each group is
    scored with the marginal Gaussians of those columns (sub-vectors and sub-matrices)."""
    k, d = means.shape[-2:]
    if covariance_type == "spherical":
        covariances, covariance_type = diagonal_variances(covariances, "spherical", k, d), "diag"
    observed = ~np.isnan(x)
    patterns, inverse = np.unique(observed, axis=0, return_inverse=True)
    out = np.empty(means.shape[:-2] + (k, x.shape[0]))  # component-major, as component_log_density's
    for p, pattern in enumerate(patterns):
        rows, cols = np.flatnonzero(inverse.ravel() == p), np.flatnonzero(pattern)
        if covariance_type == "diag":
            sub = covariances[..., cols]
        elif covariance_type == "full":
            sub = covariances[..., cols, :][..., :, cols]
        else:  # tied
            sub = covariances[..., cols, :][..., cols]
        density = component_log_density(x[np.ix_(rows, cols)], means[..., cols], sub, covariance_type)
        out[..., rows] = np.swapaxes(density, -1, -2)
    return np.swapaxes(out, -1, -2)


def observed_log_jacobian(x, scale) -> np.ndarray | float:
    """``-sum_o log scale_o`` over each row's observed columns: the log-Jacobian of ``(x - shift) /
    scale`` for the densities of the observed columns (a float when nothing is missing)."""
    log_scale = np.log(scale)
    observed = ~np.isnan(x)
    return -float(np.sum(log_scale)) if observed.all() else -(observed @ log_scale)


def log_joint_components(x, weights, means, covariances, covariance_type: str, *, factors=None):
    """``log pi_k + log N(x_n | mu_k, Sigma_k)``, shape (..., N, K); empty components give -inf
    (``factors``: :func:`component_log_density`'s)."""
    xp, _ = array_namespace(x, weights, means, covariances)
    with np.errstate(divide="ignore"):
        log_w = xp.log(weights)
    return component_log_density(x, means, covariances, covariance_type, factors=factors) + log_w[..., None, :]


def finite_max(a, axis, keepdims=False):
    """``max`` along ``axis`` (NumPy), 0 where it is not finite (a slice of -inf: no shift), the
    shift that keeps ``exp(a - max)`` in range."""
    top = np.max(a, axis=axis, keepdims=keepdims)
    return np.where(np.isfinite(top), top, 0.0)


def logsumexp(a, axis):
    """``log sum exp`` along ``axis`` (NumPy: written out, three times faster than SciPy's on
    (N, K) arrays; a slice of -inf gives -inf)."""
    xp, sp = array_namespace(a)
    if xp is not np:
        return sp.special.logsumexp(a, axis=axis)
    top = finite_max(a, axis=axis, keepdims=True)
    shifted = a - top
    np.exp(shifted, out=shifted)  # in place: one temporary of a's size, not two
    with np.errstate(divide="ignore"):
        return np.squeeze(np.log(np.sum(shifted, axis=axis, keepdims=True)) + top, axis=axis)


def mixture_log_density(x, weights, means, covariances, covariance_type: str, *, factors=None):
    """Per-row marginal log density ``log sum_k pi_k N(x_n | mu_k, Sigma_k)``, shape (..., N)
    (``factors``: :func:`component_log_density`'s)."""
    return logsumexp(log_joint_components(x, weights, means, covariances, covariance_type, factors=factors), axis=-1)


# ----------------------------------------------------------------------------------------------
# Host evaluation in float64: standardised, in row blocks
# ----------------------------------------------------------------------------------------------
class Frame(NamedTuple):
    """An affine frame ``x -> (x - shift) / scale`` (float64, per feature) used to evaluate a
    mixture accurately whatever the data's units."""

    shift: np.ndarray
    scale: np.ndarray


def mixture_frame(weights, means, covariances, covariance_type: str) -> Frame:
    """The mixture's own mean and per-feature standard deviation (its total covariance's diagonal).

    With leading batch axes (posterior draws), the frame of their average.
    """
    w, m, c = (np.asarray(a, np.float64) for a in (weights, means, covariances))
    k, d = m.shape[-2:]
    var = diagonal_variances(c, covariance_type, k, d)
    w2 = w.reshape(-1, k)
    m2 = m.reshape(-1, k, d)
    v2 = var.reshape(-1, k, d)
    shift = np.einsum("sk,skd->d", w2, m2) / w2.shape[0]
    second = np.einsum("sk,skd->d", w2, v2 + (m2 - shift) ** 2) / w2.shape[0]
    scale = np.sqrt(second)
    scale = np.where(np.isfinite(scale) & (scale > 0), scale, 1.0)
    return Frame(shift, scale)


def to_frame(frame: Frame, weights, means, covariances, covariance_type: str):
    """Parameters (float64) expressed in ``frame``; diag/spherical become per-feature variances
    (a spherical covariance is not spherical in a per-feature frame). Returns ``(w, m, c, ct)``."""
    w, m, c = (np.asarray(a, np.float64) for a in (weights, means, covariances))
    k, d = m.shape[-2:]
    m = (m - frame.shift) / frame.scale
    if covariance_type in ("full", "tied"):
        c = c / np.multiply.outer(frame.scale, frame.scale)
        return w, m, c, covariance_type
    var = diagonal_variances(c, covariance_type, k, d) / frame.scale**2
    return w, m, var, "diag"


class RowScores(NamedTuple):
    """Float64 per-row evaluation of a mixture on data (original units).

    log_density : (N,) ``log p(x_n)``
    log_resp : (N, K) ``log p(z_n = k | x_n)``, or None when not asked for
    """

    log_density: np.ndarray
    log_resp: np.ndarray | None


def rows_in_frame(x, start, frame: Frame):
    """Rows ``start:start + HOST_BLOCK_ROWS`` of ``x`` in float64, in ``frame``."""
    return (np.asarray(x[start : start + HOST_BLOCK_ROWS], np.float64) - frame.shift) / frame.scale


def _scored_block(x, start, frame: Frame, w, m, c, ct):
    """Rows ``start:start + HOST_BLOCK_ROWS`` of ``x`` in the mixture's frame: their ``log pi_k +
    log N`` (B, K) there, the log density of each row there (B,) and in the original units (B,)."""
    xs = rows_in_frame(x, start, frame)
    lj = log_joint_components(xs, w, m, c, ct)
    ll = logsumexp(lj, axis=-1)
    return lj, ll, ll + observed_log_jacobian(xs, frame.scale)


def score_rows(x, weights, means, covariances, covariance_type: str, *, responsibilities: bool = False,
               frame: Frame | None = None) -> RowScores:
    """Float64 log density of every row (and, optionally, log responsibilities), in row blocks.

    A single parameter set (no batch axes). Compiles nothing; the blocks run on threads
    (:func:`bayesgmm._threads.map_pieces`), with the same numbers as in turn.
    """
    x = np.asarray(x)
    frame = frame or mixture_frame(weights, means, covariances, covariance_type)
    w, m, c, ct = to_frame(frame, weights, means, covariances, covariance_type)
    n = x.shape[0]
    dens = np.empty(n)
    resp = np.empty((n, m.shape[0])) if responsibilities else None

    def block(start):  # each block writes its own rows (blocks run on threads)
        with np.errstate(over="ignore"):  # rows too far for float64: density 0, responsibilities below
            lj, ll, dens_here = _scored_block(x, start, frame, w, m, c, ct)
        dens[start : start + len(ll)] = dens_here
        if resp is not None:
            with np.errstate(invalid="ignore"):
                resp[start : start + len(ll)] = lj - ll[:, None]
            for row in np.flatnonzero(np.isneginf(ll)):  # rare: no pass over the block otherwise
                values = np.asarray(x[start + row], np.float64)
                if np.all(np.isfinite(values[~np.isnan(values)])) and not np.all(np.isnan(values)):
                    resp[start + row] = _far_row_log_resp(values, frame, w, m, c, ct)

    map_pieces(block, range(0, n, HOST_BLOCK_ROWS))
    return RowScores(dens, resp)


def _far_row_log_resp(row, frame: Frame, w, m, c, ct) -> np.ndarray:
    """Log responsibilities (K,) of a finite row so far from every component that each one's
    squared Mahalanobis distance overflows (its density is 0 in float64, their ratios 0/0): the
    limit along the row's direction, all of it on the component(s) with the smallest distance
    relative to the row's size (``q_k / s^2``, ``s`` the row's largest standardised entry, is
    finite where ``q_k`` is not)."""
    xs = (np.asarray(row, np.float64) - frame.shift) / frame.scale
    seen = ~np.isnan(xs)
    if not seen.all():  # a row with missing entries: the limit on its observed columns (their marginal)
        o = np.flatnonzero(seen)
        xs, m = xs[o], m[:, o]
        c = {"full": lambda: c[:, o][:, :, o], "tied": lambda: c[o][:, o], "diag": lambda: c[:, o]}.get(ct, lambda: c)()
    size = float(np.max(np.abs(xs)))
    zero = np.zeros((1, xs.shape[0]))
    with np.errstate(divide="ignore", over="ignore", invalid="ignore"):
        relative = -2.0 * (component_log_density(xs[None] / size, m / size, c, ct)[0]
                           - component_log_density(zero, np.zeros_like(m), c, ct)[0])  # q_k / s^2
    relative = np.where(w > 0, relative, np.inf)
    nearest = relative <= np.min(relative) * (1 + 1e-12)
    with np.errstate(divide="ignore"):
        return np.log(nearest / np.sum(nearest))


class Totals(NamedTuple):
    """Weighted sums over rows in float64: log-likelihood, responsibility entropy, counts N_k, and
    the classification entropy ``-sum_n log max_k r_nk`` (ICL's penalty, mclust's)."""

    log_likelihood: float
    entropy: float
    counts: np.ndarray
    classification_entropy: float


def totals(x, weights, means, covariances, covariance_type: str, sample_weight=None) -> Totals:
    """``sum_n w_n log p(x_n)``, the entropy ``-sum_n w_n sum_k r_nk log r_nk``, the expected counts
    ``N_k = sum_n w_n r_nk`` and the classification entropy ``-sum_n w_n log max_k r_nk`` (ICL's
    penalty as Biernacki, Celeux & Govaert 2000 and mclust define it: the log-probability of
    each row's most probable label), all in float64 from the given parameters.

    One pass over the rows: each row block (on threads, :func:`bayesgmm._threads.map_pieces`)
    gives its four partial sums, added in block order, so the numbers do not depend on the
    number of threads. One exponential per row and component (the responsibilities are the
    shifted exponentials of ``log sum exp`` over their sum): at N = 1e5, D = K = 16 24 ms against
    29 ms diagonal, 53 against 58 full (medians of 15 interleaved calls, two cores), with the
    small entropies of nearly certain rows 10-20 times closer to an extended-precision
    recomputation than through ``exp(lj - ll)``.
    """
    x = np.asarray(x)
    frame = mixture_frame(weights, means, covariances, covariance_type)
    w, m, c, ct = to_frame(frame, weights, means, covariances, covariance_type)
    row_weight = None if sample_weight is None else np.asarray(sample_weight, np.float64)

    def block(start):
        # one exponential a row and component: r = exp(lj - top) / s, log s = ll - top, so
        # log r = (lj - top) - log s and max_k log r_nk = -log s
        xs = rows_in_frame(x, start, frame)
        shifted = log_joint_components(xs, w, m, c, ct)  # a new array: shifted in place
        top = finite_max(shifted, axis=1)
        shifted -= top[:, None]
        r = np.exp(shifted)
        sums = np.sum(r, axis=1)
        with np.errstate(divide="ignore", invalid="ignore"):
            log_s = np.log(sums)
            ll = top + log_s
            log_r = shifted  # in place: -inf for empty components (NaN where a row has no density)
            log_r -= log_s[:, None]
            r *= (1.0 / sums)[:, None]
        dens = ll + observed_log_jacobian(xs, frame.scale)
        row_label = np.where(np.isfinite(ll), -log_s, 0.0)  # log max_k r_nk
        wb = None if row_weight is None else row_weight[start : start + len(ll)]
        counts = r.sum(0) if wb is None else wb @ r
        positive = r > 0  # r log r where r > 0, else 0 (r = 0: log r = -inf; NaN: a row without density)
        np.multiply(r, log_r, out=r, where=positive)
        np.copyto(r, 0.0, where=~positive)
        row_entropy = r.sum(1)  # sum_k r_nk log r_nk
        if wb is None:
            return float(np.sum(dens)), float(np.sum(row_entropy)), counts, float(np.sum(row_label))
        return float(wb @ dens), float(wb @ row_entropy), counts, float(wb @ row_label)

    parts = map_pieces(block, range(0, x.shape[0], HOST_BLOCK_ROWS))
    log_lik = sum(p[0] for p in parts)
    entropy = -sum(p[1] for p in parts)
    counts = sum((p[2] for p in parts), np.zeros(m.shape[0]))
    labels = -sum(p[3] for p in parts)
    return Totals(float(log_lik), float(max(entropy, 0.0)), counts, float(max(labels, 0.0)))


def _draws_blocks(x, weights, means, covariances, covariance_type: str, frame: Frame | None, each):
    """``[each(draws, start, block) ...]`` over blocks of S parameter sets (leading axis) and rows
    of ``x``, row block by row block, ``block`` the (draws, rows) float64 ``log p(x_n | theta_s)``
    of the draws ``draws`` (a slice), on threads, in that order.

    The covariances are factorised once (:func:`density_factors`); the blocks hold up to
    :data:`HOST_BLOCK_ROWS` rows and as many draws as keep the (draws, K, rows, D) temporaries
    near :data:`DRAWS_BLOCK_ELEMENTS`. Row blocks over all draws at once made 6-row blocks at
    S = 4000, K = 20, D = 8, each refactorising all 80,000 covariances: 43 s at N = 2000, and
    about 430 s of a Gibbs fit's bookkeeping at N = 20,000 (review of Gibbs at scale)."""
    x = np.asarray(x)
    frame = frame or mixture_frame(weights, means, covariances, covariance_type)
    w, m, c, ct = to_frame(frame, weights, means, covariances, covariance_type)
    s, k, d = w.shape[0], m.shape[-2], m.shape[-1]
    n = x.shape[0]
    rows = max(1, min(n, HOST_BLOCK_ROWS, DRAWS_BLOCK_ELEMENTS // max(1, k * d)))
    draws = max(1, min(s, DRAWS_BLOCK_ELEMENTS // max(1, k * rows * d)))
    logdet, factor = density_factors(c, ct, k, d)  # tied: (S, K, D, D), expanded to every component

    def one(piece):
        first, start = piece
        taken = slice(first, first + draws)
        xs = (np.asarray(x[start : start + rows], np.float64) - frame.shift) / frame.scale
        log_p = mixture_log_density(xs, w[taken], m[taken], c[taken], ct, factors=(logdet[taken], factor[taken]))
        return each(taken, start, log_p + observed_log_jacobian(xs, frame.scale))

    return map_pieces(one, [(first, start) for start in range(0, n, rows) for first in range(0, s, draws)])


def draws_log_density(x, weights, means, covariances, covariance_type: str, *, frame: Frame | None = None):
    """Float64 ``log p(x_n | theta_s)`` for S parameter sets (leading axis), shape (S, N)."""
    out = np.empty((np.shape(weights)[0], np.shape(x)[0]))

    def write(taken, start, block):  # each block writes its own entries (blocks run on threads)
        out[taken, start : start + block.shape[1]] = block

    _draws_blocks(x, weights, means, covariances, covariance_type, frame, write)
    return out


def draws_log_likelihood(x, weights, means, covariances, covariance_type: str, *, frame: Frame | None = None):
    """Float64 ``sum_n log p(x_n | theta_s)`` for S parameter sets (leading axis), shape (S,):
    :func:`draws_log_density`'s rows summed, block by block (memory of one block, whatever N),
    the row blocks added in row order."""
    total = np.zeros(np.shape(weights)[0])
    for taken, row_sums in _draws_blocks(x, weights, means, covariances, covariance_type, frame,
                                         lambda taken, start, block: (taken, block.sum(axis=1))):
        total[taken] += row_sums
    return total


# ----------------------------------------------------------------------------------------------
# The conjugate prior's log density, float64 on the host
# ----------------------------------------------------------------------------------------------
def _log_inverse_wishart(sigma, df, psi):
    from scipy.special import multigammaln

    d = psi.shape[-1]
    chol_s = np.linalg.cholesky(sigma)
    chol_p = np.linalg.cholesky(psi)
    logdet_s = 2.0 * np.sum(np.log(np.diagonal(chol_s, axis1=-2, axis2=-1)), -1)
    logdet_p = 2.0 * np.sum(np.log(np.diagonal(chol_p)))
    a = np.linalg.solve(chol_s, np.broadcast_to(chol_p, sigma.shape))  # L_s^-1 L_p
    trace = np.sum(a**2, axis=(-2, -1))  # tr(Sigma^-1 Psi)
    return (0.5 * df * logdet_p - 0.5 * df * d * math.log(2.0) - multigammaln(0.5 * df, d)
            - 0.5 * (df + d + 1) * logdet_s - 0.5 * trace)


def _log_inverse_gamma(v, shape, rate):
    from scipy.special import gammaln

    return shape * np.log(rate) - gammaln(shape) - (shape + 1) * np.log(v) - rate / v


def dirichlet_log_density(weights, concentration):
    """``log Dirichlet(weights | concentration)`` over the last axis (NumPy, float64); a zero weight
    gives -inf (or +inf under a concentration below 1), without a warning."""
    from scipy.special import gammaln

    a = np.broadcast_to(np.asarray(concentration, np.float64), np.shape(weights)[-1:])
    with np.errstate(divide="ignore"):
        return gammaln(a.sum()) - gammaln(a).sum() + np.sum((a - 1.0) * np.log(weights), axis=-1)


def log_prior(params, prior, covariance_type: str, active=None) -> float:
    """``log p(pi) + sum_k log p(mu_k, Sigma_k)`` in float64 (the prior terms of the model).

    ``prior`` is a :class:`bayesgmm.params.PriorArrays` for the same units as ``params``;
    ``active`` (K,) bool restricts the prior to the sub-model of the active components (as
    :func:`bayesgmm.model.log_prior`). The same density as the NumPyro model's (tested).
    """
    w, m, c = (np.asarray(a, np.float64)[None] for a in params)
    return float(draws_log_prior(w, m, c, prior, covariance_type, active=active)[0])


def draws_log_prior(weights, means, covariances, prior, covariance_type: str, active=None, *,
                    with_weights: bool = True) -> np.ndarray:
    """:func:`log_prior` of S parameter sets (leading axis of each array), shape (S,), float64.

    The weights' term is the Dirichlet's (of the active weights with ``active``); without it
    (``with_weights=False``) the means' and covariances' terms alone, for a caller that adds
    another weight prior's (stick-breaking: :func:`bayesgmm._sticks.weights_log_density`).
    """
    w, m, c = (np.asarray(a, np.float64) for a in (weights, means, covariances))
    alpha, m0, kappa0, nu0, psi = (np.asarray(a, np.float64) for a in prior)
    k, d = m.shape[-2:]
    act = np.ones(k, bool) if active is None else np.asarray(active, bool)
    if with_weights and act.sum() > 1:
        lp = dirichlet_log_density(w[:, act], np.broadcast_to(alpha, (k,))[act])
    else:
        lp = np.zeros(w.shape[0])
    if covariance_type in ("full", "tied"):
        if covariance_type == "full":
            lp = lp + np.sum(_log_inverse_wishart(c[:, act], nu0, psi), axis=-1)
        else:
            lp = lp + _log_inverse_wishart(c, nu0, psi)
        covs = expand_covariances(c, covariance_type, k, d)[:, act] / kappa0
        chol = np.linalg.cholesky(covs)
        y = np.linalg.solve(chol, (m[:, act] - m0)[..., None])[..., 0]
        logdet = 2.0 * np.sum(np.log(np.diagonal(chol, axis1=-2, axis2=-1)), -1)
        return lp + np.sum(-0.5 * (np.sum(y**2, -1) + logdet + d * LOG_2PI), axis=-1)
    var = diagonal_variances(c, covariance_type, k, d)[:, act]
    rate = 0.5 * np.broadcast_to(psi, (d,)) if covariance_type == "diag" else 0.5 * float(psi)
    ig = _log_inverse_gamma(var if covariance_type == "diag" else var[..., 0], 0.5 * nu0, rate)
    lp = lp + np.sum(ig, axis=tuple(range(1, ig.ndim)))
    mvar = var / kappa0
    return lp + np.sum(-0.5 * ((m[:, act] - m0) ** 2 / mvar + np.log(mvar) + LOG_2PI), axis=(-2, -1))


# ----------------------------------------------------------------------------------------------
# Degeneracy: empty, collapsed and spurious components
# ----------------------------------------------------------------------------------------------
#: A component resting on fewer than 2 (D + 1) observations' worth of responsibility whose smallest
#: variance is below this fraction of the data's (standardised scale) is a spurious maximiser.
SPURIOUS_VARIANCE_RATIO = 1e-2

#: ... and one resting on fewer than :data:`SPURIOUS_FEW_POINTS` (D + 1) observations whose smallest
#: variance is below this fraction (a standard deviation of about 3% of the data's): a few points
#: nearly on a line or a plane. On Old Faithful at K = 4 the highest likelihood that 2000 k-means++
#: restarts found (1 in about 500) fits 9 eruptions on a line of waiting time against duration
#: (smallest variance 4e-4 of the data's); on 60 points of two clusters (D = 2) the default fit
#: returned a component on 6.2 points with 4.5e-4, just above the first rule's count, with an
#: adjusted Rand index of -0.08 against the truth where k-means had 1.
SPURIOUS_FLAT_RATIO = 1e-3
SPURIOUS_FEW_POINTS = 5

#: Both ratios are of the data's variance, or of this many times the median smallest variance of
#: the well-supported components (on at least ``SPURIOUS_FEW_POINTS (D + 1)`` observations) where
#: that is smaller: with many clusters spread far apart every cluster is narrow against the data
#: (64 unit-variance clusters at least 5 sd apart in D = 4: about 1e-3 of the data's variance), and
#: genuine clusters of 20-22 points were flagged as spurious in every fit from the truth, which the
#: search then avoided and ``select`` dropped (review of large K). A component then counts as
#: spurious where its smallest variance is below the typical component's (first rule) or a tenth
#: of it (second rule); on Old Faithful's and the two-cluster examples above the data's variance
#: is still the smaller reference.
SPURIOUS_LOCAL_SCALE = 100.0


#: Round-off floor of full and tied covariances, in ulps of their mean variance: the M-step adds
#: it (:func:`bayesgmm._stats.m_step`), and a smallest variance within a few times of it is collapsed.
ROUNDOFF_ULPS = 16.0


def collapsed_mask(covariances, covariance_type: str, reg_covar, eps, num_components: int, num_features: int, *,
                   per_feature: bool = False):
    """Components whose smallest variance sits on a floor, ``(..., K)`` (standardised scale): the
    regularisation ``10 reg_covar``, the resolution ``100 eps^2``, or for full and tied
    covariances 4 times the M-step's round-off floor (:func:`on_roundoff_floor`; ``per_feature``
    for mclust's constrained models, whose floor is relative to each feature's own variance)."""
    xp, _ = array_namespace(covariances)
    k, d = num_components, num_features
    smallest = smallest_variances(covariances, covariance_type, k, d)
    flagged = smallest <= xp.maximum(10.0 * reg_covar, RESOLUTION_ULPS2 * eps**2)
    if covariance_type in ("full", "tied"):
        flagged = flagged | on_roundoff_floor(covariances, covariance_type, eps, k, d, 4.0, per_feature=per_feature,
                                              smallest=smallest)
    return flagged


#: The resolution under every variance, in squared ulps of the standardised scale.
RESOLUTION_ULPS2 = 100.0


def on_roundoff_floor(covariances, covariance_type: str, eps, num_components: int, num_features: int, factor: float, *,
                      per_feature: bool = False, smallest=None):
    """(..., K) bool: full or tied covariances whose smallest variance is within ``factor`` times
    the round-off floor the M-step adds: ``ROUNDOFF_ULPS eps tr(Sigma) / D`` along every direction
    (:func:`bayesgmm._stats.m_step`), or with ``per_feature`` that many ulps of each feature's own
    variance (mclust's constrained models, :mod:`bayesgmm._constrained`: on data of one common
    scale a floor relative to the mean variance would swamp the features of small spread), i.e.
    the smallest eigenvalue of the correlation form ``S^-1/2 Sigma S^-1/2`` (``S`` its diagonal)
    within ``factor ROUNDOFF_ULPS eps``. ``smallest``: the covariances' smallest eigenvalues, when
    the caller has them. NumPy or JAX."""
    xp, _ = array_namespace(covariances)
    dense = expand_covariances(covariances, covariance_type, num_components, num_features)
    if per_feature:
        scale = xp.sqrt(xp.diagonal(dense, axis1=-2, axis2=-1))
        correlation = dense / (scale[..., :, None] * scale[..., None, :])
        if smallest is not None:  # after the caller's eigenvalues: one batched LAPACK call at a time
            correlation = in_turn(smallest, correlation)
        return xp.linalg.eigvalsh(correlation)[..., 0] <= factor * ROUNDOFF_ULPS * eps
    trace = xp.trace(dense, axis1=-2, axis2=-1)
    smallest = xp.linalg.eigvalsh(dense)[..., 0] if smallest is None else smallest
    return smallest <= factor * ROUNDOFF_ULPS * eps * trace / num_features


def fast_form_error(means, covariances, covariance_type: str, eps, inv_trace=None):
    """The fast (moment) form's rounding of each component's statistics, relative, (..., K),
    on the standardised scale: ``eps (|mu_k|^2 + tr Sigma_k) tr Sigma_k^-1`` for full and tied
    covariances (``inv_trace``, ``tr Sigma_k^-1``, from the caller's factors), ``eps sum_d
    (mu_kd^2 + var_kd) / var_kd`` for diag and spherical (each feature's terms on their own).
    NumPy or JAX (:func:`bayesgmm._stats.needs_precise`, :func:`unresolved_mask`)."""
    xp, _ = array_namespace(means, covariances)
    k, d = means.shape[-2:]
    var = diagonal_variances(covariances, covariance_type, k, d)
    if covariance_type in ("full", "tied"):
        return eps * (xp.sum(means**2, -1) + xp.sum(var, -1)) * inv_trace
    return eps * xp.sum((means**2 + var) / var, -1)


#: :func:`unresolved_mask`: a component whose moment-form rounding reaches this share of its variance.
UNRESOLVED_FACTOR = 0.1


def unresolved_mask(means, covariances, covariance_type: str, eps) -> np.ndarray:
    """(K,) bool, NumPy: components whose variance the fast (moment) form of the statistics
    cannot resolve, on the standardised scale: its rounding (:func:`fast_form_error`, the
    quantity :func:`bayesgmm._stats.needs_precise` bounds) reaches :data:`UNRESOLVED_FACTOR`.
    For engines that take that form only (streaming EM): in float32 a component on repeated
    values stays about ``eps |mu|^2`` (1e-6) above zero there instead of collapsing, just above
    every other floor."""
    mu = np.asarray(means, np.float64)
    cov = np.asarray(covariances, np.float64)
    k, d = mu.shape
    with np.errstate(all="ignore"):
        inv_trace = None
        if covariance_type in ("full", "tied"):
            inv_trace = np.array([np.trace(np.linalg.pinv(c)) for c in expand_covariances(cov, covariance_type, k, d)])
        factor = fast_form_error(mu, cov, covariance_type, eps, inv_trace)
    return ~(factor < UNRESOLVED_FACTOR)


def spurious_reference(counts, smallest, num_features: int, active=None):
    """The variance the spurious rules compare with, ``(...)``: 1 (the data's, standardised) or
    :data:`SPURIOUS_LOCAL_SCALE` times the median smallest variance of the components on at least
    ``SPURIOUS_FEW_POINTS (D + 1)`` observations, whichever is smaller (1 where there are none).
    NumPy or JAX; no NaN arithmetic (the median by sorting)."""
    xp, _ = array_namespace(counts, smallest)
    supported = counts >= SPURIOUS_FEW_POINTS * (num_features + 1)
    if active is not None:
        supported = supported & active
    ordered = xp.sort(xp.where(supported, smallest, xp.inf), axis=-1)
    num = xp.sum(supported, axis=-1)[..., None]
    low = xp.take_along_axis(ordered, xp.maximum((num - 1) // 2, 0), axis=-1)[..., 0]
    high = xp.take_along_axis(ordered, num // 2, axis=-1)[..., 0]
    return xp.minimum(1.0, SPURIOUS_LOCAL_SCALE * (0.5 * low + 0.5 * high))


def degenerate_mask(counts, covariances, covariance_type: str, reg_covar, eps, num_features: int, active=None, *,
                    per_feature: bool = False):
    """Which components are degenerate, on the standardised scale (data variance 1 per feature).

    A component is degenerate when it is

    * **empty**: it holds less than one observation's worth of responsibility (``N_k < 1``);
    * **collapsed**: its smallest variance sits on a floor (:func:`collapsed_mask`);
    * **spurious**: it rests on fewer than ``2 (D + 1)`` observations (twice what a full covariance
      needs) with a smallest variance below :data:`SPURIOUS_VARIANCE_RATIO` of the data's, or on
      fewer than ``5 (D + 1)`` with one below :data:`SPURIOUS_FLAT_RATIO` (a few points nearly on
      a line or a plane; both of the typical component's variance where that is far below the
      data's, :func:`spurious_reference`): the classic spurious local maximiser of the mixture likelihood (a
      component fitted to a handful of nearby points; McLachlan & Peel 2000, section 3.10). Not
      applied to ``tied``, whose covariance is shared.

    Works on NumPy and JAX arrays (``(..., K)`` counts); inactive components are never flagged.
    """
    xp, _ = array_namespace(counts, covariances)
    k, d = counts.shape[-1], num_features
    smallest = smallest_variances(covariances, covariance_type, k, d)
    empty = counts < 1.0
    flagged = empty | collapsed_mask(covariances, covariance_type, reg_covar, eps, k, d, per_feature=per_feature)
    if covariance_type != "tied":
        scale = spurious_reference(counts, smallest, d, active)[..., None]
        flagged = flagged | ((counts < 2.0 * (d + 1)) & (smallest < SPURIOUS_VARIANCE_RATIO * scale))
        flagged = flagged | ((counts < SPURIOUS_FEW_POINTS * (d + 1)) & (smallest < SPURIOUS_FLAT_RATIO * scale))
    if active is not None:
        flagged = flagged & active
    return flagged


def degenerate_message(components, counts, covariances, covariance_type: str, reg_covar: float, eps: float,
                       num_features: int, engine: str = "EM", map_fit: bool = False, per_feature: bool = False) -> str:
    """The warning for degenerate components (standardised covariances): which, why, and what to do
    (``per_feature`` as :func:`collapsed_mask`'s)."""
    counts = np.asarray(counts, np.float64)
    on_floor = collapsed_mask(np.asarray(covariances, np.float64), covariance_type, reg_covar, eps, len(counts),
                              num_features, per_feature=per_feature)
    empty = [i for i in components if counts[i] < 1.0]
    collapsed = [i for i in components if counts[i] >= 1.0 and on_floor[i]]
    # float64: many points with a spread of their own near the floor (their variance 1% or more
    # above it; duplicated points have none): a cluster tighter than the floor allows (some 1e4
    # times narrower than the data's spread at the default), not a spurious maximiser. (In float32
    # the fast form's rounding lifts duplicated points above the floor too.)
    cov64 = np.asarray(covariances, np.float64)
    k = len(counts)
    smallest = smallest_variances(cov64, covariance_type, k, num_features)
    own_spread = smallest > 1.01 * max(float(reg_covar), RESOLUTION_ULPS2 * eps**2)
    if covariance_type in ("full", "tied"):
        own_spread = own_spread & ~on_roundoff_floor(cov64, covariance_type, eps, k, num_features, 1.01,
                                                     per_feature=per_feature, smallest=smallest)
    tight = [i for i in collapsed if eps < 1e-10 and reg_covar > 0 and counts[i] >= 2 * (num_features + 1)
             and own_spread[i]]
    collapsed = [i for i in collapsed if i not in tight]
    spurious = [i for i in components if i not in empty and i not in collapsed and i not in tight]
    parts = []
    if empty:
        parts.append(f"component(s) {empty} hold less than one observation (the data support fewer than K components)")
    if collapsed:
        parts.append(f"component(s) {collapsed} have a covariance collapsed onto the regularisation floor")
    if tight:
        held = ", ".join(f"{counts[i]:.1f}" for i in tight)
        parts.append(
            f"component(s) {tight} on {held} observation(s) have a variance within 10 times the regularisation "
            "floor (reg_covar times each feature's robust variance): clusters that tight are widened by it, so pass a "
            "smaller reg_covar (e.g. 1e-14, or 0) if they are real")
    if spurious:
        held = ", ".join(f"{counts[i]:.1f}" for i in spurious)
        parts.append(
            f"component(s) {spurious} rest on {held} observation(s) with a variance below "
            f"{SPURIOUS_VARIANCE_RATIO:g} of the data's, or on a few more nearly on a line or plane (a variance below "
            f"{SPURIOUS_FLAT_RATIO:g} of the data's; of {SPURIOUS_LOCAL_SCALE:g} times the typical component's where that "
            "is smaller): a spurious maximiser"
        )
    fixes = ["use fewer components"]
    if not map_fit:
        fixes.append("fit MAP-EM with prior=bayesgmm.Prior.default(x, K)")
    if collapsed and not map_fit:
        fixes.append("increase reg_covar")
    coarse = ""
    if eps >= 1e-10 and any(counts[i] >= 2 * (num_features + 1) for i in collapsed):
        coarse = (" If they are real clusters far narrower than the data's spread, fit in float64 "
                  "(jax.config.update('jax_enable_x64', True)) with a smaller reg_covar (e.g. 1e-14, or 0).")
    return f"{engine} " + "; ".join(parts) + ". If unintended, " + ", ".join(fixes[:-1]) + (
        " or " if len(fixes) > 1 else "") + fixes[-1] + "." + coarse


__all__ = [
    "Frame",
    "RowScores",
    "Totals",
    "component_log_density",
    "degenerate_mask",
    "collapsed_mask",
    "degenerate_message",
    "unresolved_mask",
    "fast_form_error",
    "diagonal_variances",
    "draws_log_density",
    "expand_covariances",
    "log_joint_components",
    "log_prior",
    "mixture_frame",
    "mixture_log_density",
    "num_free_parameters",
    "score_rows",
    "smallest_variances",
    "to_frame",
    "totals",
]
