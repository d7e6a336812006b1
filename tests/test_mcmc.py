"""NUTS on the one model (bayesgmm.mcmc): the target density, label switching, accuracy, determinism.

Small runs (Old Faithful, a few hundred draws per chain); every fixture is module-scoped so each
sampler program compiles once: one for full covariances (reused by five fits: Old Faithful and
simulated data of the same shape) and one for diag. The multi-device test runs in a subprocess.
"""

import functools
import json
import os
import subprocess
import sys
import textwrap
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _references import log_joint, mixture_log_density

import bayesgmm as bg
from bayesgmm import _numerics, _numpyro_common, mcmc, model
from bayesgmm.diagnostics import ess_bulk
from bayesgmm.model import gmm_model, log_prior, model_kwargs
from bayesgmm.params import ConvergenceWarning, GMMParams, Prior, log_jacobians, params_to_original, params_to_standard

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
    from conftest import compiled_afresh

    with compiled_afresh():  # the first fit compiles, whatever an earlier module of this process compiled
        first = _fit(faithful, 2, seed=0, **SETTINGS)
        again = _fit(faithful, 2, seed=0, **SETTINGS)
    p = map_fit.params
    swapped = GMMParams(p.weights[::-1], p.means[::-1], p.covariances[::-1])
    permuted = _fit(faithful, 2, seed=1, init=[p, swapped, p, swapped], **SETTINGS)
    return {
        "map": first,
        "again": again,
        "permuted": permuted,
        "compile_seconds": tuple(r.info["compile_seconds"] for r, _ in (first, again, permuted)),
    }


@pytest.fixture(scope="module")
def diag_fit(faithful):
    return _fit(faithful, 2, covariance_type="diag", seed=2, **SETTINGS)


#: Known truth of the simulated data: two well-separated, correlated components in D=2.
TRUTH = GMMParams(
    np.array([0.35, 0.65]),
    np.array([[-3.0, 1.0], [2.0, -1.0]]),
    np.array([[[1.0, 0.5], [0.5, 2.0]], [[1.5, -0.6], [-0.6, 0.8]]]),
)


@pytest.fixture(scope="module")
def simulated():
    """N=250, D=2: in the row bucket of Old Faithful's 272 rows, so its full-covariance program is
    reused (the data are padded to the bucket and the padding masked out of the model)."""
    rng = np.random.default_rng(11)
    z = rng.choice(2, size=250, p=TRUTH.weights)
    x = np.stack([rng.multivariate_normal(TRUTH.means[j], TRUTH.covariances[j]) for j in z])
    return x, z


@pytest.fixture(scope="module")
def simulated_fit(simulated, full_fits):
    """4 chains started at the truth and at the truth with its labels swapped (1 and 3)."""
    swapped = GMMParams(*(a[::-1] for a in TRUTH))
    result = _fit(simulated[0], 2, seed=3, init=[TRUTH, swapped, TRUTH, swapped], **SETTINGS)
    assert result[0].info["compile_seconds"] == 0.0  # the Old Faithful program, reused at a new N
    return result


def _sklearn_mle(x, covariance_type):
    from sklearn.mixture import GaussianMixture

    gm = GaussianMixture(2, covariance_type=covariance_type, n_init=5, tol=1e-8, max_iter=1000, random_state=0).fit(x)
    order = np.argsort(gm.means_[:, 0])
    return gm.weights_[order], gm.means_[order], gm.covariances_[order]


# --------------------------------------------------------------------------------------------
# 1. One model, one truth: the density NUTS samples is the model's joint density
# --------------------------------------------------------------------------------------------
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
        lambda p: jnp.sum(_numerics.mixture_log_density(x, *p, covariance_type)) + log_prior(p, pa, covariance_type)
    )(params)
    reference = log_joint(x, params, prior, covariance_type)  # scipy
    np.testing.assert_allclose(ld, reference, rtol=1e-10)
    np.testing.assert_allclose(ours, reference, rtol=1e-10)  # the EM objective (MAP) is the same number

    # The potential NUTS uses (a custom_vjp around one jitted value-and-grad) is NumPyro's
    # potential of the model in the unconstrained space: -(log joint + log|Jacobian|).
    z = jax.jit(lambda v: unconstrain_fn(gmm_model, (x,), kwargs, v))(values)
    potential = jax.jit(mcmc.potential_fn(jnp.asarray(x), None, pa, 2, covariance_type))
    numpyro_pe = jax.jit(lambda u: potential_energy(gmm_model, (x,), kwargs, u))(z)
    np.testing.assert_allclose(potential(z), numpyro_pe, rtol=1e-12)
    # padded to a row bucket (rows of other values, masked out): the same potential and gradient
    padded, mask = np.concatenate([x, rng.normal(size=(24, 2)) * 50]), np.arange(64) < 40
    masked = mcmc.potential_fn(jnp.asarray(padded), jnp.asarray(mask), pa, 2, covariance_type)
    for a, b in zip(jax.jit(jax.value_and_grad(masked))(z), jax.jit(jax.value_and_grad(potential))(z)):
        jax.tree_util.tree_map(lambda u, v: np.testing.assert_allclose(u, v, rtol=1e-12), a, b)
    if covariance_type == "diag":
        # closed-form Jacobians: variances = exp(z); weights (K=2) = stick-breaking sigmoid
        log_jac = np.sum(np.log(cov)) + np.sum(np.log(params.weights))
        np.testing.assert_allclose(-potential(z), reference + log_jac, rtol=1e-10)
    # means are unconstrained: the gradient NUTS follows is the gradient of the EM objective
    grad_z = jax.jit(jax.grad(potential))(z)
    grad_obj = jax.jit(jax.grad(
        lambda m: jnp.sum(_numerics.mixture_log_density(x, *params._replace(means=m), covariance_type))
        + log_prior(params._replace(means=m), pa, covariance_type)
    ))(jnp.asarray(params.means))
    np.testing.assert_allclose(-grad_z["means"], grad_obj, rtol=1e-9)


def _vech_coordinates(values, covariance_type):
    """The free coordinates of the constrained sites in which the model's densities are written."""
    parts = [values["weights"][:-1], values["means"].ravel()]  # the Dirichlet's first K-1 coordinates
    cov = values["covariances"]
    if covariance_type == "full":  # the inverse Wishart is a density of the lower triangle
        rows, cols = np.tril_indices(cov.shape[-1])
        parts.append(cov[:, rows, cols].ravel())
    else:
        parts.append(cov.ravel())
    return jnp.concatenate(parts)


@pytest.mark.parametrize("covariance_type", ["full", "diag"])
def test_nuts_log_density_is_the_em_objective(covariance_type, faithful, map_fit):
    """At MAP-EM's solution, the density NUTS samples (its potential, on the standardised scale
    and in unconstrained coordinates) is exactly the objective EM reports (original scale).

    The potential is ``-(log p_s(x_s, theta_s) + log|d theta_s / d u|)``. The Jacobian of
    NumPyro's transforms is taken here by automatic differentiation (``jacfwd``), independently
    of NumPyro's own log-determinant code, and the change of units by ``log_jacobians``.
    """
    from jax.flatten_util import ravel_pytree
    from numpyro.infer.util import constrain_fn, unconstrain_fn

    prior = Prior.default(faithful, 2)
    if covariance_type == "full":
        em = map_fit
    else:
        em = bg.fit_em(faithful, 2, covariance_type="diag", prior=prior, seed=0)
    assert em.objective == "log_posterior"
    std = _numpyro_common.standardise(faithful, 2, covariance_type, prior)
    theta = params_to_standard(em.params, std.shift, std.sd, covariance_type)
    kwargs = model_kwargs(2, std.prior_arrays, covariance_type)
    args = (std.xs,)
    z = jax.jit(lambda v: unconstrain_fn(gmm_model, args, kwargs, v))(_numpyro_common.site_values(theta, 2))
    flat, unravel = ravel_pytree(z)
    jac = jax.jit(jax.jacfwd(
        lambda u: _vech_coordinates(constrain_fn(gmm_model, args, kwargs, unravel(u)), covariance_type)
    ))(flat)
    assert jac.shape[0] == jac.shape[1]
    log_jac = np.linalg.slogdet(np.asarray(jac))[1]
    potential = jax.jit(mcmc.potential_fn(jnp.asarray(std.xs), None, std.prior_arrays, 2, covariance_type))(z)
    ll_shift, prior_shift = log_jacobians(std.sd, faithful.shape[0], 2, covariance_type)
    nuts_log_posterior = -float(potential) - log_jac + ll_shift + prior_shift
    np.testing.assert_allclose(nuts_log_posterior, em.trace[-1], rtol=1e-10)


# --------------------------------------------------------------------------------------------
# 2. Label switching
# --------------------------------------------------------------------------------------------
def test_the_map_start_is_the_map_em_optimum_and_holds_one_e_step(faithful, map_fit):
    """The MAP start (k-means, then M, (E, M) x MAP_ITERS, E in one loop) reaches the MAP that
    fit_em finds with the same prior, and its program holds one E-step (the loop starts from the
    k-means labels, so the steps are not written out again before and after it)."""
    from bayesgmm.kmeans import num_trials

    k, ct = 2, "full"
    std = _numpyro_common.standardise(np.asarray(faithful, float), k, ct, Prior.default(faithful, k))
    u = np.random.default_rng(0).random((_numpyro_common.MAP_STARTS, k, num_trials(k))).astype(std.xs.dtype)
    start = jax.jit(lambda u, xs, prior: _numpyro_common.map_start(u, xs, prior, k, ct))
    pivot = GMMParams(*(np.asarray(a, np.float64) for a in start(u, std.xs, std.prior_arrays)))
    found = params_to_original(pivot, std.shift, std.sd, ct)
    order, ref = np.argsort(found.means[:, 0]), np.argsort(map_fit.means[:, 0])
    np.testing.assert_allclose(found.weights[order], map_fit.weights[ref], rtol=1e-3)
    np.testing.assert_allclose(found.means[order], map_fit.means[ref], rtol=1e-3)
    np.testing.assert_allclose(found.covariances[order], map_fit.covariances[ref], rtol=2e-3)
    hlo = start.lower(u, std.xs, std.prior_arrays).as_text()
    assert hlo.count("potrf_ffi") == 2  # LAPACK Cholesky: the E-step's factors and the log prior's


def test_label_switching_is_undone_by_alignment(full_fits):
    az = bg.diagnostics.import_arviz()

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


def test_label_switching_on_simulated_data(simulated_fit):
    """Chains started in the two labellings of well-separated simulated data never switch back:
    raw R-hat is huge; after alignment the chains agree."""
    az = bg.diagnostics.import_arviz()

    result, _ = simulated_fit
    raw_rhat = az.rhat(az.convert_to_dataset({"means": result.raw_draws["means"]}))["means"].values
    assert np.min(raw_rhat) > 1.5, raw_rhat
    assert result.info["label_switch_fraction"] == pytest.approx(0.5)
    assert result.info["max_rhat"] <= 1.01 and result.converged


# --------------------------------------------------------------------------------------------
# 3. Accuracy against an independent reference (scikit-learn's MLE), and known truth
# --------------------------------------------------------------------------------------------
def test_recovers_simulated_truth(simulated_fit, simulated):
    """Aligned posterior means lie within 4 posterior sd of the parameters that made the data."""
    result, _ = simulated_fit
    order = np.argsort(result.means[:, 0])  # TRUTH's components are ordered by the first mean
    for name in ("weights", "means", "covariances"):
        d = np.asarray(result.draws[name])
        d = d.reshape((-1,) + d.shape[2:])[:, order]
        mean, sd = d.mean(0), d.std(0)
        truth = getattr(TRUTH, name)
        assert np.all(sd > 0) and np.all(sd < 0.5 * (np.abs(truth) + 0.1)), (name, sd)  # informative
        np.testing.assert_array_less(np.abs(mean - truth), 4 * sd, err_msg=name)
    # the clusters: (almost) every simulated label recovered, up to the label permutation
    labels = simulated[1]
    assert np.mean(order[result.predict(simulated[0])] == labels) > 0.97


def test_vb_is_not_wider_than_nuts(full_fits, faithful):
    """Closed-form VB (same prior) does not overstate the uncertainty: its posterior sd are at
    most 1.2 x the NUTS sd (mean-field VB typically understates it)."""
    result, _ = full_fits["map"]
    vb = bg.vb.fit_vb(faithful, 2, prior=Prior.default(faithful, 2), tol=1e-8, max_iter=500, reg_covar=0.0,
                      num_draws=4000, seed=0)
    nuts_order, vb_order = np.argsort(result.means[:, 0]), np.argsort(vb.means[:, 0])
    np.testing.assert_allclose(vb.means[vb_order], result.means[nuts_order], rtol=0.02)
    for name in ("weights", "means", "covariances"):
        sd_nuts = np.asarray(result.draws[name]).std(axis=(0, 1))[nuts_order]
        sd_vb = np.asarray(vb.draws[name]).std(axis=(0, 1))[vb_order]
        assert np.all(np.isfinite(sd_vb)) and np.all(sd_vb > 0)
        np.testing.assert_array_less(sd_vb, 1.2 * sd_nuts, err_msg=name)


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


@pytest.mark.parametrize("covariance_type", ["tied", pytest.param("spherical", marks=pytest.mark.slow)])
def test_tied_and_spherical_posteriors(covariance_type):
    """The other two structures, on well-separated simulated data: the log posterior NUTS reports
    for a draw is scipy's log joint there (the structure's own prior: one inverse-Wishart for tied,
    inverse-gamma variances for spherical), and the posterior means of the aligned draws lie
    within Monte Carlo error plus 2 posterior sd of the maximum-likelihood estimate. (~30 s each
    here, mostly compiling one sampler program per structure: spherical runs under ``-m slow``.)"""
    data = bg.datasets.make_mixture(200, 2, 2, covariance_type=covariance_type, separation=6.0, seed=5)
    x = data.x
    result, _ = _fit(x, 2, covariance_type=covariance_type, num_warmup=150, num_samples=150, num_chains=2, seed=0)
    c, s = 2, 150
    cov_shape = {"spherical": (c, s, 2), "tied": (c, s, 2, 2)}[covariance_type]
    assert result.covariance_type == covariance_type and result.draws["covariances"].shape == cov_shape
    prior = Prior.default(x, 2)
    for chain, draw in [(0, 0), (1, 75), (1, 149)]:
        theta = [result.raw_draws[n][chain, draw] for n in ("weights", "means", "covariances")]
        np.testing.assert_allclose(result.sample_stats["lp"][chain, draw], log_joint(x, theta, prior, covariance_type),
                                   rtol=1e-10)
    np.testing.assert_allclose(result.log_likelihood, mixture_log_density(x, *result.params, covariance_type).sum(),
                               rtol=1e-10)
    mle = bg.fit_em(x, 2, covariance_type=covariance_type, n_init=3, seed=0, tol=1e-10, max_iter=1000)
    perm = np.argsort(result.means[:, 0])[np.argsort(np.argsort(mle.means[:, 0]))]  # result's component for each MLE one
    mcse_factor = 4 / np.sqrt(result.info["min_ess_bulk"])  # 4 Monte Carlo standard errors, per sd
    for name in ("weights", "means", "covariances"):
        d = np.asarray(result.draws[name]).reshape((-1,) + result.draws[name].shape[2:])
        point = np.asarray(getattr(result, name))
        if not (name == "covariances" and covariance_type == "tied"):  # the tied covariance has no label
            d, point = d[:, perm], point[perm]
        mean, sd = d.mean(0), d.std(0)
        np.testing.assert_allclose(point, mean, rtol=1e-12)  # the point estimate is the posterior mean
        assert np.all(sd > 0), name
        np.testing.assert_array_less(np.abs(mean - getattr(mle, name)), (2 + mcse_factor) * sd, err_msg=name)


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
        # run time split between warmup and sampling by their leapfrog steps (gradient evaluations)
        facts, sampling_steps = result.diagnostics, int(result.sample_stats["num_steps"].sum())
        assert info["warmup_leapfrog_steps"] > 0
        share = info["warmup_leapfrog_steps"] / (info["warmup_leapfrog_steps"] + sampling_steps)
        assert facts.warmup_seconds == pytest.approx(facts.run_seconds * share, rel=1e-9)
        assert facts.warmup_seconds + facts.sampling_seconds == pytest.approx(facts.run_seconds, rel=1e-12)
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
        p_plug = np.exp(_numerics.score_rows(pt[None], *result.params, "full", responsibilities=True).log_resp)[0, hi]
        a, b = (t, b) if p_plug < 0.5 else (a, t)
    p = result.predict_proba(pt[None])[0]
    assert 0.2 < p[hi] < 0.8, p  # averaged over draws: genuinely uncertain
    np.testing.assert_array_equal(result.predict(result.means), [0, 1])  # each centre is its component's


# --------------------------------------------------------------------------------------------
# 4. Determinism, compile-once, bad arguments
# --------------------------------------------------------------------------------------------
def test_same_seed_same_draws_and_one_compile(full_fits):
    (a, _), (b, _) = full_fits["map"], full_fits["again"]
    for name in ("weights", "means", "covariances"):
        np.testing.assert_array_equal(a.raw_draws[name], b.raw_draws[name])
    np.testing.assert_array_equal(a.sample_stats["energy"], b.sample_stats["energy"])
    assert full_fits["compile_seconds"][1:] == (0.0, 0.0)  # the 2nd and 3rd fits re-use the program
    assert b.info["compile_seconds"] == 0.0
    assert not np.array_equal(a.raw_draws["means"], full_fits["permuted"][0].raw_draws["means"])


def test_fewer_draws_reuse_the_program_and_are_the_first_draws(full_fits, faithful):
    """``num_samples`` is traced (the draws fill a buffer of its bucket): fewer draws compile
    nothing, and they are the first draws of the longer run, with their statistics, bit for bit;
    warmup is the same. ``num_warmup`` and ``target_accept_prob`` are traced too: less warmup, or
    a higher target (the advice after divergences), compiles nothing either."""
    (full, _) = full_fits["map"]
    fewer, _ = _fit(faithful, 2, seed=0, **dict(SETTINGS, num_samples=NUM_SAMPLES - 200), align=False)
    assert fewer.info["compile_seconds"] == 0.0 and fewer.raw_draws["means"].shape[1] == NUM_SAMPLES - 200
    for name in ("weights", "means", "covariances"):
        np.testing.assert_array_equal(fewer.raw_draws[name], full.raw_draws[name][:, :-200])
    for name in ("energy", "lp", "diverging", "num_steps"):
        np.testing.assert_array_equal(fewer.sample_stats[name], full.sample_stats[name][:, :-200])
    assert fewer.info["warmup_leapfrog_steps"] == full.info["warmup_leapfrog_steps"]
    shorter, _ = _fit(faithful, 2, seed=0, **dict(SETTINGS, num_warmup=NUM_WARMUP - 100), align=False)
    assert shorter.info["compile_seconds"] == 0.0 and shorter.info["num_warmup"] == NUM_WARMUP - 100
    assert shorter.info["warmup_leapfrog_steps"] != full.info["warmup_leapfrog_steps"]
    assert not np.array_equal(shorter.raw_draws["means"], full.raw_draws["means"])
    careful, _ = _fit(faithful, 2, seed=0, **dict(SETTINGS, num_samples=600), target_accept_prob=0.95, align=False)
    assert careful.info["compile_seconds"] == 0.0 and careful.info["target_accept_prob"] == 0.95
    # a higher target adapts smaller steps: more leapfrog steps per draw
    assert careful.sample_stats["step_size"].mean() < full.sample_stats["step_size"].mean()
    assert careful.sample_stats["num_steps"].mean() > full.sample_stats["num_steps"].mean()


@pytest.mark.parametrize("dense_mass", [False, True])
def test_traced_warmup_adapts_as_numpyros_adapter(dense_mass):
    """The warmup adapter of a traced ``num_warmup`` (bayesgmm._warmup) against NumPyro's own for
    the concrete count: driven by the same acceptance probabilities and positions for every count
    from Stan's small and shrunk schedules to its full one, the step size, mass matrix, window
    index and Welford state agree bit for bit at the end of warmup (one compiled program for all
    counts). A dense mass matrix's estimate is shrunk towards its diagonal first
    (``_warmup.shrunk_to_diagonal``): the reference is NumPyro's adapter with that step."""
    from numpyro.infer import hmc_util
    from numpyro.infer.hmc_util import IntegratorState

    from bayesgmm import _warmup

    dim, max_steps = 3, 420
    rng = np.random.default_rng(0)
    accept = jnp.asarray(rng.uniform(0.3, 1.0, max_steps))
    z = jnp.asarray(rng.normal(size=(max_steps, dim)) * np.array([1.0, 3.0, 0.2]))

    def run(adapter, num_steps):
        init_fn, update_fn = adapter(num_steps, dense_mass=dense_mass)
        state = init_fn(IntegratorState(z[0], None, None, None), jax.random.key(1), 0.5,
                        mass_matrix_size=dim)

        def step(t, state):
            return update_fn(t, accept[t], IntegratorState(z[t], None, None, None), state)

        return jax.lax.fori_loop(0, num_steps, step, state)

    counts = (0, 7, 19, 20, 60, 149, 150, 151, 230, 400)
    traced = jax.jit(lambda n: run(_warmup.warmup_adapter, n))
    ours = [traced(jnp.int32(n)) for n in counts]
    with pytest.MonkeyPatch.context() as patched:
        if dense_mass:  # the reference: NumPyro's adapter, its Welford estimate shrunk as ours
            welford = hmc_util.welford_covariance

            def shrinking_welford(diagonal=True):
                init, update, final = welford(diagonal)
                return init, update, lambda state, regularize=False: final(_warmup.shrunk_to_diagonal(state), regularize)

            patched.setattr(hmc_util, "welford_covariance", shrinking_welford)
        refs = [jax.jit(functools.partial(run, hmc_util.warmup_adapter, n))() for n in counts]
    for n, mine, ref in zip(counts, ours, refs):
        for a, b in zip(jax.tree_util.tree_leaves(mine), jax.tree_util.tree_leaves(ref)):
            if jnp.issubdtype(a.dtype, jax.dtypes.prng_key):
                a, b = jax.random.key_data(a), jax.random.key_data(b)
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b), err_msg=f"num_warmup={n}")


def test_timing_facts(full_fits):
    (first, _), (again, _) = full_fits["map"], full_fits["again"]
    for result in (first, again):
        info = result.info
        assert info["run_seconds"] > 0
        # the sampling phase only (run_seconds also holds the MAP start and warmup)
        assert 0 < info["sampling_seconds"] < info["run_seconds"]
        assert info["fit_seconds"] == info["compile_seconds"] + info["run_seconds"]
    # the fixture's first fit compiled the program (after emptying the caches); the same-shaped fit
    # after it reused it
    assert first.info["compile_seconds"] > 0 and again.info["compile_seconds"] == 0.0


def test_nuts_starts_from_numpyros_potential_and_gradient_and_holds_the_gradient_once(full_fits, faithful, monkeypatch):
    """The start program hands NUTS every chain's unconstrained start with its potential energy and
    gradient: they are NumPyro's ``potential_energy`` of the model there (evaluated here on its
    own) and its gradient, so the chains' program needs the model's gradient only in the leapfrog."""
    from numpyro.infer.util import potential_energy

    from bayesgmm import _compile, _program_store

    programs, starts = [], []
    compile_lowered, call = _compile.compile_lowered, type(mcmc.START_PROGRAM).__call__

    def recorded(lowered, *options):
        programs.append(lowered.as_text())
        return compile_lowered(lowered, *options)

    def spied(self, *args, **static):
        timed = call(self, *args, **static)
        if self is mcmc.START_PROGRAM:
            starts.append((args, timed.outputs[1]))
        return timed

    monkeypatch.setattr(_compile, "compile_lowered", recorded)
    monkeypatch.setattr(_program_store, "ENABLED", False)  # compiled here, not loaded from an earlier run
    monkeypatch.setattr(type(mcmc.START_PROGRAM), "__call__", spied)
    _fit(faithful, 2, seed=3, num_warmup=10, num_samples=10)
    assert len(programs) == 1  # the chains' program (the starts' is the fixture fits')
    assert programs[0].count("func.func private @_potential_and_grad") == 1
    (xs, row_mask, prior_arrays, *_), (z, potential, z_grad) = starts[0]  # ParamInfo's fields
    kwargs = model_kwargs(2, prior_arrays, "full", row_mask=row_mask)
    reference = jax.jit(jax.value_and_grad(lambda z: potential_energy(gmm_model, (xs,), kwargs, z)))
    for chain in range(NUM_CHAINS):
        energy, grad = reference(jax.tree_util.tree_map(lambda a, c=chain: a[c], z))
        np.testing.assert_allclose(potential[chain], energy, rtol=1e-5)
        for site in grad:
            np.testing.assert_allclose(z_grad[site][chain], grad[site], rtol=1e-4, atol=1e-3)


@pytest.mark.slow  # fast variant: tests/test_gibbs.py's progress-bar test
def test_progress_bar_gives_the_same_draws(full_fits, faithful, capsys):
    """The bar is ticked from inside the compiled program; the draws are those without it."""
    (a, _) = full_fits["map"]
    b, _ = _fit(faithful, 2, seed=0, progress_bar=True, **SETTINGS)
    for name in ("weights", "means", "covariances"):
        np.testing.assert_array_equal(b.raw_draws[name], a.raw_draws[name])
    steps = NUM_WARMUP + NUM_SAMPLES
    ticks = steps * NUM_CHAINS if b.info["chain_method"] == "sequential" else steps  # sequential chains each tick
    assert f"{ticks}/{ticks}" in capsys.readouterr().err


# --------------------------------------------------------------------------------------------
# 5. Chains on several devices
# --------------------------------------------------------------------------------------------
def test_parallel_on_one_device_is_the_vectorized_program(full_fits, faithful):
    if jax.local_device_count() > 1:
        pytest.skip("this test is about a single JAX device")
    assert full_fits["map"][0].info["chain_method"] == "sequential"  # "auto" on CPU
    short = dict(num_warmup=100, num_samples=100, num_chains=4)
    reference, _ = _fit(faithful, 2, seed=0, chain_method="vectorized", **short)
    result, _ = _fit(faithful, 2, seed=0, chain_method="parallel", **short)
    assert result.info["compile_seconds"] == 0.0  # the vectorized program
    assert result.info["num_devices"] == 1 and result.info["chain_method"] == "parallel"
    for name in ("weights", "means", "covariances"):
        np.testing.assert_array_equal(result.raw_draws[name], reference.raw_draws[name])


def test_sequential_chains_on_threads_are_the_draws_of_one_run(full_fits, faithful, monkeypatch):
    """"sequential" chains run as concurrent_runs() threads of chains_per_run chains (2 x 2 on two
    cores); splitting them differently (here one run of all four, or two of two on one core)
    gives the same draws, bit for bit."""
    reference, _ = full_fits["map"]
    default = mcmc.concurrent_runs(SETTINGS["num_chains"])
    other = 2 if default == 1 else 1
    monkeypatch.setattr(mcmc, "concurrent_runs", lambda num_chains, lapack_flops=0.0: other)  # the name fit_mcmc calls
    result, _ = _fit(faithful, 2, seed=0, **SETTINGS)
    assert result.info["compile_seconds"] > 0  # another program: chains split otherwise
    for name in ("weights", "means", "covariances"):
        np.testing.assert_array_equal(result.raw_draws[name], reference.raw_draws[name])
    np.testing.assert_array_equal(result.sample_stats["num_steps"], reference.sample_stats["num_steps"])


def test_components_density_is_numpyros_multivariate_normal():
    """The model's full and tied components map the rows through the inverse Cholesky factors
    (``FactoredMultivariateNormal``; NumPyro's triangular solve of every row was a LAPACK call
    large enough for jaxlib to split over XLA's thread pool, where two runs of NUTS chains on
    threads waited forever: N = 8000, D = 3, K = 4). Its log density is NumPyro's
    ``MultivariateNormal.log_prob`` to rounding, rows broadcast against the K components as
    ``MixtureSameFamily`` asks, and its gradient too."""
    import numpyro.distributions as dist

    rng = np.random.default_rng(3)
    k, d = 4, 3
    means = rng.normal(size=(k, d))
    a = rng.normal(size=(k, d, d))
    covariances = a @ np.swapaxes(a, -1, -2) + 0.1 * np.eye(d)
    rows = rng.normal(size=(50, 1, d)) * 3.0
    for ct, cov in (("full", covariances), ("tied", covariances[0])):
        params = bg.GMMParams(np.full(k, 1.0 / k), means, cov)
        ours = model.component_distribution(params, ct)
        full = covariances if ct == "full" else np.broadcast_to(cov, (k, d, d))
        reference = dist.MultivariateNormal(means, covariance_matrix=full)
        np.testing.assert_allclose(ours.log_prob(rows), reference.log_prob(rows), rtol=1e-12, atol=0)
        grad = jax.grad(lambda m, p=params, c=ct: model.component_distribution(p._replace(means=m), c).log_prob(rows).sum())(means)
        grad_ref = jax.grad(lambda m, f=full: dist.MultivariateNormal(m, covariance_matrix=f).log_prob(rows).sum())(means)
        np.testing.assert_allclose(grad, grad_ref, rtol=1e-10, atol=1e-12)


def test_two_threads_compiling_nuts_at_once(monkeypatch):
    """NumPyro's effect handlers are one process-wide stack: two fits tracing the model on a
    user's two threads at once recorded each other's sample sites
    and one raised "all sites must have unique names". Programs are traced one thread at a time
    (``_compile.TRACE_LOCK``); each thread's draws are those of the same fit alone."""
    import concurrent.futures
    import threading

    from bayesgmm import _program_store

    monkeypatch.setattr(_program_store, "ENABLED", False)  # traced here, not loaded from an earlier run
    x = bg.datasets.make_mixture(120, 3, 3, separation=3.0, seed=4).x  # a shape no other test compiles
    kw = dict(covariance_type="diag", num_warmup=10, num_samples=10, num_chains=1)
    barrier = threading.Barrier(2)

    def fit(seed):
        barrier.wait()
        return mcmc.fit_mcmc(x, 3, seed=seed, **kw)

    switch = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # threads interleave often (the race showed in 1 of 3 runs at 5 ms)
    try:  # short chains warn; the filter is set here, once (catch_warnings is not thread-safe)
        with warnings.catch_warnings(), concurrent.futures.ThreadPoolExecutor(2) as pool:
            warnings.simplefilter("ignore")
            fits = list(pool.map(fit, (0, 1)))
    finally:
        sys.setswitchinterval(switch)
    for seed, result in zip((0, 1), fits):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            alone = mcmc.fit_mcmc(x, 3, seed=seed, **kw)
        np.testing.assert_array_equal(result.raw_draws["means"], alone.raw_draws["means"])


PARALLEL_SCRIPT = textwrap.dedent(
    """
    import json, os, warnings
    os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=4"
    import jax
    jax.config.update("jax_enable_x64", True)
    import numpy as np
    import bayesgmm as bg
    from bayesgmm import mcmc

    x = bg.datasets.load_faithful()
    # diag: no LAPACK calls inside the chains (see fit_mcmc's Notes on emulated CPU devices)
    kw = dict(covariance_type="diag", num_warmup=30, num_samples=30, seed=5)
    out = {"devices": jax.local_device_count()}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        vec = mcmc.fit_mcmc(x, 2, num_chains=4, chain_method="vectorized", **kw)
        par = mcmc.fit_mcmc(x, 2, num_chains=4, chain_method="parallel", **kw)
    out["num_devices"] = par.info["num_devices"]
    out["shape"] = list(par.raw_draws["means"].shape)
    out["max_rel_diff"] = max(
        float(np.max(np.abs(par.raw_draws[n] - vec.raw_draws[n]) / np.abs(vec.raw_draws[n])))
        for n in ("weights", "means", "covariances")
    )
    out["same_num_steps"] = bool(np.array_equal(par.sample_stats["num_steps"], vec.sample_stats["num_steps"]))
    try:
        mcmc.fit_mcmc(x, 2, num_chains=6, chain_method="parallel", **kw)
    except ValueError as exc:
        out["error"] = str(exc)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        mcmc.parallel_devices(4, "parallel", "full")
    out["cores"] = len(os.sched_getaffinity(0))
    out["deadlock_warning"] = any("deadlock" in str(w.message) for w in caught)
    print(json.dumps(out))
    """
)


@pytest.mark.slow  # fast variant: the parallel chain method on one device, above
def test_parallel_chains_on_four_cpu_devices():
    """In a fresh process with 4 emulated CPU devices: the chains are spread over them, and
    the draws are the vectorized draws of the same seed up to floating-point rounding."""
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4")
    proc = subprocess.run([sys.executable, "-c", PARALLEL_SCRIPT], env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["devices"] == 4 and out["num_devices"] == 4
    assert out["shape"] == [4, 30, 2, 2]  # 4 chains x 30 draws x K x D
    assert out["same_num_steps"]  # every tree the same size ...
    assert out["max_rel_diff"] < 1e-6, out  # ... and the same draws up to rounding
    assert "num_chains=6 is not a multiple of 4" in out["error"] and "num_chains=8" in out["error"]
    assert out["deadlock_warning"] == (out["cores"] <= 4)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(num_samples=0), "num_samples"),
        (dict(num_warmup=-1), "num_warmup"),
        (dict(num_chains=2.5), "num_chains"),
        (dict(chain_method="threads"), "chain_method"),
        (dict(target_accept_prob=1.5), "target_accept_prob"),
        (dict(init="kmeans"), "init"),
        (dict(init=[None, None]), "init"),
        (dict(progress_bar="yes"), "progress_bar must be True or False"),
        (dict(covariance_type="banded"), "covariance_type"),
        (dict(prior=Prior.default(np.random.default_rng(0).normal(size=(10, 3)), 2)), "feature"),
        (dict(prior="mclust"), "prior"),
    ],
)
def test_bad_arguments_raise(kwargs, match, faithful):
    with pytest.raises(ValueError, match=match):
        mcmc.fit_mcmc(faithful, 2, **kwargs)


def test_target_accept_prob_takes_any_real_scalar(faithful):
    """NumPy's and JAX's float32 scalars were refused as "not a number in (0, 1)" (np.float64, a
    subclass of float, passed); the probability is recorded as a float."""
    import jax.numpy as jnp

    from bayesgmm.params import real_scalar

    for value in (np.float32(0.9), jnp.float32(0.9), np.array(0.9), 0.9):
        assert real_scalar(value) == pytest.approx(0.9, rel=1e-7)
    for value in (True, "0.9", np.array([0.9]), None, 1 + 0.5j):
        assert real_scalar(value) is None
    with pytest.raises(ValueError, match="target_accept_prob must be a number in"):
        mcmc.fit_mcmc(faithful, 2, target_accept_prob=np.float32(1.2))


def test_draws_that_never_move_say_so_not_nan(faithful):
    """Without warmup every transition diverges and no draw moves: the warning printed "max R-hat
    nan ... min bulk ESS nan"; it says the diagnostics are undefined, and why."""
    with pytest.warns(bg.ConvergenceWarning) as caught:
        fit = mcmc.fit_mcmc(faithful, 2, num_warmup=0, num_samples=20, num_chains=1)
    messages = [str(w.message) for w in caught]
    assert any("R-hat and the bulk ESS are undefined (the draws do not vary" in m for m in messages), messages
    assert not any("nan" in m for m in messages) and not fit.converged


def test_bad_data_raise(faithful):
    bad = faithful.copy()
    bad[3, 1] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        mcmc.fit_mcmc(bad, 2)
    with pytest.raises(ValueError, match="num_components"):
        mcmc.fit_mcmc(faithful, 0)


def test_gibbs_agrees_with_nuts_on_the_same_model_and_prior(faithful_gibbs, full_fits):
    """K = 2 on Old Faithful: posterior means and sds of every aligned parameter agree with NUTS
    (z summed out) within Monte Carlo error. Each sampler labels the components after its own MAP
    start, so the Gibbs fit is first put in NUTS's order (the labels are arbitrary)."""
    nuts = full_fits["map"][0]
    gibbs = faithful_gibbs.align_to(nuts)
    np.testing.assert_allclose(gibbs.prior.scale, nuts.prior.scale)  # the same default prior
    for name in ("weights", "means", "covariances"):
        a, b = gibbs.draws[name], nuts.draws[name]
        if name == "weights":
            a, b = a[..., :1], b[..., :1]  # the weights sum to one
        ess_a, ess_b = ess_bulk(a), ess_bulk(b)
        sd_a, sd_b = a.std(axis=(0, 1)).ravel(), b.std(axis=(0, 1)).ravel()
        se = np.sqrt(sd_a**2 / ess_a + sd_b**2 / ess_b)
        diff = np.abs(a.mean(axis=(0, 1)) - b.mean(axis=(0, 1))).ravel()
        assert np.all(diff < 4.5 * se), (name, diff / se)
        # posterior sds: relative standard error about 1 / sqrt(2 ESS) each
        np.testing.assert_allclose(sd_a, sd_b, rtol=4.5 * np.sqrt(1 / (2 * ess_a) + 1 / (2 * ess_b)).max())


def test_a_dense_mass_matrix_follows_correlated_features():
    """The posterior of a cluster's mean is as correlated as its features. With a diagonal mass
    matrix, clusters whose features correlate at 0.999 took three times the leapfrog steps a
    draw of a dense one at the same ESS (at 0.9999 and 600 rows: 684 steps and R-hat 1.012,
    against 187 and 1.00). ``dense_mass="auto"`` is dense for small models, and the count of
    unconstrained parameters it judges by is the model's own."""
    from numpyro.infer.util import unconstrain_fn

    from bayesgmm.mcmc import DENSE_MASS_MAX_PARAMETERS, num_unconstrained

    k, d = 3, 2
    x = np.random.default_rng(0).normal(size=(20, d))
    for ct in ("full", "diag", "spherical", "tied"):
        prior = bg.Prior.default(x, k).arrays(k, ct)
        cov = {"full": np.tile(np.eye(d), (k, 1, 1)), "diag": np.ones((k, d)), "spherical": np.ones(k), "tied": np.eye(d)}
        start = GMMParams(np.full(k, 1 / k), np.zeros((k, d)), cov[ct])
        z = jax.eval_shape(lambda p, pa=prior, ct=ct: unconstrain_fn(gmm_model, (jnp.asarray(x),), model_kwargs(k, pa, ct),
                                                                  _numpyro_common.site_values(p, k)), start)
        assert num_unconstrained(k, d, ct) == sum(np.prod(v.shape) for v in z.values()), ct
    assert num_unconstrained(16, 16, "full") > DENSE_MASS_MAX_PARAMETERS >= num_unconstrained(4, 8, "full")
    rng = np.random.default_rng(1)
    cov = np.array([[1, 0.999], [0.999, 1]])
    x = np.vstack([rng.multivariate_normal([0, 0], cov, 100), rng.multivariate_normal([3, 3], cov, 100)])
    kw = dict(num_warmup=300, num_samples=300, num_chains=2, seed=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", bg.ConvergenceWarning)  # the diagonal run's ESS is near the threshold
        dense, diagonal = bg.fit_mcmc(x, 2, **kw), bg.fit_mcmc(x, 2, dense_mass=False, **kw)
    assert dense.info["dense_mass"] and not diagonal.info["dense_mass"]
    assert dense.sample_stats["num_steps"].mean() < 0.5 * diagonal.sample_stats["num_steps"].mean()
    assert dense.info["max_rhat"] < 1.03 and dense.info["min_ess_bulk"] > 150
    with pytest.raises(ValueError, match="dense_mass must be 'auto', True or False"):
        bg.fit_mcmc(x, 2, dense_mass="yes", **kw)



def test_the_draws_log_posterior_is_computed_in_batches_jaxlib_does_not_split():
    """Every draw's log posterior at once (chains x draws x K factorisations) was one batched
    LAPACK call that jaxlib splits over XLA's thread pool; two runs of chains on two threads
    (the CPU default) each waited there for the other's pieces: NUTS hung on D = 5, K = 3,
    N = 600. The draws now go in batches whose calls stay below the split."""
    from bayesgmm._chains import LAPACK_SPLIT_FLOPS, concurrent_runs, lapack_batch, lapack_flops_per_chain

    for k, d, missing in ((2, 2, 0), (3, 5, 0), (3, 5, 40), (16, 16, 0), (1, 1, 0)):
        flops = lapack_flops_per_chain(k, d, missing)
        batch = lapack_batch(flops)
        assert 1 <= batch <= 1024 and (batch & (batch - 1)) == 0
        assert batch * flops < LAPACK_SPLIT_FLOPS or (batch == 1 and concurrent_runs(4, flops) == 1), (k, d, missing)


def test_a_run_in_many_calls_makes_the_draws_of_one_call(full_fits, faithful, monkeypatch):
    """The chains run in calls of about a second each (``_chains.in_segments``): while two
    programs run at once XLA:CPU kept memory for every iteration of NUTS's trees until the call
    ended (10 GB after two minutes on 3000 rows). Calls of a few steps each give the draws of the
    fixture's calls, bit for bit, and nothing compiles."""
    from conftest import calls_of_one_step

    calls = calls_of_one_step(monkeypatch)
    again, _ = _fit(faithful, 2, seed=0, **SETTINGS)
    assert len(calls) > 100 and again.info["compile_seconds"] == 0.0
    reference = full_fits["map"][0]
    for name in ("weights", "means", "covariances"):
        np.testing.assert_array_equal(again.raw_draws[name], reference.raw_draws[name])
    np.testing.assert_array_equal(again.sample_stats["lp"], reference.sample_stats["lp"])


def test_an_interrupted_run_stops_the_runs_beside_it_between_their_calls(full_fits, faithful, monkeypatch):
    """An interrupt (or an error) in one run of chains used to wait for the runs beside it to
    finish all their steps; runs in calls now stop at the end of their present call. One run
    raises KeyboardInterrupt at its second call; the other, in calls of one step, stops long
    before its 1300 steps, and the interrupt reaches the caller."""
    from bayesgmm import _chains

    calls = {}
    original = _chains.in_segments

    def interrupted_in_one_run(call, carry, steps):
        run = len(calls)
        calls[run] = 0

        def counted(*a):
            calls[run] += 1
            if run == 0 and calls[run] == 2:
                raise KeyboardInterrupt
            return call(*a)

        return original(counted, carry, steps)

    monkeypatch.setattr(_chains, "FIRST_SEGMENT_STEPS", 1)
    monkeypatch.setattr(_chains, "SEGMENT_SECONDS", 1e-6)
    monkeypatch.setattr(_chains, "in_segments", interrupted_in_one_run)
    monkeypatch.setattr(_chains, "usable_cores", lambda: 2)  # two runs of two chains, on threads
    with pytest.raises(KeyboardInterrupt):
        _fit(faithful, 2, seed=0, **SETTINGS)
    assert len(calls) == 2 and calls[1] < NUM_WARMUP + NUM_SAMPLES
    after, _ = _fit(faithful, 2, seed=0, num_warmup=5, num_samples=5, num_chains=4)  # later fits run to their end
    assert after.raw_draws["means"].shape[:2] == (4, 5)
