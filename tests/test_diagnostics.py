"""ArviZ conversion and NetCDF round trip (bayesgmm.diagnostics).

References are independent of the library: scipy.stats densities for the log-likelihood and the
log prior (tests/_references.py), the WAIC formula written out by hand, and the mixture's moments for simulated data.
Posterior draws are built by hand (jittered EM estimates), so no sampler is needed.
"""

import dataclasses
import subprocess
import sys

import numpy as np
import pytest
from _references import log_joint, log_prior, mixture_log_density
from scipy.special import logsumexp

import bayesgmm as bg
from bayesgmm import diagnostics, storage
from bayesgmm.results import StudentTMixture

arviz = diagnostics.import_arviz()
az = arviz

COLUMNS = ["eruptions", "waiting"]
PARAMS = ("weights", "means", "covariances")


# ----------------------------------------------------------------------------------------------
# helpers and fixtures
# ----------------------------------------------------------------------------------------------
def jittered_draws(result, chains, draws, seed, scale=0.02):
    """Posterior-like draws around a point estimate (seeded), shapes (C, S, ...)."""
    rng = np.random.default_rng(seed)
    k, d = result.means.shape
    ct = result.covariance_type
    w = rng.dirichlet(result.weights * 3000, size=(chains, draws))
    sd = np.sqrt(np.diagonal(result.full_covariances, axis1=1, axis2=2))
    m = result.means + scale * sd * rng.standard_normal((chains, draws, k, d))
    c = np.asarray(result.covariances)
    if ct in ("full", "tied"):
        # perturb in standardised units (S^-1 Sigma S^-1), so small features are not swamped
        s = np.sqrt(np.diagonal(result.full_covariances, axis1=1, axis2=2).mean(0))
        a = np.eye(d) + scale * rng.standard_normal((chains, draws) + c.shape)
        a = s[:, None] * a / s[None, :]
        c = a @ c @ np.swapaxes(a, -1, -2)
    else:
        c = c * np.exp(scale * rng.standard_normal((chains, draws) + c.shape))
    return {"weights": w, "means": m, "covariances": c}


def swap_labels(draws, seed):
    """Raw (unaligned) draws: components reversed in a random half of the draws (full/diag)."""
    rng = np.random.default_rng(seed)
    flip = rng.random(draws["weights"].shape[:2]) < 0.5
    return {n: np.where(flip.reshape(flip.shape + (1,) * (v.ndim - 2)), v[:, :, ::-1], v) for n, v in draws.items()}


def fake_sample_stats(chains, draws, seed):
    rng = np.random.default_rng(seed)
    diverging = np.zeros((chains, draws), bool)
    diverging[0, 3] = True
    return {
        "diverging": diverging,
        "potential_energy": rng.normal(1130.0, 1.0, (chains, draws)),
        "accept_prob": rng.uniform(0.6, 1.0, (chains, draws)),
        "num_steps": rng.choice([3, 7, 15], size=(chains, draws)),
        "adapt_state.step_size": np.full((chains, draws), 0.31),
        "energy": rng.normal(1131.0, 1.0, (chains, draws)),
    }


@pytest.fixture(scope="module")
def df():
    return bg.datasets.load_faithful(as_frame=True)


@pytest.fixture(scope="module")
def x(df):
    return df.to_numpy()


@pytest.fixture(scope="module")
def em_fit(df):
    return bg.fit_em(df, 2, seed=0)


@pytest.fixture(scope="module")
def em_idata(em_fit, df):
    return diagnostics.to_inference_data(em_fit, df)


def mcmc_like(point, seed, chains=2, draws=250):
    d = jittered_draws(point, chains, draws, seed)
    return dataclasses.replace(
        point,
        method="mcmc",
        draws=d,
        raw_draws=swap_labels(d, seed + 100),
        sample_stats=fake_sample_stats(chains, draws, seed + 200),
        trace=np.zeros(0),
        info={"num_chains": chains, "divergences": 1},
    )


@pytest.fixture(scope="module")
def mc_fit(em_fit):
    return mcmc_like(em_fit, seed=1)


@pytest.fixture(scope="module")
def mc_idata(mc_fit, df):
    return diagnostics.to_inference_data(mc_fit, df)


@pytest.fixture(scope="module")
def mc_scipy_loglik(mc_fit, x):
    """(C, S, N) log-likelihood of every draw by scipy."""
    d = mc_fit.draws
    c, s = d["weights"].shape[:2]
    return np.array(
        [
            [mixture_log_density(x, *(d[n][i, j] for n in PARAMS), "full") for j in range(s)]
            for i in range(c)
        ]
    )


# ----------------------------------------------------------------------------------------------
# structure
# ----------------------------------------------------------------------------------------------
def test_import_bayesgmm_diagnostics_does_not_import_arviz():
    code = "import sys, bayesgmm, bayesgmm.diagnostics; print('arviz' in sys.modules, 'xarray' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]


def test_point_fit_groups_dims_and_coordinates(em_fit, em_idata, x):
    idata = em_idata
    assert set(idata.groups()) == {
        "posterior", "sample_stats", "log_likelihood", "observed_data", "point_estimate", "fit_trace"
    }
    post = idata.posterior
    assert dict(post.sizes) == {"chain": 1, "draw": 1, "component": 2, "feature": 2, "feature_bis": 2}
    assert post["weights"].dims == ("chain", "draw", "component")
    assert post["means"].dims == ("chain", "draw", "component", "feature")
    assert post["covariances"].dims == ("chain", "draw", "component", "feature", "feature_bis")
    assert list(post["feature"].values) == COLUMNS  # DataFrame column names
    assert list(post["feature_bis"].values) == COLUMNS
    assert list(post["component"].values) == [0, 1]
    np.testing.assert_array_equal(post["means"].values[0, 0], em_fit.means)
    np.testing.assert_array_equal(post["covariances"].values[0, 0], em_fit.covariances)
    # log-likelihood: marginal density per observation, and its sum is the reported total
    assert idata.log_likelihood["x"].dims == ("chain", "draw", "obs")
    assert idata.log_likelihood["x"].shape == (1, 1, 272)
    np.testing.assert_array_equal(idata.observed_data["x"].values, x)
    assert idata.observed_data["x"].dims == ("obs", "feature")
    np.testing.assert_allclose(idata.log_likelihood["x"].values.sum(), em_fit.log_likelihood, rtol=1e-12)
    # ML fit, no prior: lp is the log-likelihood
    np.testing.assert_allclose(idata.sample_stats["lp"].values, [[em_fit.log_likelihood]], rtol=1e-12)
    np.testing.assert_array_equal(idata.fit_trace["objective"].values, em_fit.trace)
    assert idata.fit_trace.attrs["objective"] == "log_likelihood"
    assert idata.attrs["inference_library"] == "bayesgmm"
    assert idata.attrs["inference_library_version"] == bg.__version__
    assert idata.attrs["method"] == "em" and idata.attrs["covariance_type"] == "full"
    assert idata.posterior.attrs["inference_library"] == "bayesgmm"


def test_fitresult_method_delegates(em_fit, em_idata, df):
    other = em_fit.to_inference_data(df)
    np.testing.assert_array_equal(other.log_likelihood["x"].values, em_idata.log_likelihood["x"].values)


@pytest.mark.parametrize(
    "covariance_type, dims, shape",
    [
        ("full", ("component", "feature", "feature_bis"), (2, 2, 2)),
        ("diag", ("component", "feature"), (2, 2)),
        ("spherical", ("component",), (2,)),
        ("tied", ("feature", "feature_bis"), (2, 2)),
    ],
)
def test_covariance_dims_and_log_likelihood_per_structure(df, x, covariance_type, dims, shape):
    fit = bg.fit_em(df, 2, covariance_type=covariance_type, seed=0)
    draws = jittered_draws(fit, 1, 3, seed=5)
    for result in (fit, dataclasses.replace(fit, draws=draws, method="mcmc")):
        idata = diagnostics.to_inference_data(result, df)
        cov = idata.posterior["covariances"]
        assert cov.dims == ("chain", "draw") + dims
        assert cov.shape[2:] == shape
        ll = idata.log_likelihood["x"].values
        post = idata.posterior
        for j in range(post.sizes["draw"]):
            w, m = post["weights"].values[0, j], post["means"].values[0, j]
            ref = mixture_log_density(x, w, m, cov.values[0, j], covariance_type)
            np.testing.assert_allclose(ll[0, j], ref, rtol=1e-10, atol=1e-10)


def test_draws_groups_and_renamed_sample_stats(mc_fit, mc_idata):
    idata = mc_idata
    assert {"posterior", "sample_stats", "log_likelihood", "observed_data", "raw_posterior"} <= set(idata.groups())
    assert "predictive" not in idata.groups()
    for name in PARAMS:
        np.testing.assert_array_equal(idata.posterior[name].values, mc_fit.draws[name])
        np.testing.assert_array_equal(idata.raw_posterior[name].values, mc_fit.raw_draws[name])
    assert dict(idata.posterior.sizes)["chain"] == 2 and dict(idata.posterior.sizes)["draw"] == 250
    ss, raw = idata.sample_stats, mc_fit.sample_stats
    assert set(ss.data_vars) == {"diverging", "lp", "acceptance_rate", "n_steps", "tree_depth", "step_size", "energy"}
    assert ss["diverging"].dtype == bool and int(ss["diverging"].sum()) == 1
    np.testing.assert_array_equal(ss["lp"].values, -raw["potential_energy"])  # ArviZ: lp = -potential energy
    np.testing.assert_array_equal(ss["acceptance_rate"].values, raw["accept_prob"])
    np.testing.assert_array_equal(ss["step_size"].values, raw["adapt_state.step_size"])
    np.testing.assert_array_equal(ss["n_steps"].values, raw["num_steps"])
    depth = {3: 2, 7: 3, 15: 4}  # 2**depth - 1 leapfrog steps
    np.testing.assert_array_equal(ss["tree_depth"].values, np.vectorize(depth.get)(raw["num_steps"]))
    assert ss["lp"].dims == ("chain", "draw")


def test_log_likelihood_matches_scipy_for_draws(mc_idata, mc_scipy_loglik):
    ll = mc_idata.log_likelihood["x"]
    assert ll.dims == ("chain", "draw", "obs") and ll.shape == (2, 250, 272)
    for c, s in [(0, 0), (1, 17), (0, 249)]:
        np.testing.assert_allclose(ll.values[c, s], mc_scipy_loglik[c, s], rtol=1e-10)
    np.testing.assert_allclose(ll.values, mc_scipy_loglik, rtol=1e-10)


def test_lp_with_prior_is_log_joint(df, x):
    """MAP fit: lp = sum log-lik + log prior, the prior by scipy (Dirichlet, inverse Wishart, normal)."""
    prior = bg.Prior.default(x, 2)
    fit = bg.fit_em(df, 2, prior=prior, seed=0)
    draws = jittered_draws(fit, 1, 2, seed=9)
    result = dataclasses.replace(fit, draws=draws, method="mcmc")
    lp = diagnostics.to_inference_data(result, df).sample_stats["lp"].values
    for j in range(2):
        np.testing.assert_allclose(lp[0, j], log_joint(x, [draws[n][0, j] for n in PARAMS], prior, "full"), rtol=1e-10)
    # a point fit without x: lp from the stored log-likelihood plus the same log prior
    lp_point = diagnostics.to_inference_data(fit).sample_stats["lp"].values[0, 0]
    np.testing.assert_allclose(lp_point, fit.log_likelihood + log_prior(fit.params, prior, "full"), rtol=1e-10)


def test_lp_prior_part_is_float64_with_float32_data(df, x):
    """The prior's part of ``lp`` is computed in float64 whatever the data's precision: a sparse
    Dirichlet's draws hold weights far below float32's smallest normal (1.2e-38), which float32
    floored there (tens to hundreds of nats off at concentration 0.01)."""
    import jax

    fit = bg.fit_em(df, 2, prior=bg.Prior.default(x, 2), seed=0)
    sparse = dataclasses.replace(bg.Prior.default(x, 2), weight_concentration=0.01)
    draws = jittered_draws(fit, 1, 2, seed=9)
    draws["weights"][0, 0] = [1.0 - 1e-234, 1e-234]
    result = dataclasses.replace(fit, draws=draws, method="mcmc", prior=sparse)
    with jax.enable_x64(False):
        lp = diagnostics.to_inference_data(result, x.astype(np.float32)).sample_stats["lp"].values
    for j in range(2):
        expected = log_joint(x.astype(np.float32).astype(np.float64), [draws[n][0, j] for n in PARAMS], sparse, "full")
        np.testing.assert_allclose(lp[0, j], expected, rtol=1e-10)


# ----------------------------------------------------------------------------------------------
# ArviZ functions work on the result
# ----------------------------------------------------------------------------------------------
def test_arviz_summary_on_draws(mc_fit, mc_idata):
    s = az.summary(mc_idata, var_names=["weights", "means"], round_to="none")
    assert "means[0, eruptions]" in s.index and "weights[1]" in s.index
    np.testing.assert_allclose(s.loc["means[1, waiting]", "mean"], mc_fit.draws["means"][..., 1, 1].mean(), rtol=1e-12)
    np.testing.assert_allclose(s.loc["weights[0]", "sd"], mc_fit.draws["weights"][..., 0].std(ddof=1), rtol=1e-10)
    assert np.all(np.isfinite(s["r_hat"])) and np.all(s["r_hat"] < 1.2)  # jitter is i.i.d.
    full = az.summary(mc_idata, round_to="none")
    assert "covariances[0, eruptions, waiting]" in full.index


def test_arviz_summary_on_point_fit(em_fit, em_idata):
    # one draw: the mean is the point estimate; sd (ddof=1) is undefined and numpy says so
    with pytest.warns(RuntimeWarning) as record:
        s = az.summary(em_idata, kind="stats", round_to="none")
    assert any("Degrees of freedom" in str(w.message) for w in record)
    assert np.all(np.isnan(s["sd"]))
    np.testing.assert_allclose(s.loc["means[0, waiting]", "mean"], em_fit.means[0, 1])


def test_waic_and_loo_on_draws(mc_idata, mc_scipy_loglik):
    ll = mc_scipy_loglik.reshape(500, -1)
    lppd = logsumexp(ll, axis=0) - np.log(500)
    ref = np.sum(lppd - ll.var(axis=0))  # WAIC, Watanabe / Vehtari et al. 2017 eq. (11)
    w = az.waic(mc_idata)
    np.testing.assert_allclose(w.elpd_waic, ref, rtol=1e-9)
    assert w.n_data_points == 272 and w.n_samples == 500
    lo = az.loo(mc_idata, pointwise=True)
    assert np.all(lo.pareto_k.values < lo.good_k)
    # small posterior spread: LOO and WAIC nearly agree and both sit below the plug-in lppd
    assert abs(lo.elpd_loo - w.elpd_waic) < 0.05
    assert lo.elpd_loo < lppd.sum() and 0 < lo.p_loo < 2


def test_arviz_compare_two_fits(em_fit, mc_idata, df):
    other = diagnostics.to_inference_data(mcmc_like(em_fit, seed=2), df)
    cmp = az.compare({"a": mc_idata, "b": other})
    assert list(cmp.columns[:3]) == ["rank", "elpd_loo", "p_loo"]
    assert set(cmp.index) == {"a", "b"}
    np.testing.assert_allclose(cmp.loc["a", "elpd_loo"], az.loo(mc_idata).elpd_loo)
    assert cmp["rank"].min() == 0


def test_point_fit_loo_and_waic_reduce_to_log_likelihood(em_fit, em_idata, df):
    """Sanity: a degenerate posterior (the point estimate) has elpd = plug-in log-likelihood.

    WAIC works on the single draw (p_waic = 0). ArviZ's PSIS needs at least two draws, so LOO is
    checked on the point estimate repeated twice; its Pareto k is undefined and ArviZ warns.
    """
    w = az.waic(em_idata)
    np.testing.assert_allclose(w.elpd_waic, em_fit.log_likelihood, rtol=1e-12)
    assert w.p_waic == 0
    repeated = {n: np.repeat(np.asarray(v)[None, None], 2, axis=1) for n, v in zip(PARAMS, em_fit.params)}
    twice = dataclasses.replace(em_fit, draws=repeated)
    with pytest.warns(UserWarning, match="Pareto"):
        lo = az.loo(diagnostics.to_inference_data(twice, df))
    np.testing.assert_allclose(lo.elpd_loo, em_fit.log_likelihood, rtol=1e-12)
    np.testing.assert_allclose(lo.p_loo, 0, atol=1e-9)


def test_plot_trace(mc_fit, mc_idata):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    try:
        axes = az.plot_trace(mc_idata, var_names=["weights", "means"])
        assert axes.shape == (2, 2)
        ys = [line.get_ydata() for line in axes[0, 1].get_lines()]
        series = mc_fit.draws["weights"]
        assert any(len(y) == 250 and np.allclose(y, series[1, :, 0]) for y in ys)
        assert axes[0, 0].get_title() == "weights"
    finally:
        plt.close("all")


# ----------------------------------------------------------------------------------------------
# posterior predictive
# ----------------------------------------------------------------------------------------------
def test_posterior_predictive_dims_and_determinism(mc_fit, df):
    a = diagnostics.to_inference_data(mc_fit, df, posterior_predictive=True, seed=3)
    b = diagnostics.to_inference_data(mc_fit, df, posterior_predictive=True, seed=3)
    c = diagnostics.to_inference_data(mc_fit, df, posterior_predictive=True, seed=4)
    pp = a.posterior_predictive["x"]
    assert pp.dims == ("chain", "draw", "obs", "feature") and pp.shape == (2, 250, 272, 2)
    assert list(a.posterior_predictive["feature"].values) == COLUMNS
    np.testing.assert_array_equal(pp.values, b.posterior_predictive["x"].values)
    assert not np.array_equal(pp.values, c.posterior_predictive["x"].values)
    thin = diagnostics.to_inference_data(mc_fit, None, posterior_predictive=True, num_predictive=5, seed=3)
    assert list(thin.posterior_predictive["draw"].values) == [0, 62, 124, 187, 249]
    assert thin.posterior_predictive["x"].shape == (2, 5, mc_fit.num_obs, 2)


def test_posterior_predictive_in_any_units(x):
    """The replicated data are simulated in the mixture's own frame: data in units of 1e25 or
    1e-25 give the same replicates in those units (their variances overflowed or underflowed
    the compute type, NaN or wrong values, while the fit itself was right). In float32, the default."""
    from conftest import precision

    with precision(np.float32):
        fits = [bg.fit_vb(np.asarray(x) * s, 2, num_draws=10, seed=0) for s in (1.0, 1e25, 1e-25)]
        pps = [diagnostics.to_inference_data(f, None, posterior_predictive=True, seed=3).posterior_predictive["x"].values
               for f in fits]
    for s, pp in zip((1e25, 1e-25), pps[1:]):
        np.testing.assert_allclose(pp / s, pps[0], rtol=1e-4)


def test_inference_data_of_a_fit_on_other_rows_compiles_nothing(em_fit, em_idata, x):
    """Simulation studies convert a fit per data set: a fit on 250 rows after one on 272 converts
    (log-likelihood, posterior predictive) with the programs already compiled; the posterior
    predictive keeps exactly the fit's rows."""
    from conftest import CompileCounter

    diagnostics.to_inference_data(em_fit, x, posterior_predictive=True, seed=3)
    fit = bg.fit_em(x[:250], 2, seed=0)
    with CompileCounter() as counter:
        idata = diagnostics.to_inference_data(fit, x[:250], posterior_predictive=True, seed=3)
    assert counter.compiles == 0
    assert idata.posterior_predictive["x"].shape == (1, 1, 250, 2)
    assert idata.log_likelihood["x"].shape == (1, 1, 250)


def test_posterior_predictive_matches_mixture_moments(em_fit):
    """Replicates from the point estimate: pooled mean and covariance match the mixture's."""
    idata = diagnostics.to_inference_data(em_fit, posterior_predictive=True, num_predictive=40, seed=0)
    sims = idata.posterior_predictive["x"].values.reshape(-1, 2)
    assert sims.shape == (40 * 272, 2)
    w, m, c = em_fit.params
    mean = w @ m
    cov = np.einsum("k,kij->ij", w, c) + np.einsum("k,ki,kj->ij", w, m - mean, m - mean)
    se = np.sqrt(np.diag(cov) / sims.shape[0])
    assert np.all(np.abs(sims.mean(0) - mean) < 4 * se)
    np.testing.assert_allclose(np.cov(sims, rowvar=False), cov, rtol=0.05)


def test_posterior_predictive_rejects_bad_num_predictive(mc_fit):
    with pytest.raises(ValueError, match="num_predictive must be a positive integer"):
        diagnostics.to_inference_data(mc_fit, posterior_predictive=True, num_predictive=0)
    with pytest.raises(ValueError, match="exceeds the 250 draws"):
        diagnostics.to_inference_data(mc_fit, posterior_predictive=True, num_predictive=251)


# ----------------------------------------------------------------------------------------------
# NetCDF round trip
# ----------------------------------------------------------------------------------------------
def assert_same_predictions(a, b, x):
    np.testing.assert_array_equal(a.predict(x), b.predict(x))
    np.testing.assert_array_equal(a.predict_proba(x), b.predict_proba(x))
    np.testing.assert_array_equal(a.score_samples(x), b.score_samples(x))


def assert_same_fields(a, b):
    scalars = ("method", "covariance_type", "log_likelihood", "converged", "n_iter", "objective")
    for name in scalars + ("feature_names", "num_obs", "degenerate_components"):
        assert getattr(a, name) == getattr(b, name), name
    for name in PARAMS:
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
        assert getattr(b, name).dtype == np.float64
    np.testing.assert_array_equal(a.trace, b.trace)
    assert (a.prior is None) == (b.prior is None)
    if a.prior is not None:
        assert a.prior.to_dict() == b.prior.to_dict()


def test_round_trip_point_fit_with_prior(df, x, tmp_path):
    fit = bg.fit_em(df, 2, prior=bg.Prior.default(x, 2), seed=0)
    path = storage.save_result(fit, tmp_path / "map.nc", x=df)
    back = storage.load_result(path)
    assert_same_fields(fit, back)
    assert back.draws is None and back.raw_draws is None and back.sample_stats is None and back.predictive is None
    assert back.info["n_init"] == fit.info["n_init"]
    assert back.info["restart_objectives"] == fit.info["restart_objectives"]  # tuples: the result is immutable
    assert_same_predictions(fit, back, x)
    assert back.bic(x) == fit.bic(x)


def test_round_trip_draws(mc_fit, x, tmp_path):
    path = storage.save_result(mc_fit, tmp_path / "mc.nc", x=x, posterior_predictive=True, num_predictive=2)
    back = storage.load_result(path)
    assert_same_fields(mc_fit, back)
    for name in PARAMS:
        np.testing.assert_array_equal(back.draws[name], mc_fit.draws[name])
        np.testing.assert_array_equal(back.raw_draws[name], mc_fit.raw_draws[name])
    assert set(back.sample_stats) == set(mc_fit.sample_stats)  # NumPyro's names, not ArviZ's
    for name, value in mc_fit.sample_stats.items():
        np.testing.assert_array_equal(back.sample_stats[name], value)
        assert back.sample_stats[name].dtype == value.dtype
    assert back.info == {"num_chains": 2, "divergences": 1}
    assert_same_predictions(mc_fit, back, x)


def test_round_trip_student_t_predictive_and_same_raw_draws(em_fit, x, tmp_path):
    draws = jittered_draws(em_fit, 1, 4, seed=11)
    pred = StudentTMixture(em_fit.weights, em_fit.means, em_fit.covariances * 1.1, np.array([20.5, 30.25]))
    vb_like = dataclasses.replace(
        em_fit, method="vb", objective="elbo", draws=draws, raw_draws=dict(draws), predictive=pred
    )
    idata = diagnostics.to_inference_data(vb_like)
    assert "raw_posterior" not in idata.groups()  # identical to draws: stored once
    assert idata.predictive["scale"].dims == ("component", "feature", "feature_bis")
    path = storage.save_result(vb_like, tmp_path / "vb.nc")
    back = storage.load_result(path)
    assert_same_fields(vb_like, back)
    for a, b in zip(pred, back.predictive):
        np.testing.assert_array_equal(a, b)
    assert back.raw_draws is not None and np.array_equal(back.raw_draws["means"], draws["means"])
    assert_same_predictions(vb_like, back, x)


# ----------------------------------------------------------------------------------------------
# errors and compilation
# ----------------------------------------------------------------------------------------------
def test_from_inference_data_rejects_foreign_objects():
    foreign = az.from_dict(posterior={"mu": np.zeros((2, 10))})
    with pytest.raises(ValueError, match="not written by bayesgmm.to_inference_data"):
        storage.from_inference_data(foreign)


def test_bad_inputs_raise(em_fit, mc_fit, x):
    with pytest.raises(ValueError, match="has 3 feature"):
        diagnostics.to_inference_data(em_fit, np.ones((5, 3)))
    bad = dataclasses.replace(mc_fit, sample_stats={"diverging": np.zeros((2, 249), bool)})
    with pytest.raises(ValueError, match="leading shape"):
        diagnostics.to_inference_data(bad, x)
    bad = dataclasses.replace(mc_fit, draws={**mc_fit.draws, "means": mc_fit.draws["means"][:, :, :1]})
    with pytest.raises(ValueError, match="result.draws must hold arrays"):
        diagnostics.to_inference_data(bad, x)


def test_pointwise_log_likelihood_is_float64_and_compiles_nothing(em_fit, x):
    """The log_likelihood group is computed on the host in float64: exact per draw and row, and a
    new row count or number of draws costs no compilation."""
    from conftest import CompileCounter

    fit = mcmc_like(em_fit, seed=20, chains=2, draws=7)
    diagnostics.to_inference_data(fit, x)
    with CompileCounter() as counter:
        idata = diagnostics.to_inference_data(mcmc_like(em_fit, seed=21, chains=1, draws=5), x[:57])
    assert counter.compiles == 0
    ll = idata.log_likelihood["x"].values
    draws = {k: np.asarray(v)[0] for k, v in mcmc_like(em_fit, seed=21, chains=1, draws=5).draws.items()}
    for s in range(ll.shape[1]):
        ref = mixture_log_density(x[:57], *(draws[n][s] for n in PARAMS), "full")
        np.testing.assert_allclose(ll[0, s], ref, rtol=1e-10)


# ----------------------------------------------------------------------------------------------
# NumPy ESS and R-hat against ArviZ (the sampler uses them without importing ArviZ)
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("shape", [(4, 500, 3), (2, 1001, 2), (3, 64, 1), (2, 7, 40)])  # odd: ArviZ folds about the split halves' median
def test_ess_bulk_and_rhat_equal_arviz(shape):
    from bayesgmm.diagnostics import ess_bulk, rhat

    rng = np.random.default_rng(sum(shape))
    noise = rng.normal(size=shape)
    x = np.zeros(shape)
    for t in range(1, shape[1]):  # AR(1) chains with heavy-tailed noise and shifted chain means
        x[:, t] = 0.8 * x[:, t - 1] + noise[:, t]
    x += rng.standard_t(3, size=shape) + 0.1 * np.arange(shape[0])[:, None, None]
    data = az.convert_to_dataset({"v": x})
    np.testing.assert_allclose(ess_bulk(x), az.ess(data, method="bulk")["v"].values.ravel(), rtol=1e-10)
    np.testing.assert_allclose(rhat(x), az.rhat(data)["v"].values.ravel(), rtol=1e-12)


def test_average_ranks_equal_scipy_with_ties_and_nan():
    """The rank normalisation's ranks (NumPy, so that a first sampler fit does not import
    scipy.stats) against scipy.stats.rankdata: continuous draws, runs of ties (a draw repeated
    by rejected proposals, discrete values), a constant column, NaN."""
    from scipy.stats import rankdata

    from bayesgmm.diagnostics import average_ranks

    rng = np.random.default_rng(0)
    ties = rng.integers(0, 4, (57, 6)).astype(float)
    with_nan = rng.normal(size=(30, 3))
    with_nan[5, 1] = np.nan
    for a in (rng.normal(size=(1000, 5)), ties, np.repeat(rng.normal(size=(20, 2)), 3, axis=0), np.ones((10, 2)),
              with_nan, rng.normal(size=(1, 3))):
        np.testing.assert_array_equal(average_ranks(a), rankdata(a, method="average", axis=0))
    code = ("import sys, numpy as np, bayesgmm.diagnostics as d; x = np.random.default_rng(0).normal(size=(4, 50)); "
            "d.rhat(x); d.ess_bulk(x); print('scipy.stats' in sys.modules, 'scipy.special' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]


def test_normal_quantile_equals_scipy_in_every_range_and_at_the_ends():
    """The rank normalisation's normal quantile (NumPy, Wichura's AS 241, so that a sampler fit
    does not import scipy.special) against scipy.special.ndtri: the central range, both
    intermediate ranges and the far tails down to the smallest float64, the ranges' boundaries,
    0 and 1 (infinite), NaN and probabilities outside [0, 1] (NaN), any shape."""
    from scipy.special import ndtri

    from bayesgmm.diagnostics import normal_quantile

    p = np.concatenate([np.linspace(0.0, 1.0, 20001), np.logspace(-323, -1, 2000), 1.0 - np.logspace(-16, -1, 500),
                        [0.075, 0.925, 0.5 - 0.425, 0.5 + 0.425, np.exp(-25.0), 1.0 - np.exp(-25.0), 5e-324],
                        [np.nan, -0.1, 1.1, -np.inf, np.inf]])
    got, want = normal_quantile(p), ndtri(p)
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
    np.testing.assert_array_equal(got[np.isinf(want)], want[np.isinf(want)])
    finite = np.isfinite(want)
    assert np.isinf(want).sum() == 2 and finite.sum() > 22000
    np.testing.assert_allclose(got[finite], want[finite], rtol=4e-15, atol=1e-300)
    assert normal_quantile(0.975).shape == () and normal_quantile(np.full((2, 3), 0.5)).shape == (2, 3)


def test_rhat_sees_a_stuck_chain_and_constants_are_nan():
    from bayesgmm.diagnostics import ess_bulk, rhat

    rng = np.random.default_rng(1)
    x = rng.normal(size=(4, 400, 2))
    x[3, :, 0] += 3.0  # one chain in another mode
    x[:, :, 1] = 1.0  # a constant (the weight of K = 1)
    r, e = rhat(x), ess_bulk(x)
    assert r[0] > 1.3 and np.isnan(r[1]) and np.isnan(e[1])
    assert np.isclose(rhat(rng.normal(size=(4, 400))), 1.0, atol=0.01)


def test_arviz_import_is_quiet_on_its_first_import_of_the_day(tmp_path):
    """ArviZ 0.22-0.23 warn about their refactor on the first import of each day (a stamp in the
    user's cache folder); with an empty cache folder the warning is due, and bayesgmm hides it."""
    import os

    env = dict(os.environ, XDG_CACHE_HOME=str(tmp_path), BAYESGMM_COMPILE_CACHE="0")
    code = "from bayesgmm.diagnostics import import_arviz; import_arviz(); print('quiet')"
    proc = subprocess.run([sys.executable, "-W", "error::FutureWarning", "-c", code], capture_output=True, text=True,
                          env=env, timeout=300)
    assert proc.returncode == 0 and proc.stdout.strip() == "quiet", proc.stderr[-2000:]


def test_arviz_import_survives_another_process_writing_its_day_stamp(tmp_path):
    """Two processes importing ArviZ for the first time that day (two test workers, a process
    pool) both write its day stamp; the slower one's rename fails with FileNotFoundError. Here
    the other process is simulated: the rename writes today's stamp, then fails as it would."""
    import os

    env = dict(os.environ, XDG_CACHE_HOME=str(tmp_path), BAYESGMM_COMPILE_CACHE="0")
    code = (
        "import datetime, pathlib\n"
        "real = pathlib.Path.replace\n"
        "def raced(self, target):\n"
        "    if self.name == 'daily_warning.tmp':\n"
        "        pathlib.Path(target).write_text(datetime.date.today().isoformat())\n"
        "        self.unlink()\n"
        "        raise FileNotFoundError(2, 'No such file or directory', str(self))\n"
        "    return real(self, target)\n"
        "pathlib.Path.replace = raced\n"
        "from bayesgmm.diagnostics import import_arviz\n"
        "az = import_arviz()\n"
        "print(az.InferenceData.__name__)\n"
    )
    proc = subprocess.run([sys.executable, "-W", "error::FutureWarning", "-c", code], capture_output=True, text=True,
                          env=env, timeout=300)
    assert proc.returncode == 0 and proc.stdout.strip() == "InferenceData", proc.stderr[-2000:]


def test_the_documented_loo_pit_and_concat_recipes_work(mc_fit, df):
    """to_inference_data's notes: ``az.loo_pit`` one feature at a time, and ``az.concat`` over
    chains of the standard groups (the extra groups have no chain or draw)."""
    az = diagnostics.import_arviz()
    idata = diagnostics.to_inference_data(mc_fit, df, posterior_predictive=True)
    feature = idata.observed_data.x.coords["feature"].values[0]
    pit = az.loo_pit(idata, y=idata.observed_data.x.sel(feature=feature).values,
                     y_hat=idata.posterior_predictive.x.sel(feature=feature).stack(s=("chain", "draw")).values)
    assert pit.shape == (len(df),) and 0.3 < float(np.mean(pit)) < 0.7
    standard = az.InferenceData(**{g: idata[g] for g in ("posterior", "sample_stats", "log_likelihood", "observed_data")})
    both = az.concat(standard, standard, dim="chain")
    assert both.posterior.sizes["chain"] == 2 * idata.posterior.sizes["chain"]
