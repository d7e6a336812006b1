"""What the two Markov chain samplers, NUTS (:mod:`bayesgmm.mcmc`) and Gibbs
(:mod:`bayesgmm.gibbs`), do with their chains outside the compiled program.

* runs of disjoint chains of one compiled program on threads, one per core (:func:`concurrent_runs`,
  :func:`run_chain_groups`);
* per-chain starting values given by the user (:func:`chain_starts`);
* draws back to the original scale, relabelled to the MAP pivot, with the posterior-mean point
  estimate (:func:`finish_draws`);
* convergence diagnostics and their warnings (:func:`chain_diagnostics`, :func:`warn_if_unconverged`);
* the :class:`~bayesgmm.FitResult` of a sampler's fit (:func:`sampler_result`).

The samplers never import each other; everything they share after sampling lives here. Private
to the package; its names may change without notice.
"""

from __future__ import annotations

import concurrent.futures
import math
import threading
import time
import warnings
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from . import _numerics, _program_store, _sticks
from ._compile import CompiledProgram, Timed, compile_together, run_as_group, running
from ._numpyro_common import best_labelling, standard_init
from ._threads import usable_cores
from .labels import align_draws
from .params import ConvergenceWarning, GMMParams, log_jacobians, params_to_original
from .results import FitResult

__all__ = ["ESS_PER_CHAIN", "LAPACK_SPLIT_FLOPS", "RHAT_MAX", "FinishedDraws", "chain_diagnostics", "chain_starts", "concurrent_runs",
           "finish_draws", "lapack_flops_per_chain", "run_chain_groups", "sampler_result", "training_log_likelihood",
           "warn_if_unconverged"]

#: Thresholds of the convergence warnings: max R-hat and min bulk ESS per chain.
RHAT_MAX = 1.01
ESS_PER_CHAIN = 100


#: A batched LAPACK call worth at least this many flops is split by jaxlib 0.10 over XLA's thread
#: pool, and the call waits there for its pieces (``jaxlib/cpu/lapack_kernels.cc``).
LAPACK_SPLIT_FLOPS = 2e5

#: The bound the samplers size their calls to: half the split, for the calls that the estimate of
#: :func:`lapack_flops_per_chain` does not see (the gradient's, the row padding's); a NUTS fit
#: whose estimate was 194,400 flops per chain hung.
LAPACK_SAFE_FLOPS = LAPACK_SPLIT_FLOPS / 2


def lapack_flops_per_chain(num_components: int, num_features: int, rows_factored: int = 0) -> float:
    """An upper bound on the flops of one batched LAPACK call (Cholesky factor, triangular solve)
    of one chain's step: K matrices of D x D, and one per row and component of ``rows_factored``.
    With missing values that is every row of the program's row bucket, not only the rows with a
    missing value: above D = 4 the masked factorisations run for every row
    (``bayesgmm._missing._masked``), and counting 8 rows of 400 started two runs of
    chains whose calls of 345,600 flops hung on two cores."""
    return float((num_components + rows_factored * num_components) * num_features**3)


def lapack_batch(lapack_flops: float) -> int:
    """How many draws' batched LAPACK calls (``lapack_flops`` each, :func:`lapack_flops_per_chain`)
    fit in one call that jaxlib does not split over XLA's thread pool (below
    :data:`LAPACK_SAFE_FLOPS`, with its margin): a power of two, at least 1, at most 1024 (static: a program per
    value)."""
    fits = int(LAPACK_SAFE_FLOPS // max(lapack_flops, 1.0))
    return int(min(1024, 2 ** max(0, math.floor(math.log2(max(fits - 1, 1))))))


def concurrent_runs(num_chains: int, lapack_flops: float = 0.0) -> int:
    """Runs of chains at once, each on a thread of its own: the largest divisor of ``num_chains``
    that is at most :func:`usable_cores`. A chain's small sequential steps keep about one core
    busy, so on two cores 4 chains take about half as long as in one run (NUTS on Old Faithful,
    2 x 2000 steps twice: 3.5 s on two threads, 6.1 s in turn).

    ``lapack_flops`` (:func:`lapack_flops_per_chain`): when the chains' batched LAPACK calls may
    be split over XLA's thread pool (:data:`LAPACK_SPLIT_FLOPS`), one run: two programs, each
    waiting in such a call for pieces queued behind the other's, would hold both threads of a
    two-core machine forever (a Gibbs sampler with missing values did)."""
    if num_chains * lapack_flops >= LAPACK_SAFE_FLOPS:
        return 1
    return max(r for r in range(1, min(num_chains, usable_cores()) + 1) if num_chains % r == 0)


#: Set while the runs of :func:`run_every` are to stop (an interrupt, or a run that failed): their
#: calls of :func:`in_segments` stop between two calls instead of running to the end.
_STOPPING = threading.Event()

#: A sampler run in calls (:func:`run_chain_groups` with ``steps``) takes this many steps in its
#: first call, then as many as about :data:`SEGMENT_SECONDS` of running (at most 8 times the last).
FIRST_SEGMENT_STEPS = 8
SEGMENT_SECONDS = 1.0


def in_segments(call: Callable, carry, steps: int) -> Timed:
    """``call(carry, begin, end)`` (a program's :class:`Timed`, outputs ``(carry, *results)``) over
    steps 0 to ``steps`` in segments, each call's carry (on the host) the next one's; returns the
    last call's results with the calls' seconds summed. Each call lasts about
    :data:`SEGMENT_SECONDS`: while two programs run at once, XLA:CPU holds memory for every
    iteration of a loop of unknown length until the call ends (NUTS on 3000 rows, 4 chains in two
    runs: 10 GB after two minutes in one call)."""
    begin, length, compiled, ran = 0, min(FIRST_SEGMENT_STEPS, steps), 0.0, 0.0
    while True:
        if _STOPPING.is_set():  # the caller was interrupted (or a run beside failed): stop at this call's end
            raise KeyboardInterrupt("the sampler's run was interrupted")
        end = min(steps, begin + length)
        timed = call(carry, np.int32(begin), np.int32(end))
        compiled, ran = compiled + timed.compile_seconds, ran + timed.run_seconds
        carry, *results = timed.outputs
        if end >= steps:
            return Timed(tuple(results), compiled, ran)
        carry = jax.device_get(carry)  # host arrays: the next call's signature is the placeholder's
        length = int(np.clip(length * SEGMENT_SECONDS / max(timed.run_seconds, 1e-3), 1, 8 * length))
        begin = end


#: :func:`carry_shapes` of this process, by sampler, config and arguments' shapes.
_CARRY_SHAPES: dict = {}


def carry_shapes(sampler: str, config, args, trace: Callable) -> tuple:
    """The shapes of a sampler's carry (a tuple of arrays with a leading chain axis, the leaves of
    its chains' state between two calls) for a program of ``config`` on ``args`` (arrays or
    shapes): ``trace()``'s (a trace of the sampler's initialisation, which imports NumPyro) the
    first time, then this process's or the program store's, so that a process whose programs the
    store holds traces nothing (:mod:`bayesgmm._program_store`)."""
    leaves = jax.tree_util.tree_leaves(args)
    signature = repr((sampler + " carry", config, tuple((tuple(a.shape), str(a.dtype)) for a in leaves)))
    if signature not in _CARRY_SHAPES:
        shapes = _program_store.load_shapes(signature)
        if shapes is None:
            shapes = trace()
            _program_store.save_shapes(signature, shapes)
        _CARRY_SHAPES[signature] = tuple(shapes)
    return _CARRY_SHAPES[signature]


def run_chain_groups(program: CompiledProgram, args: tuple, config, runs: int, start: tuple, *,
                     steps: int | None = None, carry_shapes: Callable | None = None) -> Timed:
    """Compile and run a sampler's two programs: its starts, then its chains.

    ``start = (start_program, start_args, start_config)``: a program returning the MAP pivot and
    then the chains' starts, the arguments ``program`` takes after ``args``. The two compile at
    once (:func:`bayesgmm._compile.compile_together`); the starts' program then runs once, and
    ``program(*args, *starts, first_chain, config=config)`` runs every chain: with ``runs > 1``
    for ``runs`` disjoint sets of ``config.chains_per_run`` chains on as many threads at once, its
    outputs (chain axis first) joined along the chains, so that the result is that of one run of
    every chain, bit for bit where each run holds two or more chains (a run of one chain is a
    batch of one, which XLA may vectorise otherwise: Gibbs's draws then differ in the last bit).

    Returns
    -------
    Timed
        ``(pivot, *program's outputs)``; ``compile_seconds`` is the wall time of compiling both
        (0.0 when both were compiled before), ``run_seconds`` that of running them.

    With ``steps`` the program takes the chains' carry and the steps to run after the first chain,
    and returns the carry first (a run of ``steps`` steps in calls, :func:`in_segments`);
    ``carry_shapes(starts)`` gives the carry's shapes for the starts' program's outputs.
    """
    start_program, start_args, start_config = start

    def bounds(starts):  # a segmented program's carry and steps (a placeholder: its first call starts afresh)
        return () if steps is None else (carry_shapes(starts), np.int32(0), np.int32(0))

    compile_seconds = compile_together(start_program, start_args, {"config": start_config}, program,
                                       lambda outputs: (*args, *outputs[1:], np.int32(0), *bounds(outputs[1:])),
                                       {"config": config})
    with running():  # no other program runs beside these runs of chains (_compile.RUN_LOCK)
        started = start_program(*start_args, config=start_config)
        pivot, *starts = started.outputs
        m = config.chains_per_run if runs > 1 else 0
        began = time.perf_counter()
        if steps is None:
            run = run_as_group(lambda r: program(*args, *starts, np.int32(r * m), config=config))
        else:
            placeholder = jax.tree_util.tree_map(lambda a: np.zeros(a.shape, a.dtype), carry_shapes(starts))
            run = run_as_group(lambda r: in_segments(
                lambda carry, begin, end: program(*args, *starts, np.int32(r * m), carry, begin, end, config=config),
                placeholder, steps))
        timed = run_every(run, runs)
    parts = [t.outputs for t in timed]
    chains = parts[0] if runs == 1 else jax.tree_util.tree_map(
        lambda *a: np.concatenate([np.asarray(b) for b in a]), *parts)
    compile_seconds += started.compile_seconds + max(t.compile_seconds for t in timed)  # 0.0 unless the shapes differed
    return Timed((pivot, *chains), compile_seconds, started.run_seconds + time.perf_counter() - began)


def run_every(run, runs: int) -> list:
    """``[run(r) for r in range(runs)]``, on ``runs`` threads at once when ``runs > 1``.

    Each run computes in the caller's precision (``jax.enable_x64`` as a context holds for its
    own thread only: inside ``with jax.enable_x64(True):`` runs of several chains failed with a
    type error). The caller holds :data:`bayesgmm._compile.RUN_LOCK` for these runs (their threads run
    without it), so it must not return before every run has ended: an interrupt (Ctrl-C, a
    second one too) waits for the runs still going before it propagates, or the caller's lock
    would let another program run beside them (the hang :data:`RUN_LOCK` prevents); runs in
    calls (:func:`in_segments`) stop at the end of their present call.
    """
    _STOPPING.clear()  # one group of runs at a time (the caller holds RUN_LOCK)
    if runs == 1:
        return [run(0)]
    x64 = bool(jax.config.jax_enable_x64)  # jax.enable_x64(...) holds for the thread that entered it

    def in_callers_precision(r):  # a run traced or looked up in the other precision failed or mixed types
        with jax.enable_x64(x64):
            return run(r)

    pool = concurrent.futures.ThreadPoolExecutor(runs)
    futures = [pool.submit(in_callers_precision, r) for r in range(runs)]
    try:
        return [f.result() for f in futures]
    except BaseException:
        _STOPPING.set()  # the other runs stop at the end of their present call (about a second)
        raise
    finally:
        pool.shutdown(wait=False)
        while True:  # every run ended, however this frame is left (a KeyboardInterrupt may arrive again)
            try:
                concurrent.futures.wait(futures)
                break
            except BaseException:  # noqa: BLE001 -- a further interrupt: keep waiting, the first one propagates
                continue


def chain_starts(init, k: int, d: int, num_chains: int, covariance_type: str, shift, sd, dtype) -> GMMParams:
    """Per-chain starting parameters (standardised, leading chain axis) from one ``GMMParams`` on
    the original scale (every chain starts there) or a sequence of ``num_chains`` of them.

    Raises
    ------
    ValueError
        Not a GMMParams nor a sequence of ``num_chains`` of them, or invalid parameters.
    """
    if isinstance(init, GMMParams):
        inits = [init] * num_chains
    else:
        try:
            inits = list(init)
        except TypeError:
            inits = []
        if len(inits) != num_chains or not all(isinstance(p, GMMParams) for p in inits):
            raise ValueError(
                f"init must be 'map', a GMMParams or a sequence of num_chains={num_chains} GMMParams "
                f"(one start per chain), got {type(init).__name__}."
            )
    std = [standard_init(p, k, d, covariance_type, shift, sd) for p in inits]
    return GMMParams(*(np.stack(a).astype(dtype) for a in zip(*std)))


class FinishedDraws(NamedTuple):
    """A sampler's output on the original scale (NumPy float64).

    Attributes
    ----------
    pivot : GMMParams
        The MAP start (:func:`bayesgmm._numpyro_common.map_start`).
    reference : GMMParams
        What the draws are aligned to: the pivot, or under a weight prior that empties components
        or is not exchangeable the draw of highest log posterior (:func:`aligns_to_best_draw`).
    raw_draws, draws : dict
        ``weights``/``means``/``covariances`` with leading axes (chains, draws), before and after
        relabelling.
    point : GMMParams
        Posterior mean of the aligned draws.
    log_posterior : np.ndarray (chains, draws)
        ``log p(x, theta)`` of every draw, original units.
    label_switch_fraction : float
        Draws whose best permutation is not the identity.
    """

    pivot: GMMParams
    reference: GMMParams
    raw_draws: dict
    draws: dict
    point: GMMParams
    log_posterior: np.ndarray
    label_switch_fraction: float


def aligns_to_best_draw(concentration) -> bool:
    """Whether a sampler's draws are aligned to its draw of highest log posterior instead of the
    MAP start: under stick-breaking weights, an uneven Dirichlet or a Dirichlet concentration
    below 1.

    The MAP start floors the concentration at 1 (stick-breaking weights start from the uniform
    Dirichlet's), so under such a prior it can fill components that the posterior leaves empty.
    Draws holding fewer clusters than that pivot were then matched to it arbitrarily: under a
    Dirichlet process of concentration 1e6 on two clusters, every draw held one component and the
    relabelled draws spread it over all four labels (a point estimate of four components, 25 nats
    below the one-component fit). A draw of the posterior holds the posterior's clusters (Marin,
    Mengersen & Robert 2005 relabel to the draw of highest posterior density)."""
    if not _sticks.is_exchangeable(concentration):
        return True
    return not _sticks.is_sticks(concentration) and float(np.min(np.asarray(concentration))) < 1.0


def finish_draws(pivot_std, draws_std, log_posterior_std, shift, sd, num_obs: int, covariance_type: str,
                 align: bool, concentration, observed_counts=None, *, data=None, prior=None) -> FinishedDraws:
    """Map a sampler's standardised output to the original scale and undo label switching.

    ``align`` relabels every draw to the pivot (:func:`bayesgmm.labels.align_draws`), or to the
    draw of highest log posterior where :func:`aligns_to_best_draw`; with False (or K = 1) the
    aligned draws are the raw ones. ``log_posterior`` is that of the aligned
    draws: under a weight prior that is not exchangeable (``concentration``: uneven Dirichlet or
    stick-breaking) a relabelled draw has another prior density than the draw the chain visited.
    ``observed_counts``: with missing values, each feature's observed entries
    (:func:`bayesgmm.params.observed_entry_counts`; the data's log-Jacobian counts those).
    Where the program computed in less than float64, ``log_posterior`` is recomputed in float64
    from the aligned draws, the ``data`` (original units) and the ``prior``
    (:func:`exact_log_posterior`): every reported number is a float64 one.
    """
    pivot = params_to_original(GMMParams(*(np.asarray(a) for a in pivot_std)), shift, sd, covariance_type)
    raw = params_to_original(GMMParams(*(np.asarray(a) for a in draws_std)), shift, sd, covariance_type)
    raw_draws = {"weights": raw.weights, "means": raw.means, "covariances": raw.covariances}
    k = raw.means.shape[-2]
    ll_shift, prior_shift = log_jacobians(sd, num_obs, k, covariance_type, observed_counts)
    lp = np.asarray(log_posterior_std, np.float64) + ll_shift + prior_shift
    reference = pivot
    if align and k > 1 and aligns_to_best_draw(concentration) and np.isfinite(lp).any():
        best = np.unravel_index(np.argmax(np.where(np.isfinite(lp), lp, -np.inf)), lp.shape)
        # in the labelling the weight prior finds most probable: a sampler that moves between
        # labelled modes (Gibbs, through nearly empty components) may have its best draw in another
        best_draw = GMMParams(*(raw_draws[name][best] for name in ("weights", "means", "covariances")))
        reference = GMMParams(*(np.asarray(a, np.float64) for a in best_labelling(
            best_draw, jnp.asarray(concentration), covariance_type)))
    if align and k > 1:
        if reference is pivot:
            draws, perms = align_draws(raw_draws, reference, covariance_type)
        else:  # components of expected count below one row are prior draws: free wherever they go
            draws, perms = align_draws(raw_draws, reference, covariance_type, cost="joint_kl", num_obs=num_obs)
        switched = float(np.mean(np.any(perms != np.arange(k), axis=-1)))
        if switched and not _sticks.is_exchangeable(concentration):
            underflow = float(np.finfo(np.asarray(log_posterior_std).dtype).tiny)  # the compute type's
            lp = lp + _sticks.relabelling_shift(raw_draws["weights"], draws["weights"], concentration, underflow)
    else:
        draws, switched = dict(raw_draws), 0.0
    if data is not None and np.asarray(log_posterior_std).dtype != np.float64:
        lp = exact_log_posterior(data, draws, prior, covariance_type)
    point = GMMParams(*(np.mean(draws[name], axis=(0, 1)) for name in ("weights", "means", "covariances")))
    return FinishedDraws(pivot, reference, raw_draws, draws, point, lp, switched)


def exact_log_posterior(data, draws: dict, prior, covariance_type: str) -> np.ndarray:
    """``log p(x, theta)`` of every draw, (chains, draws), in float64 on the host: the data's
    log-likelihood (rows with missing values on their observed columns) plus the log prior
    (:func:`bayesgmm._sticks.draws_log_prior`; ``prior`` a :class:`~bayesgmm.Prior`, original
    units). Weights that underflowed to 0 count as float64's smallest normal number, as
    :meth:`bayesgmm.FitResult.to_inference_data` counts them."""
    names = ("weights", "means", "covariances")
    c, s, k = np.shape(draws["weights"])
    flat = [np.asarray(draws[name], np.float64).reshape((c * s,) + np.shape(draws[name])[2:]) for name in names]
    finite = np.all([np.isfinite(a.reshape(c * s, -1)).all(axis=1) for a in flat], axis=0)
    out = np.full(c * s, np.nan)  # a non-finite draw's is NaN (its rows would have set the frame's centre to NaN)
    if not finite.any():
        return out.reshape(c, s)
    flat = [a[finite] for a in flat]
    total = _numerics.draws_log_likelihood(data, *flat, covariance_type)
    weights = _numerics.floored_weights(flat[0])
    out[finite] = total + _sticks.draws_log_prior(weights, flat[1], flat[2], prior.arrays(k, covariance_type),
                                                  covariance_type)
    return out.reshape(c, s)


def chain_diagnostics(draws: dict) -> tuple[float, float]:
    """``(min bulk ESS, max rank-normalised R-hat)`` over every scalar of the (aligned) draws.

    NumPy implementations that equal ArviZ's (:func:`bayesgmm.diagnostics.ess_bulk`,
    :func:`~bayesgmm.diagnostics.rhat`; importing ArviZ would add ~1 s to the first fit of a
    process). With one chain, R-hat compares its two halves. Constant scalars (the weight of a
    one-component mixture) are skipped; NaN when nothing is left, or with fewer than 4 draws per
    chain (split R-hat needs two per half).
    """
    from .diagnostics import ess_bulk, rhat

    if min(np.shape(v)[1] for v in draws.values()) < 4:
        return float("nan"), float("nan")

    ess = np.concatenate([ess_bulk(v) for v in draws.values()])
    rh = np.concatenate([rhat(v) for v in draws.values()])
    ess_min = float(np.nanmin(ess)) if np.isfinite(ess).any() else float("nan")
    rhat_max = float(np.nanmax(rh)) if np.isfinite(rh).any() else float("nan")
    return ess_min, rhat_max


def warn_if_unconverged(sampler: str, rhat_max: float, ess_min: float, num_chains: int, advice: str,
                        stacklevel: int = 3) -> bool:
    """Warn (``ConvergenceWarning``) when max R-hat >= :data:`RHAT_MAX` or the min bulk ESS is
    below :data:`ESS_PER_CHAIN` per chain; return whether neither is (``converged``: what is
    warned about is not called converged; R-hat alone is unreliable on few effective draws,
    Vehtari et al. 2021). ``stacklevel`` as :func:`warnings.warn`'s, counted from this function
    (3: the caller of the caller)."""
    converged = bool(rhat_max < RHAT_MAX and ess_min >= ESS_PER_CHAIN * num_chains)
    if not converged:
        if np.isfinite(rhat_max) and np.isfinite(ess_min):
            facts = (f"max R-hat {rhat_max:.4f} (want < {RHAT_MAX}), min bulk ESS {ess_min:.0f} "
                     f"(want >= {ESS_PER_CHAIN * num_chains})")
        else:  # no draw moved (every transition divergent, a prior that pins the parameters), or too few draws
            facts = ("R-hat and the bulk ESS are undefined (the draws do not vary, or there are fewer than 4 per "
                     "chain)")
        warnings.warn(f"{sampler} chains may not have converged: {facts}. {advice}", ConvergenceWarning,
                      stacklevel=stacklevel)
    return converged


def training_log_likelihood(arr, params: GMMParams, covariance_type: str) -> float:
    """The float64 log-likelihood of the data at ``params`` (what a sampler's result reports)."""
    return _numerics.totals(np.asarray(arr, np.float64), *params, covariance_type).log_likelihood


def sampler_result(method: str, sampler: str, *, arr, feature_names, prior, covariance_type: str,
                   done: FinishedDraws, sample_stats: dict, timed, seed, num_warmup: int, num_samples: int,
                   num_chains: int, init: str, dtype, warmup_share: float, info: dict) -> FitResult:
    """A sampler's :class:`~bayesgmm.FitResult`: the posterior-mean point estimate of the aligned
    draws with its float64 training log-likelihood, ``log p(x, theta)`` of every draw as the trace,
    R-hat and bulk ESS (a ``ConvergenceWarning`` at the user's call when they are poor), the
    timings of the compiled program ``timed``, the common settings and the sampler's own ``info``.

    One compiled program runs warmup and sampling, so they are not timed apart: ``run_seconds`` is
    split into ``warmup_seconds`` (the MAP start included) and ``sampling_seconds`` by
    ``warmup_share``, the sampler's share of work in warmup (NUTS: of leapfrog steps, i.e. gradient
    evaluations; Gibbs: of sweeps, which all cost the same).
    """
    ess_min, rhat_max = chain_diagnostics(done.draws)
    converged = warn_if_unconverged(
        sampler, rhat_max, ess_min, num_chains,
        "Run more num_warmup/num_samples or chains, and check the number of components.", stacklevel=4,
    )
    if prior is not None and prior.weight_prior == "dirichlet_process":
        draws_weights = np.asarray(done.draws["weights"], np.float64)
        filled = _sticks.truncation_filled(arr.shape[0] * float(np.mean(np.min(draws_weights, axis=-1))),
                                           draws_weights.shape[-1])
        info = {**info, "truncation_filled": filled}
    return FitResult(
        method=method,
        covariance_type=covariance_type,
        weights=done.point.weights,
        means=done.point.means,
        covariances=done.point.covariances,
        log_likelihood=training_log_likelihood(arr, done.point, covariance_type),
        converged=converged,
        n_iter=num_samples,
        trace=done.log_posterior.reshape(-1),
        objective="log_posterior",
        feature_names=feature_names,
        num_obs=arr.shape[0],
        prior=prior,
        draws=done.draws,
        raw_draws=done.raw_draws,
        sample_stats=sample_stats,
        info={
            "seed": int(seed) if isinstance(seed, (int, np.integer)) else None,
            "min_ess_bulk": ess_min,
            "max_rhat": rhat_max,
            "compile_seconds": timed.compile_seconds,
            "run_seconds": timed.run_seconds,
            "fit_seconds": timed.compile_seconds + timed.run_seconds,
            "warmup_seconds": timed.run_seconds * warmup_share,
            "sampling_seconds": timed.run_seconds * (1.0 - warmup_share),
            "label_switch_fraction": done.label_switch_fraction,
            "aligned_to": "map" if done.reference is done.pivot else "best draw",
            "num_warmup": num_warmup,
            "num_samples": num_samples,
            "num_chains": num_chains,
            "init": init,
            "map_log_likelihood": training_log_likelihood(arr, done.pivot, covariance_type),
            "dtype": str(dtype),
            **info,
        },
    )
