"""Memory: the blocked E-step equals the whole-data one, and a fit too large for the free memory
is refused before it runs, with advice, instead of dying inside XLA."""

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
    CPU, features much larger than the data in blocks of about CACHE_BLOCK_ELEMENTS."""
    assert _stats.block_rows(100_000, 16, "full") is None
    rows = _stats.block_rows(5_000_000, 16, "full")
    p = _stats.num_suff_features(16, "full")
    assert rows is not None and _stats.BLOCK_ELEMENTS / (2 * p) < rows <= _stats.BLOCK_ELEMENTS / p
    assert rows & (rows - 1) == 0
    # on the CPU, features much larger than the data go in blocks that stay in cache
    assert _stats.block_rows(100_000, 16, "full", cpu=True) == 1024  # Z 15.3M elements, p / D = 9.6
    assert _stats.block_rows(5_000_000, 16, "full", cpu=True) == 1024
    assert _stats.block_rows(30_000, 16, "full", cpu=True) is None  # Z 4.6M elements: made once
    assert _stats.block_rows(1_000_000, 2, "full", cpu=True) is None  # p / D = 3: blocks did not pay
    assert _stats.block_rows(1_000_000, 16, "diag", cpu=True) is None  # p / D = 2


@pytest.mark.parametrize("covariance_type, hard", [("full", False), ("diag", True)])
def test_blocked_e_step_equals_whole(data, monkeypatch, covariance_type, hard):
    """Row blocks (the last one overlapping the one before it), weighted rows and the precise form
    give the fit of the whole-data E-step: same iterations, objective to round-off."""
    x, w = data
    whole = bg.fit_em(x, 2, covariance_type=covariance_type, hard=hard, sample_weight=w, n_init=2, seed=4)
    monkeypatch.setattr(_stats, "BLOCK_ELEMENTS", 2**8)  # blocks of 1024 rows: 1601 rows = 2 blocks
    monkeypatch.setattr(_stats, "BLOCKED_ABOVE", 0)
    assert _stats.block_rows(len(x), 2, covariance_type) == 1024
    blocked = bg.fit_em(x, 2, covariance_type=covariance_type, hard=hard, sample_weight=w, n_init=2, seed=4)
    assert blocked.n_iter == whole.n_iter and blocked.converged == whole.converged
    np.testing.assert_allclose(blocked.log_likelihood, whole.log_likelihood, rtol=1e-12)
    np.testing.assert_allclose(blocked.params.means, whole.params.means, rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(blocked.params.covariances, whole.params.covariances, rtol=1e-8, atol=1e-10)


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
    assert "only 0.0 GiB are free" in str(info.value)
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
