"""Property-based checks (hypothesis) over randomly drawn data and parameters.

Each property is checked against a reference that does not share code with the library:
enumeration of every labelling z for the marginal likelihood, the affine-equivariance of
maximum likelihood, and NumPyro's log joint for the MAP objective. Examples are derandomised
(the same cases on every run) and no example database is written, so CI is reproducible; the
data shapes are fixed inside each EM property so that it compiles once per covariance type.
"""

import warnings

import jax.numpy as jnp
import numpy as np
import pytest
from _references import enumerated_log_likelihood, responsibilities
from conftest import compile_mode
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from scipy.optimize import linear_sum_assignment

import bayesgmm as bg
from bayesgmm import model
from bayesgmm.params import GMMParams

COV_TYPES = ("full", "diag", "spherical", "tied")
PROPERTY = settings(max_examples=30, deadline=None, derandomize=True, database=None)


def draw_params(rng, k, d, covariance_type):
    w = rng.dirichlet(np.full(k, 2.0))
    m = 2 * rng.normal(size=(k, d))
    a = rng.normal(size=(k, d, d))
    spd = a @ np.swapaxes(a, -1, -2) + 0.3 * np.eye(d)
    c = {
        "full": spd,
        "tied": spd[0],
        "diag": rng.uniform(0.2, 3.0, (k, d)),
        "spherical": rng.uniform(0.2, 3.0, k),
    }[covariance_type]
    return GMMParams(w, m, c)


LABELLINGS = dict(
    n=st.integers(1, 6),
    k=st.integers(1, 3),
    d=st.integers(1, 3),
    covariance_type=st.sampled_from(COV_TYPES),
    seed=st.integers(0, 2**32 - 1),
)


def _check_sum_over_labellings(n, k, d, covariance_type, seed):
    """p(x) = sum over all K^N labellings z of prod_n pi_{z_n} N(x_n | mu_{z_n}, Sigma_{z_n})."""
    rng = np.random.default_rng(seed)
    x = 1.5 * rng.normal(size=(n, d))
    params = draw_params(rng, k, d, covariance_type)
    # log(pi_j N(x_i | mu_j, Sigma_j)) from scipy, then the sum over labellings in log space
    reference = enumerated_log_likelihood(x, *params, covariance_type)
    got = float(jnp.sum(model.log_likelihood(jnp.asarray(x), GMMParams(*map(jnp.asarray, params)), covariance_type)))
    np.testing.assert_allclose(got, reference, rtol=1e-10, atol=1e-10)


@settings(max_examples=10, deadline=None, derandomize=True, database=None)
@given(**LABELLINGS)
def test_marginal_likelihood_is_the_sum_over_every_labelling(n, k, d, covariance_type, seed):
    """Ten shapes (each evaluates NumPyro's density eagerly, a compilation per shape); the slow
    variant checks sixty."""
    _check_sum_over_labellings(n, k, d, covariance_type, seed)


@pytest.mark.slow
@settings(max_examples=60, deadline=None, derandomize=True, database=None)
@given(**LABELLINGS)
def test_marginal_likelihood_is_the_sum_over_every_labelling_many_shapes(n, k, d, covariance_type, seed):
    _check_sum_over_labellings(n, k, d, covariance_type, seed)


# ---------------------------------------------------------------------------------------------
# EM on random data sets of one shape (compiled once per covariance type)
# ---------------------------------------------------------------------------------------------
N, D, K = 60, 2, 3


def random_data(kind, seed):
    """Data of several characters: Gaussian blobs, heavy tails, skew, and rounded values (ties)."""
    rng = np.random.default_rng(seed)
    if kind == "blobs":
        centres = 4 * rng.normal(size=(K, D))
        return centres[rng.integers(0, K, N)] + rng.normal(size=(N, D))
    if kind == "heavy_tails":
        return rng.standard_t(2.5, size=(N, D))
    if kind == "skewed":
        return rng.lognormal(0.0, 1.0, size=(N, D))
    return np.round(3 * rng.normal(size=(N, D)))  # "rounded": many exact ties


DATA_KINDS = ("blobs", "heavy_tails", "skewed", "rounded")


@PROPERTY
@given(
    kind=st.sampled_from(DATA_KINDS),
    covariance_type=st.sampled_from(COV_TYPES),
    seed=st.integers(0, 2**32 - 1),
)
def test_map_em_climbs_the_model_log_joint(kind, covariance_type, seed):
    """MAP-EM under the default prior never lowers its objective, and the objective it reports at
    the end is NumPyro's log joint of the model at the returned parameters, on any data."""
    x = random_data(kind, seed)
    prior = bg.Prior.default(x, K)
    with warnings.catch_warnings(), compile_mode("fast-compile"):  # many examples: optimised code pays
        warnings.simplefilter("ignore", bg.ConvergenceWarning)
        warnings.simplefilter("ignore", bg.DegenerateComponentWarning)
        r = bg.fit_em(x, K, covariance_type=covariance_type, prior=prior, reg_covar=0.0,
                      tol=0.0, max_iter=25, init_params="random_from_data", seed=seed % 1000)
    # The prior keeps every covariance proper; the only degeneracy MAP may report is an emptied
    # component (weight (N_k + alpha - 1) / (N + K (alpha - 1)) = N_k / N under alpha = 1).
    for j in r.degenerate_components:
        assert r.weights[j] * N < 1.0
    trace = np.asarray(r.trace)
    assert np.all(np.isfinite(trace))
    assert np.all(np.diff(trace) >= -1e-9 * np.abs(trace[1:])), np.diff(trace).min()
    point = GMMParams(*map(jnp.asarray, r.params))
    joint = float(model.log_joint(jnp.asarray(x), point, prior.arrays(K, covariance_type), covariance_type))
    np.testing.assert_allclose(trace[-1], joint, rtol=1e-9)
    proba = r.predict_proba(x)
    np.testing.assert_allclose(proba.sum(1), 1.0, rtol=1e-12)
    np.testing.assert_allclose(proba, responsibilities(x, *r.params, covariance_type), rtol=1e-7, atol=1e-12)


@PROPERTY
@given(
    covariance_type=st.sampled_from(("full", "tied")),
    log10_scale=st.floats(-3, 3),
    shift=st.floats(-1e3, 1e3),
    seed=st.integers(0, 2**32 - 1),
)
def test_maximum_likelihood_is_affine_equivariant(covariance_type, log10_scale, shift, seed):
    """Fitting a*x + b gives a*mu + b, a^2*Sigma and the same weights, with the log-likelihood
    moved by -N*D*log(a): EM standardises internally, so units never change the answer.
    (Full and tied covariances are equivariant under a common scale of all features.)"""
    x = random_data("blobs", seed)
    a = 10.0**log10_scale
    fit = dict(covariance_type=covariance_type, n_init=2, tol=1e-10, max_iter=300, seed=seed % 1000)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", bg.ConvergenceWarning)
        warnings.simplefilter("ignore", bg.DegenerateComponentWarning)
        r = bg.fit_em(x, K, **fit)
        s = bg.fit_em(a * x + shift, K, **fit)
    # An emptied component's mean is 0/0-like and carries no information: well-posed fits only.
    assume(not r.degenerate_components)
    # Floating-point noise of order 1e-16 may relabel the k-means start: compare up to labels.
    back = (s.means - shift) / a
    _, match = linear_sum_assignment(((back[:, None, :] - r.means[None, :, :]) ** 2).sum(-1))
    order = np.argsort(match)  # s's component order[j] is r's component j
    weights, means = s.weights[order], s.means[order]
    covariances = s.covariances if covariance_type == "tied" else s.covariances[order]
    np.testing.assert_allclose(weights, r.weights, rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(means, a * r.means + shift, rtol=1e-6, atol=1e-6 * (a + abs(shift)))
    np.testing.assert_allclose(covariances, a**2 * r.covariances, rtol=1e-5, atol=1e-8 * a**2)
    np.testing.assert_allclose(s.log_likelihood, r.log_likelihood - N * D * np.log(a), rtol=1e-7, atol=1e-6)


@pytest.mark.parametrize("kind", DATA_KINDS)
def test_random_data_kinds_are_what_they_say(kind):
    """Guard for the generator above: the 'rounded' kind really has ties, the others none."""
    x = random_data(kind, 0)
    has_ties = len(np.unique(x, axis=0)) < len(x)
    assert has_ties == (kind == "rounded")
