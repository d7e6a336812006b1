"""Dirichlet-process (truncated stick-breaking) weights against independent references.

* The stick-breaking distribution with ``a_k = alpha_k, b_k = sum_{j>k} alpha_j`` is the
  Dirichlet(alpha) (Connor & Mosimann 1969): NumPyro's Dirichlet is the reference density.
* The model's prior on the weights, recomputed from SciPy's Beta densities of the sticks and the
  Jacobian of the stick-breaking map.
* Brute-force enumeration of every labelling of tiny data under the stick-breaking prior on z: the
  complete VB ELBO equals the log joint of the captured labelling.
* The Gibbs conditional of the weights against the sticks' Beta posteriors (Monte Carlo error),
  and simulation-based calibration of the Gibbs sampler under a DP prior.
* The posterior of the number of occupied components against a collapsed sampler of the same
  truncated model (single-row label moves, weights and clusters integrated out).
* scikit-learn's ``BayesianGaussianMixture(weight_concentration_prior_type="dirichlet_process")``
  from the same start is in test_vb.py (the oracle fixture runs both weight priors).
"""

import dataclasses
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist
import pytest
from _references import enumerated_log_evidence_terms, occupied_components_collapsed
from scipy import stats
from scipy.special import logsumexp

import bayesgmm as bg
from bayesgmm import _sticks
from bayesgmm.model import StickBreaking, log_joint, log_likelihood, log_prior
from bayesgmm.params import ConvergenceWarning, GMMParams, Prior


def _quiet(fit, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        return fit(*args, **kwargs)


def _dirichlet_as_sticks(alpha):
    alpha = np.asarray(alpha, np.float64)
    later = np.cumsum(alpha[::-1])[::-1] - alpha
    return np.stack([alpha[:-1], later[:-1]], axis=-1)


def test_stick_breaking_with_dirichlet_parameters_is_the_dirichlet():
    alpha = np.array([0.7, 2.0, 1.3, 0.4])
    sticks = StickBreaking(jnp.asarray(_dirichlet_as_sticks(alpha)))
    w = np.asarray(dist.Dirichlet(jnp.asarray(alpha)).sample(jax.random.key(0), (6,)))
    np.testing.assert_allclose(sticks.log_prob(jnp.asarray(w)), dist.Dirichlet(jnp.asarray(alpha)).log_prob(w),
                               rtol=1e-5)
    np.testing.assert_allclose(sticks.mean, alpha / alpha.sum(), rtol=1e-6)
    draws = np.asarray(sticks.sample(jax.random.key(1), (20000,)), np.float64)
    assert draws.shape == (20000, 4) and np.allclose(draws.sum(1), 1.0, atol=1e-5)
    se = draws.std(0) / np.sqrt(draws.shape[0])
    assert np.all(np.abs(draws.mean(0) - alpha / alpha.sum()) < 4.5 * se)


def test_model_prior_of_the_weights_is_beta_sticks_times_the_jacobian():
    """log p(pi) = sum_k log Beta(v_k; 1, gamma) - sum_k log r_k, r_k = pi_k + ... + pi_K."""
    gamma, k = 0.8, 4
    prior = Prior(gamma, np.zeros(2), 0.1, 4.0, np.eye(2), weight_prior="dirichlet_process")
    w = np.array([0.5, 0.3, 0.15, 0.05])
    tails = np.cumsum(w[::-1])[::-1]
    v = w[:-1] / tails[:-1]
    expected_weights = np.sum(stats.beta.logpdf(v, 1.0, gamma)) - np.sum(np.log(tails[:-1]))
    rng = np.random.default_rng(0)
    params = GMMParams(w, rng.normal(size=(k, 2)), np.broadcast_to(np.eye(2), (k, 2, 2)) * 0.5)
    pa = prior.arrays(k, "full")
    assert pa.concentration.shape == (k - 1, 2)
    dirichlet_pa = dataclasses.replace(prior, weight_prior="dirichlet", weight_concentration=1.0).arrays(k, "full")
    with jax.enable_x64(True):
        as_jax = GMMParams(*(jnp.asarray(a) for a in params))
        lp = float(log_prior(as_jax, pa, "full"))
        uniform = float(log_prior(as_jax, dirichlet_pa, "full"))  # log Gamma(K) for the uniform Dirichlet
        np.testing.assert_allclose(lp - uniform, expected_weights - np.log(6.0), rtol=1e-10)
        # the NumPyro model's log joint: likelihood + this prior
        x = jnp.asarray(rng.normal(size=(7, 2)))
        total = float(log_joint(x, as_jax, pa, "full"))
        np.testing.assert_allclose(total, lp + float(jnp.sum(log_likelihood(x, as_jax, "full"))), rtol=1e-10)


def test_stick_helpers_match_their_definitions():
    sticks = np.array([[1.5, 2.0], [0.7, 3.0], [2.0, 0.5]])
    counts = np.array([4.0, 0.0, 2.0, 3.0])
    post = _sticks.posterior(sticks, counts)
    np.testing.assert_allclose(post, [[5.5, 7.0], [0.7, 8.0], [4.0, 3.5]])
    np.testing.assert_allclose(_sticks.expected_counts(post, sticks, 9.0), counts)
    # E[log pi] by Monte Carlo from Beta draws
    rng = np.random.default_rng(1)
    v = rng.beta(post[:, 0], post[:, 1], size=(200000, 3))
    log_pi = np.log(np.concatenate([v, np.ones((v.shape[0], 1))], 1)) + np.concatenate(
        [np.zeros((v.shape[0], 1)), np.cumsum(np.log1p(-v), 1)], 1)
    se = log_pi.std(0) / np.sqrt(v.shape[0])
    assert np.all(np.abs(_sticks.expected_log_weights(post) - log_pi.mean(0)) < 4.5 * se)
    # KL of the sticks: scipy's Beta entropy and cross-entropy by quadrature
    grid = np.linspace(1e-6, 1 - 1e-6, 200001)
    kl = 0.0
    for (a, b), (a0, b0) in zip(post, sticks):
        q = stats.beta.pdf(grid, a, b)
        kl += np.trapezoid(q * (stats.beta.logpdf(grid, a, b) - stats.beta.logpdf(grid, a0, b0)), grid)
    assert _sticks.kl_divergence(post, sticks) == pytest.approx(kl, rel=1e-4)


def test_elbo_equals_the_captured_labelling_by_enumeration():
    """Two clusters 40 sd apart, N = 8, K = 2: log p(x, z) of every labelling under the
    stick-breaking prior on z (a Beta-binomial per stick) and NIW clusters. q captures one labelling,
    so the complete ELBO equals its log joint and falls short of log p(x)."""
    rng = np.random.default_rng(2)
    x = np.concatenate([rng.normal(size=(5, 2)) - 20.0, rng.normal(size=(3, 2)) + 20.0])
    prior = Prior(0.7, x.mean(0), 0.01, 4.0, np.eye(2), weight_prior="dirichlet_process")
    terms = enumerated_log_evidence_terms(x, 2, prior.stick_parameters(2), prior.mean, prior.mean_precision,
                                          prior.degrees_of_freedom, prior.scale)
    r = bg.fit_vb(x, 2, prior=prior, reg_covar=0.0, tol=1e-10, max_iter=50, num_draws=10)
    assert r.info["elbo"] == pytest.approx(max(terms), abs=1e-6)
    assert r.info["elbo"] < logsumexp(terms)
    # the larger cluster takes the first stick (the DP's size-biased order): the best labelling
    assert r.weights[0] > r.weights[1]


def test_overfitted_vb_keeps_the_two_clusters_of_old_faithful(faithful):
    """K = 10 with the default DP prior (gamma = 1) and default settings: two components hold the data."""
    prior = Prior.default(faithful, 10, weight_prior="dirichlet_process")
    r = bg.fit_vb(faithful, 10, prior=prior)
    assert r.converged and r.info["effective_components"] == 2
    kept = np.sort(r.weights)[::-1][:2]
    np.testing.assert_allclose(kept, [0.644, 0.356], atol=0.01)  # the K = 2 fit's weights (EM: 0.644 / 0.356)
    assert np.isclose(r.weights.sum(), 1.0) and np.isclose(np.sum(r.expected_counts()), 272.0)


def test_one_component_under_a_dirichlet_process_prior_is_the_dirichlet_fit(faithful):
    """K = 1 has no sticks: its stick parameters are an empty (lanes, 0, 2) array, which the
    default em-EM search could not reshape (ValueError, and select_bayesian over K = 1, 2 with
    it). The fit is the Dirichlet prior's."""
    dp = bg.fit_vb(faithful, 1, prior=Prior.default(faithful, 1, weight_prior="dirichlet_process"), seed=0)
    dirichlet = bg.fit_vb(faithful, 1, prior=Prior.default(faithful, 1), seed=0)
    assert dp.info["elbo"] == pytest.approx(dirichlet.info["elbo"], rel=1e-12) and dp.weights.tolist() == [1.0]


def test_gibbs_weights_conditional_is_the_sticks_beta_posterior():
    from bayesgmm.gibbs import sample_parameters

    k, gamma = 4, 1.5
    prior = Prior(gamma, np.zeros(1), 0.5, 3.0, np.eye(1), weight_prior="dirichlet_process")
    pa = prior.arrays(k, "spherical")
    z = jnp.asarray(np.repeat([0, 1, 3], [6, 2, 3]))
    xs = jnp.asarray(np.random.default_rng(0).normal(size=(11, 1)), jnp.float32)
    draw = jax.jit(jax.vmap(lambda key: sample_parameters(key, xs, z, pa, k, "spherical").weights))
    w = np.asarray(draw(jax.random.split(jax.random.key(3), 20000)), np.float64)
    post = _sticks.posterior(prior.stick_parameters(k), np.array([6.0, 2.0, 0.0, 3.0]))
    se = w.std(0) / np.sqrt(w.shape[0])
    assert np.all(np.abs(w.mean(0) - _sticks.mean_weights(post)) < 4.5 * se)
    a, b = post[0]  # pi_1 = v_1 ~ Beta(1 + 6, gamma + 5)
    assert w[:, 0].var() == pytest.approx(a * b / ((a + b) ** 2 * (a + b + 1)), rel=0.05)


def test_samplers_align_draws_that_empty_components_to_their_best_draw(faithful):
    """Under a Dirichlet process of concentration 1e6 every draw puts all the weight on one
    component (the last stick). Aligned to the MAP start, which fills all three, the draws spread
    that component over every label: a point estimate of three components with invented means,
    49 nats below the one-component fit, and effective_components 3, with no warning. Aligned to
    the draw of highest log posterior with the weight-aware cost, the point estimate is the
    one-component fit."""
    prior = Prior.default(faithful, 3, weight_concentration=1e6, weight_prior="dirichlet_process")
    short = dict(num_warmup=100, num_samples=200, num_chains=2, seed=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)  # the empty components' prior draws mix poorly
        r = bg.fit_gibbs(faithful, 3, prior=prior, **short)
        plain = bg.fit_gibbs(faithful, 2, **short)
    assert r.num_components_posterior()[1] == 1.0
    assert r.weights.max() > 0.999 and r.effective_components == 1
    assert abs(r.log_likelihood - bg.fit_em(faithful, 1).log_likelihood) < 0.1
    assert r.info["aligned_to"] == "best draw"
    assert plain.info["aligned_to"] == "map"  # an exchangeable prior of concentration >= 1: the MAP start


@pytest.mark.slow  # fast variant: tests/test_gibbs.py::test_sbc_is_calibrated_fast, and this file's Dirichlet-process Gibbs tests
def test_gibbs_sbc_under_a_dirichlet_process_prior():
    """K = 3, D = 1 under DP(2) weights: ranks of label-invariant quantities are uniform (few
    replications: catches gross errors in the stick conditional)."""
    prior = Prior(weight_concentration=2.0, mean=np.zeros(1), mean_precision=0.2, degrees_of_freedom=5.0,
                  scale=4.0 * np.eye(1), weight_prior="dirichlet_process")
    res = _quiet(bg.sbc, 3, 30, prior=prior, method="gibbs", num_replications=60, num_ranks=19, seed=0,
                 engine_kwargs={"num_warmup": 100, "num_samples": 400, "num_chains": 1})
    assert res.p_values.to_numpy().min() > 1e-3, res.p_values


def test_model_samples_stick_breaking_weights_for_nuts_and_svi():
    """The model's weights site under a DP prior: a StickBreaking distribution on the simplex, so
    NUTS and the SVI autoguides transform it as they transform a Dirichlet."""
    from numpyro import handlers

    from bayesgmm.model import gmm_model

    prior = Prior(0.5, np.zeros(2), 0.1, 4.0, np.eye(2), weight_prior="dirichlet_process")
    with handlers.seed(rng_seed=0):
        tr = handlers.trace(gmm_model).get_trace(None, num_components=5, prior=prior.arrays(5, "diag"),
                                                 covariance_type="diag", num_obs=3)
    site = tr["weights"]
    assert isinstance(site["fn"], StickBreaking) and site["fn"].support is dist.constraints.simplex
    w = np.asarray(site["value"])
    assert w.shape == (5,) and np.isclose(w.sum(), 1.0, atol=1e-6) and np.all(w > 0)


@pytest.mark.slow
def test_svi_under_a_dirichlet_process_prior_agrees_with_vb(faithful):
    """K = 2 (at K = 3 the two optimise different families and may settle on different optima:
    SVI's splits the long-eruption cluster, VB's empties the third component)."""
    prior = Prior.default(faithful, 2, weight_prior="dirichlet_process")
    vb = bg.fit_vb(faithful, 2, prior=prior)
    svi = _quiet(bg.fit_svi, faithful, 2, prior=prior, num_steps=3000, seed=0).align_to(vb)
    np.testing.assert_allclose(svi.weights, vb.weights, atol=0.02)
    np.testing.assert_allclose(svi.means, vb.means, rtol=0.02)
    assert np.isfinite(svi.info["elbo"]) and np.isclose(svi.weights.sum(), 1.0)


@pytest.mark.slow
def test_nuts_and_gibbs_agree_under_a_dirichlet_process_prior(faithful):
    """The same posterior by two samplers (K = 3 on Old Faithful, DP(1)): the sorted weights'
    posterior means agree within Monte Carlo error."""
    prior = Prior.default(faithful, 3, weight_prior="dirichlet_process")
    gibbs = _quiet(bg.fit_gibbs, faithful, 3, prior=prior, num_warmup=500, num_samples=2000, num_chains=4, seed=0)
    nuts = _quiet(bg.fit_mcmc, faithful, 3, prior=prior, num_warmup=500, num_samples=1000, num_chains=4, seed=0)

    def sorted_weights(r):
        w = np.sort(np.asarray(r.raw_draws["weights"], np.float64).reshape(-1, 3), axis=1)[:, ::-1]
        return w.mean(0), w.std(0) / np.sqrt(min(r.info["min_ess_bulk"], w.shape[0]))

    (mg, sg), (mn, sn) = sorted_weights(gibbs), sorted_weights(nuts)
    assert np.all(np.abs(mg - mn) < 4.5 * np.hypot(sg, sn) + 2e-3), (mg, mn)
    # and the first component itself: both start in the labelling of highest posterior density
    # (under sticks the labels are part of the model; each sampler stayed in its k-means order).
    # Under DP(1) at K = 3 the density depends on the first weight alone (-log(pi_2 + pi_3)), so
    # the other two components' order is a tie and only the first is compared.
    for name in ("weights", "means"):
        a, b = (np.asarray(r.draws[name], np.float64)[:, :, 0].reshape((-1,) + r.draws[name].shape[3:])
                for r in (gibbs, nuts))
        se = np.hypot(a.std(0) / np.sqrt(gibbs.info["min_ess_bulk"]), b.std(0) / np.sqrt(nuts.info["min_ess_bulk"]))
        assert np.all(np.abs(a.mean(0) - b.mean(0)) < 4.5 * se + 2e-3), (name, a.mean(0), b.mean(0))


@pytest.mark.slow  # fast variant: test_the_start_takes_the_labelling_the_weight_prior_finds_most_probable
def test_both_samplers_report_the_most_probable_labelling_under_sticks():
    """Three separated clusters under DP(0.5): NUTS reported the labelling of its k-means start
    (the weight of "component 2" 0.251, 0.09 nats below the best), Gibbs another (0.300)."""
    import itertools

    rng = np.random.default_rng(11)
    a = np.array([[1, 0.3], [0, 0.8]])
    x = np.concatenate([rng.normal(size=(90, 2)) @ a * 0.7, rng.normal(size=(60, 2)) @ a + [6, 1],
                        rng.normal(size=(50, 2)) @ a * 1.3 + [1, 7]])[rng.permutation(200)]
    prior = Prior.default(x, 3, weight_concentration=0.5, weight_prior="dirichlet_process")
    for fit in (bg.fit_mcmc, bg.fit_gibbs):
        p = _quiet(fit, x, 3, prior=prior, seed=5, num_warmup=500, num_samples=500).params
        joint = {order: float(log_joint(x, GMMParams(p.weights[list(order)], p.means[list(order)],
                                                     p.covariances[list(order)]), prior.arrays(3, "full"), "full"))
                 for order in itertools.permutations(range(3))}
        assert max(joint, key=joint.get) == (0, 1, 2), (fit.__name__, joint)


@pytest.mark.parametrize("k", [3, 9])
def test_the_start_takes_the_labelling_the_weight_prior_finds_most_probable(k):
    """Stick-breaking weights and an uneven Dirichlet give the labellings of one point different
    densities: the samplers' start is reordered to the most probable one (every order up to 7
    components; above, the candidates of the rule in ``labelling_order``), against a brute force
    over every order; an exchangeable Dirichlet keeps its order. Decreasing weights alone fell
    17.5 nats short at K = 8 under sticks of gamma = 5 (a large last weight pays there)."""
    import itertools

    from bayesgmm._numpyro_common import best_labelling

    rng = np.random.default_rng(k)
    w = rng.dirichlet(np.ones(k))
    params = GMMParams(jnp.asarray(w), jnp.asarray(rng.normal(size=(k, 2))), jnp.asarray(rng.uniform(1, 2, (k, 2))))
    orders = np.array(list(itertools.permutations(range(k))))
    uneven = np.arange(1.0, k + 1.0)[::-1].copy()
    priors = [(np.column_stack([np.ones(k - 1), np.full(k - 1, gamma)]), _sticks.log_density) for gamma in (0.5, 5.0)]
    priors.append((uneven, lambda v, a: np.sum((a - 1) * np.log(v), axis=-1)))
    for concentration, density in priors:
        best = best_labelling(params, jnp.asarray(concentration), "diag")
        order = [int(np.flatnonzero(np.asarray(params.weights) == v)[0]) for v in np.asarray(best.weights)]
        np.testing.assert_array_equal(best.means, np.asarray(params.means)[order])  # each component whole
        np.testing.assert_array_equal(best.covariances, np.asarray(params.covariances)[order])
        top = np.max(density(w[orders], concentration))
        assert density(np.asarray(best.weights, np.float64), concentration) == pytest.approx(top, abs=1e-9)
    same = best_labelling(params, jnp.full(k, 0.3), "diag")
    np.testing.assert_array_equal(same.weights, params.weights)


def test_hyperparameters_beyond_the_compute_type_are_refused(faithful):
    """A concentration of 1e-40 became 0 in float32 (every draw's lp -inf; the true density is
    finite) and 1e39 became inf (Gibbs then failed with a ZeroDivisionError deep inside)."""
    for gamma in (1e-40, 1e39):
        prior = Prior.default(faithful, 3, weight_concentration=gamma, weight_prior="dirichlet_process")
        assert prior.arrays(3, "full", np.float64).concentration[0, 1] == gamma  # float64 holds both
        with pytest.raises(ValueError, match="weight_concentration .* beyond what float32 holds"):
            prior.arrays(3, "full", np.float32)
        with jax.enable_x64(False), pytest.raises(ValueError, match="fit in float64"):
            bg.fit_gibbs(faithful, 3, prior=prior, num_warmup=10, num_samples=10, num_chains=1, seed=0)
    with pytest.raises(ValueError, match="mean_precision 1e-45 is beyond"):
        dataclasses.replace(Prior.default(faithful, 2), mean_precision=1e-45).arrays(2, "diag", np.float32)


def test_dirichlet_process_prior_checks_and_round_trip(faithful, tmp_path):
    with pytest.raises(ValueError, match="weight_prior must be one of"):
        Prior.default(faithful, 2, weight_prior="pitman_yor")
    with pytest.raises(ValueError, match="scalar"):
        Prior([1.0, 2.0], np.zeros(2), 0.1, 4.0, np.eye(2), weight_prior="dirichlet_process")
    prior = Prior.default(faithful, 3, weight_prior="dirichlet_process")
    with pytest.raises(ValueError, match="MAP-EM is not defined"):
        bg.fit_em(faithful, 3, prior=prior)
    with pytest.raises(ValueError, match="guide='delta'"):
        bg.fit_svi(faithful, 3, prior=prior, guide="delta")
    with pytest.raises(ValueError, match="stick_parameters"):
        prior.concentration(3)
    assert prior != dataclasses.replace(prior, weight_prior="dirichlet")
    r = bg.fit_vb(faithful, 3, prior=prior, num_draws=20)
    assert np.asarray(r.info["alpha"]).shape == (2, 2)
    path = tmp_path / "fit.nc"
    bg.save_result(r, path)
    assert bg.load_result(path).prior == prior
    with pytest.warns(UserWarning, match="point estimate"):
        loaded = bg.FitResult.from_json(r.to_json())
    assert loaded.prior == prior and loaded.prior.weight_prior == "dirichlet_process"


def test_a_truncation_every_component_fills_is_flagged():
    """Six clusters fitted under Dirichlet-process weights truncated at K = 3: VB and Gibbs both
    said converged, weights about 0.51, 0.17, 0.32, and nothing else (review of the DP prior).
    Both say ``truncation_filled`` now; a generous truncation (K = 10) leaves components empty."""
    rng = np.random.default_rng(0)
    centres = 10.0 * np.array([[0, 0], [1, 0], [2, 0], [0, 1], [1, 1], [2, 1]])
    x = np.concatenate([c + rng.normal(size=(150, 2)) for c in centres])
    short = Prior.default(x, 3, weight_prior="dirichlet_process")
    assert bg.fit_vb(x, 3, prior=short).info["truncation_filled"] is True
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)  # (its chains may be said unconverged too)
        gibbs = bg.fit_gibbs(x, 3, prior=short, num_warmup=100, num_samples=200, num_chains=2, seed=0)
    assert gibbs.info["truncation_filled"] is True
    generous = bg.fit_vb(x, 10, prior=Prior.default(x, 10, weight_prior="dirichlet_process"))
    assert generous.info["truncation_filled"] is False and generous.info["effective_components"] == 6
    assert "truncation_filled" not in bg.fit_vb(x, 3).info  # a Dirichlet prior has no truncation


def _four_clusters(n=400, seed=1):
    rng = np.random.default_rng(seed)
    centres = np.array([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0], [10.0, 10.0]])
    return centres[rng.permutation(np.arange(n) % 4)] + rng.normal(size=(n, 2)), centres


def test_the_pruned_start_occupies_only_the_clusters():
    """From a MAP start that spreads K = 8 components over 4 clusters (several on each), the
    pruned start keeps one component per cluster, at its centre; on one Gaussian, one."""
    from bayesgmm import _numpyro_common as shared

    for x, centres in (_four_clusters(), (np.random.default_rng(0).normal(size=(300, 2)), np.zeros((1, 2)))):
        xs = (x - x.mean(0)) / x.std(0)
        prior = Prior.default(xs, 8, weight_prior="dirichlet_process").arrays(8, "full")
        pivot = shared.map_start(shared.map_start_noise(jax.random.PRNGKey(0), 8, xs.dtype), jnp.asarray(xs), prior, 8,
                                 "full")
        assert np.sum(np.asarray(pivot.weights) > 0.01) > len(centres)  # the MAP start occupies more
        start = shared.pruned_start(pivot, jnp.asarray(xs), prior, "full")
        kept = np.asarray(start.weights) > 0
        assert kept.sum() == len(centres)
        means = np.asarray(start.means)[kept] * x.std(0) + x.mean(0)
        assert np.max(np.min(np.linalg.norm(means[:, None] - centres[None], axis=-1), axis=1)) < 0.5


def _occupied_mean(probabilities):
    return float(np.arange(1, len(probabilities) + 1) @ np.asarray(probabilities))


#: The mean number of occupied components on ``_four_clusters()`` under
#: ``Prior.default(x, 8, weight_prior="dirichlet_process")`` by :func:`occupied_components_collapsed`
#: (1500 sweeps; recomputed by the slow test below): probabilities 0.437, 0.416, 0.129, 0.018 of
#: 4-7 components.
COLLAPSED_OCCUPIED_MEAN = 4.73


def test_dirichlet_process_gibbs_finds_the_number_of_components_of_a_collapsed_sampler():
    """A blocked Gibbs sweep rarely empties an occupied component: started with all K = 8
    components occupied (the MAP start, two on some clusters), the chains stayed with too many
    (mean 6.72 occupied, P(4) = 0, against the collapsed sampler's 4.73 and 0.44). Started from
    the pruned start, 2 chains x (200 + 300) sweeps give 4.62-5.16 over sampler seeds 0-5."""
    x, _ = _four_clusters()
    prior = Prior.default(x, 8, weight_prior="dirichlet_process")
    fit = _quiet(bg.fit_gibbs, x, 8, prior=prior, num_warmup=200, num_samples=300, num_chains=2, seed=0)
    occupied = fit.num_components_posterior()
    assert abs(_occupied_mean(occupied.values) - COLLAPSED_OCCUPIED_MEAN) < 0.6
    assert occupied.get(4, 0.0) > 0.1


@pytest.mark.slow  # fast variant: the test above, against the recorded reference
def test_the_collapsed_reference_of_the_number_of_components():
    x, _ = _four_clusters()
    prior = Prior.default(x, 8, weight_prior="dirichlet_process")
    reference = occupied_components_collapsed(x, 8, float(prior.weight_concentration), prior.mean, prior.mean_precision,
                                              prior.degrees_of_freedom, prior.scale, sweeps=1500, seed=0)
    assert abs(_occupied_mean(reference) - COLLAPSED_OCCUPIED_MEAN) < 0.1
    fit = _quiet(bg.fit_gibbs, x, 8, prior=prior, num_warmup=1000, num_samples=2000, num_chains=4, seed=0)
    assert abs(_occupied_mean(fit.num_components_posterior().values) - _occupied_mean(reference)) < 0.4
