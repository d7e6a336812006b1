"""Streaming (out-of-core) EM: fit data that do not fit in memory, one chunk at a time.

:func:`fit_em_stream` reads its data in chunks of ``batch_size`` rows from an array, an
``np.memmap``, a ``.npy`` file (read with seek + ``readinto`` into one preallocated buffer,
never loaded whole) or a Parquet file (``pyarrow``, optional), so memory does not grow with N.

Passes over the data:

1. **Moments** (host, float64): N, each feature's mean and standard deviation (Chan et al.'s
   pairwise update), a check for NaN/inf naming the chunk and row, and a random subsample of
   ``num_init_rows`` rows drawn reproducibly from the seed (with a given start, the rows
   :func:`bayesgmm.fit_em` standardises by: every row up to 32,768, evenly spaced ones beyond).
2. **Initialisation** in memory on the subsample, standardised as :func:`bayesgmm.fit_em`
   standardises (each feature's median and robust standard deviation, here the subsample's): the
   same k-means start and ``n_init`` vmapped restarts as :func:`bayesgmm.fit_em`, EM to ``tol``.
3. **EM**, on standardised chunks, by one of two methods:

   * ``"batch"``: exact EM. Each iteration is one pass accumulating ``resp.T @ Z`` (every
     sufficient statistic, :mod:`bayesgmm._stats`) and the log-likelihood chunk by chunk, then the
     closed-form M-step. From the same starting point it is the same algorithm as
     :func:`bayesgmm.fit_em` (same tolerance test on the mean objective per observation, same
     ``n_iter``, ``trace`` and ``converged`` for the same ``max_iter``: the default here is 500
     passes, ``fit_em``'s 1000 iterations) and equals it up to floating-point summation order,
     with one exception: the chunks take the fast E-step throughout, where ``fit_em`` switches
     to its centred form for a component too tight for it, so in float32 such a component (a
     cluster of standard deviation 3e-4 of the data's) ends worse, flagged by a
     DegenerateComponentWarning that says so; fit such data in float64.
   * ``"online"``: stepwise EM (Cappé & Moulines 2009). After each chunk the per-observation
     statistics are updated, ``s <- (1 - g_t) s + g_t s_chunk`` with ``g_t = (t + 2)^(-rho)``
     (``rho = step_exponent``), and the parameters are the M-step of ``N s``. Several passes
     may run; the chunk order is shuffled every pass where the source allows random access.
     Converges to a stationary point of the full-data likelihood with O(passes) reads instead of
     O(iterations), at the price of a stochastic approximation.
4. **Final pass**: the exact full-data log-likelihood at the returned parameters.

Every chunk has the same shape (the last one is padded with weight-0 rows), so the chunk
function is compiled once per (batch size, D, K, structure) -- plus once for the final pass,
which also sums the entropy of the responsibilities. With ``devices=`` each chunk's rows are
sharded over a device mesh (:mod:`bayesgmm._sharding`). On CPU a chunk is processed in
sub-blocks of a few thousand rows (a ``lax.scan``) whose features stay in cache. Reading the
next chunk overlaps the (asynchronously dispatched) computation on this one; at most two chunks
are in flight, so memory is bounded by the chunk size, not by N.

Everything is reported on the original scale, as by :func:`bayesgmm.fit_em`.

Float policy: the package's (:func:`bayesgmm.params.compute_dtype`): every fit runs in JAX's
default float type, float64 with ``jax_enable_x64`` on and float32 otherwise, whatever the
storage type; chunks stored in another type (float32 under x64, integers, float16) are
standardised on the host in float64. Statistics are accumulated over chunks in that dtype.
"""

from __future__ import annotations

import functools
import threading
import time
import warnings
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from . import _em_host, _iterate, _missing, _numerics, _sharding, _split_merge, _stats
from ._compile import jit, running
from ._em_core import EMConfig, search
from ._em_host import choose_run
from ._iterate import FLOOR_ULPS, INIT_ITER, resolve_starts, trace_length
from .kmeans import INIT_METHODS
from .params import (
    MISSING_POLICIES,
    ConvergenceWarning,
    DegenerateComponentWarning,
    GMMParams,
    PrecisionWarning,
    Prior,
    check_bool,
    check_covariance_type,
    check_nonnegative,
    check_num_components,
    check_params,
    check_positive_integers,
    check_prior,
    compute_dtype,
    log_jacobians,
    mark_missing,
    params_to_original,
    params_to_standard,
    refuse_out_of_range,
    seed_to_key,
    standardisation,
    standardisation_step,
)
from .results import FitResult
from .sources import Source, open_source

__all__ = ["fit_em_stream", "open_source"]

METHODS = ("batch", "online")



# ----------------------------------------------------------------------------------------------
# Pass 1: moments, NaN check, subsample
# ----------------------------------------------------------------------------------------------
class _Moments(NamedTuple):
    num_obs: int
    mean: np.ndarray
    sd: np.ndarray
    subsample: np.ndarray | None  # (m, D) float64, the rows of ``rows`` in row order
    cov: np.ndarray | None = None  # (D, D) sample covariance (ddof=1), when asked for
    observed: np.ndarray | None = None  # (D,) observed entries per column, when values are missing


def _scan(src: Source, batch_size: int, rows: np.ndarray | None, progress, covariance: bool = False,
          missing: bool = False) -> _Moments:
    """One pass: float64 mean and variance (pairwise combination of chunk moments), NaN/inf
    check, the subsample ``rows`` (sorted row indices) and, with ``covariance``, the full
    sample covariance (for the default prior). ``missing``: NaN entries are missing values; each
    column's moments are then those of its observed entries (and the covariance is diagonal)."""
    d = src.num_features
    n, mean, m2 = 0, np.zeros(d), np.zeros(d)
    counts = np.zeros(d)
    cross = np.zeros((d, d)) if covariance else None
    sub = None if rows is None else np.empty((len(rows), d))
    for i, start, chunk in progress.chunks(src.chunks(batch_size, range(src.num_chunks(batch_size))), "moments"):
        c = np.asarray(chunk, dtype=np.float64)
        m = c.shape[0]
        finite = np.isfinite(c)
        if not finite.all():
            infinite = np.isinf(c).any(axis=1)
            if infinite.any():  # never missing values: named first, with the fix that works
                bad_rows, what = np.flatnonzero(infinite), "infinite values"
                hint = "Remove those rows, or set infinite entries to NaN " + (
                    "(missing values)." if missing else "and pass missing='marginalize' to treat them as missing.")
            else:
                bad_rows = np.flatnonzero(~finite.all(axis=1) if not missing else ~finite.any(axis=1))
                what = "NaN values" if not missing else "rows with no observed value"
                hint = ("To treat NaN entries as missing at random, pass missing='marginalize'; otherwise remove or "
                        "impute them." if not missing else "Remove those rows.")
            if bad_rows.size:
                raise ValueError(f"{src.name} contains {what} in chunk {i} (rows {start} to {start + m - 1}; first "
                                 f"bad row: {start + int(bad_rows[0])}). {hint}")
        if missing:  # per column, over its observed entries (Chan et al.'s pairwise update per column)
            seen = finite.sum(axis=0)
            safe = np.maximum(seen, 1)
            c_mean = np.where(finite, c, 0.0).sum(axis=0) / safe
            c_m2 = np.where(finite, (c - c_mean) ** 2, 0.0).sum(axis=0)
            total = counts + seen
            share = np.where(total > 0, seen / np.maximum(total, 1), 0.0)
            delta = c_mean - mean
            m2 = m2 + c_m2 + delta**2 * counts * share
            mean = mean + delta * share
            counts = total
            n += m
            if sub is not None:
                lo, hi = np.searchsorted(rows, [start, start + m])
                sub[lo:hi] = c[rows[lo:hi] - start]
            continue
        c_mean = c.mean(axis=0)
        c_m2 = np.sum((c - c_mean) ** 2, axis=0)
        delta = c_mean - mean
        total = n + m
        if cross is not None:
            centred = c - c_mean
            cross = cross + centred.T @ centred + np.outer(delta, delta) * (n * m / total)
        mean = mean + delta * (m / total)
        m2 = m2 + c_m2 + delta**2 * (n * m / total)
        n = total
        if sub is not None:
            lo, hi = np.searchsorted(rows, [start, start + m])
            sub[lo:hi] = c[rows[lo:hi] - start]
    if n != src.num_rows:
        raise ValueError(f"{src.name} announced {src.num_rows} rows but {n} were read.")
    if missing:
        if np.any(counts < 2):
            names = [src.feature_names[j] for j in np.flatnonzero(counts < 2)]
            raise ValueError(f"{src.name} has column(s) {names} with fewer than two observed values; drop them.")
        cov = np.diag(m2 / np.maximum(counts - 1, 1)) if covariance else None
        return _Moments(n, mean, np.sqrt(m2 / counts), sub, cov, counts if np.any(counts < n) else None)
    cov = None if cross is None else cross / max(n - 1, 1)
    return _Moments(n, mean, np.sqrt(m2 / n), sub, cov)


# ----------------------------------------------------------------------------------------------
# Compiled pieces (pure functions; shapes and structure static)
# ----------------------------------------------------------------------------------------------
class StreamConfig(NamedTuple):
    """Static choices of the streaming programs."""

    num_components: int
    num_features: int
    covariance_type: str
    use_prior: bool
    missing: bool = False  # NaN entries are missing values: the E-step of bayesgmm._missing


class ChunkStats(NamedTuple):
    """``resp.T @ Z`` (K, p) summed over the rows seen so far; the log-likelihood, its magnitude
    ``sum |l_n|`` (the precision floor) and the responsibilities' entropy of the last chunk (the
    host adds those up in float64)."""

    stats: jax.Array
    log_lik: jax.Array
    magnitude: jax.Array
    entropy: jax.Array


def _zero_stats(config: StreamConfig, dtype) -> jax.Array:
    p = _stats.num_suff_features(config.num_features, config.covariance_type)
    return jnp.zeros((config.num_components, p), dtype)


def _block_stats(x, weight, shift, scale, theta, covariance_type, with_entropy):
    """E-step sums of one sub-block: ``theta @ Z.T`` and ``R @ Z`` (component-major, as
    :mod:`bayesgmm._stats`) with ``Z = [quad | x | 1]`` taken block by block, so that Z itself is
    never assembled."""
    keep = weight[:, None] > 0
    xs = jnp.where(keep, (x - shift) / scale, 0.0)  # padding rows: finite whatever the buffer holds
    quad = _stats.quad_features(xs, covariance_type)
    q, d = quad.shape[1], xs.shape[1]
    logp = theta[:, :q] @ quad.T + theta[:, q : q + d] @ xs.T + theta[:, -1:]  # (K, B)
    resp, ll = _stats.responsibilities(logp)
    rw = resp * weight[None]
    stats = jnp.concatenate([rw @ quad, rw @ xs, jnp.sum(rw, axis=1)[:, None]], axis=1)
    entropy = jnp.zeros((), x.dtype)
    if with_entropy:
        entropy = -jax.scipy.special.xlogy(resp, resp).sum(axis=0) @ weight
    return ChunkStats(stats, ll @ weight, jnp.abs(ll) @ weight, entropy)


def _block_stats_missing(x, weight, shift, scale, params, covariance_type, with_entropy):
    """:func:`_block_stats` for rows with NaN entries (missing values): the exact conditional
    E-step of :mod:`bayesgmm._missing` at ``params``, whose expected features ``E[Z | x_o, k]``
    (the completed row and its second moments, conditional covariances included) are summed in
    the same layout, so every M-step and the online update apply unchanged."""
    keep = weight[:, None] > 0
    xs = (x - shift) / scale
    observed = keep & ~jnp.isnan(xs)
    xs = jnp.where(observed, xs, 0.0)
    log_density, completed, conditional = _missing.conditional_components(xs, observed, params, covariance_type)
    resp, ll = _stats.responsibilities((log_density + jnp.log(params.weights)[None]).T)
    resp = resp.T  # (B, K): this rarer path keeps the rows' layout of the conditional moments
    rw = resp * weight[:, None]
    if covariance_type in ("full", "tied"):
        second = completed[..., :, None] * completed[..., None, :] + conditional  # (B, K, D, D)
        i, j = np.triu_indices(xs.shape[1])
        quad = second[..., i, j]
    else:
        quad = completed * completed + conditional
        if covariance_type == "spherical":
            quad = jnp.sum(quad, axis=-1, keepdims=True)
    stats = jnp.concatenate([jnp.einsum("nk,nkq->kq", rw, quad), jnp.einsum("nk,nkd->kd", rw, completed),
                             jnp.sum(rw, axis=0)[:, None]], axis=1)
    entropy = jnp.zeros((), x.dtype)
    if with_entropy:
        entropy = -jax.scipy.special.xlogy(resp, resp).sum(axis=1) @ weight
    return ChunkStats(stats, ll @ weight, jnp.abs(ll) @ weight, entropy)


@functools.partial(jit, static_argnames=("covariance_type", "block_rows", "strided", "with_entropy", "missing"))
def chunk_stats(acc, x, weight, shift, scale, theta, *, covariance_type: str, block_rows: int,
                strided: bool, with_entropy: bool = False, missing: bool = False) -> ChunkStats:
    """``acc`` (summed statistics, (K, p)) plus one chunk's, and the chunk's log-likelihood sums
    (the entropy of the responsibilities only ``with_entropy``; ~8% of a chunk's time on CPU).

    ``x`` (B, D) raw rows, ``weight`` (B,) 1 or 0 (padding), ``(x - shift) / scale`` the
    standardised rows, ``theta`` the natural parameters. The chunk is processed in sub-blocks of
    ``block_rows`` rows (a ``lax.scan``), so that the (rows, p) features of a sub-block stay in
    cache: on CPU that makes the per-chunk feature construction as cheap as reading precomputed
    features. ``strided``: sub-block ``s`` holds rows ``s, s + B/block_rows, ...``, so that with
    the rows sharded over devices in contiguous blocks every sub-block spans every device.
    ``missing``: NaN entries of ``x`` are missing values and ``theta`` is the (standardised)
    :class:`GMMParams` itself (:func:`_block_stats_missing`).
    """
    b, d = block_rows, x.shape[1]
    if strided:
        xb, wb = x.reshape(b, -1, d).swapaxes(0, 1), weight.reshape(b, -1).T
    else:
        xb, wb = x.reshape(-1, b, d), weight.reshape(-1, b)

    block_fn = _block_stats_missing if missing else _block_stats

    def body(carry, block):
        s = block_fn(*block, shift, scale, theta, covariance_type, with_entropy)
        return ChunkStats(*(a + v for a, v in zip(carry, s))), None

    zero = jnp.zeros((), x.dtype)
    return jax.lax.scan(body, ChunkStats(acc, zero, zero, zero), (xb, wb))[0]


def params_from_stats(s, prior, reg_covar, config: StreamConfig) -> GMMParams:
    """Closed-form M-step from summed statistics ``s`` (K, p) (ML, or MAP with ``prior``)."""
    d, ct = config.num_features, config.covariance_type
    stats = _stats.scatter(*_stats.unpack_stats(s, d, ct), ct)
    # one pass forms the scatter from moments about zero: floor what their cancellation leaves
    return _stats.raise_to_floor(_stats.m_step(*stats, ct, reg_covar, prior if config.use_prior else None), ct, reg_covar)


@functools.partial(jit, static_argnames=("covariance_type",))
def _natural(params, *, covariance_type):
    return _stats.natural_params(params, covariance_type)


@functools.partial(jit, static_argnames=("config",))
def batch_update(stats, prior, reg_covar, *, config: StreamConfig):
    """End of a batch pass, as :func:`bayesgmm._em_core.em_step`: the M-step from the summed
    statistics. Returns ``(new_params, natural_params(new_params))``."""
    new = params_from_stats(stats, prior, reg_covar, config)
    return new, _stats.natural_params(new, config.covariance_type)


def expected_stats(params: GMMParams, covariance_type: str):
    """Per-observation sufficient statistics implied by ``params``: ``E[resp.T @ Z] / N`` under
    the mixture itself, shape (K, p). The M-step of ``N`` times them returns ``params`` (plus
    ``reg_covar``): the starting point of online EM."""
    w, mu, cov = params
    k, d = mu.shape
    if covariance_type in ("full", "tied"):
        second = _numerics.expand_covariances(cov, covariance_type, k, d) + mu[:, :, None] * mu[:, None, :]
        i, j = np.triu_indices(d)
        quad = second[:, i, j]
    elif covariance_type == "diag":
        quad = cov + mu**2
    else:
        quad = (d * cov + jnp.sum(mu**2, -1))[:, None]
    return w[:, None] * jnp.concatenate([quad, mu, jnp.ones((k, 1), mu.dtype)], axis=1)


_expected_stats_jit = jit(expected_stats, static_argnames=("covariance_type",))


@functools.partial(jit, static_argnames=("config",))
def online_update(s, chunk, gamma, chunk_rows, num_obs, prior, reg_covar, *, config: StreamConfig):
    """Stepwise EM: ``s <- (1 - gamma) s + gamma chunk / chunk_rows``; parameters from ``N s``.

    Returns ``(s, params, natural_params(params))``.
    """
    s = (1.0 - gamma) * s + gamma * (chunk / chunk_rows)
    params = params_from_stats(num_obs * s, prior, reg_covar, config)
    return s, params, _stats.natural_params(params, config.covariance_type)


# ----------------------------------------------------------------------------------------------
# Host-side helpers
# ----------------------------------------------------------------------------------------------
def _check_options(method, batch_size, n_init, max_iter, tol, reg_covar, step_exponent, num_init_rows, init_params):
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}.")
    check_positive_integers(batch_size=batch_size, max_iter=max_iter, num_init_rows=num_init_rows)
    if not (isinstance(n_init, str) and n_init == "auto"):
        if isinstance(n_init, str):
            raise ValueError(f"n_init must be 'auto' or a positive integer, got {n_init!r}.")
        check_positive_integers(n_init=n_init)
    check_nonnegative(tol=tol, reg_covar=reg_covar)
    if not (isinstance(step_exponent, (int, float, np.floating)) and 0.5 < step_exponent <= 1.0):
        raise ValueError(
            f"step_exponent must be in (0.5, 1] (Cappé & Moulines' condition for the step sizes "
            f"(t + 2)^-step_exponent), got {step_exponent!r}."
        )
    if isinstance(init_params, str):
        if init_params not in INIT_METHODS:
            raise ValueError(f"init_params must be one of {INIT_METHODS}, a GMMParams or a FitResult; got {init_params!r}.")
    elif not isinstance(init_params, (GMMParams, FitResult)):
        raise ValueError(f"init_params must be one of {INIT_METHODS}, a GMMParams or a FitResult; got {init_params!r}.")


def _given_start(init, k, d, covariance_type, shift, sd):
    """A user-given starting point (original scale), validated and standardised."""
    if isinstance(init, FitResult):
        if init.covariance_type != covariance_type:
            raise ValueError(
                f"init_params is a {init.covariance_type!r} fit but covariance_type={covariance_type!r}."
            )
        init = init.params
    params = check_params(init, covariance_type, name="init_params")
    if params.means.shape != (k, d):
        raise ValueError(f"init_params has means of shape {params.means.shape}; expected ({k}, {d}).")
    return params_to_standard(params, shift, sd, covariance_type)


def _compute_dtype(storage: np.dtype):
    """The fit's dtype: the package's float policy (:func:`bayesgmm.params.compute_dtype`);
    chunks stored in another type are standardised on the host in float64."""
    del storage
    return compute_dtype()


#: Rows per sub-block of a chunk on CPU: the (rows, p) features of a sub-block stay in cache.
CPU_BLOCK_ROWS = 8192


def _blocking(batch_size: int, num_devices: int, platform: str) -> tuple[int, int]:
    """``(block_rows, padded_rows)`` of a chunk: sub-blocks of about :data:`CPU_BLOCK_ROWS` rows on
    CPU (one block on accelerators, which want large products), each a multiple of the device
    count; the chunk is padded with weight-0 rows to a whole number of sub-blocks."""
    target = CPU_BLOCK_ROWS if platform == "cpu" else batch_size
    num_blocks = -(-batch_size // target)
    rows = -(-batch_size // num_blocks)
    block = -(-rows // num_devices) * num_devices
    return block, block * num_blocks


def _numpy_rng(key) -> np.random.Generator:
    """A NumPy generator seeded from a JAX key (row subsample, chunk order: host-side draws)."""
    return np.random.default_rng(np.asarray(jax.random.bits(key, (4,), jnp.uint32)))


def _put(x, sharding):
    """Copy a host array to the device(s), so that the host buffer can be refilled at once.

    The copy is explicit: on CPU, ``jax.device_put`` may alias an aligned NumPy buffer (even with
    ``may_alias=False`` in JAX 0.10), and the next chunk read into it would then race with the
    computation still running on this one.
    """
    return _sharding.put_rows(np.array(x, copy=True), sharding)


_OPEN_BARS = threading.local()


class _Progress:
    """tqdm bars over passes and over the chunks of a pass; does nothing when disabled. A bar a
    fit leaves open by raising is closed by :func:`_closing_bars`."""

    def __init__(self, enabled: bool, num_chunks: int, max_passes: int):
        self.enabled, self.num_chunks = enabled, num_chunks
        if enabled:
            from tqdm.auto import tqdm

            self._tqdm = tqdm
            self.outer = tqdm(total=max_passes, desc="streaming EM", unit="pass")
            _OPEN_BARS.__dict__.setdefault("bars", []).append(self)

    def chunks(self, iterable, desc: str):
        if not self.enabled:
            return iterable
        return self._tqdm(iterable, total=self.num_chunks, desc=desc, unit="chunk", leave=False)

    def pass_done(self, **postfix):
        if self.enabled:
            self.outer.update(1)
            self.outer.set_postfix(postfix, refresh=False)

    def close(self, *, finished: bool = True):
        """Close the bar; a finished fit's passes are all it had (it stopped before ``max_iter``)."""
        if self.enabled and not self.outer.disable:
            if finished:
                self.outer.total = self.outer.n
                self.outer.refresh()
            self.outer.close()
            bars = _OPEN_BARS.__dict__.get("bars", [])
            if self in bars:
                bars.remove(self)


def _closing_bars(fit):
    """``fit`` closing the bars it opened and left open by raising (an error, an interrupt)."""

    @functools.wraps(fit)
    def closing(*args, **kwargs):
        bars = _OPEN_BARS.__dict__.setdefault("bars", [])
        before = len(bars)
        try:
            return fit(*args, **kwargs)
        finally:
            for bar in bars[before:]:
                bar.close(finished=False)
            del bars[before:]

    return closing


# ----------------------------------------------------------------------------------------------
# The passes: a feeder puts standardisable chunks on the device(s); two loops drive them
# ----------------------------------------------------------------------------------------------
def _wait_for(outputs) -> None:
    """Wait until ``outputs`` (programs dispatched inside a :func:`bayesgmm._compile.running`
    scope) are computed, before the scope releases the run lock; a failed program's error is
    left to whoever reads its output."""
    try:
        jax.block_until_ready(outputs)
    except Exception:  # noqa: BLE001 -- the error that ended the pass is the one to report
        pass


class _Feeder:
    """Reads chunks from a source and places them, padded, on the device(s).

    On the host: one buffer of ``padded`` rows (conversion and padding) and one copy per chunk in
    flight; at most two chunks are in flight, so memory does not grow with N.
    """

    def __init__(self, src: Source, batch_size: int, config: StreamConfig, dtype, shift, sd, devices, progress):
        self.src, self.batch_size, self.config, self.dtype, self.progress = src, batch_size, config, dtype, progress
        self.num_chunks = src.num_chunks(batch_size)
        rows = self.rows = _sharding.resolve(devices, batch_size)
        self.num_devices = rows.num_devices
        platform = jax.devices()[0].platform if rows.mesh is None else rows.mesh.devices.flat[0].platform
        block_rows, self.padded = _blocking(batch_size, rows.num_devices, platform)
        self.chunk_kw = dict(covariance_type=config.covariance_type, block_rows=block_rows, strided=rows.mesh is not None,
                             missing=config.missing)
        self.sharding = None if rows.mesh is None else _sharding.by_rows(rows.mesh)
        d = config.num_features
        self.buffer = np.zeros((self.padded, d), dtype)
        self.weight_full = _put(np.ones(self.padded, dtype), self.sharding)
        # integers, or float64 data without jax_enable_x64: standardise on the host in float64
        self.host_standardise = src.dtype != dtype
        self.shift, self.sd = shift, sd
        if self.host_standardise:
            self.shift_dev, self.scale_dev = jnp.zeros(d, dtype), jnp.ones(d, dtype)
        else:
            self.shift_dev, self.scale_dev = jnp.asarray(shift, dtype), jnp.asarray(sd, dtype)

    def chunks(self, order, desc):
        """Yield ``(rows, x, weight)`` on the device(s), in ``order`` (file order if not random access)."""
        for _, first_row, chunk in self.progress.chunks(self.src.chunks(self.batch_size, order), desc):
            m = chunk.shape[0]
            if self.host_standardise:
                with np.errstate(over="ignore"):  # beyond the compute type's range: named here
                    self.buffer[:m] = (chunk - self.shift) / self.sd
                refuse_out_of_range(self.buffer[:m], chunk, self.shift, self.sd, self.src.name, first_row)
                host = self.buffer
            elif m == self.padded and chunk.dtype == self.dtype and chunk.flags.c_contiguous:
                host = chunk  # straight from the read buffer (or the user's array); _put copies it
            else:
                self.buffer[:m] = chunk
                host = self.buffer
            weight = self.weight_full
            if m < self.padded:
                weight = _put((np.arange(self.padded) < m).astype(self.dtype), self.sharding)
            yield m, _put(host, self.sharding), weight

    def state_of(self, params):
        """What :func:`chunk_stats` evaluates the rows at: the natural parameters, or with missing
        values the parameters themselves."""
        return params if self.config.missing else _natural(params, covariance_type=self.config.covariance_type)

    def stats(self, acc, x, weight, theta, with_entropy=False):
        return chunk_stats(acc, x, weight, self.shift_dev, self.scale_dev, theta, with_entropy=with_entropy,
                           **self.chunk_kw)

    def full_pass(self, theta, desc):
        """The E-step sums of every row at ``theta``: ``(stats, log_lik, magnitude)``, the scalars
        added up over chunks in float64 on the host."""
        acc = _zero_stats(self.config, self.dtype)
        log_lik = magnitude = 0.0
        previous = None
        with running():  # the pass's programs one after another, none of another thread's between
            try:
                for _, x, weight in self.chunks(range(self.num_chunks), desc):
                    out = self.stats(acc, x, weight, theta)
                    if previous is not None:
                        # At most two chunks in flight: the next read overlaps this chunk's computation, and
                        # memory stays bounded however fast the reads outpace the device.
                        log_lik += float(previous.log_lik)
                        magnitude += float(previous.magnitude)
                    acc, previous = out.stats, out
                log_lik += float(previous.log_lik)
                magnitude += float(previous.magnitude)
            finally:  # however the pass ends (an error, an interrupt), nothing of it runs once the lock goes
                _wait_for((acc, previous))
        return acc, log_lik, magnitude

    def exact_totals(self, params: GMMParams):
        """Float64 totals at ``params`` (original scale) over every row, on the host: the
        log-likelihood, the responsibilities' entropy and the expected counts."""
        ll = entropy = 0.0
        counts = np.zeros(self.config.num_components)
        for _, _, chunk in self.progress.chunks(self.src.chunks(self.batch_size, range(self.num_chunks)), "log-likelihood"):
            t = _numerics.totals(chunk, *params, self.config.covariance_type)
            ll, entropy, counts = ll + t.log_likelihood, entropy + t.entropy, counts + t.counts
        return ll, entropy, counts


class _Passes(NamedTuple):
    params: GMMParams
    trace: list
    n_iter: int
    converged: bool
    num_updates: int
    pass_seconds: list
    floor_per_obs: float
    #: batch EM: the largest fall of the objective from one pass to the next beyond its rounding
    #: (EM never lowers it, though reg_covar's floor may); 0.0 when none
    largest_fall: float = 0.0
    #: batch EM: the sum of the rows' |objective| at the last pass (its rounding's scale)
    magnitude: float = float("nan")


def _batch_passes(feeder: _Feeder, params, prior, tol, reg_covar, max_iter, num_obs) -> _Passes:
    """Exact EM, one full pass per iteration, as :func:`bayesgmm.fit_em` iterates: each pass
    evaluates the current parameters (objective in float64 over the chunks), then the Aitken test
    (:func:`bayesgmm._iterate.convergence`), then the M-step. Returns the last evaluated parameters."""
    as_dtype = functools.partial(np.asarray, dtype=feeder.dtype)
    ct = feeder.config.covariance_type
    eps = float(np.finfo(feeder.dtype).eps)
    tol_total = tol * num_obs if tol > 0 else -1.0
    evaluated, objective, delta, close = params, -np.inf, np.inf, 0
    trace, seconds, converged, magnitude, fall = [], [], False, 0.0, 0.0
    for t in range(max_iter + 1):
        start = time.perf_counter()
        stats, total, magnitude = feeder.full_pass(feeder.state_of(params), f"iteration {t + 1}")
        if prior is not None:
            lp = _numerics.log_prior(jax.device_get(params), prior, ct)
            total, magnitude = total + lp, magnitude + abs(lp)
        _refuse_non_finite(total, f"iteration {t + 1}")
        step = total - objective
        if step < -FLOOR_ULPS * eps * magnitude:
            fall = max(fall, -step)
        trace.append(total)
        with np.errstate(invalid="ignore", over="ignore"):  # the first pass's infinite previous change
            close, converged = _iterate.convergence(
                np.float64(delta), np.float64(step), t, tol_total, FLOOR_ULPS * eps * magnitude, close,
                trace=np.asarray(trace, np.float64), coarse_precision=_iterate.coarse(feeder.dtype))
        close, converged = int(close), bool(converged)
        evaluated, objective, delta = params, total, step
        seconds.append(time.perf_counter() - start)
        feeder.progress.pass_done(objective_per_obs=total / num_obs)
        if converged or t == max_iter:  # a total that is not finite was refused above
            break
        params, _ = batch_update(stats, prior, as_dtype(reg_covar), config=feeder.config)
    floor = FLOOR_ULPS * eps * magnitude / num_obs
    return _Passes(evaluated, trace, len(trace) - 1, converged, len(trace), seconds, floor, fall, float(magnitude))


#: Rounding units of the rows' summed |objective| by which the last batch pass's streamed (moment
#: form) objective may differ from its exact float64 value before the stream is said to have lost
#: precision: the moment form's error grows with a component's distance from the centre over its
#: spread (well-behaved fits of the suite differed by up to about 5 units; a cluster of sd 1e-6
#: three units out by 6e9 units, 0.04 nats; a component collapsed on repeated values, which is
#: flagged as degenerate anyway, by 2e9).
IMPRECISE_ULPS = 1e4


def _refuse_non_finite(objective, when: str) -> None:
    """A pass whose objective is not finite ends the fit with an error, not a warning that more
    iterations would help (its chunks' values are named where they are the reason, when read)."""
    if not np.isfinite(objective):
        raise ValueError(
            f"the objective of streaming EM's {when} is not finite ({objective}): a covariance became singular "
            "(use a larger reg_covar, fewer components, or prior='default'), or an entry of the data is so far "
            "from its column's median that its density underflows in the compute type (fit in float64: "
            "jax.config.update('jax_enable_x64', True), or remove the outlier)."
        )


def _online_passes(feeder: _Feeder, params, prior, tol, reg_covar, max_iter, num_obs, step_exponent, rng, shuffle) -> _Passes:
    """Stepwise EM (Cappé & Moulines 2009): an M-step after every chunk. The tolerance test is on
    the change between passes of the running objective per observation (each chunk at the
    parameters in force), which the step sizes make noisy: no extrapolation is attempted."""
    as_dtype = functools.partial(np.asarray, dtype=feeder.dtype)
    config, src = feeder.config, feeder.src
    theta = feeder.state_of(params)
    s = _expected_stats_jit(params, covariance_type=config.covariance_type)
    previous, trace, seconds, converged, t = -np.inf, [], [], False, 0
    for it in range(max_iter):
        start = time.perf_counter()
        order = rng.permutation(feeder.num_chunks) if (shuffle and src.random_access) else range(feeder.num_chunks)
        objective, acc = 0.0, None
        with running():  # the pass's programs one after another, none of another thread's between
            try:
                for m, x, weight in feeder.chunks(order, f"pass {it + 1}"):
                    acc = feeder.stats(_zero_stats(config, feeder.dtype), x, weight, theta)
                    gamma = (t + 2.0) ** -step_exponent * (m / feeder.batch_size)
                    s, params, theta = online_update(
                        s, acc.stats, as_dtype(gamma), as_dtype(m), as_dtype(num_obs), prior, as_dtype(reg_covar), config=config
                    )
                    if config.missing:
                        theta = params
                    objective += float(acc.log_lik)  # also keeps at most two chunks in flight (see _Feeder.full_pass)
                    t += 1
            finally:  # however the pass ends (an error, an interrupt), nothing of it runs once the lock goes
                _wait_for((acc, s, params, theta))
        if prior is not None:
            objective += _numerics.log_prior(jax.device_get(params), prior, config.covariance_type)
        _refuse_non_finite(objective, f"pass {it + 1}")
        trace.append(objective)
        seconds.append(time.perf_counter() - start)
        feeder.progress.pass_done(objective_per_obs=trace[-1] / num_obs)
        if abs(trace[-1] / num_obs - previous) < tol:
            converged = True
            break
        previous = trace[-1] / num_obs
    return _Passes(params, trace, len(trace), converged, t, seconds, float("nan"))


def _initial_params(init_params, moments, shift, sd, key, config, prior, n_init, tol, reg_covar, max_iter, dtype):
    """Standardised starting parameters, ``compile_seconds``, the initial objective per row and
    the record of split-and-merge moves after the subsample's default search (None without)."""
    k, d, ct = config.num_components, config.num_features, config.covariance_type
    if not isinstance(init_params, str):
        params = _given_start(init_params, k, d, ct, shift, sd)
        return GMMParams(*(jnp.asarray(p, dtype) for p in params)), 0.0, None, None
    with np.errstate(over="ignore"):  # beyond the compute type: named below
        xs = ((moments.subsample - shift) / sd).astype(dtype)
    refuse_out_of_range(xs, moments.subsample, shift, sd, name="the initialisation subsample")
    xs, observed = mark_missing(xs)  # the subsample's missing entries: EM's conditional E-step
    num_rows = xs.shape[0]
    em_config = EMConfig(k, d, ct, False, config.use_prior)
    starts, kept = resolve_starts(n_init, num_rows * (1 if observed is None else 4 * d), k, d, ct)
    # padded to fit_em's row bucket (zero rows of weight 0): a subsample of another size reuses the program
    rows = _sharding.resolve(None, num_rows)
    padded, weight = _sharding.shard_rows(rows, xs, None)
    found = search(
        padded, key, (None, None, None), prior, tol=tol, reg_covar=reg_covar, sample_weight=weight, active=None,
        max_iter=int(max_iter), init_iter=INIT_ITER, config=em_config, init_method=init_params, num_groups=1,
        num_starts=starts, num_kept=kept, trace_len=trace_length(max_iter), num_rows=num_rows,
        observed=_sharding.pad_observed(observed, padded.shape[0]),
    )
    out = found.output
    params_all, finals = out.lanes.params, out.lanes.objective
    finals = np.asarray(finals, np.float64)
    if not np.isfinite(finals).any():
        raise ValueError(
            "EM failed on the initialisation subsample: a covariance became singular in every restart. "
            "Increase reg_covar or num_init_rows, use fewer components, or pass prior=bayesgmm.Prior.default(...)."
        )
    best = choose_run(finals, out.degenerate)  # as fit_em: the best run that is not degenerate, if any
    moves = None
    if (isinstance(n_init, str) and _split_merge.applies(k) and observed is None and best >= 0
            and found.run_from is not None):  # as fit_em's default: the moves after the search
        out, best, moves = _split_merge.improve(xs, None, found, best, ct, tol=tol, reg_covar=reg_covar)
        params_all, finals = out.lanes.params, np.asarray(out.lanes.objective, np.float64)
    params = GMMParams(*(jnp.asarray(p[best]) for p in params_all))
    return params, found.compile_seconds, float(finals[best]) / num_rows - float(np.sum(np.log(sd))), moves


# ----------------------------------------------------------------------------------------------
# Public entry point
# ----------------------------------------------------------------------------------------------
@_closing_bars
def fit_em_stream(
    source,
    num_components: int,
    *,
    method: str = "batch",
    batch_size: int = 65536,
    covariance_type: str = "full",
    prior: Prior | str | None = None,
    n_init="auto",
    init_params="k-means++",
    num_init_rows: int = 100_000,
    tol: float | None = None,
    max_iter: int = 500,
    reg_covar: float = 1e-10,
    step_exponent: float = 0.6,
    shuffle: bool = True,
    columns=None,
    devices=None,
    seed=0,
    progress_bar: bool = False,
    missing: str = "error",
) -> FitResult:
    """Fit a Gaussian mixture by EM, reading the data in chunks (out of core).

    Memory holds two chunks in flight (plus the exponential-family features of a sub-block) and
    the initialisation subsample, whatever the number of rows.

    Parameters
    ----------
    source : array-like (N, D), np.memmap, or path to a ``.npy`` or ``.parquet`` file
        The data. A ``.npy`` file must hold a 2-D C-order numeric array; it is read chunk by
        chunk with seek + ``readinto`` (as is a memmap opened with ``np.load(path,
        mmap_mode="r")``). Parquet needs ``pyarrow`` and is read in file order with
        ``ParquetFile.iter_batches``; its column names become feature names.
    num_components : int
        K, the number of components.
    method : {"batch", "online"}
        ``"batch"``: exact EM, one pass over the data per iteration; equal to
        :func:`bayesgmm.fit_em` from the same start. ``"online"``: stepwise EM (Cappé & Moulines
        2009), one M-step per chunk; fewer passes, a stochastic approximation.
    batch_size : int
        Rows per chunk (static: the chunk program is compiled once per ``batch_size``, D, K and
        structure). Memory grows with it, not with N.
    covariance_type : {"full", "diag", "spherical", "tied"}
        Covariance structure, as scikit-learn names it (mclust's other models are fitted by
        :func:`bayesgmm.fit_em` only).
    prior : Prior or "default", optional

        Conjugate prior: MAP-EM on the full data (as :func:`bayesgmm.fit_em`). ``"default"``:
        ``Prior.default`` of the full data (its mean and covariance, accumulated in float64 in
        the first pass). With missing values (``missing="marginalize"``) that covariance is
        diagonal, the columns' variances over their observed entries (the pass does not
        accumulate products over pairs of observed entries), where ``Prior.default`` of the
        data in memory uses pairwise covariances: pass ``Prior.default(x, K)`` for the in-memory
        fit's prior. Omitted: maximum likelihood.
    n_init : "auto" or int
        Starts of the initialisation on the subsample, searched as :func:`bayesgmm.fit_em`
        searches them (``"auto"``: em-EM with as many starts as the subsample makes cheap).
    init_params : {"k-means++", "kmeans", "random", "random_from_data"}, GMMParams or FitResult
        A string: EM on a random subsample of ``num_init_rows`` rows, started as
        :func:`bayesgmm.fit_em` starts (scikit-learn's meanings), gives the starting point.
        A :class:`GMMParams` (original scale, covariances as scikit-learn stores them) or a
        previous :class:`FitResult`: start there (a warm start; no subsample is drawn).
    num_init_rows : int
        Size of the initialisation subsample (all rows when N is smaller), drawn without
        replacement, reproducibly from ``seed``.
    tol : float, optional
        ``"batch"``: the convergence threshold of :func:`bayesgmm.fit_em` (the Aitken-projected
        remaining gain of the objective per observation, default 1e-5), on the objective summed
        over the chunks in float64. ``"online"``: on the change between passes of the running
        estimate per observation.
    max_iter : int
        Maximum EM updates (``"batch"``: passes over the data after the first, each evaluating
        the parameters it starts from; ``"online"``: passes), besides the moments pass and the
        final log-likelihood pass. Also bounds the EM iterations of the initialisation.
    reg_covar : float
        Added to the diagonal of every covariance after each M-step, in units of each
        feature's robust variance (as :func:`bayesgmm.fit_em`).
    step_exponent : float
        ``rho`` in the online step sizes ``(t + 2)^-rho``, t counting chunk updates; in
        (0.5, 1]. A partial last chunk of m rows takes the step times ``m / batch_size``.
    shuffle : bool
        ``"online"``: visit the chunks in a new random order every pass (``.npy`` files, memmaps
        and arrays; Parquet is read in file order). Ignored by ``"batch"``.
    columns : list, optional
        Columns to fit: names for Parquet and DataFrames, integer indices for arrays and
        ``.npy`` files. Default all.
    devices : None, "all", int, list of jax.Device or jax.sharding.Mesh
        Shard each chunk's rows over these devices (see :mod:`bayesgmm._sharding`); the chunk is
        padded to a multiple of the device count with weight-0 rows.
    seed : int or jax key
        Same seed, same result, bit for bit (subsample, restarts and online chunk order).
    progress_bar : bool
        Show tqdm bars over passes and chunks.
    missing : {"error", "marginalize"}
        ``"marginalize"``: NaN entries are missing at random, as in :func:`bayesgmm.fit_em`: each
        chunk's E-step is the exact conditional one (:mod:`bayesgmm._missing`), and the reported
        log-likelihood is the observed-data one. The default refuses NaN.

    Returns
    -------
    FitResult
        ``method`` is "em" / "map-em" (batch) or "online-em" / "online-map-em".
        ``log_likelihood`` is the exact full-data total at the returned parameters.
        ``trace`` has one entry per pass: the objective at the parameters the pass started from
        (batch; as :func:`bayesgmm.fit_em`) or the running estimate over the pass (online:
        each chunk at the parameters in force when it was read), then the exact final value.
        ``n_iter`` counts EM passes. ``info`` holds ``pass_seconds``, ``num_chunks``,
        ``batch_size``, ``num_updates``, ``init_objective_per_obs`` (of the initialisation, on the
        subsample), ``init_split_merge`` (the split-and-merge moves that followed the subsample's
        default search above 4 components, as :func:`bayesgmm.fit_em`'s ``split_merge``) and the
        usual timing keys.

    Raises
    ------
    ValueError
        Missing file, unsupported extension, a ``.npy`` file that is not 2-D, unknown columns,
        NaN or infinite values (the chunk and row are named), a constant column, fewer rows
        than components, or invalid options.
    ImportError
        A Parquet source without pyarrow installed.
    """
    t_start = time.perf_counter()
    with _sharding.ProcessCall(devices, "fit_em_stream") as call:  # an error here stops every process
        tol_explicit = tol is not None
        tol = 1e-5 if tol is None else tol
        check_covariance_type(covariance_type)
        if missing not in MISSING_POLICIES:
            raise ValueError(f"missing must be one of {MISSING_POLICIES}, got {missing!r}.")
        shuffle = check_bool("shuffle", shuffle)  # "no" would be taken as true
        _check_options(method, batch_size, n_init, max_iter, tol, reg_covar, step_exponent, num_init_rows, init_params)
        check_num_components(num_components)  # its type, before any comparison
        if isinstance(init_params, str) and num_init_rows < num_components:
            raise ValueError(f"num_init_rows={num_init_rows} must be at least num_components={num_components}.")
        src = open_source(source, columns, missing=missing)
        n, d = src.num_rows, src.num_features
        if n == 0 or d == 0:
            raise ValueError(f"{src.name} is empty (shape ({n}, {d})); pass at least one observation and one feature.")
        k = check_num_components(num_components, n, src.name)
        if n < 2:
            raise ValueError(f"{src.name} has a single observation; at least two are needed to fit a mixture.")
        default_prior = isinstance(prior, str) and prior == "default"
        if isinstance(prior, str) and not default_prior:
            raise ValueError(f"prior must be a bayesgmm.Prior, 'default' or None, got {prior!r}.")
        if not default_prior:
            check_prior(prior, d, k, map_estimate=True)
        batch_size, max_iter = int(batch_size), int(max_iter)
        dtype = _compute_dtype(src.dtype)
        key_init, key_rows, key_order = jax.random.split(seed_to_key(seed), 3)
        progress = _Progress(progress_bar, src.num_chunks(batch_size), max_iter + 2)

        # pass 1: moments, NaN check, initialisation subsample
        if isinstance(init_params, str):
            m = min(int(num_init_rows), n)
            sample_rows = np.arange(n) if m == n else np.sort(_numpy_rng(key_rows).choice(n, m, replace=False))
        else:  # a given start: the rows fit_em's robust standardisation reads (every row, or evenly spaced)
            sample_rows = np.arange(0, n, standardisation_step(n))
        start = time.perf_counter()
        moments = _scan(src, batch_size, sample_rows, progress, covariance=default_prior, missing=missing == "marginalize")
        moments_seconds = time.perf_counter() - start
        progress.pass_done(step="moments")
        const = np.flatnonzero(moments.sd == 0)
        if const.size:
            raise ValueError(
                f"{src.name} has constant column(s) {[src.feature_names[j] for j in const]}: their variance is "
                "zero, so no covariance is defined. Drop them before fitting (columns=...)."
            )
        # the robust standardisation of fit_em, from the subsample (all rows when N <= num_init_rows),
        # or for a given start from fit_em's own rows (reg_covar is relative to the robust variances)
        unseen = np.all(np.isnan(moments.subsample), axis=0)  # observed only outside the rows read
        if unseen.any():  # there, the first pass's mean and standard deviation
            if isinstance(init_params, str):
                names = [src.feature_names[j] for j in np.flatnonzero(unseen)]
                warnings.warn(
                    f"column(s) {names} have no observed value among the {len(moments.subsample)} rows of the "
                    "initialisation subsample, so the start knows nothing of them and the fit may end at a poorer "
                    f"optimum; raise num_init_rows (up to {n}, every row) so that the subsample observes them.",
                    UserWarning, stacklevel=2)
            filled = np.where(unseen, moments.mean, moments.subsample)
            shift, sd = standardisation(filled, "full")
            shift, sd = np.where(unseen, moments.mean, shift), np.where(unseen, moments.sd, sd)
        else:
            shift, sd = standardisation(moments.subsample, covariance_type)
        sd = np.where(sd > 0, sd, moments.sd)
        if covariance_type == "spherical":
            sd = np.full_like(sd, np.sqrt(np.mean(sd**2)))
        if src.dtype == dtype:  # the device standardises the chunks with these in the compute type
            # (_Feeder): the start, the prior and the way back to the data's units must use the
            # same values, or every mean is off by their rounding (float32 data at 1e3: 3e-5, and
            # 0.8 nats below the optimum, converged)
            shift, sd = (np.asarray(np.asarray(a, dtype), np.float64) for a in (shift, sd))
        if default_prior:  # Prior.default of the full data, from the first pass
            prior = Prior.from_moments(moments.mean, moments.cov, k)
            check_prior(prior, d, k, map_estimate=True)
        config = StreamConfig(k, d, covariance_type, prior is not None, moments.observed is not None)
        prior_arrays = None
        if prior is not None:
            prior_arrays = jax.device_put(prior.standardised(shift, sd).arrays(k, covariance_type, dtype=dtype))

        params, compile_seconds, init_objective, init_moves = _initial_params(
            init_params, moments, shift, sd, key_init, config, prior_arrays, n_init, tol, reg_covar, max_iter, dtype
        )
        feeder = _Feeder(src, batch_size, config, dtype, shift, sd, devices, progress)
        call.agree(  # the first pass's moments and the start stand for the data
            feeder.rows, shape=(n, d), dtype=str(src.dtype), mean=moments.mean, sd=moments.sd,
            start=params, num_components=k, covariance_type=covariance_type, prior=prior_arrays,
            key=seed, options=dict(method=method, tol=tol, reg_covar=reg_covar, max_iter=max_iter,
                                   batch_size=batch_size, step_exponent=step_exponent, shuffle=shuffle))
    if method == "batch":
        passes = _batch_passes(feeder, params, prior_arrays, tol, reg_covar, max_iter, n)
    else:
        passes = _online_passes(feeder, params, prior_arrays, tol, reg_covar, max_iter, n, float(step_exponent),
                                _numpy_rng(key_order), shuffle)

    # final pass: float64 totals at the returned parameters, on the host
    start = time.perf_counter()
    params_std = GMMParams(*(np.asarray(p, np.float64) for p in jax.device_get(passes.params)))
    original = params_to_original(params_std, shift, sd, covariance_type)
    try:
        log_lik, entropy, counts = feeder.exact_totals(original)
    except np.linalg.LinAlgError:  # a covariance not positive definite in float64: reported below
        log_lik, entropy, counts = np.nan, np.nan, np.full(k, np.nan)
    final_objective = log_lik
    if prior is not None and np.isfinite(final_objective):
        final_objective += _numerics.log_prior(original, prior.arrays(k, covariance_type), covariance_type)
    final_seconds = time.perf_counter() - start
    progress.pass_done(objective_per_obs=final_objective / n)
    progress.close()
    if not np.isfinite(final_objective):
        raise ValueError(
            "EM failed: a covariance became singular (ill-defined empirical covariance, e.g. duplicated points "
            "or a component on too few points). Increase reg_covar, use fewer components, or fit MAP-EM with "
            "prior=bayesgmm.Prior.default(...)."
        )

    # result on the original scale
    ll_shift, prior_shift = log_jacobians(sd, n, k, covariance_type, moments.observed)
    obj_shift = ll_shift + (prior_shift if prior is not None else 0.0)
    eps = float(np.finfo(dtype).eps)
    cov_std = np.asarray(params_std.covariances, np.float64)
    judged = (counts, cov_std, eps)  # what the degeneracy flags read
    converged, step_gain = passes.converged, None
    needed, condition = _em_host.float64_step_needed(cov_std, covariance_type, dtype)
    if method == "batch" and needed:
        # covariances float32 cannot resolve: one float64 EM step over the stream (two more passes)
        # says whether EM is done and, from float64 statistics, whether a component collapsed
        step_start = time.perf_counter()
        sums = (0.0, 0.0, 0.0)
        for _, _, chunk in src.chunks(batch_size, range(feeder.num_chunks)):
            sums = tuple(a + b for a, b in zip(sums, _em_host.block_moments(chunk, None, params_std, shift, sd,
                                                                           covariance_type)))
        prior64 = None if prior is None else prior.standardised(shift, sd).arrays(k, covariance_type, dtype=np.float64)
        stepped_std = _em_host.float64_m_step(sums, params_std, covariance_type, reg_covar, prior64)
        if all(np.all(np.isfinite(a)) for a in stepped_std):  # else a failed step: float32's judgement stands
            stepped = params_to_original(stepped_std, shift, sd, covariance_type)
            stepped_objective = sum(_numerics.totals(chunk, *stepped, covariance_type).log_likelihood
                                    for _, _, chunk in src.chunks(batch_size, range(feeder.num_chunks)))
            if prior is not None:
                stepped_objective += _numerics.log_prior(stepped, prior.arrays(k, covariance_type), covariance_type)
            if np.isfinite(stepped_objective):
                step_gain = float(stepped_objective - final_objective)
                judged = (np.asarray(sums[0], np.float64), stepped_std.covariances, float(np.finfo(np.float64).eps))
        final_seconds += time.perf_counter() - step_start
        if converged and _em_host.stopped_short(step_gain, tol, passes.floor_per_obs, n):
            converged = False
    flagged = _numerics.degenerate_mask(judged[0], judged[1], covariance_type, reg_covar, judged[2], d)
    if not converged and passes.converged:  # the float64 step stopped it (as fit_em's, _em_host.package)
        warnings.warn(_em_host.stopped_short_message("Streaming EM", dtype, step_gain, tol * n, condition,
                                                     np.flatnonzero(flagged).tolist()), ConvergenceWarning, stacklevel=2)
    # the stream's statistics are the fast (moment) form's: a variance within their rounding is
    # not resolved (in float32, a component on repeated values stays about eps |mu|^2 above zero)
    unresolved = _numerics.unresolved_mask(params_std.means, judged[1], covariance_type, judged[2]) & ~flagged
    degenerate = tuple(int(i) for i in np.flatnonzero(flagged | unresolved))
    if flagged.any():
        warnings.warn(
            _numerics.degenerate_message(tuple(int(i) for i in np.flatnonzero(flagged)), judged[0], judged[1],
                                         covariance_type, reg_covar, judged[2], d, engine="Streaming EM",
                                         map_fit=prior is not None),
            DegenerateComponentWarning,
            stacklevel=2,
        )
    in_float64 = np.dtype(dtype) == np.float64
    precise_advice = ("Fit in memory with fit_em, whose precise form resolves it" + (
        ", or keep reg_covar at or above its default (1e-10), which floors such variances." if in_float64 else
        ", or fit in float64 (jax.config.update('jax_enable_x64', True))."))
    if unresolved.any():
        warnings.warn(
            f"Streaming EM component(s) {np.flatnonzero(unresolved).tolist()} have a variance that "
            f"{np.dtype(dtype).name} streamed statistics cannot resolve (their rounding is over "
            f"{_numerics.UNRESOLVED_FACTOR:g} of it): typically a component collapsed on repeated values, or a "
            f"cluster far narrower than its distance from the data's centre. {precise_advice}",
            DegenerateComponentWarning,
            stacklevel=2,
        )
    # the last batch pass evaluated the returned parameters in the streamed (moment) form; the
    # exact float64 value differs by its rounding, unless the moment form lost the digits of a
    # narrow component far from the centre (a cluster of sd 1e-7 three units out: 9.5 nats off)
    evaluation_error = abs(passes.trace[-1] + obj_shift - final_objective) if method == "batch" else 0.0
    imprecise = evaluation_error > max(tol * n, IMPRECISE_ULPS * float(np.finfo(dtype).eps) * passes.magnitude)
    if imprecise:
        fell = (f"; between passes the objective fell by up to {passes.largest_fall:.3g}, which EM never does"
                if passes.largest_fall > 0 else "")
        warnings.warn(
            f"Streaming EM's streamed objective at the returned parameters is {evaluation_error:.3g} off its exact "
            f"value, more than the tolerance (tol x N = {tol * n:.3g}){fell}: the moment statistics lost the precision "
            f"of a component far narrower than its distance from the data's centre. {precise_advice}",
            PrecisionWarning,
            stacklevel=2,
        )
    if method == "batch":  # the last pass evaluated the returned parameters: its entry becomes exact
        trace = np.asarray(passes.trace, np.float64) + obj_shift
        trace[-1] = final_objective
    else:  # online: the running estimate of every pass, then the exact value at the final parameters
        trace = np.r_[np.asarray(passes.trace, np.float64) + obj_shift, final_objective]
    if not passes.converged:  # (one a float64 step stopped was said above)
        warnings.warn(
            f"Streaming EM ({method}) did not converge in max_iter={max_iter} passes (tol={tol:g} per observation); "
            + ("more passes will not help while its statistics lose precision (the PrecisionWarning)."
               if imprecise else "increase max_iter or tol."),
            ConvergenceWarning,
            stacklevel=2,
        )
    elif tol_explicit and passes.floor_per_obs > tol:
        warnings.warn(
            f"tol={tol:g} per observation is finer than {np.dtype(dtype).name} arithmetic resolves for these data "
            f"(about {passes.floor_per_obs:.1g} per observation): streaming EM stopped when the objective stopped "
            "changing at that precision. For a finer tolerance fit in float64.",
            PrecisionWarning,
            stacklevel=2,
        )
    run_seconds = time.perf_counter() - t_start - compile_seconds
    info = {
        "seed": seed if isinstance(seed, (int, np.integer)) else None,
        "stream_method": method,
        "batch_size": batch_size,
        "num_chunks": feeder.num_chunks,
        "num_updates": passes.num_updates,
        "num_passes": len(passes.trace) + 2,
        "pass_seconds": passes.pass_seconds,
        "moments_seconds": moments_seconds,
        "final_pass_seconds": final_seconds,
        "n_init": n_init,
        "init_params": init_params if isinstance(init_params, str) else "given",
        "num_init_rows": 0 if sample_rows is None else len(sample_rows),
        "init_objective_per_obs": init_objective,
        **({} if init_moves is None else {"init_split_merge": init_moves}),
        "compile_seconds": compile_seconds,
        "run_seconds": run_seconds,
        "fit_seconds": compile_seconds + run_seconds,
        "num_devices": feeder.num_devices,
        "entropy": float(entropy),
        # online EM has no precision floor: None (JSON null; NaN is no JSON)
        "precision_floor_per_obs": passes.floor_per_obs if np.isfinite(passes.floor_per_obs) else None,
        "expected_counts": counts.tolist(),
        "dtype": str(dtype),
        "reg_covar": float(reg_covar),
        "tol": float(tol),
        **({} if step_gain is None else {"float64_step_gain": step_gain}),
    }
    if method == "online":
        info["step_exponent"] = float(step_exponent)
    return FitResult(
        method=("online-" if method == "online" else "") + ("map-em" if prior is not None else "em"),
        covariance_type=covariance_type,
        weights=original.weights,
        means=original.means,
        covariances=original.covariances,
        log_likelihood=log_lik,
        converged=converged,
        n_iter=passes.n_iter,
        trace=trace,
        objective="log_posterior" if prior is not None else "log_likelihood",
        feature_names=src.feature_names,
        num_obs=n,
        degenerate_components=degenerate,
        prior=prior,
        info=info,
    )
