"""M-steps of mclust's constrained covariance models (JAX, pure functions).

Given the responsibilities' counts ``n_k`` and centred scatter matrices ``W_k`` (in the layout
:func:`bayesgmm._covariance_models.storage` gives the model), each function returns the
covariances maximising ``sum_k [ -n_k/2 log|Sigma_k| - 1/2 tr(W_k Sigma_k^-1) ]`` over the model's
constraint set ``Sigma_k = lambda_k D_k A_k D_k^T`` (Celeux & Govaert 1995, section 3):

* closed forms: EII, EEI, EVI, EVV, EEV (and the classic VII, VVI, EEE, VVV);
* alternating updates of volume and shared shape, which decrease the objective at every step:
  VEI, VEE and VEV (Celeux & Govaert's algorithms; in VEV the orientations are the eigenvectors
  of each ``W_k`` whatever the shape);
* a shared orientation ``D`` (EVE, VVE): sweeps of exact plane (Jacobi) rotations of ``D``
  minimising ``f(D) = sum_k tr(W_k D Lambda_k^-1 D^T)`` for fixed eigenvalues, alternated with
  the closed-form eigenvalues (:func:`_jacobi_sweep`). It decreases the objective at every step,
  as the minorise-maximise update of Browne & McNicholas (2014) does, without that update's
  cancellation in float32.

The iterative models run :data:`INNER_STEPS` updates per M-step, started from the previous
iteration's covariances when given (so each M-step improves on them: a generalised EM, which
converges to a stationary point of the constrained likelihood), from the pooled scatter
otherwise. ``reg_covar`` is added to every scatter as ``n_k reg_covar I`` before the
constrained maximisation, so the regularised covariances keep the constraint exactly (for the
classic four it equals scikit-learn's ``+ reg_covar`` afterwards), with, for full matrices, a
round-off floor of :data:`bayesgmm._numerics.ROUNDOFF_ULPS` ulps of each feature's variance.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from ._covariance_models import storage
from ._numerics import ROUNDOFF_ULPS, in_turn

__all__ = ["INNER_STEPS", "covariances"]

#: Updates of an iterative model's shared parts within one M-step.
INNER_STEPS = 30


def _geometric_mean(v):
    return jnp.exp(jnp.mean(jnp.log(v), axis=-1))


def _safe(v):
    return jnp.maximum(v, jnp.finfo(v.dtype).tiny)


def _eigh_descending(w):
    values, vectors = jnp.linalg.eigh(w)
    return _safe(values[..., ::-1]), vectors[..., ::-1]


def _shared_from_previous(previous, on):
    """The mean over active components of their normalised (determinant 1) matrices or vectors."""
    return jnp.sum(on.reshape((-1,) + (1,) * (previous.ndim - 1)) * previous, 0) / jnp.sum(on)


def _volume_shape_alternation(values, counts, on, d, shape0):
    """VEI / VEV: volumes ``lambda_k`` and one shape ``A`` (determinant 1) for eigenvalue (or
    diagonal) vectors ``values`` (K, D); returns ``(lambda (K,), A (D,))``."""
    def volumes(shape):
        return _safe(jnp.sum(values / shape, -1) / (d * counts))

    def step(_, shape):
        pooled = jnp.sum(jnp.where(on[:, None] > 0, values / volumes(shape)[:, None], 0.0), 0)
        return pooled / _geometric_mean(_safe(pooled))

    shape = jax.lax.fori_loop(0, INNER_STEPS, step, shape0)
    return volumes(shape), shape


def _jacobi_sweep(orientation, projected, inverse_eigenvalues, on):
    """One sweep of exact plane rotations of the shared orientation for fixed eigenvalues.

    ``projected`` (K, D, D) is ``D^T W_k D``. Rotating columns ``i, j`` of ``D`` by ``theta``
    changes ``f(D) = sum_k tr(W_k D Lambda_k^-1 D^T)`` by ``B cos 2theta + C sin 2theta`` (up to a
    constant), minimised exactly at ``2theta = atan2(-C, -B)``: every rotation decreases ``f``,
    and no large terms cancel (the minorise-maximise update ``F = sum_k (M_k D - W_k D
    Lambda_k^-1)`` of Browne & McNicholas loses float32's precision to ``M_k``)."""
    d = orientation.shape[0]
    if d == 1:  # no plane to rotate in (and a loop over no pairs would still trace an index into none)
        return orientation
    rows, cols = zip(*[(i, j) for i in range(d) for j in range(i + 1, d)])
    rows, cols = jnp.asarray(rows, jnp.int32), jnp.asarray(cols, jnp.int32)

    def rotate(t, carry):
        orientation, projected = carry
        i, j = rows[t], cols[t]
        u, v = inverse_eigenvalues[:, i], inverse_eigenvalues[:, j]
        b = 0.5 * jnp.sum(on * (projected[:, i, i] - projected[:, j, j]) * (u - v))
        c_ = jnp.sum(on * projected[:, i, j] * (u - v))
        theta = jnp.where(b * b + c_ * c_ > 0, 0.5 * jnp.arctan2(-c_, -b), 0.0)
        cos, sin = jnp.cos(theta), jnp.sin(theta)
        di, dj = orientation[:, i], orientation[:, j]
        orientation = orientation.at[:, i].set(cos * di + sin * dj).at[:, j].set(cos * dj - sin * di)
        ri, rj = projected[:, i, :], projected[:, j, :]
        projected = projected.at[:, i, :].set(cos * ri + sin * rj).at[:, j, :].set(cos * rj - sin * ri)
        ci, cj = projected[:, :, i], projected[:, :, j]
        projected = projected.at[:, :, i].set(cos * ci + sin * cj).at[:, :, j].set(cos * cj - sin * ci)
        return orientation, projected

    return jax.lax.fori_loop(0, rows.shape[0], rotate, (orientation, projected))[0]


def _common_orientation(w, counts, on, n, d, equal_volume, previous):
    """EVE (``equal_volume``) and VVE: ``Sigma_k = D Lambda_k D^T`` with one orientation ``D``."""
    def project(orientation):
        return jnp.einsum("ia,kij,jb->kab", orientation, w, orientation)  # D^T W_k D

    def eigenvalues(projected):
        q = _safe(jnp.diagonal(projected, axis1=-2, axis2=-1))  # (K, D)
        if not equal_volume:
            return q / counts[:, None]
        g = _geometric_mean(q)
        return (jnp.sum(on * g) / n) * q / g[:, None]

    if previous is None:
        seed = jnp.einsum("k,kij->ij", on, w)
    else:  # a generic combination of the previous covariances shares their eigenvectors
        mix = on * (1.0 + 0.6180339887 * jnp.arange(w.shape[0], dtype=w.dtype))
        seed = jnp.einsum("k,kij->ij", mix, previous)
    orientation0 = jnp.linalg.eigh(seed)[1]

    def sweep(_, orientation):
        projected = project(orientation)
        return _jacobi_sweep(orientation, projected, 1.0 / eigenvalues(projected), on)

    orientation = jax.lax.fori_loop(0, INNER_STEPS, sweep, orientation0)
    lam = eigenvalues(project(orientation))
    return jnp.einsum("ij,kj,lj->kil", orientation, lam, orientation)


def covariances(counts, scatter, model: str, num_features: int, reg_covar, active=None, previous=None):
    """The M-step's covariances of ``model`` (its storage layout), from counts and centred scatter.

    Parameters
    ----------
    counts : (K,) expected counts ``n_k`` (positive: the caller's safe counts)
    scatter : the centred scatter in the model's layout: (K,) traces (spherical), (K, D)
        diagonals (diagonal models) or (K, D, D) matrices
    model : str
        An mclust model name (:data:`bayesgmm._covariance_models.MODELS`).
    num_features : int
    reg_covar : scalar
    active : (K,) bool, optional
        Components switched off (model-selection grids) take no part in the shared parts.
    previous : covariances of the previous iteration (same layout), optional
        The start of the iterative models' inner updates.
    """
    d = num_features
    k = counts.shape[0]
    on = jnp.ones(k, scatter.dtype) if active is None else active.astype(scatter.dtype)
    layout = storage(model)
    if layout == "spherical":
        w = scatter + counts * reg_covar * d
    elif layout == "diag":
        w = scatter + counts[:, None] * reg_covar
    else:  # and a round-off floor relative to each feature's own variance, which keeps a rank-deficient
        # scatter positive definite without touching the constraint (a floor relative to the mean
        # variance would, on data of one common scale, swamp the features of small spread)
        eye = jnp.eye(d, dtype=scatter.dtype)
        diagonal = jnp.diagonal(scatter, axis1=-2, axis2=-1)
        w = scatter + (counts[:, None] * reg_covar + ROUNDOFF_ULPS * jnp.finfo(scatter.dtype).eps * diagonal)[:, :, None] * eye
    n = jnp.sum(on * counts)
    if model == "VII":
        return w / (counts * d)
    if model == "EII":
        return jnp.full((k,), jnp.sum(on * w) / (d * n), w.dtype)
    if model == "VVI":
        return w / counts[:, None]
    if model == "EEI":
        return jnp.broadcast_to(jnp.sum(on[:, None] * w, 0) / n, (k, d))
    if model == "EVI":
        g = _geometric_mean(_safe(w))
        return (jnp.sum(on * g) / n) * w / g[:, None]
    if model == "VEI":
        start = jnp.sum(on[:, None] * w, 0) if previous is None else _shared_from_previous(
            previous / _geometric_mean(previous)[:, None], on)
        volume, shape = _volume_shape_alternation(_safe(w), counts, on, d, start / _geometric_mean(_safe(start)))
        return volume[:, None] * shape[None]
    if model == "EEE":
        return jnp.sum(on[:, None, None] * w, 0) / n
    if model == "VVV":
        return w / counts[:, None, None]
    if model == "EVV":
        g = jnp.exp(jnp.linalg.slogdet(w)[1] / d)
        return (jnp.sum(on * g) / n) * w / g[:, None, None]
    if model == "VEE":
        return _volume_equal_shape(w, counts, on, d, previous)
    if model in ("EEV", "VEV"):
        values, vectors = _eigh_descending(w)
        if model == "EEV":
            lam = jnp.broadcast_to(jnp.sum(on[:, None] * values, 0) / n, (k, d))
        else:
            if previous is None:
                start = jnp.sum(on[:, None] * values, 0)
            else:
                prev_values = _eigh_descending(in_turn(values, previous))[0]  # one batched eigh at a time
                start = _shared_from_previous(prev_values / _geometric_mean(prev_values)[:, None], on)
            volume, shape = _volume_shape_alternation(values, counts, on, d, start / _geometric_mean(_safe(start)))
            lam = volume[:, None] * shape[None]
        return jnp.einsum("kij,kj,klj->kil", vectors, lam, vectors)
    if model in ("EVE", "VVE"):
        return _common_orientation(w, counts, on, n, d, model == "EVE", previous)
    raise ValueError(f"unknown covariance model {model!r}")


def _volume_equal_shape(w, counts, on, d, previous):
    """VEE: ``Sigma_k = lambda_k C`` with one matrix ``C`` of determinant 1."""
    def normalise(c):
        return c / jnp.exp(jnp.linalg.slogdet(c)[1] / d)

    def volumes(c):
        return _safe(jnp.trace(jnp.linalg.solve(c[None], w), axis1=-2, axis2=-1) / (d * counts))

    def step(_, c):
        return normalise(jnp.einsum("k,kij->ij", jnp.where(on > 0, on / volumes(c), 0.0), w))

    if previous is None:
        c0 = jnp.einsum("k,kij->ij", on, w)
    else:
        c0 = _shared_from_previous(previous / jnp.exp(jnp.linalg.slogdet(previous)[1] / d)[:, None, None], on)
    c = jax.lax.fori_loop(0, INNER_STEPS, step, normalise(c0))
    return volumes(c)[:, None, None] * c[None]
