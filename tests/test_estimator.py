"""The scikit-learn facade: scikit-learn's own estimator checks, scikit-learn's GaussianMixture
as an oracle, Pipeline / GridSearchCV use, random_state semantics, engine dispatch, and the
fallback without scikit-learn."""

import inspect
import re
import subprocess
import sys
import textwrap
import warnings

import numpy as np
import pytest

sklearn = pytest.importorskip("sklearn", reason="the estimator facade is tested against scikit-learn")

from conftest import precision  # noqa: E402
from sklearn.exceptions import NotFittedError  # noqa: E402
from sklearn.metrics import adjusted_rand_score  # noqa: E402
from sklearn.mixture import GaussianMixture as SkGaussianMixture  # noqa: E402
from sklearn.model_selection import GridSearchCV, KFold  # noqa: E402
from sklearn.pipeline import make_pipeline  # noqa: E402
from sklearn.preprocessing import StandardScaler  # noqa: E402
from sklearn.utils.estimator_checks import parametrize_with_checks  # noqa: E402

import bayesgmm as bg  # noqa: E402
from bayesgmm import estimator as est_mod  # noqa: E402
from bayesgmm.estimator import GaussianMixture  # noqa: E402

#: The checks that fit with ``sample_weight``: scikit-learn sees it in ``fit``'s signature, which
#: every method shares; SVI, NUTS and Gibbs refuse it with a ValueError naming EM and VB.
SAMPLE_WEIGHT_CHECKS = ("check_sample_weights_pandas_series", "check_sample_weights_not_an_array",
                        "check_sample_weights_list", "check_sample_weights_shape",
                        "check_sample_weights_not_overwritten")


def _expected_failed_checks(estimator):
    """The checks of scikit-learn 1.9's suite expected to fail.

    ``check_sample_weight_equivalence_on_dense_data`` fits 15 rows of 30 features: with full
    covariances bayesgmm refuses such data, whose columns are linearly dependent, with a
    ValueError (whatever ``reg_covar``), where scikit-learn's GaussianMixture, which takes no
    sample_weight, would fit them on ``reg_covar`` alone (diagonal covariances pass it).
    ``test_sample_weight_counts_rows`` checks the equivalence from the same start. The methods
    that take no ``sample_weight`` (SVI, NUTS, Gibbs) fail :data:`SAMPLE_WEIGHT_CHECKS` too.

    Notes on the ones that could have failed: ``check_array_api_input`` skips itself unless
    ``SCIPY_ARRAY_API=1`` (bayesgmm computes in JAX and declares no array-API support, so it
    runs the NumPy-only variant at most). No check feeds constant columns, which bayesgmm
    rejects with a ValueError (its covariance would be singular) where scikit-learn's
    GaussianMixture fits them on ``reg_covar`` alone.
    """
    expected = {"check_sample_weight_equivalence_on_dense_data":
                "15 rows of 30 features: linearly dependent columns, refused for full covariances"}
    if estimator.method in ("svi", "mcmc", "gibbs"):
        reason = f"method={estimator.method!r} takes no sample_weight (fit refuses it, naming the methods that do)"
        expected.update(dict.fromkeys(SAMPLE_WEIGHT_CHECKS, reason))
    return expected


# ------------------------------------------------------------------ scikit-learn's check suite
@parametrize_with_checks([GaussianMixture(random_state=0)], expected_failed_checks=_expected_failed_checks)
def test_sklearn_estimator_checks(estimator, check):
    check(estimator)


@pytest.mark.slow
@parametrize_with_checks(
    [GaussianMixture(n_components=2, covariance_type="diag", prior="default", random_state=0)],
    expected_failed_checks=_expected_failed_checks,
)
def test_sklearn_estimator_checks_map_diag(estimator, check):
    """The same suite for a K=2 MAP-EM configuration (a second set of compiled shapes)."""
    check(estimator)


@pytest.mark.slow
@parametrize_with_checks(
    [GaussianMixture(method="vb", random_state=0),
     GaussianMixture(method="svi", random_state=0, engine_kwargs={"num_steps": 300}),
     GaussianMixture(method="mcmc", random_state=0, engine_kwargs={"num_warmup": 50, "num_samples": 50, "num_chains": 1}),
     GaussianMixture(method="gibbs", random_state=0, engine_kwargs={"num_warmup": 50, "num_samples": 50, "num_chains": 1})],
    expected_failed_checks=_expected_failed_checks,
)
def test_sklearn_estimator_checks_of_the_bayesian_methods(estimator, check):
    """The suite for VB, SVI, NUTS and Gibbs (short runs): only what the expected failures name
    fails (the sample-weight checks for the methods that take no weights)."""
    with warnings.catch_warnings():  # short runs: their convergence warnings are not under test
        warnings.simplefilter("ignore", bg.ConvergenceWarning)
        check(estimator)


# ------------------------------------------------------------------ scikit-learn as an oracle
INIT_PRECISIONS = {
    "full": np.stack([2 * np.eye(2), np.eye(2)]),
    "tied": np.eye(2),
    "diag": np.ones((2, 2)),
    "spherical": np.ones(2),
}


@pytest.mark.parametrize("covariance_type", ["full", "diag", "spherical", "tied"])
def test_matches_sklearn_from_same_start(faithful_std, covariance_type):
    """Same data, same starting parameters, both run to a tight tolerance -> scikit-learn's fixed
    point (reg_covar = 0 in both: bayesgmm's is relative to each feature's robust variance)."""
    x = np.asarray(faithful_std)
    init = dict(weights_init=np.array([0.4, 0.6]), means_init=x[[0, 1]], precisions_init=INIT_PRECISIONS[covariance_type])
    common = dict(covariance_type=covariance_type, max_iter=5000, reg_covar=0.0, random_state=0)
    ours = GaussianMixture(2, **init, tol=1e-12, **common).fit(x)
    ref = SkGaussianMixture(2, **init, tol=1e-13, **common).fit(x)

    assert ours.converged_ and ref.converged_
    if covariance_type in ("full", "tied"):
        pc = ours.precisions_cholesky_
        np.testing.assert_array_equal(pc, np.triu(pc))  # upper triangular, scikit-learn's convention
    for name in ("weights_", "means_", "covariances_", "precisions_", "precisions_cholesky_"):
        np.testing.assert_allclose(getattr(ours, name), getattr(ref, name), rtol=1e-6, atol=1e-6, err_msg=name)
        assert getattr(ours, name).shape == getattr(ref, name).shape, name
    np.testing.assert_allclose(ours.predict_proba(x), ref.predict_proba(x), atol=1e-6)
    np.testing.assert_array_equal(ours.predict(x), ref.predict(x))
    np.testing.assert_allclose(ours.score_samples(x), ref.score_samples(x), atol=1e-6)
    np.testing.assert_allclose(ours.score(x), ref.score(x), atol=1e-9)
    np.testing.assert_allclose(ours.bic(x), ref.bic(x), rtol=1e-10)
    np.testing.assert_allclose(ours.aic(x), ref.aic(x), rtol=1e-10)
    # ours at the returned parameters (scikit-learn's score there), scikit-learn's one E-step earlier
    np.testing.assert_allclose(ours.lower_bound_, ref.score(x), atol=1e-9)
    assert ref.lower_bound_ <= ours.lower_bound_ + 1e-12
    assert ours.lower_bounds_[-1] == ours.lower_bound_ == ours.result_.log_likelihood / len(x)
    assert ours.lower_bounds_.shape == (ours.n_iter_,)
    assert np.all(np.diff(ours.lower_bounds_) >= -1e-12)  # EM never decreases the likelihood


# ------------------------------------------------------------------ composition
@pytest.fixture(scope="module")
def blobs():
    """Three well-separated Gaussian clusters (N=600, D=2), simulated with NumPy."""
    rng = np.random.default_rng(11)
    centres = np.array([[-6.0, 0.0], [6.0, 0.0], [0.0, 9.0]])
    labels = np.repeat(np.arange(3), 200)
    x = centres[labels] + rng.normal(size=(600, 2)) * np.array([1.0, 1.5])
    perm = rng.permutation(600)
    return x[perm], labels[perm]


def test_pipeline_scaling_is_a_change_of_variables(blobs):
    """Pipeline(StandardScaler, GaussianMixture): densities differ from a fit on the raw data by
    exactly the scaler's log-Jacobian (bayesgmm's fits do not depend on units), and the labels
    recover the simulated truth."""
    x, labels = blobs[0][:400], blobs[1][:400]  # 400 rows: the shape GridSearchCV below trains on
    x = x * np.array([1000.0, 0.01]) + np.array([5.0, -3.0])  # very different units
    pipe = make_pipeline(StandardScaler(), GaussianMixture(3, random_state=0)).fit(x)
    raw = GaussianMixture(3, random_state=0).fit(x)
    log_jac = np.sum(np.log(pipe[0].scale_))
    np.testing.assert_allclose(pipe.score(x) - log_jac, raw.score(x), rtol=0, atol=1e-8)
    # the same fit up to the order of the components (the search may keep another of its equal runs)
    a, b = pipe.predict_proba(x), raw.predict_proba(x)
    perm = np.argmax(a.T @ b, axis=1)
    assert sorted(perm) == [0, 1, 2]
    np.testing.assert_allclose(a, b[:, perm], atol=1e-8)
    assert adjusted_rand_score(labels, pipe.predict(x)) > 0.95


def test_grid_search_over_n_components_agrees_with_sklearn(blobs):
    """GridSearchCV with the default score (held-out mean log-likelihood) picks the true K=3,
    with held-out scores equal to scikit-learn's where the optimum is unique (K=1, K=3)."""
    cv = KFold(3, shuffle=True, random_state=0)
    grid = {"n_components": [1, 2, 3]}
    ours = GridSearchCV(GaussianMixture(random_state=0), grid, cv=cv).fit(blobs[0])
    ref = GridSearchCV(SkGaussianMixture(random_state=0), grid, cv=cv).fit(blobs[0])
    assert ours.best_params_ == {"n_components": 3} == ref.best_params_
    ours_scores, ref_scores = ours.cv_results_["mean_test_score"], ref.cv_results_["mean_test_score"]
    np.testing.assert_allclose(ours_scores[[0, 2]], ref_scores[[0, 2]], atol=1e-4)
    assert isinstance(ours.best_estimator_.result_, bg.FitResult)


# ------------------------------------------------------------------ randomness
def test_integer_random_state_is_the_engine_seed(faithful):
    m = GaussianMixture(2, init_params="random", random_state=5).fit(faithful)
    r = bg.fit_em(faithful, 2, init_params="random", seed=5)
    np.testing.assert_array_equal(m.means_, r.means)
    np.testing.assert_array_equal(m.covariances_, r.covariances)
    assert m.seed_ == 5


def test_random_state_none_and_instances(faithful):
    np.random.seed(123)
    a = GaussianMixture(2, init_params="random").fit(faithful)
    np.random.seed(123)
    b = GaussianMixture(2, init_params="random").fit(faithful)
    assert a.seed_ == b.seed_  # drawn from NumPy's global state, as scikit-learn
    again = GaussianMixture(2, init_params="random", random_state=a.seed_).fit(faithful)
    np.testing.assert_array_equal(again.means_, a.means_)  # seed_ reproduces a None fit
    c = GaussianMixture(2, random_state=np.random.RandomState(7)).fit(faithful)
    d = GaussianMixture(2, random_state=np.random.RandomState(7)).fit(faithful)
    assert c.seed_ == d.seed_ == np.random.RandomState(7).randint(0, np.iinfo(np.int32).max)
    e = GaussianMixture(2, random_state=np.random.default_rng(7)).fit(faithful)
    assert e.seed_ == np.random.default_rng(7).integers(0, np.iinfo(np.int32).max)
    for bad in (-1, 2**32, "0", 1.5):
        with pytest.raises(ValueError, match="random_state must be"):
            GaussianMixture(2, random_state=bad).fit(faithful)


def test_sample_follows_the_fitted_mixture(faithful):
    """Component frequencies and per-component means of 20000 draws match the fitted mixture
    within 4 Monte Carlo standard errors; an int random_state gives the same draws each call."""
    m = GaussianMixture(2, random_state=0).fit(faithful)
    n = 20_000
    xs, ys = m.sample(n)
    assert xs.shape == (n, 2) and ys.shape == (n,) and xs.dtype == np.float64
    assert set(np.unique(ys)) <= {0, 1}
    freq = np.bincount(ys, minlength=2) / n
    assert np.all(np.abs(freq - m.weights_) < 4 * np.sqrt(m.weights_ * (1 - m.weights_) / n))
    for k in range(2):
        xk = xs[ys == k]
        se = np.sqrt(np.diag(m.covariances_[k]) / len(xk))
        assert np.all(np.abs(xk.mean(0) - m.means_[k]) < 4 * se)
    xs2, ys2 = m.sample(n)
    np.testing.assert_array_equal(xs, xs2)
    np.testing.assert_array_equal(ys, ys2)
    with pytest.raises(ValueError, match="n_samples"):
        m.sample(0)
    # sample reads the fit, as predict and score do: an edited attribute changes none of them
    before = m.predict(faithful)
    m.means_ = m.means_ + 100.0
    np.testing.assert_array_equal(m.sample(n)[0], xs)
    np.testing.assert_array_equal(m.predict(faithful), before)


# ------------------------------------------------------------------ attributes and inputs
def test_dataframe_feature_names_reach_the_result_and_arviz(faithful):
    pd = pytest.importorskip("pandas")
    df = pd.DataFrame(faithful, columns=["eruptions", "waiting"])
    m = GaussianMixture(2, random_state=0).fit(df)
    assert list(m.feature_names_in_) == ["eruptions", "waiting"]
    assert m.n_features_in_ == 2
    assert m.result_.feature_names == ("eruptions", "waiting")
    idata = m.result_.to_inference_data()
    assert list(idata.posterior["feature"].values) == ["eruptions", "waiting"]
    np.testing.assert_array_equal(idata.posterior["means"].values[0, 0], m.means_)
    with pytest.raises(ValueError, match="feature names"):
        m.predict(df.rename(columns={"waiting": "wait"}))


def test_prior_default_is_map_em(faithful):
    m = GaussianMixture(2, prior="default", random_state=0).fit(faithful)
    r = bg.fit_em(faithful, 2, prior=bg.Prior.default(faithful, 2), seed=0)
    assert m.result_.method == "map-em" and r.method == "map-em"
    np.testing.assert_array_equal(m.means_, r.means)
    assert m.lower_bound_ == r.trace[-1] / len(faithful) == r.info["objective_value"] / len(faithful)  # the log posterior


def test_degenerate_components_are_an_attribute(faithful):
    """The flag was only in the warning and ``result_``: ties that collapse a component (100 rows
    of four distinct values, K = 3) show in ``degenerate_components_``; a regular fit's is empty."""
    ties = np.repeat([1.0, 2.0, 3.0, 5.0], 25).reshape(-1, 1)
    with pytest.warns(bg.DegenerateComponentWarning):
        est = GaussianMixture(n_components=3, random_state=0).fit(ties)
    assert est.degenerate_components_ and est.degenerate_components_ == est.result_.degenerate_components
    assert GaussianMixture(n_components=2, random_state=0).fit(faithful).degenerate_components_ == ()


def test_errors_name_the_problem(faithful):
    m = GaussianMixture(2, random_state=0)
    with pytest.raises(NotFittedError):
        m.predict(faithful)
    with pytest.raises(NotFittedError):
        m.sample(3)
    with pytest.raises(ValueError, match="method must be one of"):
        GaussianMixture(2, method="metropolis").fit(faithful)
    with pytest.raises(ValueError, match="n_components must be a positive integer"):
        GaussianMixture(0).fit(faithful)
    with pytest.raises(ValueError, match="Expected n_samples >= n_components"):
        GaussianMixture(3).fit(faithful[:2])
    with pytest.raises(ValueError, match="covariance_type must be one of"):
        GaussianMixture(2, covariance_type="banded").fit(faithful)
    with pytest.raises(ValueError, match="prior must be None, 'default' or a bayesgmm.Prior"):
        GaussianMixture(2, prior="mclust").fit(faithful)
    with pytest.raises(ValueError, match="engine_kwargs must be a dict"):
        GaussianMixture(2, engine_kwargs=[("hard", True)]).fit(faithful)
    with pytest.raises(ValueError, match="engine_kwargs must not set 'max_iter'"):
        GaussianMixture(2, engine_kwargs={"max_iter": 5}).fit(faithful)
    with pytest.raises(ValueError, match="'num_samples' is not an option of method='em'.*hard"):
        GaussianMixture(2, engine_kwargs={"num_samples": 5}).fit(faithful)
    fitted = GaussianMixture(2, random_state=0).fit(faithful)
    with pytest.raises(ValueError, match="X has 3 features, but GaussianMixture is expecting 2"):
        fitted.predict(np.ones((4, 3)))
    with pytest.raises(ValueError, match="NaN"):
        fitted.score_samples(np.array([[np.nan, 1.0]]))
    # a documented difference from scikit-learn: constant columns are rejected, not fitted on reg_covar
    with pytest.raises(ValueError, match="constant column"):
        GaussianMixture(1).fit(np.column_stack([faithful[:, 0], np.ones(len(faithful))]))


# ------------------------------------------------------------------ scikit-learn's whole constructor
def test_takes_every_sklearn_parameter():
    ours = set(inspect.signature(GaussianMixture).parameters)
    theirs = set(inspect.signature(SkGaussianMixture).parameters)
    assert theirs <= ours, theirs - ours


def test_init_parameters_are_checked_as_sklearn_checks_them(faithful_std):
    x = np.asarray(faithful_std)
    for params, message in [
        (dict(weights_init=np.ones((2, 1)) / 2), "The parameter 'weights' should have the shape of (2,)"),
        (dict(weights_init=[1.5, -0.5]), "should be in the range [0, 1], but got max value 1.50000, min value -0.50000"),
        (dict(weights_init=[0.3, 0.3]), "should be normalized, but got sum(weights) = 0.60000"),
        (dict(means_init=np.zeros((3, 2))), "The parameter 'means' should have the shape of (2, 2)"),
        (dict(precisions_init=np.ones((2, 2))), "The parameter 'full precision' should have the shape of (2, 2, 2)"),
        (dict(precisions_init=np.stack([np.eye(2), -np.eye(2)])), "'full precision' should be symmetric, positive-definite"),
        (dict(precisions_init=np.array([1.0, 0.0]), covariance_type="spherical"), "'spherical precision' should be positive"),
    ]:
        with pytest.raises(ValueError, match=re.escape(message)):
            GaussianMixture(2, random_state=0, **params).fit(x)


def test_max_iter_zero_returns_the_initialisation(faithful_std):
    x = np.asarray(faithful_std)
    means = np.array([[-1.0, -1.0], [1.0, 1.0]])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # an initialisation is not a failure to converge
        m = GaussianMixture(2, max_iter=0, means_init=means, random_state=0).fit(x)
    np.testing.assert_allclose(m.means_, means, rtol=1e-12)
    assert m.n_iter_ == 0 and not m.converged_
    assert m.lower_bound_ == -np.inf and m.lower_bounds_.shape == (0,)  # scikit-learn's, after no iteration


def test_convergence_warning_is_sklearns_and_bayesgmms(faithful_std):
    from sklearn.exceptions import ConvergenceWarning as SkConvergenceWarning

    x = np.asarray(faithful_std)
    m = GaussianMixture(2, max_iter=2, n_init=1, random_state=0)
    with pytest.warns(SkConvergenceWarning, match="Best performing initialization did not converge") as record:
        m.fit(x)
    assert all(issubclass(w.category, bg.ConvergenceWarning) for w in record if "converge" in str(w.message))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        warnings.simplefilter("ignore", SkConvergenceWarning)  # a scikit-learn user's filter silences it
        m.fit(x)


def test_lower_bound_is_the_float64_objective_at_the_returned_parameters(faithful_std):
    """A review: the bound was scikit-learn's, the compiled program's float32 objective one
    E-step before the returned parameters, 5.9e-6 a row from a float64 value where the last
    update gained 1.6e-8, and so not monotone over iterations or warm starts. It is the float64
    objective at the returned parameters: ``score(X)``, in any compute precision."""
    x = np.asarray(faithful_std)
    m = GaussianMixture(2, max_iter=3, n_init=1, random_state=0)
    with pytest.warns(bg.ConvergenceWarning):
        m.fit(x)
    trace = m.result_.trace / len(x)  # trace[t]: the objective after t updates
    assert m.n_iter_ == 3 and m.lower_bounds_.shape == (3,)
    np.testing.assert_array_equal(m.lower_bounds_, trace[1:4])
    assert m.lower_bound_ == trace[3] == m.score(x)
    rng = np.random.default_rng(0)
    data = np.vstack([rng.normal(mu, sd, (200, 3)) for mu, sd in [(0, 1), (5, 0.5), (-4, 2)]])
    with precision("float32"):
        fit = GaussianMixture(3, covariance_type="diag", random_state=0).fit(data)
    assert fit.result_.info["dtype"] == "float32"
    assert fit.lower_bound_ == pytest.approx(fit.score(data), rel=1e-13)


def test_warm_start_continues_the_previous_fit(faithful_std):
    """Two warm-started fits of one iteration are one fit of two; repeated ones converge."""
    x = np.asarray(faithful_std)
    common = dict(n_init=1, reg_covar=0.0, random_state=3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", bg.ConvergenceWarning)
        g = GaussianMixture(2, max_iter=2, **common).fit(x)
        h = GaussianMixture(2, max_iter=1, warm_start=True, **common)
        score1 = h.fit(x).score(x)
        score2 = h.fit(x).score(x)
        np.testing.assert_allclose(h.means_, g.means_, rtol=1e-9)
        np.testing.assert_allclose(h.covariances_, g.covariances_, rtol=1e-9)
        assert score2 > score1
        for fits in range(1, 200):  # noqa: B007 (the number of fits is read after the loop)
            h.fit(x)
            if h.converged_:
                break
    assert h.converged_ and h.n_iter_ == 1
    full = GaussianMixture(2, max_iter=1000, tol=1e-5, **common).fit(x)
    assert full.converged_
    np.testing.assert_allclose(h.score(x), full.score(x), atol=1e-5)
    np.testing.assert_allclose(fits + 2, full.n_iter_, atol=3)  # about as many updates as in one fit


def test_warm_start_after_another_method_starts_afresh_and_a_refused_one_changes_nothing(faithful_std):
    """An EM warm start after a VB fit raised AttributeError (no EM history to continue): it is a
    cold start, the fit a new estimator makes. A warm start refused for a changed number of
    features left ``n_features_in_`` at the new data's, so the fitted model refused its own data."""
    x = np.asarray(faithful_std)
    h = GaussianMixture(2, method="vb", random_state=0).fit(x)
    h.set_params(method="em", warm_start=True).fit(x)
    cold = GaussianMixture(2, random_state=0).fit(x)
    np.testing.assert_array_equal(h.means_, cold.means_)
    assert h.n_iter_ == cold.n_iter_
    with pytest.raises(ValueError, match="warm_start=True continues the previous fit"):
        h.fit(np.column_stack([x, x[:, :1]]))
    assert h.n_features_in_ == 2
    np.testing.assert_array_equal(h.predict(x), cold.predict(x))


def test_missing_values_are_declared_in_the_tags():
    """scikit-learn's tags say NaN is allowed exactly when ``missing="marginalize"`` takes it (a
    meta-estimator, and scikit-learn's suite, read them)."""
    assert GaussianMixture(missing="marginalize").__sklearn_tags__().input_tags.allow_nan
    assert not GaussianMixture().__sklearn_tags__().input_tags.allow_nan


@pytest.mark.slow
@parametrize_with_checks([GaussianMixture(missing="marginalize", random_state=0)],
                         expected_failed_checks=_expected_failed_checks)
def test_sklearn_estimator_checks_with_missing_values(estimator, check):
    """The suite for the configuration that takes NaN (its NaN checks follow the tags)."""
    check(estimator)


def test_warm_started_float32_fits_stay_converged_without_warning(faithful):
    """float32 warm starts of one iteration: at the fixed point the float64 history moves by
    rounding (1e-8 up and down, under a precision floor of 1e-4), which once flipped
    ``converged_`` back to False; and every fit warned that it had not converged, those judged
    converged too."""
    from conftest import precision

    with precision(np.float32):
        h = GaussianMixture(2, max_iter=1, warm_start=True, n_init=1, random_state=0)
        states = []
        for _ in range(14):
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                h.fit(np.asarray(faithful, np.float32))
            warned = any(issubclass(w.category, bg.ConvergenceWarning) for w in caught)
            assert warned != h.converged_, (h.converged_, [str(w.message) for w in caught])
            states.append(h.converged_)
    first = states.index(True)
    assert first < 8 and all(states[first:]), states


def test_sample_weight_counts_rows(faithful_std):
    """fit(X, sample_weight=w): weight 2 is the row twice, lower_bound_ included (it was the
    weighted total over the row count, when passed through engine_kwargs); cross-validation
    slices the weights per fold."""
    from sklearn.model_selection import cross_val_score

    x = np.asarray(faithful_std)
    w = np.where(np.arange(len(x)) % 3 == 0, 2.0, 1.0)
    twice = np.concatenate([x, x[w == 2.0]])
    start = dict(means_init=x[[0, 5]], weights_init=[0.5, 0.5], n_init=1, tol=1e-10, max_iter=500, random_state=0)
    for method in ("em", "vb"):
        kw = start if method == "em" else dict(random_state=0)
        weighted = GaussianMixture(2, method=method, **kw).fit(x, sample_weight=w)
        if method == "em":
            repeated = GaussianMixture(2, **kw).fit(twice)
            np.testing.assert_allclose(weighted.means_, repeated.means_, rtol=1e-7)
            np.testing.assert_allclose(weighted.lower_bound_, repeated.lower_bound_, rtol=1e-9)
        total = weighted.result_.log_likelihood if method == "em" else weighted.result_.trace[-1]  # VB: the ELBO
        assert weighted.lower_bound_ == pytest.approx(total / w.sum(), rel=1e-6)
        unweighted = GaussianMixture(2, method=method, **kw).fit(x)
        assert abs(unweighted.lower_bound_ - weighted.lower_bound_) > 1e-3  # the weights were used
    # prior="default": the prior of the weighted rows, as fit_em's with Prior.default(..., sample_weight=w)
    map_fit = GaussianMixture(2, prior="default", **start).fit(x, sample_weight=w)
    direct = bg.fit_em(x, 2, prior=bg.Prior.default(x, 2, sample_weight=w), sample_weight=w, seed=0,
                       **{k: v for k, v in start.items() if k != "random_state"})
    np.testing.assert_array_equal(map_fit.means_, direct.means)
    folds = cross_val_score(GaussianMixture(2, n_init=1, random_state=0), x, cv=KFold(3), params={"sample_weight": w})
    assert np.all(np.isfinite(folds))
    with pytest.raises(ValueError, match=r"does not take sample_weight; the methods that do: \['em', 'vb'\]"):
        GaussianMixture(2, method="mcmc").fit(x, sample_weight=w)
    with pytest.raises(ValueError, match=r"pass it to fit"):
        GaussianMixture(2, engine_kwargs={"sample_weight": w}).fit(x)


def test_verbose_prints_progress(faithful_std, capsys):
    GaussianMixture(2, n_init=1, random_state=0, verbose=2, verbose_interval=2).fit(np.asarray(faithful_std))
    out = capsys.readouterr().out
    assert "Iteration 2" in out and "Iteration 4" in out and "converged" in out


def test_n_parameters_is_sklearns(faithful_std):
    x = np.asarray(faithful_std)
    for ct in ("full", "tied", "diag", "spherical"):
        ours = GaussianMixture(2, covariance_type=ct, n_init=1, random_state=0).fit(x)
        theirs = SkGaussianMixture(2, covariance_type=ct, random_state=0).fit(x)
        assert ours._n_parameters() == theirs._n_parameters()


def test_sample_sizes_share_one_compiled_sampler(faithful):
    from conftest import CompileCounter

    m = GaussianMixture(2, random_state=0).fit(faithful)
    m.sample(3)
    with CompileCounter() as counter:
        shapes = [m.sample(n)[0].shape for n in range(1, 60)]
    assert shapes == [(n, 2) for n in range(1, 60)]
    assert counter.compiles == 0
    from conftest import precision

    with precision(np.float32):  # drawn in float64 either way: a random_state gives the same rows
        rows32 = m.sample(5)
    for a, b in zip(rows32, m.sample(5)):
        np.testing.assert_array_equal(a, b)


# ------------------------------------------------------------------ dispatch to the engines
def test_dispatch_passes_only_what_the_engine_takes(monkeypatch, faithful):
    """A stand-in engine with a NumPyro-style signature: the estimator passes the parameters it
    accepts plus engine_kwargs, and warns about non-default parameters it would drop."""
    calls = []

    def fake_engine(x, num_components, *, covariance_type="full", prior=None, num_samples=10, seed=0):
        calls.append(dict(covariance_type=covariance_type, prior=prior, num_samples=num_samples, seed=seed))
        return bg.fit_em(x, num_components, covariance_type=covariance_type, seed=seed)

    monkeypatch.setattr(est_mod, "_engine", lambda method: fake_engine)
    m = GaussianMixture(2, method="mcmc", covariance_type="diag", random_state=3, engine_kwargs={"num_samples": 7})
    m.fit(faithful)
    assert calls[-1] == dict(covariance_type="diag", prior=None, num_samples=7, seed=3)
    assert m.result_.covariance_type == "diag" and m.covariances_.shape == (2, 2)
    with pytest.warns(UserWarning, match=r"does not take \['tol', 'max_iter'\]"):
        GaussianMixture(2, method="mcmc", tol=1e-5, max_iter=500, random_state=0).fit(faithful)
    prior = bg.Prior.default(faithful, 2)
    GaussianMixture(2, method="mcmc", prior=prior, random_state=0).fit(faithful)
    assert calls[-1]["prior"] is prior


ENGINE_OPTIONS = {
    "vb": {},
    "svi": {"num_steps": 300},
    "mcmc": {"num_warmup": 100, "num_samples": 100, "num_chains": 1},
}


def _check_engine_facade(method, x):
    module = pytest.importorskip(
        f"bayesgmm.{method}", reason=f"bayesgmm.{method} is being written by another helper; test it once it exists"
    )
    fit_fn = getattr(module, f"fit_{method}")
    accepted = inspect.signature(fit_fn).parameters
    options = {k: v for k, v in ENGINE_OPTIONS[method].items() if k in accepted}
    m = GaussianMixture(2, method=method, covariance_type="full", random_state=0, engine_kwargs=options or None)
    m.fit(x)
    r = fit_fn(x, 2, covariance_type="full", seed=0, **options)
    assert m.result_.method == r.method == method
    np.testing.assert_array_equal(m.weights_, r.weights)  # same seed, same result, bit for bit
    np.testing.assert_array_equal(m.means_, r.means)
    np.testing.assert_allclose(m.score_samples(x), r.score_samples(x))
    np.testing.assert_allclose(m.predict_proba(x).sum(1), 1.0)
    return m, r


def test_vb_facade(faithful_std):
    m, r = _check_engine_facade("vb", np.asarray(faithful_std)[:120])
    np.testing.assert_allclose(m.lower_bound_, r.info["elbo"] / 120)  # the complete ELBO per obs


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::bayesgmm.params.ConvergenceWarning")  # 100 draws: R-hat/ESS may warn
@pytest.mark.parametrize("method", ["svi", "mcmc"])
def test_numpyro_engine_facade(faithful_std, method):
    x = np.asarray(faithful_std)[:100]
    m, r = _check_engine_facade(method, x)
    if method == "mcmc":  # a sampler has no bound: the mean training log-likelihood instead
        np.testing.assert_allclose(m.lower_bound_, r.log_likelihood / 100)
        assert m.lower_bounds_.shape == (100,)  # log posterior of each of the 100 draws


# ------------------------------------------------------------------ without scikit-learn
def test_works_without_sklearn():
    """With scikit-learn unimportable, the class is a plain object with the same methods."""
    code = textwrap.dedent(
        """
        import sys
        sys.modules["sklearn"] = None  # make `import sklearn` fail
        import numpy as np
        import bayesgmm as bg
        from bayesgmm import estimator as e
        assert not e.HAVE_SKLEARN
        assert issubclass(e.ConvergenceWarning, bg.ConvergenceWarning)
        x = bg.datasets.load_faithful()
        m = e.GaussianMixture(2, random_state=0)
        try:
            m.predict(x)
        except e.NotFittedError:
            pass
        else:
            raise AssertionError("expected NotFittedError")
        assert m.get_params()["n_components"] == 2
        m.set_params(n_components=3, covariance_type="diag")
        m.fit(x)
        r = bg.fit_em(x, 3, covariance_type="diag", seed=0)
        assert np.array_equal(m.means_, r.means) and m.n_features_in_ == 2
        assert np.array_equal(m.predict(x), r.predict(x))
        for call, message in [
            (lambda: m.predict(np.ones((3, 5))), "5 feature(s)"),
            (lambda: m.set_params(bogus=1), "Invalid parameter 'bogus'"),
        ]:
            try:
                call()
            except ValueError as err:
                assert message in str(err), str(err)
            else:
                raise AssertionError("expected ValueError: " + message)
        # a DataFrame's columns by name, as FitResult matches them (they were taken by position)
        frame = bg.datasets.load_faithful(as_frame=True)
        named = e.GaussianMixture(2, random_state=0).fit(frame)
        assert np.array_equal(named.predict(frame[["waiting", "eruptions"]]), named.predict(frame))
        try:
            named.predict(frame.rename(columns={"waiting": "wait"}))
        except ValueError as err:
            assert "wait" in str(err), str(err)
        else:
            raise AssertionError("expected ValueError: an unknown column")
        assert "sklearn" not in [k for k, v in sys.modules.items() if v is not None]
        print("ok")
        """
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"


def test_package_attribute_is_this_class():
    """``bayesgmm.GaussianMixture`` (lazy, so `import bayesgmm` does not import scikit-learn)."""
    if "GaussianMixture" not in bg.__all__:
        pytest.skip("bayesgmm/__init__.py does not export GaussianMixture yet (owned by the lead session)")
    assert bg.GaussianMixture is GaussianMixture


def test_infinite_or_non_numeric_input_is_refused_with_the_fix():
    """scikit-learn's messages passed through named the problem but not the fix (review of the
    estimator): an infinite entry now says to remove it or mark it missing, a text column is
    named; scikit-learn's own words stay first (its checks match them)."""
    x = np.random.default_rng(0).normal(size=(50, 2))
    x[3, 1] = np.inf
    with pytest.raises(ValueError, match=r"Input X contains infinity.*missing='marginalize'"):
        GaussianMixture(2).fit(x)
    import pandas as pd

    frame = pd.DataFrame({"a": np.arange(50.0), "b": ["x"] * 50})
    with pytest.raises(ValueError, match=r"could not convert string to float.*non-numeric column\(s\) \['b'\]"):
        GaussianMixture(2).fit(frame)
