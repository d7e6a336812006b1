"""Data parallelism: EM and VB with the rows sharded over 4 (forced) CPU devices equal the
single-device fits. JAX fixes its device count at start-up, so each check runs in a fresh
interpreter with ``XLA_FLAGS=--xla_force_host_platform_device_count=4`` (and the collective
scheduling flag that in-process CPU devices need, ``_sharding.CPU_COLLECTIVE_FLAG``)."""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from bayesgmm._sharding import CPU_COLLECTIVE_FLAG

SCRIPT = textwrap.dedent(
    """
    import json, sys, warnings
    import jax
    jax.config.update("jax_enable_x64", True)
    import numpy as np
    import bayesgmm as bg

    assert len(jax.devices()) == 4, jax.devices()
    data = bg.datasets.make_mixture(1001, 3, 2, separation=4.0, seed=1)   # 1001 rows: padded to 1004

    def facts(one, many, value):
        return dict(ll=[value(one), value(many)], n_iter=[one.n_iter, many.n_iter],
                    means=float(np.abs(one.means - many.means).max()), devices=many.info["num_devices"])

    # a loose tolerance throughout: these overlapping clusters take EM and VB 300-500 iterations at
    # the default, each a collective on devices emulated on two cores (3-7 s a case); 20-odd decide
    # as much about the sharding (the fits must still agree bit for bit in their iterations)
    loose = dict(tol=1e-3)

    def em_case(ct):
        def run():
            one = bg.fit_em(data.x, 3, covariance_type=ct, n_init=3, seed=0, **loose)
            four = bg.fit_em(data.x, 3, covariance_type=ct, n_init=3, seed=0, devices="all", **loose)
            return facts(one, four, lambda r: r.log_likelihood)
        return run

    def vb_case(ct):
        def run():
            one = bg.fit_vb(data.x, 3, covariance_type=ct, seed=0, n_init=2, **loose)
            four = bg.fit_vb(data.x, 3, covariance_type=ct, seed=0, n_init=2, devices=jax.devices(), **loose)
            return facts(one, four, lambda r: r.info["elbo"])
        return run

    def map_case():
        prior = bg.Prior.default(data.x, 3)
        one = bg.fit_em(data.x, 3, prior=prior, seed=0, n_init=4, **loose)
        two = bg.fit_em(data.x, 3, prior=prior, seed=0, n_init=4, devices=2, **loose)
        return facts(one, two, lambda r: r.log_likelihood)

    def random_case(fit, value):
        def run():  # one-hot starts on random rows: the padded, weighted draw must pick the same rows
            # (8 starts: the default 256 run a lane at a time on these emulated devices, 5 s)
            one = fit(data.x, 3, init_params="random_from_data", seed=1, n_init=8, **loose)
            four = fit(data.x, 3, init_params="random_from_data", seed=1, n_init=8, devices=4, **loose)
            return facts(one, four, value)
        return run

    def large_lapack():  # D = K = 16, 10 and 16 lanes: every device's LAPACK batches past jaxlib's split
        x = bg.datasets.make_mixture(2000, 16, 16, separation=3.0, seed=2).x
        # starts on random rows: k-means++ adds no LAPACK call, only a collective per centre
        # (about 0.3 s a lane on devices emulated on two cores)
        kw = dict(max_iter=5, tol=0.0, seed=0, init_params="random_from_data")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            em = [bg.fit_em(x, 16, n_init=10, devices=d, **kw).log_likelihood for d in (None, "all")]
            vb = [bg.fit_vb(x, 16, n_init=16, devices=d, **kw).info["elbo"] for d in (None, "all")]
        return dict(em=em, vb=vb)

    def float32_tight():  # a cluster of sd 3e-4 far from the centre: float32's fast form loses it
        rng = np.random.default_rng(0)
        x = np.concatenate([rng.normal(0, 1, (1500, 2)), rng.normal([6, 6], 3e-4, (300, 2)),
                            rng.normal([-3, 4], 0.5, (200, 2))])
        prior = bg.Prior(1.0, x.mean(0), 0.01, 4.0, 1e-6 * np.eye(2))
        # a few starts (the default 256 take a lane at a time on these emulated devices, 25 s);
        # with the fast form the sharded fits end 889 (EM) and 255 (VB) nats below even so
        with jax.enable_x64(False):
            em = [bg.fit_em(x, 3, seed=0, n_init=4, devices=d).log_likelihood for d in (None, 2)]
            vb = [bg.fit_vb(x, 3, prior=prior, seed=0, n_init=4, devices=d).info["elbo"] for d in (None, 2)]
        return dict(em=em, vb=vb)

    def missing():  # NaN entries: the mask sharded with the rows (devices= once refused them)
        x = data.x.copy()
        x[np.random.default_rng(0).random(x.shape) < 0.1] = np.nan
        x[np.isnan(x).all(axis=1), 0] = 0.0
        # a loose tolerance: with a tenth of the entries missing EM climbs slowly (571 iterations,
        # 8 s in all, at the default 1e-5); 18 iterations decide as much about the sharding
        kw = dict(seed=0, n_init=3, missing="marginalize", tol=1e-3)
        one = bg.fit_em(x, 3, **kw)
        four = bg.fit_em(x, 3, **kw, devices="all")
        em = facts(one, four, lambda r: r.log_likelihood)
        one = bg.fit_vb(x, 3, covariance_type="diag", **kw)
        four = bg.fit_vb(x, 3, covariance_type="diag", **kw, devices="all")
        return dict(em=em, vb=facts(one, four, lambda r: r.info["elbo"]))

    def screened():  # few em-EM starts on larger data: k-means++ seedings screened on the host rows (they
        # were screened on one device only, so sharded fits started elsewhere and ended elsewhere)
        rng = np.random.default_rng(5)
        x = rng.normal(0, 3, (4, 4))[rng.integers(0, 4, 3000)] + rng.normal(0, 1.5, (3000, 4))
        kw = dict(seed=0, n_init=8, init_iter=5, tol=1e-3)
        out = {}
        for name, fit, value in (("em", bg.fit_em, lambda r: r.log_likelihood), ("vb", bg.fit_vb, lambda r: r.info["elbo"])):
            one, four = fit(x, 4, **kw), fit(x, 4, **kw, devices=4)
            out[name] = dict(facts(one, four, value), starts=[one.info["start_objectives" if name == "em" else "start_elbos"],
                                                              four.info["start_objectives" if name == "em" else "start_elbos"]])
        return out

    def errors():
        out = {}
        for name, devices in (("error", 8), ("error_bool", True)):
            try:
                bg.fit_em(data.x, 3, devices=devices)
            except ValueError as err:
                out[name] = str(err)
        return out

    cases = {"em_" + ct: em_case(ct) for ct in ("full", "diag", "spherical", "tied")}
    cases.update({"vb_" + ct: vb_case(ct) for ct in ("full", "diag")}, map=map_case, errors=errors, large_lapack=large_lapack,
                 float32_tight=float32_tight, missing=missing, screened=screened,
                 em_random_from_data=random_case(bg.fit_em, lambda r: r.log_likelihood),
                 vb_random_from_data=random_case(bg.fit_vb, lambda r: r.info["elbo"]))
    print(json.dumps({name: cases[name]() for name in sys.argv[1:]}))
    """
)

#: Checked in every run: one EM structure, MAP, VB and the random-row start; the rest with -m slow.
FAST = ["em_full", "map", "vb_full", "em_random_from_data"]
SLOW = ["em_diag", "em_spherical", "em_tied", "vb_diag", "vb_random_from_data"]


def _run(cases):
    env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count=4 {CPU_COLLECTIVE_FLAG}",
               JAX_PLATFORMS="cpu")
    proc = subprocess.run([sys.executable, "-c", SCRIPT, *cases], capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def sharded_results():
    return _run(FAST + ["errors", "float32_tight", "missing", "screened"])


@pytest.fixture(scope="module")
def sharded_results_slow():
    return _run(SLOW + ["large_lapack"])


def _check(r, case):
    one, many = r["ll"]
    assert abs(one - many) <= 1e-9 * abs(one)
    assert r["n_iter"][0] == r["n_iter"][1]
    assert r["means"] < 1e-7
    assert r["devices"] == (2 if case == "map" else 4)


@pytest.mark.parametrize("case", FAST)
def test_sharded_fit_equals_single_device(sharded_results, case):
    _check(sharded_results[case], case)


@pytest.mark.slow
@pytest.mark.parametrize("case", SLOW)
def test_sharded_fit_equals_single_device_every_structure(sharded_results_slow, case):
    _check(sharded_results_slow[case], case)


def test_sharded_float32_keeps_a_tight_component(sharded_results):
    """Sharded rows cannot switch form per iteration; in float32 they kept the fast form, which
    loses a tight component: EM ended 772 nats below the one-device fit (-2750.9 against
    -1978.3), converged and without a warning, VB 255 nats below. They take the centred form."""
    r = sharded_results["float32_tight"]
    for one, sharded in (r["em"], r["vb"]):
        assert abs(one - sharded) <= 1e-4 * abs(one), r
    assert r["em"][0] > -1980.0


def test_sharded_fits_take_missing_values(sharded_results):
    """The missing-value mask is sharded with the rows: EM (full) and VB (diag) equal the
    one-device fits (devices= with missing='marginalize' was refused)."""
    for engine in ("em", "vb"):
        _check(sharded_results["missing"][engine], engine)


def test_sharded_fits_screen_the_same_starts(sharded_results):
    """Few em-EM starts on larger data (n_init=8, init_iter=5; the default on much data) are
    screened k-means++ seedings; sharded fits drew plain seedings instead, so EM and VB started
    and ended elsewhere (means 1.67 apart on these data)."""
    for engine in ("em", "vb"):
        r = sharded_results["screened"][engine]
        _check(r, engine)
        np.testing.assert_allclose(r["starts"][1], r["starts"][0], rtol=1e-9)


def test_too_many_devices_is_a_clear_error(sharded_results):
    assert "devices=8 but 4 JAX device(s) are available" in sharded_results["errors"]["error"]
    assert "devices must be None, 'all', an int" in sharded_results["errors"]["error_bool"]


def test_row_buckets_hold_the_rows_with_bounded_padding():
    """Every N maps to a bucket that holds it; EM's small buckets are 512 and 2048 rows, NUTS's and
    SVI's 320 and 511 (then 8 per octave), Gibbs's 511 and 2048; above the small buckets the
    padding is at most 1/8 of N; above 2^20 rows nothing is padded."""
    from bayesgmm._sharding import MAX_BUCKETED, row_bucket, sampler_row_bucket

    sizes = list(range(1, 5000, 7)) + [320, 321, 511, 512, 2047, 2048, 2049, 10**5, MAX_BUCKETED, MAX_BUCKETED + 3]
    for n in sizes:
        em, fine, coarse = row_bucket(n), sampler_row_bucket(n), sampler_row_bucket(n, coarse=True)
        assert min(em, fine, coarse) >= n
        assert em == (512 if n <= 512 else 2048 if n <= 2048 else em)
        assert fine == 320 if n <= 320 else fine == 511 if n <= 511 else fine - n < n / 8
        assert coarse == (511 if n <= 511 else 2048 if n <= 2048 else fine)
        if n > 2048:
            assert em == fine and em - n < n / 8
        if n > MAX_BUCKETED:
            assert em == fine == coarse == n
    assert len({row_bucket(n) for n in range(1100, 2001)}) == 1  # the compile-once benchmark's sizes
    assert sampler_row_bucket(250) == sampler_row_bucket(272)  # NUTS on a subset of Old Faithful


@pytest.mark.slow  # 9 s; the one-device programs' order: test_em.py::test_em_vb_map_and_mclust_order_their_large_lapack_calls
def test_large_lapack_batches_on_cpu_devices_finish(sharded_results_slow):
    """Four CPU devices on this machine's cores, each running the replicated M-step: with ten and
    sixteen lanes of sixteen 16 x 16 covariances, jaxlib's LAPACK kernels split their batches
    over the shared thread pool and every device waited there forever (N=2e4, two devices, two
    cores). The sharded programs now factor one lane, and decompose one component, at a time;
    the fits equal the one-device ones."""
    r = sharded_results_slow["large_lapack"]
    for one, many in (r["em"], r["vb"]):
        assert abs(one - many) <= 1e-8 * abs(one)


def test_padded_rows_are_placed_on_the_cpu_device_without_a_copy():
    """Without a mesh, ``shard_rows`` pads into 64-byte-aligned memory, which XLA's CPU client uses
    in place (NumPy's own 16-byte-aligned arrays are copied: 8-17 ms of a fit at N=1e5, D=16);
    the padding rows are zeros of weight 0 and the given weights are kept."""
    import jax
    import numpy as np

    from bayesgmm import _sharding

    x = np.arange(1001 * 3, dtype=np.float64).reshape(1001, 3)[:, ::-1]  # not C-ordered
    rows = _sharding.resolve(None, 1001)
    for weight in (None, np.linspace(0.5, 2.0, 1001)):
        padded, w = _sharding.shard_rows(rows, x, weight)
        assert padded.shape == (rows.num_padded, 3) and rows.num_padded > 1001
        np.testing.assert_array_equal(padded[:1001], x)
        assert not padded[1001:].any() and not w[1001:].any()
        np.testing.assert_array_equal(w[:1001], 1.0 if weight is None else weight)
        for a in (padded, w):
            assert a.ctypes.data % _sharding.CPU_ALIGNMENT == 0
            if jax.default_backend() == "cpu":
                assert jax.device_put(a).unsafe_buffer_pointer() == a.ctypes.data
    exact = _sharding.resolve(None, 512)  # a bucket's own size: no padding, an aligned copy at most
    ready, w = _sharding.shard_rows(exact, x[:512], None)
    assert w is None and ready.ctypes.data % _sharding.CPU_ALIGNMENT == 0
    np.testing.assert_array_equal(ready, x[:512])
    assert _sharding.device_ready(ready) is ready
