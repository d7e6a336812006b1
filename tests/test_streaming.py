"""Streaming (out-of-core) EM: exact batch EM equals in-memory EM, online EM reaches the same
optimum, every source reads the same rows, one compiled chunk program, bounded memory."""

import json
import os
import subprocess
import sys
import textwrap
import warnings

import jax
import numpy as np
import pytest
from _references import ill_conditioned_clusters, one_float64_em_step_gain
from conftest import compile_mode, precision
from scipy.optimize import linear_sum_assignment

import bayesgmm as bg
from bayesgmm import streaming
from bayesgmm.params import ConvergenceWarning, GMMParams
from bayesgmm.sources import NpySource, open_source
from bayesgmm.streaming import fit_em_stream

COV_TYPES = ("full", "diag", "spherical", "tied")


@pytest.fixture(scope="module")
def mix():
    """N=1001, D=3, K=3, well separated; 1001 rows leave a one-row last chunk for batch_size=250."""
    return bg.datasets.make_mixture(1001, 3, 3, separation=6.0, seed=2).x


@pytest.fixture(scope="module")
def files(mix, tmp_path_factory):
    d = tmp_path_factory.mktemp("stream")
    paths = {"npy": d / "x.npy", "raw": d / "x.dat", "f32": d / "x32.npy"}
    np.save(paths["npy"], mix)
    np.save(paths["f32"], mix.astype(np.float32))
    mix.tofile(paths["raw"])
    return paths


def _start(x, k, covariance_type):
    """A deliberately rough start: K data rows as means, the data covariance for every component."""
    d = x.shape[1]
    cov = np.cov(x, rowvar=False)
    c = {"full": np.tile(cov, (k, 1, 1)), "tied": cov, "diag": np.tile(np.diag(cov), (k, 1)),
         "spherical": np.full(k, np.trace(cov) / d)}[covariance_type]
    return GMMParams(np.full(k, 1.0 / k), x[[0, 1, 2]][:k] * 0.5, c)


def _precisions(params, covariance_type):
    c = params.covariances
    return np.linalg.inv(c) if covariance_type in ("full", "tied") else 1.0 / c


def _aligned_max_diff(a, b):
    cost = ((a[:, None] - b[None]) ** 2).sum(-1)
    r, c = linear_sum_assignment(cost)
    return float(np.abs(a[r] - b[c]).max()), c


# ----------------------------------------------------------------------------------------------
# Exact batch EM out of core = in-memory EM
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "covariance_type,use_prior", [("full", False), ("full", True), ("diag", True), ("spherical", False), ("tied", False)]
)
def test_batch_equals_fit_em_from_the_same_start(covariance_type, use_prior, mix):
    k = 3
    start = _start(mix, k, covariance_type)
    prior = bg.Prior.default(mix, k) if use_prior else None
    kw = dict(covariance_type=covariance_type, prior=prior, tol=1e-6, max_iter=1000)
    ref = bg.fit_em(mix, k, weights_init=start.weights, means_init=start.means,
                    precisions_init=_precisions(start, covariance_type), **kw)
    got = fit_em_stream(mix, k, init_params=start, batch_size=250, **kw)
    assert ref.converged and got.converged
    assert got.n_iter == ref.n_iter > 3
    assert got.method == ref.method and got.objective == ref.objective
    # chunked sums add up in another order; fast phases of EM amplify that to ~1e-10
    np.testing.assert_allclose(got.trace, ref.trace, rtol=1e-9)
    assert got.log_likelihood == pytest.approx(ref.log_likelihood, rel=1e-10)
    np.testing.assert_allclose(got.weights, ref.weights, atol=1e-10)
    np.testing.assert_allclose(got.means, ref.means, atol=1e-9)
    np.testing.assert_allclose(got.covariances, ref.covariances, atol=1e-9)
    np.testing.assert_allclose(got.info["expected_counts"], ref.info["expected_counts"], rtol=1e-8)
    assert got.info["entropy"] == pytest.approx(ref.info["entropy"], rel=1e-8)
    assert got.info["num_chunks"] == 5 and got.info["num_passes"] == got.n_iter + 3


def test_reg_covar_is_in_fit_ems_units_from_a_given_start(mix):
    """``reg_covar`` is relative to each feature's robust variance, as fit_em's, from a given start
    too: with a large one the streamed fit is fit_em's (it was relative to the moments' standard
    deviations there, which clusters far apart make larger)."""
    start = _start(mix, 3, "full")
    kw = dict(reg_covar=1e-3, tol=1e-6, max_iter=1000)
    ref = bg.fit_em(mix, 3, weights_init=start.weights, means_init=start.means,
                    precisions_init=_precisions(start, "full"), **kw)
    got = fit_em_stream(mix, 3, init_params=start, batch_size=250, **kw)
    assert got.log_likelihood == pytest.approx(ref.log_likelihood, rel=1e-9)
    np.testing.assert_allclose(got.covariances, ref.covariances, rtol=1e-7)
    assert got.n_iter == ref.n_iter


def test_initialisation_on_every_row_is_fit_em(mix):
    """With num_init_rows >= N the subsample is the data: the initialisation is fit_em's run
    (same restarts, same key) and the streaming passes then stop at once."""
    key_init = jax.random.split(jax.random.key(0), 3)[0]  # fit_em_stream's key for the restarts
    ref = bg.fit_em(mix, 3, n_init=3, tol=1e-6, seed=key_init)
    got = fit_em_stream(mix, 3, n_init=3, tol=1e-6, num_init_rows=len(mix), batch_size=250, seed=0)
    assert got.info["init_objective_per_obs"] == pytest.approx(ref.log_likelihood / len(mix), rel=1e-12)
    assert got.log_likelihood == pytest.approx(ref.log_likelihood, abs=1e-6 * len(mix))
    assert got.n_iter <= 3
    # in float32 the first passes from such a start often repeat the objective exactly: no
    # RuntimeWarning from the convergence test's first (infinite) change (warnings are errors here)
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.normal(0, 1, (500, 2)), rng.normal(4, 1, (500, 2))])
    with precision(np.float32):
        first = fit_em_stream(x, 2, batch_size=300, seed=0)
        again = fit_em_stream(x, 2, batch_size=300, init_params=first, seed=0)  # from where it stopped
    assert again.converged and again.trace[1] == again.trace[0]


def test_chunk_program_is_compiled_once(mix):
    from conftest import CompileCounter

    start = _start(mix, 3, "full")
    with pytest.warns(ConvergenceWarning), CompileCounter() as counter:
        first = fit_em_stream(mix, 3, init_params=start, batch_size=123, tol=0.0, max_iter=4)
    assert first.info["num_chunks"] == 9 and first.n_iter == 4  # 9 chunks x 5 passes, last one partial
    assert counter.compiles < 9 * 5  # not one program per chunk or pass
    other = bg.datasets.make_mixture(1500, 3, 3, separation=6.0, seed=5).x  # another N: same chunk shape
    other_start = _start(other, 3, "full")
    with pytest.warns(ConvergenceWarning), CompileCounter() as counter:
        fit_em_stream(other, 3, init_params=other_start, batch_size=123, tol=0.0, max_iter=4)
    assert counter.compiles == 0
    # the initialisation's EM on a subsample of another size: padded to fit_em's row bucket
    with pytest.warns(ConvergenceWarning):
        fit_em_stream(mix, 3, batch_size=123, tol=0.0, max_iter=2, seed=0)
    with pytest.warns(ConvergenceWarning), CompileCounter() as counter:
        fit_em_stream(other[:1200], 3, batch_size=123, tol=0.0, max_iter=2, seed=0)
    assert counter.compiles == 0


# ----------------------------------------------------------------------------------------------
# Sources
# ----------------------------------------------------------------------------------------------
def test_every_source_reads_the_same_rows(mix, files, tmp_path):
    pd = pytest.importorskip("pandas")
    kw = dict(batch_size=250, tol=1e-6, num_init_rows=500, n_init=2, seed=3)
    ref = fit_em_stream(mix, 3, **kw)
    sources = {
        "npy path": str(files["npy"]),
        "pathlib": files["npy"],
        "memmap of .npy": np.load(files["npy"], mmap_mode="r"),
        "raw memmap": np.memmap(files["raw"], dtype=np.float64, mode="r", shape=mix.shape),
        "big-endian .npy": _saved(tmp_path / "be.npy", mix.astype(">f8")),
        "DataFrame": pd.DataFrame(mix, columns=["a", "b", "c"]),
    }
    if _has_pyarrow():
        pq_path = tmp_path / "x.parquet"
        pd.DataFrame(mix, columns=["a", "b", "c"]).to_parquet(pq_path, row_group_size=333)  # groups != chunks
        sources["parquet"] = str(pq_path)
    for name, src in sources.items():
        got = fit_em_stream(src, 3, **kw)
        assert got.log_likelihood == pytest.approx(ref.log_likelihood, rel=1e-13), name
        np.testing.assert_allclose(got.means, ref.means, rtol=1e-11, err_msg=name)
        assert got.n_iter == ref.n_iter, name
    assert isinstance(open_source(sources["memmap of .npy"]), NpySource)  # bounded RSS path
    # a copy-on-write mapping holds changes the file lacks: its own values are read
    changed = np.load(files["npy"], mmap_mode="c")
    changed[:, 0] *= 1000.0
    source = open_source(changed)
    assert not isinstance(source, NpySource)
    np.testing.assert_array_equal(next(iter(source.chunks(2000, [0])))[2][:, 0], mix[:, 0] * 1000.0)
    assert fit_em_stream(sources["DataFrame"], 3, **kw).feature_names == ("a", "b", "c")
    # a masked array's masked entries are missing values, as in memory (their fill values were fitted)
    masked = np.ma.masked_array(np.array(mix), np.zeros(mix.shape, bool))
    masked[::7, 1] = np.ma.masked
    masked.data[::7, 1] = -999.0
    with pytest.raises(ValueError, match="NaN values"):
        fit_em_stream(masked, 3, **kw)
    nan = np.array(mix)
    nan[::7, 1] = np.nan
    got, want = (fit_em_stream(a, 3, **kw, missing="marginalize") for a in (masked, nan))
    assert got.log_likelihood == want.log_likelihood


def _has_pyarrow():
    try:
        import pyarrow.parquet  # noqa: F401
    except ImportError:
        return False
    return True


def _saved(path, arr, **kwargs):
    np.save(path, arr, **kwargs)
    return str(path)


def test_columns_select_features_by_index_and_by_name(mix, files, tmp_path):
    kw = dict(batch_size=250, tol=1e-6, num_init_rows=500, seed=1)
    ref = fit_em_stream(np.ascontiguousarray(mix[:, [2, 0]]), 2, **kw)
    by_index = fit_em_stream(files["npy"], 2, columns=[2, 0], **kw)
    assert by_index.feature_names == ("x2", "x0")
    np.testing.assert_allclose(by_index.means, ref.means, rtol=1e-12)
    if _has_pyarrow():
        import pandas as pd

        path = tmp_path / "named.parquet"
        pd.DataFrame(mix, columns=["a", "b", "c"]).to_parquet(path)
        by_name = fit_em_stream(path, 2, columns=["c", "a"], **kw)
        assert by_name.feature_names == ("c", "a")
        np.testing.assert_allclose(by_name.means, ref.means, rtol=1e-12)
        # a filtered DataFrame's row labels, which to_parquet stores as a column (unnamed:
        # __index_level_0__; named: the index's name), are the index, not a feature, as for
        # pd.read_parquet (they were fitted as a third feature, without a word)
        frame = pd.DataFrame(mix[:, [2, 0]], columns=["c", "a"])
        for index_name in (None, "row"):
            kept = frame.set_axis(pd.Index(np.arange(len(frame)) ** 2, name=index_name))  # not a range: stored
            kept.to_parquet(path)
            labelled = fit_em_stream(path, 2, **kw)
            assert labelled.feature_names == ("c", "a") == tuple(pd.read_parquet(path).columns)
            np.testing.assert_allclose(labelled.means, ref.means, rtol=1e-12)
        with pytest.raises(ValueError, match=r"names column\(s\) \['a'\] .* more than once"):
            fit_em_stream(path, 2, columns=["a", "c", "a"])


def test_float32_and_integer_storage(mix, files, tmp_path):
    """float32 files are fitted in float32; integers are standardised on the host in float64 and
    give the float64 fit of the same numbers."""
    kw = dict(batch_size=250, tol=1e-6, num_init_rows=500, seed=1)
    ref = fit_em_stream(mix, 3, **kw)
    f32 = fit_em_stream(files["f32"], 3, **kw)  # computed in JAX's default float (float64 here)
    assert f32.info["dtype"] == "float64"
    assert f32.log_likelihood == pytest.approx(ref.log_likelihood, rel=1e-5)
    with precision(np.float32), warnings.catch_warnings():
        warnings.simplefilter("error", bg.PrecisionWarning)  # tol=1e-6 is above float32's floor here
        f32 = fit_em_stream(files["f32"], 3, **kw)
    assert f32.info["dtype"] == "float32" and f32.converged
    assert f32.info["precision_floor_per_obs"] < 1e-6
    assert f32.log_likelihood == pytest.approx(ref.log_likelihood, rel=1e-5)
    with precision(np.float32), pytest.warns(bg.PrecisionWarning, match="finer than float32"):
        fine = fit_em_stream(files["f32"], 3, **{**kw, "tol": 1e-10})  # said plainly, and met at that floor
    assert fine.converged and fine.info["precision_floor_per_obs"] > 1e-10
    assert fine.log_likelihood == pytest.approx(ref.log_likelihood, rel=1e-5)
    # far from zero for their spread: the device's float32 standardisation and the way back to
    # the data's units must use one shift (they differed by its rounding, 3e-5 in the first
    # feature here: its every mean was off by it, found by a review; the two fits' stopping points
    # differ by up to 3.3e-6)
    far = (mix * 0.01 + 1000.0).astype(np.float32)
    with precision(np.float32):
        stored32 = fit_em_stream(far, 3, **kw)
        stored64 = fit_em_stream(far.astype(np.float64), 3, **kw)  # the same numbers, standardised on the host
    order32, order64 = np.argsort(stored32.means[:, 0]), np.argsort(stored64.means[:, 0])
    assert np.max(np.abs(stored32.means[order32] - stored64.means[order64])) < 1e-5
    assert stored32.log_likelihood == pytest.approx(stored64.log_likelihood, abs=1e-6 * len(far))
    ints = np.round(mix * 1000).astype(np.int32)
    path = _saved(tmp_path / "ints.npy", ints)
    got = fit_em_stream(path, 3, **kw)
    exact = fit_em_stream(ints.astype(np.float64), 3, **kw)
    assert got.info["dtype"] == "float64"
    assert got.log_likelihood == pytest.approx(exact.log_likelihood, rel=1e-12)
    np.testing.assert_allclose(got.means, exact.means, rtol=1e-10)


@pytest.mark.parametrize("method", ["batch", "online"])
def test_float32_components_on_few_points_are_flagged_not_a_raw_linalg_error(method):
    """One pass forms each scatter from moments about zero; in float32 their cancellation left a
    covariance on a few far points with negative eigenvalues (NumPy's raw LinAlgError in the final
    pass, found on 400 rows D=K=16). Now those eigenvalues sit on the floor, the component is
    flagged, and the reported log-likelihood is the float64 density of the returned parameters."""
    from scipy.special import logsumexp
    from scipy.stats import multivariate_normal

    x = bg.datasets.make_mixture(60, 4, 4, separation=3.0, seed=6).x.astype(np.float32)
    with precision(np.float32), warnings.catch_warnings(record=True) as caught, compile_mode("fast-compile"):
        warnings.simplefilter("always")  # (up to 500 passes: optimised code pays)
        fit = fit_em_stream(x, 4, method=method)
    kinds = {type(w.message) for w in caught}
    assert fit.info["dtype"] == "float32" and fit.degenerate_components and bg.DegenerateComponentWarning in kinds
    assert fit.converged or ConvergenceWarning in kinds  # float32's fast E-step on a collapsed component may oscillate
    assert min(np.linalg.eigvalsh(c).min() for c in fit.covariances) > 0
    dens = [np.log(w) + multivariate_normal(m, c).logpdf(x.astype(np.float64))
            for w, m, c in zip(fit.weights, fit.means, fit.covariances)]
    assert fit.log_likelihood == pytest.approx(logsumexp(dens, axis=0).sum(), rel=1e-11)


def test_raise_to_floor_lifts_only_the_eigenvalues_below_the_floor():
    from bayesgmm import _stats

    with precision(np.float32):
        rows = np.array([[100.0, -70.0, 33.3], [100.5, -69.0, 33.55]], np.float32)  # 2 points in D=3, far out
        r = np.ones(2, np.float32)
        stats = _stats.scatter(r.sum()[None], (r @ rows)[None], (rows.T @ rows)[None], "full")
        healthy = np.diag(np.array([1.0, 2.0, 3.0], np.float32))[None]
        cov = np.concatenate([np.asarray(stats[2] / stats[0][:, None, None]), healthy])
        params = GMMParams(np.full(2, 0.5, np.float32), np.zeros((2, 3), np.float32), cov)
        floor = 1e-6 + _stats.ROUNDOFF_ULPS * np.finfo(np.float32).eps * np.trace(cov[0]) / 3
        raised = np.asarray(_stats.raise_to_floor(params, "full", np.float32(1e-6)).covariances)
        assert np.linalg.eigvalsh(cov[0].astype(np.float64)).min() < floor  # what the moments leave
        values = np.linalg.eigvalsh(raised[0].astype(np.float64))
        assert values.min() >= 0.99 * floor and values[1:] == pytest.approx(
            np.linalg.eigvalsh((cov[0] + cov[0].T).astype(np.float64) / 2)[1:], rel=1e-4)
        np.testing.assert_array_equal(raised[1], healthy[0])  # above the floor: untouched, bit for bit
        diag = _stats.raise_to_floor(GMMParams(params.weights, params.means, np.array([[-1e-7, 1.0, 2.0]], np.float32)),
                                     "diag", np.float32(1e-6)).covariances
        np.testing.assert_array_equal(diag, np.array([[1e-6, 1.0, 2.0]], np.float32))


# ----------------------------------------------------------------------------------------------
# Online EM
# ----------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def big_mix():
    return bg.datasets.make_mixture(20_000, 3, 3, separation=6.0, seed=2).x


def test_online_em_reaches_the_batch_optimum(big_mix):
    n = len(big_mix)
    best = bg.fit_em(big_mix, 3, n_init=3, tol=1e-9, max_iter=500, seed=0)
    online = fit_em_stream(big_mix, 3, method="online", batch_size=1000, tol=1e-5, max_iter=30,
                           num_init_rows=1000, seed=0)
    assert online.method == "online-em" and online.converged
    assert online.n_iter < 30 and online.info["num_updates"] == 20 * online.n_iter
    gap = (best.log_likelihood - online.log_likelihood) / n
    assert -1e-9 < gap < 1e-4  # never above the optimum, within 1e-4 nats per observation
    diff, perm = _aligned_max_diff(best.means, online.means)
    assert diff < 0.02
    np.testing.assert_allclose(online.weights[perm], best.weights, atol=5e-3)
    # trace: the running estimate per pass, then the exact final log-likelihood
    assert len(online.trace) == online.n_iter + 1 and online.trace[-1] == pytest.approx(online.log_likelihood)
    assert online.trace[-2] < online.trace[-1]  # the running estimate lags the final parameters


def test_online_map_em_reaches_the_batch_map(big_mix):
    prior = bg.Prior.default(big_mix, 3)
    batch = fit_em_stream(big_mix, 3, prior=prior, batch_size=4000, tol=1e-9, max_iter=200, num_init_rows=1000)
    online = fit_em_stream(big_mix, 3, prior=prior, method="online", batch_size=1000, tol=1e-5, max_iter=30,
                           num_init_rows=1000, step_exponent=0.8)
    assert online.method == "online-map-em" and online.objective == "log_posterior"
    assert 0 <= (batch.trace[-1] - online.trace[-1]) / len(big_mix) < 1e-4
    assert _aligned_max_diff(batch.means, online.means)[0] < 0.02


@pytest.mark.parametrize("covariance_type", COV_TYPES)
def test_online_starts_from_the_statistics_of_the_start(covariance_type, rng):
    """The M-step of N times expected_stats(params) returns params: the first online update
    moves from the starting point, not from an arbitrary one."""
    k, d, n = 3, 4, 1000.0
    w = rng.dirichlet(np.full(k, 3.0))
    m = rng.normal(size=(k, d))
    a = rng.normal(size=(k, d, d))
    c = {"full": a @ np.swapaxes(a, 1, 2) + np.eye(d), "tied": a[0] @ a[0].T + np.eye(d),
         "diag": rng.uniform(0.5, 2, (k, d)), "spherical": rng.uniform(0.5, 2, k)}[covariance_type]
    params = GMMParams(w, m, c)
    s = streaming.expected_stats(params, covariance_type)
    config = streaming.StreamConfig(k, d, covariance_type, False)
    back = streaming.params_from_stats(n * s, None, 0.0, config)
    for got, want in zip(back, params):
        np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("covariance_type", COV_TYPES)
def test_quadratic_features_are_the_exponential_family_features(covariance_type, rng):
    """The quadratic features every E-step uses (EM, VB and each chunk of a stream) against NumPy."""
    from bayesgmm import _stats

    x = rng.normal(size=(50, 5)) * rng.uniform(0.1, 10, 5)
    quad = np.asarray(_stats.quad_features(x, covariance_type))
    i, j = np.triu_indices(5)
    expected = {"full": x[:, i] * x[:, j], "tied": x[:, i] * x[:, j], "diag": x**2,
                "spherical": np.sum(x**2, axis=1, keepdims=True)}[covariance_type]
    np.testing.assert_allclose(quad, expected, rtol=1e-15)
    z = np.asarray(_stats.suff_features(x, covariance_type))
    np.testing.assert_array_equal(z, np.concatenate([quad, x, np.ones((50, 1))], axis=1))


def test_same_seed_same_result_bit_for_bit(mix):
    kw = dict(method="online", batch_size=100, tol=1e-4, max_iter=30, num_init_rows=300, n_init=2)
    a = fit_em_stream(mix, 3, seed=4, **kw)
    b = fit_em_stream(mix, 3, seed=4, **kw)
    c = fit_em_stream(mix, 3, seed=5, **kw)
    assert a.converged and a.n_iter > 1
    assert a.log_likelihood == b.log_likelihood and np.array_equal(a.trace, b.trace)
    assert np.array_equal(a.means, b.means) and np.array_equal(a.covariances, b.covariances)
    assert not np.array_equal(a.trace, c.trace)  # the seed sets the subsample and the chunk order


# ----------------------------------------------------------------------------------------------
# Devices, memory, progress
# ----------------------------------------------------------------------------------------------
SHARDED = textwrap.dedent(
    """
    import json, warnings
    import jax
    jax.config.update("jax_enable_x64", True)
    import numpy as np
    import bayesgmm as bg
    from bayesgmm.streaming import fit_em_stream

    assert len(jax.devices()) == 4, jax.devices()
    x = bg.datasets.make_mixture(1001, 3, 3, separation=6.0, seed=2).x
    out = {}
    for method in ("batch", "online"):
        for batch_size in (200, 201):   # 201 rows: padded to 204 on 4 devices
            kw = dict(method=method, batch_size=batch_size, tol=1e-6, max_iter=20, num_init_rows=500, seed=0)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                one = fit_em_stream(x, 3, **kw)
                four = fit_em_stream(x, 3, devices="all", **kw)
            out[f"{method}_{batch_size}"] = dict(
                ll=[one.log_likelihood, four.log_likelihood], n_iter=[one.n_iter, four.n_iter],
                means=float(np.abs(one.means - four.means).max()), devices=four.info["num_devices"])
    print(json.dumps(out))
    """
)


@pytest.fixture(scope="module")
def sharded_results():
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4", JAX_PLATFORMS="cpu")
    proc = subprocess.run([sys.executable, "-c", SHARDED], capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.slow  # fast variant: tests/test_sharding.py (the same all-reduce of sufficient statistics, in memory)
@pytest.mark.parametrize("case", ["batch_200", "batch_201", "online_200", "online_201"])
def test_sharded_chunks_equal_single_device(sharded_results, case):
    r = sharded_results[case]
    one, four = r["ll"]
    assert abs(one - four) <= 1e-9 * abs(one)
    assert r["n_iter"][0] == r["n_iter"][1]
    assert r["means"] < 1e-7
    assert r["devices"] == 4


RSS = textwrap.dedent(
    """
    import json, sys, warnings
    import numpy as np
    from bayesgmm.streaming import fit_em_stream

    def status(key):   # kB
        with open("/proc/self/status") as f:
            return int(next(line for line in f if line.startswith(key)).split()[1]) * 1024

    def reset_peak():  # Linux >= 4.0: VmHWM restarts from the current RSS
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return status("VmRSS")

    small, big = sys.argv[1:3]
    kw = dict(batch_size=16384, max_iter=2, tol=0.0, num_init_rows=20000)
    warnings.simplefilter("ignore")
    fit_em_stream(small, 3, **kw)            # compiles every program for these shapes
    base = reset_peak()
    r = fit_em_stream(big, 3, **kw)
    streamed = status("VmHWM") - base
    base = reset_peak()
    x = np.load(big)                         # control: the measurement sees a whole-file load
    loaded = status("VmHWM") - base
    print(json.dumps(dict(streamed=streamed, loaded=loaded, num_obs=r.num_obs)))
    """
)


def _write_npy(path, n, d, seed):
    rng = np.random.default_rng(seed)
    out = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(n, d))
    for s in range(0, n, 250_000):
        m = min(250_000, n - s)
        out[s : s + m] = rng.normal(size=(m, d)) + 4.0 * rng.integers(0, 3, size=(m, 1))
    out.flush()
    del out
    return str(path)


def test_peak_memory_does_not_grow_with_the_file(tmp_path):
    """4e6 x 8 float32 (128 MB) streamed in 16384-row chunks: peak RSS grows by a small fraction
    of the file (one chunk, its features and allocator slack), while loading it grows by all of it.

    The slack is a fixed amount, not a share of the file: here 7-19 MB for this file and for one
    half its size, retained by the allocator after the fit and not grown by further fits (5 fits
    in one process: +9, +4, +1, 0, 0 MB); one CI machine saw 23 MB on the half-size file, so the
    file is large enough that a fixed slack stays well inside the bound."""
    if not os.access("/proc/self/clear_refs", os.W_OK):
        pytest.skip("needs Linux /proc/self/clear_refs to reset the peak RSS")
    n, d = 4_000_000, 8
    big = _write_npy(tmp_path / "big.npy", n, d, 0)
    small = _write_npy(tmp_path / "small.npy", 50_000, d, 1)
    size = os.path.getsize(big)
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    proc = subprocess.run([sys.executable, "-c", RSS, small, big], capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r = json.loads(proc.stdout.strip().splitlines()[-1])
    assert r["num_obs"] == n
    assert r["loaded"] > 0.75 * size  # the measurement can see a file-sized allocation
    assert r["streamed"] < 0.3 * size, r


def test_progress_bar_shows_passes_and_chunks(mix, capsys):
    kw = dict(batch_size=250, tol=1e-6, num_init_rows=500, seed=1)
    quiet = fit_em_stream(mix, 3, **kw)
    shown = fit_em_stream(mix, 3, progress_bar=True, **kw)
    err = capsys.readouterr().err
    assert "streaming EM" in err and "pass" in err and "chunk" in err
    assert shown.log_likelihood == quiet.log_likelihood


@pytest.mark.parametrize("kind", ["npy", "parquet"])
def test_a_file_that_changes_while_fitting_is_named_not_mixed_in(mix, tmp_path, kind):
    """Each pass reopened the file: one put in its place or written over between passes was read
    as if it were the same data (the standardisation and start came from the old), without a
    word; a Parquet file cut short raised pyarrow's bare OSError. Both are named now."""
    import os
    import time

    path = tmp_path / f"x.{kind}"

    def write(values):
        if kind == "npy":
            np.save(path, values)
        else:
            pd = pytest.importorskip("pandas")
            pytest.importorskip("pyarrow")
            pd.DataFrame(values, columns=["a", "b", "c"]).to_parquet(path)

    def first_values():
        return np.concatenate([rows[:, 0].copy() for _, _, rows in source.chunks(500, range(source.num_chunks(500)))])

    write(mix)
    source = open_source(str(path))
    np.testing.assert_array_equal(first_values(), np.asarray(mix)[:, 0])
    time.sleep(0.01)
    os.rename(path, tmp_path / f"y.{kind}")
    write(np.asarray(mix) * 2.0 + 5.0)  # another file under the name
    if kind == "npy":  # reopened at every pass: it would be read
        with pytest.raises(ValueError, match="changed while fitting"):
            first_values()
        return
    np.testing.assert_array_equal(first_values(), np.asarray(mix)[:, 0])  # Parquet reads through its open handle
    source = open_source(str(path))
    time.sleep(0.01)
    write(np.asarray(mix)[:700])  # the same file written over
    with pytest.raises(ValueError, match="changed while fitting"):
        first_values()


def test_a_pass_that_raises_holds_the_run_lock_until_its_programs_end(tmp_path, monkeypatch):
    """A pass dispatches its chunks' programs under the run lock and waited for them only when it
    ended normally: one left by an error (a file changed, a short read, Ctrl-C) released the lock
    with its last program still running, which another thread's program could then run beside
    (the hang the lock prevents). Every output is ready when the lock goes now."""
    import contextlib

    from bayesgmm import _compile, sources

    rng = np.random.default_rng(0)
    x = rng.normal(size=(200_000, 8))
    x[rng.random(x.shape) < 0.1] = np.nan
    path = tmp_path / "x.npy"
    np.save(path, x)
    dispatched, ready_at_release = [], []
    stats = streaming.chunk_stats

    def recorded(*args, **kwargs):
        out = stats(*args, **kwargs)
        dispatched.append(out)
        return out

    @contextlib.contextmanager
    def checked_running():
        with _compile.running():
            try:
                yield
            finally:
                leaves = [a for a in jax.tree_util.tree_leaves(dispatched) if hasattr(a, "is_ready")]
                ready_at_release.append(all(a.is_ready() for a in leaves))

    chunks = sources.NpySource.chunks

    def failing_at_the_second_pass(self, batch_size, order):
        yield from chunks(self, batch_size, order)
        if len(dispatched) > 1:
            raise ValueError("the file changed (simulated)")

    monkeypatch.setattr(streaming, "chunk_stats", recorded)
    monkeypatch.setattr(streaming, "running", checked_running)
    monkeypatch.setattr(sources.NpySource, "chunks", failing_at_the_second_pass)
    with pytest.raises(ValueError, match="simulated"):
        fit_em_stream(str(path), 2, covariance_type="diag", batch_size=100_000, missing="marginalize", max_iter=3, seed=0)
    assert ready_at_release and all(ready_at_release)


def test_the_pass_bar_ends_complete_and_closes_on_an_error(mix, monkeypatch):
    """The pass bar's total is max_iter + 2: a fit converged in 13 passes closed at 13/502; and a
    fit that raised (a constant column found in the first pass, a file cut short) left it open."""
    import tqdm.auto

    bars = []

    class Recorded:
        def __init__(self, iterable=None, total=None, desc=None, unit=None, leave=True):
            self.iterable, self.total, self.desc, self.n, self.closed, self.disable = iterable, total, desc, 0, False, False
            bars.append(self)

        def __iter__(self):
            return iter(self.iterable)

        def update(self, steps=1):
            self.n += steps

        def set_postfix(self, *args, **kwargs):
            pass

        def refresh(self):
            pass

        def close(self):
            self.closed = True

    monkeypatch.setattr(tqdm.auto, "tqdm", Recorded)
    fit_em_stream(mix, 3, batch_size=250, tol=1e-6, num_init_rows=500, seed=1, progress_bar=True)
    (outer,) = [bar for bar in bars if bar.desc == "streaming EM"]
    assert outer.closed and outer.n == outer.total < 502
    bars.clear()
    constant = np.array(mix, dtype=np.float64)
    constant[:, 0] = 1.0
    with pytest.raises(ValueError, match="constant"):
        fit_em_stream(constant, 3, batch_size=250, num_init_rows=500, progress_bar=True)
    assert [bar.closed for bar in bars if bar.desc == "streaming EM"] == [True]


def test_not_converged_warns_and_is_flagged(mix):
    with pytest.warns(ConvergenceWarning, match="did not converge in max_iter=2 passes"):
        r = fit_em_stream(mix, 3, batch_size=250, tol=0.0, max_iter=2, num_init_rows=500)
    assert not r.converged and r.n_iter == 2 and len(r.trace) == 3


# ----------------------------------------------------------------------------------------------
# Errors
# ----------------------------------------------------------------------------------------------
def _bad_npy(tmp_path, name, arr, **kw):
    return _saved(tmp_path / name, arr, **kw)


def test_file_errors_are_clear(tmp_path, files):
    with pytest.raises(ValueError, match="does not exist"):
        fit_em_stream(tmp_path / "nope.npy", 2)
    (tmp_path / "parts.parquet").mkdir()  # a partitioned data set's folder: named as one, not as missing
    with pytest.raises(ValueError, match="is a folder, not a file"):
        fit_em_stream(tmp_path / "parts.parquet", 2)
    with pytest.raises(ValueError, match="a list of 2 paths; a source is one"):  # not "must be numeric"
        fit_em_stream([files["npy"], str(files["f32"])], 2)
    (tmp_path / "x.csv").write_text("1,2\n")
    with pytest.raises(ValueError, match=r"must be a \.npy or \.parquet file"):
        fit_em_stream(tmp_path / "x.csv", 2)
    with pytest.raises(ValueError, match=r"shape \(4, 5, 6\); streaming needs a 2-D array"):
        fit_em_stream(_bad_npy(tmp_path, "three.npy", np.zeros((4, 5, 6))), 2)
    with pytest.raises(ValueError, match="Fortran"):
        fit_em_stream(_bad_npy(tmp_path, "f.npy", np.asfortranarray(np.ones((5, 3)))), 2)
    (tmp_path / "junk.npy").write_bytes(b"not an npy file at all")
    with pytest.raises(ValueError, match="not a readable .npy file"):
        fit_em_stream(tmp_path / "junk.npy", 2)
    with pytest.raises(ValueError, match=r"unknown column\(s\) \[7\]"):
        fit_em_stream(files["npy"], 2, columns=[0, 7])
    with pytest.raises(ValueError, match="must hold numbers"):
        fit_em_stream(np.array([["a", "b"], ["c", "d"]]), 2)
    with pytest.raises(ValueError, match="an iterator of chunks"):  # was "must be numeric, got dtype object"
        fit_em_stream((chunk for chunk in np.ones((3, 10, 2))), 2)


def test_parquet_errors_are_clear(tmp_path, monkeypatch):
    if _has_pyarrow():
        import pandas as pd

        path = tmp_path / "t.parquet"
        pd.DataFrame({"a": [1.0, 2.0, 3.0], "s": ["x", "y", "z"]}).to_parquet(path)
        with pytest.raises(ValueError, match=r"no column\(s\) \['b'\]; its columns are \['a', 's'\]"):
            fit_em_stream(path, 2, columns=["a", "b"])
        with pytest.raises(ValueError, match=r"non-numeric column\(s\) \['s'\]"):
            fit_em_stream(path, 2)
        # booleans, as in a DataFrame in memory (they were fitted as a 0/1 Gaussian feature)
        pd.DataFrame({"a": [1.0, 2.0, 3.0], "flag": [True, False, True]}).to_parquet(path)
        with pytest.raises(ValueError, match=r"non-numeric column\(s\) \['flag'\]"):
            fit_em_stream(path, 2)
        with pytest.raises(ValueError, match=r"non-numeric column\(s\) \['flag'\]"):
            bg.fit_em(pd.read_parquet(path), 2)
    monkeypatch.setitem(sys.modules, "pyarrow", None)
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)
    with pytest.raises(ImportError, match="pip install pyarrow"):
        fit_em_stream(tmp_path / "t.parquet", 2)


def test_data_errors_name_the_chunk_and_row(mix, tmp_path):
    bad = mix.copy()
    bad[777, 1] = np.nan
    with pytest.raises(ValueError, match=r"NaN values in chunk 3 \(rows 750 to 999; first bad row: 777\)"):
        fit_em_stream(_bad_npy(tmp_path, "nan.npy", bad), 3, batch_size=250)
    # an infinite entry is never a missing value: the message says so, with or without the policy
    # (it once advised missing='marginalize', which then refused the same entry)
    bad[800, 0] = np.inf
    for missing in ("error", "marginalize"):
        with pytest.raises(ValueError, match=r"infinite values in chunk 3 \(rows 750 to 999; first bad row: 800\)\. "
                                             r"Remove those rows, or set infinite entries to NaN"):
            fit_em_stream(_bad_npy(tmp_path, "inf.npy", bad), 3, batch_size=250, missing=missing)
    const = mix.copy()
    const[:, 1] = 2.5
    with pytest.raises(ValueError, match=r"constant column\(s\) \['x1'\]"):
        fit_em_stream(const, 3, batch_size=250)
    with pytest.raises(ValueError, match="4 observations but num_components=5"):
        fit_em_stream(mix[:4], 5)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(method="minibatch"), "method must be one of"),
        (dict(batch_size=0), "batch_size must be a positive integer"),
        (dict(max_iter=0), "max_iter must be a positive integer"),
        (dict(step_exponent=0.5), r"step_exponent must be in \(0.5, 1\]"),
        (dict(step_exponent=1.2), r"step_exponent must be in \(0.5, 1\]"),
        (dict(num_init_rows=2), "num_init_rows=2 must be at least num_components=3"),
        (dict(init_params="best"), "init_params must be one of"),
        (dict(init_params=GMMParams(np.ones(2) / 2, np.zeros((2, 3)), np.tile(np.eye(3), (2, 1, 1)))),
         r"means of shape \(2, 3\); expected \(3, 3\)"),
        (dict(tol=-1.0), "tol must be a non-negative number"),
        (dict(covariance_type="banded"), "covariance_type must be one of"),
        (dict(prior=bg.Prior.default(np.random.default_rng(0).normal(size=(10, 2)), 3)), "prior is for 2 feature"),
        (dict(devices=9), "devices=9 but"),
        # "no" was taken as true; a column given twice was fitted, and only flagged degenerate
        (dict(shuffle="no"), "shuffle must be True or False"),
        (dict(columns=[0, 0]), r"columns names column\(s\) \[0\] of source more than once"),
        (dict(columns=[0, 2, -1]), r"columns names column\(s\) \[2\]"),
    ],
)
def test_bad_options_raise_clear_error(kwargs, match, mix):
    with pytest.raises(ValueError, match=match):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            fit_em_stream(mix, 3, **kwargs)


def test_a_value_beyond_float32_is_named_not_singular(tmp_path, faithful):
    """As fit_em: a finite value beyond float32 once standardised is named, not met as 'a
    covariance became singular in every restart'."""
    path = tmp_path / "far.npy"
    np.save(path, np.r_[faithful, [[1e39, 70.0]]])
    with precision(np.float32), pytest.raises(ValueError, match=r"\[272, 0\] = 1e\+39 .* beyond the range of float32"):
        bg.fit_em_stream(path, 2)
    # outside the initialisation subsample it is named too, in its chunk (row counted in the file)
    rows = np.r_[np.tile(faithful, (4, 1)), [[1e39, 70.0]], faithful]
    np.save(path, rows)
    with precision(np.float32), pytest.raises(ValueError, match=r"\[1088, 0\] = 1e\+39 .* beyond the range of float32"):
        bg.fit_em_stream(path, 2, num_init_rows=200, batch_size=500, seed=0)
    # a value whose square, not itself, overflows: named too (the passes' objective was NaN, and
    # the fit returned its start with "increase max_iter"); fit_em says the same
    rows[1088, 0] = 1e37
    np.save(path, rows)
    with precision(np.float32), warnings.catch_warnings():
        warnings.simplefilter("error")  # no RuntimeWarning on the way, no ConvergenceWarning instead
        with pytest.raises(ValueError, match=r"\[1088, 0\] = 1e\+37 .* its square beyond the range of float32"):
            bg.fit_em_stream(path, 2, num_init_rows=200, batch_size=500, seed=0)
        with pytest.raises(ValueError, match=r"x\[1088, 0\] = 1e\+37 .* its square beyond the range of float32"):
            bg.fit_em(rows, 2)


def test_passes_that_lose_precision_say_so_in_float64():
    """A cluster of sd 1e-7 three units from the centre, float64, reg_covar=0: the streamed moment
    statistics lose the digits that fit_em's precise form keeps, so the passes no longer follow
    EM (the objective fell by up to 189 nats from one pass to the next, and the fit ended 27.5
    nats below fit_em's). That used to be reported as an unconverged fit ("increase max_iter")
    and advice to fit in float64, which it was; it is named for what it is now."""
    rng = np.random.default_rng(0)
    x = np.vstack([rng.normal(0, 1, (2000, 2)), np.array([3.0, -2.0]) + rng.normal(0, 1e-7, (1000, 2))])
    start = bg.GMMParams(np.array([0.5, 0.5]), np.array([[0.0, 0.0], [3.0, -2.0]]), np.stack([np.eye(2), np.eye(2) * 1e-12]))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fit = bg.fit_em_stream(x, 2, init_params=start, batch_size=1000, tol=1e-8, reg_covar=0.0, max_iter=30)
    found = {w.category: str(w.message) for w in caught}
    assert set(found) == {bg.PrecisionWarning, bg.DegenerateComponentWarning, ConvergenceWarning}, found
    for part in ("off its exact value", "fell by up to", "Fit in memory with fit_em"):
        assert part in found[bg.PrecisionWarning]
    assert "more passes will not help" in found[ConvergenceWarning] and not fit.converged
    assert not any("float64 (jax" in m for m in found.values())  # it is float64 already
    assert np.diff(fit.trace).min() < -1.0


def test_a_float32_stream_that_rounding_stopped_short_is_not_converged(tmp_path):
    """Batch streaming EM in float32 on covariances of condition number 1e6 said converged 94
    nats short of where one float64 step leads, and flagged its well-filled clusters collapsed.
    One float64 EM step over the stream (two more passes) decides, as fit_em's does; its gain is
    SciPy's step from the returned parameters."""
    x = ill_conditioned_clusters()
    path = tmp_path / "x.npy"
    np.save(path, x)
    with (precision(np.float32), pytest.warns(ConvergenceWarning, match="one float64 EM step from its answer"),
          pytest.warns(bg.PrecisionWarning, match="streamed objective")):  # its moment form's loss, said too
        fit = fit_em_stream(path, 2, batch_size=256)
    assert not fit.converged and fit.degenerate_components == ()
    np.testing.assert_allclose(fit.info["float64_step_gain"], one_float64_em_step_gain(x, fit), rtol=1e-6)
