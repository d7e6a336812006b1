"""Missing values (missing at random) in every engine: observed-data likelihoods against scipy,
EM's fixed point against a numerical optimiser, the one model's NumPyro density, MCAR and MAR
simulations against complete-case analysis, imputation against closed forms, and errors."""

import warnings

import numpy as np
import pytest
from _references import log_prior
from scipy.optimize import minimize
from scipy.special import logsumexp
from scipy.stats import multivariate_normal

import bayesgmm as bg
from bayesgmm.model import log_likelihood as model_log_likelihood

STRUCTURES = ("full", "diag", "spherical", "tied")


def _with_missing(x, share, seed):
    """``x`` with a share of its entries set to NaN completely at random (every row keeps one)."""
    rng = np.random.default_rng(seed)
    out = np.array(x, np.float64)
    hole = rng.random(out.shape) < share
    hole[hole.all(axis=1), 0] = False
    out[hole] = np.nan
    return out


def _observed_log_likelihood(x, weights, means, full_covariances):
    """Per row: log sum_k pi_k N(x_o | mu_k,o, Sigma_k,oo) by scipy on the observed sub-vectors
    (rows grouped by their pattern of observed columns)."""
    observed = ~np.isnan(x)
    out = np.empty(len(x))
    for pattern in np.unique(observed, axis=0):
        rows = np.flatnonzero((observed == pattern).all(axis=1))
        o = pattern
        terms = [np.log(w) + np.atleast_1d(multivariate_normal(m[o], c[np.ix_(o, o)]).logpdf(x[np.ix_(rows, o)]))
                 for w, m, c in zip(weights, means, full_covariances)]
        out[rows] = logsumexp(np.stack(terms, axis=1), axis=1)
    return out


@pytest.fixture(scope="module")
def faithful_missing(faithful):
    return _with_missing(faithful, 0.2, seed=0)


@pytest.fixture(scope="module")
def em_fits(faithful_missing):
    return {ct: bg.fit_em(faithful_missing, 2, covariance_type=ct, missing="marginalize") for ct in STRUCTURES}


def test_reported_log_likelihood_is_the_observed_data_one(em_fits, faithful_missing):
    """For every structure: the reported total and score_samples equal scipy's row-by-row
    recomputation over the observed columns; the NumPyro model's per-observation density (its
    MarginalMixture site) is the same number."""
    for ct, fit in em_fits.items():
        assert fit.converged and fit.info["num_missing"] == int(np.isnan(faithful_missing).sum())
        rows = _observed_log_likelihood(faithful_missing, fit.weights, fit.means, fit.full_covariances)
        np.testing.assert_allclose(fit.log_likelihood, rows.sum(), rtol=1e-10, err_msg=ct)
        np.testing.assert_allclose(fit.score_samples(faithful_missing), rows, rtol=1e-9, atol=1e-9, err_msg=ct)
        numpyro_rows = np.asarray(model_log_likelihood(faithful_missing, fit.params, ct))
        np.testing.assert_allclose(numpyro_rows, rows, rtol=1e-9, atol=1e-9, err_msg=ct)
        assert np.all(np.diff(fit.trace[:-1]) > -1e-8), ct  # EM climbs the observed-data likelihood


def test_marginalised_fit_beats_the_complete_case_fit_on_the_observed_data(em_fits, faithful_missing):
    complete = faithful_missing[~np.isnan(faithful_missing).any(axis=1)]
    for ct, fit in em_fits.items():
        cc = bg.fit_em(complete, 2, covariance_type=ct)
        assert fit.log_likelihood >= cc.log_likelihood_samples(faithful_missing).sum() - 1e-9, ct


def test_nothing_missing_is_the_complete_data_fit(faithful):
    a = bg.fit_em(faithful, 2)
    b = bg.fit_em(faithful, 2, missing="marginalize")
    np.testing.assert_array_equal(a.means, b.means)
    assert a.log_likelihood == b.log_likelihood


def _unpack(theta, k, d):
    logits = np.concatenate([[0.0], theta[: k - 1]])
    means = theta[k - 1 : k - 1 + k * d].reshape(k, d)
    tri = np.tril_indices(d)
    chols = np.zeros((k, d, d))
    for j, t in enumerate(theta[k - 1 + k * d :].reshape(k, -1)):
        chols[j][tri] = t
        chols[j][np.diag_indices(d)] = np.exp(np.diag(chols[j]))
    return np.exp(logits - logsumexp(logits)), means, chols @ np.swapaxes(chols, -1, -2)


def _pack(weights, means, covariances):
    chols = np.linalg.cholesky(covariances)
    tri = np.tril_indices(means.shape[1])
    blocks = []
    for c in chols:
        c = c.copy()
        c[np.diag_indices(len(c))] = np.log(np.diag(c))
        blocks.append(c[tri])
    return np.concatenate([np.log(weights[1:] / weights[0]), means.ravel(), np.concatenate(blocks)])


@pytest.mark.parametrize("k", [1, 2])
def test_em_fixed_point_is_a_maximum_of_the_observed_data_likelihood(k):
    """BFGS on an independent (Cholesky) parameterisation of the observed-data likelihood, from
    EM's fit run to tol=1e-10, finds nothing higher: EM's conditional E-step climbs the right
    function. (A wrong conditional expectation gives a fixed point that is not stationary.)"""
    rng = np.random.default_rng(3)
    x = np.vstack([rng.multivariate_normal([0, 0, 0], [[1, .6, .3], [.6, 1, .5], [.3, .5, 1]], 30),
                   rng.multivariate_normal([3, 1, -2], [[.5, -.2, 0], [-.2, 1, .3], [0, .3, .8]], 20)])
    x = _with_missing(x, 0.3, seed=4)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fit = bg.fit_em(x, k, missing="marginalize", tol=1e-10, max_iter=5000)

    def negative(theta):
        return -_observed_log_likelihood(x, *_unpack(theta, k, 3)).sum()

    theta = _pack(fit.weights, fit.means, fit.full_covariances)
    np.testing.assert_allclose(-negative(theta), fit.log_likelihood, rtol=1e-10)
    better = minimize(negative, theta, method="BFGS", options={"gtol": 1e-7})
    assert negative(theta) - better.fun < 1e-6


def test_mar_missingness_biases_complete_cases_not_the_marginalised_fit():
    """Two clusters; the second feature goes missing (at random given the first, MAR) mostly in the
    right-hand cluster, so complete cases under-represent it. The marginalised fit recovers the
    weights and means within a few Monte Carlo standard errors; complete-case analysis does not."""
    rng = np.random.default_rng(11)
    n, w_true = 1500, 0.5
    z = rng.random(n) < w_true
    means = np.array([[-2.0, 0.0], [2.0, 3.0]])
    x = means[z.astype(int)] + rng.normal(size=(n, 2)) * 0.8
    p_missing = 1 / (1 + np.exp(-3 * x[:, 0]))  # depends on the observed first feature only
    xm = x.copy()
    xm[rng.random(n) < 0.9 * p_missing, 1] = np.nan
    marg = bg.fit_em(xm, 2, missing="marginalize", seed=0)
    cc = bg.fit_em(xm[~np.isnan(xm[:, 1])], 2, seed=0)
    right = lambda f: int(np.argmax(f.means[:, 0]))  # noqa: E731
    se = np.sqrt(w_true * (1 - w_true) / n)
    assert abs(marg.weights[right(marg)] - w_true) < 4 * se
    np.testing.assert_allclose(marg.means[right(marg)], means[1], atol=0.1)
    assert cc.weights[right(cc)] < w_true - 20 * se  # complete cases lost most of the right cluster


def test_mcar_missingness_recovers_the_truth():
    data = bg.datasets.make_mixture(600, 3, 3, separation=4.0, seed=5)
    xm = _with_missing(data.x, 0.25, seed=6)
    fit = bg.fit_em(xm, 3, missing="marginalize", seed=0)
    order = [int(np.argmin(np.linalg.norm(fit.means - m, axis=1))) for m in data.params.means]
    assert sorted(order) == [0, 1, 2]
    np.testing.assert_allclose(fit.means[order], data.params.means, atol=0.2)
    np.testing.assert_allclose(fit.weights[order], data.params.weights, atol=0.04)


# ----------------------------------------------------------------------------------------------
# The Bayesian engines
# ----------------------------------------------------------------------------------------------
def test_vb_with_missing_values(faithful_missing, faithful):
    """Closed-form VB: the ELBO climbs, nothing missing equals the complete-data fit, and the
    posterior means agree with the EM fit's and with Gibbs sampling's on the same data."""
    vb = bg.fit_vb(faithful_missing, 2, missing="marginalize")
    assert vb.converged and np.all(np.diff(vb.trace[:-1]) > -1e-8)
    a, b = bg.fit_vb(faithful, 2), bg.fit_vb(faithful, 2, missing="marginalize")
    assert a.diagnostics.elbo == b.diagnostics.elbo
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", bg.ConvergenceWarning)  # a short chain's ESS note
        gibbs = bg.fit_gibbs(faithful_missing, 2, missing="marginalize", num_warmup=150, num_samples=400,
                             num_chains=2)
    em = bg.fit_em(faithful_missing, 2, missing="marginalize")
    for other in (gibbs, em):
        aligned = other.align_to(vb)
        np.testing.assert_allclose(aligned.means, vb.means, rtol=0.01)
        np.testing.assert_allclose(aligned.weights, vb.weights, atol=0.02)
    sd_gibbs = gibbs.align_to(vb).draws["means"].reshape(-1, 2, 2).std(axis=0)
    sd_vb = vb.draws["means"].reshape(-1, 2, 2).std(axis=0)
    assert np.all(sd_gibbs > 0.5 * sd_vb) and np.all(sd_gibbs < 2.0 * sd_vb)
    # Gibbs's lp is log p(x_obs, theta) in the data's units (the observed entries' log-Jacobian)
    theta = tuple(gibbs.draws[name][1, 7] for name in ("weights", "means", "covariances"))
    direct = _observed_log_likelihood(faithful_missing, *theta).sum() + log_prior(theta, gibbs.prior)
    np.testing.assert_allclose(gibbs.sample_stats["lp"][1, 7], direct, rtol=1e-9)


def test_svi_map_log_posterior_with_missing_values(faithful_missing):
    """SVI's delta guide reports the log posterior at its point exactly: with NaN entries the
    observed-data density plus the prior, in the data's units."""
    x = faithful_missing[:60]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fit = bg.fit_svi(x, 2, guide="delta", missing="marginalize", num_steps=300, seed=0)
    theta = (fit.weights, fit.means, fit.covariances)
    direct = _observed_log_likelihood(x, *theta).sum() + log_prior(theta, fit.prior)
    np.testing.assert_allclose(fit.info["elbo_final"], direct, rtol=1e-5)


def _nuts_log_likelihood_group_is_observed_data_density(x, num):
    from bayesgmm.diagnostics import import_arviz

    az = import_arviz()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        nuts = bg.fit_mcmc(x, 2, missing="marginalize", num_warmup=num, num_samples=num, num_chains=1)
    idata = nuts.to_inference_data(x)
    ll = idata.log_likelihood["x"].values.reshape(-1, len(x))
    draw = {name: np.asarray(nuts.draws[name]).reshape((-1,) + np.shape(nuts.draws[name])[2:])[0]
            for name in ("weights", "means", "covariances")}
    expected = _observed_log_likelihood(x, draw["weights"], draw["means"], draw["covariances"])
    np.testing.assert_allclose(ll[0], expected, rtol=1e-8)
    # lp in the data's units: the log-Jacobian of the standardisation counts the observed entries
    theta = (draw["weights"], draw["means"], draw["covariances"])
    np.testing.assert_allclose(nuts.sample_stats["lp"][0, 0], expected.sum() + log_prior(theta, nuts.prior), rtol=1e-6)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # Pareto-k notes on short runs
        assert np.isfinite(az.loo(idata).elpd_loo)
    return nuts


def test_nuts_log_likelihood_group_fast(faithful_missing):
    """A short NUTS run on 60 rows: the ArviZ log_likelihood group holds each row's observed-data
    density at every draw, so LOO works (the fast variant of the test below)."""
    _nuts_log_likelihood_group_is_observed_data_density(faithful_missing[:60], 60)


@pytest.mark.slow
def test_nuts_and_svi_fit_the_marginal_model(faithful_missing):
    """NUTS and SVI run the NumPyro model's MarginalMixture and agree with the EM fit."""
    em = bg.fit_em(faithful_missing, 2, missing="marginalize")
    nuts = _nuts_log_likelihood_group_is_observed_data_density(faithful_missing, 300)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        svi = bg.fit_svi(faithful_missing, 2, missing="marginalize", num_steps=1500, num_draws=100)
    for fit in (nuts, svi):
        np.testing.assert_allclose(fit.align_to(em).means, em.means, rtol=0.02)


# ----------------------------------------------------------------------------------------------
# Prediction and imputation
# ----------------------------------------------------------------------------------------------
def test_predict_proba_uses_the_observed_columns(em_fits, faithful_missing):
    fit = em_fits["full"]
    rows = faithful_missing[:20]
    proba = fit.predict_proba(rows)
    for row, p in zip(rows, proba):
        o = ~np.isnan(row)
        joint = np.array([w * multivariate_normal(m[o], c[np.ix_(o, o)]).pdf(row[o])
                          for w, m, c in zip(fit.weights, fit.means, fit.full_covariances)])
        np.testing.assert_allclose(p, joint / joint.sum(), rtol=1e-9)


def test_impute_conditional_means_and_multiple_imputations(em_fits, faithful_missing):
    """Conditional means by the regression formula written out; multiple imputations whose mean
    and variance over many draws match the mixture's conditional mean and variance."""
    fit = em_fits["full"]
    rows = faithful_missing[np.isnan(faithful_missing).any(axis=1)][:10]
    filled = fit.impute(rows)
    assert not np.isnan(filled).any()
    np.testing.assert_array_equal(filled[~np.isnan(rows)], rows[~np.isnan(rows)])
    # a DataFrame in another column order comes back as itself, filled (columns matched by name)
    pd = pytest.importorskip("pandas")
    names = list(fit.feature_names)[::-1]
    frame = pd.DataFrame(rows[:, ::-1], columns=names, index=np.arange(10) * 7)
    out = fit.impute(frame)
    assert isinstance(out, pd.DataFrame) and list(out.columns) == names and list(out.index) == list(frame.index)
    np.testing.assert_array_equal(out.to_numpy(), filled[:, ::-1])
    np.testing.assert_array_equal(fit.impute(frame, num_draws=3, seed=1), fit.impute(rows, num_draws=3, seed=1)[..., ::-1])
    for seed in (None, -1, 1.5, "a"):  # None drew unrepeatable imputations; the others failed inside NumPy
        with pytest.raises(ValueError, match=r"seed must be an integer in \[0, 2\*\*64\)"):
            fit.impute(rows, num_draws=2, seed=seed)
    # a row with nothing observed: the mixture's mean, and draws from the mixture itself
    blank = np.full((1, 2), np.nan)
    np.testing.assert_allclose(fit.impute(blank)[0], fit.weights @ fit.means, rtol=1e-12)
    spread = fit.impute(blank, num_draws=4000, seed=3)[:, 0]
    second = np.einsum("k,kij->ij", fit.weights, fit.full_covariances + np.einsum("ki,kj->kij", fit.means, fit.means))
    mixture_sd = np.sqrt(np.diag(second) - (fit.weights @ fit.means) ** 2)
    np.testing.assert_allclose(spread.std(axis=0), mixture_sd, rtol=0.05)  # sd to about 1.1% x 4
    draws = fit.impute(rows, num_draws=4000, seed=2)
    assert draws.shape == (4000,) + rows.shape
    for i, row in enumerate(rows):
        o, m = ~np.isnan(row), np.isnan(row)
        joint = np.array([w * multivariate_normal(mu[o], c[np.ix_(o, o)]).pdf(row[o])
                          for w, mu, c in zip(fit.weights, fit.means, fit.full_covariances)])
        resp = joint / joint.sum()
        cond_mean = np.array([mu[m] + c[np.ix_(m, o)] @ np.linalg.solve(c[np.ix_(o, o)], row[o] - mu[o])
                              for mu, c in zip(fit.means, fit.full_covariances)])
        cond_var = np.array([c[np.ix_(m, m)] - c[np.ix_(m, o)] @ np.linalg.solve(c[np.ix_(o, o)], c[np.ix_(o, m)])
                             for c in fit.full_covariances])
        mean = resp @ cond_mean
        np.testing.assert_allclose(filled[i, m], mean, rtol=1e-9)
        total_var = resp @ (cond_var[:, 0, 0] + cond_mean[:, 0] ** 2) - mean[0] ** 2
        sample = draws[:, i, m][:, 0]
        assert abs(sample.mean() - mean[0]) < 5 * np.sqrt(total_var / len(sample))
        assert abs(sample.var() / total_var - 1) < 5 * np.sqrt(2 / len(sample))


def test_imputing_from_a_nearly_singular_component_stays_finite():
    """A component of rank one plus 1e-10 (parameters given, not fitted): the conditional
    covariance of its missing entries came out not positive definite by rounding, and impute
    raised LinAlgError, for the conditional means too, which need no factor."""
    from scipy.stats import norm

    v = np.array([1304.0000451301373, 947.0809631292421, -703.7352358069926])
    covariances = np.stack([np.outer(v, v) + 1e-10 * np.eye(3), np.eye(3)])
    fit = bg.FitResult(method="em", covariance_type="full", weights=np.array([0.5, 0.5]), means=np.zeros((2, 3)),
                       covariances=covariances, log_likelihood=0.0, converged=True, n_iter=1, trace=np.zeros(1),
                       objective="log_likelihood", feature_names=("a", "b", "c"), num_obs=100)
    rows = np.array([[v[0] / 1e3, np.nan, np.nan], [np.nan, v[1] / 1e3, v[2] / 1e3]])
    filled, drawn = fit.impute(rows), fit.impute(rows, num_draws=3, seed=0)
    assert np.isfinite(filled).all() and np.isfinite(drawn).all()
    a = rows[0, 0]  # one observed entry: E[x_m | x_a] = sum_k p(k | x_a) S_k,ma / S_k,aa x_a
    resp = np.array([norm.pdf(a, 0, np.sqrt(c[0, 0])) for c in covariances])
    resp /= resp.sum()
    expected = sum(r * c[1:, 0] / c[0, 0] * a for r, c in zip(resp, covariances))
    np.testing.assert_allclose(filled[0, 1:], expected, rtol=1e-9)


def test_bayesian_imputations_carry_parameter_uncertainty(faithful_missing):
    vb = bg.fit_vb(faithful_missing, 2, missing="marginalize")
    rows = faithful_missing[np.isnan(faithful_missing).any(axis=1)][:5]
    draws = vb.impute(rows, num_draws=50, seed=0)
    again = vb.impute(rows, num_draws=50, seed=0)
    np.testing.assert_array_equal(draws, again)
    assert np.all(np.isfinite(draws)) and np.all(draws.std(axis=0)[np.isnan(rows)] > 0)


def test_each_imputed_data_set_takes_one_parameter_draw_for_every_row(faithful_missing):
    """Proper multiple imputation fills all of data set j from one posterior draw. The draw was
    taken per pattern of missing entries, so rows of two patterns were filled from independent
    draws (the between-imputation variance of a statistic over them 0.75 of the right one with 15
    patterns). Here two draws 1000 apart: every data set fills both patterns from the same one."""
    import dataclasses

    vb = bg.fit_vb(faithful_missing, 1, missing="marginalize", seed=0)
    s = 40
    means = np.where(np.arange(s)[:, None, None] % 2, 1000.0, 0.0) + np.zeros((s, 1, 2))
    draws = {"weights": np.ones((1, s, 1)), "means": means[None], "covariances": np.broadcast_to(1e-6 * np.eye(2), (1, s, 1, 2, 2))}
    fit = dataclasses.replace(vb, draws=draws, raw_draws=draws, sample_stats=None)
    rows = np.array([[np.nan, 0.0], [0.0, np.nan], [np.nan, 1000.0]])
    filled = fit.impute(rows, num_draws=200, seed=0)
    from_far_draw = filled[:, [0, 1, 2], [0, 1, 0]] > 500  # (data set, row): which draw filled it
    assert 0 < from_far_draw[:, 0].mean() < 1
    np.testing.assert_array_equal(from_far_draw, np.repeat(from_far_draw[:, :1], 3, axis=1))


# ----------------------------------------------------------------------------------------------
# Errors
# ----------------------------------------------------------------------------------------------
def test_errors_name_the_option_and_the_problem(faithful):
    x = np.array(faithful, np.float64)
    x[3, 1] = np.nan
    for fit in (bg.fit_em, bg.fit_vb, bg.fit_gibbs):
        with pytest.raises(ValueError, match="missing='marginalize'"):
            fit(x, 2)
    empty = x.copy()
    empty[5] = np.nan
    with pytest.raises(ValueError, match="no observed value"):
        bg.fit_em(empty, 2, missing="marginalize")
    sparse = np.array(faithful, np.float64)
    sparse[1:, 0] = np.nan
    with pytest.raises(ValueError, match="fewer than two observed"):
        bg.fit_em(sparse, 2, missing="marginalize")
    infinite = x.copy()
    infinite[2, 0] = np.inf
    with pytest.raises(ValueError, match="infinite"):
        bg.fit_em(infinite, 2, missing="marginalize")
    with pytest.raises(ValueError, match="missing must be one of"):
        bg.fit_em(x, 2, missing="drop")
    with pytest.raises(ValueError, match="missing='marginalize'"):
        bg.fit_em_stream(x, 2)


@pytest.mark.parametrize("covariance_type", ["full", "diag"])
def test_streaming_batch_em_equals_in_memory_em(covariance_type):
    """Exact EM over chunks with missing values is fit_em from the same start: the same trace,
    parameters and observed-data log-likelihood (chunked sums add up in another order)."""
    data = bg.datasets.make_mixture(1000, 3, 3, separation=3.0, seed=2)
    xm = _with_missing(data.x, 0.2, seed=3)
    start = data.params if covariance_type == "full" else bg.GMMParams(
        data.params.weights, data.params.means, np.einsum("kii->ki", data.params.covariances))
    precisions = np.linalg.inv(start.covariances) if covariance_type == "full" else 1.0 / start.covariances
    kw = dict(covariance_type=covariance_type, tol=1e-6, max_iter=1000, missing="marginalize")
    ref = bg.fit_em(xm, 3, weights_init=start.weights, means_init=start.means, precisions_init=precisions, **kw)
    got = bg.fit_em_stream(xm, 3, init_params=start, batch_size=300, **kw)
    assert ref.converged and got.converged and got.n_iter == ref.n_iter > 2
    np.testing.assert_allclose(got.trace, ref.trace, rtol=1e-9)
    assert got.log_likelihood == pytest.approx(ref.log_likelihood, rel=1e-10)
    np.testing.assert_allclose(got.means, ref.means, atol=1e-8)
    np.testing.assert_allclose(got.covariances, ref.covariances, atol=1e-8)
    online = bg.fit_em_stream(xm, 3, init_params=start, batch_size=300, method="online", **kw)
    assert abs(online.log_likelihood - ref.log_likelihood) < 1e-3 * len(xm)


def test_streaming_takes_what_fit_em_takes():
    """Three inputs fit_em takes that the stream refused or mishandled: a DataFrame with NaN
    cells and missing="marginalize" (refused, telling the user to pass that option); a column
    the initialisation subsample never observes (IndexError in the robust standardisation; now
    the first pass's moments there, and a warning naming the column and the fix); a start with
    NaN means (it returned NaN means with a finite log-likelihood; now refused as fit_em does)."""
    import pandas as pd

    data = bg.datasets.make_mixture(1000, 2, 3, separation=4.0, seed=5)
    xm = _with_missing(data.x, 0.2, seed=6)
    kw = dict(batch_size=250, missing="marginalize", seed=0)
    array_fit = bg.fit_em_stream(xm, 2, **kw)
    frame_fit = bg.fit_em_stream(pd.DataFrame(xm, columns=["a", "b", "c"]), 2, **kw)
    assert frame_fit.log_likelihood == array_fit.log_likelihood and frame_fit.feature_names == ("a", "b", "c")
    late = data.x.copy()
    late[:-10, 2] = np.nan  # column 2 observed in the last 10 rows only (none of seed 0's 50-row subsample)
    with pytest.warns(UserWarning, match=r"column\(s\) \['x2'\] have no observed value .* raise num_init_rows"):
        fit = bg.fit_em_stream(late, 2, num_init_rows=50, **kw)
    assert np.all(np.isfinite(fit.means)) and np.isfinite(fit.log_likelihood)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # every row in the subsample: the column is seen
        warnings.simplefilter("ignore", bg.ConvergenceWarning)  # (checked first) 10 values of x2: EM is slow
        every = bg.fit_em_stream(late, 2, num_init_rows=1000, **kw)
    assert np.isfinite(every.log_likelihood)
    bad = bg.GMMParams(np.array([0.5, 0.5]), np.array([[np.nan, 0.0, 0.0], [1.0, 1.0, 1.0]]), np.stack([np.eye(3)] * 2))
    with pytest.raises(ValueError, match="init_params contains NaN or infinite values"):
        bg.fit_em_stream(data.x, 2, init_params=bad)


def test_bootstrap_of_a_fit_with_missing_values(em_fits, faithful_missing):
    """The nonparametric bootstrap refits the observed-data likelihood on resampled rows; its
    spread is of the order of the observed information's, and the parametric bootstrap says what
    to use instead."""
    fit = em_fits["full"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        boot = bg.bootstrap(fit, faithful_missing, num_replicates=20, seed=0)
    sd = boot.draws["means"].reshape(-1, 2, 2).std(axis=0)
    assert np.all(np.isfinite(sd)) and np.all(sd > 0) and np.all(sd < 0.2 * np.abs(fit.means))
    with pytest.raises(ValueError, match="nonparametric"):
        bg.bootstrap(fit, faithful_missing, kind="parametric", num_replicates=4)
    # the observed information of the observed-data likelihood (it was refused): the same order as
    # the bootstrap's spread (20 replicates: an sd to about 16%)
    info = bg.observed_information(fit, faithful_missing).standard_errors()
    np.testing.assert_allclose(sd, info.means, rtol=0.6)
    # a model-selection grid's fit records how it treated the NaN entries, as fit_em's does, so
    # the uncertainty of the chosen fit follows from it the same way
    chosen = bg.select(faithful_missing, [2], covariance_types="full", missing="marginalize", seed=0).best()
    assert {key: chosen.info[key] for key in ("missing", "num_missing", "sample_weighted")} == {
        "missing": "marginalize", "num_missing": int(np.isnan(faithful_missing).sum()), "sample_weighted": False}
    grid_info = bg.observed_information(chosen, faithful_missing).standard_errors()
    np.testing.assert_allclose(grid_info.means, info.means, rtol=1e-3)


def test_estimator_and_command_line(em_fits, faithful_missing, tmp_path):
    import json

    from bayesgmm.cli import main
    from bayesgmm.estimator import GaussianMixture as Estimator

    gm = Estimator(2, missing="marginalize", random_state=0).fit(faithful_missing)
    np.testing.assert_allclose(gm.result_.log_likelihood, em_fits["full"].log_likelihood, rtol=1e-9)
    assert gm.predict(faithful_missing).shape == (len(faithful_missing),)
    with pytest.raises(ValueError, match="missing='marginalize'"):
        Estimator(2).fit(faithful_missing)
    path = tmp_path / "gaps.csv"
    np.savetxt(path, faithful_missing, delimiter=",", header="eruptions,waiting", comments="")  # NaN -> "nan"
    text = path.read_text().replace("nan", "")  # empty cells, as spreadsheets write them
    path.write_text(text)
    assert main(["fit", str(path), "-k", "2", "--missing", "marginalize", "--out", str(tmp_path / "out")]) == 0
    assert (tmp_path / "out" / "em_k2.png").stat().st_size > 0  # the figure draws the complete rows
    record = json.loads((tmp_path / "out" / "em_k2.json").read_text())
    assert record["log_likelihood"] == pytest.approx(em_fits["full"].log_likelihood, rel=1e-9)


@pytest.mark.parametrize("covariance_type", STRUCTURES)
def test_map_em_with_missing_values_climbs_the_models_log_joint(faithful_missing, covariance_type):
    """MAP-EM under the default prior with missing values: the objective never falls, and the
    one it reports is NumPyro's log joint of the model (its MarginalMixture) at the returned
    parameters."""
    import jax.numpy as jnp

    from bayesgmm import model

    prior = bg.Prior.default(faithful_missing, 2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", bg.ConvergenceWarning)
        fit = bg.fit_em(faithful_missing, 2, covariance_type=covariance_type, prior=prior, missing="marginalize",
                        tol=0.0, max_iter=30, n_init=1)
    trace = np.asarray(fit.trace)
    assert np.all(np.diff(trace) >= -1e-9 * np.abs(trace[1:]))
    point = bg.GMMParams(*map(jnp.asarray, fit.params))
    joint = float(model.log_joint(jnp.asarray(faithful_missing), point, prior.arrays(2, covariance_type),
                                  covariance_type, missing=True))
    np.testing.assert_allclose(trace[-1], joint, rtol=1e-9)


def test_rows_factored_by_lapack_equal_the_written_out_form_one_batch_at_a_time():
    """Above ``UNROLL_MAX`` features the per-row conditionals take batched LAPACK calls (N x K
    Cholesky factors and triangular solves); they equal the entry-by-entry form. Such a batch
    grows with N, and jaxlib 0.10 splits one past ``LAPACK_SPLIT_FLOPS`` over XLA's thread pool
    and waits there for the pieces, so no two per-row batches may be free to run at once in a
    compiled program (tests/_lapack_order.py): two were in Gibbs's sweep, and a sampler with
    D = 16, K = 8 and missing values on 300 rows hung on two cores."""
    import functools

    import jax
    from _lapack_order import unordered_lapack_calls

    from bayesgmm import _missing, gibbs
    from bayesgmm._chains import LAPACK_SPLIT_FLOPS
    from bayesgmm.params import GMMParams

    n, d, k = 400, _missing.UNROLL_MAX + 2, 3
    per_row = n * k * d * d  # the smallest per-row call: a solve with one right-hand side
    assert 300 * 8 * 16 * 16 >= LAPACK_SPLIT_FLOPS  # (the sampler that hung: every per-row call split)
    rng = np.random.default_rng(5)
    complete = rng.normal(size=(n, d)) + np.repeat(3.0 * np.eye(k, d), [n - 2 * (n // 3), n // 3, n // 3], axis=0)
    x = _with_missing(complete, 0.15, seed=1)
    observed = ~np.isnan(x)
    xs = np.where(observed, x, 0.0)
    a = rng.normal(size=(k, d, d))
    params = GMMParams(np.array([0.5, 0.3, 0.2]), rng.normal(size=(k, d)), a @ a.transpose(0, 2, 1) / d + np.eye(d))
    lapack = jax.jit(_missing.conditional_components, static_argnames="covariance_type")
    written = jax.jit(_missing._unrolled, static_argnames="covariance_type")
    for got, want in zip(lapack(xs, observed, params, covariance_type="full"), written(xs, observed, params, "full")):
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-9, atol=1e-12)
    compiled = lapack.lower(xs, observed, params, covariance_type="full").compile()
    assert unordered_lapack_calls(compiled.as_text(), per_row) == []

    prior = bg.Prior.default(complete, k).arrays(k, "full")
    state = gibbs.start_state(xs, params, "full", observed)
    sweep = jax.jit(functools.partial(gibbs.gibbs_sweep, num_components=k, covariance_type="full"))
    compiled = sweep.lower(jax.random.key(0), state, xs, prior, observed=observed).compile()
    assert unordered_lapack_calls(compiled.as_text(), per_row) == []
