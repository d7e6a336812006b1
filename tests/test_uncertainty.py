"""EM standard errors: closed forms for one Gaussian, finite differences, bootstrap vs information."""

import numpy as np
import pytest
from _references import mixture_log_density

import bayesgmm as bg
from bayesgmm.uncertainty import bootstrap, from_unconstrained, observed_information, to_unconstrained


@pytest.fixture(scope="module")
def gaussian():
    rng = np.random.default_rng(0)
    cov = np.array([[2.0, 0.6], [0.6, 1.0]])
    x = rng.multivariate_normal([1.0, -2.0], cov, size=500)
    return x, bg.fit_em(x, 1, seed=0)


def _gaussian_se(fit, n):
    """Closed forms at the MLE of one Gaussian: se(mu_j)^2 = S_jj / n,
    se(S_ij)^2 = (S_ii S_jj + S_ij^2) / n (which is 2 S_ii^2 / n on the diagonal)."""
    s = fit.covariances[0]
    return np.sqrt(np.diag(s) / n), np.sqrt((np.outer(np.diag(s), np.diag(s)) + s**2) / n)


def test_observed_information_equals_the_gaussian_closed_form(gaussian):
    x, fit = gaussian
    se = observed_information(fit, x).standard_errors()
    se_mean, se_cov = _gaussian_se(fit, len(x))
    np.testing.assert_allclose(se.means[0], se_mean, rtol=1e-6)
    np.testing.assert_allclose(se.covariances[0], se_cov, rtol=1e-6)
    assert se.weights[0] == 0.0  # one component: the weight is fixed at 1


@pytest.mark.parametrize("kind", ["nonparametric", "parametric"])
def test_bootstrap_matches_the_closed_form_within_monte_carlo_error(gaussian, kind):
    x, fit = gaussian
    b = 400
    boot = bootstrap(fit, x, num_replicates=b, kind=kind, seed=1)
    se = boot.standard_errors()
    se_mean, se_cov = _gaussian_se(fit, len(x))
    # relative sd of an sd estimated from B draws ~ 1/sqrt(2B) = 3.5%; 4 of them, plus kurtosis slack
    np.testing.assert_allclose(se.means[0], se_mean, rtol=4 / np.sqrt(2 * b) + 0.02)
    np.testing.assert_allclose(se.covariances[0], se_cov, rtol=4 / np.sqrt(2 * b) + 0.05)
    assert boot.info["converged_fraction"] == 1.0 and boot.draws["means"].shape == (1, b, 1, 2)


def _central_hessian(f, theta0, h=1e-4):
    """Central second differences of ``f`` at ``theta0`` (an independent reference Hessian)."""
    p = theta0.size
    fd = np.zeros((p, p))
    for i in range(p):
        for j in range(p):
            e_i, e_j = np.eye(p)[i] * h, np.eye(p)[j] * h
            fd[i, j] = (f(theta0 + e_i + e_j) - f(theta0 + e_i - e_j) - f(theta0 - e_i + e_j)
                        + f(theta0 - e_i - e_j)) / (4 * h * h)
    return fd


def test_autodiff_hessian_matches_finite_differences():
    """The Hessian behind observed_information against central differences of an independent
    scipy log-likelihood in the same unconstrained parameterisation (K=2, diag)."""
    import jax

    data = bg.datasets.make_mixture(200, 2, 2, covariance_type="diag", separation=3.0, seed=4)
    fit = bg.fit_em(data.x, 2, covariance_type="diag", seed=0, tol=1e-10, max_iter=1000)
    theta0 = np.asarray(to_unconstrained(bg.GMMParams(*map(np.asarray, fit.params)), "diag"), np.float64)

    def loglik(t):
        w, m, c = (np.asarray(a, np.float64) for a in from_unconstrained(jax.numpy.asarray(t), 2, 2, "diag"))
        return mixture_log_density(data.x, w, m, c, "diag").sum()

    fd = _central_hessian(loglik, theta0)
    cov = np.linalg.inv(-fd)  # of (logit, means (2x2), log variances (2x2)) on the original scale
    w = fit.weights
    se_weight = w[0] * w[1] * np.sqrt(cov[0, 0])  # d softmax([t, 0])_0 / dt = w0 w1
    se_means = np.sqrt(np.diag(cov)[1:5]).reshape(2, 2)
    se_vars = fit.covariances * np.sqrt(np.diag(cov)[5:]).reshape(2, 2)  # d exp(t) = exp(t) dt
    got = observed_information(fit, data.x).standard_errors()
    np.testing.assert_allclose(got.weights, [se_weight, se_weight], rtol=2e-3)
    np.testing.assert_allclose(got.means, se_means, rtol=2e-3)
    np.testing.assert_allclose(got.covariances, se_vars, rtol=2e-3)


def test_observed_information_with_missing_values_matches_finite_differences():
    """With missing values (a fifth of the entries) the Hessian is that of the observed-data
    likelihood: against central differences of an independent scipy computation of it (each row's
    density over its observed columns), K=2, diag. It was refused before."""
    import jax
    from scipy.special import logsumexp
    from scipy.stats import norm

    data = bg.datasets.make_mixture(200, 2, 2, covariance_type="diag", separation=3.0, seed=4)
    x = data.x.copy()
    x[np.random.default_rng(0).random(x.shape) < 0.2] = np.nan
    x[np.isnan(x).all(axis=1), 0] = 0.5  # every row observes something
    fit = bg.fit_em(x, 2, covariance_type="diag", seed=0, tol=1e-10, max_iter=2000, missing="marginalize")
    theta0 = np.asarray(to_unconstrained(bg.GMMParams(*map(np.asarray, fit.params)), "diag"), np.float64)
    observed = ~np.isnan(x)

    def loglik(t):
        w, m, v = (np.asarray(a, np.float64) for a in from_unconstrained(jax.numpy.asarray(t), 2, 2, "diag"))
        per_column = norm.logpdf(np.nan_to_num(x)[:, None, :], m[None], np.sqrt(v)[None])  # (N, K, D)
        joint = np.log(w) + np.sum(np.where(observed[:, None, :], per_column, 0.0), axis=-1)
        return logsumexp(joint, axis=1).sum()

    fd = _central_hessian(loglik, theta0)
    cov = np.linalg.inv(-fd)
    w = fit.weights
    got = observed_information(fit, x).standard_errors()
    np.testing.assert_allclose(got.weights, [w[0] * w[1] * np.sqrt(cov[0, 0])] * 2, rtol=2e-3)
    np.testing.assert_allclose(got.means, np.sqrt(np.diag(cov)[1:5]).reshape(2, 2), rtol=2e-3)
    np.testing.assert_allclose(got.covariances, fit.covariances * np.sqrt(np.diag(cov)[5:]).reshape(2, 2), rtol=2e-3)


def test_bootstrap_and_information_agree_on_old_faithful(faithful):
    fit = bg.fit_em(faithful, 2, n_init=3, seed=0, tol=1e-8, max_iter=500)
    boot = bootstrap(fit, faithful, num_replicates=200, kind="parametric", seed=0)
    info = observed_information(fit, faithful)
    ratio = boot.table["se"] / info.table["se"]
    keep = info.table["se"] > 0
    assert np.all(np.abs(np.log(ratio[keep])) < np.log(1.3)), ratio[keep].round(3).tolist()
    inside = (boot.table["lower"] <= boot.table["estimate"]) & (boot.table["estimate"] <= boot.table["upper"])
    assert inside.all()


def test_bootstrap_refits_compile_once_and_are_reproducible(faithful):
    """The refits of one batch shape run in one compiled program; the same seed gives the same
    replicates, and so does another batch size (one key per replicate, whatever the batching)."""
    fit = bg.fit_em(faithful, 2, seed=0, tol=1e-8, max_iter=500)
    a = bootstrap(fit, faithful, num_replicates=50, seed=3)
    from conftest import CompileCounter

    with CompileCounter() as counter:
        b = bootstrap(fit, faithful, num_replicates=50, seed=3)
    assert counter.compiles == 0 and b.info["compile_seconds"] == 0.0
    c = bootstrap(fit, faithful, num_replicates=50, seed=3, batch_size=25)  # two calls of a new batch shape
    assert c.info["compile_seconds"] > 0.0  # the 25-replicate program, compiled once for both batches
    np.testing.assert_array_equal(a.table["se"], b.table["se"])
    d = bootstrap(fit, faithful, num_replicates=50, seed=3, batch_size=25)
    assert d.info["compile_seconds"] == 0.0
    np.testing.assert_array_equal(c.table["se"], d.table["se"])
    # the same 50 resamples in two batches: the same refits, up to the rounding of another program
    np.testing.assert_allclose(c.draws["means"], a.draws["means"], rtol=1e-9)
    np.testing.assert_allclose(c.table["se"], a.table["se"], rtol=1e-9)


def test_another_number_of_replicates_or_rows_compiles_nothing(faithful):
    """Fewer replicates, or a data set of another size in the same row bucket, reuse the program
    of a first bootstrap (on small data such as these the replicates run in calls of 64 lanes
    whatever their number, the rows padded with rows of weight 0); the first replicates are the
    same resamples, refitted the same way."""
    from conftest import CompileCounter

    fit = bg.fit_em(faithful, 2, seed=0, tol=1e-8, max_iter=500)
    first = {kind: bootstrap(fit, faithful, num_replicates=50, seed=3, kind=kind) for kind in ("nonparametric", "parametric")}
    subset = faithful[:250]
    fit_subset = bg.fit_em(subset, 2, seed=0, tol=1e-8, max_iter=500)
    for kind in ("nonparametric", "parametric"):
        with CompileCounter() as counter:
            fewer = bootstrap(fit, faithful, num_replicates=37, seed=3, kind=kind)
            few = bootstrap(fit, faithful, num_replicates=12, seed=3, kind=kind)  # a 16-lane program before
            other_rows = bootstrap(fit_subset, subset, num_replicates=50, seed=3, kind=kind)
        assert counter.compiles == 0, (kind, counter.compiles)
        assert fewer.info["compile_seconds"] == few.info["compile_seconds"] == other_rows.info["compile_seconds"] == 0.0
        for name in ("weights", "means", "covariances"):
            np.testing.assert_array_equal(fewer.draws[name], first[kind].draws[name][:, :37])
            np.testing.assert_array_equal(few.draws[name], first[kind].draws[name][:, :12])
        assert other_rows.draws["means"].shape == (1, 50, 2, 2)
        # the subset's refits are its own: centred on its own estimate, not on the full data's
        np.testing.assert_allclose(other_rows.draws["means"].mean(1)[0], fit_subset.means, rtol=0.02)


def test_map_fit_uses_the_log_posterior(faithful):
    prior = bg.Prior.default(faithful, 2)
    fit = bg.fit_em(faithful, 2, prior=prior, seed=0, tol=1e-8, max_iter=500)
    ml = bg.fit_em(faithful, 2, seed=0, tol=1e-8, max_iter=500)
    se_map = observed_information(fit, faithful).standard_errors()
    se_ml = observed_information(ml, faithful).standard_errors()
    assert np.all(np.isfinite(se_map.covariances))
    # the weak prior barely changes the curvature of 272 observations
    np.testing.assert_allclose(np.sort(se_map.means, 0), np.sort(se_ml.means, 0), rtol=0.05)


def test_errors(faithful, gaussian):
    x, fit = gaussian
    vb = bg.fit_vb(x, 1, seed=0, num_draws=10)
    with pytest.raises(ValueError, match="FitResult of bayesgmm.fit_em"):
        bootstrap(vb, x)
    with pytest.raises(ValueError, match="pass the training data"):
        observed_information(fit, x[:100])
    with pytest.raises(ValueError, match="kind must be one of"):
        bootstrap(fit, x, kind="jackknife")
    with pytest.raises(ValueError, match="num_replicates must be an integer >= 2"):
        bootstrap(fit, x, num_replicates=1)
    # a negative tol ran every refit to max_iter; batch_size 0 meant "all", 2.5 was cut to 2
    for bad, match in ((dict(tol=-1.0), "tol must be a non-negative number"), (dict(batch_size=0), "batch_size must be"),
                       (dict(batch_size=2.5), "batch_size must be")):
        with pytest.raises(ValueError, match=match):
            bootstrap(fit, x, num_replicates=4, **bad)


def test_batch_size_changes_memory_not_replicates(faithful):
    fit = bg.fit_em(faithful, 2, seed=0)
    a = bg.bootstrap(fit, faithful, num_replicates=12, seed=5)
    b = bg.bootstrap(fit, faithful, num_replicates=12, seed=5, batch_size=5)
    np.testing.assert_allclose(a.table["se"], b.table["se"], rtol=1e-9)


def test_weighted_fits_are_refused_not_misread(faithful):
    w = np.ones(len(faithful))
    w[:50] = 0.0
    fit = bg.fit_em(faithful, 2, seed=0, sample_weight=w)
    for call in (lambda: bg.bootstrap(fit, faithful, num_replicates=4), lambda: bg.observed_information(fit, faithful)):
        with pytest.raises(ValueError, match="made with sample_weight"):
            call()


def test_observed_information_on_another_number_of_rows_compiles_nothing(faithful):
    """The Hessian is compiled for the rows' bucket (padding rows of weight 0): the standard
    errors of a fit on 250 rows after one on 272 compile nothing, and the means' equal central
    differences of an independent log-likelihood of the 250 rows alone."""
    import jax
    from conftest import CompileCounter

    subset = np.asarray(faithful[:250])
    fits = [bg.fit_em(x, 2, seed=0, tol=1e-10, max_iter=1000) for x in (faithful, subset)]
    observed_information(fits[0], faithful)
    with CompileCounter() as counter:
        got = observed_information(fits[1], subset).standard_errors()
    assert counter.compiles == 0
    theta0 = np.asarray(to_unconstrained(bg.GMMParams(*map(np.asarray, fits[1].params)), "full"), np.float64)

    def loglik(t):
        w, m, c = (np.asarray(a, np.float64) for a in from_unconstrained(jax.numpy.asarray(t), 2, 2, "full"))
        return mixture_log_density(subset, w, m, c, "full").sum()

    cov = np.linalg.inv(-_central_hessian(loglik, theta0))  # (logit, means (2x2), log-Cholesky (2x3))
    np.testing.assert_allclose(got.means, np.sqrt(np.diag(cov)[1:5]).reshape(2, 2), rtol=2e-3)


def test_bootstrap_drops_refits_with_a_degenerate_component():
    """A cluster of four points: in most resamples it holds one to three distinct points, and the
    refit's component collapses onto them. ``reg_covar`` kept such refits' objectives finite, so
    they were kept without a word, and the interval of that component's variance reached down to
    the regularisation floor (1e-10, around an estimate of 0.5). They are now dropped, counted
    and warned about, as refits with a singular covariance were."""
    rng = np.random.default_rng(2)
    x = np.vstack([rng.normal(0, 1, (268, 2)), rng.normal([8, 8], 0.5, (4, 2))])  # Old Faithful's size
    fit = bg.fit_em(x, 2, seed=0)
    assert fit.degenerate_components == ()
    with pytest.warns(bg.ConvergenceWarning, match="with a degenerate component"):
        boot = bootstrap(fit, x, num_replicates=64, seed=0)
    info = boot.info
    assert info["num_degenerate"] > 10 and info["num_used"] == 64 - info["num_degenerate"] - info["num_singular"]
    small = int(np.argmin(fit.weights))
    variances = np.linalg.eigvalsh(boot.draws["covariances"][0][:, small])
    assert variances.min() > 1e-3 * np.linalg.eigvalsh(fit.covariances[small]).min()
    assert len(boot.draws["weights"][0]) == info["num_used"]
