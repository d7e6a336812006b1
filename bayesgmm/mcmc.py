"""NUTS on the one model: NumPyro's No-U-Turn sampler on :func:`bayesgmm.model.gmm_model`.

The component labels ``z`` are summed out (``marginalize=True``), so NUTS samples the continuous
parameters (weights, means, covariances) in NumPyro's unconstrained space of the model's own
sample sites: the potential energy is ``numpyro.infer.util.potential_energy(gmm_model, ...)``.

Two compiled programs per shape
-------------------------------
Everything that touches JAX runs inside two ``jax.jit``-ed programs, compiled once per data
shape, K, structure and sampler settings (later fits of same-shaped data reuse them):

1. the starts (:func:`_start_program`): a MAP start, k-means (4 seedings) and a fixed number of
   MAP-EM iterations (closed form, from :mod:`bayesgmm._stats`), the best log posterior kept;
2. per chain, that start mapped to the unconstrained space (``unconstrain_fn``) and jittered,
   with the model's potential energy and gradient there (the fields of NumPyro's ``ParamInfo``);
3. the chains (:func:`_chains_program`): NUTS warmup (step size and mass matrix adaptation:
   dense up to :data:`DENSE_MASS_MAX_PARAMETERS` unconstrained parameters, else diagonal) and sampling from those starts, chains ``vmap``-ed
   (``chain_method="vectorized"``, the default on GPU and TPU), run one after another
   (``"sequential"``, the default on CPU; as many such runs of disjoint chains at once as there
   are cores, on threads, with the same draws), or spread over
   several JAX devices (``"parallel"``: ``jax.shard_map`` over a one-axis ``Mesh`` of devices,
   the chain axis sharded and the chains of one device ``vmap``-ed; see :func:`fit_mcmc`);
4. draws mapped back to the constrained space (``constrain_fn``) and the log posterior
   ``log p(x, theta)`` of every draw.

Why two: given the start's potential and gradient, NUTS's initialisation evaluates nothing, so
the chains' program holds one copy of the model's gradient (the leapfrog's) where one program
held two (XLA inlines every call), and the starts' program compiles on a second thread while the
chains' program is traced and compiled (:func:`bayesgmm._chains.run_chain_groups`). A first fit
on Old Faithful compiles about a second sooner on two cores.

The programs are compiled ahead of time (``jit(...).lower(...).compile()``), so the result's
``info`` reports ``compile_seconds`` (0.0 when the program was reused) apart from
``run_seconds``, the time of running it.

Driving the NUTS kernel inside our own ``jit`` (instead of ``numpyro.infer.MCMC``) avoids the
thousands of tiny eagerly compiled operations of NumPyro's model initialisation, which cost
25-28 s before the first draw; see ``benchmarks/mcmc_ess.py`` for the first-call latency.
The data are standardised internally and every draw is mapped back to the original scale.
Label alignment (:func:`bayesgmm.labels.align_draws`, pivot = the MAP start) and the ESS/R-hat
diagnostics (ArviZ) run afterwards in NumPy.

Precision: float32 unless ``jax_enable_x64`` is on, whatever ``x``'s dtype (library code never
changes JAX's configuration). Results are NumPy float64 on the original scale.
"""

from __future__ import annotations

import functools
import math
import warnings
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from . import _numerics
from . import _numpyro_common as shared
from ._chains import (
    carry_shapes,
    chain_starts,
    concurrent_runs,
    finish_draws,
    lapack_batch,
    lapack_flops_per_chain,
    run_chain_groups,
    sampler_result,
)
from ._compile import (
    CompiledProgram,
    length_bucket,
    progress,
    small_rows,
    small_rows_once,
    step_buffers,
    tick_every,
    tick_interval,
    write_step,
)
from ._threads import usable_cores
from ._warmup import traced_warmup
from .kmeans import num_trials
from .params import (
    ConvergenceWarning,
    GMMParams,
    Prior,
    check_bool,
    check_covariance_type,
    check_data,
    check_int,
    check_num_components,
    check_prior,
    covariance_shape,
    observed_entry_counts,
    real_scalar,
    seed_to_key,
)
from .results import FitResult

__all__ = ["fit_mcmc"]

CHAIN_METHODS = ("auto", "vectorized", "sequential", "parallel")
INIT_METHODS = ("map", "uniform")
#: Standard deviation of the per-chain jitter of the start, in unconstrained units, and the
#: fractions of it tried (:func:`_start_program` keeps the largest that leaves the start typical).
_JITTER = 0.1
JITTER_SCALES = np.array([1.0, 0.25, 1 / 16, 1 / 64, 1 / 256, 0.0])

class _Config(NamedTuple):
    """Static choices of one sampler program."""

    num_components: int
    covariance_type: str
    sample_len: int  # the draws' buffer (_compile.length_bucket); num_samples and num_warmup are traced
    num_chains: int
    chain_method: str
    max_tree_depth: int
    dense_mass: bool  # a dense mass matrix (else diagonal)
    num_devices: int  # devices the chains are spread over ("parallel"), else 1
    progress_bar: bool  # tick a host-side bar from inside the program (values unchanged)
    missing: bool = False  # NaN entries of the data are missing values (the model's MarginalMixture)
    chains_per_run: int | None = None  # "sequential": chains of one run (runs go on threads); None: all
    lp_batch: int = 1024  # draws whose log posterior is computed at once (_chains.lapack_batch)


#: ``dense_mass="auto"``'s largest model for a dense mass matrix, in unconstrained parameters
#: (:func:`num_unconstrained`). Each leapfrog step multiplies by the p x p matrix, and each
#: adaptation window estimates p (p + 1) / 2 covariances from its draws (the last window of a
#: default warmup holds 500): past a few hundred parameters the estimate is mostly noise, and
#: the product costs as much as the gradient of a few hundred rows.
DENSE_MASS_MAX_PARAMETERS = 200


def num_unconstrained(num_components: int, num_features: int, covariance_type: str) -> int:
    """The number of NUTS's unconstrained parameters: K - 1 weights, K D means and the
    covariances' free entries (full: K D (D + 1) / 2, diag: K D, spherical: K, tied:
    D (D + 1) / 2)."""
    k, d = num_components, num_features
    cov = {"full": k * d * (d + 1) // 2, "diag": k * d, "spherical": k, "tied": d * (d + 1) // 2}[covariance_type]
    return (k - 1) + k * d + cov


def _kernel(xs, row_mask, prior, target_accept_prob, config: _Config, potential=None):
    from numpyro.infer import NUTS

    if potential is None:
        potential = potential_fn(xs, row_mask, prior, config.num_components, config.covariance_type, config.missing)
    return NUTS(
        potential_fn=potential,
        target_accept_prob=target_accept_prob,
        max_tree_depth=config.max_tree_depth,
        dense_mass=config.dense_mass,
    )


def _kept(s):
    """What each step keeps: the draw and its statistics."""
    stats = {
        "diverging": s.diverging,
        "num_steps": s.num_steps,
        "accept_prob": s.accept_prob,
        "step_size": s.adapt_state.step_size,
        "energy": s.energy,
        "potential_energy": s.potential_energy,
    }
    return s.z, stats


def _fresh_chain(kernel, chain_key, start, num_warmup, sample_len: int):
    """A chain's carry before its first step: NUTS's state from ``start`` (``(z, potential,
    gradient)``, as NumPyro's ``ParamInfo``), empty draw buffers, no warmup steps."""
    from numpyro.infer.util import ParamInfo

    with traced_warmup():
        state = kernel.init(chain_key, num_warmup, init_params=ParamInfo(*start))
    return state, step_buffers(_kept(state), sample_len), jnp.zeros((), state.num_steps.dtype)


def _raw_key(key):
    """A chain's key as its raw data (uint32), the form NUTS's state then carries: a plain array
    that the host passes from one call to the next (the same random numbers as the typed key)."""
    return jax.random.key_data(key) if jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key) else key


def _each_chain(fn, args, config: _Config):
    """``fn`` of every chain (the leading axis of ``args``): one after another (``"sequential"``)
    or ``vmap``-ed."""
    if config.chain_method == "sequential":
        return jax.lax.map(lambda a: fn(*a), args)
    return jax.vmap(fn)(*args)


def _carry_shapes(xs, row_mask, prior, key, num_samples, num_warmup, target_accept_prob, starts, *, config: _Config):
    """The shapes of the chains' carry (:func:`_run_chains`) for a run of ``config``'s chains from
    ``starts`` (shapes suffice): from a trace of NUTS's initialisation alone, once
    (:func:`bayesgmm._chains.carry_shapes`)."""
    args = (xs, row_mask, prior, key, num_warmup, target_accept_prob, starts)
    return carry_shapes("nuts", config, args, lambda: _traced_carry_shapes(*args, config=config))


def _traced_carry_shapes(xs, row_mask, prior, key, num_warmup, target_accept_prob, starts, *, config: _Config):
    c = config.chains_per_run or config.num_chains
    starts = jax.tree_util.tree_map(lambda a: jax.ShapeDtypeStruct((c,) + tuple(a.shape[1:]), a.dtype), starts)

    def stand_in(z):  # the state's shapes depend on the sites' shapes only: a cheap potential of the
        # same sites traces in a fraction of the model's time (0.3-0.5 s of a first fit's compilation)
        return sum(jnp.sum(a * a) for a in jax.tree_util.tree_leaves(z)).astype(xs.dtype)

    def fresh(key, starts, xs, row_mask, prior, num_warmup, target_accept_prob):
        keys = _split_keys(key, config.num_chains)[1][:c]  # as _chains_program's (their type too)
        kernel = _kernel(xs, row_mask, prior, target_accept_prob, config, potential=stand_in)
        return _each_chain(lambda k, s: tuple(jax.tree_util.tree_leaves(
            _fresh_chain(kernel, _raw_key(k), s, num_warmup, config.sample_len))), (keys, starts), config)

    return jax.eval_shape(fresh, key, starts, xs, row_mask, prior, num_warmup, target_accept_prob)


def _run_chains(chain_keys, starts, xs, row_mask, prior, num_samples, num_warmup, target_accept_prob, carry, begin, end,
                *, config: _Config):
    """Steps ``begin`` to ``end`` (traced) of warmup and sampling of a batch of chains, ``vmap``-ed
    or (``"sequential"``) one after another, from their ``carry`` (a run's first call, ``begin``
    0, starts them afresh from ``starts``; its ``carry`` is a placeholder of
    :func:`carry_shapes`). Returns the carry after step ``end``: NUTS's state, the post-warmup
    unconstrained draws and the per-draw sampler statistics, each with leading axes (chains,
    config.sample_len) of which the first ``num_samples`` (traced) are the draws, and each chain's
    leapfrog steps during warmup (chains,). ``num_warmup`` and ``target_accept_prob`` are traced
    too: the kernel adapts with :func:`bayesgmm._warmup.warmup_adapter` (NumPyro's windows, built
    in the program). A run in several calls makes the same draws as a run in one, bit for bit.
    """
    kernel = _kernel(xs, row_mask, prior, target_accept_prob, config)
    total = num_warmup + num_samples
    every = tick_interval(total)

    def one_chain(chain_key, start, carry):
        # the fresh state is computed at every call (a few gradients: NUTS's step-size search) and
        # taken at the first: in a lax.cond its constants became arguments that the compiled
        # program then missed
        fresh = _fresh_chain(kernel, _raw_key(chain_key), start, num_warmup, config.sample_len)
        treedef = jax.tree_util.tree_structure(fresh)  # the carry passes the program's boundary as its leaves
        carry = jax.tree_util.tree_map(lambda a, b: jnp.where(begin == 0, a, b), fresh,
                                       jax.tree_util.tree_unflatten(treedef, carry))

        def step(i, carry):  # one NUTS body for warmup and sampling: it is compiled once
            s, draws, warmup_steps = carry
            s = kernel.sample(s, (), {})
            if config.progress_bar:
                tick_every("mcmc", i, every)
            warmup_steps += jnp.where(i < num_warmup, s.num_steps, 0)  # leapfrog steps spent warming up
            # a warmup step writes the first slot, which the first draw overwrites
            return s, write_step(draws, jnp.maximum(i - num_warmup, 0), _kept(s)), warmup_steps

        carry = jax.lax.fori_loop(begin, end, step, carry)
        return tuple(jax.tree_util.tree_leaves(carry)), carry[1:]

    return _each_chain(one_chain, (chain_keys, starts, carry), config)


def parallel_devices(num_chains: int, chain_method: str, covariance_type: str) -> int:
    """How many devices the chains are spread over; raises when they cannot be spread evenly.

    ``"parallel"`` uses ``m = min(num_chains, jax.local_device_count())`` devices, and ``m``
    must divide ``num_chains`` (every device runs the same number of chains). With one device
    ``m = 1`` and "parallel" runs the ``"vectorized"`` program. Other methods use one device.
    """
    if chain_method != "parallel":
        return 1
    devices = jax.local_devices()
    m = min(num_chains, len(devices))
    if num_chains % m:
        raise ValueError(
            f"chain_method='parallel' runs the same number of chains on each of min(num_chains, devices) = {m} "
            f"JAX devices ({devices[0].platform}), but num_chains={num_chains} is not a multiple of {m}. Use "
            f"num_chains={-(-num_chains // m) * m} (any multiple of {m}, or at most {m}), or "
            "chain_method='vectorized'."
        )
    cores = usable_cores()
    if m > 1 and devices[0].platform == "cpu" and covariance_type in ("full", "tied") and m >= cores:
        warnings.warn(
            f"chain_method='parallel' on {m} CPU devices with only {cores} CPU core(s): jaxlib's batched "
            "LAPACK kernels (used by full and tied covariances) share one thread pool of about one thread "
            "per core and can deadlock when every device calls them at once. Use chain_method='vectorized' "
            "on CPU (it is as fast there), or fewer devices than cores.",
            RuntimeWarning,
            stacklevel=3,
        )
    return m


class _StartConfig(NamedTuple):
    """Static choices of the starting program (shared by sampler settings that differ in the rest)."""

    num_components: int
    covariance_type: str
    num_chains: int
    missing: bool = False
    reorder: bool = True  # the start to the weight prior's most probable labelling (shared.weights_ordered)


def _split_keys(key, num_chains: int):
    """The key of the random numbers outside the sampler and every chain's key: one split."""
    keys = jax.random.split(key, 1 + num_chains)
    return keys[0], keys[1:]


@shared.without_validation
def _start_program(xs, row_mask, prior, key, init_code, user_init, *, config: _StartConfig):
    """Every chain's start (steps 1 and 2 of the module docstring), as a program of its own.

    Returns the MAP pivot and ``(z, potential energy, gradient)`` (the fields of NumPyro's
    ``ParamInfo``; a plain tuple, so that loading the stored programs needs no NumPyro) with a
    leading chain axis. NUTS starts from the potential and gradient given, so the chains'
    program holds one copy of the model's gradient (the leapfrog's) instead of two, and the two
    programs compile at the same time (:func:`bayesgmm._chains.run_chain_groups`). ``xs`` holds
    the standardised data padded to the row bucket; ``row_mask`` marks its data rows.
    """
    k, ct, c = config.num_components, config.covariance_type, config.num_chains
    # every random number the programs draw outside NUTS comes from one uniform draw, and every
    # chain's key from one split: each draw (a threefry loop) adds to the compile time
    key_noise = _split_keys(key, c)[0]
    map_shape = (shared.MAP_STARTS, k, num_trials(k))
    filled = jnp.where(jnp.isnan(xs), 0.0, xs) if config.missing else xs  # the start: missing entries at the median
    num_map = math.prod(map_shape)

    def unconstrain(params):
        return _unconstrain(params, xs, row_mask, prior, config)

    # All three starts are computed and one is selected by the (traced) init_code, so that
    # "map", user-given and "uniform" starts share one compiled program.
    num_user = c * ravel_pytree(jax.eval_shape(unconstrain, jax.tree_util.tree_map(lambda a: a[0], user_init)))[0].size
    noise = jax.random.uniform(key_noise, (num_map + 2 * num_user,), xs.dtype)
    pivot = shared.map_start(noise[:num_map].reshape(map_shape), filled, prior, k, ct, row_weight=row_mask,
                             reorder=config.reorder)
    # Batched LAPACK calls one after another (_numerics.in_turn): the chains' transforms after the
    # MAP search's, and the chains' gradients one chain at a time below. jaxlib 0.10 splits a
    # batch of chains x K factorisations over XLA's thread pool and waits there; two such calls
    # at once hung NUTS on D = K = 16 with 4 chains on two cores.
    z_user = jax.vmap(unconstrain)(_numerics.in_turn(pivot.covariances, user_init))
    unravel = ravel_pytree(jax.tree_util.tree_map(lambda a: a[0], z_user))[1]
    flat_user = jax.vmap(lambda z: ravel_pytree(z)[0])(z_user)  # (C, P)
    flat_map = jnp.broadcast_to(ravel_pytree(unconstrain(pivot))[0], flat_user.shape)
    u_jitter, u_init = noise[num_map:].reshape((2,) + flat_user.shape)
    tiny = jnp.finfo(xs.dtype).tiny
    jitter = _JITTER * jax.scipy.special.ndtri(jnp.clip(u_jitter, tiny, 1.0 - jnp.finfo(xs.dtype).epsneg))  # normal
    uniform = 4.0 * u_init - 2.0  # NumPyro's init_to_uniform: uniform(-2, 2)
    # The jitter shrunk per chain until the start is as probable as a typical draw: its potential at
    # most one nat per parameter above the unjittered start's (a draw's exceeds the mode's by P / 2
    # on average). A jitter of _JITTER moved the Cholesky factor of features correlated at 0.9999
    # to starts so improbable that a chain's step size adapted to 0 (R-hat 1.53). One lax.map over
    # chains x levels: the same compiled gradient as one start per chain.
    base = jnp.where(init_code == 0, flat_map, flat_user)  # (C, P)
    levels = base[:, None] + JITTER_SCALES.astype(xs.dtype)[None, :, None] * jitter[:, None]  # (C, L, P)
    levels = jnp.where(init_code == 2, uniform[:, None], levels)
    num_levels, num_params = levels.shape[1:]
    energy, grad = jax.lax.map(lambda z: _potential_and_grad(unravel(z), xs, row_mask, prior, k, ct, config.missing),
                               levels.reshape(-1, num_params))
    energy = energy.reshape(c, num_levels)
    typical = jnp.isfinite(energy) & (energy - energy[:, -1:] <= num_params)  # the last level: no jitter
    chosen = jnp.arange(c) * num_levels + jnp.argmax(typical, axis=1)  # the largest jitter that is typical
    z0 = jax.vmap(unravel)(levels.reshape(-1, num_params)[chosen])
    return pivot, (z0, energy.reshape(-1)[chosen], jax.tree_util.tree_map(lambda a: a[chosen], grad))


def _unconstrain(params, xs, row_mask, prior, config: _StartConfig):
    """One start ``params`` (standardised ``GMMParams``) as NumPyro's unconstrained sites."""
    from numpyro.infer.util import unconstrain_fn

    from .model import gmm_model, model_kwargs

    k = config.num_components
    kwargs = model_kwargs(k, prior, config.covariance_type, missing=config.missing, row_mask=row_mask)
    return unconstrain_fn(gmm_model, (xs,), kwargs, shared.site_values(params, k))


def _start_shapes(xs, row_mask, prior, key, init_code, user_init, *, config: _StartConfig):
    """:func:`_start_program`'s outputs' shapes and dtypes from a trace of the model's transform
    alone (not of the whole program), so that the chains' program compiles first."""
    z = jax.eval_shape(jax.vmap(lambda p: _unconstrain(p, xs, row_mask, prior, config)), user_init)
    pivot = jax.tree_util.tree_map(lambda a: jax.ShapeDtypeStruct(a.shape[1:], xs.dtype), user_init)
    return pivot, (z, jax.ShapeDtypeStruct((config.num_chains,), xs.dtype), z)


@shared.without_validation
def _chains_program(xs, row_mask, prior, key, num_samples, num_warmup, target_accept_prob, starts, first_chain, carry,
                    begin, end, *, config: _Config):
    """Warmup, sampling and the draws' log posterior (steps 3 and 4 of the module docstring) from
    ``starts`` (:func:`_start_program`'s ``(z, energy, grad)``). With ``config.chains_per_run`` it runs
    that many chains from ``first_chain`` (a traced int) on: each chain's start and key are those
    of the run of every chain, so runs of disjoint chains, concatenated, are that run's draws.
    ``num_samples`` is traced: the outputs hold ``config.sample_len`` draws per chain, of which
    the first ``num_samples`` are the run's, so that another number of draws in the bucket reuses
    the program; so are ``num_warmup`` and ``target_accept_prob`` (in the data's dtype).

    A run goes in calls of steps ``begin`` to ``end`` (:func:`_run_chains`; its ``carry``
    passes from one call to the next, :func:`bayesgmm._chains.run_chain_groups`): XLA:CPU keeps
    memory for every iteration of a loop of unknown length (NUTS's trees) until the call ends
    when two calls run at once, about 100 MB a second of NUTS on 3000 rows (10 GB in a run of
    two minutes). Returns the carry, and after the last step (``end`` the run's length) the
    draws, their statistics and log posterior and the warmup's leapfrog steps (zeros before)."""
    from .model import model_kwargs

    k, ct, c = config.num_components, config.covariance_type, config.num_chains
    kwargs = model_kwargs(k, prior, ct, missing=config.missing, row_mask=row_mask)
    chain_keys = _split_keys(key, c)[1]
    if config.chains_per_run is not None:  # this run's chains
        c = config.chains_per_run
        starts, chain_keys = jax.tree_util.tree_map(
            lambda a: jax.lax.dynamic_slice_in_dim(a, first_chain, c), (starts, chain_keys)
        )
    run_chains = functools.partial(_run_chains, config=config)
    if config.num_devices > 1:
        # "parallel": the chain axis sharded over a one-axis mesh of devices; each device runs
        # its num_chains / num_devices chains vmap-ed. Data and prior are replicated.
        from jax.sharding import Mesh, PartitionSpec

        mesh = Mesh(np.array(jax.local_devices()[: config.num_devices]), ("chain",))
        chains, replicated = PartitionSpec("chain"), PartitionSpec()
        run_chains = jax.shard_map(
            run_chains,
            mesh=mesh,
            in_specs=(chains, chains, replicated, replicated, replicated, replicated, replicated, replicated, chains,
                      replicated, replicated),
            out_specs=(chains, chains),
            check_vma=False,
        )
    carry, recorded = run_chains(chain_keys, starts, xs, row_mask, prior, num_samples, num_warmup, target_accept_prob,
                                 carry, begin, end)

    def finish(r):
        return _finish(r, xs, row_mask, prior, kwargs, config)

    def nothing_yet(r):  # finish's outputs' shapes, as zeros (written out: a second trace of the model cost time)
        (_, stats), warmup_steps = r
        c, length, dtype = warmup_steps.shape[0], config.sample_len, xs.dtype
        d = xs.shape[1]
        draws = GMMParams(jnp.zeros((c, length, k), dtype), jnp.zeros((c, length, k, d), dtype),
                          jnp.zeros((c, length) + covariance_shape(k, d, ct), dtype))
        return draws, jax.tree_util.tree_map(jnp.zeros_like, stats), jnp.zeros((c, length), dtype), warmup_steps

    finished = jax.lax.cond(end == num_warmup + num_samples, finish, nothing_yet, recorded)
    return (carry, *finished)


def _finish(recorded, xs, row_mask, prior, kwargs, config: _Config):
    """The draws (constrained), their statistics and log posterior, and the warmup's leapfrog
    steps, from what the chains recorded (their draw buffers and warmup steps)."""
    from numpyro.infer.util import constrain_fn

    from .model import gmm_model, log_prior, observed_mixture_log_density

    k, ct = config.num_components, config.covariance_type
    (zs, stats), warmup_steps = recorded
    c = warmup_steps.shape[0]
    args = (xs,)

    sites = constrain_fn(gmm_model, args, kwargs, zs, return_deterministic=True, batch_ndims=2)
    weights = sites["weights"] if k > 1 else jnp.ones((c, config.sample_len, 1), xs.dtype)
    draws = GMMParams(weights, sites["means"], sites["covariances"])

    def log_post(w, m, cov):
        p = GMMParams(w, m, cov)
        rows = observed_mixture_log_density(xs, p, ct) if config.missing else _numerics.mixture_log_density(xs, *p, ct)
        total = jnp.sum(jnp.where(row_mask, rows, 0.0))
        # the prior's batched LAPACK calls after the likelihood's (_numerics.in_turn): over every
        # chain and draw, each batch is split over XLA's thread pool, and two at once hung
        return total + log_prior(_numerics.in_turn(total, p), prior, ct)

    # in batches of draws whose LAPACK calls are not split over XLA's thread pool: every draw at
    # once (chains x draws x K factorisations) was, and two runs of chains on two threads each
    # waited there for pieces queued behind the other's (D = 5, K = 3: a hang)
    flat = jax.tree_util.tree_map(lambda a: a.reshape((-1,) + a.shape[2:]), draws)
    lp = jax.lax.map(lambda p: log_post(*p), flat, batch_size=min(config.lp_batch, c * config.sample_len))
    return draws, stats, lp.reshape(c, config.sample_len), warmup_steps


@functools.partial(jax.jit, static_argnames=("k", "covariance_type", "missing"))
def _potential_and_grad(z, xs, row_mask, prior, k: int, covariance_type: str, missing: bool = False):
    """NumPyro's potential energy of :func:`gmm_model` (and its gradient) at unconstrained ``z``;
    the rows of ``xs`` outside ``row_mask`` (padding) add nothing."""
    from numpyro.infer.util import potential_energy

    from .model import gmm_model, model_kwargs

    kwargs = model_kwargs(k, prior, covariance_type, missing=missing, row_mask=row_mask)
    return jax.value_and_grad(lambda u: potential_energy(gmm_model, (xs,), kwargs, u))(z)


def potential_fn(xs, row_mask, prior, k: int, covariance_type: str, missing: bool = False):
    """The potential as a ``custom_vjp`` around one jitted value-and-gradient.

    NUTS evaluates the potential's gradient at several places (initialisation, step-size
    search, the leapfrog inside the tree building); each would otherwise inline and trace the
    model's log density again. Behind one ``jax.jit`` function it is traced once per program.
    """

    @jax.custom_vjp
    def potential(z):
        return _potential_and_grad(z, xs, row_mask, prior, k, covariance_type, missing)[0]

    def fwd(z):
        return _potential_and_grad(z, xs, row_mask, prior, k, covariance_type, missing)

    def bwd(grad, g):
        return (jax.tree_util.tree_map(lambda a: g * a, grad),)

    potential.defvjp(fwd, bwd)
    return potential


#: The chains' starts and the sampler, each compiled ahead of time once per data shape, dtype and
#: settings (so that the compile and run times are measured apart).
START_PROGRAM = CompiledProgram(_start_program, static_argnames=("config",), fast_compile=small_rows_once,
                                out_shapes=_start_shapes)
PROGRAM = CompiledProgram(
    _chains_program, static_argnames=("config",), fast_compile=small_rows,  # XLA's default emitters above 511 rows
    memory_advice="Use fewer chains or draws, or a subsample (NUTS evaluates every row at every step).",
)


def fit_mcmc(
    x,
    num_components: int,
    *,
    covariance_type: str = "full",
    prior: Prior | None = None,
    num_warmup: int = 1000,
    num_samples: int = 1000,
    num_chains: int = 4,
    chain_method: str = "auto",
    target_accept_prob: float = 0.8,
    max_tree_depth: int = 10,
    dense_mass="auto",
    init="map",
    seed=0,
    progress_bar: bool = False,
    align: bool = True,
    missing: str = "error",
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
        Warmup (adaptation) iterations and kept draws per chain. Both are traced: another
        number of warmup steps, or of draws up to the same power of two, reuses the compiled
        program, and fewer draws are the first draws of a longer run with the same seed.
    num_chains : int
        Independent chains (R-hat needs at least 2).
    chain_method : {"auto", "vectorized", "sequential", "parallel"}
        ``"auto"``: ``"sequential"`` on CPU, ``"vectorized"`` on GPU and TPU. A ``vmap`` of NUTS
        turns every branch of its tree building into a select of both sides, which an
        accelerator runs in parallel but a CPU pays for: on two CPU cores the sequential program
        compiled 30-50% faster and ran as fast on Old Faithful (4.4 s against 3.8 s) and about
        twice as fast on N=2000, D=4, K=3 (38 s against 73-87 s). Sequential chains run on as many
        threads at once as the process has cores (``_chains.concurrent_runs``: 4 chains on 2 cores run
        as two threads of two, the same draws bit for bit), which halves a default fit's sampling
        time on two cores (Old Faithful, 4 x 2000 steps: 3.5 s instead of 6.0 s). Every method
        runs its steps in calls of about a second (``_chains.in_segments``; the same draws bit for
        bit), which bounds memory (two long calls at once grew XLA:CPU's by about 100 MB a second)
        and lets Ctrl-C stop the chains within a second.
        Otherwise: chains ``vmap``-ed in one program, run one after another (``lax.map``), or spread over
        the local JAX devices (``jax.shard_map``, still one compiled program; e.g. several GPUs,
        or CPU devices with ``XLA_FLAGS=--xla_force_host_platform_device_count=4`` set before
        JAX is imported). ``"parallel"`` uses ``m = min(num_chains, jax.local_device_count())``
        devices, each running ``num_chains / m`` chains ``vmap``-ed, and ``m`` must divide
        ``num_chains`` (ValueError otherwise). With a single device it runs the
        ``"vectorized"`` program (the same draws, bit for bit). See Notes for how its draws
        compare on several devices.
    target_accept_prob : float in (0, 1)
        Step-size adaptation target; raise it (e.g. 0.95) when there are divergences (a traced
        value: another target reuses the compiled program).
    max_tree_depth : int
        NUTS maximum tree depth.
    dense_mass : {"auto", True, False}
        Adapt a dense mass matrix during warmup (True) or a diagonal one (False). ``"auto"``
        (default): dense for models of at most :data:`DENSE_MASS_MAX_PARAMETERS` unconstrained
        parameters (:func:`num_unconstrained`: Old Faithful's K = 2 full model has 11; D = 8,
        K = 4 full has 179), diagonal above. The posterior of a cluster's mean is as correlated
        as its features: with a diagonal mass matrix two clusters of 300 rows whose features
        correlate at 0.9999 took 684 leapfrog steps a draw, R-hat 1.012 (1.53 with a dense
        block for the means alone); dense, 91 steps, R-hat 1.00 and 3x the ESS in half the
        time. On Old Faithful both give the same ESS. The dense estimate of each window is
        shrunk towards its diagonal by ``p / (n + p)`` (``p`` parameters, ``n`` draws in the
        window) before Stan's regularisation, so that a short warmup does not precondition with
        a nearly singular matrix.
    init : {"map", "uniform"}, GMMParams or sequence of GMMParams
        ``"map"`` (default): every chain starts at the MAP solution (k-means, then MAP-EM),
        jittered per chain in the unconstrained space. ``"uniform"``: NumPyro's default,
        uniform(-2, 2) in the unconstrained space (often lands chains in different modes). A
        ``GMMParams`` (original scale) starts all chains there, jittered; a sequence of
        ``num_chains`` of them gives one start per chain.
    seed : int or jax key
        Same seed, same draws, bit for bit.
    progress_bar : bool
        Show a tqdm progress bar of the warmup and sampling steps. The bar is advanced from
        inside the compiled program (a host callback every 1% of the steps), so the draws are the
        same with and without it; the program with the callback is compiled separately.
    missing : {"error", "marginalize"}
        ``"marginalize"``: NaN entries are missing at random; NUTS samples the posterior of the
        observed-data likelihood (:class:`bayesgmm.model.MarginalMixture`: each row's density is
        that of its observed columns), and the ``log_likelihood`` group holds each row's
        observed-data density. The default refuses NaN.
    align : bool
        Relabel every draw to the MAP pivot (:func:`bayesgmm.labels.align_draws`), or under
        stick-breaking weights, an uneven Dirichlet or a concentration below 1 to the draw of
        highest log posterior (the MAP start fills components such posteriors leave empty;
        ``info["aligned_to"]``). False keeps ``draws`` equal to ``raw_draws`` (not recommended
        for K > 1).

    Returns
    -------
    FitResult
        ``method="mcmc"``. ``draws`` label-aligned to the MAP solution (``raw_draws`` before
        alignment), the point estimate is the posterior mean of the aligned draws and
        ``log_likelihood`` the training log-likelihood there. ``trace`` holds ``log p(x, theta)``
        (original scale) of every draw, chains concatenated (``objective="log_posterior"``).
        ``sample_stats`` (C, S) arrays: ``diverging``, ``num_steps``, ``tree_depth``,
        ``accept_prob``, ``step_size``, ``energy``, ``potential_energy`` (NumPyro's, standardised
        unconstrained space) and ``lp`` (``log p(x, theta)`` of the aligned draw, original scale: under
        an uneven Dirichlet or stick-breaking weights a relabelled draw's own prior density). ``converged`` is
        True when the maximum R-hat over all aligned parameters is below 1.01 and their minimum
        bulk ESS at least 100 per chain (else a ``ConvergenceWarning`` says which);
        ``n_iter = num_samples``. ``info``: ``num_divergences``, ``min_ess_bulk``, ``max_rhat``,
        ``seed``, ``label_switch_fraction`` (draws whose best permutation is not the
        identity), ``aligned_to`` (``"map"`` or ``"best draw"``), ``num_devices`` (devices the chains ran on) and the settings. Timings:
        ``compile_seconds`` (tracing and compiling the sampler
        program; 0.0 when a program compiled for the same shapes and settings was reused) and
        ``run_seconds`` (running it: MAP start, warmup and sampling, without compilation and
        without the NumPy post-processing) and ``fit_seconds``, their sum.

    Warns
    -----
    ConvergenceWarning
        On divergent transitions after warmup, max R-hat >= 1.01 or min bulk ESS below 100 per chain.
    RuntimeWarning
        ``chain_method="parallel"`` with full or tied covariances on at least as many CPU
        devices as CPU cores: jaxlib's batched LAPACK kernels can then deadlock (see Notes).

    Raises
    ------
    ValueError
        Invalid input, or ``chain_method="parallel"`` with ``num_chains`` not a multiple of the
        number of devices used.

    Notes
    -----
    ``"parallel"`` and ``"vectorized"`` start every chain from the same key and state, so their
    draws agree up to floating-point rounding: the per-device programs batch fewer chains, which
    changes the rounding of a few operations. NUTS amplifies such differences (the trajectories
    are chaotic), so only the first few steps agree closely (to about 1e-8 in float64, 1e-6 to
    1e-4 in float32 after a handful of warmup steps) while longer runs are different but
    equally valid draws of the same posterior.

    CPU devices emulated with ``--xla_force_host_platform_device_count`` share the host's
    cores; on a machine with no more cores than devices, full and tied covariances (whose
    Cholesky solves run in jaxlib's LAPACK kernels, which wait on a shared thread pool) can
    deadlock, and ``"vectorized"`` is as fast anyway. Real multi-GPU devices are not affected.
    """
    arr, names = check_data(x, missing=missing)
    n, d = arr.shape
    k = check_num_components(num_components, n)
    check_covariance_type(covariance_type)
    num_warmup = check_int("num_warmup", num_warmup, 0)
    num_samples = check_int("num_samples", num_samples, 1)
    align = check_bool("align", align)
    num_chains = check_int("num_chains", num_chains, 1)
    max_tree_depth = check_int("max_tree_depth", max_tree_depth, 1)
    if not (isinstance(dense_mass, str) and dense_mass == "auto") and not isinstance(dense_mass, (bool, np.bool_)):
        raise ValueError(f"dense_mass must be 'auto', True or False, got {dense_mass!r}.")
    dense = (num_unconstrained(k, d, covariance_type) <= DENSE_MASS_MAX_PARAMETERS if isinstance(dense_mass, str)
             else bool(dense_mass))
    if chain_method not in CHAIN_METHODS:
        raise ValueError(f"chain_method must be one of {CHAIN_METHODS}, got {chain_method!r}.")
    if chain_method == "auto":
        chain_method = "sequential" if jax.default_backend() == "cpu" else "vectorized"
    num_devices = parallel_devices(num_chains, chain_method, covariance_type)
    accept = real_scalar(target_accept_prob)  # NumPy's and JAX's float32 scalars too
    if accept is None or not 0 < accept < 1:
        raise ValueError(f"target_accept_prob must be a number in (0, 1), got {target_accept_prob!r}.")
    target_accept_prob = accept
    if not isinstance(progress_bar, (bool, np.bool_)):
        raise ValueError(f"progress_bar must be True or False, got {progress_bar!r}.")
    prior = check_prior(prior, d, k, default_from=arr)

    std = shared.standardise(arr, k, covariance_type, prior)
    xs, prior_arrays, shift, sd, dtype = std.xs, std.prior_arrays, std.shift, std.sd, std.dtype
    if isinstance(init, str):
        if init not in INIT_METHODS:
            raise ValueError(f"init must be one of {INIT_METHODS}, a GMMParams or a sequence of them; got {init!r}.")
        init_mode = init
        user_init = shared.placeholder_init(k, d, covariance_type, dtype, num_chains)
    else:
        init_mode = "user"
        user_init = chain_starts(init, k, d, num_chains, covariance_type, shift, sd, dtype)
    init_code = np.int32({"map": 0, "user": 1, "uniform": 2}[init_mode])
    key = seed_to_key(seed)
    # "parallel" on one device is the "vectorized" program (the same compiled program and draws)
    run_method = "vectorized" if chain_method == "parallel" and num_devices == 1 else chain_method
    # with missing values, every row of the bucket is factored (not only those with a missing value)
    lapack_flops = lapack_flops_per_chain(k, d, shared.pad_rows(xs)[0].shape[0] if np.isnan(arr).any() else 0)
    runs = concurrent_runs(num_chains, lapack_flops) if run_method == "sequential" else 1
    config = _Config(
        k, covariance_type, length_bucket(num_samples), num_chains, run_method,
        max_tree_depth, dense, num_devices, bool(progress_bar), bool(np.isnan(arr).any()),
        num_chains // runs if runs > 1 else None, lapack_batch(lapack_flops),
    )
    steps = num_warmup + num_samples
    # vectorized chains step together (one tick per step); sequential chains and devices each tick
    ticks = steps * (num_chains if run_method == "sequential" else num_devices if run_method == "parallel" else 1)
    with progress("mcmc", ticks, enabled=bool(progress_bar), desc=f"NUTS {num_chains} chain(s) x {steps} steps"):
        xs_padded, row_mask = shared.pad_rows(xs)
        start = (START_PROGRAM, (xs_padded, row_mask, prior_arrays, key, init_code, user_init),
                 _StartConfig(k, covariance_type, num_chains, config.missing,
                              shared.weights_ordered(prior_arrays.concentration)))
        # num_samples, num_warmup and target_accept_prob are traced (the draws fill a buffer of
        # num_samples' bucket): other values reuse the program
        traced = (np.int32(num_samples), np.int32(num_warmup), np.asarray(target_accept_prob, xs_padded.dtype))
        program_args = (xs_padded, row_mask, prior_arrays, key, *traced)
        timed = run_chain_groups(PROGRAM, program_args, config, runs, start=start, steps=steps,
                                 carry_shapes=lambda starts: _carry_shapes(*program_args, *starts, config=config))
    pivot_std, *chains, warmup_steps = timed.outputs
    draws_std, stats, lp = jax.tree_util.tree_map(lambda a: np.asarray(a)[:, :num_samples], chains)

    done = finish_draws(pivot_std, draws_std, lp, shift, sd, n, covariance_type, align, prior_arrays.concentration,
                        observed_entry_counts(arr), data=arr, prior=prior)
    stats = {name: np.asarray(v) for name, v in stats.items()}
    stats["tree_depth"] = (np.floor(np.log2(np.maximum(stats["num_steps"], 1))) + 1).astype(np.int64)
    stats["lp"] = done.log_posterior
    warmup_steps = float(np.sum(warmup_steps))
    warmup_share = warmup_steps / max(warmup_steps + float(np.sum(stats["num_steps"])), 1.0)
    num_div = int(stats["diverging"].sum())
    if num_div:
        warnings.warn(
            f"NUTS had {num_div} divergent transition(s) after warmup (of {num_chains * num_samples}); "
            "the draws may be biased. Increase target_accept_prob (e.g. 0.95) or num_warmup.",
            ConvergenceWarning,
            stacklevel=2,
        )
    return sampler_result(
        "mcmc", "NUTS", arr=arr, feature_names=names, prior=prior, covariance_type=covariance_type, done=done,
        sample_stats=stats, timed=timed, seed=seed, num_warmup=num_warmup, num_samples=num_samples,
        num_chains=num_chains, init=init_mode, dtype=dtype, warmup_share=warmup_share,
        info={
            "num_divergences": num_div,
            "warmup_leapfrog_steps": int(warmup_steps),
            "chain_method": chain_method,
            "num_devices": num_devices,
            "target_accept_prob": float(target_accept_prob),
            "dense_mass": dense,
            "mean_accept_prob": float(np.mean(stats["accept_prob"])),
        },
    )
