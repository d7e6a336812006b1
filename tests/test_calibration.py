"""Simulation-based calibration (bayesgmm.calibration) against references it does not use.

* Exactness: with K = 1 and the conjugate prior, closed-form VB's q *is* the Normal-Inverse-
  Wishart posterior (tests/test_vb.py checks it against the closed form), so SBC of fit_vb must
  find uniform ranks; and SBC must flag a posterior whose spread is halved, or a fit given a
  different prior than the one the parameters were drawn from.
* The tests themselves: the chi-square statistic equals scipy's, p-values of uniform ranks are
  not small and those of piled-up ranks are, the simultaneous ECDF band covers independently
  simulated uniform ECDFs with its nominal probability, and the pointwise band is made of
  binomial quantiles.
* Mechanics: ranks lie in 0..L, same seed gives the same ranks, the replication loop compiles
  nothing new, engine warnings are collected once, failures are recorded or raised, errors name
  the problem.
"""

import dataclasses
import subprocess
import sys
import warnings

import numpy as np
import pandas as pd
import pytest
from scipy import stats

import bayesgmm as bg
from bayesgmm.calibration import (
    QUANTITIES,
    SBCResult,
    _ranks,
    _total_log_likelihood,
    ecdf_band,
    rank_bins,
    sbc,
    uniformity_tests,
)
from bayesgmm.model import log_likelihood as model_log_likelihood
from bayesgmm.params import ConvergenceWarning, DegenerateComponentWarning, GMMParams

D = 2
L = 49  # posterior draws per replication: ranks in 0..49, 50 values, bins of equal width
N = 20


def make_prior(d=D, **changes):
    base = dict(weight_concentration=5.0, mean=np.zeros(d), mean_precision=0.2, degrees_of_freedom=d + 4.0,
                scale=(d + 3.0) * np.eye(d))
    base.update(changes)
    return bg.Prior(**base)


PRIOR = make_prior()
EXACT = dict(prior=PRIOR, method="vb", num_ranks=L, engine_kwargs={"reg_covar": 0.0})


@pytest.fixture(scope="module")
def exact_run():
    """SBC of VB for K = 1 (the exact posterior): 200 replications (compiles VB once, then ~1 ms a fit)."""
    return sbc(1, N, num_replications=200, seed=0, **EXACT)


def halved_spread(x, num_components, **kwargs):
    """fit_vb with every draw pulled halfway to the draws' mean: a posterior too narrow by 2x."""
    r = bg.fit_vb(x, num_components, **kwargs)
    draws = {}
    for name, a in r.draws.items():
        a = np.asarray(a)
        draws[name] = a.mean(axis=(0, 1), keepdims=True) + 0.5 * (a - a.mean(axis=(0, 1), keepdims=True))
    return dataclasses.replace(r, draws=draws, raw_draws=draws)


# ----------------------------------------------------------------------------------------------
# The reference: exact posterior calibrated, broken ones detected
# ----------------------------------------------------------------------------------------------
def test_exact_posterior_gives_uniform_ranks(exact_run):
    p = exact_run.p_values
    assert list(p.index) == ["sorted_means[0]", "log_likelihood", "mixture_mean[0]", "mixture_mean[1]",
                             "mixture_variance[0]", "mixture_variance[1]"]
    # 6 quantities x 2 tests: under uniformity the smallest of 12 p-values is below 0.001 with
    # probability < 1.2%; a miscalibration of the size detected below gives p < 1e-6.
    assert p.to_numpy().min() > 1e-3, p
    assert exact_run.num_failed == 0 and (exact_run.replications["num_warnings"] == 0).all()
    assert exact_run.replications["converged"].all()


def test_halved_posterior_spread_is_detected():
    res = sbc(1, N, num_replications=200, seed=0, prior=PRIOR, method=halved_spread, num_ranks=L,
              engine_kwargs={"reg_covar": 0.0, "num_draws": L})
    p = res.p_values
    for q in ("sorted_means[0]", "mixture_mean[1]", "mixture_variance[0]"):
        assert p.loc[q, "chi2"] < 1e-6 and p.loc[q, "ecdf"] < 1e-3, p
    # Too narrow: the truth falls outside the draws, so the extreme ranks pile up (a U shape).
    ranks = res.ranks["sorted_means[0]"]
    assert np.mean((ranks == 0) | (ranks == L)) > 0.25  # 2 / 50 = 0.04 if calibrated
    assert res.settings["method"] == "halved_spread"


def test_wrong_prior_in_the_fit_is_detected():
    strong = make_prior(mean=np.full(D, 1.5), mean_precision=4.0)  # draws came from mean 0, kappa 0.2

    def fit_with_wrong_prior(x, num_components, *, prior, **kwargs):
        return bg.fit_vb(x, num_components, prior=strong, **kwargs)

    res = sbc(1, N, num_replications=200, seed=0, prior=PRIOR, method=fit_with_wrong_prior, num_ranks=L,
              engine_kwargs={"reg_covar": 0.0, "num_draws": L})
    p = res.p_values
    assert p.loc["sorted_means[0]", "chi2"] < 1e-6 and p.loc["mixture_mean[1]", "ecdf"] < 1e-3, p
    # Pulled towards 1.5 > 0 on average: the posterior sits above the truth, ranks are small.
    assert res.ranks["mixture_mean[1]"].mean() < 0.4 * L


@pytest.mark.slow
def test_exact_posterior_diag_gives_uniform_ranks():
    res = sbc(1, N, num_replications=300, seed=1, covariance_type="diag", **EXACT)
    assert res.p_values.to_numpy().min() > 1e-3, res.p_values


# ----------------------------------------------------------------------------------------------
# Mechanics
# ----------------------------------------------------------------------------------------------
def test_ranks_frames_and_facts(exact_run):
    r = exact_run
    assert isinstance(r, SBCResult)
    assert r.ranks.shape == (200, 6) and r.ranks.index.name == "replication"
    assert all(str(t) == "int64" for t in r.ranks.dtypes)
    assert r.ranks.to_numpy().min() >= 0 and r.ranks.to_numpy().max() <= L
    assert r.ranks.to_numpy().max() == L and r.ranks.to_numpy().min() == 0  # both ends are reached
    assert r.true_values.shape == r.ranks.shape
    w, m, c = (r.prior_draws[n] for n in ("weights", "means", "covariances"))
    assert w.shape == (200, 1) and m.shape == (200, 1, D) and c.shape == (200, 1, D, D)
    np.testing.assert_array_equal(w, 1.0)
    np.testing.assert_allclose(r.true_values["sorted_means[0]"], m[:, 0, 0])
    np.testing.assert_allclose(r.true_values["mixture_variance[1]"], c[:, 0, 1, 1])
    assert {"converged", "n_iter", "fit_seconds", "min_component_count", "num_warnings", "warnings", "error",
            "elbo"} <= set(r.replications.columns)
    assert (r.replications["min_component_count"] == N).all()  # K = 1: every point in the one component
    assert r.settings["num_ranks"] == L and r.settings["prior"] == PRIOR.to_dict()
    assert r.settings["engine_kwargs"] == {"reg_covar": 0.0, "num_draws": L}
    np.testing.assert_array_equal(r.bin_edges, np.arange(0, L + 2, 5))  # 10 bins of 5 rank values
    assert "sorted_means[0]" in r.summary() and "SBCResult(method='vb'" in repr(r)


def test_prior_draws_follow_the_prior(exact_run):
    """Means ~ N(0, Sigma / kappa0) given Sigma: the standardised means are N(0, 1) (KS test)."""
    m = exact_run.prior_draws["means"][:, 0]
    c = exact_run.prior_draws["covariances"][:, 0]
    z = m[:, 0] / np.sqrt(c[:, 0, 0] / PRIOR.mean_precision)
    assert stats.kstest(z, "norm").pvalue > 1e-3
    # Sigma_00 ~ InvGamma((nu0 - D + 1) / 2, psi_00 / 2) (marginal of the inverse Wishart).
    a = (PRIOR.degrees_of_freedom - D + 1) / 2
    assert stats.kstest(c[:, 0, 0], stats.invgamma(a, scale=PRIOR.scale[0, 0] / 2).cdf).pvalue > 1e-3


def test_same_seed_same_ranks_and_prefix_property():
    a = sbc(1, N, num_replications=20, seed=3, **EXACT)
    b = sbc(1, N, num_replications=20, seed=3, **EXACT)
    pd.testing.assert_frame_equal(a.ranks, b.ranks)
    pd.testing.assert_frame_equal(a.tests, b.tests)
    for name in a.prior_draws:
        np.testing.assert_array_equal(a.prior_draws[name], b.prior_draws[name])
    shorter = sbc(1, N, num_replications=8, seed=3, **EXACT)
    pd.testing.assert_frame_equal(shorter.ranks, a.ranks.iloc[:8])  # replication r does not depend on R
    other = sbc(1, N, num_replications=20, seed=4, **EXACT)
    assert not np.array_equal(other.ranks.to_numpy(), a.ranks.to_numpy())


def test_replications_run_on_a_process_pool_as_in_the_serial_loop():
    """An executor (two spawned processes: JAX must not be forked) gives the serial run's ranks, prior
    draws and facts (timings aside)."""
    import concurrent.futures
    import multiprocessing

    serial = sbc(1, N, num_replications=6, seed=3, **EXACT)
    with concurrent.futures.ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("spawn")) as pool:
        pooled = sbc(1, N, num_replications=6, seed=3, executor=pool, **EXACT)
    pd.testing.assert_frame_equal(pooled.ranks, serial.ranks)
    pd.testing.assert_frame_equal(pooled.true_values, serial.true_values)
    for name in serial.prior_draws:
        np.testing.assert_array_equal(pooled.prior_draws[name], serial.prior_draws[name])
    facts = [c for c in serial.replications.columns if "seconds" not in c]
    pd.testing.assert_frame_equal(pooled.replications[facts], serial.replications[facts])
    with pytest.raises(ValueError, match="executor must be a concurrent.futures.Executor"):
        sbc(1, N, num_replications=2, executor="pool", **EXACT)
    # threads: each replication's warnings its own (they were swapped between replications)
    with concurrent.futures.ThreadPoolExecutor(2) as threads:
        threaded = sbc(1, N, num_replications=6, seed=3, executor=threads, **EXACT)
    pd.testing.assert_frame_equal(threaded.replications[facts], serial.replications[facts])
    with concurrent.futures.ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("fork")) as forking:
        with pytest.raises(ValueError, match="forks this process"):
            sbc(1, N, num_replications=2, executor=forking, **EXACT)


def test_an_experiment_inside_a_task_does_not_wait_for_itself():
    """A replication holds the warnings lock while its engine runs; an engine that runs
    ``compare`` on a thread pool had its workers wait for that lock while it waited for them
    (forever). The inner experiment now runs in the task's own thread."""
    import concurrent.futures
    import threading

    def engine(x, k, *, covariance_type, prior, seed, **kw):
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            _, fits = bg.compare(x, k, methods=("vb",), covariance_type=covariance_type, prior=prior,
                                 engine_kwargs={"vb": kw}, return_fits=True, executor=pool)
        return fits["vb"]

    done = {}
    worker = threading.Thread(target=lambda: done.update(r=sbc(1, N, num_replications=2, seed=0, prior=PRIOR,
                                                               method=engine, num_ranks=L)), daemon=True)
    worker.start()
    worker.join(240)
    assert not worker.is_alive(), "sbc with an engine running compare on a thread pool did not finish"
    assert done["r"].replications.shape[0] == 2


def test_progress_bar_changes_nothing_but_stderr(capsys):
    quiet = sbc(1, N, num_replications=6, seed=8, **EXACT)
    shown = sbc(1, N, num_replications=6, seed=8, progress_bar=True, **EXACT)
    pd.testing.assert_frame_equal(quiet.ranks, shown.ranks)
    assert "SBC (vb)" in capsys.readouterr().err


def test_replications_compile_nothing_new():
    from conftest import CompileCounter

    sbc(1, N, num_replications=2, seed=5, **EXACT)  # compiles (or reuses) the programs of this shape
    with CompileCounter() as counter:
        sbc(1, N, num_replications=12, seed=6, **EXACT)
    assert counter.compiles == 0


def test_ranks_break_ties_at_random():
    post = np.array([[0.0, 1.0, 2.0], [1.0, 1.0, 3.0], [1.0, 1.0, 4.0], [2.0, 1.0, 5.0]])  # L = 4 draws, 3 quantities
    truth = np.array([1.0, 1.0, 0.0])  # quantity 0: one below, two equal; 1: all equal; 2: below all
    ranks = np.array([_ranks(post, truth, np.random.default_rng(s)) for s in range(4000)])
    assert set(ranks[:, 0]) == {1, 2, 3} and set(ranks[:, 1]) == {0, 1, 2, 3, 4}
    np.testing.assert_array_equal(ranks[:, 2], 0)
    counts = np.bincount(ranks[:, 1], minlength=5)
    assert stats.chisquare(counts).pvalue > 1e-3  # uniform over 0..L when the truth ties every draw
    np.testing.assert_array_equal(_ranks(post, np.array([9.0, 9.0, 9.0]), np.random.default_rng(0)), 4)


@pytest.mark.parametrize("covariance_type", ["full", "diag", "spherical", "tied"])
def test_log_likelihood_quantity_matches_the_model(covariance_type, rng):
    k, d, n, p = 3, 2, 15, 4
    x = rng.normal(size=(n, d))
    w = rng.dirichlet(np.ones(k), size=p)
    m = rng.normal(size=(p, k, d))
    a = rng.normal(size=(p, k, d, d))
    full = a @ np.swapaxes(a, -1, -2) + 0.5 * np.eye(d)
    cov = {"full": full, "diag": full[..., 0, 0, None] * np.ones(d) + np.arange(d), "spherical": full[..., 0, 0],
           "tied": full[:, 0]}[covariance_type]
    ours = _total_log_likelihood(x, w, m, cov, covariance_type)
    ref = [float(np.sum(model_log_likelihood(x, GMMParams(w[i], m[i], cov[i]), covariance_type))) for i in range(p)]
    np.testing.assert_allclose(ours, ref, rtol=1e-10)


# ----------------------------------------------------------------------------------------------
# Warnings and failures of the engine
# ----------------------------------------------------------------------------------------------
def test_engine_warnings_are_collected_and_summarised_once():
    def noisy(x, num_components, **kwargs):
        warnings.warn("not converged (test)", ConvergenceWarning, stacklevel=2)
        if x[0, 0] > 0:
            warnings.warn("degenerate (test)", DegenerateComponentWarning, stacklevel=2)
        return bg.fit_vb(x, num_components, **kwargs)

    with pytest.warns(UserWarning) as record:
        res = sbc(1, N, num_replications=10, seed=0, prior=PRIOR, method=noisy, num_ranks=L,
                  engine_kwargs={"reg_covar": 0.0, "num_draws": L})
    cats = [w.category for w in record]
    assert cats.count(ConvergenceWarning) == 1 and cats.count(DegenerateComponentWarning) == 1
    conv = next(w for w in record if w.category is ConvergenceWarning)
    assert "in 10 of 10 SBC replications" in str(conv.message)
    reps = res.replications
    assert reps["warnings"].str.contains("ConvergenceWarning: not converged (test)", regex=False).all()
    assert (reps["num_warnings"] == 1 + reps["warnings"].str.contains("Degenerate").astype(int)).all()
    assert len(res.ranks) == 10  # warned fits are kept


def test_failed_fits_are_recorded_or_raised():
    def flaky(x, num_components, **kwargs):
        if x[0, 0] > 0:
            raise ValueError("simulated failure")
        return bg.fit_vb(x, num_components, **kwargs)

    kw = dict(num_replications=12, seed=0, prior=PRIOR, method=flaky, num_ranks=L, engine_kwargs={"num_draws": L})
    with pytest.raises(ValueError, match="simulated failure") as info:
        sbc(1, N, **kw)
    assert any("SBC replication" in note for note in info.value.__notes__)
    with pytest.warns(ConvergenceWarning, match="failed and are left out"):
        res = sbc(1, N, on_error="record", **kw)
    failed = res.replications["error"] != ""
    assert 0 < failed.sum() < 12 and res.num_failed == failed.sum()
    assert (res.replications.loc[failed, "error"] == "ValueError: simulated failure").all()
    assert list(res.ranks.index) == list(res.replications.index[~failed])
    assert (res.prior_draws["means"][failed.to_numpy(), 0, 0] > -np.inf).all()  # prior draws of every replication

    def broken(x, num_components, **kwargs):  # an error sbc does not record: raised, saying where too
        raise RuntimeError("broken engine")

    with pytest.raises(RuntimeError, match="broken engine") as info:
        sbc(1, N, **dict(kw, method=broken), on_error="record")
    assert any("SBC replication 0 of 12" in note for note in info.value.__notes__)


# ----------------------------------------------------------------------------------------------
# Uniformity tests and bands
# ----------------------------------------------------------------------------------------------
def test_chi_square_matches_scipy_and_ecdf_test_has_power():
    rng = np.random.default_rng(0)
    num_ranks, r = 99, 300
    uniform = rng.integers(0, num_ranks + 1, size=r)
    piled = np.clip(np.round(rng.normal(50, 12, size=r)), 0, num_ranks).astype(int)  # too wide a posterior
    biased = rng.integers(0, 70, size=r)  # posterior above the truth too often
    t = uniformity_tests(pd.DataFrame({"u": uniform, "piled": piled, "biased": biased}), num_ranks, seed=[1, 2])
    edges = rank_bins(num_ranks, r)
    assert len(edges) == 21  # 20 bins of 5 rank values: R / 20 = 15 expected per bin
    for q, v in (("u", uniform), ("piled", piled), ("biased", biased)):
        ref = stats.chisquare(np.histogram(v, bins=edges)[0])
        np.testing.assert_allclose(t.loc[q, "chi2"], ref.statistic, rtol=1e-12)
        np.testing.assert_allclose(t.loc[q, "chi2_pvalue"], ref.pvalue, rtol=1e-10)
    assert t.loc["u", "chi2_pvalue"] > 0.01 and t.loc["u", "ecdf_pvalue"] > 0.01
    assert t.loc["piled", "ecdf_pvalue"] < 1e-3 and t.loc["biased", "ecdf_pvalue"] < 1e-3
    assert t.loc["piled", "chi2_pvalue"] < 1e-6 and t.loc["biased", "chi2_pvalue"] < 1e-6
    # Under uniformity the ECDF p-value is itself (about) uniform.
    p = [uniformity_tests(rng.integers(0, 20, size=(60, 1)), 19, seed=[0]).loc["0", "ecdf_pvalue"] for _ in range(200)]
    assert 0.06 < np.mean(np.asarray(p) < 0.1) < 0.15 and stats.kstest(p, "uniform").pvalue > 1e-3
    with pytest.raises(ValueError, match="integers in 0..num_ranks"):
        uniformity_tests(np.array([[0], [100]]), 99, seed=0)
    # the public chi-square test checks its ranks and bins as uniformity_tests does (out-of-range ranks
    # were a broadcasting error or bincount's, fractional ones truncated without a word)
    from bayesgmm.ranks import chi_square_test

    for bad in ([0, 5, 10], [-1, 3], [0.5, 2]):
        with pytest.raises(ValueError, match="integers in 0..num_ranks=9"):
            chi_square_test(bad, 9, rank_bins(9, 30))
    with pytest.raises(ValueError, match="bin_edges must be integers increasing strictly from 0 to L"):
        chi_square_test([0, 3], 9, [0, 5, 5, 10])
    with pytest.raises(ValueError, match="num_ranks must be a positive integer"):
        chi_square_test([0, 3], 3.7, [0, 2, 4])


def test_rank_bins():
    np.testing.assert_array_equal(rank_bins(99, 200), np.arange(0, 101, 5))  # 20 equal bins
    np.testing.assert_array_equal(rank_bins(99, 50), np.arange(0, 101, 20))  # R / 10 = 5 bins
    edges = rank_bins(100, 200)  # 101 values (prime): no equal-width split, widths differ by <= 1
    assert edges[0] == 0 and edges[-1] == 101 and len(edges) == 21 and set(np.diff(edges)) <= {5, 6}
    assert len(rank_bins(9, 5)) == 3  # at least 2 bins
    # an odd number of rank values (L + 1 = 101, 7) and few replications: 2 bins of widths that differ
    # by one (the only divisor up to 2 was 1, so one bin, a chi-square of 0 degrees of freedom, p NaN)
    for num_ranks, r in ((100, 25), (6, 20), (98, 29)):
        edges = rank_bins(num_ranks, r)
        assert len(edges) == 3 and edges[-1] == num_ranks + 1 and abs(np.diff(edges)[0] - np.diff(edges)[1]) <= 1


def test_simultaneous_ecdf_band_has_its_coverage():
    r, num_ranks = 100, 49
    band = ecdf_band(r, num_ranks, prob=0.95, seed=7)
    # Independent check with fresh uniform ranks: the whole ECDF stays inside ~95% of the time.
    rng = np.random.default_rng(123)
    j = np.round(band.z * (num_ranks + 1)).astype(int)
    ranks = rng.integers(0, num_ranks + 1, size=(4000, r))
    ecdf = np.stack([np.sum(ranks < jj, axis=1) for jj in j], axis=1) / r
    inside = np.mean(np.all((ecdf >= band.lower - 1e-12) & (ecdf <= band.upper + 1e-12), axis=1))
    assert abs(inside - band.coverage) < 4 * np.sqrt(0.05 * 0.95 / 4000) + 0.01
    assert 0.93 < inside < 0.975
    pointwise = ecdf_band(r, num_ranks, prob=0.95, simultaneous=False, seed=7)
    np.testing.assert_array_equal(pointwise.lower, stats.binom.ppf(0.025, r, band.z) / r)
    np.testing.assert_array_equal(pointwise.upper, stats.binom.ppf(0.975, r, band.z) / r)
    assert pointwise.coverage < 0.7  # a pointwise band is left somewhere far more often than 5%
    assert np.all(band.lower <= pointwise.lower) and np.all(band.upper >= pointwise.upper)
    np.testing.assert_array_equal(band.lower, stats.binom.ppf(band.gamma / 2, r, band.z) / r)


# ----------------------------------------------------------------------------------------------
# Other engines
# ----------------------------------------------------------------------------------------------
@pytest.mark.slow  # fast variant: tests/test_gibbs.py::test_sbc_is_calibrated_fast (a sampler through SBC)
def test_mcmc_small_sbc():
    """NUTS on K = 2 (fast variant: few draws and replications; the slow test below has power)."""
    from conftest import CompileCounter

    with warnings.catch_warnings(), CompileCounter() as counter:
        warnings.simplefilter("ignore", ConvergenceWarning)  # short chains may warn; recorded per replication
        res = sbc(2, 30, prior=make_prior(1), method="mcmc", num_replications=40, num_ranks=19, seed=0,
                  engine_kwargs={"num_warmup": 150, "num_samples": 100, "num_chains": 1})
    assert counter.compiles < 40  # fewer than one per replication: the first replication's programs serve all 40
    assert list(res.ranks.columns) == ["sorted_means[0]", "sorted_means[1]", "sorted_weights[0]", "log_likelihood",
                                       "mixture_mean[0]", "mixture_variance[0]"]
    assert res.ranks.shape == (40, 6) and 0 <= res.ranks.to_numpy().min() and res.ranks.to_numpy().max() <= 19
    assert {"num_divergences", "max_rhat", "min_ess_bulk"} <= set(res.replications.columns)
    assert res.p_values.to_numpy().min() > 1e-3, res.p_values
    assert res.settings["engine_kwargs"] == {"num_warmup": 150, "num_samples": 100, "num_chains": 1}


@pytest.mark.slow
def test_mcmc_sbc_calibrated_k2():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        res = sbc(2, 50, prior=make_prior(1), method="mcmc", num_replications=150, num_ranks=49, seed=1)
    assert res.p_values.to_numpy().min() > 1e-3, res.p_values


@pytest.mark.slow  # fast variant: the VB and Gibbs runs through SBC
def test_svi_runs_through_sbc():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        res = sbc(1, 15, prior=make_prior(1), method="svi", num_replications=3, num_ranks=9, seed=0,
                  engine_kwargs={"num_steps": 200})
    assert res.ranks.shape == (3, 4) and res.settings["engine_kwargs"]["num_draws"] == 9


# ----------------------------------------------------------------------------------------------
# Errors, persistence, import weight
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(prior=None), "needs an explicit prior"),
        (dict(prior={"mean": 0}), "must be a bayesgmm.Prior"),
        (dict(num_components=0), "at least 1"),
        (dict(num_components=1.5), "positive integer"),
        (dict(num_obs=1), "num_obs must be an integer >= 2"),
        (dict(method="em"), "point estimate, not posterior draws"),
        (dict(method="nuts"), "method must be one of"),
        (dict(covariance_type="tied"), "not supported by method .vb."),
        (dict(covariance_type="banded"), "covariance_type must be one of"),
        (dict(prior=make_prior(weight_concentration=[1.0, 2.0, 3.0])), "has 3 entries but num_components=2"),
        (dict(engine_kwargs={"seed": 1}), r"must not set \['seed'\]"),
        (dict(engine_kwargs={"prior": PRIOR}), r"must not set \['prior'\]"),
        (dict(engine_kwargs={"num_draws": 10}), "fewer than num_ranks=49"),
        (dict(method="mcmc", engine_kwargs={"num_samples": 10, "num_chains": 2}), "num_samples \\* num_chains = 20"),
        (dict(num_replications=1), "num_replications must be an integer >= 2"),
        (dict(num_ranks=0), "num_ranks must be a positive integer"),
        (dict(quantities=("sorted_variances",)), "quantities must be a non-empty selection"),
        (dict(feature=2), "feature must index one of the prior's 2 feature"),
        (dict(on_error="skip"), "on_error must be"),
        (dict(num_components=1, quantities="sorted_weights"), "sorted_weights needs K >= 2"),
    ],
)
def test_bad_arguments_raise_clear_errors(kwargs, match):
    args = dict(num_components=2, num_obs=N, prior=PRIOR, num_ranks=L, num_replications=10)
    args.update(kwargs)
    k, n = args.pop("num_components"), args.pop("num_obs")
    with pytest.raises(ValueError, match=match):
        sbc(k, n, **args)


def test_a_fit_function_a_process_pool_cannot_send_is_refused_first():
    """A lambda on a spawning pool ended in pickle's AttributeError from the pool's internals."""
    import concurrent.futures
    import multiprocessing

    def local_fit(x, num_components, **kwargs):  # defined inside: not picklable
        return bg.fit_vb(x, num_components, **kwargs)

    with concurrent.futures.ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        with pytest.raises(ValueError, match="cannot be sent to the process pool's workers"):
            sbc(1, N, prior=PRIOR, method=local_fit, num_ranks=L, num_replications=3, executor=pool)


def test_engine_without_draws_is_rejected():
    def point_estimate(x, num_components, *, prior, **kwargs):
        return bg.fit_em(x, num_components, prior=prior, seed=0)

    with pytest.raises(ValueError, match="returned no posterior draws"):
        sbc(1, N, prior=PRIOR, method=point_estimate, num_ranks=L, num_replications=3)


def test_json_round_trip(exact_run, tmp_path):
    """Every table back exactly, a NaN too (a failed replication's row), written as standard JSON
    (the bare token NaN, which strict readers refuse, is the string "NaN")."""
    import dataclasses
    import json

    tests = exact_run.tests.copy()
    tests.iloc[0, tests.columns.get_indexer(tests.select_dtypes("number").columns)[:1]] = np.nan
    exact_run = dataclasses.replace(exact_run, tests=tests)
    path = tmp_path / "sbc.json"
    text = exact_run.to_json(path)

    def refuse(token):
        raise ValueError(f"non-standard JSON token {token}")

    assert '"NaN"' in text and json.loads(text, parse_constant=refuse)
    back = SBCResult.from_json(path)
    for name in ("ranks", "tests", "replications", "true_values"):
        pd.testing.assert_frame_equal(getattr(back, name), getattr(exact_run, name))
    for name, a in exact_run.prior_draws.items():
        np.testing.assert_array_equal(back.prior_draws[name], a)
    assert back.settings == exact_run.settings
    pd.testing.assert_frame_equal(back.p_values, exact_run.p_values)
    with pytest.raises(ValueError, match="not an SBCResult"):
        SBCResult.from_json('{"format": "other"}')


def test_to_json_keeps_the_earlier_file_when_the_write_fails(exact_run, tmp_path, monkeypatch):
    """to_json opened the final name for writing: an interrupt or a full disk left a truncated file."""
    from conftest import assert_a_failed_write_keeps_the_file

    second = dataclasses.replace(exact_run, settings={**exact_run.settings, "note": "second"})
    assert_a_failed_write_keeps_the_file(tmp_path / "sbc.json", exact_run.to_json, second.to_json, monkeypatch)


def test_module_import_is_light():
    code = "import sys, bayesgmm.calibration; print(sorted(m for m in ('arviz', 'matplotlib', 'pandas', 'sklearn') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_quantities_are_the_documented_and_computed_set(exact_run):
    """QUANTITIES, the module docstring's list of test quantities, sbc's default and the columns a
    default run writes name the same quantities in the same order (K = 1 has no sorted weights)."""
    import inspect
    import re

    from bayesgmm import calibration

    doc = calibration.__doc__
    section = doc[doc.index("Test quantities\n"):doc.index("Uniformity tests\n")]
    documented = [name for line in section.splitlines() if line.startswith("``")
                  for name in re.findall(r"``(\w+)(?:\[\w\])?``", line)]
    assert tuple(documented) == QUANTITIES
    assert inspect.signature(sbc).parameters["quantities"].default == QUANTITIES
    written = list(dict.fromkeys(c.split("[")[0] for c in exact_run.ranks.columns))
    assert written == [q for q in QUANTITIES if q != "sorted_weights"]


def test_an_interrupted_run_continues_from_its_checkpoint(tmp_path):
    """Each replication's outcome (draws of the truth, ranks, facts, warnings; failures too) is
    saved as it finishes; a second call with the same arguments and folder loads them, runs only
    the missing ones, and returns the uninterrupted run's result, warnings included. A larger
    num_replications extends the run (replication r does not depend on R); another seed is refused."""

    def noisy_or_failing(x, num_components, **kwargs):
        warnings.warn("not converged (test)", ConvergenceWarning, stacklevel=2)
        if x[0, 0] > 0:
            raise ValueError("simulated failure")
        return bg.fit_vb(x, num_components, **kwargs)

    kw = dict(seed=5, prior=PRIOR, method=noisy_or_failing, num_ranks=L, on_error="record",
              engine_kwargs={"reg_covar": 0.0, "num_draws": L})
    folder = tmp_path / "checkpoint"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        first = sbc(1, N, num_replications=6, checkpoint=folder, **kw)
    with pytest.warns(ConvergenceWarning) as expected:
        plain = sbc(1, N, num_replications=9, **kw)
    assert 0 < plain.num_failed < 9  # both kinds of outcome go through the folder
    (folder / "task-000002.json").unlink()  # as if the run had stopped before it
    with pytest.warns(ConvergenceWarning) as record:
        resumed = sbc(1, N, num_replications=9, checkpoint=folder, **kw)
    # the summary warnings count the loaded replications' warnings too, by their categories
    assert [(w.category, str(w.message)) for w in record] == [(w.category, str(w.message)) for w in expected]
    pd.testing.assert_frame_equal(resumed.ranks, plain.ranks)
    pd.testing.assert_frame_equal(resumed.true_values, plain.true_values)
    pd.testing.assert_frame_equal(resumed.tests, plain.tests)
    pd.testing.assert_frame_equal(resumed.replications.drop(columns="fit_seconds"),
                                  plain.replications.drop(columns="fit_seconds"))
    for name in plain.prior_draws:
        np.testing.assert_array_equal(resumed.prior_draws[name], plain.prior_draws[name])
    seconds = resumed.replications["fit_seconds"]
    kept = [0, 1, 3, 4, 5]
    np.testing.assert_array_equal(seconds.loc[kept], first.replications["fit_seconds"].loc[kept])  # loaded
    assert seconds.loc[2] != first.replications["fit_seconds"].loc[2]  # computed again
    with pytest.raises(ValueError, match="differs in seed"):
        sbc(1, N, num_replications=9, checkpoint=folder, **dict(kw, seed=6))
