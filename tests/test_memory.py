"""Memory: the blocked E-step equals the whole-data one, and a fit too large for the free memory
is refused before it runs, with advice, instead of dying inside XLA."""

import re

import numpy as np
import pytest

import bayesgmm as bg
from bayesgmm import _compile, _stats


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(3)
    x = np.concatenate([rng.normal(size=(700, 2)) * [1.0, 3.0], rng.normal(size=(901, 2)) + [4.0, -2.0]])
    return x, rng.integers(0, 3, size=len(x)).astype(float)


def test_block_rows_policy():
    """Small data run in one block (the fast program unchanged); large data in blocks whose
    features take about BLOCK_ELEMENTS, so the E-step's memory no longer grows with N * p; on the
    CPU, features much larger than the data in blocks that stay in the caches: about
    CACHE_BLOCK_BYTES of features in the fast form, CACHE_BLOCK_ELEMENTS in the centred one."""
    assert _stats.block_rows(100_000, 16, "full") is None
    blocks = _stats.block_rows(5_000_000, 16, "full")
    p = _stats.num_suff_features(16, "full")
    assert blocks.fast == blocks.precise
    assert _stats.BLOCK_ELEMENTS / (2 * p) < blocks.fast <= _stats.BLOCK_ELEMENTS / p
    assert blocks.fast & (blocks.fast - 1) == 0
    # on the CPU, features much larger than the data go in blocks that stay in the caches; the
    # fast form's hold CACHE_BLOCK_BYTES (8 MiB: 4096 rows of 153 float64 features, 8192 of float32)
    cached = _stats.RowBlocks(4096, 1024, row_major=True)  # the CPU's blocks: row-major fast form
    assert _stats.block_rows(100_000, 16, "full", cpu=True) == cached  # Z 15.3M elements, p / D = 9.6
    assert _stats.block_rows(100_000, 16, "full", cpu=True, itemsize=4) == cached._replace(fast=8192)
    assert _stats.block_rows(5_000_000, 16, "tied", cpu=True) == cached
    assert not blocks.row_major  # accelerators: the whole-data form's layout
    assert _stats.block_rows(30_000, 16, "full", cpu=True) is None  # Z 4.6M elements: made once
    # features not much larger than the data (p / D below 4): component-major blocks of about
    # SMALL_FEATURES_BLOCK_ELEMENTS features above SMALL_FEATURES_BLOCKED_ABOVE
    assert _stats.block_rows(1_000_000, 2, "full", cpu=True) == _stats.RowBlocks(65536, 32768, row_major=False)
    assert _stats.block_rows(100_000, 16, "diag", cpu=True) == _stats.RowBlocks(8192, 4096, row_major=False)
    assert _stats.block_rows(100_000, 16, "diag", cpu=True, itemsize=4) == _stats.RowBlocks(8192, 4096)
    assert _stats.block_rows(30_000, 16, "diag", cpu=True) is None  # 990,000 features: made once
    assert _stats.block_rows(1_000_000, 16, "diag") is None  # accelerators: whole-data features up to BLOCKED_ABOVE
    # many components in float64: those blocks row-major, of at most ROW_MAJOR_SMALL_FEATURES_ROWS rows
    many = _stats.ROW_MAJOR_MIN_COMPONENTS
    assert _stats.block_rows(100_000, 16, "diag", cpu=True, num_components=many) == _stats.RowBlocks(8192, 4096, True)
    assert _stats.block_rows(1_000_000, 2, "full", cpu=True, num_components=many) == _stats.RowBlocks(16384, 32768, True)
    assert _stats.block_rows(100_000, 16, "diag", cpu=True, num_components=many - 1) == _stats.RowBlocks(8192, 4096)
    assert _stats.block_rows(100_000, 16, "diag", cpu=True, itemsize=4, num_components=many) == _stats.RowBlocks(8192, 4096)
    assert _stats.block_rows(30_000, 16, "diag", cpu=True, num_components=many) is None


@pytest.mark.parametrize("covariance_type, hard", [("full", False), ("diag", True)])
def test_blocked_e_step_equals_whole(data, monkeypatch, covariance_type, hard):
    """Row blocks (the last one overlapping the one before it), weighted rows and the precise form
    give the fit of the whole-data E-step: same iterations, objective to round-off."""
    x, w = data
    whole = bg.fit_em(x, 2, covariance_type=covariance_type, hard=hard, sample_weight=w, n_init=2, seed=4)
    monkeypatch.setattr(_stats, "BLOCK_ELEMENTS", 2**8)  # blocks of 1024 rows: 1601 rows = 2 blocks
    monkeypatch.setattr(_stats, "BLOCKED_ABOVE", 0)
    assert _stats.block_rows(len(x), 2, covariance_type) == (1024, 1024, False)  # a fit on the CPU asks with cpu=True: row-major
    blocked = bg.fit_em(x, 2, covariance_type=covariance_type, hard=hard, sample_weight=w, n_init=2, seed=4)
    assert blocked.n_iter == whole.n_iter and blocked.converged == whole.converged
    np.testing.assert_allclose(blocked.log_likelihood, whole.log_likelihood, rtol=1e-12)
    np.testing.assert_allclose(blocked.params.means, whole.params.means, rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(blocked.params.covariances, whole.params.covariances, rtol=1e-8, atol=1e-10)


@pytest.mark.parametrize("covariance_type, row_major", [("diag", False), ("full", False), ("diag", True)])
def test_cpu_blocks_of_few_features_equal_whole(data, monkeypatch, covariance_type, row_major):
    """On the CPU, features not much larger than the data (D = 2) go in blocks above
    SMALL_FEATURES_BLOCKED_ABOVE, component-major, or row-major for many components in float64
    (here from K = 2): the fit runs in them and equals the whole-data one (same iterations,
    objective to round-off)."""
    x, w = data
    whole = bg.fit_em(x, 2, covariance_type=covariance_type, sample_weight=w, n_init=2, seed=4)
    monkeypatch.setattr(_stats, "SMALL_FEATURES_BLOCKED_ABOVE", 1000)
    monkeypatch.setattr(_stats, "SMALL_FEATURES_BLOCK_ELEMENTS", 2**12)  # fast form: 512 or 1024 rows
    monkeypatch.setattr(_stats, "CACHE_BLOCK_ELEMENTS", 2**11)  # centred form: 512 rows (1601 rows in 2-4 blocks)
    monkeypatch.setattr(_stats, "ROW_MAJOR_MIN_COMPONENTS", 2 if row_major else 1000)
    asked = []
    policy = _stats.block_rows
    monkeypatch.setattr(_stats, "block_rows", lambda *a, **kw: asked.append(policy(*a, **kw)) or asked[-1])
    blocked = bg.fit_em(x, 2, covariance_type=covariance_type, sample_weight=w, n_init=2, seed=4)
    blocks = asked[0]  # what the fit ran in
    assert blocks is not None and blocks.row_major == row_major and blocks.fast < len(x)
    assert blocked.n_iter == whole.n_iter and blocked.converged == whole.converged
    np.testing.assert_allclose(blocked.log_likelihood, whole.log_likelihood, rtol=1e-12)
    np.testing.assert_allclose(blocked.params.means, whole.params.means, rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(blocked.params.covariances, whole.params.covariances, rtol=1e-8, atol=1e-10)


@pytest.mark.parametrize("covariance_type, num_features", [("diag", 2), ("full", 5)])
def test_vb_in_row_blocks_equals_whole(monkeypatch, covariance_type, num_features):
    """VB's E-step takes EM's row blocks (component-major for few features, row-major cache
    blocks for full covariances from D = 5), its starts' statistics the memory bound's: the fit
    equals the whole-data one (same sweeps, ELBO and q to round-off), with row weights and the
    expectation terms of every component."""
    rng = np.random.default_rng(11)
    x = np.concatenate([rng.normal(size=(900, num_features)), rng.normal(size=(700, num_features)) * 0.7 + 3.0])
    w = rng.integers(1, 4, size=len(x)).astype(float)
    options = dict(covariance_type=covariance_type, sample_weight=w, n_init=2, seed=5, max_iter=40)
    whole = bg.fit_vb(x, 3, **options)
    for name, value in [("SMALL_FEATURES_BLOCKED_ABOVE", 1000), ("SMALL_FEATURES_BLOCK_ELEMENTS", 2**12),
                        ("CACHE_BLOCKED_ABOVE", 1000), ("CACHE_BLOCK_BYTES", 2**15), ("CACHE_BLOCK_ELEMENTS", 2**12),
                        ("BLOCKED_ABOVE", 0), ("BLOCK_ELEMENTS", 2**8)]:
        monkeypatch.setattr(_stats, name, value)  # 1600 rows in blocks of 128-512; the starts' in 1024
    blocks = _stats.block_rows(2048, num_features, covariance_type, cpu=True)
    assert blocks is not None and blocks.fast < len(x) and blocks.row_major == (covariance_type == "full")
    asked = []
    policy = _stats.block_rows
    monkeypatch.setattr(_stats, "block_rows", lambda *a, **kw: asked.append(policy(*a, **kw)) or asked[-1])
    blocked = bg.fit_vb(x, 3, **options)
    assert asked[0] == blocks  # the fit runs in them (asked again while tracing: the starts' blocks)
    assert blocked.n_iter == whole.n_iter and blocked.converged == whole.converged
    np.testing.assert_allclose(blocked.info["elbo"], whole.info["elbo"], rtol=1e-12)
    for name in ("alpha", "beta", "m", "nu", "psi"):
        np.testing.assert_allclose(blocked.info[name], whole.info[name], rtol=1e-8, atol=1e-10)


@pytest.mark.parametrize("precise, dtype, row_major", [
    (False, np.float64, True), (False, np.float64, False), (True, np.float64, False),
    (False, np.float32, True), (False, np.float32, False),
])
def test_each_form_runs_in_its_own_blocks(data, precise, dtype, row_major):
    """The fast and the centred forms take their own row blocks (RowBlocks), the fast form in
    either layout: the totals and the statistics of either form in its blocks equal those of all
    rows at once (float32: the blocks' per-row slots, a compensated pair and |l_n| each, to
    float32's rounding)."""
    import jax
    import jax.numpy as jnp

    from bayesgmm.params import GMMParams

    x, w = (a.astype(dtype) for a in data)
    rng = np.random.default_rng(6)
    params = GMMParams(*(jnp.asarray(a, dtype) for a in (
        [0.3, 0.7], rng.normal(size=(2, 2)), [[[1.0, 0.3], [0.3, 0.8]], [[0.5, -0.1], [-0.1, 1.2]]])))

    def totals(blocks):
        z = _stats.suff_features(jnp.asarray(x), "full")
        run = jax.jit(lambda z, x, w, p: _stats.e_step_totals(z, x, w, p, "full", precise, block_rows=blocks))
        return run(z, jnp.asarray(x), jnp.asarray(w), params)

    whole = totals(None)
    # 1601 rows: 4 fast blocks of 512 or 7 centred blocks of 256, the last overlapping
    blocked = totals(_stats.RowBlocks(fast=512, precise=256, row_major=row_major))
    (high, low), magnitude, stats = blocked
    rtol = 1e-13 if dtype == np.float64 else 1e-6
    np.testing.assert_allclose(float(high) + float(low), float(whole[0][0]) + float(whole[0][1]), rtol=rtol)
    np.testing.assert_allclose(magnitude, whole[1], rtol=rtol)
    for a, b in zip(stats, whole[2]):
        np.testing.assert_allclose(a, b, rtol=100 * rtol, atol=100 * rtol)


@pytest.mark.parametrize("covariance_type", ["full", "diag"])
def test_blocked_centred_statistics_equal_whole(data, covariance_type):
    """A start's M-step statistics in row blocks (the last block overlapping the one before it)
    equal those of all rows at once: counts, means and scatter matrices to round-off."""
    import jax.numpy as jnp

    x, w = data
    rng = np.random.default_rng(5)
    resp = rng.dirichlet(np.ones(3), size=len(x)).T * w[None]  # (K, N), rows weighted, some weight 0
    whole = _stats.stats_precise(jnp.asarray(resp), jnp.asarray(x), covariance_type)
    blocked = _stats.stats_precise(jnp.asarray(resp), jnp.asarray(x), covariance_type, block_rows=256)  # 1601 rows: 7 blocks
    for a, b in zip(blocked, whole):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)


def test_fit_larger_than_free_memory_is_refused(data, monkeypatch):
    """XLA's account of the program is compared with the free memory before the run: too little
    raises a ValueError (and MemoryError) that names the size and points to fit_em_stream."""
    x, _ = data
    monkeypatch.setattr(_compile, "available_memory", lambda device: 1000)
    monkeypatch.setattr(_compile, "MEMORY_CHECK_MIN", 0)  # programs this small are never refused
    with pytest.raises(bg.InsufficientMemoryError, match="fit_em_stream") as info:
        bg.fit_em(x, 2, n_init=1)
    assert isinstance(info.value, ValueError) and isinstance(info.value, MemoryError)
    # sizes in units that show them (small ones were "0.0 GiB")
    assert re.search(r"needs about \d+\.\d (KiB|MiB) of memory .* but only 1\.0 KiB are free", str(info.value))
    assert [_compile.memory_size(n) for n in (2**20 - 1, 2**30 - 1, 1536, 0)] == ["1.0 MiB", "1.0 GiB", "1.5 KiB", "0 bytes"]
    monkeypatch.setattr(_compile, "MEMORY_CHECK_MIN", 2**28)
    assert np.isfinite(bg.fit_em(x, 2, n_init=1).log_likelihood)  # under the minimum: run
    monkeypatch.setattr(_compile, "available_memory", lambda device: None)  # unknown: no check
    assert np.isfinite(bg.fit_em(x, 2, n_init=1).log_likelihood)


def test_program_memory_is_counted():
    """The estimate is XLA's own: at least the arguments' bytes of the compiled EM program."""
    from bayesgmm import _em_core

    x = np.random.default_rng(0).normal(size=(500, 3))
    bg.fit_em(x, 2, n_init=1)
    sizes = [m for m in _em_core.PROGRAM._memory.values() if m is not None]
    assert sizes and min(sizes) >= x.nbytes


@pytest.mark.parametrize("covariance_type, num_features", [("full", 3), ("diag", 3), ("spherical", 3), ("full", 17)])
def test_components_together_equal_one_after_another(covariance_type, num_features):
    """The centred form with every component at once (``vmap``, accelerators) computes what it
    computes one component after another (``lax.map``, the CPU): log densities, statistics whole
    and in row blocks, both for the written-out features (D <= 16) and the matrix form."""
    import jax
    import jax.numpy as jnp

    from bayesgmm.params import GMMParams

    rng = np.random.default_rng(8)
    k, n, d = 3, 701, num_features
    x = jnp.asarray(rng.normal(size=(n, d)) + 4.0 * rng.integers(0, k, size=(n, 1)))
    a = rng.normal(size=(k, d, d)) / np.sqrt(d)
    full = np.einsum("kij,klj->kil", a, a) + np.eye(d)
    cov = {"full": full, "diag": np.abs(rng.normal(size=(k, d))) + 0.5,
           "spherical": np.abs(rng.normal(size=k)) + 0.5}[covariance_type]
    params = GMMParams(jnp.asarray([0.2, 0.3, 0.5]), jnp.asarray(rng.normal(size=(k, d))), jnp.asarray(cov))
    resp = jnp.asarray(rng.dirichlet(np.ones(k), size=n).T)

    def both(fn):
        loops = [str(jax.make_jaxpr(lambda t=t: fn(t))()).count("scan[") for t in (False, True)]
        assert loops[1] < loops[0]  # at once: no loop over components (the row blocks' remains)
        apart, together = (jax.jit(lambda t=t: fn(t))() for t in (False, True))
        jax.tree_util.tree_map(lambda u, v: np.testing.assert_allclose(u, v, rtol=1e-12, atol=1e-12), apart, together)
        return together

    logp = both(lambda t: _stats.log_joint_precise(x, params, covariance_type, together=t))
    assert logp.shape == (k, n) and np.all(np.isfinite(logp))
    both(lambda t: _stats.stats_precise(resp, x, covariance_type, together=t))
    both(lambda t: _stats.stats_precise(resp, x, covariance_type, block_rows=256, together=t))
    both(lambda t: _stats.e_step_totals(None, x, None, params, covariance_type, True, block_rows=256, together=t))


def test_fit_with_components_together_equals_the_default(monkeypatch):
    """A float32 fit that takes the centred form (tight clusters far apart) gives the same fit
    with the components at once (the accelerators' choice, forced here on the CPU), in EM and VB."""
    rng = np.random.default_rng(9)
    x = (rng.normal(size=(600, 2)) * 0.2 + 50.0 * rng.integers(0, 3, size=(600, 1))).astype(np.float32)
    default = bg.fit_em(x, 3, seed=2)
    monkeypatch.setattr(_stats, "COMPONENTS_TOGETHER", True)
    together = bg.fit_em(x, 3, seed=2)
    assert together.n_iter == default.n_iter and together.converged
    np.testing.assert_allclose(together.log_likelihood, default.log_likelihood, rtol=1e-6)
    np.testing.assert_allclose(together.params.covariances, default.params.covariances, rtol=1e-4)
    monkeypatch.setattr(_stats, "COMPONENTS_TOGETHER", None)
    vb_default = bg.fit_vb(x, 3, seed=2, max_iter=30)
    monkeypatch.setattr(_stats, "COMPONENTS_TOGETHER", True)
    vb_together = bg.fit_vb(x, 3, seed=2, max_iter=30)
    assert vb_together.n_iter == vb_default.n_iter
    np.testing.assert_allclose(vb_together.info["elbo"], vb_default.info["elbo"], rtol=1e-6)
