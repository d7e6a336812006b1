"""Data parallelism: EM and VB with the rows sharded over 4 (forced) CPU devices equal the
single-device fits. JAX fixes its device count at start-up, so each check runs in a fresh
interpreter with ``XLA_FLAGS=--xla_force_host_platform_device_count=4``."""

import json
import os
import subprocess
import sys
import textwrap

import pytest

SCRIPT = textwrap.dedent(
    """
    import json, warnings
    import jax
    jax.config.update("jax_enable_x64", True)
    import numpy as np
    import bayesgmm as bg

    assert len(jax.devices()) == 4, jax.devices()
    data = bg.datasets.make_mixture(1001, 3, 2, separation=4.0, seed=1)   # 1001 rows: padded to 1004
    out = {}
    for ct in ("full", "diag", "spherical", "tied"):
        one = bg.fit_em(data.x, 3, covariance_type=ct, n_init=3, seed=0)
        four = bg.fit_em(data.x, 3, covariance_type=ct, n_init=3, seed=0, devices="all")
        out["em_" + ct] = dict(ll=[one.log_likelihood, four.log_likelihood], n_iter=[one.n_iter, four.n_iter],
                               means=float(np.abs(one.means - four.means).max()), devices=four.info["num_devices"])
    prior = bg.Prior.default(data.x, 3)
    one = bg.fit_em(data.x, 3, prior=prior, seed=0)
    two = bg.fit_em(data.x, 3, prior=prior, seed=0, devices=2)
    out["map"] = dict(ll=[one.log_likelihood, two.log_likelihood], n_iter=[one.n_iter, two.n_iter],
                      means=float(np.abs(one.means - two.means).max()), devices=two.info["num_devices"])
    for ct in ("full", "diag"):
        one = bg.fit_vb(data.x, 3, covariance_type=ct, seed=0, n_init=2)
        four = bg.fit_vb(data.x, 3, covariance_type=ct, seed=0, n_init=2, devices=jax.devices())
        out["vb_" + ct] = dict(ll=[one.info["elbo"], four.info["elbo"]], n_iter=[one.n_iter, four.n_iter],
                               means=float(np.abs(one.means - four.means).max()), devices=four.info["num_devices"])
    # one-hot starts on random rows: the padded, weighted draw must pick the same rows
    one = bg.fit_em(data.x, 3, init_params="random_from_data", seed=1)
    four = bg.fit_em(data.x, 3, init_params="random_from_data", seed=1, devices=4)
    out["em_random_from_data"] = dict(ll=[one.log_likelihood, four.log_likelihood], n_iter=[one.n_iter, four.n_iter],
                                      means=float(np.abs(one.means - four.means).max()), devices=four.info["num_devices"])
    one = bg.fit_vb(data.x, 3, init_params="random_from_data", seed=1)
    four = bg.fit_vb(data.x, 3, init_params="random_from_data", seed=1, devices=4)
    out["vb_random_from_data"] = dict(ll=[one.info["elbo"], four.info["elbo"]], n_iter=[one.n_iter, four.n_iter],
                                      means=float(np.abs(one.means - four.means).max()), devices=four.info["num_devices"])
    try:
        bg.fit_em(data.x, 3, devices=8)
    except ValueError as err:
        out["error"] = str(err)
    try:
        bg.fit_em(data.x, 3, devices=True)
    except ValueError as err:
        out["error_bool"] = str(err)
    print(json.dumps(out))
    """
)


@pytest.fixture(scope="module")
def sharded_results():
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4", JAX_PLATFORMS="cpu")
    proc = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize(
    "case",
    ["em_full", "em_diag", "em_spherical", "em_tied", "map", "vb_full", "vb_diag", "em_random_from_data", "vb_random_from_data"],
)
def test_sharded_fit_equals_single_device(sharded_results, case):
    r = sharded_results[case]
    one, many = r["ll"]
    assert abs(one - many) <= 1e-9 * abs(one)
    assert r["n_iter"][0] == r["n_iter"][1]
    assert r["means"] < 1e-7
    assert r["devices"] == (2 if case == "map" else 4)


def test_too_many_devices_is_a_clear_error(sharded_results):
    assert "devices=8 but 4 JAX device(s) are available" in sharded_results["error"]
    assert "devices must be None, 'all', an int" in sharded_results["error_bool"]
