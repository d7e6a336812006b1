"""The engine registry is the one table every entry point reads (issue 12)."""

import inspect

import numpy as np
import pytest

import bayesgmm as bg
from bayesgmm import calibration, cli, estimator, experiments
from bayesgmm.engines import ENGINES, get_engine
from bayesgmm.params import COVARIANCE_MODELS, COVARIANCE_TYPES


def test_every_entry_point_lists_the_registry():
    names = tuple(ENGINES)
    assert cli.ENGINES == names
    assert experiments.METHODS == names + ("kmeans",)
    assert estimator.METHODS == tuple(n for n in names if n != "map-em")
    assert calibration.METHODS == tuple(n for n, e in ENGINES.items() if e.draws)
    assert inspect.signature(bg.GaussianMixture).parameters["method"].default in names


@pytest.mark.parametrize("name", list(ENGINES))
def test_each_row_loads_the_public_fit_function(name):
    engine = ENGINES[name]
    assert engine.load() is getattr(bg, engine.function)
    # EM takes mclust's 14 models too; MAP-EM the four the conjugate prior fits (by either name); the others
    # scikit-learn's structures only
    mclust = {"em": set(COVARIANCE_MODELS), "map-em": {"VII", "VVI", "EEE", "VVV"}}.get(name, set())
    assert set(engine.covariance_types) - set(COVARIANCE_TYPES) == mclust


@pytest.mark.parametrize("name", [n for n, e in ENGINES.items() if set(e.covariance_types) != set(COVARIANCE_TYPES)])
def test_a_structure_outside_the_row_is_refused_by_the_engine_itself(name, faithful):
    """The registry's covariance types are the engine's own: what it leaves out, the fit refuses."""
    engine = ENGINES[name]
    for ct in sorted(set(COVARIANCE_TYPES) - set(engine.covariance_types)):
        with pytest.raises(ValueError, match=ct):
            engine.load()(faithful, 2, covariance_type=ct)


def test_engines_without_draws_are_refused_where_draws_are_needed(faithful):
    prior = bg.Prior.default(faithful, 2)
    with pytest.raises(ValueError, match="'em' gives a point estimate"):
        bg.sbc(2, 20, method="em", prior=prior, num_replications=2)
    with pytest.raises(ValueError, match="for Bayesian model comparison, got 'map-em'"):
        bg.select_bayesian(faithful, [1, 2], method="map-em")
    with pytest.raises(ValueError, match="is not supported by method 'vb'.*'mcmc'"):
        bg.select_bayesian(faithful, [1, 2], method="vb", covariance_type="tied")
    with pytest.raises(ValueError, match="method must be one of"):
        get_engine("hamiltonian")


def test_registry_is_read_only():
    with pytest.raises(TypeError):
        ENGINES["new"] = ENGINES["em"]
    with pytest.raises(AttributeError):
        ENGINES["em"].draws = True
    assert np.all([isinstance(e.options, type(ENGINES)) for e in ENGINES.values()])
