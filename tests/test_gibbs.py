"""The conjugate Gibbs sampler against independent references: the closed-form posterior of one
Gaussian (K = 1, where every sweep is an exact independent posterior draw) and simulation-based
calibration. The comparison with NUTS on the same data and prior (K = 2, z summed out there and
sampled here) is in test_mcmc.py, beside the NUTS fit it uses.

Tolerances are Monte Carlo errors: 4.5 standard errors from the draws' own ESS."""

import dataclasses
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _references import niw_posterior
from conftest import GIBBS_SETTINGS as SETTINGS

import bayesgmm as bg
from bayesgmm.diagnostics import ess_bulk
from bayesgmm.params import ConvergenceWarning, GMMParams, Prior


def _quiet(fit, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        return fit(*args, **kwargs)


@pytest.fixture(scope="module")
def one_gaussian():
    rng = np.random.default_rng(5)
    x = rng.multivariate_normal([1.0, -2.0], [[2.0, 0.6], [0.6, 0.5]], size=40)
    prior = Prior(weight_concentration=1.0, mean=np.array([0.5, 0.0]), mean_precision=0.5,
                  degrees_of_freedom=5.0, scale=np.array([[1.5, 0.2], [0.2, 0.8]]))
    return x, prior


def _closed_form(x, prior, covariance_type):
    """Posterior mean of mu, its marginal variance, and the posterior mean of the covariance
    parameter as stored for ``covariance_type`` (K = 1)."""
    m0, k0, nu0, psi0 = prior.mean, prior.mean_precision, prior.degrees_of_freedom, prior.scale
    n, d = x.shape
    if covariance_type == "full":
        mn, kn, nun, psin = niw_posterior(x, m0, k0, nu0, psi0)
        mean_cov = psin / (nun - d - 1)
        return mn, np.diag(mean_cov) / kn, mean_cov
    xbar = x.mean(0)
    kn = k0 + n
    mn = (k0 * m0 + n * xbar) / kn
    dev2 = k0 * n / kn * (xbar - m0) ** 2
    s = ((x - xbar) ** 2).sum(0)
    if covariance_type == "diag":  # one inverse gamma per feature
        shape, rate = 0.5 * (nu0 + n), 0.5 * (np.diag(psi0) + s + dev2)
    else:  # spherical: one variance, the prior scale's mean diagonal
        shape, rate = 0.5 * (nu0 + n * d), 0.5 * (np.trace(psi0) / d + s.sum() + dev2.sum())
    mean_var = rate / (shape - 1)
    return mn, np.broadcast_to(mean_var, (d,)) / kn, mean_var


@pytest.mark.parametrize("covariance_type", ["full", pytest.param("diag", marks=pytest.mark.slow),
                                             pytest.param("spherical", marks=pytest.mark.slow)])
def test_one_component_draws_the_closed_form_posterior(one_gaussian, covariance_type):
    """K = 1: the labels are trivial, each sweep is an exact draw of (mu, Sigma) | x."""
    x, prior = one_gaussian
    res = bg.fit_gibbs(x, 1, covariance_type=covariance_type, prior=prior, seed=0, **SETTINGS)
    mu_mean, mu_var, cov_mean = _closed_form(x, prior, covariance_type)
    means = res.draws["means"][..., 0, :]  # (chains, draws, D)
    covs = res.draws["covariances"][:, :, 0]  # (chains, draws) + the stored shape of one covariance
    num = means.shape[0] * means.shape[1]
    se_mu = means.std(axis=(0, 1)) / np.sqrt(num)
    assert np.all(np.abs(means.mean(axis=(0, 1)) - mu_mean) < 4.5 * se_mu)
    # the variance of the draws: relative standard error about sqrt(2 / num) (+ heavier tails)
    np.testing.assert_allclose(means.var(axis=(0, 1)), mu_var, rtol=0.12)
    se_cov = covs.std(axis=(0, 1)) / np.sqrt(num)
    assert np.all(np.abs(covs.mean(axis=(0, 1)) - cov_mean) < 4.5 * se_cov + 1e-12)
    assert np.all(ess_bulk(means) > 0.5 * num)  # independent draws
    assert res.converged and res.method == "gibbs"


def test_tied_one_component_is_the_full_posterior(one_gaussian):
    """With K = 1 a tied covariance is the full one: the same closed form."""
    x, prior = one_gaussian
    res = bg.fit_gibbs(x, 1, covariance_type="tied", prior=prior, seed=1, num_warmup=50, num_samples=1000,
                       num_chains=4)
    mu_mean, _, cov_mean = _closed_form(x, prior, "full")
    covs = res.draws["covariances"]
    se = covs.std(axis=(0, 1)) / np.sqrt(covs.shape[0] * covs.shape[1])
    assert np.all(np.abs(covs.mean(axis=(0, 1)) - cov_mean) < 4.5 * se)
    means = res.draws["means"][..., 0, :]
    assert np.all(np.abs(means.mean(axis=(0, 1)) - mu_mean) < 4.5 * means.std(axis=(0, 1)) / np.sqrt(4000))


def test_result_diagnostics_and_arviz(faithful_gibbs, faithful):
    az = bg.diagnostics.import_arviz()

    res = faithful_gibbs
    assert res.draws["means"].shape == (4, 1000, 2, 2) and res.raw_draws["means"].shape == (4, 1000, 2, 2)
    assert res.sample_stats["lp"].shape == (4, 1000) and set(np.unique(res.sample_stats["num_nonempty"])) == {2}
    # lp is log p(x, theta) of each draw, on the original scale: recompute one in float64
    from _references import log_joint

    c, s = 2, 17
    draw = GMMParams(*(res.raw_draws[n][c, s] for n in ("weights", "means", "covariances")))
    np.testing.assert_allclose(res.sample_stats["lp"][c, s], log_joint(faithful, draw, res.prior), rtol=1e-9)
    assert res.diagnostics.max_rhat < 1.01 and res.diagnostics.min_ess_bulk > 400
    assert np.isnan(res.diagnostics.num_divergences) and res.converged
    # run time split by sweeps (all cost the same): warmup's share is num_warmup / all sweeps
    facts, total = res.diagnostics, SETTINGS["num_warmup"] + SETTINGS["num_samples"]
    assert facts.warmup_seconds == pytest.approx(facts.run_seconds * SETTINGS["num_warmup"] / total, rel=1e-12)
    assert facts.warmup_seconds + facts.sampling_seconds == pytest.approx(facts.run_seconds, rel=1e-12)
    idata = res.to_inference_data(faithful)
    assert idata.log_likelihood["x"].shape == (4, 1000, 272)
    loo = az.loo(idata)
    assert np.isfinite(loo.elpd_loo) and abs(loo.elpd_loo - res.log_likelihood) < 20


def test_same_seed_same_draws_one_program(faithful_gibbs, faithful):
    bg.fit_gibbs(faithful, 2, seed=0, **SETTINGS)  # compiled here if the session's fit was in another module
    again = bg.fit_gibbs(faithful, 2, seed=0, **SETTINGS)
    assert again.info["compile_seconds"] == 0.0
    np.testing.assert_array_equal(again.raw_draws["means"], faithful_gibbs.raw_draws["means"])
    other = bg.fit_gibbs(faithful, 2, seed=1, **SETTINGS)
    assert not np.array_equal(other.raw_draws["means"], faithful_gibbs.raw_draws["means"])
    # other lengths (traced; the draws fill a buffer of num_samples' bucket): the same program, and
    # sweep i draws with the chain's key folded with i, so the chains are the same sweeps
    settings = dict(SETTINGS, num_samples=SETTINGS["num_samples"] - 100)
    fewer_draws = bg.fit_gibbs(faithful, 2, seed=0, **settings)
    settings["num_warmup"] -= 50
    less_warmup = _quiet(bg.fit_gibbs, faithful, 2, seed=0, **settings)
    assert fewer_draws.info["compile_seconds"] == less_warmup.info["compile_seconds"] == 0.0
    draws = faithful_gibbs.raw_draws["means"]
    np.testing.assert_array_equal(fewer_draws.raw_draws["means"], draws[:, :-100])
    np.testing.assert_array_equal(less_warmup.raw_draws["means"][:, 50:], draws[:, :-150])
    np.testing.assert_array_equal(fewer_draws.sample_stats["lp"], faithful_gibbs.sample_stats["lp"][:, :-100])
    # another N in the same row bucket (up to 512 rows): the same program, padding rows count for nothing
    fewer = _quiet(bg.fit_gibbs, faithful[:250], 2, seed=0, **SETTINGS)
    assert fewer.info["compile_seconds"] == 0.0 and fewer.num_obs == 250
    # given starts: one program with the MAP start; permuted starts end aligned to the same labels
    p = faithful_gibbs.params
    swapped = GMMParams(p.weights[::-1], p.means[::-1], p.covariances[::-1])
    permuted = bg.fit_gibbs(faithful, 2, seed=0, init=[p, swapped, p, swapped], **SETTINGS)
    assert permuted.info["compile_seconds"] == 0.0
    np.testing.assert_allclose(permuted.means, faithful_gibbs.means, rtol=0.02)


@pytest.mark.parametrize("weight_prior", ["uneven dirichlet", "dirichlet_process"])
def test_lp_is_that_of_the_aligned_draws_under_a_weight_prior_with_an_order(faithful_gibbs, faithful, weight_prior):
    """Under a weight prior that is not exchangeable a relabelled draw has another prior density
    than the draw the chain visited: ``lp`` (sample_stats and ArviZ's) is scipy's log joint of the
    posterior group's (aligned) draws, and stays so through :meth:`FitResult.relabel`."""
    from _references import log_joint

    if weight_prior == "dirichlet_process":
        prior = Prior.default(faithful, 2, weight_prior="dirichlet_process", weight_concentration=0.5)
    else:
        prior = dataclasses.replace(Prior.default(faithful, 2), weight_concentration=np.array([1.0, 3.0]))
    p = faithful_gibbs.params
    swapped = GMMParams(p.weights[::-1], p.means[::-1], p.covariances[::-1])
    res = _quiet(bg.fit_gibbs, faithful, 2, seed=0, prior=prior, init=[p, swapped, p, swapped], **SETTINGS)
    assert res.info["label_switch_fraction"] == pytest.approx(0.5)  # two chains relabelled throughout
    names = ("weights", "means", "covariances")
    lp = res.to_inference_data(faithful).sample_stats["lp"].values
    np.testing.assert_array_equal(lp, res.sample_stats["lp"])
    moved = 0
    for c, s in [(0, 3), (1, 3), (2, 500), (3, 999)]:
        aligned = GMMParams(*(res.draws[n][c, s] for n in names))
        np.testing.assert_allclose(lp[c, s], log_joint(faithful, aligned, prior), rtol=1e-9)
        raw = GMMParams(*(res.raw_draws[n][c, s] for n in names))
        moved += abs(lp[c, s] - log_joint(faithful, raw, prior)) > 0.2  # the raw draw's lp is another
    assert moved == 2
    flipped = res.relabel([1, 0])
    for c, s in [(0, 3), (1, 3)]:
        draw = GMMParams(*(flipped.draws[n][c, s] for n in names))
        np.testing.assert_allclose(flipped.sample_stats["lp"][c, s], log_joint(faithful, draw, flipped.prior), rtol=1e-9)
    # a Dirichlet's concentrations are renamed with their components; the sticks keep their order
    expected = np.array([3.0, 1.0]) if weight_prior != "dirichlet_process" else 0.5
    np.testing.assert_array_equal(flipped.prior.weight_concentration, expected)
    np.testing.assert_array_equal(flipped.trace, flipped.sample_stats["lp"].reshape(-1))  # the trace is lp


def test_relabelled_lp_stays_finite_where_float32_weights_underflow(faithful):
    """Sparse stick-breaking weights (gamma = 0.01, K = 5) underflow to exactly 0 in float32; the
    sweep floors them for its lp (and records the floored weights), and so must relabelling
    (log 0 - log 0 made lp NaN)."""
    from conftest import precision

    prior = Prior.default(faithful, 5, weight_prior="dirichlet_process", weight_concentration=0.01)
    # the smaller cluster started first and the larger third: a labelling the sticks find less
    # probable than the larger first, so the draws are relabelled (the default start takes that one);
    # the spare components start far from the data, empty
    two = bg.fit_em(faithful, 2, seed=0).params
    small, large = np.argsort(two.weights)
    far = np.mean(faithful, 0) + 100 * np.std(faithful, 0)
    order = [small, 0, large, 0, 0]
    init = GMMParams(np.where([1, 0, 1, 0, 0], two.weights[order], 1e-6),
                     np.where(np.c_[[1, 0, 1, 0, 0]], two.means[order], far), two.covariances[order])
    with precision(np.float32):
        res = _quiet(bg.fit_gibbs, faithful, 5, prior=prior, num_warmup=100, num_samples=100, num_chains=2, seed=0,
                     init=init)
    assert (np.asarray(res.raw_draws["weights"]) < 1e-37).any() and res.info["label_switch_fraction"] > 0
    assert np.isfinite(res.sample_stats["lp"]).all() and np.isfinite(res.trace).all()
    again = res.relabel([4, 3, 2, 1, 0])
    assert np.isfinite(again.sample_stats["lp"]).all()
    np.testing.assert_array_equal(again.trace, again.sample_stats["lp"].reshape(-1))


def test_chains_on_threads_are_the_draws_of_one_run(faithful_gibbs, faithful, monkeypatch):
    """The chains run as concurrent_runs() threads of chains_per_run chains (2 x 2 on two cores);
    splitting them otherwise (one run of all four, or two of two on one core) gives the same
    draws, bit for bit."""
    from bayesgmm import gibbs

    other = 2 if gibbs.concurrent_runs(SETTINGS["num_chains"]) == 1 else 1
    monkeypatch.setattr(gibbs, "concurrent_runs", lambda num_chains, lapack_flops=0.0: other)  # the name fit_gibbs calls
    result = bg.fit_gibbs(faithful, 2, seed=0, **SETTINGS)
    assert result.info["compile_seconds"] > 0  # another program: the chains split otherwise
    for name in ("weights", "means", "covariances"):
        np.testing.assert_array_equal(result.raw_draws[name], faithful_gibbs.raw_draws[name])


def test_registered_engine_in_compare_and_estimator(faithful, faithful_gibbs):
    from bayesgmm.estimator import GaussianMixture

    est = GaussianMixture(2, method="gibbs", random_state=0, engine_kwargs=SETTINGS).fit(faithful)
    np.testing.assert_array_equal(est.means_, faithful_gibbs.means)
    assert np.isfinite(est.score(faithful)) and est.predict(faithful).shape == (272,)
    table = _quiet(bg.compare, faithful, 2, methods=["em", "gibbs"], seed=0, engine_kwargs={"gibbs": SETTINGS})
    assert list(table["method"]) == ["em", "gibbs"]


def test_sbc_is_calibrated_fast():
    """K = 2, D = 1 (few replications: catches gross errors; the slow test has power)."""
    prior = Prior(weight_concentration=5.0, mean=np.zeros(1), mean_precision=0.2, degrees_of_freedom=5.0,
                  scale=4.0 * np.eye(1))
    res = _quiet(bg.sbc, 2, 30, prior=prior, method="gibbs", num_replications=60, num_ranks=19, seed=0,
                 engine_kwargs={"num_warmup": 100, "num_samples": 400, "num_chains": 1})
    assert res.ranks.shape == (60, 6)
    assert res.p_values.to_numpy().min() > 1e-3, res.p_values


@pytest.mark.slow
def test_sbc_is_calibrated():
    prior = Prior(weight_concentration=5.0, mean=np.zeros(2), mean_precision=0.2, degrees_of_freedom=6.0,
                  scale=5.0 * np.eye(2))
    res = _quiet(bg.sbc, 2, 50, prior=prior, method="gibbs", num_replications=300, num_ranks=49, seed=1)
    assert res.p_values.to_numpy().min() > 1e-3, res.p_values


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(num_samples=0), "num_samples"),
        (dict(num_chains=1.5), "num_chains"),
        (dict(init="uniform"), "init must be 'map'"),
        (dict(init=[1, 2]), "sequence of num_chains"),
        (dict(covariance_type="banded"), "covariance_type"),
        (dict(progress_bar="yes"), "progress_bar"),
    ],
)
def test_bad_arguments_raise(kwargs, match, faithful):
    with pytest.raises(ValueError, match=match):
        bg.fit_gibbs(faithful, 2, **kwargs)


def test_posterior_of_the_number_of_components_on_galaxies():
    """Overfitted K = 10 under a sparse Dirichlet (0.01) on the galaxy velocities: the posterior of
    K+ has its mode in 3..7 and almost no mass at k <= 2 (Frühwirth-Schnatter & Malsiner-Walli 2019)."""
    import matplotlib.pyplot as plt

    from bayesgmm.plotting import plot_num_components

    x = bg.datasets.load_galaxies()
    prior = Prior.default(x, 10, weight_concentration=0.01)
    fit = _quiet(bg.fit_gibbs, x, 10, prior=prior, seed=0, num_warmup=500, num_samples=1000)
    post = fit.num_components_posterior()
    assert list(post.index) == list(range(1, 11)) and post.sum() == pytest.approx(1.0)
    assert 3 <= post.idxmax() <= 7 and post.loc[:2].sum() < 0.01, post
    ax = plot_num_components(post)
    assert len(ax.patches) == 10 and str(post.idxmax()) in ax.get_title()
    plt.close(ax.figure)


def test_sparse_dirichlet_log_posterior_stays_finite_in_float32():
    """Under a sparse Dirichlet (0.01) most float32 draws leave some weight at exactly 0 (its
    gamma draw underflows), and the Dirichlet term ``(alpha - 1) log 0`` made the draws' log
    posterior (the trace, ArviZ's ``lp``) +inf for 98% of them. Floored at the smallest normal
    weight, as :func:`bayesgmm.diagnostics.log_prior_draws` does, it stays finite and equals the
    float64 log-likelihood plus that log prior. The draws record the floored weights (as NUTS's
    do): with exact zeros, ArviZ's conversion of the same draws (which floors at float64's tiny)
    gave an lp 620 nats apart per empty component."""
    from conftest import precision

    from bayesgmm import _numerics
    from bayesgmm.diagnostics import log_prior_draws

    x = bg.datasets.load_galaxies()
    prior = Prior.default(x, 6, weight_concentration=0.01)
    with precision(np.float32):
        fit = _quiet(bg.fit_gibbs, x, 6, prior=prior, seed=0, num_chains=1, num_warmup=50, num_samples=100)
    weights = np.asarray(fit.raw_draws["weights"])
    tiny = np.finfo(np.float32).tiny
    assert (weights < 2 * tiny).any(axis=-1).mean() > 0.5 and weights.min() >= np.float32(tiny) * (1 - 1e-6)  # underflowed
    lp = np.asarray(fit.to_inference_data(x).sample_stats["lp"], np.float64)
    assert np.isfinite(fit.trace).all() and np.isfinite(lp).all()
    flat = {name: np.asarray(v, np.float64).reshape((-1,) + v.shape[2:]) for name, v in fit.draws.items()}
    log_lik = np.array([_numerics.totals(x, w, m, c, "full").log_likelihood
                        for w, m, c in zip(flat["weights"], flat["means"], flat["covariances"])])
    exact = log_lik + np.asarray(log_prior_draws(flat["weights"], flat["means"], flat["covariances"],
                                                 prior.arrays(6, "full"), "full"), np.float64)
    # a float64 recomputation, as every reported number (the program's float32 values were 1e-4 off)
    np.testing.assert_allclose(lp.ravel(), exact, rtol=1e-12)
    import dataclasses

    recomputed = dataclasses.replace(fit, sample_stats=None).to_inference_data(x).sample_stats["lp"]
    np.testing.assert_allclose(np.asarray(recomputed, np.float64), lp, rtol=1e-12)


def test_drawn_labels_give_the_exact_occupancy_probabilities(faithful_gibbs):
    """Without recorded labels (NUTS, VB draws) K+ is counted from labels drawn per draw: with every
    draw at one theta, P(K+ = 1) = prod_n r_n1 + prod_n r_n2 exactly (rows between the clusters)."""
    import dataclasses

    from _references import responsibilities

    p = faithful_gibbs.params
    x = np.array([[3.0, 65.0], [3.2, 67.0], [3.4, 69.0], [2.9, 66.0]])
    r = responsibilities(x, p.weights, p.means, p.covariances)
    exact_one = np.prod(r[:, 0]) + np.prod(r[:, 1])
    assert 0.05 < exact_one < 0.95  # the rows really are shared
    s = 4000
    draws = {name: np.broadcast_to(v, (1, s) + v.shape).copy() for name, v in zip(("weights", "means", "covariances"), p)}
    fit = dataclasses.replace(faithful_gibbs, draws=draws, raw_draws=draws, sample_stats=None)
    with pytest.raises(ValueError, match="needs the training data x"):
        fit.num_components_posterior()
    post = fit.num_components_posterior(x, seed=3)
    assert abs(post.loc[1] - exact_one) < 4.5 * np.sqrt(exact_one * (1 - exact_one) / s)
    assert post.loc[1] + post.loc[2] == pytest.approx(1.0)
    # max_draws is a bound: 1500 of 4000 draws take every third, 1334 (every second, 2000, before)
    thinned = fit.num_components_posterior(x, max_draws=1500, seed=3).to_numpy() * 1334
    np.testing.assert_allclose(thinned, np.round(thinned), atol=1e-9)
    with pytest.raises(ValueError, match="point estimate"):
        bg.fit_em(x, 1).num_components_posterior(x)


def test_progress_bar_gives_the_same_draws(one_gaussian, capsys):
    """The bar is advanced from inside the compiled program; the draws are unchanged."""
    x, prior = one_gaussian
    settings = dict(prior=prior, seed=4, num_warmup=20, num_samples=200, num_chains=2)
    quiet = _quiet(bg.fit_gibbs, x, 1, **settings)
    shown = _quiet(bg.fit_gibbs, x, 1, progress_bar=True, **settings)
    np.testing.assert_array_equal(quiet.raw_draws["covariances"], shown.raw_draws["covariances"])
    assert "Gibbs 2 chain(s) x 220 sweeps" in capsys.readouterr().err


def test_runs_of_chains_compute_in_the_callers_precision():
    """``jax.enable_x64`` as a context holds for its own thread: runs of chains on worker threads
    looked their program up, and traced it, in the process's precision. With x64 off (JAX's
    default), ``with jax.enable_x64(True): fit_gibbs(..., num_chains=2)`` failed with a type error
    (float64 traced as float32), as NUTS did. A fresh process, since this suite runs with x64 on."""
    import subprocess
    import sys
    import textwrap

    script = textwrap.dedent("""
        import numpy as np, jax
        import bayesgmm as bg
        from bayesgmm import _chains
        _chains.usable_cores = lambda: 2  # two runs of one chain each, on two threads
        x = np.random.default_rng(0).normal(size=(60, 2))
        with jax.enable_x64(True):
            fit = bg.fit_gibbs(x, 1, seed=1, num_warmup=10, num_samples=20, num_chains=2)
        print(fit.info["dtype"], jax.config.jax_enable_x64)
    """)
    out = subprocess.run([sys.executable, "-W", "ignore", "-c", script], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["float64", "False"]


def test_two_fits_on_two_threads_advance_their_own_bars(one_gaussian, monkeypatch):
    """The bars were looked up by engine name: two fit_gibbs with bars on a user's two threads
    advanced one bar by both fits' ticks (3000 of 1000) and left the other unshown, or made a bar
    twice (the chains' ticks racing to create it) and left one open. Each fit's ticks go to its
    own bar now (that of the fit whose thread holds the run lock), and every bar is closed."""
    import concurrent.futures

    import tqdm.auto

    bars = []

    class Recorded:
        def __init__(self, total, desc, unit):
            self.total, self.desc, self.n, self.ticks, self.closed = total, desc, 0, 0, False
            bars.append(self)

        def update(self, steps):
            self.n += steps
            self.ticks += 1

        def close(self):
            self.closed = True

    monkeypatch.setattr(tqdm.auto, "tqdm", Recorded)
    x, prior = one_gaussian
    settings = [dict(prior=prior, seed=4, num_warmup=20, num_samples=n, num_chains=2, progress_bar=True) for n in (300, 900)]
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        fits = list(pool.map(lambda kw: _quiet(bg.fit_gibbs, x, 1, **kw), settings))
    assert sorted(bar.desc for bar in bars) == ["Gibbs 2 chain(s) x 320 sweeps", "Gibbs 2 chain(s) x 920 sweeps"]
    for bar in bars:
        assert bar.closed and bar.n == bar.total and bar.ticks > 1  # ticked along, then completed once
    assert [f.raw_draws["covariances"].shape[1] for f in fits] == [300, 900]


def test_means_are_drawn_through_the_covariance_draws_own_root_and_nan_draws_do_not_crash():
    """In float32 a Cholesky factor of a nearly singular inverse-Wishart draw (features correlated
    at 0.9999, D = 4) was NaN now and then: 20 non-finite mean entries in 20,000 draws, and the
    float64 recomputation of the draws' lp then failed (a ZeroDivisionError). The means are drawn
    through the Bartlett root M of the covariance draw (cov = M^T M), and a non-finite draw's lp is
    NaN."""
    from bayesgmm import _chains, gibbs

    d, rho = 4, 0.9999
    scale = jnp.asarray(((1 - rho) * np.eye(d) + rho * np.ones((d, d))) * 300, jnp.float32)
    keys = jax.random.split(jax.random.key(0), 2000)
    log_g = jnp.log(0.5 * (310.0 - jnp.arange(d, dtype=jnp.float32)))
    cov, root = jax.vmap(lambda key: gibbs.inverse_wishart_draw(log_g, key, scale))(keys)
    assert np.isfinite(np.asarray(root)).all()
    np.testing.assert_allclose(np.swapaxes(root, -1, -2) @ root, cov, rtol=1e-3, atol=1e-6 * float(jnp.max(cov)))
    x = bg.datasets.load_faithful()
    draws = {"weights": np.full((1, 2, 2), 0.5), "means": np.stack([[[[2, 55], [4, 80]], [[np.nan, 55], [4, 80]]]]),
             "covariances": np.broadcast_to(np.eye(2), (1, 2, 2, 2, 2)).copy()}
    lp = _chains.exact_log_posterior(x, draws, Prior.default(x, 2), "full")
    assert np.isfinite(lp[0, 0]) and np.isnan(lp[0, 1])


@pytest.mark.parametrize("covariance_type", ["full", "tied", "diag", "spherical"])
def test_draws_log_likelihood_factorises_each_covariance_once(covariance_type, monkeypatch):
    """The float64 log-likelihood of every draw (a sampler's lp, the InferenceData's
    log_likelihood group) factorised all S K covariances once per row block, and at S = 4000,
    K = 20, D = 8 a block held 6 rows: 43 s at N = 2000, about 430 s of a default Gibbs fit's
    bookkeeping at N = 20,000 (review of Gibbs at scale). One factorisation now, whatever N, and
    the same numbers as one draw at a time (``_references``, scipy)."""
    from _references import mixture_log_density

    from bayesgmm import _numerics

    rng = np.random.default_rng(0)
    s, k, d, n = 300, 20, 8, 400
    x = rng.normal(size=(n, d))
    w, m = rng.dirichlet(np.ones(k), s), rng.normal(size=(s, k, d))
    a = rng.normal(size=(s, k, d, d))
    full = a @ np.swapaxes(a, -1, -2) + np.eye(d)
    cov = {"full": full, "tied": full[:, 0], "diag": np.diagonal(full, axis1=-2, axis2=-1).copy(),
           "spherical": full[:, :, 0, 0].copy()}[covariance_type]
    calls = []
    cholesky = np.linalg.cholesky
    monkeypatch.setattr(np.linalg, "cholesky", lambda *args, **kwargs: calls.append(1) or cholesky(*args, **kwargs))
    monkeypatch.setattr(_numerics, "DRAWS_BLOCK_ELEMENTS", 2**14)  # many blocks of draws and of rows
    total = _numerics.draws_log_likelihood(x, w, m, cov, covariance_type)
    per_row = _numerics.draws_log_density(x, w, m, cov, covariance_type)
    assert len(calls) <= (2 if covariance_type in ("full", "tied") else 0)
    monkeypatch.undo()
    reference = np.array([mixture_log_density(x, w[i], m[i], cov[i], covariance_type) for i in range(s)])
    np.testing.assert_allclose(per_row, reference, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(total, reference.sum(1), rtol=1e-12)


def test_a_sampler_warned_about_is_not_called_converged():
    """R-hat 1.008 with a bulk ESS of 213 from 4 chains (a K = 15 Gibbs fit in a review) warned
    and said ``converged=True``: converged now needs both, as the warning does."""
    from bayesgmm import _chains

    with pytest.warns(ConvergenceWarning, match="min bulk ESS 213"):
        assert _chains.warn_if_unconverged("Gibbs", 1.008, 213.0, 4, "advice") is False
    with pytest.warns(ConvergenceWarning, match="max R-hat 1.0200"):
        assert _chains.warn_if_unconverged("Gibbs", 1.02, 5000.0, 4, "advice") is False
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert _chains.warn_if_unconverged("Gibbs", 1.008, 400.0, 4, "advice") is True


def test_a_run_in_many_calls_makes_the_draws_of_one_call(faithful_gibbs, faithful, monkeypatch):
    """Gibbs's chains run in calls of about a second each, as NUTS's (``_chains.in_segments``):
    calls of a few sweeps each give the draws of the fixture's, bit for bit, and nothing compiles."""
    from conftest import calls_of_one_step

    calls = calls_of_one_step(monkeypatch)
    again = bg.fit_gibbs(faithful, 2, seed=0, **SETTINGS)
    assert len(calls) > 100 and again.info["compile_seconds"] == 0.0
    for name in ("weights", "means", "covariances"):
        np.testing.assert_array_equal(again.raw_draws[name], faithful_gibbs.raw_draws[name])
    np.testing.assert_array_equal(again.sample_stats["lp"], faithful_gibbs.sample_stats["lp"])
