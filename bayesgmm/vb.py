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

Under Dirichlet-process weights (``Prior(..., weight_prior="dirichlet_process")``) the Dirichlet
factor is replaced by independent Beta sticks :math:`q(v_k) = \mathrm{Beta}(a_k, b_k)`,
:math:`k < K`, with the last stick 1 as in the model (Blei & Jordan 2006; scikit-learn's
``weight_concentration_prior_type="dirichlet_process"`` keeps a K-th stick instead, and leaves its
remainder unassigned).

Updates (all from the shared sufficient statistics of :mod:`bayesgmm._stats`)::

    alpha_k = alpha0 + N_k          beta_k = kappa0 + N_k        nu_k = nu0 + N_k
    (sticks: a_k = 1 + N_k, b_k = gamma + sum_{j>k} N_j)
    m_k     = (kappa0 m0 + N_k xbar_k) / beta_k
    Psi_k   = Psi0 + S_k + N_k reg_covar I + kappa0 N_k / beta_k (xbar_k - m0)(xbar_k - m0)^T

(``reg_covar`` enters exactly as in scikit-learn's ``BayesianGaussianMixture``; with
``reg_covar=0`` the updates are exact CAVI and the ELBO never decreases.) The functions below take
NumPy or JAX arrays alike: the compiled loop runs them on the device, the host in float64.

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

Structure as :mod:`bayesgmm.em`: a pure :func:`vb_step` (E-step, complete ELBO, conjugate update)
in one :mod:`bayesgmm._iterate` loop over a batch of lanes (the Aitken convergence test, the precise
form of :mod:`bayesgmm._stats` where the fast one would cancel), driven by the em-EM search of
:func:`bayesgmm._iterate.search`. Its starts seed *different numbers of components* (all K down to
one), so that an overfitted mixture under a sparse Dirichlet reaches the solution of highest ELBO
however many components it keeps, instead of the local optimum its start happened to be near.
The reported ELBO and log-likelihood are float64 recomputations from the returned ``q``
(:func:`exact_elbo`), whatever the compute precision.
"""

from __future__ import annotations

import math
import warnings
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from . import _iterate, _missing, _numerics, _sharding, _stats, _sticks, _vb_moves
from ._compile import CompiledProgram
from ._iterate import resolve_starts, short_run_length, trace_length
from .kmeans import INIT_METHODS, init_noise, initial_responsibilities, screened_starts, screens
from .params import (
    ConvergenceWarning,
    DegenerateComponentWarning,
    GMMParams,
    PrecisionWarning,
    Prior,
    check_covariance_type,
    check_data,
    check_nonnegative,
    check_num_components,
    check_positive_integers,
    check_prior,
    check_sample_weight,
    compute_dtype,
    log_jacobians,
    mark_missing,
    params_to_original,
    seed_to_key,
    standardise,
)
from .results import FitResult, IndependentStudentTMixture, StudentTMixture

__all__ = ["VB_COVARIANCE_TYPES", "fit_vb"]

#: Covariance structures of closed-form VB.
VB_COVARIANCE_TYPES = ("full", "diag")
LOG_2 = math.log(2.0)
#: Default convergence tolerance: projected remaining gain of the ELBO per observation.
DEFAULT_TOL = 1e-5



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


class VBConfig(NamedTuple):
    num_components: int
    num_features: int
    covariance_type: str
    components_together: bool = False  # the centred form's components at once (_stats.each_component)
    block_rows: _stats.RowBlocks | None = None  # the E-step in row blocks (_stats.block_rows), as EM's


# ----------------------------------------------------------------------------------------------
# Pure pieces (NumPy or JAX)
# ----------------------------------------------------------------------------------------------
def vb_m_step(nk_safe, xbar, s, prior, reg_covar, covariance_type: str) -> VBParams:
    """Conjugate update of q(pi, mu, Sigma) from centred statistics (PRML 10.58-10.63)."""
    xp, _ = _numerics.array_namespace(nk_safe, xbar, s)
    alpha0, m0, kappa0, nu0, psi0 = prior
    d = xbar.shape[1]
    nk = nk_safe
    beta = kappa0 + nk
    means = (kappa0 * m0[None] + nk[:, None] * xbar) / beta[:, None]
    dev = xbar - m0[None]
    shrink = kappa0 * nk / beta
    if covariance_type == "full":
        eye = xp.eye(d, dtype=xbar.dtype)
        scale = psi0[None] + s + (nk * reg_covar)[:, None, None] * eye + shrink[:, None, None] * dev[:, :, None] * dev[:, None, :]
        scale = 0.5 * (scale + xp.swapaxes(scale, -1, -2))
    else:
        scale = psi0[None] + s + (nk * reg_covar)[:, None] + shrink[:, None] * dev**2
    return VBParams(weights_update(alpha0, nk), beta, means, nu0 + nk, scale)


# ---- q(pi): a Dirichlet (concentration (K,)) or independent Beta sticks ((K - 1, 2); a
# Dirichlet-process prior, Blei & Jordan 2006). The shape of the prior's array selects the form.
def weights_update(prior_weights, counts):
    """Conjugate update of q(pi) from expected counts N_k."""
    return _sticks.posterior(prior_weights, counts) if _sticks.is_sticks(prior_weights) else prior_weights + counts


def expected_log_weights(q_weights):
    """E_q[log pi_k] (K,)."""
    if _sticks.is_sticks(q_weights):
        return _sticks.expected_log_weights(q_weights)
    xp, sp = _numerics.array_namespace(q_weights)
    return sp.special.digamma(q_weights) - sp.special.digamma(xp.sum(q_weights))


def mean_weights(q_weights):
    """E_q[pi] (K,)."""
    if _sticks.is_sticks(q_weights):
        return _sticks.mean_weights(q_weights)
    xp, _ = _numerics.array_namespace(q_weights)
    return q_weights / xp.sum(q_weights)


def weights_kl(q_weights, prior_weights):
    """KL(q(pi) || p(pi)), complete."""
    if _sticks.is_sticks(q_weights):
        return _sticks.kl_divergence(q_weights, prior_weights)
    xp, sp = _numerics.array_namespace(q_weights, prior_weights)
    digamma, gammaln = sp.special.digamma, sp.special.gammaln
    alpha = q_weights
    alpha0 = prior_weights + 0.0 * alpha  # a scalar concentration, as a vector
    a_sum = xp.sum(alpha)
    return (
        gammaln(a_sum) - xp.sum(gammaln(alpha)) - gammaln(xp.sum(alpha0)) + xp.sum(gammaln(alpha0))
        + xp.sum((alpha - alpha0) * (digamma(alpha) - digamma(a_sum)))
    )


def _precision_terms(q: VBParams, prior, covariance_type: str):
    """Per-component log|Psi_k|, tr(Psi0 Psi_k^-1), (m_k - m0)^T Psi_k^-1 (m_k - m0),
    E[log|Lambda_k|] + log|Psi_k| (= multivariate digamma + D log 2) and log Gamma_D(nu_k/2)."""
    xp, sp = _numerics.array_namespace(*q)
    _, m0, _, nu0, psi0 = prior
    nu = q.degrees_of_freedom
    k, d = q.means.shape
    dev = q.means - m0[None]
    digamma, gammaln, multigammaln = sp.special.digamma, sp.special.gammaln, sp.special.multigammaln
    if covariance_type == "full":
        chol = xp.linalg.cholesky(q.scale)
        chol0 = xp.linalg.cholesky(psi0)
        logdet = 2.0 * xp.sum(xp.log(xp.diagonal(chol, axis1=-2, axis2=-1)), -1)
        logdet0 = 2.0 * xp.sum(xp.log(xp.diagonal(chol0)))
        a = _numerics.solve_lower(chol, xp.broadcast_to(chol0, (k, d, d)))
        trace = xp.sum(a**2, axis=(-2, -1))
        dev = _numerics.in_turn(a, dev)  # one batched LAPACK call at a time (_numerics.in_turn)
        y = _numerics.solve_lower(chol, dev[:, :, None])[..., 0]
        maha = xp.sum(y**2, -1)
        half = xp.arange(d, dtype=nu.dtype) / 2.0
        mvdigamma = xp.sum(digamma(nu[:, None] / 2.0 - half[None]), -1) + d * LOG_2
        lgam = multigammaln(nu / 2.0, d)
        lgam0 = multigammaln(nu0 / 2.0, d)
    else:
        logdet = xp.sum(xp.log(q.scale), -1)
        logdet0 = xp.sum(xp.log(psi0))
        trace = xp.sum(psi0[None] / q.scale, -1)
        maha = xp.sum(dev**2 / q.scale, -1)
        mvdigamma = d * (digamma(nu / 2.0) + LOG_2)
        lgam = d * gammaln(nu / 2.0)
        lgam0 = d * gammaln(nu0 / 2.0)
    return logdet, logdet0, trace, maha, mvdigamma, lgam, lgam0


def kl_divergence(q: VBParams, prior, covariance_type: str):
    """KL(q(pi, mu, Sigma) || p(pi, mu, Sigma)), complete (no dropped constants)."""
    xp, _ = _numerics.array_namespace(*q)
    alpha0, _, kappa0, nu0, _ = prior
    beta, nu = q.mean_precision, q.degrees_of_freedom
    d = q.means.shape[1]
    kl_dir = weights_kl(q.concentration, alpha0)
    logdet, logdet0, trace, maha, mvdigamma, lgam, lgam0 = _precision_terms(q, prior, covariance_type)
    kl_mean = 0.5 * (d * kappa0 / beta - d + d * xp.log(beta / kappa0) + kappa0 * nu * maha)
    e_logdet_prec = mvdigamma - logdet
    kl_prec = (
        0.5 * (nu - nu0) * e_logdet_prec - 0.5 * nu * d + 0.5 * nu * trace - 0.5 * (nu - nu0) * d * LOG_2
        + 0.5 * nu * logdet - 0.5 * nu0 * logdet0 - lgam + lgam0
    )
    return kl_dir + xp.sum(kl_mean + kl_prec)


def expected_components(q: VBParams, prior, covariance_type: str):
    """``(GMMParams(1, m_k, Psi_k / nu_k), shift_k)``: ``log N(x | m_k, Psi_k / nu_k) + shift_k`` is
    ``E_q[log pi_k + log N(x | mu_k, Sigma_k)]`` (PRML 10.46; the covariance is E[Lambda_k]^-1)."""
    xp, sp = _numerics.array_namespace(*q)
    alpha, beta, m, nu, psi = q
    d = m.shape[1]
    logdet, _, trace, maha, mvdigamma, _, _ = _precision_terms(q, prior, covariance_type)
    # the E-step factors this covariance after the terms' factors: one batched LAPACK call at a time
    cov = _numerics.in_turn(logdet + trace + maha, psi / (nu[:, None, None] if covariance_type == "full" else nu[:, None]))
    shift = expected_log_weights(alpha) + 0.5 * (mvdigamma - d * xp.log(nu)) - 0.5 * d / beta
    return GMMParams(xp.ones_like(nu), m, cov), shift


def _weighted_sum(values, sample_weight):
    return jnp.sum(values) if sample_weight is None else values @ sample_weight


class VBProblem(NamedTuple):
    """What one lane fits: features, standardised data, row weights (or None), prior, reg_covar."""

    z: jax.Array | None
    x: jax.Array
    sample_weight: jax.Array | None
    prior: object
    reg_covar: jax.Array
    observed: jax.Array | None = None  # (N, D) bool, False at missing entries (placeholders in x)


def vb_step(q: VBParams, problem: VBProblem, config: VBConfig, precise: bool):
    """One CAVI sweep at ``q``: ``(ELBO of q, its magnitude, expected counts, updated q)``.

    The E-step sets q(z) optimal for q(theta), where the complete ELBO is evaluated; the conjugate
    update of q(theta) from the resulting statistics follows.
    """
    ct = config.covariance_type
    kl = kl_divergence(q, problem.prior, ct)
    # the expected components' LAPACK calls after the divergence's (the same factors, not shared by XLA)
    components, shift = expected_components(_numerics.in_turn(kl, q), problem.prior, ct)
    w = problem.sample_weight
    if problem.observed is not None:  # missing values: q(x_m | z) is the conditional of N(m_k, E[Lambda_k]^-1)
        per_row, stats = _missing.e_step_stats(problem.x, problem.observed, w, components, ct, const_shift=shift)
        data, magnitude = _weighted_sum(per_row, w), _weighted_sum(jnp.abs(per_row), w)
    elif config.block_rows is not None:  # row blocks: the data term summed block by block, as a pair
        data, magnitude, stats = _stats.e_step_totals(None, problem.x, w, components, ct, precise, const_shift=shift,
                                                      block_rows=config.block_rows, together=config.components_together)
    else:
        per_row, stats = _stats.e_step_stats(problem.z, problem.x, w, components, ct, precise, const_shift=shift,
                                             together=config.components_together)
        data, magnitude = _weighted_sum(per_row, w), _weighted_sum(jnp.abs(per_row), w)
    elbo = _numerics.add_to_pair(data, -kl) if isinstance(data, tuple) else data - kl
    magnitude = magnitude + jnp.abs(kl)
    counts = stats[0] - 10 * jnp.finfo(stats[0].dtype).eps
    return elbo, magnitude, counts, vb_m_step(*stats, problem.prior, problem.reg_covar, ct)


def point_estimate(q: VBParams, covariance_type: str):
    """Posterior means E[pi], m_k and E[Sigma_k] = Psi_k / (nu_k - D - 1) (diag: / (nu_k - 2)) where
    that mean exists, else Psi_k / nu_k (= E[Sigma_k^-1]^-1); returns (GMMParams, has_mean (K,))."""
    xp, _ = _numerics.array_namespace(*q)
    alpha, _, m, nu, psi = q
    d = m.shape[1]
    extra = d + 1.0 if covariance_type == "full" else 2.0
    has_mean = nu > extra
    denom = xp.where(has_mean, nu - extra, nu)
    cov = psi / (denom[:, None, None] if covariance_type == "full" else denom[:, None])
    return GMMParams(mean_weights(alpha), m, cov), has_mean


class VBOutput(NamedTuple):
    """One call's lanes (``lanes.params`` the evaluated q, ``lanes.objective`` its ELBO,
    ``lanes.aux`` the expected counts) and the collapsed components (L, K)."""

    lanes: _iterate.Lanes
    degenerate: jax.Array


def occupancy(num_starts: int, num_components: int, *, sparse: bool = False) -> np.ndarray:
    """Components each start seeds, (R, K) bool; the others start empty (q = prior).

    Under a weight prior that empties components (``sparse``: a Dirichlet concentration below 1
    or the Dirichlet process) start j seeds the first ``K - floor(j K / R)``: every count from K
    down to about K / R, so that a few true clusters among many components have starts seeding
    about that many. Otherwise the first ``max(1, R // 2)`` starts seed all K and the other R'
    start j of them ``K - floor(j K / (R' + 1))``: with one start seeding all K, the default
    search on 32 separated clusters ended 23-60 nats below the optimum with a component empty and
    two clusters merged, in 3 data sets of 3 (review of large K; a quarter of the starts: 1 of 3;
    half: 0 of 5). Under a sparse prior that split cost the low counts their starts: with 32
    starts at K = 30 on 3-8 clusters it kept an extra component and ended 10-28 nats lower in a
    third of the data sets (a review of the change), so sparse priors keep the even spread."""
    if sparse:
        seeded = num_components - (np.arange(num_starts) * num_components) // num_starts
    else:
        full = max(1, num_starts // 2)
        rest = num_starts - full
        spread = num_components - (np.arange(1, rest + 1) * num_components) // (rest + 1)
        seeded = np.concatenate([np.full(full, num_components), np.maximum(spread, 1)])
    return np.arange(num_components)[None] < seeded[:, None]


def _run(xs, noise, seeded, state, prior, tol, reg_covar, sample_weight, max_iter, fresh, observed=None, num_queued=None,
         *, config: VBConfig, init_method: str, trace_len: int, adaptive: bool = True, lanes_apart: bool = False,
         pool_lanes: int | None = None):
    """L lanes of CAVI in one loop: fresh ones from ``noise`` (L, ...) uniform numbers seeding the
    components ``seeded`` (L, K) marks, or ``state`` continued. ``tol`` is per observation.
    ``lanes_apart`` (static): the lanes one after another, and the collapse check one component
    at a time (rows sharded over several CPU devices: see :func:`bayesgmm._em_core._run`).
    ``pool_lanes`` (static): the L lanes of ``noise`` are a queue of which the first
    ``num_queued`` (traced) run, ``pool_lanes`` at a time (as in :func:`bayesgmm._em_core._run`);
    ``state`` then has ``pool_lanes`` lanes."""
    ct, k = config.covariance_type, config.num_components
    num_lanes = noise.shape[0]
    features = None if observed is not None or config.block_rows is not None else _stats.suff_features(xs, ct)
    problem = VBProblem(features, xs, sample_weight, prior, reg_covar, observed)
    n_eff = xs.shape[0] if sample_weight is None else jnp.sum(sample_weight)
    # the start's statistics in the memory bound's row blocks where the E-step runs in blocks (as EM's)
    memory_blocks = None if config.block_rows is None else _stats.block_rows(xs.shape[0], config.num_features, ct)
    start_blocks = None if memory_blocks is None else memory_blocks.precise

    def one(u, act):
        resp0 = initial_responsibilities(u, xs, k, init_method, sample_weight=sample_weight, active=act)
        if sample_weight is not None:
            resp0 = resp0 * sample_weight[:, None]
        stats = _stats.stats_precise(resp0.T, xs, ct, block_rows=start_blocks, together=config.components_together)
        return vb_m_step(*stats, prior, reg_covar, ct)

    def start_lanes(_):
        started = jax.lax.map(lambda a: one(*a), (noise, seeded)) if lanes_apart else jax.vmap(one)(noise, seeded)
        return _iterate.start(started, state.aux, num_lanes, trace_len, xs.dtype)

    def queued_starts(_):  # a block of pool_lanes starts at a time, as many as are queued
        return _iterate.in_blocks(lambda block: jax.vmap(one)(*block), (noise, seeded), pool_lanes, num_queued)

    if pool_lanes is None:
        lanes = jax.lax.cond(fresh, start_lanes, lambda _: state, None)
    else:
        lanes, incoming = _iterate.queue_start(fresh, queued_starts, state, num_lanes, trace_len)
    batch_step = jax.vmap(lambda q, precise: vb_step(q, problem, config, precise), in_axes=(0, None))

    def step(q, precise):  # the precise form for the whole batch when any running lane needs it
        if lanes_apart:  # sharded rows: one form, chosen statically (_iterate.fixed_form)
            form = precise if isinstance(precise, bool) else False
            return jax.lax.map(lambda one: vb_step(one, problem, config, form), q)
        return batch_step(q, precise if isinstance(precise, bool) else jnp.any(precise))

    def needs(q):
        return _stats.needs_precise(jax.vmap(lambda one: expected_components(one, prior, ct)[0])(q), ct, None, reg_covar)

    tol_total = jnp.where(tol > 0, tol * n_eff, -1.0)  # tol = 0: exactly max_iter updates
    check = needs if adaptive else _iterate.fixed_form(xs.dtype, observed)
    if pool_lanes is None:
        lanes = _iterate.iterate(lanes, step, tol_total, max_iter, check)
    else:
        lanes = _iterate.iterate_queue(lanes, incoming, num_queued, num_lanes, step, tol_total, max_iter, check)
    eps = jnp.finfo(xs.dtype).eps
    points = jax.vmap(lambda q: point_estimate(q, ct)[0].covariances)(lanes.params)
    def collapsed(cov):  # collapsed covariances only: components that empty out are VB's intended behaviour
        return _numerics.degenerate_mask(jnp.full((cov.shape[0],), jnp.inf, xs.dtype), cov, ct, reg_covar, eps,
                                         config.num_features)

    if lanes_apart:  # one eigendecomposition per LAPACK call
        degenerate = jax.lax.map(collapsed, points.reshape((-1, 1) + points.shape[2:])).reshape(num_lanes, k)
    else:
        degenerate = jax.vmap(collapsed)(points)
    return VBOutput(lanes, degenerate)


#: The VB program, compiled ahead of time once per shapes and static settings.
PROGRAM = CompiledProgram(
    _run, static_argnames=("config", "init_method", "trace_len", "adaptive", "lanes_apart", "pool_lanes"),
    memory_advice="Fit a subsample by VB, or fit the whole data by EM out of core with "
                  "bayesgmm.fit_em_stream(x, K).",
    cpu_options=lambda *args, config, **static: _stats.library_kernels(config.covariance_type, "vb"),
)


def exact_elbo(arr, q: VBParams, prior, covariance_type: str, sample_weight=None) -> float:
    """The complete ELBO of ``q`` in float64 on the host (original scale; ``prior`` as arrays).

    ``sum_n log sum_k exp E_q[log pi_k N(x_n | mu_k, Sigma_k)] - KL(q || p)``, the data term in the
    frame of ``q``'s point estimate so that no units lose precision.
    """
    q = VBParams(*(np.asarray(a, np.float64) for a in q))
    prior = type(prior)(*(np.asarray(a, np.float64) for a in prior))
    components, shift = expected_components(q, prior, covariance_type)
    frame = _numerics.mixture_frame(*point_estimate(q, covariance_type)[0], covariance_type)
    rows = _numerics.score_rows(arr, np.exp(shift), components.means, components.covariances, covariance_type,
                                frame=frame)
    data = rows.log_density.sum() if sample_weight is None else rows.log_density @ sample_weight
    return float(data - kl_divergence(q, prior, covariance_type))


def _placeholder_state(num_lanes, k, d, covariance_type, trace_len, dtype, weights_shape) -> _iterate.Lanes:
    scale_shape = (k, d, d) if covariance_type == "full" else (k, d)
    q = VBParams(np.ones((num_lanes,) + weights_shape, dtype), np.ones((num_lanes, k), dtype), np.zeros((num_lanes, k, d), dtype),
                 np.full((num_lanes, k), d + 2.0, dtype), np.ones((num_lanes,) + scale_shape, dtype))
    zeros = np.zeros(num_lanes, dtype)
    flags = np.zeros(num_lanes, bool)
    counts = np.zeros(num_lanes, np.int32)
    return _iterate.Lanes(q, q, zeros, zeros, np.zeros((num_lanes, k), dtype), counts, counts, flags, flags, flags,
                          np.zeros((num_lanes, trace_len), dtype), zeros, zeros, counts, flags)


def sample_q(rng: np.random.Generator, q: VBParams, covariance_type: str, num_draws: int):
    """``num_draws`` joint draws of (pi, mu, Sigma) from q (standardised scale; NumPy, host side).

    Drawn on the host rather than in the compiled program: XLA's gamma rejection sampler alone
    took about 2 s to compile, more than the whole CAVI loop, for a millisecond of work.
    Weights are normalised gammas drawn in log space (``log G(a) = log G(a + 1) + log(U) / a``)
    so that tiny concentrations do not underflow; Beta sticks are pairs of them. Full covariances use Bartlett's decomposition:
    Sigma = U A^-T A^-1 U^T with Psi = U U^T, A lower triangular, A_ii^2 ~ chi2(nu - i),
    A_ij ~ N(0, 1) below the diagonal; diagonal ones are inverse gammas.
    """
    alpha, beta, m, nu, psi = (np.asarray(a, np.float64) for a in q)
    k, d = m.shape
    s = num_draws

    def log_gamma(shape):
        return np.log(rng.gamma(shape + 1.0, size=(s,) + shape.shape)) + np.log(rng.uniform(size=(s,) + shape.shape)) / shape

    if _sticks.is_sticks(alpha):
        weights = _sticks.weights_from_log_gammas(log_gamma(alpha[:, 0]), log_gamma(alpha[:, 1]))
    else:
        log_g = log_gamma(alpha)
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
    n_init="auto",
    init_iter: int | None = None,
    init_params: str = "k-means++",
    tol: float | None = None,
    max_iter: int = 1000,
    reg_covar: float = 1e-10,
    sample_weight=None,
    devices=None,
    seed=0,
    num_draws: int = 500,
    resp_init=None,
    missing: str = "error",
) -> FitResult:
    r"""Fit a Bayesian Gaussian mixture by closed-form coordinate-ascent variational Bayes.

    With the defaults the fit reaches the q of highest ELBO that many starts find: starts seeding
    every number of components from K down to one each run :data:`bayesgmm.em.INIT_ITER` sweeps,
    and the best continue to convergence (see the module docstring). An overfitted mixture under
    a sparse Dirichlet (``Prior.default(x, K, weight_concentration=1e-3)``) thus keeps the
    components the data support, not those its start happened to seed. Under Dirichlet weights
    of concentration 1 or more (the default prior's), with more than 4 components, the best run
    then takes merge moves (:mod:`bayesgmm._vb_moves`): two components that share a cluster
    merged into one and the other emptied, CAVI run on from there, the move kept where the ELBO
    rises by more than ``tol`` (``info["merge_moves"]``); CAVI alone empties such a component
    only after thousands of sweeps, on a plateau its convergence test cannot see.

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
        Conjugate prior; default ``Prior.default(x, K)``. Any ``weight_concentration > 0``, Dirichlet
        or Dirichlet-process weights (``Prior.default(x, K, weight_prior="dirichlet_process")``).
    n_init : "auto" or int
        ``"auto"``: as many starts as the data size makes cheap (as :func:`bayesgmm.fit_em`),
        the best of their short runs continued; where one continues (16 starts or fewer), each
        k-means++ start's seeding is the best of 32 by its k-means potential
        (:func:`bayesgmm.kmeans.screened_seedings`). An int: that many independent starts, each run
        to convergence (unless ``init_iter`` is given); the highest final ELBO is kept. Either
        way the starts seed K, K - 1, ..., 1 components in turn (the first seeds all K).
    init_iter : int, optional
        Length of the short runs (as :func:`bayesgmm.fit_em`): with an int ``n_init``, the
        starts run ``init_iter`` sweeps each (counted in ``max_iter``) and the best one in 16
        (at least one, at most 16) continue; ``info["init_iter"]`` is None when every start ran
        to convergence. Default: :data:`bayesgmm.em.INIT_ITER` under ``"auto"``, and every
        start to convergence under an int.
    init_params : {"k-means++", "kmeans", "random", "random_from_data"}
        Starting responsibilities (scikit-learn's meanings); the first update of q is the
        conjugate update from them (scikit-learn's ``_initialize``).
    tol : float, optional
        Convergence threshold per observation on the projected remaining gain of the ELBO (Aitken
        acceleration, as :func:`bayesgmm.fit_em`; default :data:`DEFAULT_TOL`): a plateau on
        which the gains still shrink slowly goes on, where scikit-learn's
        ``BayesianGaussianMixture``, which tests the last change of the total, stops. A plateau
        on which they shrink fast and later grow again is not seen: with many more components
        than clusters under the default Dirichlet(1) weights, a cluster held by two components
        can take thousands of sweeps to empty one of them, and the fit stopped before (converged,
        3.5-40 nats below the optimum, on 11 of 72 simulated data sets with K twice the clusters;
        a review); the default search's merge moves (above) now leave that plateau. A sparse
        weight prior (``Prior.default(x, K, weight_concentration=1e-3)``) empties such
        components within the fit (the documentation's guide to choosing). ``tol=0`` runs
        exactly ``max_iter`` sweeps, without moves.
    max_iter : int
        Maximum CAVI sweeps per start (short runs included).
    reg_covar : float
        ``N_k * reg_covar`` is added to the diagonal of each ``Psi_k`` (scikit-learn's
        convention), in units of each feature's robust variance. 0 gives exact CAVI.
    sample_weight : array (N,), optional
        Non-negative row weights (frequency weights): row ``n`` counts ``sample_weight[n]``
        times in every sufficient statistic and in the ELBO.
    devices : None, "all", int, list of jax.Device or jax.sharding.Mesh
        Shard the rows over these devices (data parallelism, as :func:`bayesgmm.fit_em`); the
        result equals the single-device fit up to floating-point reduction order, missing values
        included; across processes every process passes the same call.
    seed : int or jax key
        Same seed, same result (including the draws), bit for bit.
    missing : {"error", "marginalize"}
        ``"marginalize"``: NaN entries are missing at random. The variational family gains
        ``q(x_m | z)`` for the missing entries; its optimum given ``q(theta)`` is the conditional of
        ``N(m_k, E_q[Lambda_k]^-1)`` given the observed entries, so the updates stay closed form
        (:mod:`bayesgmm._missing`) and the ELBO is that of the observed data. The default refuses NaN.
    num_draws : int
        Draws S from q stored in ``draws`` (shape (1, S, ...)).
    resp_init : array (N, K), optional
        Starting responsibilities (non-negative rows summing to 1; scikit-learn's
        ``_initialize(X, resp)``): one start from them, ``n_init`` and ``init_params`` unused.

    Returns
    -------
    FitResult
        ``method="vb"``, ``objective="elbo"``; ``trace`` is the complete ELBO of q after each
        sweep (original scale), ``trace[0]`` that of the q initialised from the starting
        responsibilities; ``trace[-1]`` and ``info["elbo"]`` are float64 recomputations at the
        returned q. Point estimate: ``weights = E[pi]``, ``means = m_k`` (= E[mu_k]),
        ``covariances = E[Sigma_k] = Psi_k / (nu_k - D - 1)`` (diag: ``Psi_k / (nu_k - 2)``)
        when that mean exists, else ``Psi_k / nu_k = E[Sigma_k^{-1}]^{-1}`` (listed in
        ``info["covariance_estimate"]``). ``log_likelihood`` is the training log-likelihood
        at that point (float64). ``predictive`` is the exact posterior predictive, which
        ``score_samples`` evaluates: a Student-t mixture (PRML 10.81) for ``full``; for ``diag`` a
        mixture of products of univariate t's, one per feature (``IndependentStudentTMixture``: each
        feature's posterior is normal-inverse-gamma, ``nu_k`` degrees of freedom). ``info`` holds
        ``elbo``, ``expected_counts`` (``N_k = alpha_k - alpha0_k``; under a Dirichlet process
        ``alpha`` and ``alpha0`` are the (K - 1, 2) Beta parameters of the sticks),
        ``effective_components`` (``N_k >= 1``), ``empty_components`` (``N_k < 1``), under a
        Dirichlet process ``truncation_filled`` (no component empty: the truncation may hide
        clusters; refit with more components) and the variational parameters ``alpha``, ``beta``, ``m``, ``nu``, ``psi`` (original scale;
        ``W_k = inv(psi_k)``). ``restart_elbos`` (each kept run's final ELBO) and
        ``start_elbos`` (each start's after its short run) rank the runs: they are the compiled
        program's values, in the compute precision (in float32 a few hundredths of a nat from
        the float64 ``elbo`` on 1e5 rows).

    Warns
    -----
    ConvergenceWarning
        ``max_iter`` reached before the tolerance.
    DegenerateComponentWarning
        A covariance point estimate collapsed onto the regularisation floor. Components that
        merely empty out are the intended behaviour of VB and are not warned about.
    PrecisionWarning
        An explicit ``tol`` finer than the compute precision resolves (met at that precision).

    Raises
    ------
    ValueError
        Invalid input or an unsupported ``covariance_type``.
    """
    return _fit_vb(
        x, num_components, covariance_type=covariance_type, prior=prior, n_init=n_init, init_iter=init_iter,
        init_params=init_params, tol=tol, max_iter=max_iter, reg_covar=reg_covar, seed=seed,
        num_draws=num_draws, resp_init=resp_init, sample_weight=sample_weight, devices=devices, missing=missing,
    )


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
    if not (isinstance(n_init, str) and n_init == "auto"):
        if isinstance(n_init, str):
            raise ValueError(f"n_init must be 'auto' or a positive integer, got {n_init!r}.")
        check_positive_integers(n_init=n_init)
    check_positive_integers(max_iter=max_iter, num_draws=num_draws)
    check_nonnegative(tol=tol, reg_covar=reg_covar)


def _fit_vb(x, num_components, *, covariance_type, prior, n_init, init_iter, init_params, tol, max_iter, reg_covar, seed, num_draws,
            resp_init, sample_weight=None, devices=None, missing="error"):
    with _sharding.ProcessCall(devices, "fit_vb") as call:  # an error here stops every process
        if resp_init is not None:
            resp_init = np.asarray(resp_init, dtype=np.float64)
            if resp_init.ndim != 2:
                raise ValueError(f"resp_init must be an (N, K) array of responsibilities, got shape {resp_init.shape}.")
            if not np.all(np.isfinite(resp_init)) or np.any(resp_init < 0) or not np.allclose(resp_init.sum(1), 1.0):
                bad = int(np.flatnonzero(~(np.isfinite(resp_init).all(1) & (resp_init >= 0).all(1)
                                           & np.isclose(resp_init.sum(1), 1.0)))[0])
                raise ValueError(f"resp_init must have non-negative rows summing to 1; row {bad} (counting from 0) is "
                                 f"{resp_init[bad].tolist()}.")
            n_init, init_params = 1, "random"  # one start: the given responsibilities
        arr, names = check_data(x, missing=missing)
        n, d = arr.shape
        k = check_num_components(num_components, n)
        tol_explicit = tol is not None
        tol = DEFAULT_TOL if tol is None else tol
        _check_inputs(covariance_type, init_params, n_init, max_iter, tol, reg_covar, num_draws)
        weight = check_sample_weight(sample_weight, n)
        prior = check_prior(prior, d, k, default_from=arr, default_weight=weight)  # the default: of the weighted rows
        if resp_init is not None and resp_init.shape != (n, k):
            raise ValueError(f"resp_init must have shape ({n}, {k}), got {resp_init.shape}.")
        rows = _sharding.resolve(devices, n)
        if resp_init is not None and rows.mesh is not None:
            raise ValueError("starting responsibilities cannot be combined with devices=; shard without them.")

        dtype = compute_dtype()
        shift, sd, xs = standardise(arr, covariance_type, weight, dtype=dtype)
        xs, observed = mark_missing(xs)
        prior_std = prior.standardised(shift, sd)
        prior_arrays = prior_std.arrays(k, covariance_type, dtype=dtype)
        key = seed_to_key(seed)
        short_iter = short_run_length(init_iter)
        starts, kept = resolve_starts(n_init, n, k, d, covariance_type, init_iter)
        init_key, draw_key = jax.random.split(key)
        if resp_init is not None:  # padding rows (weight 0) get uniform responsibilities
            pad = np.full((rows.num_padded - n, k), 1.0 / k, dtype)
            noise = np.concatenate([np.asarray(resp_init, dtype), pad])[None, None]
            seeded = np.ones((1, 1, k), bool)
        else:
            noise = init_noise(init_key, init_params, starts, n, k, dtype, rows.num_padded)[None]
            sparse = prior.weight_prior == "dirichlet_process" or bool(np.any(prior.concentration(k) < 1.0))
            seeded = occupancy(starts, k, sparse=sparse)[None]
        trace_len = trace_length(max_iter)
        call.agree(
            rows, data=xs, observed=observed, sample_weight=weight, num_components=k, covariance_type=covariance_type,
            prior=prior_arrays, key=key, options=dict(
                init_params=init_params, starts=starts, kept=kept, max_iter=max_iter, tol=tol, reg_covar=reg_covar,
                init_iter=short_iter, num_draws=num_draws))
    xs_dev, weight_dev = _sharding.shard_rows(rows, xs, None if weight is None else weight.astype(dtype))
    if not isinstance(xs_dev, jax.Array):  # placed once for every call of the search (as EM's)
        xs_dev = jax.device_put(xs_dev)
    config = VBConfig(k, d, covariance_type, _stats.components_together(xs_dev))
    observed = _sharding.pad_observed(observed, xs_dev.shape[0], rows)
    if rows.mesh is None and observed is None:  # EM's row blocks (not for sharded rows, see _em_core.search)
        config = config._replace(block_rows=_stats.block_rows_for(xs_dev, d, covariance_type, k))
    # sharded rows keep one form (bayesgmm._iterate.fixed_form: the centred one in float32)
    # n_init up to the default's lanes: one program (one device only; see bayesgmm._em_core.search);
    # on small data every call queues its lanes through that pool: one call for all short runs
    lanes_run = _iterate.lane_bucket(kept, n, k, d, covariance_type) if rows.mesh is None else kept
    pooled = rows.mesh is None and _iterate.pooled(n, k, d, covariance_type)
    init_method = init_params
    if (resp_init is None and observed is None and not _iterate.pooled(n, k, d, covariance_type)
            and screens(init_params, starts, kept)):  # from the host rows, sharded or not: the same starts
        # few starts (larger data), as EM's search: each start's seeding of its first components
        # (occupancy) among the screened ones of lowest potential, the r-th best for the r-th start
        # seeding as many components (each took the best: 8 starts were 3 distinct ones, and all
        # three missed the optimum of three clusters that differ in covariance, not centre)
        num_seeded = np.asarray(seeded[0].sum(1))
        rank = np.array([int(np.sum(num_seeded[:j] == num_seeded[j])) for j in range(num_seeded.size)])
        best = screened_starts(init_key, xs, int(rank.max()) + 1, k, num_seeded, sample_weight=weight)
        noise = best[np.arange(num_seeded.size), rank][None]
        init_method = "centres"  # (1, R, K, D): start j's seeding of its first components
    static = dict(config=config, init_method=init_method, trace_len=trace_len, adaptive=rows.mesh is None,
                  lanes_apart=_sharding.on_shared_cpu_threads(xs_dev), pool_lanes=lanes_run if pooled else None)
    common = (jax.device_put(prior_arrays), np.asarray(tol, dtype), np.asarray(reg_covar, dtype), weight_dev)
    placeholder = _placeholder_state(kept, k, d, covariance_type, trace_len, dtype, prior_arrays.concentration.shape)
    seconds = [0.0, 0.0]

    def call(block, state, limit, fresh, abandon_after, num_queued=None):  # VB runs every lane to the end
        u, act = block
        num_queued = u.shape[1] if num_queued is None else num_queued
        timed = PROGRAM(xs_dev, u.reshape((-1,) + u.shape[2:]), act.reshape(-1, k), state, *common,
                        np.asarray(limit, np.int32), np.asarray(fresh), observed, np.asarray(num_queued, np.int32),
                        **static)
        seconds[0] += timed.compile_seconds
        seconds[1] += timed.run_seconds
        return jax.device_get(timed.outputs)

    if pooled:
        call = _iterate.queued_lanes(call, lanes_run)
    else:
        call = _iterate.padded_lanes(call, lanes_run)  # the short runs fill the padded program's lanes
    out, start_elbos = _iterate.search(call, (noise, seeded), placeholder, num_groups=1, num_starts=starts,
                                       num_kept=kept, init_iter=short_iter, max_iter=int(max_iter),
                                       short_lanes=starts if pooled else lanes_run)
    lanes = out.lanes
    finals = np.asarray(lanes.objective, dtype=np.float64)
    if not np.isfinite(finals).any():
        raise ValueError(
            "VB failed: the ELBO is not finite in any start. Either a variational scale matrix became "
            "singular (increase reg_covar or the prior scale, or use fewer components), or a value overflowed: "
            "a prior, reg_covar, sample_weight or concentration far from the data's scale (Prior.default(x, K) "
            "sets the prior from the data; a weight of 1e300 or a concentration of 1e-300 cannot be summed)."
        )
    best = int(_iterate.best_first(finals, out.degenerate)[0])
    picked, moves = best, None  # the lane reported: the search's best, or the run of the last kept move
    n_eff = n if weight is None else float(weight.sum())
    if (resp_init is None and observed is None and rows.mesh is None and tol > 0 and isinstance(n_init, str)
            and _vb_moves.applies(k, prior)):
        alpha0_std = np.asarray(prior_arrays.concentration, np.float64)

        def continued(q_list):  # continuing calls of the search's program, a lane from each q
            outputs = []
            for first in range(0, len(q_list), lanes_run):
                chunk = q_list[first:first + lanes_run]
                qs = VBParams(*(np.stack([np.asarray(q[f], dtype) for q in chunk]) for f in range(len(VBParams._fields))))
                state = _iterate.start(qs, np.zeros((len(chunk), k), dtype), len(chunk), trace_len, dtype)
                lanes_of = np.arange(len(chunk)) % noise.shape[1]
                outputs.append(call((noise[:, lanes_of], seeded[:, lanes_of]), jax.device_get(state), int(max_iter),
                                    False, _iterate.NEVER))
            return jax.tree_util.tree_map(lambda *a: np.concatenate([np.asarray(x) for x in a], axis=0), *outputs)

        moved, _, moves = _vb_moves.improve(
            _iterate.take(out, slice(best, best + 1)), float(finals[best]),
            np.asarray(lanes.params[0][best], np.float64) - alpha0_std, continued=continued, prior=prior_arrays,
            reg_covar=float(reg_covar), covariance_type=covariance_type,
            tol_total=max(float(tol) * n_eff, float(lanes.floor[best])), m_step=vb_m_step, point_estimate=point_estimate,
            counts_of=lambda o: np.asarray(o.lanes.params[0][0], np.float64) - alpha0_std)
        if moves["moves"]:
            lanes, picked = moved.lanes, 0
    q = VBParams(*(np.asarray(p[picked], np.float64) for p in lanes.params))
    n_iter = int(lanes.n_iter[picked])
    converged = bool(lanes.converged[picked])
    counts = None if observed is None else (observed[:n] if weight is None else observed[:n] * weight[:, None]).sum(0)
    ll_shift, _ = log_jacobians(sd, n_eff, k, covariance_type, counts)

    # ---- q, point estimate and draws on the original scale; reported totals in float64
    alpha, beta, m_std, nu, psi_std = q
    params_std, has_mean = point_estimate(q, covariance_type)
    params = params_to_original(GMMParams(*params_std), shift, sd, covariance_type)
    psi = params_to_original(GMMParams(alpha, m_std, psi_std), shift, sd, covariance_type).covariances
    q_orig = VBParams(alpha, beta, params.means, nu, psi)
    prior_orig = prior.arrays(k, covariance_type)
    elbo = exact_elbo(arr, q_orig, prior_orig, covariance_type, weight)
    totals = _numerics.totals(arr, *params, covariance_type, weight)
    trace = np.asarray(lanes.trace[picked], np.float64)[: n_iter + 1] + ll_shift
    trace[-1] = elbo
    draw_rng = np.random.default_rng(np.asarray(jax.random.key_data(draw_key)).ravel().tolist())
    w_d, m_d, c_d = sample_q(draw_rng, q, covariance_type, int(num_draws))
    draws_orig = params_to_original(GMMParams(w_d, m_d, c_d), shift, sd, covariance_type)
    draws = {"weights": draws_orig.weights[None], "means": draws_orig.means[None], "covariances": draws_orig.covariances[None]}

    if covariance_type == "full":  # PRML 10.81
        df = nu + 1.0 - d
        t_scale = psi * ((1.0 + beta) / (beta * df))[:, None, None]
        predictive = StudentTMixture(params.weights, params.means, t_scale, df)
    else:  # each feature's normal-inverse-gamma posterior: a univariate t, independent given k
        t_scale = psi * ((1.0 + beta) / (beta * nu))[:, None]
        predictive = IndependentStudentTMixture(params.weights, params.means, t_scale, nu)

    # ---- diagnostics
    alpha0 = prior.weight_parameters(k)
    n_expected = alpha - alpha0 if alpha.ndim == 1 else _sticks.expected_counts(alpha, alpha0, n_eff)
    empty = tuple(int(i) for i in np.flatnonzero(n_expected < 1.0))
    effective = int(np.sum(n_expected >= 1.0))
    eps = float(np.finfo(dtype).eps)
    degenerate = tuple(int(i) for i in np.flatnonzero(_numerics.degenerate_mask(
        np.full(k, np.inf), np.asarray(params_std.covariances, np.float64), covariance_type, reg_covar, eps, d)))
    floor = float(lanes.floor[picked]) / n_eff
    filled = _sticks.truncation_filled(np.min(n_expected), k) if prior.weight_prior == "dirichlet_process" else None
    if degenerate:
        warnings.warn(
            f"VB component(s) {list(degenerate)} have a covariance collapsed onto the regularisation "
            "floor. Increase reg_covar or the prior scale (Prior(..., scale=...)), or use fewer components.",
            DegenerateComponentWarning,
            stacklevel=3,
        )
    if not converged:
        warnings.warn(
            f"VB did not converge in max_iter={max_iter} iterations (tol={tol:g} per observation); increase "
            "max_iter or tol.",
            ConvergenceWarning,
            stacklevel=3,
        )
    elif tol_explicit and floor > tol:
        warnings.warn(
            f"tol={tol:g} per observation is finer than {dtype.name} arithmetic resolves for these data (about "
            f"{floor:.1g} per observation): VB stopped when the ELBO stopped changing at that precision. For a "
            "finer tolerance fit in float64 (jax.config.update('jax_enable_x64', True) and float64 data).",
            PrecisionWarning,
            stacklevel=3,
        )
    return FitResult(
        method="vb",
        covariance_type=covariance_type,
        weights=params.weights,
        means=params.means,
        covariances=params.covariances,
        log_likelihood=totals.log_likelihood,
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
            **({} if filled is None else {"truncation_filled": filled}),
            "effective_components": effective,
            "empty_components": list(empty),
            "expected_counts": n_expected.tolist(),
            "alpha": alpha.tolist(),
            "beta": beta.tolist(),
            "m": params.means.tolist(),
            "nu": nu.tolist(),
            "psi": psi.tolist(),
            "alpha0": alpha0.tolist(),
            "covariance_estimate": ["posterior_mean" if h else "inverse_expected_precision" for h in np.asarray(has_mean)],
            "seed": seed if isinstance(seed, (int, np.integer)) else None,
            "n_init": int(starts) if resp_init is None else 1,
            "num_kept": int(kept),
            "init_iter": min(short_iter, int(max_iter)) if kept < starts else None,
            "init_params": "given" if resp_init is not None else init_params,
            "best_restart": best,
            "restart_elbos": (finals + ll_shift).tolist(),
            **({} if moves is None else {"merge_moves": moves}),
            "start_elbos": (start_elbos[0] + ll_shift).tolist(),
            "tol": float(tol),
            "precision_floor_per_obs": floor,
            "reg_covar": float(reg_covar),
            "num_draws": int(num_draws),
            "compile_seconds": seconds[0],
            "run_seconds": seconds[1],
            "fit_seconds": seconds[0] + seconds[1],
            "num_devices": rows.num_devices,
            "dtype": str(dtype),
        },
    )
