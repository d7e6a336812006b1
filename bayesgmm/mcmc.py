"""NUTS on the one model: NumPyro's No-U-Turn sampler on :func:`bayesgmm.model.gmm_model`.

The component labels ``z`` are summed out (``marginalize=True``), so NUTS samples the continuous
parameters (weights, means, covariances) in NumPyro's unconstrained space of the model's own
sample sites: the potential energy is ``numpyro.infer.util.potential_energy(gmm_model, ...)``.

One compiled program per shape
------------------------------
Everything that touches JAX runs inside one ``jax.jit``-ed program, compiled once per data shape,
K, structure and sampler settings (later fits of same-shaped data reuse it):

1. a MAP start: k-means (4 seedings) and a fixed number of MAP-EM iterations (closed form, from
   :mod:`bayesgmm._stats`), the best log posterior kept;
2. per chain, that start mapped to the unconstrained space (``unconstrain_fn``) and jittered;
3. NUTS warmup (step size and diagonal mass matrix adaptation) and sampling, chains ``vmap``-ed
   (``chain_method="vectorized"``) or run one after another (``"sequential"``);
4. draws mapped back to the constrained space (``constrain_fn``) and the log posterior
   ``log p(x, theta)`` of every draw.

Driving the NUTS kernel inside our own ``jit`` (instead of ``numpyro.infer.MCMC``) avoids the
thousands of tiny eagerly compiled operations of NumPyro's model initialisation, which cost
25-28 s before the first draw; see ``benchmarks/mcmc_ess.py`` for the first-call latency.
The data are standardised internally and every draw is mapped back to the original scale.
Label alignment (:func:`bayesgmm.labels.align_draws`, pivot = the MAP start) and the ESS/R-hat
diagnostics (ArviZ) run afterwards in NumPy.

Precision: float32 unless ``jax_enable_x64`` is on and ``x`` is float64 (library code never
changes JAX's configuration). Results are NumPy float64 on the original scale.
"""

from __future__ import annotations

import functools
import time
import warnings
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from . import _stats
from .kmeans import kmeans_labels
from .labels import align_draws
from .model import gmm_model, log_prior, model_kwargs
from .params import (
    ConvergenceWarning,
    GMMParams,
    Prior,
    check_covariance_type,
    check_data,
    check_num_components,
    check_params,
    log_jacobians,
    params_to_original,
    params_to_standard,
    seed_to_key,
    standardisation,
)
from .results import FitResult

__all__ = ["enable_compilation_cache", "fit_mcmc"]

CHAIN_METHODS = ("vectorized", "sequential")
INIT_METHODS = ("map", "uniform")
#: k-means seedings of the MAP start, and MAP-EM iterations after each.
_MAP_STARTS = 4
_MAP_ITERS = 50
#: Standard deviation of the per-chain jitter of the start, in unconstrained units.
_JITTER = 0.1
#: Thresholds of the warnings: max R-hat and min bulk ESS per chain.
_RHAT_MAX = 1.01
_ESS_PER_CHAIN = 100

# Incremented when the sampler program is traced; tests use it to prove "compile once per shape".
_TRACE_COUNT = {"fit": 0}
_COMPILED: dict = {}


def enable_compilation_cache(path, *, min_compile_time_secs: float = 1.0) -> None:
    """Opt in to JAX's persistent compilation cache in ``path`` (off unless you call this).

    With the cache, a fresh process reuses the compiled NUTS program of an earlier process for
    the same shapes and settings instead of compiling it again. This changes JAX's global
    configuration for the whole process, which is why the library never does it by itself.

    Parameters
    ----------
    path : str or os.PathLike
        Directory for the cache (created if needed).
    min_compile_time_secs : float
        Only programs that took at least this long to compile are cached.
    """
    import os

    os.makedirs(path, exist_ok=True)
    jax.config.update("jax_compilation_cache_dir", str(path))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", float(min_compile_time_secs))
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


class _Config(NamedTuple):
    """Static choices of one sampler program."""

    num_components: int
    covariance_type: str
    num_warmup: int
    num_samples: int
    num_chains: int
    chain_method: str
    target_accept_prob: float
    max_tree_depth: int


def _site_values(params: GMMParams, k: int) -> dict:
    values = {"means": params.means, "covariances": params.covariances}
    if k > 1:
        values["weights"] = params.weights
    return values


def _map_start(keys, xs, prior, k: int, covariance_type: str) -> GMMParams:
    """k-means seedings each refined by ``_MAP_ITERS`` MAP-EM iterations; the best log posterior.

    The Dirichlet concentration is floored at 1 here (the MAP weights are undefined below 1);
    this only affects where the chains start, never the posterior they sample.
    """
    d = xs.shape[1]
    z = _stats.suff_features(xs, covariance_type)
    prior_map = prior._replace(concentration=jnp.maximum(prior.concentration, 1.0))
    reg = 1e-6

    def m_step(resp):
        return _stats.m_step(*_stats.suff_stats(resp, z, d, covariance_type), covariance_type, reg, prior_map)

    def one(key):
        params = m_step(jax.nn.one_hot(kmeans_labels(key, xs, k), k, dtype=xs.dtype))
        params = jax.lax.fori_loop(
            0, _MAP_ITERS, lambda i, p: m_step(_stats.e_step(z, _stats.natural_params(p, covariance_type))[0]), params
        )
        ll = jnp.sum(_stats.e_step(z, _stats.natural_params(params, covariance_type))[1])
        obj = ll + log_prior(params, prior_map, covariance_type)
        return params, jnp.where(jnp.isfinite(obj), obj, -jnp.inf)

    params, obj = jax.vmap(one)(keys)
    best = jnp.argmax(obj)
    return jax.tree_util.tree_map(lambda a: a[best], params)


def _program(xs, prior, key, init_code, user_init, *, config: _Config):
    """The whole sampler as one traced function (see the module docstring)."""
    from numpyro.infer import NUTS
    from numpyro.infer.util import constrain_fn, unconstrain_fn

    _TRACE_COUNT["fit"] += 1
    k, ct, c = config.num_components, config.covariance_type, config.num_chains
    kwargs = model_kwargs(k, prior, ct)
    args = (xs,)
    key_map, key_jitter, key_chains = jax.random.split(key, 3)
    pivot = _map_start(jax.random.split(key_map, _MAP_STARTS), xs, prior, k, ct)

    def unconstrain(params):
        return unconstrain_fn(gmm_model, args, kwargs, _site_values(params, k))

    # All three starts are computed and one is selected by the (traced) init_code, so that
    # "map", user-given and "uniform" starts share one compiled program.
    z_map = jax.tree_util.tree_map(lambda a: jnp.broadcast_to(a, (c,) + a.shape), unconstrain(pivot))
    z_user = jax.vmap(unconstrain)(user_init)
    leaves, treedef = jax.tree_util.tree_flatten(z_map)
    user_leaves = treedef.flatten_up_to(z_user)
    keys = jax.random.split(key_jitter, 2 * len(leaves))
    z0 = []
    for i, (a, u) in enumerate(zip(leaves, user_leaves)):
        jitter = _JITTER * jax.random.normal(keys[2 * i], a.shape, a.dtype)
        uniform = jax.random.uniform(keys[2 * i + 1], a.shape, a.dtype, -2.0, 2.0)  # NumPyro's init_to_uniform
        z0.append(jnp.select([init_code == 0, init_code == 1], [a + jitter, u + jitter], uniform))
    z0 = jax.tree_util.tree_unflatten(treedef, z0)

    kernel = NUTS(
        potential_fn=_potential_fn(xs, prior, k, ct),
        target_accept_prob=config.target_accept_prob,
        max_tree_depth=config.max_tree_depth,
    )

    def one_chain(chain_key, z_init):
        state = kernel.init(chain_key, config.num_warmup, init_params=z_init)

        def step(s, _):  # one NUTS body for warmup and sampling: it is compiled once
            s = kernel.sample(s, (), {})
            stats = {
                "diverging": s.diverging,
                "num_steps": s.num_steps,
                "accept_prob": s.accept_prob,
                "step_size": s.adapt_state.step_size,
                "energy": s.energy,
                "potential_energy": s.potential_energy,
            }
            return s, (s.z, stats)

        out = jax.lax.scan(step, state, None, length=config.num_warmup + config.num_samples)[1]
        return jax.tree_util.tree_map(lambda a: a[config.num_warmup :], out)

    chain_keys = jax.random.split(key_chains, c)
    if config.chain_method == "vectorized":
        zs, stats = jax.vmap(one_chain)(chain_keys, z0)
    else:
        zs, stats = jax.lax.map(lambda a: one_chain(*a), (chain_keys, z0))

    sites = constrain_fn(gmm_model, args, kwargs, zs, return_deterministic=True, batch_ndims=2)
    weights = sites["weights"] if k > 1 else jnp.ones((c, config.num_samples, 1), xs.dtype)
    draws = GMMParams(weights, sites["means"], sites["covariances"])

    def log_post(w, m, cov):
        p = GMMParams(w, m, cov)
        return jnp.sum(_stats.mixture_log_density(xs, p, ct)) + log_prior(p, prior, ct)

    lp = jax.vmap(jax.vmap(log_post))(*draws)
    return pivot, draws, stats, lp


@functools.partial(jax.jit, static_argnames=("k", "covariance_type"))
def _potential_and_grad(z, xs, prior, k: int, covariance_type: str):
    """NumPyro's potential energy of :func:`gmm_model` (and its gradient) at unconstrained ``z``."""
    from numpyro.infer.util import potential_energy

    kwargs = model_kwargs(k, prior, covariance_type)
    return jax.value_and_grad(lambda u: potential_energy(gmm_model, (xs,), kwargs, u))(z)


def _potential_fn(xs, prior, k: int, covariance_type: str):
    """The potential as a ``custom_vjp`` around one jitted value-and-gradient.

    NUTS evaluates the potential's gradient at several places (initialisation, step-size
    search, the leapfrog inside the tree building); each would otherwise inline and trace the
    model's log density again. Behind one ``jax.jit`` function it is traced once per program.
    """

    @jax.custom_vjp
    def potential(z):
        return _potential_and_grad(z, xs, prior, k, covariance_type)[0]

    def fwd(z):
        return _potential_and_grad(z, xs, prior, k, covariance_type)

    def bwd(grad, g):
        return (jax.tree_util.tree_map(lambda a: g * a, grad),)

    potential.defvjp(fwd, bwd)
    return potential


_program_jit = jax.jit(_program, static_argnames=("config",))


def _compiled(xs, prior, key, init_code, user_init, config: _Config):
    """The compiled program for these shapes and settings, and the seconds spent compiling it."""
    spec = jax.tree_util.tree_map(lambda a: (jnp.shape(a), jnp.result_type(a)), (xs, prior, user_init))
    cache_key = (config, repr(spec), str(jax.random.key_impl(key)) if hasattr(key, "dtype") else None)
    if cache_key in _COMPILED:
        return _COMPILED[cache_key], 0.0
    start = time.perf_counter()
    exe = _program_jit.lower(xs, prior, key, init_code, user_init, config=config).compile()
    seconds = time.perf_counter() - start
    _COMPILED[cache_key] = exe
    return exe, seconds


def _placeholder_init(k, d, num_chains, covariance_type, dtype) -> GMMParams:
    """A valid (unused) per-chain start for when the user gives none."""
    unit = {"full": np.tile(np.eye(d), (k, 1, 1)), "tied": np.eye(d), "diag": np.ones((k, d)), "spherical": np.ones(k)}
    one = GMMParams(np.full(k, 1.0 / k), np.zeros((k, d)), unit[covariance_type])
    return GMMParams(*(np.broadcast_to(a, (num_chains,) + a.shape).astype(dtype) for a in one))


def _user_init(init, k, d, num_chains, covariance_type, shift, sd, dtype):
    """Per-chain starting parameters from a GMMParams (all chains) or a sequence of them."""
    if isinstance(init, GMMParams):
        inits = [init] * num_chains
    else:
        inits = list(init)
        if len(inits) != num_chains or not all(isinstance(p, GMMParams) for p in inits):
            raise ValueError(
                f"init must be 'map', 'uniform', a GMMParams or a sequence of num_chains={num_chains} "
                "GMMParams (one start per chain)."
            )
    std = []
    for p in inits:
        p = check_params(p, covariance_type)
        if p.means.shape != (k, d):
            raise ValueError(f"init means must have shape ({k}, {d}), got {p.means.shape}.")
        std.append(params_to_standard(p, shift, sd, covariance_type))
    return GMMParams(*(np.stack(a).astype(dtype) for a in zip(*std)))


def _numpy_log_likelihood(x, params: GMMParams, covariance_type: str) -> float:
    """Total log-likelihood at one parameter set, in float64 NumPy (no JAX compile)."""
    k, d = params.means.shape
    from .labels import _full

    cov = _full(params.covariances, covariance_type, k, d)
    chol = np.linalg.cholesky(cov)
    diff = x[None] - params.means[:, None]  # (K, N, D)
    y = np.linalg.solve(chol, np.swapaxes(diff, -1, -2))  # (K, D, N)
    logdet = 2 * np.log(np.diagonal(chol, axis1=-2, axis2=-1)).sum(-1)
    logp = -0.5 * (np.sum(y**2, -2) + logdet[:, None] + d * np.log(2 * np.pi)) + np.log(params.weights)[:, None]
    mx = logp.max(0)
    return float(np.sum(mx + np.log(np.exp(logp - mx).sum(0))))


def _diagnostics(draws: dict, num_chains: int):
    """Min bulk ESS and max R-hat over every scalar of the (aligned) draws, via ArviZ.

    One chain is split into halves (for R-hat ArviZ needs two chains); R-hat is then the
    rank-normalised split R-hat of those halves.
    """
    import arviz as az

    arrays = {n: np.asarray(v) for n, v in draws.items()}
    if num_chains == 1:  # ArviZ needs 2 chains for R-hat: use the two halves of the one chain
        half = arrays["weights"].shape[1] // 2
        if half >= 4:
            arrays = {n: v[:, : 2 * half].reshape((2, half) + v.shape[2:]) for n, v in arrays.items()}
    data = az.convert_to_dataset(arrays)
    ess = az.ess(data, method="bulk")
    rhat = az.rhat(data)
    ess_v = np.concatenate([np.ravel(ess[n].values) for n in draws])
    rhat_v = np.concatenate([np.ravel(rhat[n].values) for n in draws])
    ess_min = float(np.nanmin(ess_v)) if np.isfinite(ess_v).any() else float("nan")
    rhat_max = float(np.nanmax(rhat_v)) if np.isfinite(rhat_v).any() else float("nan")
    return ess_min, rhat_max


def _check_int(name, value, minimum):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}.")
    return int(value)


def fit_mcmc(
    x,
    num_components: int,
    *,
    covariance_type: str = "full",
    prior: Prior | None = None,
    num_warmup: int = 1000,
    num_samples: int = 1000,
    num_chains: int = 4,
    chain_method: str = "vectorized",
    target_accept_prob: float = 0.8,
    max_tree_depth: int = 10,
    init="map",
    seed=0,
    progress_bar: bool = False,
    align: bool = True,
) -> FitResult:
    """Sample the posterior of the Bayesian Gaussian mixture with NumPyro's NUTS.

    Parameters
    ----------
    x : array-like (N, D) or (N,)
        Data; DataFrame column names become feature names.
    num_components : int
        K.
    covariance_type : {"full", "diag", "spherical", "tied"}
        All four structures of :func:`bayesgmm.model.gmm_model` are supported.
    prior : Prior, optional
        Defaults to ``Prior.default(x, K)`` (mclust's weak conjugate prior).
    num_warmup, num_samples : int
        Warmup (adaptation) iterations and kept draws per chain.
    num_chains : int
    chain_method : {"vectorized", "sequential"}
        Chains ``vmap``-ed in one program, or run one after another (``lax.map``).
    target_accept_prob : float in (0, 1)
        Step-size adaptation target; raise it (e.g. 0.95) when there are divergences.
    max_tree_depth : int
        NUTS maximum tree depth.
    init : {"map", "uniform"}, GMMParams or sequence of GMMParams
        ``"map"`` (default): every chain starts at the MAP solution (k-means, then MAP-EM),
        jittered per chain in the unconstrained space. ``"uniform"``: NumPyro's default,
        uniform(-2, 2) in the unconstrained space (often lands chains in different modes). A
        ``GMMParams`` (original scale) starts all chains there, jittered; a sequence of
        ``num_chains`` of them gives one start per chain.
    seed : int or jax key
        Same seed, same draws, bit for bit.
    progress_bar : bool
        Accepted for NumPyro compatibility; the sampler runs as one compiled program, so there
        is no progress bar (True raises).
    align : bool
        Relabel every draw to the MAP pivot (:func:`bayesgmm.labels.align_draws`). False keeps
        ``draws`` equal to ``raw_draws`` (not recommended for K > 1).

    Returns
    -------
    FitResult
        ``method="mcmc"``. ``draws`` label-aligned to the MAP solution (``raw_draws`` before
        alignment), the point estimate is the posterior mean of the aligned draws and
        ``log_likelihood`` the training log-likelihood there. ``trace`` holds ``log p(x, theta)``
        (original scale) of every draw, chains concatenated (``objective="log_posterior"``).
        ``sample_stats`` (C, S) arrays: ``diverging``, ``num_steps``, ``tree_depth``,
        ``accept_prob``, ``step_size``, ``energy``, ``potential_energy`` (NumPyro's, standardised
        unconstrained space) and ``lp`` (``log p(x, theta)``, original scale). ``converged`` is
        True when the maximum R-hat over all aligned parameters is below 1.01;
        ``n_iter = num_samples``. ``info``: ``num_divergences``, ``min_ess_bulk``, ``max_rhat``,
        ``compile_seconds``, ``sampling_seconds``, ``seed``, ``label_switch_fraction`` (draws
        whose best permutation is not the identity) and the settings.

    Warns
    -----
    ConvergenceWarning
        On divergent transitions after warmup, max R-hat >= 1.01 or min bulk ESS below 100 per chain.

    Raises
    ------
    ValueError
        Invalid input.
    """
    arr, names = check_data(x)
    n, d = arr.shape
    k = check_num_components(num_components, n)
    check_covariance_type(covariance_type)
    num_warmup = _check_int("num_warmup", num_warmup, 0)
    num_samples = _check_int("num_samples", num_samples, 1)
    num_chains = _check_int("num_chains", num_chains, 1)
    max_tree_depth = _check_int("max_tree_depth", max_tree_depth, 1)
    if chain_method not in CHAIN_METHODS:
        raise ValueError(f"chain_method must be one of {CHAIN_METHODS}, got {chain_method!r}.")
    if not (isinstance(target_accept_prob, (float, int)) and 0 < target_accept_prob < 1):
        raise ValueError(f"target_accept_prob must be a number in (0, 1), got {target_accept_prob!r}.")
    if progress_bar:
        raise ValueError("progress_bar=True is not supported: the sampler runs as one compiled program.")
    if prior is None:
        prior = Prior.default(arr, k)
    elif not isinstance(prior, Prior):
        raise ValueError("prior must be a bayesgmm.Prior (e.g. Prior.default(x, K)) or None.")
    if prior.num_features != d:
        raise ValueError(f"prior is for {prior.num_features} feature(s) but x has {d}.")
    prior.concentration(k)  # raises when its length is not K

    dtype = jnp.asarray(arr[:1]).dtype  # float32 unless jax_enable_x64 and float64 input
    np_dtype = np.dtype(dtype)
    shift, sd = standardisation(arr.astype(np.float64), covariance_type)
    xs = ((arr - shift) / sd).astype(np_dtype)
    prior_arrays = prior.standardised(shift, sd).arrays(k, covariance_type, dtype=np_dtype)
    if isinstance(init, str):
        if init not in INIT_METHODS:
            raise ValueError(f"init must be one of {INIT_METHODS}, a GMMParams or a sequence of them; got {init!r}.")
        init_mode = init
        user_init = _placeholder_init(k, d, num_chains, covariance_type, dtype)
    else:
        init_mode = "user"
        user_init = _user_init(init, k, d, num_chains, covariance_type, shift, sd, dtype)
    init_code = np.int32({"map": 0, "user": 1, "uniform": 2}[init_mode])
    key = seed_to_key(seed)
    config = _Config(
        k, covariance_type, num_warmup, num_samples, num_chains, chain_method,
        float(target_accept_prob), max_tree_depth,
    )

    exe, compile_seconds = _compiled(xs, prior_arrays, key, init_code, user_init, config)
    start = time.perf_counter()
    pivot_std, draws_std, stats, lp = jax.block_until_ready(exe(xs, prior_arrays, key, init_code, user_init))
    sampling_seconds = time.perf_counter() - start

    # ---- back to the original scale (NumPy float64, vectorised over chains and draws)
    pivot = params_to_original(GMMParams(*(np.asarray(a) for a in pivot_std)), shift, sd, covariance_type)
    raw = params_to_original(GMMParams(*(np.asarray(a) for a in draws_std)), shift, sd, covariance_type)
    raw_draws = {"weights": raw.weights, "means": raw.means, "covariances": raw.covariances}
    ll_shift, prior_shift = log_jacobians(sd, n, k, covariance_type)
    lp = np.asarray(lp, np.float64) + ll_shift + prior_shift
    if align and k > 1:
        draws, perms = align_draws(raw_draws, pivot, covariance_type)
        switched = float(np.mean(np.any(perms != np.arange(k), axis=-1)))
    else:
        draws, switched = dict(raw_draws), 0.0
    point = GMMParams(*(np.mean(draws[name], axis=(0, 1)) for name in ("weights", "means", "covariances")))
    log_lik = _numpy_log_likelihood(arr.astype(np.float64), point, covariance_type)

    stats = {name: np.asarray(v) for name, v in stats.items()}
    stats["tree_depth"] = (np.floor(np.log2(np.maximum(stats["num_steps"], 1))) + 1).astype(np.int64)
    stats["lp"] = lp
    num_div = int(stats["diverging"].sum())
    ess_min, rhat_max = _diagnostics(draws, num_chains)
    converged = bool(rhat_max < _RHAT_MAX) if np.isfinite(rhat_max) else False

    if num_div:
        warnings.warn(
            f"NUTS had {num_div} divergent transition(s) after warmup (of {num_chains * num_samples}); "
            "the draws may be biased. Increase target_accept_prob (e.g. 0.95) or num_warmup.",
            ConvergenceWarning,
            stacklevel=2,
        )
    if not converged or not ess_min >= _ESS_PER_CHAIN * num_chains:
        warnings.warn(
            f"NUTS chains may not have converged: max R-hat {rhat_max:.3f} (want < {_RHAT_MAX}), "
            f"min bulk ESS {ess_min:.0f} (want >= {_ESS_PER_CHAIN * num_chains}). Run more "
            "num_warmup/num_samples or chains, and check the number of components.",
            ConvergenceWarning,
            stacklevel=2,
        )
    return FitResult(
        method="mcmc",
        covariance_type=covariance_type,
        weights=point.weights,
        means=point.means,
        covariances=point.covariances,
        log_likelihood=log_lik,
        converged=converged,
        n_iter=num_samples,
        trace=lp.reshape(-1),
        objective="log_posterior",
        feature_names=names,
        num_obs=n,
        prior=prior,
        draws=draws,
        raw_draws=raw_draws,
        sample_stats=stats,
        info={
            "seed": int(seed) if isinstance(seed, (int, np.integer)) else None,
            "num_divergences": num_div,
            "min_ess_bulk": ess_min,
            "max_rhat": rhat_max,
            "compile_seconds": compile_seconds,
            "sampling_seconds": sampling_seconds,
            "label_switch_fraction": switched,
            "num_warmup": num_warmup,
            "num_samples": num_samples,
            "num_chains": num_chains,
            "chain_method": chain_method,
            "target_accept_prob": float(target_accept_prob),
            "init": init_mode,
            "map_log_likelihood": _numpy_log_likelihood(arr.astype(np.float64), pivot, covariance_type),
            "mean_accept_prob": float(np.mean(stats["accept_prob"])),
            "dtype": str(dtype),
        },
    )
