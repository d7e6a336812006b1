"""EM against independent references: scikit-learn, brute-force enumeration, NumPyro, known truth."""

import functools
import os
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _references import enumerated_log_likelihood, log_prior, mixture_log_density
from conftest import CompileCounter, grid, precision, rough_start_and_optimum, separated_clusters
from scipy.optimize import linear_sum_assignment
from sklearn.mixture import GaussianMixture

import bayesgmm as bg
from bayesgmm import _em_core, _em_host, _numerics, _stats, model
from bayesgmm.kmeans import INIT_METHODS
from bayesgmm.params import GMMParams, params_to_standard

COV_TYPES = ("full", "diag", "spherical", "tied")


def random_params(rng, k, d, covariance_type):
    w = rng.dirichlet(np.full(k, 3.0))
    m = rng.normal(size=(k, d))

    def spd():
        a = rng.normal(size=(d, d))
        return a @ a.T + 0.5 * np.eye(d)

    c = {
        "full": lambda: np.stack([spd() for _ in range(k)]),
        "tied": spd,
        "diag": lambda: rng.uniform(0.3, 2.0, (k, d)),
        "spherical": lambda: rng.uniform(0.3, 2.0, k),
    }[covariance_type]()
    return GMMParams(w, m, c)


def adjusted_rand(a, b):
    from sklearn.metrics import adjusted_rand_score

    return adjusted_rand_score(a, b)


# ----------------------------------------------------------------------------------------------
# One model, one truth
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("covariance_type", COV_TYPES)
def test_em_objective_equals_numpyro_log_density(covariance_type, rng):
    x = rng.normal(size=(40, 3)) * [1.0, 2.0, 0.5]
    params = random_params(rng, 3, 3, covariance_type)
    prior = bg.Prior.default(x, 3)
    arrays = prior.arrays(3, covariance_type)
    # What EM computes on its hot path: exponential-family features times natural parameters.
    z = _stats.suff_features(jnp.asarray(x), covariance_type)
    em_ll = float(jnp.sum(_stats.e_step(z, _stats.natural_params(GMMParams(*map(jnp.asarray, params)), covariance_type))[1]))
    joint = float(model.log_joint(jnp.asarray(x), GMMParams(*map(jnp.asarray, params)), arrays, covariance_type))
    lprior = float(model.log_prior(GMMParams(*map(jnp.asarray, params)), arrays, covariance_type))
    np.testing.assert_allclose(em_ll, joint - lprior, rtol=1e-10)
    # Both against scipy, written independently.
    np.testing.assert_allclose(em_ll, mixture_log_density(x, *params, covariance_type).sum(), rtol=1e-10)
    np.testing.assert_allclose(lprior, log_prior(params, prior, covariance_type), rtol=1e-10)


@pytest.mark.parametrize("covariance_type", COV_TYPES)
def test_reported_objective_is_the_model_log_density(covariance_type, faithful):
    """MAP-EM's final objective (original units) equals NumPyro's log joint at the fitted point."""
    prior = bg.Prior.default(faithful, 2)
    r = bg.fit_em(faithful, 2, covariance_type=covariance_type, prior=prior, seed=0)
    p = GMMParams(*map(jnp.asarray, r.params))
    joint = float(model.log_joint(jnp.asarray(faithful), p, prior.arrays(2, covariance_type), covariance_type))
    np.testing.assert_allclose(r.trace[-1], joint, rtol=1e-9)
    np.testing.assert_allclose(r.log_likelihood, mixture_log_density(faithful, *r.params, covariance_type).sum(), rtol=1e-9)
    ml = bg.fit_em(faithful, 2, covariance_type=covariance_type, seed=0)
    np.testing.assert_allclose(ml.trace[-1], ml.log_likelihood, rtol=1e-12)
    np.testing.assert_allclose(ml.log_likelihood, ml.score(faithful) * len(faithful), rtol=1e-9)


@grid("n,k", [[4, 5, 6], [2, 3]], fast=[(4, 2), (5, 3)])
def test_marginal_likelihood_matches_brute_force_enumeration(n, k, rng):
    x = rng.normal(size=(n, 2))
    params = random_params(rng, k, 2, "full")
    ll = float(jnp.sum(model.log_likelihood(jnp.asarray(x), GMMParams(*map(jnp.asarray, params)), "full")))
    np.testing.assert_allclose(ll, enumerated_log_likelihood(x, *params, "full"), rtol=1e-10)  # every assignment of the N points


# ----------------------------------------------------------------------------------------------
# Parity with scikit-learn from the same initial parameters
# ----------------------------------------------------------------------------------------------
def _sklearn_start(x, k, covariance_type, seed=1):
    rng = np.random.default_rng(seed)
    w0, _, c0 = random_params(rng, k, x.shape[1], covariance_type)
    m0 = x[rng.choice(len(x), k, replace=False)]
    prec0 = np.linalg.inv(c0) if covariance_type in ("full", "tied") else 1.0 / c0
    return dict(weights_init=w0, means_init=m0, precisions_init=prec0)


@pytest.mark.parametrize("covariance_type", COV_TYPES)
@pytest.mark.parametrize("iterations", [1, 7])
def test_each_iteration_equals_sklearn(covariance_type, iterations, faithful_std):
    """From the same start, t EM iterations give scikit-learn's parameters after t iterations."""
    x, k = faithful_std, 3
    start = _sklearn_start(x, k, covariance_type)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # both warn that t iterations did not converge
        sk = GaussianMixture(k, covariance_type=covariance_type, tol=0.0, max_iter=iterations, reg_covar=0.0,
                             **start).fit(x)
        r = bg.fit_em(x, k, covariance_type=covariance_type, tol=0.0, max_iter=iterations, reg_covar=0.0, **start)
    assert r.n_iter == sk.n_iter_ == iterations and not r.converged
    np.testing.assert_allclose(r.means, sk.means_, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(r.covariances, sk.covariances_, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(r.weights, sk.weights_, rtol=1e-9)
    np.testing.assert_allclose(r.log_likelihood, sk.score(x) * len(x), rtol=1e-12)


@pytest.mark.parametrize("covariance_type", COV_TYPES)
def test_converged_fit_equals_sklearn_run_to_tight_tolerance(covariance_type, faithful_std):
    x, k = faithful_std, 3
    start = _sklearn_start(x, k, covariance_type)
    sk = GaussianMixture(k, covariance_type=covariance_type, tol=1e-12, max_iter=5000, reg_covar=0.0, **start).fit(x)
    r = bg.fit_em(x, k, covariance_type=covariance_type, reg_covar=0.0, tol=1e-11, **start)
    assert r.converged
    np.testing.assert_allclose(r.log_likelihood, sk.score(x) * len(x), rtol=1e-8)
    np.testing.assert_allclose(r.means, sk.means_, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(r.predict_proba(x), sk.predict_proba(x), atol=1e-5)


# ----------------------------------------------------------------------------------------------
# Properties of the iteration
# ----------------------------------------------------------------------------------------------
@grid("covariance_type,mode", [COV_TYPES, ["ml", "map", "hard"]],
      fast=[("full", "ml"), ("diag", "map"), ("spherical", "hard"), ("tied", "map"), ("full", "hard")])
def test_objective_never_decreases(covariance_type, mode, sim3):
    x = sim3.x
    prior = bg.Prior.default(x, 3) if mode == "map" else None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", bg.ConvergenceWarning)
        r = bg.fit_em(x, 3, covariance_type=covariance_type, prior=prior, hard=mode == "hard",
                      reg_covar=0.0, tol=0.0, max_iter=40, seed=2,
                      init_params="kmeans" if mode == "hard" else "random")
    steps = np.diff(r.trace)
    assert np.all(steps >= -1e-9 * np.abs(r.trace[1:])), steps.min()
    if mode != "hard":  # hard EM from k-means may start at its fixed point
        assert r.trace[-1] > r.trace[0]


def test_hard_em_names_its_objective_with_or_without_a_prior(faithful_std):
    """Hard EM's objective is the classification log-likelihood ``sum_n max_k log pi_k N(x_n)``;
    under a prior it also holds the log prior density, and is named so (it was called the
    classification log-likelihood, 26.6 nats above the value reported on Old Faithful)."""
    from _references import log_prior  # scipy's densities
    from scipy import stats

    x = np.asarray(faithful_std)
    prior = bg.Prior.default(x, 2)
    for given in (None, prior):
        r = bg.fit_em(x, 2, hard=True, prior=given, seed=0)
        joint = np.stack([np.log(w) + stats.multivariate_normal(m, c).logpdf(x)
                          for w, m, c in zip(r.weights, r.means, r.covariances)], axis=1)
        expected = joint.max(axis=1).sum() + (0.0 if given is None else log_prior(r.params, given, "full"))
        assert r.objective == ("classification_log_likelihood" if given is None else "classification_log_posterior")
        assert r.info["objective_value"] == pytest.approx(expected, rel=1e-12) and r.trace[-1] == r.info["objective_value"]


def test_hard_em_counts_and_flags_are_the_hard_partitions():
    """Classification EM on Old Faithful (K = 4, tied; float32 as the reviewer ran it) kept a
    component that wins exactly one row, and the search judged the run non-degenerate, but the
    result flagged it "less than one observation" from the soft responsibilities (0.98) and
    reported soft expected counts. Counts and flags of a hard fit are now its partition's."""
    x = bg.datasets.load_faithful()
    with precision(np.float32), warnings.catch_warnings():
        warnings.simplefilter("error", bg.DegenerateComponentWarning)
        r = bg.fit_em(x, 4, covariance_type="tied", hard=True, seed=0)
    hard = np.bincount(r.predict(x), minlength=4)
    np.testing.assert_array_equal(r.info["expected_counts"], hard)
    assert hard.min() >= 1 and r.degenerate_components == ()
    assert bool(r.degenerate_components) == r.info["restart_degenerate"][r.info["best_restart"]]


def test_recovers_known_parameters(sim3):
    r = bg.fit_em(sim3.x, 3, n_init=3, seed=0)
    truth = sim3.params
    cost = ((r.means[:, None] - truth.means[None]) ** 2).sum(-1)
    rows, cols = linear_sum_assignment(cost)
    n = len(sim3.x)
    for i, j in zip(rows, cols):
        se = np.sqrt(np.diag(truth.covariances[j]) / (n * truth.weights[j]))
        assert np.all(np.abs(r.means[i] - truth.means[j]) < 5 * se)
        assert abs(r.weights[i] - truth.weights[j]) < 5 * np.sqrt(truth.weights[j] * (1 - truth.weights[j]) / n)
        np.testing.assert_allclose(r.covariances[i], truth.covariances[j], atol=0.35)
    labels = r.predict(sim3.x)
    assert np.mean(cols[labels] == sim3.labels) > 0.97


def test_more_restarts_never_worse_and_same_seed_is_identical(faithful):
    fits = [bg.fit_em(faithful, 4, n_init=n, init_params="random", seed=5) for n in (1, 4, 12)]
    objs = [f.log_likelihood for f in fits]
    assert objs[0] <= objs[1] + 1e-9 <= objs[2] + 2e-9
    again = bg.fit_em(faithful, 4, n_init=12, init_params="random", seed=5)
    for a, b in zip(fits[2].params, again.params):
        assert np.array_equal(a, b)
    assert np.array_equal(fits[2].trace, again.trace)
    other = bg.fit_em(faithful, 4, n_init=12, init_params="random", seed=6)
    assert not np.array_equal(other.means, again.means)


@pytest.mark.filterwarnings("ignore::bayesgmm.ConvergenceWarning")  # max_iter is the point here
def test_em_em_short_runs_over_explicit_starts(faithful):
    """``n_init=R, init_iter=s``: every start runs s iterations (counted in max_iter), the best
    short run continues, and with s = max_iter it is exactly R independent restarts."""
    kw = dict(init_params="random", seed=5, tol=0.0)
    independent = bg.fit_em(faithful, 4, n_init=8, max_iter=6, **kw)
    whole = bg.fit_em(faithful, 4, n_init=8, init_iter=6, max_iter=6, **kw)
    assert whole.info["num_kept"] == 1 and independent.info["num_kept"] == 8
    assert whole.log_likelihood == pytest.approx(independent.log_likelihood, rel=1e-12)  # 1 lane vs 8: summation order
    short = bg.fit_em(faithful, 4, n_init=8, init_iter=2, max_iter=6, **kw)
    assert short.n_iter == 6 and short.info["init_iter"] == 2 and len(short.info["start_objectives"]) == 8
    # the continued run is the best short run, and EM only climbs from it
    best_short = max(short.info["start_objectives"])
    assert short.log_likelihood >= best_short - 1e-6 * abs(best_short)
    # the short runs are the independent runs' first iterations: the same starts, ranked early
    two = bg.fit_em(faithful, 4, n_init=8, max_iter=2, **kw)
    np.testing.assert_allclose(short.info["start_objectives"], two.info["restart_objectives"], rtol=1e-9)
    # and the run continued is the best short run: where that start's independent run ends
    best = int(np.argmax(short.info["start_objectives"]))
    assert short.info["restart_objectives"][0] == pytest.approx(independent.info["restart_objectives"][best], rel=1e-9)
    # 37 starts (prime): two kept, the short runs in 19 blocks of two, the last one filled up
    many = bg.fit_em(faithful, 4, n_init=37, init_iter=2, max_iter=2, **kw)
    assert many.info["num_kept"] == 2 and many.info["n_init"] == 37
    assert len(set(many.info["start_objectives"])) == 37  # every start ran, none twice
    alone = bg.fit_em(faithful, 4, n_init=37, max_iter=2, **kw)
    np.testing.assert_allclose(many.info["start_objectives"], alone.info["restart_objectives"], rtol=1e-9)


@pytest.mark.parametrize("init", INIT_METHODS)
def test_every_initialisation_reaches_the_two_cluster_optimum(init, faithful):
    # "random" starts every component near the global mean and leaves that plateau slowly
    # (scikit-learn too stops there at tol=1e-3), hence the tighter tol.
    r = bg.fit_em(faithful, 2, init_params=init, n_init=3, seed=0, tol=1e-6, max_iter=500)
    ref = GaussianMixture(2, n_init=5, random_state=0, tol=1e-6).fit(faithful)
    np.testing.assert_allclose(r.log_likelihood, ref.score(faithful) * len(faithful), rtol=1e-6)


def test_second_fit_with_same_shapes_does_not_retrace(faithful):

    first = bg.fit_em(faithful, 2, seed=0)
    with CompileCounter() as counter:
        bg.fit_em(faithful[::-1].copy(), 2, n_init=2, seed=1, max_iter=50, tol=1e-4, reg_covar=1e-5)
        bg.fit_em(faithful[:250] + 1.0, 2, n_init=16, seed=2, max_iter=50)
        bg.fit_em(faithful, 2, n_init=1, means_init=first.params.means, seed=3)  # given pieces
        given = bg.fit_em(faithful, 2, weights_init=first.params.weights, means_init=first.params.means,
                          precisions_init=np.linalg.inv(first.params.covariances))  # every piece given
    assert counter.compiles == 0  # n_init up to the default's 16 lanes and given starts: its program
    assert given.info["n_init"] == 1 and len(given.info["restart_objectives"]) == 1
    np.testing.assert_allclose(given.log_likelihood, first.log_likelihood, rtol=1e-9)


# ----------------------------------------------------------------------------------------------
# Units and precision
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype,rtol", [(np.float64, 1e-8), (np.float32, 2e-3)])
def test_fit_does_not_depend_on_units(dtype, rtol):
    v = bg.datasets.load_galaxies().astype(dtype)
    with precision(dtype):
        a = bg.fit_em(v, 3, n_init=4, seed=0)
        b = bg.fit_em(v / dtype(1000), 3, n_init=4, seed=0)
    order_a, order_b = np.argsort(a.means[:, 0]), np.argsort(b.means[:, 0])
    np.testing.assert_allclose(a.means[order_a] / 1000, b.means[order_b], rtol=rtol)
    np.testing.assert_allclose(a.weights[order_a], b.weights[order_b], rtol=rtol, atol=rtol)
    np.testing.assert_allclose(a.covariances[order_a] / 1e6, b.covariances[order_b], rtol=5 * rtol)
    np.testing.assert_allclose(a.log_likelihood - b.log_likelihood, -len(v) * np.log(1000), rtol=rtol)
    assert a.info["dtype"] == np.dtype(dtype).name


def test_float32_agrees_with_float64(faithful):
    a = bg.fit_em(faithful, 2, seed=0)
    with precision(np.float32):
        b = bg.fit_em(faithful, 2, seed=0)
    assert b.info["dtype"] == "float32"
    np.testing.assert_allclose(b.log_likelihood, a.log_likelihood, rtol=1e-5)
    np.testing.assert_allclose(np.sort(b.means, 0), np.sort(a.means, 0), rtol=1e-4)


# ----------------------------------------------------------------------------------------------
# Result API
# ----------------------------------------------------------------------------------------------
def test_result_methods_against_sklearn(faithful):
    r = bg.fit_em(faithful, 2, n_init=3, seed=0)
    prec = np.linalg.inv(r.covariances)
    sk = GaussianMixture(2, weights_init=r.weights, means_init=r.means, precisions_init=prec, max_iter=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # sklearn warns that one iteration did not converge
        sk.fit(faithful)
    # Evaluate sklearn at exactly our parameters.
    sk.weights_, sk.means_, sk.covariances_ = r.weights, r.means, r.covariances
    sk.precisions_cholesky_ = np.linalg.cholesky(prec)
    np.testing.assert_allclose(r.score_samples(faithful), sk.score_samples(faithful), rtol=1e-10)
    np.testing.assert_allclose(r.predict_proba(faithful), sk.predict_proba(faithful), atol=1e-10)
    np.testing.assert_array_equal(r.predict(faithful), sk.predict(faithful))
    np.testing.assert_allclose(r.bic(faithful), sk.bic(faithful), rtol=1e-10)
    np.testing.assert_allclose(r.aic(faithful), sk.aic(faithful), rtol=1e-10)
    xs, zs = r.sample(20000, seed=1)
    assert xs.shape == (20000, 2) and zs.shape == (20000,)
    for j in range(2):  # simulated data reproduce the fitted components within Monte Carlo error
        sel = xs[zs == j]
        se = np.sqrt(np.diag(r.covariances[j]) / len(sel))
        assert np.all(np.abs(sel.mean(0) - r.means[j]) < 4 * se)
        assert abs(len(sel) / 20000 - r.weights[j]) < 4 * np.sqrt(r.weights[j] * (1 - r.weights[j]) / 20000)
    xs2, _ = r.sample(20000, seed=1)
    assert np.array_equal(xs, xs2)


def test_result_is_immutable_and_json_round_trips(faithful, tmp_path):
    r = bg.fit_em(faithful, 2, seed=0)
    with pytest.raises(AttributeError):
        r.weights = None
    path = tmp_path / "fit.json"
    r.to_json(path)
    back = bg.FitResult.from_json(path)
    np.testing.assert_array_equal(back.means, r.means)
    np.testing.assert_array_equal(back.predict_proba(faithful), r.predict_proba(faithful))


def test_map_prior_prevents_collapse_on_tied_points(faithful):
    """K=5 full on Old Faithful: ML can collapse onto integer-valued `waiting`; MAP never does."""
    prior = bg.Prior.default(faithful, 5)
    r = bg.fit_em(faithful, 5, prior=prior, n_init=5, seed=0)
    assert r.degenerate_components == ()
    assert np.linalg.eigvalsh(r.covariances).min() > 1e-3


# ----------------------------------------------------------------------------------------------
# Bad input: a clear error (or documented handling) per case
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "x,k,match",
    [
        (np.array([[0.0, 1.0], [np.nan, 2.0], [3.0, 1.0]]), 2, "NaN values in 1 row.*missing='marginalize'"),
        (np.array([[0.0, 1.0], [np.inf, 2.0], [3.0, 1.0]]), 2, "infinite values in 1 row"),
        # finite, but their variance overflows float64 (it was reported as a -inf log-likelihood)
        (np.array([[1e300, 2.0], [-1e300, 3.0], [3e300, 5.0], [2e300, 1.0]]), 1, r"column\(s\) \['x0'\] whose values span"),
        (np.zeros((3, 2, 2)), 2, "2-D array"),
        (np.random.default_rng(0).normal(size=(3, 2)), 4, "at least as many observations"),
        (np.random.default_rng(0).normal(size=(10, 2)), 0, "at least 1"),
        (np.random.default_rng(0).normal(size=(10, 2)), 2.5, "positive integer"),
        (np.c_[np.random.default_rng(0).normal(size=10), np.ones(10)], 2, "constant column"),
        (np.array([["a", "b"], ["c", "d"]]), 1, "numeric"),
        (np.zeros((0, 2)), 1, "empty"),
        # full covariances of linearly dependent columns are singular whatever the fit
        (np.c_[np.arange(12.0) % 5, 2 * (np.arange(12.0) % 5) + 1], 2, "linearly dependent columns"),
    ],
)
def test_bad_input_raises_clear_error(x, k, match):
    with pytest.raises(ValueError, match=match):
        bg.fit_em(x, k)


def test_dependent_columns_are_refused_in_the_model_the_user_named():
    """An mclust model is named as the user passed it (with its layout), and the diagonal models
    are offered; the native name stays plain."""
    x = np.c_[np.arange(12.0) % 5, 2 * (np.arange(12.0) % 5) + 1]
    with pytest.raises(ValueError, match=r"every EEV \(a full layout\) covariance .* 'VVI'"):
        bg.fit_em(x, 2, covariance_type="EEV")
    with pytest.raises(ValueError, match=r"every tied covariance"):
        bg.fit_em(x, 2, covariance_type="tied")


def test_a_value_beyond_the_compute_types_range_is_named():
    """Finite, but beyond float32 (the compute type) once standardised: the value is named,
    where the fit used to fail with "a covariance became singular in every run"."""
    x = np.r_[np.random.default_rng(0).normal(size=(10, 2)), [[1e39, 0.0]]]
    with precision(np.float32), pytest.raises(ValueError, match=r"x\[10, 0\] = 1e\+39 .* beyond the range of float32"):
        bg.fit_em(x, 2)


@pytest.mark.parametrize("order", ["C", "F"])
def test_large_input_is_checked_as_small_input(order):
    """Data long enough for the folded extremes (:func:`bayesgmm.params.column_extremes`): NaN
    and infinite values in the folded rows or the rows left over, and constant columns, are found
    as in small data, in C and Fortran order; the extremes equal NumPy's."""
    from bayesgmm.params import check_data, column_extremes

    x = np.random.default_rng(4).normal(size=(64 * 5 + 3, 16)).astype(np.float32)
    lowest, highest = column_extremes(np.asarray(x, order=order))
    assert np.array_equal(lowest, x.min(axis=0)) and np.array_equal(highest, x.max(axis=0))
    for row, value, match in [(-1, np.nan, "NaN values in 1 row"), (100, np.nan, "NaN values in 1 row"),
                              (-2, np.inf, "infinite values in 1 row"), (7, -np.inf, "infinite values in 1 row")]:
        bad = x.copy()
        bad[row, 3] = value
        with pytest.raises(ValueError, match=match):
            check_data(np.asarray(bad, order=order))
    constant = x.copy()
    constant[:, 5] = 2.5
    with pytest.raises(ValueError, match=r"constant column\(s\) \['x5'\]"):
        check_data(np.asarray(constant, order=order))
    assert check_data(np.asarray(x, order=order))[0] is not None


def test_non_numeric_dataframe_column_is_named():
    pd = pytest.importorskip("pandas")
    df = pd.DataFrame({"a": [1.0, 2.0, 3.0, 4.0], "species": ["x", "y", "x", "y"]})
    with pytest.raises(ValueError, match="species"):
        bg.fit_em(df, 2)


def test_one_dimensional_input_is_one_feature():
    v = bg.datasets.load_galaxies()[:, 0]
    r = bg.fit_em(v, 2, seed=0)
    assert r.means.shape == (2, 1) and r.covariances.shape == (2, 1, 1)


def test_read_only_and_column_ordered_data_are_left_untouched(faithful):
    """The standardisation copies before it reorders (a regression: the column medians once
    partitioned a read-only or Fortran-ordered input in place)."""
    fortran = np.asfortranarray(faithful)
    fortran.flags.writeable = False
    before = fortran.copy()
    r = bg.fit_em(fortran, 2, seed=0)
    assert np.array_equal(fortran, before)
    assert r.log_likelihood == bg.fit_em(np.ascontiguousarray(faithful), 2, seed=0).log_likelihood


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(covariance_type="banana"), "covariance_type"),
        (dict(init_params="magic"), "init_params"),
        (dict(n_init=0), "n_init"),
        (dict(n_init=4, init_iter=0), "init_iter"),
        (dict(max_iter=-1), "max_iter"),  # max_iter=0 returns the initialisation
        (dict(tol=-1.0), "tol"),
        (dict(reg_covar=-1.0), "reg_covar"),
        (dict(means_init=np.zeros((3, 2))), "means_init"),
        (dict(weights_init=np.array([0.2, 0.2])), "weights_init"),
        (dict(precisions_init=-np.ones((2, 2, 2))), "positive definite"),
        (dict(prior=bg.Prior(1.0, np.zeros(3), 0.01, 5.0, np.eye(3))), "feature"),
        (dict(prior=bg.Prior(0.5, np.zeros(2), 0.01, 4.0, np.eye(2))), "weight_concentration >= 1"),
        (dict(seed="abc"), "seed"),
        (dict(means_init=[[0.0, np.nan], [6.0, 6.0]]), "means_init contains NaN"),
        (dict(means_init="x"), "means_init must be an array of numbers, got 'x'"),  # a command line's typo
        (dict(covariance_type="diag", precisions_init=np.full((2, 2), np.inf)), "precisions_init contains NaN"),
        (dict(devices=True), "devices must be"),
        (dict(sample_weight=np.r_[1.0, np.zeros(271)]), "1 row\\(s\\) of positive weight, fewer than the 2"),
    ],
)
def test_bad_options_raise_clear_error(kwargs, match, faithful):
    with pytest.raises(ValueError, match=match):
        bg.fit_em(faithful, 2, **kwargs)


def test_invalid_prior_is_rejected_on_construction():
    with pytest.raises(ValueError, match="positive definite"):
        bg.Prior(1.0, np.zeros(2), 0.01, 4.0, -np.eye(2))
    with pytest.raises(ValueError, match="degrees_of_freedom"):
        bg.Prior(1.0, np.zeros(3), 0.01, 1.0, np.eye(3))
    with pytest.raises(ValueError, match="mean_precision"):
        bg.Prior(1.0, np.zeros(2), 0.0, 4.0, np.eye(2))


def test_duplicated_points_collapse_is_flagged_or_raises():
    rng = np.random.default_rng(0)
    x = np.r_[rng.normal(size=(30, 2)), np.tile([[5.0, 5.0]], (10, 1))]  # 10 copies of one point
    with pytest.warns(bg.DegenerateComponentWarning, match="collapsed onto the regularisation floor"):
        r = bg.fit_em(x, 2, seed=0)
    assert r.degenerate_components != ()
    assert np.all(np.isfinite(r.covariances))
    with pytest.raises(ValueError, match="reg_covar"):
        bg.fit_em(x, 2, seed=0, reg_covar=0.0)
    # The conjugate prior keeps the covariance well defined: no warning.
    r_map = bg.fit_em(x, 2, seed=0, prior=bg.Prior.default(x, 2))
    assert r_map.degenerate_components == ()


def test_clusters_far_tighter_than_the_spread_are_told_to_lower_reg_covar():
    """reg_covar is relative to each feature's robust variance, which clusters far apart make
    large: three clusters of standard deviation 0.1 around 0, 5000 and 10000 came out with
    variances 11-16% larger and flagged with the advice to *increase* reg_covar (at 0.03 a float32
    fit fails with the same advice). The warning and the error now say to lower it, and reg_covar=0 fits them exactly."""
    rng = np.random.default_rng(0)
    centres, sizes = (0.0, 1e4, 5e3), (200, 100, 100)
    data = {sd: [rng.normal(c, sd, m) for c, m in zip(centres, sizes)] for sd in (0.1, 0.03)}
    for clusters in data.values():
        x = np.concatenate(clusters)[:, None]
        with pytest.warns(bg.DegenerateComponentWarning, match=r"pass a smaller reg_covar \(e.g. 1e-14, or 0\)"):
            bg.fit_em(x, 3, seed=0)
        fit = bg.fit_em(x, 3, seed=0, reg_covar=0.0)  # no warning (warnings are errors here)
        order = np.argsort(fit.means[:, 0])
        expected = [np.var(c) for c in sorted(clusters, key=np.mean)]
        np.testing.assert_allclose(fit.covariances[order, 0, 0], expected, rtol=1e-4)
    with precision(np.float32):  # float32 cannot tell such clusters from duplicated points: both advices
        with pytest.warns(bg.DegenerateComponentWarning, match="increase reg_covar. If they are real clusters.*float64"):
            bg.fit_em(np.concatenate(data[0.1])[:, None], 3, seed=0)
    # every run singular: the error names both ways out (more reg_covar for duplicated points, less
    # for real clusters this narrow), the latter only when there is reg_covar to lower
    x = np.r_[rng.normal(size=(30, 2)), np.tile([[5.0, 5.0]], (10, 1))]
    with pytest.raises(ValueError, match=r"Increase reg_covar.*Prior.default\(x, K\)\.$"):
        bg.fit_em(x, 2, seed=0, reg_covar=0.0)


def test_float32_flags_a_component_on_repeated_values_as_float64_does(tmp_path):
    """In float32 the fast form cannot hold a variance below its rounding of the moments (about
    eps |mu|^2): a component on 30 copies of one point, collapsed by the precise step, was lifted
    back to about 1e-6 by the fast one, the run alternated between the two forms (an objective of
    +1.2e5 at every other evaluation) and returned that component unflagged, as the best
    non-degenerate fit. Now float32 returns float64's flagged fit; streaming EM, which takes the
    fast form only, flags such a component as unresolved."""
    rng = np.random.default_rng(3)
    x = np.vstack([rng.normal(size=(300, 2)), np.tile([[3.0, -3.0]], (30, 1))])
    fits = {}
    for dtype in (np.float32, np.float64):
        with warnings.catch_warnings(), precision(dtype):
            warnings.simplefilter("ignore", bg.DegenerateComponentWarning)
            fits[dtype] = bg.fit_em(x, 2, covariance_type="diag", seed=0)
    f32, f64 = fits[np.float32], fits[np.float64]
    # the same component flagged (its mean; the two searches may order the components differently)
    assert f64.degenerate_components != () and len(f32.degenerate_components) == len(f64.degenerate_components)
    np.testing.assert_allclose(f32.means[list(f32.degenerate_components)], f64.means[list(f64.degenerate_components)],
                               atol=1e-4)
    assert f32.converged and abs(f32.log_likelihood - f64.log_likelihood) < 0.01
    assert np.all(np.diff(f32.trace) > -1e-3 * np.abs(f32.trace[1:]))  # a climb, no alternation
    path = tmp_path / "x.npy"
    np.save(path, x)
    with pytest.warns(bg.DegenerateComponentWarning, match="collapsed onto the regularisation floor|cannot resolve"):
        streamed = bg.fit_em_stream(path, 2, covariance_type="diag", seed=0)
    assert streamed.degenerate_components != ()
    # the fast form's own floor: the float32 streamed state of that component (1.7e-6, 9.6e-7 at
    # (3, -3) on the unit scale) is unresolved; a tight cluster it resolves is not, nor float64
    from bayesgmm._numerics import unresolved_mask

    means = np.array([[0.0, 0.0], [3.0, -3.0]])
    eps32, eps64 = np.finfo(np.float32).eps, np.finfo(np.float64).eps
    assert unresolved_mask(means, np.array([[0.9, 0.9], [1.7e-6, 9.6e-7]]), "diag", eps32).tolist() == [False, True]
    assert not unresolved_mask(means, np.array([[0.9, 0.9], [1e-4, 1e-4]]), "diag", eps32).any()
    assert not unresolved_mask(means, np.array([[0.9, 0.9], [1.7e-6, 9.6e-7]]), "diag", eps64).any()
    full = np.array([np.eye(2) * 0.9, np.diag([1.7e-6, 9.6e-7])])
    assert unresolved_mask(means, full, "full", eps32).tolist() == [False, True]


@pytest.mark.parametrize("covariance_type", ["full", "tied"])
def test_map_em_in_float32_keeps_covariances_symmetric_and_objective_finite(covariance_type, faithful):
    """Outer products round differently in (i, j) and (j, i); NumPyro's inverse-Wishart density
    is -inf off symmetry, which once made float32 MAP-EM reject good restarts as 'singular'."""
    x = faithful.astype(np.float32)
    for seed in range(4):
        with warnings.catch_warnings(), precision(np.float32):
            warnings.simplefilter("ignore", bg.ConvergenceWarning)
            r = bg.fit_em(x, 4, covariance_type=covariance_type, prior=bg.Prior.default(x, 4), n_init=5, seed=seed)
        assert np.all(np.isfinite(r.trace)) and np.all(np.isfinite(r.info["restart_objectives"]))
        np.testing.assert_array_equal(r.covariances, np.swapaxes(r.covariances, -1, -2))


def test_not_converged_warns_and_is_flagged(faithful):
    with pytest.warns(bg.ConvergenceWarning, match="max_iter"):
        r = bg.fit_em(faithful, 2, max_iter=1, tol=1e-12, seed=0)
    assert not r.converged and r.n_iter == 1


def test_convergence_rule_at_a_fixed_point_and_on_a_climb():
    """The convergence test: an objective alternating by rounding at its fixed point (gains after
    decreases, above the precision floor but far below tol) converges after two such evaluations;
    a steady climb whose projected remaining gain exceeds tol does not; nor does one small gain
    after a decrease alone; a two-cycle of rounding wider than the floor settles where the floor
    hides the tolerance."""
    from bayesgmm import _iterate

    def run(objectives, tol, floor):
        close = 0
        for t in range(2, len(objectives)):
            delta_prev, delta = np.diff(objectives[t - 2:t + 1])
            close, converged = _iterate.convergence(
                np.float64(delta_prev), np.float64(delta), t, np.float64(tol), np.float64(floor), close)
            close, converged = int(close), bool(converged)
            if converged:
                return t
        return None

    tol, floor = 1e-3 * 500, 1e-15 * 500
    wiggle = -1000.0 + np.array([0.0, -3.4e-13, 3.4e-13, -6.8e-13, 6.8e-13, -6.8e-13])
    assert run(wiggle, tol, floor) == 3  # two close evaluations in a row (was: never)
    climb = -1000.0 + np.cumsum([0.0, 1.0, 0.9, 0.85, 0.82])  # rate ~0.95: ~16 still to gain
    assert run(climb, tol, floor) is None
    assert run(-1000.0 + np.array([0.0, -1e-13, 1e-4, 0.5, 1.0]), tol, floor) is None  # then climbs again
    # changes under the precision floor settle the run only where the floor hides the tolerance:
    # a steady climb of 0.005 a step under a floor of 0.0049 but a tol of 0.02 (float32, 2000 rows)
    # is progress (it stopped there with 30x tol left)
    steady = -6000.0 + np.cumsum([0.0, 0.0049, 0.0049, 0.0049, 0.0049])
    assert run(steady, tol=0.02, floor=0.0049) is None
    assert run(steady, tol=0.002, floor=0.0049) == 2  # a tol finer than the floor: met at the floor
    # a two-cycle of rounding 1.6 floors wide with a tol finer than the floor (float32 Old
    # Faithful alternated so for 1000 iterations): settled; a gain that is not undone, or a
    # cycle wider than CYCLE_FLOORS floors, is not
    floor = 1.12e-4
    two_cycle = -470.0 + np.cumsum([0.0, 1.83e-4, -1.83e-4, 1.83e-4, -1.83e-4])
    assert run(two_cycle, tol=1e-9, floor=floor) == 2
    assert run(-470.0 + np.cumsum([0.0, 1.83e-4, -1.83e-4 + 2 * floor, 1.83e-4]), tol=1e-9, floor=floor) is None
    wide = _iterate.CYCLE_FLOORS * floor * 1.01
    assert run(-470.0 + np.cumsum([0.0, wide, -wide, wide, -wide]), tol=1e-9, floor=floor) is None


def test_coarse_convergence_takes_a_cycle_of_rounding_below_tol_not_a_steady_climb():
    """Float32 (the windowed test): VB at its fixed point cycled +1, +1, -2 units in the last
    place of its ELBO for 800 sweeps, a floor below tol; two equal gains every third projected an
    infinite gain, so it never converged (ConvergenceWarning after max_iter). Gains that do not
    shrink, within the floor, where the objective has not risen by more than the floor over
    SETTLE_WINDOW updates, are rounding: it converges. A steady climb of equal gains of the same
    size (progress, rising a floor a step) still does not."""
    from bayesgmm import _iterate

    def run(steps, tol, floor):
        trace = -1183.0 + np.cumsum(np.r_[0.0, steps])
        close = 0
        for t in range(2, len(trace)):
            close, converged = _iterate.convergence(
                np.array([trace[t - 1] - trace[t - 2]]), np.array([trace[t] - trace[t - 1]]), np.array([t]),
                np.float64(tol), np.float64(floor), np.array([close]), trace=trace[None, :], coarse_precision=True)
            close = int(close[0])
            if bool(converged[0]):
                return t
        return None

    ulp, floor, tol = 6.1e-5, 1.25e-4, 2.72e-3
    cycle = [1.0, 0.6, 0.3, 0.1] + [ulp, ulp, -2 * ulp] * 40  # the approach, then the rounding's cycle
    at = run(cycle, tol, floor)
    assert at is not None and at < 40
    assert run([ulp] * 120, tol, floor) is None  # 120 equal gains: a climb, 7e-3 in all and on


def test_kmeans_matches_sklearn(sim3):
    from sklearn.cluster import KMeans

    km = bg.kmeans(sim3.x, 3, n_init=5, seed=0)
    ref = KMeans(3, n_init=5, random_state=0).fit(sim3.x)
    np.testing.assert_allclose(km.inertia, ref.inertia_, rtol=1e-6)
    np.testing.assert_array_equal(km.predict(sim3.x), km.labels)
    assert km.converged


def test_kmeans_on_another_number_of_rows_or_iterations_compiles_nothing(sim3):
    """The rows are padded to their bucket with weight 0 and ``max_iter`` and ``tol`` are traced:
    k-means on a subset, or with fewer iterations, reuses the program, and its answer is
    scikit-learn's on that subset (padding rows are never chosen as centres nor counted)."""
    from sklearn.cluster import KMeans

    bg.kmeans(sim3.x, 3, n_init=5, seed=0)
    subset = sim3.x[: len(sim3.x) - 37]
    with CompileCounter() as counter:
        km = bg.kmeans(subset, 3, n_init=5, seed=0)
        short = bg.kmeans(subset, 3, n_init=5, seed=0, max_iter=2, tol=1e-3)
    assert counter.compiles == 0
    ref = KMeans(3, n_init=5, random_state=0).fit(subset)
    assert km.labels.shape == (len(subset),) and km.converged
    np.testing.assert_allclose(km.inertia, ref.inertia_, rtol=1e-6)
    assert short.n_iter <= 2 and short.inertia >= km.inertia


def test_kmeans_refuses_nan_without_naming_an_option_it_lacks():
    x = np.array([[0.0, 1.0], [1.0, 0.0], [np.nan, 2.0], [3.0, 3.0]])
    with pytest.raises(ValueError, match=r"k-means takes complete rows only.*fit_em\(x, K, missing='marginalize'\)"):
        bg.kmeans(x, 2)


def test_kmeans_says_when_clusters_are_left_empty():
    """As scikit-learn: more clusters than distinct points leave some empty, with a warning."""
    x = np.repeat(np.array([[0.0, 0.0], [1.0, 1.0], [2.0, 0.0]]), 40, axis=0)
    with pytest.warns(UserWarning, match="found 3 non-empty cluster.*only 3 distinct point"):
        km = bg.kmeans(x, 4, seed=0)
    assert np.bincount(km.labels, minlength=4).tolist().count(0) == 1
    # the spare centre is a data point, as scikit-learn's: it was a zero-weight padding row of the
    # row bucket, at the data's medians (1, 0 here; (1, 1) for predict, which sent rows there)
    assert all(np.abs(x - c).max(axis=1).min() < 1e-12 for c in km.centers), km.centers


def test_kmeans_stops_at_a_fixed_point_also_at_tol_zero():
    """At tol=0 the compiled shift of a fixed point is about 1e-32, not 0, so k-means ran every
    max_iter step and said converged=False; it stops as scikit-learn does when no row changes
    its label, with the centres of the fixed point (scikit-learn from them moves nothing)."""
    from sklearn.cluster import KMeans

    from bayesgmm.kmeans import lloyd

    x = np.random.default_rng(0).normal(size=(1000, 2))
    km = bg.kmeans(x, 5, n_init=1, tol=0.0, max_iter=300, seed=0)
    assert km.converged and km.n_iter < 30
    loose = bg.kmeans(x, 5, n_init=1, tol=1e-12, max_iter=300, seed=0)
    np.testing.assert_array_equal(km.centers, loose.centers)
    again = KMeans(5, init=km.centers, n_init=1, tol=0.0, algorithm="lloyd").fit(x)
    np.testing.assert_allclose(again.cluster_centers_, km.centers, atol=1e-12)
    # the runs as kmeans compiles them for a user (vmapped over starts, XLA's optimisation on; the
    # suite's unoptimised programs happened to give a shift of exactly 0), from k-means++-like starts
    starts = jnp.asarray(np.stack([x[:5], x[5:10]]))
    runs = jax.jit(jax.vmap(lambda c: lloyd(jnp.asarray(x), c, 300, 0.0)),
                   compiler_options={"xla_cpu_use_fusion_emitters": False})(starts)
    assert np.all(np.asarray(runs[4])) and np.all(np.asarray(runs[3]) < 100), runs[3]


def test_kmeans_on_the_extreme_scales_float64_holds():
    """Units of 1e-200 (squares underflow) give the unscaled clusters; units whose squares overflow
    are refused as by the fits (they gave NaN centres and one cluster)."""
    x = bg.datasets.make_mixture(300, 3, 2, separation=5.0, seed=3).x
    ref = bg.kmeans(x, 3, seed=0)
    tiny = bg.kmeans(x * 1e-200, 3, seed=0)
    assert adjusted_rand(tiny.labels, ref.labels) == 1.0
    np.testing.assert_allclose(tiny.centers * 1e200, ref.centers, rtol=1e-9)
    with pytest.raises(ValueError, match="span more than 1e\\+150"):
        bg.kmeans(x * 1e155, 3, seed=0)


@pytest.mark.parametrize("offset,scale", [(1e5, 1.0), (0.0, 1e-20), (0.0, 1e20)])
def test_kmeans_in_float32_far_from_zero_and_on_extreme_scales(offset, scale, sim3):
    """In float32 the one-product distance once cancelled at an offset of 1e4 (wrong clusters)
    and under/overflowed at scales 1e-20 / 1e20; k-means now centres and scales in float64."""
    ref = bg.kmeans(sim3.x, 3, n_init=5, seed=0)
    x = (sim3.x * scale + offset).astype(np.float32)
    with precision(np.float32):
        km = bg.kmeans(x, 3, n_init=5, seed=0)
    assert adjusted_rand(km.labels, ref.labels) == 1.0
    truth = sum(((x[km.labels == j].astype(np.float64) - x[km.labels == j].mean(0, dtype=np.float64)) ** 2).sum() for j in range(3))
    np.testing.assert_allclose(km.inertia, truth, rtol=1e-3)
    # the reported inertia is the float64 sum from the returned centres and labels (it was the
    # float32 run's own: 75 units off on the galaxy velocities at K = 3)
    assert km.inertia == pytest.approx(float(np.sum((x.astype(np.float64) - km.centers[km.labels]) ** 2)), rel=1e-12)
    np.testing.assert_array_equal(km.predict(x), km.labels)


def test_jax_key_seed_is_accepted(faithful):
    a = bg.fit_em(faithful, 2, seed=jax.random.key(3))
    b = bg.fit_em(faithful, 2, seed=3)
    assert np.array_equal(a.means, b.means)


# ----------------------------------------------------------------------------------------------
# Row weights, component masks, compile timing (the machinery model selection, bootstrap,
# sharding and streaming build on)
# ----------------------------------------------------------------------------------------------
def _few_iterations(x, k, covariance_type, iters):
    """A deliberately unconverged fit, used as a common starting point."""
    with pytest.warns(bg.ConvergenceWarning):
        return bg.fit_em(x, k, covariance_type=covariance_type, seed=0, max_iter=iters, tol=0.0)


@grid("covariance_type,use_prior", [COV_TYPES, [False, True]],
      fast=[("full", False), ("diag", True), ("spherical", False), ("tied", True)])
def test_integer_weights_equal_repeated_rows(covariance_type, use_prior, sim3):
    """Frequency weights are the same fit as the data with each row repeated that many times."""
    rng = np.random.default_rng(5)
    x = sim3.x[:200]
    counts = rng.integers(0, 4, size=len(x))
    repeated = np.repeat(x, counts, axis=0)
    # one start for both (given parameters), the prior defined once, on the original scale
    start = _few_iterations(x, 3, covariance_type, 2)
    prior = bg.Prior.default(repeated, 3) if use_prior else None
    prec = {"full": np.linalg.inv, "tied": np.linalg.inv}.get(covariance_type, lambda c: 1.0 / c)(start.covariances)
    kw = dict(covariance_type=covariance_type, prior=prior, weights_init=start.weights, means_init=start.means,
              precisions_init=prec, tol=1e-10, max_iter=300, seed=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", bg.ConvergenceWarning)
        a = bg.fit_em(repeated, 3, **kw)
        # the standardisation differs (weighted vs repeated moments) but the fit is affine invariant
        b = bg.fit_em(x, 3, sample_weight=counts, **kw)
    np.testing.assert_allclose(b.log_likelihood, a.log_likelihood, rtol=1e-9)
    np.testing.assert_allclose(b.means, a.means, rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(b.covariances, a.covariances, rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(b.weights, a.weights, rtol=1e-6)
    # the criteria of the weighted rows are the repeated rows' (bic(x) alone counted each row once)
    np.testing.assert_allclose(b.bic(x, sample_weight=counts), a.bic(repeated), rtol=1e-9)
    np.testing.assert_allclose(b.aic(x, sample_weight=counts), a.aic(repeated), rtol=1e-9)
    assert b.bic(x) != b.bic(x, sample_weight=counts)
    with pytest.raises(ValueError, match="sample_weight must hold 200 finite, non-negative weights"):
        b.bic(x, sample_weight=counts[:-1])


def test_zero_weight_rows_are_absent_from_the_kmeans_start(faithful):
    """k-means / k-means++ ignore weight-0 rows appended at the end (the padding of a sharded fit)."""
    pad = np.vstack([faithful, np.full((5, 2), 1e3)])  # far outliers, weight 0
    w = np.r_[np.ones(len(faithful)), np.zeros(5)]
    a = bg.fit_em(faithful, 2, n_init=3, seed=4)
    b = bg.fit_em(pad, 2, n_init=3, seed=4, sample_weight=w)
    # the standardisation sees the outliers (a different affine map), so compare to 1e-7
    np.testing.assert_allclose(b.log_likelihood, a.log_likelihood, rtol=1e-7)
    np.testing.assert_allclose(b.means, a.means, rtol=1e-6)


@grid("covariance_type,use_prior", [COV_TYPES, [False, True]],
      fast=[("full", True), ("diag", False), ("spherical", True), ("tied", False)])
def test_masked_components_equal_a_smaller_fit(covariance_type, use_prior, sim3):
    """A K=2 fit inside a K=4 program (two components masked off) is the K=2 fit."""
    x = sim3.x
    prior = bg.Prior.default(x, 2) if use_prior else None
    prep2 = _em_host.prepare(x, 2, covariance_type, prior)
    prep4 = _em_host.prepare(x, 2, covariance_type, prior, max_components=4)
    start = _few_iterations(x, 2, covariance_type, 3)
    from bayesgmm.params import params_to_standard

    s = params_to_standard(start.params, prep2.shift, prep2.sd, covariance_type)
    pad_cov = {"full": np.tile(np.eye(2), (2, 1, 1)), "diag": np.ones((2, 2)), "spherical": np.ones(2)}
    cov4 = s.covariances if covariance_type == "tied" else np.concatenate([s.covariances, pad_cov[covariance_type]])
    init4 = (np.r_[s.weights, 0.0, 0.0], np.vstack([s.means, np.zeros((2, 2))]), cov4)
    def run(prep, k, init, active):
        cfg = _em_core.EMConfig(k, 2, covariance_type, False, prior is not None)
        return _em_host.run_search(prep, jax.random.key(0), tuple(jnp.asarray(a) for a in init), prep.prior_arrays,
                             tol=1e-9, reg_covar=1e-6, sample_weight=None, active=active, max_iter=200, config=cfg,
                             init_method="given", num_groups=1, num_starts=1, num_kept=1).output

    out2 = run(prep2, 2, tuple(s), None)
    out4 = run(prep4, 4, init4, np.array([[True, True, False, False]]))
    np.testing.assert_allclose(out4.lanes.objective, out2.lanes.objective, rtol=1e-10)
    np.testing.assert_allclose(out4.lanes.params.means[0, :2], out2.lanes.params.means[0], rtol=1e-8, atol=1e-10)
    np.testing.assert_array_equal(out4.lanes.params.weights[0, 2:], 0.0)
    np.testing.assert_allclose(out4.lanes.aux[0, :2], out2.lanes.aux[0], rtol=1e-8)
    assert int(out4.lanes.n_iter[0]) == int(out2.lanes.n_iter[0])


@pytest.mark.parametrize("covariance_type", COV_TYPES)
def test_masked_log_prior_is_the_sub_model_prior(covariance_type, rng):
    full = random_params(rng, 4, 3, covariance_type)
    keep = np.array([True, False, True, False])
    sub_w = full.weights[keep] / full.weights[keep].sum()
    sub_c = full.covariances if covariance_type == "tied" else full.covariances[keep]
    sub = GMMParams(sub_w, full.means[keep], sub_c)
    masked = GMMParams(np.where(keep, full.weights, 0.0) / full.weights[keep].sum(), full.means, full.covariances)
    prior = bg.Prior(2.0, np.zeros(3), 0.5, 5.0, np.eye(3))
    ref = log_prior(sub, prior, covariance_type)
    got = model.log_prior(GMMParams(*map(jnp.asarray, masked)), prior.arrays(4, covariance_type), covariance_type, jnp.asarray(keep))
    np.testing.assert_allclose(float(got), ref, rtol=1e-10)
    every = model.log_prior(GMMParams(*map(jnp.asarray, full)), prior.arrays(4, covariance_type), covariance_type, jnp.ones(4, bool))
    np.testing.assert_allclose(float(every), log_prior(full, prior, covariance_type), rtol=1e-10)


def test_compile_and_run_seconds_are_reported(faithful):
    from conftest import compiled_afresh

    x = faithful[:101]
    with compiled_afresh():
        first = bg.fit_em(x, 2, n_init=2, seed=0)
        again = bg.fit_em(x + 1.0, 2, n_init=2, seed=0)
    assert first.info["compile_seconds"] > 0 and again.info["compile_seconds"] == 0.0
    assert 0 < again.info["run_seconds"] < first.info["compile_seconds"] + first.info["run_seconds"]


def test_new_row_counts_and_max_iter_compile_nothing(faithful):
    """Rows are padded to a bucket (weight-0 rows) and max_iter is traced: a new N or max_iter
    reuses the program, and the padded fit is the fit of the data alone (scikit-learn from the
    same start)."""

    bg.fit_em(faithful[:150], 2, n_init=2, seed=0)
    with CompileCounter() as counter:
        short = bg.fit_em(faithful[:200], 2, n_init=2, seed=1, max_iter=50)
        long = bg.fit_em(faithful[:250], 2, n_init=2, seed=1, max_iter=300, tol=1e-9)
    assert counter.compiles == 0 and short.n_iter <= 50
    ref = GaussianMixture(2, weights_init=long.weights, means_init=long.means,
                          precisions_init=np.linalg.inv(long.covariances), tol=1e-12, reg_covar=0.0).fit(faithful[:250])
    np.testing.assert_allclose(ref.means_, long.means, rtol=1e-6)
    np.testing.assert_allclose(ref.score(faithful[:250]) * 250, long.log_likelihood, rtol=1e-9)


def test_bad_sample_weight_raises(faithful):
    for w, match in [(np.ones(3), r"shape \(272,\)"), (-np.ones(272), "non-negative"), (np.zeros(272), "zero for every row")]:
        with pytest.raises(ValueError, match=match):
            bg.fit_em(faithful, 2, sample_weight=w)


@pytest.mark.parametrize("covariance_type", ["full", "tied", "diag", "spherical"])
def test_reg_covar_zero_works_from_one_point_starts(faithful_std, covariance_type):
    """k-means++ starts each component at one point; with reg_covar=0 the start used to be singular."""
    x = np.asarray(faithful_std)
    r = bg.fit_em(x, 2, covariance_type=covariance_type, reg_covar=0.0, n_init=2, seed=0)
    default = bg.fit_em(x, 2, covariance_type=covariance_type, n_init=2, seed=0)
    assert r.converged and np.isfinite(r.log_likelihood)
    np.testing.assert_allclose(r.log_likelihood, default.log_likelihood, rtol=1e-6)


def test_max_iter_zero_returns_the_start(faithful_std):
    x = np.asarray(faithful_std)
    means = np.array([[-1.0, -1.0], [1.0, 1.0]])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # neither ConvergenceWarning nor DegenerateComponentWarning
        r = bg.fit_em(x, 2, max_iter=0, means_init=means, n_init=3, seed=0)
    np.testing.assert_allclose(r.means, means, rtol=1e-12)
    assert r.n_iter == 0 and not r.converged and r.trace.shape == (1,)
    assert r.trace[0] == r.info["objective_value"]  # the objective of the start itself
    with pytest.raises(ValueError, match="max_iter must be a non-negative integer"):
        bg.fit_em(x, 2, max_iter=-1)


@pytest.mark.parametrize("lane_by_lane", [False, True])
def test_a_batch_takes_the_precise_form_when_any_lane_needs_it(rng, monkeypatch, lane_by_lane):
    """When some lane needs the precise form, every lane of the batch takes it (batched on small
    data, one lane after another on larger data: forced here) and equals that lane stepped
    alone in the precise form; when none does, the batch runs the fast form. The data sit far
    from the origin, where the two forms' rounding differs visibly (a lane given the fast form
    would miss by about 1e-8)."""
    if lane_by_lane:
        monkeypatch.setattr(_em_core, "LANE_BY_LANE_ELEMENTS", 0)
    offset = 3e4
    x = jnp.asarray(rng.normal(size=(60, 2)) + offset)
    config = _em_core.EMConfig(3, 2, "full", hard=False, use_prior=False)
    problem = _em_core.EMProblem(z=_stats.suff_features(x, "full"), x=x, sample_weight=None, active=None, prior=None,
                                 reg_covar=jnp.asarray(1e-6))
    axes = _em_core.EMProblem(z=None, x=None, sample_weight=None, active=None, prior=None, reg_covar=None,
                              model_index=None, observed=None)
    lanes = []
    for _ in range(3):
        w, m, c = random_params(rng, 3, 2, "full")
        lanes.append(GMMParams(*map(jnp.asarray, (w, m + offset, c))))
    batch = jax.tree_util.tree_map(lambda *a: jnp.stack(a), *lanes)
    fast, precise = (float(_em_core.em_step(lanes[0], problem, config, form)[0][0]) for form in (False, True))
    assert abs(fast - precise) > 1e-9 * abs(precise)  # the forms are told apart
    step = jax.jit(lambda p, precise: _em_core.lanes_step(p, problem, axes, config, precise))
    for flags in ([True, False, False], [False, False, True], [False, False, False]):
        got = step(batch, jnp.asarray(flags))
        for lane, params in enumerate(lanes):
            flag = any(flags)
            alone = jax.jit(lambda p, form=flag: _em_core.em_step(p, problem, config, form))(params)
            for a, b in zip(jax.tree_util.tree_leaves(alone), jax.tree_util.tree_leaves(got)):
                # the precise form to the last bits; the fast one up to its cancellation here
                np.testing.assert_allclose(b[lane], a, rtol=1e-12 if flag else 1e-4, atol=0)


@pytest.mark.filterwarnings("ignore::bayesgmm.ConvergenceWarning")  # max_iter is the point here
def test_short_runs_on_larger_data_run_in_blocks(monkeypatch):
    """On data too large for the padded program the short runs of an em-EM search go in blocks
    of several starts (one call each) and the best continues in a program of its own lanes: the
    same starts, short-run objectives and fit as one start per call."""
    x = bg.datasets.make_mixture(3000, 3, 2, separation=2.0, seed=1).x
    kw = dict(init_params="k-means++", seed=3, tol=0.0, max_iter=6, n_init=8)
    lanes_per_call = []
    program_call = type(_em_core.PROGRAM).__call__

    def counted(self, xs, noise, *args, **static):
        lanes_per_call.append(noise.shape[0])
        return program_call(self, xs, noise, *args, **static)

    monkeypatch.setattr(type(_em_core.PROGRAM), "__call__", counted)
    blocked = bg.fit_em(x, 3, init_iter=2, **kw)
    assert lanes_per_call == [8, 1]
    lanes_per_call.clear()
    monkeypatch.setattr(_em_core._iterate, "short_run_lanes", lambda num_obs, k: 1)
    one_by_one = bg.fit_em(x, 3, init_iter=2, **kw)
    assert lanes_per_call == [1] * 8 + [1]
    np.testing.assert_allclose(blocked.info["start_objectives"], one_by_one.info["start_objectives"], rtol=1e-10)
    np.testing.assert_allclose(blocked.log_likelihood, one_by_one.log_likelihood, rtol=1e-10)
    for a, b in zip(blocked.params, one_by_one.params):
        np.testing.assert_allclose(a, b, rtol=1e-8, atol=1e-10)


def _geometric_lanes(rates, trace_len=32):
    """Lanes of a toy fixed-point iteration ``x <- r x`` with objective ``-x^2`` (rate ``r^2``
    per lane): they converge after different numbers of updates, or not within ``max_iter``."""
    from bayesgmm import _iterate

    params = (jnp.ones(len(rates)), jnp.asarray(rates))
    return _iterate.start(params, jnp.zeros(len(rates)), len(rates), trace_len, jnp.float64)


def _geometric_step(params, precise):
    x, r = params
    return -(x**2), x**2, x, (r * x, r)


def test_a_queue_gives_every_lane_the_updates_iterate_gives_it():
    """``iterate_queue`` (a pool of 3 lanes working through 8 of a queue of 12) records every
    lane exactly as ``iterate`` leaves it when all 8 run in one batch: objective, trace, counts
    of updates and flags, converged or stopped at max_iter. Lanes beyond the queued ones are
    zeros. A continuing call (3 lanes in the pool, nothing waiting) equals ``iterate`` too."""
    from bayesgmm import _iterate

    rates = np.array([0.1, 0.95, 0.5, 0.3, 0.99, 0.7, 0.2, 0.9, 0.4, 0.6, 0.8, 0.05])
    tol, max_iter = 1e-8, 25
    queue = _geometric_lanes(rates)

    @jax.jit
    def queued(queue, num_queued):
        def incoming(slots):
            return _iterate.take(queue, slots)

        return _iterate.iterate_queue(_iterate.take(queue, jnp.arange(3)), incoming, num_queued, 12, _geometric_step,
                                      tol, max_iter)

    batch = jax.jit(lambda lanes: _iterate.iterate(lanes, _geometric_step, tol, max_iter))
    got = queued(queue, 8)
    want = batch(_iterate.take(queue, np.arange(8)))
    n_iter = np.asarray(want.n_iter)
    assert n_iter.min() < 10 and n_iter.max() == max_iter and np.asarray(want.converged).sum() >= 4  # lanes differ
    for a, b in zip(jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(want)):
        np.testing.assert_array_equal(np.asarray(a)[:8], b)
        assert not np.asarray(a)[8:].any()

    # continuing: half-run lanes (5 updates each) in the pool, none waiting
    half = jax.jit(lambda lanes: _iterate.iterate(lanes, _geometric_step, tol, 5))(_iterate.take(queue, np.arange(3)))
    resumed = jax.jit(lambda pool: _iterate.iterate_queue(pool, lambda slots: _iterate.take(pool, slots), 3, 12,
                                                          _geometric_step, tol, max_iter))(half)
    for a, b in zip(jax.tree_util.tree_leaves(resumed), jax.tree_util.tree_leaves(batch(half))):
        np.testing.assert_array_equal(np.asarray(a)[:3], b)


def test_small_data_run_the_search_as_one_queue(monkeypatch):
    """On small data every call of the default search queues its lanes through the pool: one
    call runs all 256 short runs, one continues the best 16. The fit, its start objectives and
    its parameters equal those of the search in blocks of 16 short runs (17 calls); only the
    shared choice of the precise form can differ between the two groupings, which float64 on
    these data never takes."""
    x = bg.datasets.load_faithful()
    lanes_per_call = []
    program_call = type(_em_core.PROGRAM).__call__

    def counted(self, xs, noise, given, state, *args, **static):
        lanes_per_call.append((noise.shape[0], int(args[-1]), static["pool_lanes"]))  # queue, queued, pool
        return program_call(self, xs, noise, given, state, *args, **static)

    monkeypatch.setattr(type(_em_core.PROGRAM), "__call__", counted)
    queued = bg.fit_em(x, 2, seed=4)
    assert lanes_per_call == [(256, 256, 16), (256, 16, 16)]
    lanes_per_call.clear()
    monkeypatch.setattr(_em_core._iterate, "pooled", lambda *args: False)
    blocks = bg.fit_em(x, 2, seed=4)
    assert lanes_per_call == [(16, 16, None)] * 17
    np.testing.assert_allclose(queued.info["start_objectives"], blocks.info["start_objectives"], rtol=1e-12)
    assert queued.n_iter == blocks.n_iter
    np.testing.assert_allclose(queued.log_likelihood, blocks.log_likelihood, rtol=1e-14)
    for a, b in zip(queued.params, blocks.params):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-14)


def test_short_runs_take_the_looser_precision_guard_and_continued_runs_test_convergence_afresh(monkeypatch):
    """The em-EM short runs only rank the starts: they keep the fast form up to the looser guard
    (SHORT_RUN_PRECISE_THRESHOLD), the runs continued from them take the strict one. A continued
    run whose last objective came from the other form must not count the difference between the
    two forms as convergence: it runs again. Forced here with a strict threshold of 0 (every
    evaluation precise) and a loose one of inf (short runs always fast), on well separated data
    whose short runs converge within init_iter; the default guard (float64: always fast) is the
    reference."""
    rng = np.random.default_rng(1)
    x = np.array([[0.0, 0.0], [8.0, 0.0], [0.0, 8.0]])[rng.integers(0, 3, 600)] + rng.normal(size=(600, 2))
    kw = dict(n_init=16, init_iter=20, seed=2)
    loose_per_call = []
    program_call = type(_em_core.PROGRAM).__call__

    def spied(self, *args, **static):
        loose_per_call.append((bool(args[10]), bool(args[12])))  # (fresh, loose)
        return program_call(self, *args, **static)

    monkeypatch.setattr(type(_em_core.PROGRAM), "__call__", spied)
    reference = bg.fit_em(x, 3, **kw)
    assert loose_per_call == [(True, True), (False, True)]  # the short runs' call, then the continued run's
    assert reference.converged and reference.n_iter < 20  # the best short run had converged
    loose_per_call.clear()
    bg.fit_em(x, 3, n_init=4)  # independent restarts: every run to convergence, strict guard
    assert loose_per_call == [(True, False)]

    # the thresholds are constants of the traced program: a program of its own, traced with them
    monkeypatch.setattr(_stats, "PRECISE_THRESHOLD", 0.0)
    monkeypatch.setattr(_stats, "SHORT_RUN_PRECISE_THRESHOLD", np.inf)
    retraced = functools.wraps(_em_core._run)(lambda *args, **static: _em_core._run(*args, **static))
    monkeypatch.setattr(_em_core, "PROGRAM", type(_em_core.PROGRAM)(retraced, _em_core.PROGRAM._static_argnames))
    forced = bg.fit_em(x, 3, **kw)
    assert forced.converged and forced.n_iter >= reference.n_iter + 2  # two evaluations before a new test
    np.testing.assert_allclose(forced.info["start_objectives"], reference.info["start_objectives"], rtol=1e-9)
    # the same optimum; the forced run made more updates, so it is nearer it
    assert reference.log_likelihood - 1e-9 <= forced.log_likelihood <= reference.log_likelihood + 1e-3
    for a, b in zip(forced.params, reference.params):
        np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-4)


def test_endgame_takes_the_precise_form_from_the_first_close_evaluation_on():
    """A lane marked for the endgame (``needs_precise`` gives ``(now, at_the_end)``) runs the fast
    form until its test is first close, then the precise form to the end, its test started afresh
    there (no progress measured across the change of form); a lane not marked never switches."""
    from bayesgmm import _iterate

    def step(theta, precise):  # l = -1000 theta^2, theta halves: converges at rate 1/4
        total = -1000.0 * theta**2
        used = jnp.broadcast_to(jnp.asarray(precise, jnp.float32), theta.shape)
        return total, jnp.abs(total), used, 0.5 * theta

    def needs(theta):
        return jnp.zeros(2, bool), jnp.array([True, False])

    lanes = _iterate.start(jnp.ones(2, jnp.float32), jnp.zeros(2, jnp.float32), 2, 64, jnp.float32)
    out = jax.device_get(jax.jit(lambda s: _iterate.iterate(s, step, jnp.float32(1e-3), 50, needs))(lanes))
    assert out.converged.all() and out.endgame.tolist() == [True, False]
    assert out.aux.tolist() == [1.0, 0.0]  # the last evaluation: precise in the endgame only
    # the endgame lane restarted its test where it changed form, and needed its closes after that
    assert 0 < out.since[0] <= out.n_iter[0] - _iterate.COARSE_PERSIST and out.since[1] == 0
    assert out.n_iter[0] > out.n_iter[1]


def test_float32_full_fit_runs_the_fast_form_and_ends_at_the_float64_optimum():
    """Well-separated full-covariance clusters (D = K = 16, centres far from the data's centre in
    units of their spread): the tight guard lets float32 EM run the fast form (about 20 ms an
    iteration instead of 30 at N=1e5), where the conservative one took the centred form
    throughout, and the fit (its last evaluations centred, the endgame) ends within the default
    tolerance of the float64 optimum."""
    x = separated_clusters(10_000, 16, 16)
    given, best = rough_start_and_optimum(x, 16, max_iter=300)
    with precision(np.float32):
        fit = bg.fit_em(x.astype(np.float32), 16, **given)
        prep = _em_host.prepare(x.astype(np.float32), 16, "full", None)
    std = params_to_standard(GMMParams(*fit.params), prep.shift, prep.sd, "full")
    lane = GMMParams(*(jnp.asarray(a, jnp.float32)[None] for a in std))
    now, at_the_end = _stats.needs_precise(lane, "full", endgame_threshold=jnp.float32(_stats.ENDGAME_THRESHOLD))
    assert not bool(now[0]) and bool(at_the_end[0])  # the fast form, then the endgame
    assert bool(_stats.needs_precise(lane, "full")[0])  # the conservative guard would be centred throughout
    assert fit.converged and (best - fit.log_likelihood) / len(x) <= 1e-5, (fit.n_iter, best - fit.log_likelihood)


def test_host_scoring_of_diagonal_covariances_equals_the_centred_formula():
    """The float64 host evaluation of diagonal covariances takes the expanded form (products of
    the raw rows) where its rounding bound allows and the centred one elsewhere: either way every
    log density equals the centred formula, on ordinary data, on a component tight and far from
    the frame (where the expanded form would cancel), with far outliers, for spherical
    covariances and for a batch of parameter draws."""
    rng = np.random.default_rng(7)
    k, d, n = 4, 6, 3000

    def centred(x, mu, var):  # (..., N, K)
        q = np.sum((x[..., None, :] - mu[..., None, :, :]) ** 2 / var[..., None, :, :], -1)
        return -0.5 * (q + np.sum(np.log(var), -1)[..., None, :] + d * np.log(2 * np.pi))

    mu, var = rng.normal(0, 1, (k, d)), rng.uniform(0.3, 2.0, (k, d))
    x = mu[rng.integers(0, k, n)] + rng.normal(size=(n, d)) * np.sqrt(var[0])
    tight = mu.copy(), var.copy()
    tight[0][1], tight[1][1] = 1e4, 1e-6  # far from the rows' frame and tight: the expanded form cancels
    near_tight = np.concatenate([x, tight[0][1] + rng.normal(size=(200, d)) * 1e-3])  # rows on that component
    outliers = x.copy()
    outliers[::500] *= 1e5
    block = x[: _numerics.HOST_CACHE_ELEMENTS // (k * d)]
    assert _numerics._expanded_quadratic(block, _numerics._Expanded.of(mu, var)) is not None
    assert _numerics._expanded_quadratic(near_tight[-64:], _numerics._Expanded.of(*tight)) is None
    for rows, (m, v) in ((x, (mu, var)), (near_tight, tight), (outliers, (mu, var))):
        got, want = _numerics.component_log_density(rows, m, v, "diag"), centred(rows, m, v)
        np.testing.assert_allclose(got, want, rtol=1e-13, atol=1e-9)
    spherical = var[:, 0]
    np.testing.assert_allclose(_numerics.component_log_density(x, mu, spherical, "spherical"),
                               centred(x, mu, np.repeat(spherical[:, None], d, 1)), rtol=1e-13, atol=1e-9)
    draws_mu, draws_var = mu + rng.normal(0, 0.1, (5, k, d)), var * rng.uniform(0.8, 1.2, (5, k, d))
    np.testing.assert_allclose(_numerics.component_log_density(x, draws_mu, draws_var, "diag"),
                               centred(x, draws_mu, draws_var), rtol=1e-13, atol=1e-9)


@pytest.mark.skipif(np.finfo(np.longdouble).eps > 1e-18, reason="needs an extended-precision long double")
def test_host_totals_match_an_extended_precision_recomputation():
    """The float64 totals every EM fit reports (log-likelihood, entropy, classification entropy,
    expected counts) against the same formulas in extended precision, on 16 separated clusters
    (rows nearly certain of their component, so both entropies are small sums of small terms,
    where rounding shows): the entropies within 1e-12 and 5e-12 relative. The totals from twice
    exponentiating, ``exp(lj - ll)`` after ``log sum exp``, were 2.7e-12 and 1.9e-11 off."""
    rng = np.random.default_rng(1)
    n, d, k = 20000, 16, 16
    centres = rng.normal(0, 3, size=(k, d))
    x = centres[rng.integers(0, k, n)] + rng.normal(size=(n, d))
    w, m, c = np.full(k, 1 / k), centres + 0.1 * rng.normal(size=(k, d)), rng.uniform(0.8, 1.2, size=(k, d))
    ld = np.longdouble
    xl, ml, cl = x.astype(ld), m.astype(ld), c.astype(ld)
    lj = np.log(ld(1) / k) - 0.5 * (np.sum((xl[:, None] - ml[None]) ** 2 / cl[None], -1)
                                   + np.sum(np.log(cl), -1)[None] + d * np.log(2 * np.pi * ld(1)))
    top = lj.max(1)
    e = np.exp(lj - top[:, None])
    s = e.sum(1)
    r, ll = e / s[:, None], top + np.log(s)
    got = _numerics.totals(x, w, m, c, "diag")
    assert abs(got.log_likelihood - float(ll.sum())) <= 1e-14 * abs(float(ll.sum()))
    entropy, labels = float(-np.sum(r * (lj - ll[:, None]))), float(np.sum(np.log(s)))
    assert 0.01 < entropy < 10 and 0.01 < labels < 10  # small totals of small terms
    np.testing.assert_allclose(got.entropy, entropy, rtol=1e-12)  # 1.5e-13 (twice exponentiating: 2.7e-12)
    np.testing.assert_allclose(got.classification_entropy, labels, rtol=5e-12)  # 1.0e-12 (1.9e-11)
    np.testing.assert_allclose(got.counts, r.sum(0).astype(np.float64), rtol=1e-13)


def test_diagonal_precision_guard_bounds_what_the_fast_form_loses():
    """Diagonal covariances have no products across features: the guard's factor there is
    ``eps * sum_d (mu_d^2 + var_d) / var_d`` (spherical: the same with one variance). In float32
    it bounds what the fast form loses, a row's log density within 4 factors (nats) and each
    variance within 2 D factors (relative), on components tight and far from the centre in some
    features; the guard switches exactly at it. On well-separated clusters (D = K = 16, the
    per-fit benchmark's data) the fast form is taken, where the full-matrix bound
    ``eps (|mu|^2 + tr Sigma) tr Sigma^-1`` took the centred one."""
    eps = np.finfo(np.float32).eps
    k, d, n = 3, 8, 4000
    for seed in range(6):
        rng = np.random.default_rng(seed)
        mu = rng.normal(0, 1, (k, d))
        mu[:, :2] *= 10 ** rng.uniform(0, 1.5)
        var = 10 ** rng.uniform(-3, 0, (k, d))
        label = rng.integers(0, k, n)
        x = mu[label] + rng.normal(size=(n, d)) * np.sqrt(var[label])
        factor = eps * np.sum((mu**2 + var) / var, -1)
        exact = _numerics.log_joint_components(x, np.full(k, 1 / k), mu, var, "diag")[np.arange(n), label]
        with precision(np.float32):
            params = GMMParams(*(jnp.asarray(a, jnp.float32) for a in (np.full(k, 1 / k), mu, var)))
            z = _stats.suff_features(jnp.asarray(x, jnp.float32), "diag")
            fast = np.asarray(_stats.log_joint_fast(z, params, "diag"), np.float64)[label, np.arange(n)]
            one_hot = jnp.asarray(np.eye(k, dtype=np.float32)[label].T)
            count, _, scatter = _stats.scatter(*_stats.unpack_stats(one_hot @ z, d, "diag"), "diag")
            lanes = jax.tree_util.tree_map(lambda a: a[None], params)
            for threshold in (factor.max() * 0.99, factor.max() * 1.01):
                assert bool(_stats.needs_precise(lanes, "diag", threshold=threshold)[0]) == (threshold < factor.max())
        for j in range(k):
            assert np.abs(fast - exact)[label == j].max() <= 4 * factor[j], seed
            variance = np.asarray(scatter[j], np.float64) / float(count[j])
            assert np.abs(variance / x[label == j].var(0) - 1).max() <= 2 * d * factor[j], seed

    data = bg.datasets.make_mixture(20_000, 16, 16, separation=3.0, seed=1)
    std = (data.x - np.median(data.x, 0)) / data.x.std(0)
    means = np.stack([std[data.labels == j].mean(0) for j in range(16)])
    variances = np.stack([std[data.labels == j].var(0) for j in range(16)])
    full_matrix_bound = eps * (np.sum(means**2, -1) + variances.sum(-1)) * (1 / variances).sum(-1)
    assert full_matrix_bound.max() > _stats.PRECISE_THRESHOLD
    with precision(np.float32):
        params = GMMParams(*(jnp.asarray(a, jnp.float32)[None] for a in (np.full(16, 1 / 16), means, variances)))
        assert not bool(_stats.needs_precise(params, "diag")[0])


@pytest.mark.parametrize("short_lanes", [None, 3, 8])
def test_further_runs_look_for_a_non_degenerate_optimum_only(short_lanes):
    """When every continued run is degenerate, the search continues the next-best short runs,
    asking the program to stop those still degenerate ``init_iter`` updates after their short
    run; a degenerate further run never replaces a first one (it may have been stopped before
    converging), and the first non-degenerate one ends the search. A scripted program
    stands in for EM: two lanes per continued call, eight starts, their short runs two, three
    or eight per call (``short_lanes``; the last block filled up with the first starts)."""
    from typing import NamedTuple

    from bayesgmm import _iterate

    class State(NamedTuple):
        objective: np.ndarray
        start: np.ndarray
        stopped: np.ndarray

    class Output(NamedTuple):
        lanes: State
        degenerate: np.ndarray

    degenerate = np.array([True, True, True, True, False, True, True, True])  # only start 4 is clean
    final = np.array([5.0, 6.0, 9.0, 8.0, 1.0, 7.0, 0.0, 0.0])  # the degenerate runs climb higher
    calls = []

    def call(block, state, limit, fresh, abandon_after):
        calls.append((fresh, limit, abandon_after))
        start = block.reshape(-1) if fresh else state.start
        assert len(start) == len(state.start)
        if fresh:  # the short runs: none degenerate yet, ranked by their start
            lanes = len(start)
            return Output(State(-start.astype(float), start, np.zeros(lanes, bool)), np.zeros((lanes, 2), bool))
        stopped = degenerate[start] & (abandon_after < limit)
        return Output(State(final[start], start, stopped), np.stack([degenerate[start], np.zeros(2, bool)], axis=1))

    starts = np.arange(8).reshape(1, 8)
    placeholder = State(np.zeros(2), np.zeros(2, int), np.zeros(2, bool))
    out, start_objective = _iterate.search(call, starts, placeholder, num_groups=1, num_starts=8, num_kept=2,
                                           init_iter=20, max_iter=1000, short_lanes=short_lanes)
    # short runs rank the starts 0, 1, ..., 7; the first continued pair (0, 1) is degenerate, the
    # further pairs (2, 3) degenerate with a higher objective, then (4, 5): start 4 is clean
    short_calls = {None: 4, 3: 3, 8: 1}[short_lanes]
    assert [c[0] for c in calls] == [True] * short_calls + [False] * 3
    assert [c[1] for c in calls[:short_calls]] == [20] * short_calls
    assert [c[2] for c in calls[:short_calls + 1]] == [_iterate.NEVER] * (short_calls + 1)
    assert [c[2] for c in calls[short_calls + 1:]] == [40, 40]
    assert out.lanes.start.tolist() == [4, 1] and out.lanes.objective.tolist() == [1.0, 6.0]
    np.testing.assert_array_equal(start_objective, -np.arange(8.0)[None])


def test_the_program_stops_degenerate_further_runs(monkeypatch):
    """Galaxies, K=6: every continued run is degenerate, so further runs look for a
    non-degenerate optimum; the program stops those still degenerate after their allowance,
    before converging. None is found, and the fit reported is the best first run, converged."""
    from bayesgmm import _iterate

    calls = []
    search = _iterate.search

    def recorded(call, *args, **kwargs):
        def recording(block, state, limit, fresh, abandon_after):
            out = call(block, state, limit, fresh, abandon_after)
            calls.append((abandon_after, out))
            return out

        return search(recording, *args, **kwargs)

    monkeypatch.setattr(_iterate, "search", recorded)
    with pytest.warns(bg.DegenerateComponentWarning):
        fit = bg.fit_em(bg.datasets.load_galaxies(), 6)
    further = [out for after, out in calls if after != _iterate.NEVER]
    assert further and all(after == 40 for after, _ in calls if after != _iterate.NEVER)
    stopped = np.concatenate([out.lanes.stopped for out in further])
    assert stopped.any() and not any(out.lanes.stopped.any() for after, out in calls if after == _iterate.NEVER)
    for out in further:
        s = out.lanes.stopped
        assert out.degenerate[s].any(axis=-1).all() and not out.lanes.converged[s].any()
        assert (out.lanes.n_iter[s] >= 40).all() and (out.lanes.n_iter[s] < 1000).all()
    assert fit.converged and fit.degenerate_components


def test_the_models_distributions_skip_numpyros_argument_checks():
    """NumPyro 0.22 validates distribution arguments by default, compiling each check's
    operations on constant arguments (some 25 programs for an Inverse-Wishart). The model's
    distributions skip them: built from constant prior arrays of a new shape, what compiles is
    the arrays' placement, the Cholesky factorisation and the Inverse-Wishart's reshapes (7 for
    full covariances; 48 with NumPyro's checks)."""

    d, k = 7, 3  # shapes no other test uses, so nothing is compiled already
    prior = bg.Prior.default(np.random.default_rng(0).normal(size=(50, d)), k)
    for covariance_type in ("full", "diag"):
        arrays = prior.arrays(k, covariance_type)
        with CompileCounter() as counter:
            weights_dist, cov_dist, means_given = model.prior_distributions(arrays, k, covariance_type)
        assert counter.compiles <= 10, (covariance_type, counter.compiles)
        assert not weights_dist._validate_args and not cov_dist.base_dist._validate_args


#: EM with 10 lanes and VB with 16 on D = K = 16: their Cholesky factors, triangular solves and
#: eigenvalues come in batches large enough (lanes x K matrices of 16 x 16) for jaxlib 0.10's CPU
#: LAPACK kernels to split them over XLA's thread pool and wait there.
_MANY_LARGE_LAPACK_BATCHES = """
import numpy as np, warnings
import bayesgmm as bg
warnings.simplefilter("ignore")
x = np.random.default_rng(2).normal(size=(600, 16))
bg.fit_em(x, 16, n_init=10, max_iter=4, tol=0.0)
bg.fit_vb(x, 16, n_init=16, max_iter=4)
x[np.random.default_rng(3).random(x.shape) < 0.1] = np.nan  # Gibbs: two chains' runs on threads, each
bg.fit_gibbs(x[:300], 8, missing="marginalize", num_warmup=5, num_samples=5, num_chains=2)  # factoring per row
y = bg.datasets.make_mixture(8000, 3, 4, separation=3.0, seed=0).x  # NUTS: two runs of chains on threads, each
bg.fit_mcmc(y, 4, num_warmup=5, num_samples=5, num_chains=2)  # solving the rows against K factors
print("done")
"""


@pytest.mark.slow  # the compiled programs' order: test_em_vb_map_and_mclust_order_their_large_lapack_calls
def test_large_batches_of_lapack_calls_do_not_deadlock():
    """Two large batched LAPACK calls that XLA may run at once (the degenerate check's eigenvalues
    beside the E-step's Cholesky factors, VB's triangular solves of the divergence beside the
    expected components') each wait on XLA's thread pool for their pieces; on two cores both
    threads then waited forever (``n_init=10`` on N=1e5, D=K=16 hung). ``_numerics.in_turn`` orders
    them; so did two Gibbs runs of chains on threads, each factoring a covariance per row with missing
    values (such samplers now run their chains in one run), and two NUTS runs whose likelihoods
    solved every row against each component's factor (N = 8000, D = 3, K = 4: hung every time;
    the rows now go through the inverse factors by matrix products). Run in a fresh process with
    a time limit, so that a regression fails instead of hanging."""
    import os
    import subprocess
    import sys

    try:
        out = subprocess.run([sys.executable, "-c", _MANY_LARGE_LAPACK_BATCHES], capture_output=True, text=True,
                             timeout=300, env=dict(os.environ))
    except subprocess.TimeoutExpired:
        pytest.fail("EM, VB, Gibbs or NUTS hung (LAPACK calls waiting on each other)")
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().endswith("done")


def test_in_turn_keeps_the_values_and_orders_by_a_real_dependency():
    """``in_turn(first, then)`` returns ``then``'s values (NaN or infinite ``first`` included), and
    in the compiled program ``then`` is computed from ``first`` (the dependency survives XLA's
    simplifications, where an optimisation barrier or a conditional with equal branches does not)."""
    import re

    then = jnp.asarray([1.5, -0.0, 3.0e-300, -2.0])
    for first in (jnp.asarray([1.0, 2.0]), jnp.asarray([jnp.nan]), jnp.asarray([-jnp.inf, 1.0]), jnp.asarray(True)):
        np.testing.assert_array_equal(np.asarray(jax.jit(_numerics.in_turn)(first, then)), np.asarray(then))
    hlo = jax.jit(_numerics.in_turn).lower(jnp.ones(2), then).compile().as_text()
    entry = hlo[hlo.index("ENTRY"):]
    first_param = re.search(r"(%[\w.\-]+) = f(32|64)\[2\]\{0\} parameter\(0\)", entry).group(1)
    assert entry.count(first_param) > 1, entry  # used, not dropped
    assert _numerics.in_turn(np.ones(2), np.arange(3.0)) is not None


def test_compensated_sum_is_the_float64_sum_of_float32_rows():
    """EM's objective is summed as a ``(high, low)`` pair: in float32, 1e5 log densities near -25
    sum to within the float64 sum's own rounding, where a plain float32 sum is off by a tenth of
    a nat (the size of EM's last changes); any length, batched rows, and under jit."""
    rng = np.random.default_rng(0)
    with precision(np.float32):
        for n in (1, 2, 3, 999, 100_000):  # float32: the pairwise sum
            rows = (-25.0 + 5.0 * rng.standard_normal((2, n))).astype(np.float32)
            high, low = jax.jit(_numerics.compensated_sum)(jnp.asarray(rows))
            exact = rows.astype(np.float64).sum(axis=1)
            np.testing.assert_allclose(np.asarray(high, np.float64) + np.asarray(low, np.float64), exact,
                                       rtol=0, atol=1e-9 * np.abs(exact).max())
        plain = float(jnp.sum(jnp.asarray(rows[0])))
        assert abs(plain - exact[0]) > 1e-3  # what the pair is for
        high, low = _numerics.add_to_pair((np.float32(1e7), np.float32(0.0)), np.float32(0.0625))
        assert float(high) == 1e7 and float(high) + float(low) == 1e7 + 0.0625


def test_unordered_batched_lapack_calls_are_found_and_in_turn_orders_them():
    """The checker of compiled programs (tests/_lapack_order.py) lists two batched triangular
    solves that do not depend on each other, also when one runs inside a loop (one carrying many
    values too), and no longer once ``in_turn`` orders them; calls below the size asked for are
    not listed."""
    from _lapack_order import unordered_lapack_calls
    from jax.scipy.linalg import solve_triangular

    factors = jnp.linalg.cholesky(jnp.eye(5) * (1.0 + jnp.arange(40.0))[:, None, None])  # 40 factors of 5 x 5
    rhs = jnp.ones((40, 5, 2))

    def two_solves(f, b, ordered, looped):
        first = solve_triangular(f, b, lower=True)
        if looped == "loop":
            first = jax.lax.fori_loop(0, 3, lambda i, y: solve_triangular(f, y, lower=True), b)
        elif looped == "loop carrying 7 values":  # its tuple type is printed with /*index=5*/ comments
            def body(i, carry):
                return (solve_triangular(f, carry[0], lower=True),) + tuple(c * 1.5 for c in carry[1:])

            first = sum(jax.lax.fori_loop(0, 3, body, (b,) + tuple(b + j for j in range(6))))
        second = _numerics.in_turn(first, 2.0 * b) if ordered else 2.0 * b
        return first, solve_triangular(1.5 * f, second, lower=True)

    flops = 40 * 5**2 * 2  # batch x rows^2 x columns of each solve's result
    for looped in ("no loop", "loop", "loop carrying 7 values"):
        texts = {ordered: jax.jit(functools.partial(two_solves, ordered=ordered, looped=looped))
                 .lower(factors, rhs).compile().as_text() for ordered in (False, True)}
        found = unordered_lapack_calls(texts[False])
        assert len(found) == 1 and found[0].flops == (flops, flops), found
        assert unordered_lapack_calls(texts[True]) == []
        assert unordered_lapack_calls(texts[False], min_flops=flops + 1) == []


def test_em_vb_map_and_mclust_order_their_large_lapack_calls():
    """No two LAPACK calls that jaxlib splits over XLA's thread pool can run at once in EM's and
    VB's programs (10 and 16 lanes of 5 matrices 17 x 17, as D=K=16 fits; the fast variant of
    ``test_large_batches_of_lapack_calls_do_not_deadlock``, which runs such fits): the degenerate
    check's eigenvalues beside the E-step's factors, VB's triangular solves beside the expected
    components, MAP-EM's log prior beside the E-step, and an mclust M-step (VEV: the eigenvalues
    of the scatter and of the previous covariances) beside itself (2 unordered pairs in each of
    the last two programs before ``_numerics.in_turn``)."""
    from _lapack_order import parse, unordered_lapack_calls

    from bayesgmm import _compile
    from bayesgmm._chains import LAPACK_SPLIT_FLOPS

    x = bg.datasets.make_mixture(3200, 5, 17, separation=3.0, seed=2).x  # lanes run one at a time from N K D = 2^18

    def programs():
        return {id(e): e for r in _compile._PROGRAMS if (p := r()) is not None and p._jitted.__name__ == "_run"
                for e in p._cache.values()}

    cases = ((bg.fit_em, dict(n_init=10)), (bg.fit_vb, dict(n_init=16)),
             (bg.fit_em, dict(n_init=10, prior=bg.Prior.default(x, 5))), (bg.fit_em, dict(n_init=10, covariance_type="VEV")))
    for fit, kw in cases:
        before = programs()
        with pytest.warns(bg.ConvergenceWarning):  # two iterations: only the program matters here
            fit(x, 5, max_iter=2, tol=0.0, **kw)
        new = [e for key, e in programs().items() if key not in before]
        assert new, kw
        for executable in new:
            text = executable.as_text()
            large = [i for c in parse(text).values() for i in c.values() if i.flops >= LAPACK_SPLIT_FLOPS]
            assert len(large) >= 2, kw  # calls the order matters for
            assert unordered_lapack_calls(text, LAPACK_SPLIT_FLOPS) == [], kw


def test_host_pieces_share_one_pool_keep_their_order_and_may_nest():
    """``_threads.map_pieces`` gives the serial loop's list, on one pool made once per process; a
    piece that maps pieces of its own runs them in turn (a pool waiting on itself would hang:
    checked with a time limit), and several threads of a user's may call it at once."""
    import concurrent.futures

    from bayesgmm import _threads

    assert _threads.map_pieces(lambda i: i * i, range(50)) == [i * i for i in range(50)]
    pool = _threads._POOL
    assert _threads.map_pieces(str, range(9)) == [str(i) for i in range(9)]
    assert _threads._POOL is pool  # no new threads per call
    with concurrent.futures.ThreadPoolExecutor(4) as users:
        nested = users.submit(_threads.map_pieces, lambda i: _threads.map_pieces(lambda j: 10 * i + j, range(3)), range(5))
        assert nested.result(timeout=60) == [[10 * i + j for j in range(3)] for i in range(5)]
        many = list(users.map(lambda a: _threads.map_pieces(lambda i: a * i, range(20)), range(8), timeout=60))
    assert many == [[a * i for i in range(20)] for a in range(8)]
    if hasattr(os, "fork"):  # a forked child (a process pool's worker) starts threads of its own
        import multiprocessing

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # JAX: fork() of a multithreaded process
            with multiprocessing.get_context("fork").Pool(1) as child:
                assert child.apply_async(_threads.map_pieces, (abs, range(-4, 4))).get(timeout=60) == [4, 3, 2, 1, 0, 1, 2, 3]


def test_chains_share_threads_only_when_their_lapack_calls_cannot_wait_on_each_other():
    """The samplers run chains on threads (``_chains.concurrent_runs``) only when no batched LAPACK
    call of theirs is large enough for jaxlib to split it over XLA's thread pool."""
    from bayesgmm import _chains, _threads

    on_threads = max(r for r in range(1, min(4, _threads.usable_cores()) + 1) if 4 % r == 0)
    assert _chains.concurrent_runs(4, _chains.lapack_flops_per_chain(2, 2)) == on_threads  # Old Faithful: as before
    assert _chains.concurrent_runs(4, _chains.lapack_flops_per_chain(8, 16, rows_factored=200)) == 1
    assert _chains.concurrent_runs(4, _chains.lapack_flops_per_chain(16, 32)) == 1
    # with missing values every row of the bucket is factored (D > 4): 8 rows of 400 counted hung
    assert _chains.concurrent_runs(2, _chains.lapack_flops_per_chain(4, 6, rows_factored=512)) == 1


def test_one_component_runs_one_start_and_is_the_sample_moments(faithful):
    """With K = 1 every start gives the same fit, so the default search runs one (it ran 256 on
    Old Faithful), EM's and VB's; EM's fit is the closed-form maximum likelihood: the sample mean
    and the sample covariance with divisor N (plus ``reg_covar``)."""
    from scipy import stats

    em = bg.fit_em(faithful, 1)
    vb = bg.fit_vb(faithful, 1)
    assert em.info["n_init"] == 1 and vb.info["n_init"] == 1
    mean = faithful.mean(0)
    scatter = np.cov(faithful.T, bias=True)
    np.testing.assert_allclose(em.means[0], mean, rtol=1e-12)
    np.testing.assert_allclose(em.covariances[0], scatter + em.info["reg_covar"] * np.eye(2), rtol=1e-10)
    expected = stats.multivariate_normal(mean, scatter + em.info["reg_covar"] * np.eye(2)).logpdf(faithful).sum()
    assert em.log_likelihood == pytest.approx(expected, rel=1e-12)
    several = bg.fit_em(faithful, 1, n_init=3)
    assert several.log_likelihood == pytest.approx(em.log_likelihood, rel=1e-13)
