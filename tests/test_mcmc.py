"""NUTS on the one model (bayesgmm.mcmc): the target density, label switching, accuracy, determinism.

Small runs (Old Faithful, a few hundred draws per chain); every fixture is module-scoped so each
sampler program compiles once: one for full covariances (reused by three fits) and one for diag.
"""

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

import bayesgmm as bg
from bayesgmm import _stats, mcmc
from bayesgmm.model import gmm_model, log_prior, model_kwargs
from bayesgmm.params import ConvergenceWarning, GMMParams, Prior

NUM_WARMUP, NUM_SAMPLES, NUM_CHAINS = 300, 1000, 4
SETTINGS = dict(num_warmup=NUM_WARMUP, num_samples=NUM_SAMPLES, num_chains=NUM_CHAINS)


def _fit(*args, **kwargs):
    """fit_mcmc with its warnings recorded (short runs may legitimately warn about ESS)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = mcmc.fit_mcmc(*args, **kwargs)
    return result, [w for w in caught if issubclass(w.category, ConvergenceWarning)]


@pytest.fixture(scope="module")
def map_fit(faithful):
    return bg.fit_em(faithful, 2, prior=Prior.default(faithful, 2), seed=0)


@pytest.fixture(scope="module")
def full_fits(faithful, map_fit):
    """Three fits of one compiled program: MAP start (twice, same seed) and permuted starts."""
    traces_before = mcmc._TRACE_COUNT["fit"]
    first = _fit(faithful, 2, seed=0, **SETTINGS)
    traces_after_first = mcmc._TRACE_COUNT["fit"]
    again = _fit(faithful, 2, seed=0, **SETTINGS)
    p = map_fit.params
    swapped = GMMParams(p.weights[::-1], p.means[::-1], p.covariances[::-1])
    permuted = _fit(faithful, 2, seed=1, init=[p, swapped, p, swapped], **SETTINGS)
    return {
        "map": first,
        "again": again,
        "permuted": permuted,
        "traces": (traces_after_first - traces_before, mcmc._TRACE_COUNT["fit"] - traces_after_first),
    }


@pytest.fixture(scope="module")
def diag_fit(faithful):
    return _fit(faithful, 2, covariance_type="diag", seed=2, **SETTINGS)


def _sklearn_mle(x, covariance_type):
    from sklearn.mixture import GaussianMixture

    gm = GaussianMixture(2, covariance_type=covariance_type, n_init=5, tol=1e-8, max_iter=1000, random_state=0).fit(x)
    order = np.argsort(gm.means_[:, 0])
    return gm.weights_[order], gm.means_[order], gm.covariances_[order]


# --------------------------------------------------------------------------------------------
# 1. One model, one truth: the density NUTS samples is the model's joint density
# --------------------------------------------------------------------------------------------
def _scipy_log_joint(x, params, prior, covariance_type):
    w, mu, cov = (np.asarray(a, np.float64) for a in params)
    k = w.shape[0]
    if covariance_type == "full":
        dens = sum(w[j] * stats.multivariate_normal(mu[j], cov[j]).pdf(x) for j in range(k))
        lp = sum(
            stats.invwishart(df=prior.degrees_of_freedom, scale=prior.scale).logpdf(cov[j])
            + stats.multivariate_normal(prior.mean, cov[j] / prior.mean_precision).logpdf(mu[j])
            for j in range(k)
        )
    else:  # diag
        dens = sum(w[j] * np.prod(stats.norm(mu[j], np.sqrt(cov[j])).pdf(x), axis=1) for j in range(k))
        psi = np.diag(prior.scale)
        lp = np.sum(stats.invgamma(a=prior.degrees_of_freedom / 2, scale=psi / 2).logpdf(cov)) + np.sum(
            stats.norm(prior.mean, np.sqrt(cov / prior.mean_precision)).logpdf(mu)
        )
    return np.sum(np.log(dens)) + lp + stats.dirichlet(prior.concentration(k)).logpdf(w)


@pytest.mark.parametrize("covariance_type", ["full", "diag"])
def test_nuts_potential_is_the_model_joint_density(covariance_type, rng):
    from numpyro.infer.util import log_density, potential_energy, unconstrain_fn

    x = rng.normal(size=(40, 2)) * [1.0, 2.0] + [0.5, -1.0]
    prior = Prior(weight_concentration=[1.5, 2.0], mean=[0.2, -0.5], mean_precision=0.3, degrees_of_freedom=4.5,
                  scale=[[1.2, 0.3], [0.3, 2.0]])
    pa = prior.arrays(2, covariance_type)
    full_cov = np.array([[[1.0, 0.4], [0.4, 2.0]], [[0.7, -0.2], [-0.2, 0.5]]])
    cov = full_cov if covariance_type == "full" else full_cov[:, [0, 1], [0, 1]]
    params = GMMParams(np.array([0.3, 0.7]), np.array([[0.0, -1.0], [1.0, 0.5]]), cov)
    values = dict(zip(("weights", "means", "covariances"), params))
    kwargs = model_kwargs(2, pa, covariance_type)

    # (each JAX computation jitted: eager op-by-op execution would compile hundreds of tiny programs)
    ld = jax.jit(lambda v: log_density(gmm_model, (x,), kwargs, v)[0])(values)
    ours = jax.jit(
        lambda p: jnp.sum(_stats.mixture_log_density(x, p, covariance_type)) + log_prior(p, pa, covariance_type)
    )(params)
    reference = _scipy_log_joint(x, params, prior, covariance_type)
    np.testing.assert_allclose(ld, reference, rtol=1e-10)
    np.testing.assert_allclose(ours, reference, rtol=1e-10)  # the EM objective (MAP) is the same number

    # The potential NUTS uses (a custom_vjp around one jitted value-and-grad) is NumPyro's
    # potential of the model in the unconstrained space: -(log joint + log|Jacobian|).
    z = jax.jit(lambda v: unconstrain_fn(gmm_model, (x,), kwargs, v))(values)
    potential = jax.jit(mcmc._potential_fn(jnp.asarray(x), pa, 2, covariance_type))
    numpyro_pe = jax.jit(lambda u: potential_energy(gmm_model, (x,), kwargs, u))(z)
    np.testing.assert_allclose(potential(z), numpyro_pe, rtol=1e-12)
    if covariance_type == "diag":
        # closed-form Jacobians: variances = exp(z); weights (K=2) = stick-breaking sigmoid
        log_jac = np.sum(np.log(cov)) + np.sum(np.log(params.weights))
        np.testing.assert_allclose(-potential(z), reference + log_jac, rtol=1e-10)
    # means are unconstrained: the gradient NUTS follows is the gradient of the EM objective
    grad_z = jax.jit(jax.grad(potential))(z)
    grad_obj = jax.jit(jax.grad(
        lambda m: jnp.sum(_stats.mixture_log_density(x, params._replace(means=m), covariance_type))
        + log_prior(params._replace(means=m), pa, covariance_type)
    ))(jnp.asarray(params.means))
    np.testing.assert_allclose(-grad_z["means"], grad_obj, rtol=1e-9)


# --------------------------------------------------------------------------------------------
# 2. Label switching
# --------------------------------------------------------------------------------------------
def test_label_switching_is_undone_by_alignment(full_fits):
    import arviz as az

    result, _ = full_fits["permuted"]
    raw_rhat = az.rhat(az.convert_to_dataset({"means": result.raw_draws["means"]}))["means"].values
    assert np.min(raw_rhat) > 1.5, raw_rhat  # chains 1 and 3 sample the swapped labelling
    # Every draw of chains 1 and 3 needs the swap, none of chains 0 and 2.
    assert result.info["label_switch_fraction"] == pytest.approx(0.5)
    aligned = az.convert_to_dataset({n: np.asarray(v) for n, v in result.draws.items()})
    aligned_rhat = np.concatenate([np.ravel(v.values) for v in az.rhat(aligned).data_vars.values()])
    assert np.nanmax(aligned_rhat) <= 1.01, aligned_rhat
    assert result.info["max_rhat"] == pytest.approx(np.nanmax(aligned_rhat))
    assert result.converged


# --------------------------------------------------------------------------------------------
# 3. Accuracy against an independent reference (scikit-learn's MLE)
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("which", ["full", "diag"])
def test_posterior_agrees_with_sklearn_mle(which, full_fits, diag_fit, faithful):
    result, _ = full_fits["map"] if which == "full" else diag_fit
    w_mle, m_mle, c_mle = _sklearn_mle(faithful, which)
    order = np.argsort(result.means[:, 0])
    for name, mle in (("weights", w_mle), ("means", m_mle), ("covariances", c_mle)):
        d = np.asarray(result.draws[name])
        d = d.reshape((-1,) + d.shape[2:])[:, order]
        mean, sd = d.mean(0), d.std(0)
        assert np.all(np.isfinite(sd)) and np.all(sd > 0)
        np.testing.assert_array_less(np.abs(mean - mle), 2 * sd + 1e-12, err_msg=name)
        np.testing.assert_allclose(getattr(result, name)[order], mean, rtol=1e-12)  # point = posterior mean
    sd_means = np.asarray(result.draws["means"]).std(axis=(0, 1))
    assert np.all(sd_means < 0.05 * faithful.std(0))  # N=272: the means are well determined
    assert np.all(np.asarray(result.draws["weights"]).std(axis=(0, 1)) < 0.05)
    # log_likelihood is the training log-likelihood at the point estimate
    plug_in = result.log_likelihood_samples(faithful).sum()
    np.testing.assert_allclose(result.log_likelihood, plug_in, rtol=1e-10)


def test_result_shapes_stats_and_warnings(full_fits, diag_fit):
    for result, caught in (full_fits["map"], full_fits["permuted"], diag_fit):
        c, s = NUM_CHAINS, NUM_SAMPLES
        assert result.method == "mcmc" and result.n_iter == s
        assert result.draws["weights"].shape == (c, s, 2)
        assert result.draws["means"].shape == (c, s, 2, 2)
        cov_shape = (c, s, 2, 2, 2) if result.covariance_type == "full" else (c, s, 2, 2)
        assert result.draws["covariances"].shape == result.raw_draws["covariances"].shape == cov_shape
        for name in ("diverging", "tree_depth", "num_steps", "accept_prob", "step_size", "energy", "lp"):
            assert result.sample_stats[name].shape == (c, s), name
        np.testing.assert_allclose(result.draws["weights"].sum(-1), 1.0, rtol=1e-10)
        assert result.trace.shape == (c * s,) and np.all(np.isfinite(result.trace))
        info = result.info
        assert info["num_divergences"] == int(result.sample_stats["diverging"].sum())
        assert result.converged == (info["max_rhat"] < 1.01)
        messages = " ".join(str(w.message) for w in caught)
        assert ("divergent" in messages) == (info["num_divergences"] > 0)
        low = info["max_rhat"] >= 1.01 or info["min_ess_bulk"] < 100 * c
        assert ("may not have converged" in messages) == low


def test_posterior_label_probabilities(full_fits, faithful):
    result, _ = full_fits["map"]
    lo, hi = np.argsort(result.means[:, 0])
    probs = result.predict_proba(result.means)  # the component centres
    assert probs[lo, lo] > 0.99 and probs[hi, hi] > 0.99
    # the point on the segment between the means where the plug-in responsibility is 1/2
    a, b = 0.0, 1.0
    for _ in range(60):
        t = 0.5 * (a + b)
        pt = result.means[lo] + t * (result.means[hi] - result.means[lo])
        p_plug = np.exp(_stats.log_responsibilities(jnp.asarray(pt[None]), result.params, "full"))[0, hi]
        a, b = (t, b) if p_plug < 0.5 else (a, t)
    p = result.predict_proba(pt[None])[0]
    assert 0.2 < p[hi] < 0.8, p  # averaged over draws: genuinely uncertain
    np.testing.assert_array_equal(result.predict(result.means), [lo, hi] if lo == 0 else [hi, lo][::-1])


# --------------------------------------------------------------------------------------------
# 4. Determinism, compile-once, bad arguments
# --------------------------------------------------------------------------------------------
def test_same_seed_same_draws_and_one_compile(full_fits):
    (a, _), (b, _) = full_fits["map"], full_fits["again"]
    for name in ("weights", "means", "covariances"):
        np.testing.assert_array_equal(a.raw_draws[name], b.raw_draws[name])
    np.testing.assert_array_equal(a.sample_stats["energy"], b.sample_stats["energy"])
    assert full_fits["traces"][0] <= 1 and full_fits["traces"][1] == 0  # the 2nd and 3rd fits re-use it
    assert b.info["compile_seconds"] == 0.0
    assert not np.array_equal(a.raw_draws["means"], full_fits["permuted"][0].raw_draws["means"])


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(num_samples=0), "num_samples"),
        (dict(num_warmup=-1), "num_warmup"),
        (dict(num_chains=2.5), "num_chains"),
        (dict(chain_method="parallel"), "chain_method"),
        (dict(target_accept_prob=1.5), "target_accept_prob"),
        (dict(init="kmeans"), "init"),
        (dict(init=[None, None]), "init"),
        (dict(progress_bar=True), "progress_bar"),
        (dict(covariance_type="banded"), "covariance_type"),
        (dict(prior=Prior.default(np.random.default_rng(0).normal(size=(10, 3)), 2)), "feature"),
        (dict(prior="mclust"), "prior"),
    ],
)
def test_bad_arguments_raise(kwargs, match, faithful):
    with pytest.raises(ValueError, match=match):
        mcmc.fit_mcmc(faithful, 2, **kwargs)


def test_bad_data_raise(faithful):
    bad = faithful.copy()
    bad[3, 1] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        mcmc.fit_mcmc(bad, 2)
    with pytest.raises(ValueError, match="num_components"):
        mcmc.fit_mcmc(faithful, 0)
