"""Bundled data and simulation from the model."""

import numpy as np
import pytest
from scipy import stats

import bayesgmm as bg


def test_bundled_data_match_their_provenance():
    x = bg.datasets.load_faithful()
    assert x.shape == (272, 2)
    np.testing.assert_allclose(x.mean(0), [3.487783, 70.897059], atol=1e-6)
    df = bg.datasets.load_faithful(as_frame=True)
    assert list(df.columns) == ["eruptions", "waiting"]
    g = bg.datasets.load_galaxies()
    assert g.shape == (82, 1) and g.min() == 9172 and g.max() == 34279


@pytest.mark.parametrize("covariance_type", ["full", "diag", "spherical", "tied"])
def test_make_mixture_draws_from_the_stated_parameters(covariance_type):
    data = bg.datasets.make_mixture(20000, 3, 2, covariance_type=covariance_type, seed=4)
    w, m, c = data.params
    full = bg.FitResult(
        "truth", covariance_type, w, m, c, 0.0, True, 0, np.zeros(1), "log_likelihood", ("a", "b"), 1
    ).full_covariances
    counts = np.bincount(data.labels, minlength=3)
    # label frequencies: chi-square goodness of fit against the weights
    assert stats.chisquare(counts, 20000 * w).pvalue > 1e-3
    for k in range(3):
        xk = data.x[data.labels == k]
        se = np.sqrt(np.diag(full[k]) / len(xk))
        assert np.all(np.abs(xk.mean(0) - m[k]) < 4.5 * se)
        np.testing.assert_allclose(np.cov(xk.T), full[k], atol=6 * np.sqrt(2 / len(xk)) * full[k].diagonal().max())
    again = bg.datasets.make_mixture(20000, 3, 2, covariance_type=covariance_type, seed=4)
    assert np.array_equal(again.x, data.x)


def test_make_mixture_refuses_sizes_and_a_separation_it_cannot_draw():
    """A separation of 1e300 returned rows of +-inf (float32 draws; float64 ones too beyond 1e308)
    with only a cast warning; a float num_obs was taken. Weights within rounding of a sum of 1
    are stored normalised; a loader's ``as_frame="no"`` returned a DataFrame."""
    with pytest.raises(ValueError, match="separation=1e\\+308 puts the component means beyond what float64"):
        bg.datasets.make_mixture(50, 2, 2, separation=1e308)
    for kw, match in ((dict(num_obs=10.0), "num_obs must be a positive integer"),
                      (dict(num_features=0), "num_features must be a positive integer"),
                      (dict(weights="abc"), r"weights must be a probability vector of shape \(3,\)"),
                      (dict(separation="2"), "separation must be a finite number")):
        with pytest.raises(ValueError, match=match):
            bg.datasets.make_mixture(**{"num_obs": 50, **kw})
    assert bg.datasets.make_mixture(5, separation=np.array(2.0)).x.shape == (5, 2)  # a 0-d array is a number
    nearly = bg.datasets.make_mixture(5, weights=[0.3, 0.3, 0.400009]).params.weights
    assert nearly.sum() == 1.0 and nearly[0] == pytest.approx(0.3 / 1.000009, rel=1e-15)
    with pytest.raises(ValueError, match="as_frame must be True or False, got 'no'"):
        bg.datasets.load_faithful(as_frame="no")


def test_make_mixture_draws_the_same_rows_whatever_jaxs_default_float():
    """The rows were drawn in JAX's default float: a seed gave other data with x64 off (as users run)
    than on (as the suite runs; a third of the labels agreed at N = 2000), and in float32 means of
    1e8 left three distinct values among 10,000 draws of unit spread (variance 0.07 for 1.4)."""
    from conftest import precision

    with precision(np.float32):
        off = bg.datasets.make_mixture(2000, 3, 2, seed=0)
        far = bg.datasets.make_mixture(20000, 2, 2, covariance_type="spherical", separation=1e8, seed=0)
    on = bg.datasets.make_mixture(2000, 3, 2, seed=0)
    np.testing.assert_array_equal(off.x, on.x)
    np.testing.assert_array_equal(off.labels, on.labels)
    for k in range(2):
        rows = far.x[far.labels == k]
        assert len(np.unique(rows[:, 0])) > 0.99 * len(rows)  # float32: three distinct values
        spread = np.var(rows, axis=0, ddof=1) / far.params.covariances[k]
        assert np.all(np.abs(spread - 1) < 5 * np.sqrt(2 / len(rows)))  # the variance within Monte Carlo error


def test_make_mixture_of_another_size_compiles_nothing_and_draws_the_same_first_rows():
    """Simulation studies over N: every N in a row bucket shares one compiled simulation, and a
    smaller N draws the first rows of a larger one (the same seed: the same parameters)."""
    from conftest import CompileCounter

    larger = bg.datasets.make_mixture(1500, 3, 2, seed=11)
    with CompileCounter() as counter:
        smaller = bg.datasets.make_mixture(1100, 3, 2, seed=11)
    assert counter.compiles == 0
    assert smaller.x.shape == (1100, 2) and smaller.labels.shape == (1100,)
    np.testing.assert_array_equal(smaller.x, larger.x[:1100])
    np.testing.assert_array_equal(smaller.labels, larger.labels[:1100])
