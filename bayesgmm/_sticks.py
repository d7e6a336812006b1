r"""Truncated stick-breaking weights: the Dirichlet-process prior of a K-component mixture.

.. math::

    v_k \sim \mathrm{Beta}(a_k, b_k) \quad (k = 1, \dots, K - 1), \qquad v_K = 1, \qquad
    \pi_k = v_k \prod_{j<k} (1 - v_j).

With :math:`a_k = 1, b_k = \gamma` this is the Dirichlet process DP(:math:`\gamma`) truncated at K
components (Ishwaran & James 2001); with :math:`a_k = \alpha_k, b_k = \sum_{j>k} \alpha_j` it is the
Dirichlet(:math:`\alpha`) (Connor & Mosimann 1969), which the tests use as a reference. The
sticks are conjugate to the labels: given counts :math:`N_k`,
:math:`v_k \mid z \sim \mathrm{Beta}(a_k + N_k,\, b_k + \sum_{j>k} N_j)`, which gives the Gibbs
conditional and the variational factor :math:`q(v)` of closed-form VB (Blei & Jordan 2006).

Sticks are stored as a (K - 1, 2) array of ``(a_k, b_k)`` (``PriorArrays.concentration`` of a
Dirichlet-process prior; a Dirichlet's is a (K,) vector, so the shape tells them apart statically).
Every function takes NumPy or JAX arrays alike.
"""

from __future__ import annotations

import numpy as np

from . import _numerics


def is_sticks(concentration) -> bool:
    """True when a weight-prior array holds stick parameters (K - 1, 2), not a Dirichlet's (K,)."""
    return getattr(concentration, "ndim", 0) == 2


def compose_log_weights(log_v, log_1mv):
    """``log pi`` (..., K) from ``log v`` and ``log(1 - v)`` of the K - 1 free sticks (..., K - 1)."""
    xp, _ = _numerics.array_namespace(log_v, log_1mv)
    zero = xp.zeros(log_v.shape[:-1] + (1,), log_v.dtype)
    before = xp.concatenate([zero, xp.cumsum(log_1mv, axis=-1)], axis=-1)  # sum_{j<k} log(1 - v_j)
    return xp.concatenate([log_v, zero], axis=-1) + before


def weights_from_log_gammas(log_a, log_b):
    """Weights (..., K) from ``log G_a`` and ``log G_b`` (..., K - 1), independent gamma draws of
    shapes ``a_k`` and ``b_k``: ``v_k = G_a / (G_a + G_b) ~ Beta(a_k, b_k)``, composed in log space
    (tiny shapes do not underflow)."""
    xp, _ = _numerics.array_namespace(log_a, log_b)
    log_total = xp.logaddexp(log_a, log_b)
    return xp.exp(compose_log_weights(log_a - log_total, log_b - log_total))


def posterior(sticks, counts):
    """Conjugate update: ``(a_k + N_k, b_k + sum_{j>k} N_j)`` for counts ``N`` (K,)."""
    xp, _ = _numerics.array_namespace(sticks, counts)
    later = xp.cumsum(counts[::-1])[::-1] - counts  # sum_{j>k} N_j
    return sticks + xp.stack([counts[:-1], later[:-1]], axis=-1)


def expected_log_weights(sticks):
    """``E[log pi_k]`` (K,) when the sticks are independent Betas with these parameters."""
    xp, sp = _numerics.array_namespace(sticks)
    digamma = sp.special.digamma
    a, b = sticks[..., 0], sticks[..., 1]
    total = digamma(a + b)
    return compose_log_weights(digamma(a) - total, digamma(b) - total)


def mean_weights(sticks):
    """``E[pi]`` (K,) under independent Beta sticks (the product of the sticks' means)."""
    xp, _ = _numerics.array_namespace(sticks)
    a, b = sticks[..., 0], sticks[..., 1]
    return xp.exp(compose_log_weights(xp.log(a) - xp.log(a + b), xp.log(b) - xp.log(a + b)))


def kl_divergence(q_sticks, prior_sticks):
    """``sum_k KL(Beta(a_k, b_k) || Beta(a0_k, b0_k))``."""
    xp, sp = _numerics.array_namespace(q_sticks, prior_sticks)
    digamma, betaln = sp.special.digamma, sp.special.betaln
    a, b = q_sticks[..., 0], q_sticks[..., 1]
    a0, b0 = prior_sticks[..., 0], prior_sticks[..., 1]
    per_stick = (betaln(a0, b0) - betaln(a, b) + (a - a0) * digamma(a) + (b - b0) * digamma(b)
                 + (a0 - a + b0 - b) * digamma(a + b))
    return xp.sum(per_stick)


def expected_counts(q_sticks, prior_sticks, total):
    """The counts ``N_k`` (K,) that the update :func:`posterior` turned the prior into ``q``
    (``total`` = N, the count when K = 1 and there are no sticks)."""
    xp, _ = _numerics.array_namespace(q_sticks, prior_sticks)
    if q_sticks.shape[0] == 0:
        return xp.reshape(xp.asarray(total, q_sticks.dtype), (1,))
    gained = q_sticks - prior_sticks
    return xp.concatenate([gained[:, 0], gained[-1:, 1]])


def log_density(weights, sticks):
    r"""Stick-breaking log density of the weights (K,), with respect to Lebesgue measure on the
    first K - 1 coordinates of the simplex (as NumPyro's Dirichlet).

    With tail sums :math:`r_k = \sum_{j \ge k} \pi_j`, :math:`v_k = \pi_k / r_k` and
    :math:`1 - v_k = r_{k+1} / r_k`; the map :math:`v \mapsto \pi` is triangular with diagonal
    :math:`r_k`, so

    .. math::

        \log p(\pi) = \sum_{k<K} (a_k - 1) \log \pi_k + (b_k - 1) \log r_{k+1} - (a_k + b_k - 1) \log r_k
            - \log B(a_k, b_k).

    The tail sums are accumulated from the last component, so tiny weights keep their precision.
    """
    xp, sp = _numerics.array_namespace(weights, sticks)
    a, b = sticks[..., 0], sticks[..., 1]
    tails = xp.cumsum(weights[..., ::-1], axis=-1)[..., ::-1]  # r_k, k = 1..K
    log_w, log_r = xp.log(weights[..., :-1]), xp.log(tails)
    return xp.sum(
        (a - 1.0) * log_w + (b - 1.0) * log_r[..., 1:] - (a + b - 1.0) * log_r[..., :-1] - sp.special.betaln(a, b),
        axis=-1,
    )


def is_exchangeable(concentration) -> bool:
    """True when the weight prior is the same under every relabelling of the components: a
    Dirichlet with equal concentrations (sticks are ordered by construction)."""
    if is_sticks(concentration):
        return concentration.shape[0] == 0
    flat = np.ravel(np.asarray(concentration))
    return bool(np.all(flat == flat[:1]))


def weights_log_density(weights, concentration):
    """The weight prior's log density of weights (..., K), NumPy: Dirichlet for a (K,)
    concentration (:func:`bayesgmm._numerics.dirichlet_log_density`), stick-breaking
    (:func:`log_density`) for (K - 1, 2) sticks; 0 when K = 1 (the weight is 1)."""
    if weights.shape[-1] == 1:
        return np.zeros(weights.shape[:-1], weights.dtype)
    if is_sticks(concentration):
        return log_density(weights, concentration)
    return _numerics.dirichlet_log_density(weights, concentration)


def draws_log_prior(weights, means, covariances, prior, covariance_type: str):
    """The model's log prior of S parameter sets (leading axis), float64 on the host: the weight
    prior's term (:func:`weights_log_density`: Dirichlet or sticks) plus the means' and
    covariances' (:func:`bayesgmm._numerics.draws_log_prior`); ``prior`` a ``PriorArrays`` in the
    parameters' units."""
    concentration = np.asarray(prior.concentration, np.float64)
    return weights_log_density(np.asarray(weights, np.float64), concentration) + _numerics.draws_log_prior(
        weights, means, covariances, prior, covariance_type, with_weights=False)


def relabelling_shift(weights, relabelled, concentration, underflow: float = np.finfo(np.float64).tiny):
    """``log p(relabelled) - log p(weights)`` under the weight prior, in float64 on the host:
    what relabelling draws (..., K) adds to their log posterior (zero when exchangeable).
    Weights that underflowed to 0 count as ``underflow`` (the compute type's smallest normal
    number, as the samplers floor them for their log posterior: ``log 0`` would make it NaN)."""
    concentration = np.asarray(concentration, np.float64)

    def floored(w):
        w = np.asarray(w, np.float64)
        return np.where(w > 0, w, underflow)

    before = weights_log_density(floored(weights), concentration)
    return weights_log_density(floored(relabelled), concentration) - before


def truncation_filled(smallest: float, num_components: int) -> bool:
    """Whether every one of a Dirichlet-process fit's K components holds at least one
    observation's weight, ``smallest`` the emptiest one's expected observations (VB: the smallest
    expected count; a sampler: N times the posterior mean of each draw's smallest weight): the
    truncation at K then holds all the clusters the fit found, and more may be there (a review:
    6 clusters fitted with K = 3 gave weights 0.51, 0.17, 0.32, converged and said nothing). A
    generous truncation leaves its last components empty (about 2e-5 of the weight). Reported as
    ``info["truncation_filled"]``, not warned: a truncation at the number of clusters expected
    (scikit-learn's ``n_components=2`` on Old Faithful) fills it too, by design."""
    return bool(num_components >= 2 and float(smallest) >= 1.0)  # one component: no sticks to truncate
