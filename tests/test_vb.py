"""Closed-form variational Bayes (bayesgmm.vb) against independent references.

* scikit-learn's ``BayesianGaussianMixture`` (Dirichlet distribution prior), started from the same
  responsibilities with the prior mapped one to one: same variational parameters.
* Conjugate closed forms: for K = 1 the mean-field q is the exact NIW posterior, so the complete
  ELBO equals the log evidence and the predictive is the NIW multivariate t.
* Brute-force enumeration of all 2^N labellings of tiny well-separated data: the ELBO is a lower
  bound on log p(x) and falls short of it by log 2 (VB captures one of the 2! label modes).
* Known truth of simulated data; Monte Carlo checks with tolerances from their standard errors.
"""

import dataclasses
import math

import numpy as np
import pytest
from _references import enumerated_log_evidence_terms, log_evidence_nig_diag, log_evidence_niw, niw_posterior
from conftest import precision
from scipy import stats
from scipy.optimize import linear_sum_assignment
from scipy.special import digamma, logsumexp

import bayesgmm as bg
from bayesgmm import vb
from bayesgmm.params import ConvergenceWarning, standardisation
from bayesgmm.results import IndependentStudentTMixture, StudentTMixture


# ----------------------------------------------------------------------------------------------
# Independent references (numpy / scipy)
# ----------------------------------------------------------------------------------------------
def sklearn_bgm(x, resp, prior, covariance_type, num_iter, reg_covar, patch_diag=False, patch_truncation=True):
    """scikit-learn's VB from given responsibilities: ``_initialize(X, resp)`` then ``num_iter``
    (E, M) sweeps, exactly its ``fit`` loop body.

    Prior mapping: weight_concentration_prior = alpha0, mean_prior = m0, mean_precision_prior =
    kappa0, degrees_of_freedom_prior = nu0, covariance_prior = Psi0 (sklearn's "covariance prior"
    is the inverse of the Wishart scale matrix of the precision, W0^-1 = Psi0; its
    ``covariances_`` are Psi_k / nu_k), diag(Psi0) for diag.

    ``patch_diag``: scikit-learn's diag E-step uses the *multivariate* digamma
    sum_i psi((nu - i)/2) in E[log |Lambda|], while its diag M-step (and our model) is an
    independent Gamma(nu/2) per coordinate whose E[log lambda_j] has psi(nu/2). For D = 1 both
    agree; for D > 1 we replace that single term by the per-coordinate one.

    ``patch_truncation`` (Dirichlet-process weights): scikit-learn keeps a K-th stick
    ``v_K ~ Beta(1 + N_K, gamma)`` and leaves its remainder unassigned, so its ``E[log pi_K]``
    holds ``E[log v_K] < 0``; the truncated process (our model, Blei & Jordan 2006) has ``v_K = 1``.
    We remove that single term; its other K - 1 sticks are compared one to one.
    """
    from sklearn.mixture import BayesianGaussianMixture
    from sklearn.mixture._gaussian_mixture import _estimate_log_gaussian_prob

    bgm = BayesianGaussianMixture(
        n_components=resp.shape[1],
        covariance_type=covariance_type,
        weight_concentration_prior_type=(
            "dirichlet_process" if prior.weight_prior == "dirichlet_process" else "dirichlet_distribution"),
        weight_concentration_prior=prior.weight_concentration,
        mean_prior=prior.mean,
        mean_precision_prior=prior.mean_precision,
        degrees_of_freedom_prior=prior.degrees_of_freedom,
        covariance_prior=prior.scale if covariance_type == "full" else np.diag(prior.scale),
        reg_covar=reg_covar,
    )
    bgm._check_parameters(x)
    if patch_diag:

        def estimate_log_prob(X, xp=None):
            d = X.shape[1]
            log_gauss = _estimate_log_gaussian_prob(X, bgm.means_, bgm.precisions_cholesky_, "diag")
            log_gauss = log_gauss - 0.5 * d * np.log(bgm.degrees_of_freedom_)
            log_lambda = d * (np.log(2.0) + digamma(0.5 * bgm.degrees_of_freedom_))
            return log_gauss + 0.5 * (log_lambda - d / bgm.mean_precision_)

        bgm._estimate_log_prob = estimate_log_prob
    if prior.weight_prior == "dirichlet_process" and patch_truncation:
        shipped = bgm._estimate_log_weights

        def estimate_log_weights(xp=None):
            a, b = bgm.weight_concentration_
            return shipped(xp=xp) - np.eye(len(a))[-1] * (digamma(a[-1]) - digamma(a[-1] + b[-1]))

        bgm._estimate_log_weights = estimate_log_weights
    bgm._initialize(x, resp)
    for _ in range(num_iter):
        _, log_resp = bgm._e_step(x)
        bgm._m_step(x, log_resp)
    return bgm


def rel_err(a, b):
    a, b = np.asarray(a, float), np.asarray(b, float)
    return float(np.max(np.abs(a - b) / np.maximum(np.abs(b), 1e-300)))


@pytest.fixture(scope="module")
def oracle_prior():
    return bg.Prior(
        weight_concentration=0.5,
        mean=[0.1, -0.2],
        mean_precision=0.3,
        degrees_of_freedom=4.5,
        scale=[[0.5, 0.1], [0.1, 0.4]],
    )


@pytest.fixture(scope="module")
def random_resp(faithful_std):
    return np.random.default_rng(0).dirichlet(np.ones(3), size=faithful_std.shape[0])


# ----------------------------------------------------------------------------------------------
# 1. scikit-learn oracle (and, on the same fits, ELBO monotonicity)
# ----------------------------------------------------------------------------------------------
NUM_ITER = 15


@pytest.fixture(scope="module", params=[("full", "dirichlet"), ("diag", "dirichlet"), ("full", "dirichlet_process"),
                                        ("diag", "dirichlet_process")], ids="-".join)
def oracle_fits(request, faithful_std, random_resp, oracle_prior):
    """Ours and scikit-learn's, K = 3 from the same random responsibilities, reg_covar = 0, under a
    Dirichlet and under Dirichlet-process weights."""
    ct, weight_prior = request.param
    prior = dataclasses.replace(oracle_prior, weight_prior=weight_prior)
    bgm = sklearn_bgm(faithful_std, random_resp, prior, ct, NUM_ITER, 0.0, patch_diag=ct == "diag")
    with pytest.warns(ConvergenceWarning):
        r = vb.fit_vb(
            faithful_std, random_resp.shape[1], resp_init=random_resp, covariance_type=ct, prior=prior, n_init=1,
            init_params="kmeans", tol=0.0, max_iter=NUM_ITER, reg_covar=0.0, seed=0, num_draws=50,
        )
    return ct, r, bgm


def _compare_to_sklearn(r, bgm, covariance_type, tol=1e-6):
    info = r.info
    nu = bgm.degrees_of_freedom_
    sk_psi = bgm.covariances_ * (nu[:, None, None] if covariance_type == "full" else nu[:, None])
    if isinstance(bgm.weight_concentration_, tuple):  # sticks: its first K - 1 are ours
        a, b = bgm.weight_concentration_
        assert rel_err(info["alpha"], np.stack([a[:-1], b[:-1]], axis=-1)) < tol
        assert rel_err(info["expected_counts"], a - 1.0) < tol
        assert rel_err(r.weights, np.asarray(info["expected_counts"]) / r.num_obs) < 0.1  # E[pi] ~ N_k / N
    else:
        assert rel_err(info["alpha"], bgm.weight_concentration_) < tol
    assert rel_err(info["beta"], bgm.mean_precision_) < tol
    assert rel_err(info["m"], bgm.means_) < tol
    assert rel_err(info["nu"], nu) < tol
    assert rel_err(info["psi"], sk_psi) < tol


def test_matches_sklearn_variational_parameters(oracle_fits):
    ct, r, bgm = oracle_fits
    assert r.n_iter == NUM_ITER
    _compare_to_sklearn(r, bgm, ct)


def test_elbo_never_decreases(oracle_fits):
    """Exact CAVI (reg_covar = 0): the complete ELBO of q is non-decreasing sweep by sweep."""
    _, r, _ = oracle_fits
    trace = r.trace
    assert trace.shape == (NUM_ITER + 1,) and np.all(np.isfinite(trace))
    assert trace[-1] - trace[0] > 1.0  # it did move from the random start
    assert np.all(np.diff(trace) >= -1e-9 * np.abs(trace[1:]))
    assert r.info["elbo"] == trace[-1]


def test_matches_unpatched_sklearn_diag_in_one_dimension(faithful_std, random_resp):
    """D = 1: scikit-learn's diag is used exactly as shipped (no patched term); reg_covar > 0
    checks that it enters Psi_k as N_k * reg_covar, as in scikit-learn."""
    x = faithful_std[:, :1]
    prior = bg.Prior(weight_concentration=2.0, mean=[0.3], mean_precision=0.05, degrees_of_freedom=3.0, scale=[[0.2]])
    bgm = sklearn_bgm(x, random_resp, prior, "diag", NUM_ITER, 1e-3)
    # bayesgmm's reg_covar is in units of the feature's robust variance, scikit-learn's absolute
    robust_sd = standardisation(x, "diag")[1][0]
    with pytest.warns(ConvergenceWarning):
        r = vb.fit_vb(
            x, random_resp.shape[1], resp_init=random_resp, covariance_type="diag", prior=prior, n_init=1, init_params="kmeans",
            tol=0.0, max_iter=NUM_ITER, reg_covar=1e-3 / robust_sd**2, seed=0, num_draws=50,
        )
    _compare_to_sklearn(r, bgm, "diag")


# ----------------------------------------------------------------------------------------------
# 2. The ELBO: complete, a bound, unit-aware
# ----------------------------------------------------------------------------------------------
def bg_fit(x, k, **kw):
    kw.setdefault("num_draws", 50)
    return vb.fit_vb(x, k, **kw)


@pytest.fixture(scope="module")
def tiny_unscaled():
    """12 points in units far from 1 (tests the un-standardisation of the ELBO)."""
    rng = np.random.default_rng(5)
    z = rng.normal(size=(12, 2)) @ np.array([[1.0, 0.6], [0.0, 0.8]])
    return z * np.array([300.0, 0.02]) + np.array([5000.0, -3.0])


@pytest.fixture(scope="module")
def tiny_prior(tiny_unscaled):
    d = tiny_unscaled.shape[1]
    cov = np.cov(tiny_unscaled, rowvar=False)
    return bg.Prior(weight_concentration=1.0, mean=tiny_unscaled.mean(0) + np.array([50.0, 0.01]),
                    mean_precision=0.7, degrees_of_freedom=d + 1.5, scale=0.8 * cov)


@pytest.fixture(scope="module")
def k1_fit(tiny_unscaled, tiny_prior):
    return bg_fit(tiny_unscaled, 1, prior=tiny_prior, reg_covar=0.0, num_draws=4000, seed=3, init_params="random")


@pytest.fixture(scope="module")
def k1_fit_diag(tiny_unscaled, tiny_prior):
    return bg_fit(tiny_unscaled, 1, prior=tiny_prior, covariance_type="diag", reg_covar=0.0, num_draws=4000, seed=4, init_params="random")


def test_elbo_equals_log_evidence_k1_full(k1_fit, tiny_unscaled, tiny_prior):
    """K = 1: q(mu, Sigma) is the exact NIW posterior, so the complete ELBO is log p(x)."""
    p = tiny_prior
    exact = log_evidence_niw(tiny_unscaled, p.mean, p.mean_precision, p.degrees_of_freedom, p.scale)
    assert k1_fit.info["elbo"] == pytest.approx(exact, abs=1e-8, rel=1e-10)
    assert k1_fit.trace[0] == pytest.approx(exact, abs=1e-8, rel=1e-10)  # exact after the first update


def test_the_two_closed_forms_of_the_diag_evidence_agree(tiny_unscaled, tiny_prior):
    """The oracle itself: the normal-inverse-gamma evidence per feature equals the 1-D
    normal-inverse-Wishart evidence summed over the features (two derivations)."""
    p, x = tiny_prior, tiny_unscaled
    per_feature = sum(log_evidence_niw(x[:, [j]], p.mean[[j]], p.mean_precision, p.degrees_of_freedom,
                                       p.scale[[j]][:, [j]]) for j in range(x.shape[1]))
    nig = log_evidence_nig_diag(x, p.mean, p.mean_precision, p.degrees_of_freedom, np.diag(p.scale))
    assert nig == pytest.approx(per_feature, rel=1e-12)


def test_elbo_equals_log_evidence_k1_diag(k1_fit_diag, tiny_unscaled, tiny_prior):
    p = tiny_prior
    exact = log_evidence_nig_diag(tiny_unscaled, p.mean, p.mean_precision, p.degrees_of_freedom, np.diag(p.scale))
    assert k1_fit_diag.info["elbo"] == pytest.approx(exact, abs=1e-8, rel=1e-10)


def test_elbo_is_bound_with_log2_gap_by_enumeration():
    """Two clusters 40 sd apart, N = 8: log p(x) by summing all 2^8 labellings
    (Dirichlet-multinomial x NIW evidence per cluster). VB captures one of the two label modes
    exactly, so ELBO = log p(x) - log 2 (to the tiny mass of other labellings)."""
    rng = np.random.default_rng(2)
    x = np.concatenate([rng.normal(size=(4, 2)) - 20.0, rng.normal(size=(4, 2)) + 20.0])
    # a unit-scale prior, so that wrong labellings carry negligible mass (exp(-21) here)
    prior = bg.Prior(1.0, x.mean(0), 0.01, 4.0, np.eye(2))
    terms = enumerated_log_evidence_terms(x, 2, 1.0, prior.mean, prior.mean_precision, prior.degrees_of_freedom,
                                          prior.scale)
    log_px = logsumexp(terms)
    r = bg_fit(x, 2, prior=prior, reg_covar=0.0, tol=1e-10, max_iter=50)
    assert r.info["elbo"] < log_px
    assert r.info["elbo"] == pytest.approx(max(terms), abs=1e-6)  # exact on the captured mode
    assert log_px - r.info["elbo"] == pytest.approx(math.log(2.0), abs=1e-6)


def test_elbo_changes_by_data_log_jacobian_only(faithful):
    """Fitting x and c*x + b with the default (data-scaled) prior gives the same fit up to units;
    the ELBO moves by -N D log c, the log-Jacobian of the data map (parameter Jacobians cancel)."""
    c = np.array([1000.0, 0.01])
    r1 = bg_fit(faithful, 2, n_init=2)
    r2 = bg_fit(faithful * c + 7.0, 2, n_init=2)
    shift = -faithful.shape[0] * np.sum(np.log(c))
    assert r2.info["elbo"] == pytest.approx(r1.info["elbo"] + shift, rel=1e-9)
    np.testing.assert_allclose(r2.means, r1.means * c + 7.0, rtol=1e-7)
    assert r2.log_likelihood == pytest.approx(r1.log_likelihood + shift, rel=1e-9)


# ----------------------------------------------------------------------------------------------
# 3. Predictive
# ----------------------------------------------------------------------------------------------
def test_student_t_predictive_equals_niw_closed_form(k1_fit, tiny_unscaled, tiny_prior):
    p, x = tiny_prior, tiny_unscaled
    mn, kn, nun, psin = niw_posterior(x, p.mean, p.mean_precision, p.degrees_of_freedom, p.scale)
    d = x.shape[1]
    df = nun - d + 1
    ref = stats.multivariate_t(loc=mn, shape=psin * (kn + 1) / (kn * df), df=df)
    pts = x[:5] + np.array([100.0, 0.01])
    assert isinstance(k1_fit.predictive, StudentTMixture)
    np.testing.assert_allclose(k1_fit.score_samples(pts), ref.logpdf(pts), rtol=1e-9)
    # the posterior mean point estimate: E[Sigma] = Psi_N / (nu_N - D - 1)
    np.testing.assert_allclose(k1_fit.covariances[0], psin / (nun - d - 1), rtol=1e-9)
    np.testing.assert_allclose(k1_fit.means[0], mn, rtol=1e-9)


def test_student_t_predictive_agrees_with_monte_carlo_over_draws(k1_fit, tiny_unscaled):
    pts = tiny_unscaled[:5] + np.array([100.0, 0.01])
    means, covs = k1_fit.draws["means"][0, :, 0], k1_fit.draws["covariances"][0, :, 0]
    dens = np.stack([stats.multivariate_normal(m, c).pdf(pts) for m, c in zip(means, covs)])  # (S, P)
    mc = np.log(dens.mean(0))
    se = dens.std(0) / np.sqrt(dens.shape[0]) / dens.mean(0)  # delta-method sd of the log
    assert np.all(np.abs(mc - k1_fit.score_samples(pts)) < 4 * se + 1e-12)


def test_draws_follow_q(k1_fit, tiny_unscaled, tiny_prior):
    """Draw moments vs q's closed-form moments: E[Sigma] = Psi/(nu-D-1), E[mu] = m."""
    c = k1_fit.draws["covariances"][0, :, 0]
    m = k1_fit.draws["means"][0, :, 0]
    s = c.shape[0]
    for i, j in [(0, 0), (0, 1), (1, 1)]:
        se = c[:, i, j].std() / np.sqrt(s)
        assert abs(c[:, i, j].mean() - k1_fit.covariances[0, i, j]) < 4 * se
    se_m = m.std(0) / np.sqrt(s)
    assert np.all(np.abs(m.mean(0) - k1_fit.means[0]) < 4 * se_m)
    assert k1_fit.draws["weights"].shape == (1, s, 1) and np.all(k1_fit.draws["weights"] == 1.0)


def test_diag_predictive_is_the_product_of_univariate_t(k1_fit_diag, tiny_unscaled, tiny_prior, tmp_path):
    """diag: each feature's posterior is normal-inverse-gamma, so the exact predictive is a product
    of univariate t's (it used to be a Monte Carlo average over 200 draws, 0.1 nats off a row and
    not invariant to a feature's sign). Exact against the closed form, within Monte Carlo error of
    the draws' average, the marginal of the observed entries for a row with NaN, and kept by NetCDF."""
    p, x, r = tiny_prior, tiny_unscaled, k1_fit_diag
    assert isinstance(r.predictive, IndependentStudentTMixture)
    pts = x[:4] + np.array([100.0, 0.01])
    per_feature = np.zeros((len(pts), x.shape[1]))
    for j in range(x.shape[1]):
        mn, kn, nun, psin = niw_posterior(x[:, [j]], p.mean[[j]], p.mean_precision, p.degrees_of_freedom, p.scale[[j]][:, [j]])
        per_feature[:, j] = stats.t(df=nun, loc=mn[0], scale=np.sqrt(psin[0, 0] * (kn + 1) / (kn * nun))).logpdf(pts[:, j])
    np.testing.assert_allclose(r.score_samples(pts), per_feature.sum(1), rtol=1e-12)
    with_nan = pts.copy()
    with_nan[1, 0] = with_nan[2, 1] = np.nan
    np.testing.assert_allclose(r.score_samples(with_nan)[1:3], [per_feature[1, 1], per_feature[2, 0]], rtol=1e-12)
    means, covs = r.draws["means"][0, :, 0], r.draws["covariances"][0, :, 0]
    dens = np.prod(stats.norm.pdf(pts[None], means[:, None], np.sqrt(covs[:, None])), axis=-1)
    se = dens.std(0) / np.sqrt(dens.shape[0]) / dens.mean(0)
    assert np.all(np.abs(np.log(dens.mean(0)) - per_feature.sum(1)) < 4 * se)
    back = bg.load_result(bg.save_result(r, tmp_path / "vb_diag.nc"))
    assert isinstance(back.predictive, IndependentStudentTMixture)
    np.testing.assert_array_equal(back.score_samples(pts), r.score_samples(pts))


def test_diag_predictive_of_several_components_is_their_weighted_t_products():
    """K = 3: the weights E[pi_k] and each component's t's from q (``info``), recomputed with
    SciPy; invariant to a feature's sign (the fit of -x gives the same row densities)."""
    x = bg.datasets.make_mixture(150, 3, 2, covariance_type="diag", seed=2).x
    fit, flipped = (bg.fit_vb(a, 3, covariance_type="diag", seed=0) for a in (x, x * np.array([-1.0, 1.0])))
    q = fit.info
    alpha, beta, nu, psi = (np.asarray(q[k]) for k in ("alpha", "beta", "nu", "psi"))
    pts = x[:6]
    logp = np.log(alpha / alpha.sum())[:, None] + np.stack([
        stats.t(df=nu[k], loc=fit.means[k], scale=np.sqrt(psi[k] * (1 + beta[k]) / (beta[k] * nu[k]))).logpdf(pts).sum(1)
        for k in range(3)])
    np.testing.assert_allclose(fit.score_samples(pts), logsumexp(logp, axis=0), rtol=1e-12)
    np.testing.assert_allclose(flipped.score_samples(pts * np.array([-1.0, 1.0])), fit.score_samples(pts), rtol=1e-9)


# ----------------------------------------------------------------------------------------------
# 4. Sparse Dirichlet empties superfluous components
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("covariance_type", ["full", pytest.param("diag", marks=pytest.mark.slow)])
def test_sparse_dirichlet_finds_true_number_of_components(covariance_type):
    """K = 6, alpha = 1e-3 on two-cluster data: four components empty out. (CAVI has local optima
    that keep a split-off third component, with a lower ELBO than the two-component solution;
    on this sample every k-means start and 8 random starts end there, 16 random starts find the
    better one: restarts ranked by the complete ELBO are how users avoid it.)"""
    data = bg.datasets.make_mixture(400, 2, 2, covariance_type=covariance_type, separation=5.0, seed=2)
    prior = bg.Prior.default(data.x, 6, weight_concentration=1e-3)
    r = bg_fit(data.x, 6, covariance_type=covariance_type, prior=prior, max_iter=300, tol=1e-6, seed=0,
               n_init=16, init_params="random")
    assert r.converged and r.info["elbo"] == pytest.approx(max(r.info["restart_elbos"]), rel=1e-9)
    assert r.info["effective_components"] == 2 == r.effective_components
    assert len(r.info["empty_components"]) == 4
    np.testing.assert_allclose(np.sort(r.weights)[-2:], np.sort(data.params.weights), atol=0.06)
    assert np.all(np.isfinite(r.draws["weights"])) and np.allclose(r.draws["weights"].sum(-1), 1.0)


@pytest.mark.parametrize("covariance_type", ["full", "diag"])
def test_a_merge_is_the_conjugate_update_of_both_components_rows(covariance_type):
    """bayesgmm._vb_moves inverts the conjugate update (q -> the statistics behind it) and a
    merge of components 0 and 1 equals the update from their rows' pooled statistics with
    component 1 empty, statistics taken here from the rows directly."""
    from bayesgmm import _vb_moves

    rng = np.random.default_rng(0)
    x = rng.normal(size=(60, 3)) * [1.0, 2.0, 0.5] + np.repeat(rng.normal(size=(4, 3)) * 3, 15, axis=0)
    labels = np.repeat([0, 1, 2, 3], 15)
    prior = bg.Prior.default(x, 4).arrays(4, covariance_type)
    m0 = np.asarray(prior[1], np.float64)

    def update(groups):  # the conjugate update from the rows of each group of labels
        nk, xbar, s = [], [], []
        for g in groups:
            rows = x[np.isin(labels, g)]
            nk.append(len(rows))
            xbar.append(rows.mean(0) if len(rows) else m0)
            dev = rows - xbar[-1]
            s.append(dev.T @ dev if covariance_type == "full" else np.sum(dev**2, 0))
        return vb.vb_m_step(np.array(nk, float), np.array(xbar), np.array(s), prior, 1e-6, covariance_type)

    q = update([[0], [1], [2], [3]])
    nk, xbar, s = _vb_moves.statistics(q, prior, 1e-6, covariance_type)
    np.testing.assert_allclose(nk, [15, 15, 15, 15], rtol=1e-12)
    np.testing.assert_allclose(xbar, [x[labels == k].mean(0) for k in range(4)], rtol=1e-10, atol=1e-12)
    merged = _vb_moves.merged(q, 0, 1, prior, 1e-6, covariance_type, vb.vb_m_step)
    expected = update([[0, 1], [], [2], [3]])
    for got, want in zip(merged, expected):
        np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12)


def test_merge_moves_empty_a_component_that_shares_a_cluster():
    """K = 32 under the default Dirichlet(1) weights on 16 separated clusters (2-D, 2000 rows, a
    review's data set): the search's best run holds one cluster on two components, a plateau
    that thousands of sweeps would leave (converged 3.5-4.7 nats below VB from the true labels
    before the merge moves); a merge (bayesgmm._vb_moves) reaches the true labels' optimum."""
    rng = np.random.default_rng(2)
    while True:  # centres at least 6 apart, as the review drew them
        centres = rng.normal(0.0, 10.0, (16, 2))
        apart = np.sqrt(((centres[:, None] - centres[None]) ** 2).sum(-1)) + 1e9 * np.eye(16)
        if apart.min() >= 6.0:
            break
    labels = rng.integers(0, 16, 2000)
    x = centres[labels] + rng.standard_normal((2000, 2))
    fit = bg.fit_vb(x, 32)
    truth = bg.fit_vb(x, 32, resp_init=np.eye(32)[labels])
    assert fit.converged and fit.info["elbo"] == pytest.approx(truth.info["elbo"], abs=1e-3 * len(x))
    assert fit.info["effective_components"] == 16 == truth.info["effective_components"]
    moves = fit.info["merge_moves"]["moves"]
    assert moves and all(m["gain"] > 0 for m in moves)


@pytest.mark.filterwarnings("ignore::bayesgmm.ConvergenceWarning")  # max_iter is the point here
def test_short_runs_over_explicit_starts(faithful):
    """``n_init=R, init_iter=s`` ranks R starts by their ELBO after s sweeps and continues the
    best; with s = max_iter it is R independent starts."""
    kw = dict(init_params="random", seed=3, tol=0.0)
    independent = bg_fit(faithful, 3, n_init=8, max_iter=5, **kw)
    whole = bg_fit(faithful, 3, n_init=8, init_iter=5, max_iter=5, **kw)
    assert whole.info["num_kept"] == 1 and independent.info["num_kept"] == 8
    assert whole.info["elbo"] == pytest.approx(independent.info["elbo"], rel=1e-12)
    short = bg_fit(faithful, 3, n_init=8, init_iter=2, max_iter=5, **kw)
    assert short.n_iter == 5 and short.info["init_iter"] == 2 and len(short.info["start_elbos"]) == 8
    assert short.info["elbo"] >= max(short.info["start_elbos"]) - 1e-9 * abs(short.info["elbo"])
    two = bg_fit(faithful, 3, n_init=8, max_iter=2, **kw)
    np.testing.assert_allclose(short.info["start_elbos"], two.info["restart_elbos"], rtol=1e-9)
    best = int(np.argmax(short.info["start_elbos"]))  # the continued run is the best short run
    assert short.info["restart_elbos"][0] == pytest.approx(independent.info["restart_elbos"][best], rel=1e-9)
    with pytest.raises(ValueError, match="init_iter"):
        bg_fit(faithful, 3, n_init=8, init_iter=0)


def test_small_data_run_the_search_as_one_queue(faithful, monkeypatch):
    """As EM's (``test_em.py``): on small data the default search queues its 256 short runs
    through a pool of 16 lanes in one call, then continues the best 16 in a second; the fit
    equals the search in blocks of 16 short runs (17 calls)."""
    from bayesgmm import _iterate

    lanes_per_call = []
    program_call = type(vb.PROGRAM).__call__

    def counted(self, xs, noise, *args, **static):
        lanes_per_call.append((noise.shape[0], static["pool_lanes"]))
        return program_call(self, xs, noise, *args, **static)

    monkeypatch.setattr(type(vb.PROGRAM), "__call__", counted)
    queued = bg.fit_vb(faithful, 3, seed=1)
    assert lanes_per_call == [(256, 16), (256, 16)]
    lanes_per_call.clear()
    monkeypatch.setattr(_iterate, "pooled", lambda *args: False)
    blocks = bg.fit_vb(faithful, 3, seed=1)
    assert lanes_per_call == [(16, None)] * 17
    np.testing.assert_allclose(queued.info["start_elbos"], blocks.info["start_elbos"], rtol=1e-12)
    assert queued.n_iter == blocks.n_iter and queued.info["elbo"] == pytest.approx(blocks.info["elbo"], rel=1e-14)
    for a, b in zip(queued.params, blocks.params):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-14)


# ----------------------------------------------------------------------------------------------
# 5. Recovery, determinism, compile-once, errors
# ----------------------------------------------------------------------------------------------
def test_recovers_known_means(sim3):
    r = bg_fit(sim3.x, 3, seed=0, n_init=2)
    true = sim3.params.means
    cost = ((r.means[:, None] - true[None]) ** 2).sum(-1)
    row, col = linear_sum_assignment(cost)
    # posterior sd of each mean coordinate: diag(E[Sigma]) / beta
    sd = np.sqrt(np.diagonal(r.covariances, axis1=1, axis2=2) / np.asarray(r.info["beta"])[:, None])
    err = np.abs(r.means[row] - true[col])
    # truth vs posterior mean: within 5 posterior sd (plus the finite-sample spread of truth itself)
    assert np.all(err < 5 * sd[row] + 0.05)
    np.testing.assert_allclose(r.weights[row], sim3.params.weights[col], atol=0.06)
    # point-estimate log-likelihood is the plug-in log-likelihood of the training data
    assert r.log_likelihood == pytest.approx(np.sum(r.log_likelihood_samples(sim3.x)), rel=1e-10)
    assert r.method == "vb" and r.objective == "elbo" and r.converged


def test_same_seed_bit_identical_and_compiles_once(faithful):
    r1 = bg_fit(faithful, 2, seed=7, n_init=2)
    from conftest import CompileCounter

    with CompileCounter() as counter:
        r2 = bg_fit(faithful, 2, seed=7, n_init=2)
    assert counter.compiles == 0 and r2.info["compile_seconds"] == 0.0  # same shapes: nothing compiled
    for a, b in [(r1.weights, r2.weights), (r1.means, r2.means), (r1.covariances, r2.covariances), (r1.trace, r2.trace)]:
        np.testing.assert_array_equal(a, b)
    for key in ("weights", "means", "covariances"):
        np.testing.assert_array_equal(r1.draws[key], r2.draws[key])
    r3 = bg_fit(faithful, 2, seed=8, n_init=2)
    assert not np.array_equal(r1.draws["means"], r3.draws["means"])


def test_arviz_summary_of_draws(faithful):
    az = bg.diagnostics.import_arviz()

    r = bg_fit(faithful, 2, seed=0, n_init=2)
    s = az.summary({k: r.draws[k] for k in ("weights", "means")}, kind="stats")
    np.testing.assert_allclose(s.loc[["weights[0]", "weights[1]"], "mean"].to_numpy(), r.weights, atol=0.01)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"covariance_type": "spherical"}, "not supported by fit_vb"),
        ({"covariance_type": "tied"}, "not supported by fit_vb"),
        ({"covariance_type": "banana"}, "covariance_type must be one of"),
        ({"num_draws": 0}, "num_draws must be a positive integer"),
        ({"n_init": 0}, "n_init must be a positive integer"),
        ({"tol": -1.0}, "tol must be a non-negative"),
        ({"init_params": "magic"}, "init_params must be one of"),
        ({"prior": bg.Prior(1.0, [0.0], 1.0, 3.0, [[1.0]])}, "prior is for 1 feature"),
        ({"prior": "default"}, "prior must be a bayesgmm.Prior"),
        ({"resp_init": np.full((272, 3), 1 / 3)}, r"resp_init must have shape \(272, 2\)"),
        ({"resp_init": np.full(272, 0.5)}, r"resp_init must be an \(N, K\) array of responsibilities, got shape \(272,\)"),
        ({"resp_init": np.r_[np.full((3, 2), 0.5), [[0.7, 0.7]], np.full((268, 2), 0.5)]},
         r"row 3 \(counting from 0\) is \[0.7, 0.7\]"),
    ],
)
def test_bad_input_errors(faithful, kwargs, match):
    with pytest.raises(ValueError, match=match):
        vb.fit_vb(faithful, 2, **kwargs)


def test_an_elbo_that_overflows_names_the_values_not_only_the_scale(faithful):
    """Weights of 1e300 in float32 overflowed in a cast and the failure advised only "increase
    reg_covar or the prior scale", wrong for an overflow: such weights are refused up front, and so
    is a concentration of 1e-300, which became 0 in float32 (its failure named the overflow)."""
    with precision(np.float32), pytest.raises(ValueError, match="sample_weight holds 1e\\+300, beyond what float32"):
        bg.fit_vb(faithful, 2, sample_weight=np.full(len(faithful), 1e300))
    with precision(np.float32), pytest.raises(ValueError, match="weight_concentration 1e-300 is beyond what float32 holds"):
        bg.fit_vb(faithful, 2, prior=bg.Prior.default(faithful, 2, weight_concentration=1e-300))


def test_bad_data_errors(faithful):
    x = faithful.copy()
    x[3, 1] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        vb.fit_vb(x, 2)
    with pytest.raises(ValueError, match="num_components"):
        vb.fit_vb(faithful, 0)


def test_float32_input_runs_in_float32_and_agrees(faithful):
    r64 = bg_fit(faithful, 2, n_init=2)
    with precision(np.float32):
        r32 = bg_fit(faithful, 2, n_init=2)
    assert r32.info["dtype"] == "float32"
    assert r32.info["elbo"] == pytest.approx(r64.info["elbo"], rel=1e-5)
    np.testing.assert_allclose(r32.means, r64.means, rtol=1e-4)


def test_sparse_prior_default_settings_reach_the_best_elbo_a_long_search_finds():
    """Default settings on an overfitted sparse mixture: converged, at the highest ELBO that 64
    independent starts run to a tight tolerance find (a test on the last ELBO change alone once
    stopped this fit on the plateau after 7 sweeps, 40 nats lower)."""
    rng = np.random.default_rng(0)
    x = np.r_[rng.normal(-2, 1, (100, 2)), rng.normal(3, 0.5, (100, 2))]
    prior = bg.Prior.default(x, 6, weight_concentration=1e-3)
    r = bg.fit_vb(x, 6, prior=prior, seed=0, num_draws=20)
    ref = bg.fit_vb(x, 6, prior=prior, seed=1, num_draws=20, n_init=64, tol=1e-10, max_iter=5000)
    assert r.converged and ref.converged
    assert r.info["elbo"] >= max(ref.info["restart_elbos"]) - 0.02
    assert r.info["effective_components"] == 2


def test_log_prior_of_draws_with_underflowed_weights_is_finite():
    """Draws from a sparse Dirichlet (concentration << 1) have weights that underflow to exactly
    0; the prior density (alpha - 1) log w once made sample_stats.lp +inf."""
    from bayesgmm.diagnostics import log_prior_draws

    x = np.random.default_rng(0).normal(size=(50, 2))
    pa = bg.Prior.default(x, 3, weight_concentration=1e-3).arrays(3, "full")
    w = np.array([[0.5, 0.5, 0.0], [0.2, 0.3, 0.5]])
    m = np.zeros((2, 3, 2))
    c = np.broadcast_to(np.eye(2), (2, 3, 2, 2))
    lp = np.asarray(log_prior_draws(w, m, c, pa, covariance_type="full"))
    assert np.all(np.isfinite(lp)) and lp[0] > lp[1]  # the near-empty draw is the likelier one


def test_row_weights_count_rows_everywhere_the_default_prior_included(faithful):
    """Frequency weights act as repeated rows in VB's default prior too (it was built from the
    unweighted rows: a far row of weight 0 moved the ELBO from -1168.9 to -1759.1)."""
    x = np.asarray(faithful, np.float64)
    plain = bg.fit_vb(x, 2, seed=0)
    padded = bg.fit_vb(np.vstack([x, [[1000.0, 70.0]]]), 2, seed=0, sample_weight=np.r_[np.ones(len(x)), 0.0])
    np.testing.assert_allclose(padded.prior.scale, plain.prior.scale, rtol=1e-12)
    np.testing.assert_allclose(padded.info["elbo"], plain.info["elbo"], rtol=1e-6)
    counts = np.random.default_rng(0).integers(1, 4, len(x))
    weighted = bg.fit_vb(x, 2, seed=0, sample_weight=counts.astype(float))
    repeated = bg.fit_vb(np.repeat(x, counts, axis=0), 2, seed=0)
    np.testing.assert_allclose(weighted.prior.scale, repeated.prior.scale, rtol=1e-12)
    np.testing.assert_allclose(weighted.info["elbo"], repeated.info["elbo"], rtol=1e-6)
    # with missing values: each column's and each pair's observed rows, as for repeated rows
    gaps = x.copy()
    gaps[::7, 0], gaps[1::7, 1] = np.nan, np.nan
    by_weight = bg.Prior.default(gaps, 2, sample_weight=counts.astype(float))
    by_rows = bg.Prior.default(np.repeat(gaps, counts, axis=0), 2)
    np.testing.assert_allclose(by_weight.mean, by_rows.mean, rtol=1e-12)
    np.testing.assert_allclose(by_weight.scale, by_rows.scale, rtol=1e-12)
