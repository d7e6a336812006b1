"""Independent references the tests compare the library with, written once.

Nothing here uses bayesgmm's numerics: densities are scipy's, sums over labellings are brute
force, and the conjugate results are the textbook closed forms. Only the documented meaning of a
:class:`bayesgmm.Prior` per covariance structure is read from the prior's fields (diag: the
diagonal of the scale; spherical: its mean diagonal entry; tied: one inverse-Wishart matrix).

Import them in a test module as ``from _references import mixture_log_density, ...``.
"""

import itertools
import math

import numpy as np
from scipy import stats
from scipy.special import betaln, gammaln, logsumexp, multigammaln

__all__ = [
    "component_log_densities",
    "dense_covariances",
    "enumerated_log_evidence_terms",
    "enumerated_log_likelihood",
    "log_evidence_nig_diag",
    "log_evidence_niw",
    "log_joint",
    "log_prior",
    "mixture_log_density",
    "niw_posterior",
    "occupied_components_collapsed",
    "responsibilities",
]


# ----------------------------------------------------------------------------------------------
# Mixture densities (scipy)
# ----------------------------------------------------------------------------------------------
def dense_covariances(covariances, covariance_type, k, d):
    """Stored covariances as (..., K, D, D) matrices (NumPy; leading draw axes allowed)."""
    c = np.asarray(covariances, np.float64)
    if covariance_type == "full":
        return c
    if covariance_type == "tied":
        return np.broadcast_to(c[..., None, :, :], c.shape[:-2] + (k, d, d))
    if covariance_type == "diag":
        return c[..., :, None] * np.eye(d)
    if covariance_type == "spherical":
        return c[..., None, None] * np.eye(d)
    raise ValueError(f"unknown covariance_type {covariance_type!r}")


def component_log_densities(x, weights, means, covariances, covariance_type="full"):
    """``log w_k + log N(x_n | mu_k, Sigma_k)`` for every row and component, shape (N, K)."""
    w, m = np.asarray(weights, np.float64), np.asarray(means, np.float64)
    k, d = m.shape
    x = np.asarray(x, np.float64).reshape(-1, d)
    covs = dense_covariances(covariances, covariance_type, k, d)
    with np.errstate(divide="ignore"):
        log_w = np.log(w)
    return np.stack(
        [log_w[j] + np.atleast_1d(stats.multivariate_normal(m[j], covs[j]).logpdf(x)).reshape(len(x)) for j in range(k)],
        axis=1,
    )


def mixture_log_density(x, weights, means, covariances, covariance_type="full"):
    """``log sum_k w_k N(x_n | mu_k, Sigma_k)`` of every row, shape (N,)."""
    return logsumexp(component_log_densities(x, weights, means, covariances, covariance_type), axis=1)


def responsibilities(x, weights, means, covariances, covariance_type="full"):
    """Posterior component probabilities ``p(z_n = k | x_n)``, shape (N, K)."""
    terms = component_log_densities(x, weights, means, covariances, covariance_type)
    return np.exp(terms - logsumexp(terms, axis=1, keepdims=True))


def enumerated_log_likelihood(x, weights, means, covariances, covariance_type="full"):
    """``log p(x)`` by brute force: the sum over all K^N labellings z of
    ``prod_n w_{z_n} N(x_n | mu_{z_n}, Sigma_{z_n})`` (tiny N only)."""
    terms = component_log_densities(x, weights, means, covariances, covariance_type)
    n, k = terms.shape
    rows = np.arange(n)
    per_labelling = [terms[rows, list(z)].sum() for z in itertools.product(range(k), repeat=n)]
    return float(np.logaddexp.reduce(per_labelling))


# ----------------------------------------------------------------------------------------------
# The conjugate prior and the log joint (scipy)
# ----------------------------------------------------------------------------------------------
def log_prior(params, prior, covariance_type="full"):
    """``log p(theta)`` under ``prior`` (a bayesgmm.Prior), from scipy's densities: Dirichlet or
    stick-breaking Beta(1, gamma) weights (none for K = 1); inverse-Wishart(nu0, Psi0) covariances with N(m0, Sigma_k / kappa0) means
    (full: one per component; tied: one shared matrix); inverse-gamma(nu0 / 2, psi / 2)
    variances with N(m0_j, sigma2 / kappa0) coordinates (diag: psi = diag(Psi0); spherical:
    psi = tr(Psi0) / D, one variance per component)."""
    w, m, c = (np.asarray(a, np.float64) for a in params)
    k, d = m.shape
    m0, k0, nu0 = np.asarray(prior.mean, np.float64), float(prior.mean_precision), float(prior.degrees_of_freedom)
    psi0 = np.asarray(prior.scale, np.float64)
    if k == 1:
        lp = 0.0
    elif prior.weight_prior == "dirichlet_process":
        # v_k = w_k / (w_k + ... + w_K) ~ Beta(1, gamma), k < K; the Jacobian of v -> w is triangular
        # with diagonal prod_{j<k} (1 - v_j) = w_k + ... + w_K (the tail sums)
        tails = np.cumsum(w[::-1])[::-1]
        v = w[:-1] / tails[:-1]
        lp = float(stats.beta(1.0, prior.weight_concentration).logpdf(v).sum() - np.log(tails[:-1]).sum())
    else:
        lp = float(stats.dirichlet(prior.concentration(k)).logpdf(w))
    if covariance_type in ("full", "tied"):
        wishart = stats.invwishart(df=nu0, scale=psi0)
        lp += sum(wishart.logpdf(s) for s in (c if covariance_type == "full" else [c]))
        covs = dense_covariances(c, covariance_type, k, d)
        lp += sum(stats.multivariate_normal(m0, covs[j] / k0).logpdf(m[j]) for j in range(k))
    elif covariance_type == "diag":
        lp += stats.invgamma(nu0 / 2, scale=np.diag(psi0) / 2).logpdf(c).sum()
        lp += stats.norm(m0, np.sqrt(c / k0)).logpdf(m).sum()
    elif covariance_type == "spherical":
        psi = np.trace(psi0) / d
        lp += stats.invgamma(nu0 / 2, scale=psi / 2).logpdf(c).sum()
        lp += stats.norm(m0, np.sqrt(c[:, None] / k0)).logpdf(m).sum()
    else:
        raise ValueError(f"unknown covariance_type {covariance_type!r}")
    return float(lp)


def log_joint(x, params, prior, covariance_type="full"):
    """``log p(x, theta) = sum_n log p(x_n | theta) + log p(theta)`` (z summed out)."""
    return float(mixture_log_density(x, *params, covariance_type).sum() + log_prior(params, prior, covariance_type))


# ----------------------------------------------------------------------------------------------
# Conjugate closed forms (one Gaussian) and the Bayesian sum over labellings
# ----------------------------------------------------------------------------------------------
def niw_posterior(x, m0, k0, nu0, psi0):
    """Normal-inverse-Wishart posterior ``(m_N, kappa_N, nu_N, Psi_N)`` of N(mu, Sigma) data."""
    x = np.asarray(x, np.float64)
    n = x.shape[0]
    xbar = x.mean(0)
    s = (x - xbar).T @ (x - xbar)
    kn, nun = k0 + n, nu0 + n
    mn = (k0 * np.asarray(m0) + n * xbar) / kn
    psin = psi0 + s + k0 * n / kn * np.outer(xbar - m0, xbar - m0)
    return mn, kn, nun, psin


def log_evidence_niw(x, m0, k0, nu0, psi0):
    """Exact ``log p(x)`` of N(mu, Sigma) data under NIW(m0, kappa0, nu0, Psi0) (Murphy 2007,
    eq. 266); 0 for no data."""
    x = np.asarray(x, np.float64)
    n, d = x.shape
    if n == 0:
        return 0.0
    _, kn, nun, psin = niw_posterior(x, m0, k0, nu0, psi0)
    return float(
        -0.5 * n * d * math.log(math.pi)
        + multigammaln(nun / 2, d) - multigammaln(nu0 / 2, d)
        + 0.5 * nu0 * np.linalg.slogdet(psi0)[1] - 0.5 * nun * np.linalg.slogdet(psin)[1]
        + 0.5 * d * math.log(k0 / kn)
    )


def log_evidence_nig_diag(x, m0, k0, nu0, psi0_diag):
    """Exact ``log p(x)`` under independent normal-inverse-gamma priors per feature (the diag
    prior: sigma2_j ~ IG(nu0 / 2, psi_j / 2), mu_j ~ N(m0_j, sigma2_j / kappa0)), written with the
    gamma-function closed form (not through :func:`log_evidence_niw`)."""
    x = np.asarray(x, np.float64)
    n = x.shape[0]
    a0, b0 = nu0 / 2, np.asarray(psi0_diag, np.float64) / 2
    xbar = x.mean(0)
    kn, an = k0 + n, a0 + n / 2
    bn = b0 + 0.5 * np.sum((x - xbar) ** 2, 0) + k0 * n * (xbar - np.asarray(m0)) ** 2 / (2 * kn)
    per = (-n / 2 * math.log(2 * math.pi) + 0.5 * math.log(k0 / kn) + a0 * np.log(b0) - an * np.log(bn)
           + gammaln(an) - gammaln(a0))
    return float(np.sum(per))


def enumerated_log_evidence_terms(x, k, alpha0, m0, k0, nu0, psi0):
    """``log p(x, z)`` of every labelling z of ``x`` into K clusters under a symmetric
    Dirichlet(alpha0) on the weights (Dirichlet-multinomial) and NIW clusters; the log evidence
    is their logsumexp (tiny N only). ``alpha0`` of shape (K - 1, 2): Beta(a_k, b_k) sticks
    instead (stick-breaking weights, ``v_K = 1``), where ``p(z)`` is a product of Beta functions
    ``B(a_k + N_k, b_k + sum_{j>k} N_j) / B(a_k, b_k)``."""
    x = np.asarray(x, np.float64)
    sticks = np.asarray(alpha0, np.float64)
    terms = []
    for z in itertools.product(range(k), repeat=x.shape[0]):
        z = np.array(z)
        counts = np.bincount(z, minlength=k)
        if sticks.ndim == 2:
            later = np.cumsum(counts[::-1])[::-1] - counts
            a, b = sticks[:, 0], sticks[:, 1]
            log_pz = np.sum(betaln(a + counts[:-1], b + later[:-1]) - betaln(a, b))
        else:
            log_pz = (gammaln(k * alpha0) - gammaln(len(z) + k * alpha0)
                      + np.sum(gammaln(alpha0 + counts) - gammaln(alpha0)))
        terms.append(log_pz + sum(log_evidence_niw(x[z == j], m0, k0, nu0, psi0) for j in range(k)))
    return np.array(terms)


def occupied_components_collapsed(x, k, gamma, m0, k0, nu0, psi0, sweeps, seed=0):
    """Posterior of the number of occupied components under truncated stick-breaking weights
    (K sticks Beta(1, gamma), ``v_K = 1``) and NIW clusters, by a collapsed sampler: every row's
    label drawn in turn given the others', weights and clusters integrated out (the stick
    product of Beta functions as :func:`enumerated_log_evidence_terms` writes it, and each
    cluster's multivariate-t posterior predictive, Murphy 2007 eq. 232). Single-row moves empty
    and fill components freely, unlike a blocked sampler. Starts from every row in component 0;
    the first quarter of the sweeps is dropped. Returns probabilities (K,) of 1..K occupied."""
    x = np.asarray(x, np.float64)
    n, d = x.shape
    m0, psi0 = np.asarray(m0, np.float64), np.asarray(psi0, np.float64)
    rng = np.random.default_rng(seed)
    z = np.zeros(n, int)
    counts = np.zeros(k)
    sums, outer = np.zeros((k, d)), np.zeros((k, d, d))
    np.add.at(counts, z, 1.0)
    np.add.at(sums, z, x)
    np.add.at(outer, z, x[:, :, None] * x[:, None, :])
    base = k0 * np.outer(m0, m0)
    occupied = []
    for sweep in range(sweeps):
        for i in rng.permutation(n):
            xi = x[i]
            counts[z[i]] -= 1
            sums[z[i]] -= xi
            outer[z[i]] -= np.outer(xi, xi)
            kn, nun = k0 + counts, nu0 + counts
            mn = (k0 * m0 + sums) / kn[:, None]
            psin = psi0 + outer + base - kn[:, None, None] * mn[:, :, None] * mn[:, None, :]
            df = nun - d + 1
            scale = psin * ((kn + 1) / (kn * df))[:, None, None]
            diff = xi - mn
            maha = np.einsum("ki,ki->k", diff, np.linalg.solve(scale, diff[:, :, None])[..., 0])
            log_t = (gammaln((df + d) / 2) - gammaln(df / 2) - d / 2 * np.log(df * np.pi)
                     - 0.5 * np.linalg.slogdet(scale)[1] - (df + d) / 2 * np.log1p(maha / df))
            with_row = counts[None, :] + np.eye(k)  # candidate j: row i in component j
            later = np.cumsum(with_row[:, ::-1], axis=1)[:, ::-1] - with_row
            log_pz = np.sum(betaln(1.0 + with_row[:, :-1], gamma + later[:, :-1]), axis=1)
            logp = log_pz + log_t
            prob = np.exp(logp - logp.max())
            z[i] = rng.choice(k, p=prob / prob.sum())
            counts[z[i]] += 1
            sums[z[i]] += xi
            outer[z[i]] += np.outer(xi, xi)
        if sweep >= sweeps // 4:
            occupied.append(int(np.sum(counts > 0.5)))
    return np.bincount(occupied, minlength=k + 1)[1:] / len(occupied)


def ill_conditioned_clusters(n=600, d=4, smallest=1e-6, seed=0):
    """Two clusters whose covariances have eigenvalues from 1 down to ``smallest`` (condition
    number 1e6): beyond what float32's Mahalanobis distances resolve."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(2, size=n)
    centres = rng.normal(0, 2, (2, d))
    roots = [np.linalg.qr(rng.normal(size=(d, d)))[0] * np.sqrt(np.geomspace(1, smallest, d)) for _ in range(2)]
    return centres[labels] + np.einsum("nij,nj->ni", np.stack(roots)[labels], rng.normal(size=(n, d)))


def one_float64_em_step_gain(x, fit, hard=False):
    """The objective gained by one plain float64 EM step (full covariances) from ``fit``'s
    parameters, with SciPy's densities: the reference for ``info["float64_step_gain"]``. ``hard``:
    classification EM (each row wholly in its most probable component, the objective
    ``sum_n max_k log pi_k N(x_n | k)``)."""
    def log_joint(w, m, c):
        return np.stack([np.log(w[j]) + stats.multivariate_normal(m[j], c[j]).logpdf(x) for j in range(len(w))], 1)

    def objective(lj):
        return lj.max(axis=1).sum() if hard else logsumexp(lj, axis=1).sum()

    lj = log_joint(fit.weights, fit.means, fit.covariances)
    resp = np.eye(lj.shape[1])[lj.argmax(axis=1)] if hard else np.exp(lj - logsumexp(lj, axis=1, keepdims=True))
    nk = resp.sum(0)
    means = resp.T @ x / nk[:, None]
    covs = np.stack([((x - means[j]) * resp[:, j, None]).T @ (x - means[j]) / nk[j] for j in range(len(nk))])
    return objective(log_joint(nk / len(x), means, covs)) - objective(lj)
