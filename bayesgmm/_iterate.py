"""Many fixed-point iterations (EM, CAVI) run together in one compiled loop, with a convergence
test on the objective that a slow start cannot fool.

A batch of *lanes* (restarts, bootstrap replicates, the K of a model-selection grid) shares one
``lax.while_loop`` that runs while any lane is still going; finished lanes keep their state.
The loop is written over the whole batch rather than ``vmap``-ped, so that the choice between
the fast and the precise form of a step (:mod:`bayesgmm._stats`) is a real branch, taken only
where some lane needs it.

Each iteration *evaluates* the lane's next parameters (E-step: the objective ``l_t`` and
whatever the caller records, such as the expected counts) and computes their update (M-step).
The parameters a lane ends with are therefore always ones whose objective was computed: the
reported objective, trace and counts belong to the returned parameters, with no extra E-step.

**Convergence** (Aitken acceleration; Böhning et al. 1994, McNicholas et al. 2010). EM and CAVI
increase their objective monotonically and, near a fixed point, linearly:
``l_{t+1} - l_t ~ a (l_t - l_{t-1})`` with rate ``0 < a < 1``. The projected remaining gain is
``(l_t - l_{t-1}) / (1 - a_t)`` with ``a_t = (l_t - l_{t-1}) / (l_{t-1} - l_{t-2})``, and a lane
has converged when that projection is below the tolerance at two evaluations in a row. On a slow
plateau the rate is near 1 (or the steps grow), the projection is large and the iteration goes
on, where a test on the last step alone (scikit-learn's) stops early.

**In float32 one step's rate is not enough.** A float32 iteration carries rounding in its steps
themselves (the M-step's statistics, not only the objective's sum): on 20,000 rows, D = K = 16,
consecutive gains of about 0.015 nats on a slow stretch scattered by +-0.003, so single-step rates
of 0.8-1.2 where the smooth rate was 0.97, and the test stopped with 2.5 times the tolerance still
to gain (2,000 rows, D = 2: 16 times). Where the compute precision is coarse the projection must
hold at :data:`COARSE_PERSIST` evaluations in a row, and the Aitken projection over windows of
:data:`COARSE_STRIDES` updates (``l_t - l_{t-m}`` against ``l_{t-m} - l_{t-2m}``, gains that stand
well above the rounding) must be below the tolerance too (`benchmarks/float32_floor.py`).

A lane whose objective no longer changes by more than its rounding error (the *precision floor*,
:data:`FLOOR_ULPS` ulps of ``sum_n |l_n|``) has converged too when that floor is above the
tolerance: a tolerance finer than the compute precision can resolve is met at that floor, and the
drivers say so. In float32 the objective must also have stayed within the floor over the last two
windows of a quarter of the run (at least :data:`SETTLE_WINDOW` updates each), so that a slow
steady climb of changes under the floor is not taken for a standstill.
"""

from __future__ import annotations

import functools
import math
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from . import _numerics
from ._compile import length_bucket

#: The precision floor of an objective ``sum_n l_n`` is ``FLOOR_ULPS * eps * sum_n |l_n|``: the
#: rounding of one change of EM's float32 objective measured at most 2.8 ulps of it, with medians of
#: 0.1-0.6 (`benchmarks/float32_floor.py`; it was 8 ulps, which on 20,000 rows of D = K = 16 put the
#: floor above the default tolerance and stopped fits short).
FLOOR_ULPS = 2.0

#: Coarse precision (float32): evaluations in a row whose projections must be below the
#: tolerance (2 otherwise), and the windows (updates) of the Aitken projections that must be too.
COARSE_PERSIST = 4
COARSE_STRIDES = (2, 8, 32)
#: Coarse precision: the settled rule's windows are at least this many updates long.
SETTLE_WINDOW = 8
#: A run at its fixed point can alternate between two objectives (a two-cycle of rounding) by
#: more than the floor: float32 EM on Old Faithful (K = 2, full) alternated by 3.3 ulps of
#: ``sum_n |l_n|`` (1.6 floors) for 1000 iterations when compiled without LLVM's optimisation
#: (the test suite's mode). Such a run has settled too: its objective returns within the floor
#: to its value two evaluations before, by changes of at most this many floors.
CYCLE_FLOORS = 4.0


def coarse(dtype) -> bool:
    """Whether ``dtype``'s arithmetic is coarse enough for the windowed convergence test (float32)."""
    return bool(np.finfo(dtype).eps > 1e-10)


class Lanes(NamedTuple):
    """Loop state of a batch of L iterations (every field has a leading lane axis).

    params : the last evaluated parameters, ``theta_t`` (t = ``n_iter``)
    next_params : their update ``theta_{t+1}`` (not yet evaluated)
    objective : ``l_t``, the objective at ``params``
    delta : ``l_t - l_{t-1}``
    aux : what the step records at ``params`` (e.g. the expected counts)
    n_iter : t, the updates that led to ``params`` (-1 before the first evaluation)
    close : evaluations in a row (ending with the last) whose projected remaining gain was below
        the tolerance (int32)
    converged, failed : stopped by the convergence test / by a non-finite objective
    stopped : stopped by the caller's rule (``abandon`` of :func:`iterate`)
    trace : (L, T) ``trace[t] = l_t`` (NaN beyond ``n_iter``)
    floor : the precision floor of ``l_t``
    objective_low : the rounding error of ``objective`` where the step gives its objective as a
        pair ``(high, low)`` (:func:`bayesgmm._numerics.compensated_sum`), else 0: changes of
        the objective are ``(high - high') + (low - low')``, resolved below its last place
    since : the first index of ``trace`` comparable with the last objective (the windowed test
        looks no further back; :func:`restart_convergence` and the endgame move it)
    endgame : the lane runs the precise form to the end (see :func:`iterate`'s ``needs_precise``)
    """

    params: Any
    next_params: Any
    objective: jax.Array
    delta: jax.Array
    aux: Any
    n_iter: jax.Array
    close: jax.Array
    converged: jax.Array
    failed: jax.Array
    stopped: jax.Array
    trace: jax.Array
    floor: jax.Array
    objective_low: jax.Array
    since: jax.Array
    endgame: jax.Array


def fixed_form(dtype, observed=None) -> bool | None:
    """The E-step's form where it cannot switch per iteration (sharded rows, ``adaptive=False``):
    ``True``, the centred (precise) form throughout, in float32, whose fast form loses a tight
    component (N = 2000, a cluster of sd 3e-4 of the data's: 772 nats below the one-device fit,
    or every run singular); ``None`` (the fast form) in float64, whose fast form resolves
    components down to about 1e-7 of the data's scale, and with missing values (one form only)."""
    return True if coarse(dtype) and observed is None else None


def start(params, aux, num_lanes: int, trace_len: int, dtype) -> Lanes:
    """Lanes that will evaluate ``params`` first (``aux``: a placeholder of the recorded shape)."""
    return Lanes(
        params=params,
        next_params=params,
        objective=jnp.full((num_lanes,), -jnp.inf, dtype),
        delta=jnp.full((num_lanes,), jnp.inf, dtype),
        aux=aux,
        n_iter=jnp.full((num_lanes,), -1, jnp.int32),
        close=jnp.zeros((num_lanes,), jnp.int32),
        converged=jnp.zeros((num_lanes,), bool),
        failed=jnp.zeros((num_lanes,), bool),
        stopped=jnp.zeros((num_lanes,), bool),
        trace=jnp.full((num_lanes, trace_len), jnp.nan, dtype),
        floor=jnp.zeros((num_lanes,), dtype),
        objective_low=jnp.zeros((num_lanes,), dtype),
        since=jnp.zeros((num_lanes,), jnp.int32),
        endgame=jnp.zeros((num_lanes,), bool),
    )


def convergence(delta_prev, delta, step_index, tol, floor, close_before, *, trace=None, since=0,
                coarse_precision: bool = False):
    """The convergence test after the objective ``l_t`` (``t = step_index``) was computed.

    ``delta = l_t - l_{t-1}``, ``delta_prev = l_{t-1} - l_{t-2}``; ``tol`` and ``floor`` are
    totals (same units as the objective); ``close_before`` counts the evaluations in a row before
    this one whose projection was close. Returns ``(close, converged)``: that count with this
    evaluation (0 if it is not close), and whether the projected remaining gain was below
    ``max(tol, floor)`` at two evaluations in a row (one small ratio, e.g. after the large first
    step from a one-point start, cannot stop a run), or, where the floor is above ``tol``, the
    objective has settled within its precision floor (two changes in a row no larger than it, or
    a two-cycle of rounding: a change undone within the floor by the next, each at most
    :data:`CYCLE_FLOORS` floors).

    A gain after a decrease (rounding at a fixed point, where the objective can alternate by a
    few units in its last place, or ``reg_covar``) has no rate to project with: the gain itself
    is the remaining one. Without this rule a run at its fixed point whose objective alternates
    by more than the floor never converged (found by scikit-learn's warm-start test when the
    summation order changed).

    ``coarse_precision`` (static; float32 arithmetic, see the module docstring): the projection
    must be close at :data:`COARSE_PERSIST` evaluations in a row, and so must the Aitken
    projections over the windows :data:`COARSE_STRIDES` of ``trace`` (``trace[..., i] = l_i``,
    NumPy or JAX, one row per lane; windows reaching before ``since`` are skipped); the settled
    rule also needs the objective within the floor over its last two windows of
    ``max(SETTLE_WINDOW, t / 4)`` updates.
    """
    xp, _ = _numerics.array_namespace(delta_prev, delta, tol, floor, trace)  # NumPy on the host (streaming EM), else JAX
    threshold = xp.maximum(tol, floor)
    # a decrease: only rounding or reg_covar; a gain after a decrease: that gain is what remains
    # coarse precision: gains that do not shrink, within the floor, are rounding where the objective
    # has not risen by more than the floor over the last SETTLE_WINDOW updates (float32 VB at its
    # fixed point cycled +1, +1, -2 units in its last place for 800 sweeps: two equal gains every
    # third projected an infinite gain, so no run of close evaluations reached the count); a
    # steady climb of equal gains rises by more, and keeps its infinite projection
    rounding = False
    if coarse_precision:
        risen = _at(trace, step_index, xp) - _at(trace, step_index - SETTLE_WINDOW, xp)
        rounding = (step_index - SETTLE_WINDOW >= since) & (risen <= floor)
    close = (step_index >= 2) & (_projected(delta_prev, delta, xp, floor, rounding, including_last=True) <= threshold)
    # only where the floor hides the tolerance: a steady climb of changes under a floor below tol
    # is progress the Aitken test measures (float32, 2000 rows: stopped with 30x tol left)
    # a two-cycle of rounding: one change undone by the next, within the floor, both small
    cycle = ((delta * delta_prev < 0) & (xp.abs(delta + delta_prev) <= floor)
             & (xp.maximum(xp.abs(delta), xp.abs(delta_prev)) <= CYCLE_FLOORS * floor))
    still = (xp.abs(delta) <= floor) & (xp.abs(delta_prev) <= floor)
    settled = (step_index >= 2) & (still | cycle) & (floor > tol)
    def windows(m):  # (l_t - l_{t-m}, l_{t-m} - l_{t-2m}) and whether they start at or after ``since``
        at = [_at(trace, step_index - j * m, xp) for j in range(3)]
        return at[0] - at[1], at[1] - at[2], step_index - 2 * m >= since

    persist = 2
    if coarse_precision:
        persist = COARSE_PERSIST
        for m in COARSE_STRIDES:
            recent, earlier, available = windows(m)
            close = close & (~available | (_projected(earlier, recent, xp, floor, rounding, including_last=False) <= threshold))
        quarter = xp.maximum(xp.asarray(step_index) // 4, 1).astype(float)
        window = xp.maximum(SETTLE_WINDOW, xp.exp2(xp.floor(xp.log2(quarter)))).astype(np.int32)
        recent, earlier, available = windows(window)
        settled = settled & available & (xp.abs(recent) <= floor) & (xp.abs(earlier) <= floor)
    close_count = xp.where(close, close_before + 1, 0)
    return close_count, ((close_count >= persist) | settled) & (tol >= 0)


def _projected(earlier, recent, xp, floor, rounding=False, *, including_last: bool):
    """The Aitken projection of the remaining gain from two successive changes ``earlier`` and
    ``recent`` of the objective (of one update each, or of windows of updates): ``recent * r /
    (1 - r)`` with the rate ``r = recent / earlier`` (``recent / (1 - r)`` with
    ``including_last``, the gain ``recent`` counted too); a decrease projects its size, a gain
    after a decrease the gain; infinite where the changes do not shrink, unless ``rounding`` (the
    caller's judgement that such changes are the objective's rounding) and both are within the
    precision ``floor``: the gain itself is then what remains."""
    with np.errstate(divide="ignore", invalid="ignore"):
        rate = recent / earlier
        ahead = recent / (1 - rate) if including_last else recent * rate / (1 - rate)
        noise = rounding & (recent <= floor) & (earlier <= floor)
        projected = xp.where((recent > 0) & (earlier > 0) & (rate < 1), ahead, xp.where(noise, recent, np.inf))
    projected = xp.where((recent > 0) & (earlier <= 0), recent, projected)
    return xp.where(recent <= 0, -recent, projected)


def _at(trace, index, xp):
    """``trace[..., index]`` per lane (index clipped at 0)."""
    index = xp.maximum(xp.asarray(index), 0)
    return xp.take_along_axis(trace, index[..., None], axis=-1)[..., 0]


def running(lanes: Lanes, max_iter):
    """Lanes that have not converged, failed or been stopped and may still be updated."""
    return ~lanes.converged & ~lanes.failed & ~lanes.stopped & (lanes.n_iter < max_iter)


def iterate(lanes: Lanes, step: Callable, tol, max_iter, needs_precise: Callable | None = None,
            abandon: Callable | None = None) -> Lanes:
    """Evaluate and update every lane until it converges, fails, is stopped (``abandon``) or has
    made ``max_iter`` updates.

    Parameters
    ----------
    lanes : Lanes
    step : callable ``(params, precise) -> (objective, magnitude, aux, updated_params)``
        For every lane (batched): the objective at ``params`` (an array, or a pair ``(high,
        low)`` of :func:`bayesgmm._numerics.compensated_sum`), ``sum_n |l_n|`` of it (for the
        precision floor), what to record and the updated parameters. ``precise`` is False, or a
        traced (L,) bool: the running lanes whose step needs the precise form. The step branches
        on it (``lax.cond``) around the part that differs, :func:`bayesgmm._stats.e_step_stats`,
        for the whole batch or lane by lane.
    tol : array (L,) or scalar
        Tolerance on the projected remaining gain of the objective (a total); negative: no test
        (every lane makes ``max_iter`` updates).
    max_iter : int or traced int
        Updates per lane in all (a second call continues where the first stopped).
    needs_precise : callable ``params -> (L,) bool``, or bool, optional
        Lanes whose step would lose precision in the fast form (passed on to ``step``, running
        lanes only); ``True``: the precise form throughout, chosen statically (no branch). Or
        the callable returns a pair of (L,) bools ``(now, at_the_end)``: the second marks lanes whose
        fast form keeps the statistics but not the objective's precision near convergence. Such
        a lane takes the fast form until its first close evaluation, then the precise form to
        the end (its *endgame*); the change of form counts as no progress measured (its
        convergence test starts afresh there, :func:`restart_convergence`'s way).
    abandon : callable ``Lanes -> (L,) bool``, optional
        Evaluated after each update on the lanes just evaluated: those to stop although they
        have neither converged nor failed (a search for non-degenerate optima stops lanes that
        have become degenerate). Such a lane ends ``stopped``, with ``converged`` False and
        ``n_iter`` below ``max_iter``; the caller must not report it as a fit.
    """
    advance = functools.partial(_advance, step=step, tol=tol, max_iter=max_iter, needs_precise=needs_precise,
                                abandon=abandon)
    return jax.lax.while_loop(lambda s: jnp.any(running(s, max_iter)), advance, lanes)


def _advance(s: Lanes, *, step, tol, max_iter, needs_precise, abandon) -> Lanes:
    """One evaluation and update of the running lanes of ``s`` (see :func:`iterate`)."""
    eps = jnp.finfo(s.objective.dtype).eps
    lane_index = jnp.arange(s.n_iter.shape[0])
    go = running(s, max_iter)
    entering = jnp.zeros_like(go)
    if needs_precise is None or isinstance(needs_precise, bool):  # one form throughout (static)
        precise, params = bool(needs_precise), s.next_params
    else:  # the step's LAPACK calls after the check's (_numerics.in_turn)
        need = needs_precise(s.next_params)
        if isinstance(need, tuple):  # (now, at the end): the endgame starts at a close evaluation
            now, at_the_end = need
            entering = go & at_the_end & ~now & ~s.endgame & (s.close > 0)
            precise = go & (now | (at_the_end & (s.endgame | entering)))
        else:
            precise = go & need
        params = _numerics.in_turn(precise, s.next_params)
    total, magnitude, aux, updated = step(params, precise)
    total, total_low = total if isinstance(total, tuple) else (total, jnp.zeros_like(total))
    t = s.n_iter + 1
    # a lane entering its endgame has changed form: no progress measured, its test starts afresh
    delta = jnp.where(entering, jnp.nan, (total - s.objective) + (total_low - s.objective_low))
    since = jnp.where(entering, t, s.since)
    floor = FLOOR_ULPS * eps * magnitude
    trace = s.trace.at[lane_index, t].set(total, mode="drop")
    close, done = convergence(s.delta, delta, t, tol, floor, jnp.where(entering, 0, s.close), trace=trace, since=since,
                              coarse_precision=coarse(s.objective.dtype))
    stepped = Lanes(
        params=s.next_params,
        next_params=updated,
        objective=total,
        delta=delta,
        aux=aux,
        n_iter=t,
        close=close,
        converged=done,
        failed=~jnp.isfinite(total),
        stopped=s.stopped,
        trace=trace,
        floor=floor,
        objective_low=total_low,
        since=since,
        endgame=s.endgame | entering,
    )
    if abandon is not None:
        # the rule sees the lanes only once the whole step is computed: its batched LAPACK
        # call (the degenerate check's eigenvalues) must not run beside the step's (Cholesky
        # factors). jaxlib 0.10's CPU LAPACK kernels split large batches (lanes x K matrices
        # of D x D past about 2e5 flops) into pieces on XLA's thread pool and wait there for
        # them; two such calls at once occupy every thread of two cores and wait forever.
        # A constrained model's M-step factors matrices too (eigenvalues): after it as well.
        seen = stepped._replace(params=_numerics.in_turn(updated.covariances, _numerics.in_turn(total, stepped.params)))
        stepped = stepped._replace(stopped=abandon(seen))

    def keep(new, old):
        mask = go.reshape(go.shape + (1,) * (new.ndim - 1))
        return jnp.where(mask, new, old)

    return jax.tree_util.tree_map(keep, stepped, s)


def iterate_queue(pool: Lanes, incoming: Callable, num_queued, size: int, step: Callable, tol, max_iter,
                  needs_precise: Callable | None = None, abandon: Callable | None = None) -> Lanes:
    """:func:`iterate` over a queue of ``num_queued`` lanes, ``L`` at a time: a lane that is done
    hands its place in the pool to the next one waiting.

    :func:`iterate` runs until its slowest lane is done, and the lanes already done ride along
    meanwhile: on small, easy data most em-EM short runs converge within 3-5 updates while one
    lane of 16 needs all 20, so most of a batch's work goes to finished lanes. Here a pool of L
    lanes works through the queue; a lane that converges, fails, is stopped or reaches
    ``max_iter`` is recorded at its place in the queue and replaced by the next lane waiting,
    until none waits and none runs. Every lane goes through the updates :func:`iterate` would
    give it (the pool shares the choice of the precise form, as a batch of :func:`iterate` does).

    Parameters
    ----------
    pool : Lanes
        L lanes: the first ``min(num_queued, L)`` lanes of the queue, ready to run.
    incoming : callable ``slots (L,) int -> Lanes``
        The lanes of the queue at ``slots``, ready to run (called for queues longer than L).
    num_queued : int or traced int
        Lanes in the queue, at most ``size``.
    size : int
        Static length of the queue (of the lanes returned).
    step, tol, max_iter, needs_precise, abandon
        As in :func:`iterate`, applied to the pool (``tol`` a scalar or (L,)).

    Returns
    -------
    Lanes
        ``size`` lanes: each queued lane as it was when done (the lanes from ``num_queued`` on are
        zeros).
    """
    from jax.flatten_util import ravel_pytree

    num_lanes = pool.n_iter.shape[0]
    first = jnp.arange(num_lanes, dtype=jnp.int32)
    slot = jnp.where(first < num_queued, first, size)  # the queue lane each pool lane runs (size: none)
    pool = pool._replace(stopped=pool.stopped | (slot >= size))  # idle lanes never run
    # each finished lane as one row: one scatter per iteration instead of one per field (XLA:CPU
    # expands every scatter into a loop of its own, each adding to the compile time)
    unravel = ravel_pytree(take(pool, 0))[1]

    def rows(lanes):
        return jax.vmap(lambda lane: ravel_pytree(lane)[0])(lanes)

    advance = functools.partial(_advance, step=step, tol=tol, max_iter=max_iter, needs_precise=needs_precise,
                                abandon=abandon)

    def body(carry):
        pool, slot, waiting, done = carry
        pool = advance(pool)
        finished = ~running(pool, max_iter) & (slot < size)
        done = jax.lax.cond(jnp.any(finished), lambda d: d.at[jnp.where(finished, slot, size)].set(rows(pool), mode="drop"),
                            lambda d: d, done)
        new_slot = waiting + jnp.cumsum(finished, dtype=jnp.int32) - 1  # the next lanes waiting, in pool order
        refill = finished & (new_slot < num_queued)

        def load(pool):
            new = incoming(jnp.clip(new_slot, 0, size - 1))
            return jax.tree_util.tree_map(
                lambda a, b: jnp.where(refill.reshape(refill.shape + (1,) * (a.ndim - 1)), a, b), new, pool)

        pool = jax.lax.cond(jnp.any(refill), load, lambda p: p, pool)
        slot = jnp.where(finished, jnp.where(refill, new_slot, size), slot)
        return pool, slot, waiting + jnp.sum(finished, dtype=jnp.int32), done

    waiting = jnp.minimum(num_queued, num_lanes).astype(jnp.int32)
    width = jax.eval_shape(rows, pool)
    empty = jnp.zeros((size, width.shape[1]), width.dtype)
    done = jax.lax.while_loop(lambda c: jnp.any(c[1] < size), body, (pool, slot, waiting, empty))[3]
    return jax.vmap(unravel)(done)


def in_blocks(fn: Callable, inputs, block_lanes: int, num_queued):
    """``fn`` of the first ``num_queued`` lanes of ``inputs``, ``block_lanes`` lanes at a time: a
    queue's starts computed only as far as it is queued.

    ``inputs`` has a leading axis of L lanes (a multiple of ``block_lanes``), ``fn`` maps a block
    of them to a block of L output lanes; the blocks past ``num_queued`` (traced) are not
    computed and stay zeros.
    """
    num_lanes = jax.tree_util.tree_leaves(inputs)[0].shape[0]
    blocks = jax.tree_util.tree_map(lambda a: a.reshape((num_lanes // block_lanes, block_lanes) + a.shape[1:]), inputs)
    shapes = jax.eval_shape(fn, jax.tree_util.tree_map(lambda a: a[0], blocks))
    out = jax.tree_util.tree_map(lambda a: jnp.zeros((num_lanes,) + a.shape[1:], a.dtype), shapes)

    def one_block(b, done):
        new = fn(jax.tree_util.tree_map(lambda a: a[b], blocks))
        return jax.tree_util.tree_map(lambda a, v: jax.lax.dynamic_update_slice_in_dim(a, v, b * block_lanes, 0), done, new)

    return jax.lax.fori_loop(0, (num_queued + block_lanes - 1) // block_lanes, one_block, out)


def queue_start(fresh, start_params: Callable, state: Lanes, size: int, trace_len: int):
    """The pool and the refills of :func:`iterate_queue` for a call that either starts its queue
    afresh or continues ``state``.

    ``start_params(None)`` gives the ``size`` starts' parameters (traced, used where ``fresh``);
    a continuing call's queue is ``state`` itself, the pool's L lanes. Returns ``(pool,
    incoming)``: the pool's first lanes (the first L starts, or ``state``) and the
    ``incoming(slots)`` of :func:`iterate_queue` (fresh lanes of the starts at ``slots``).
    """
    num_lanes = state.n_iter.shape[0]

    def no_starts(_):  # a continuing call queues no starts
        return jax.tree_util.tree_map(lambda a: jnp.zeros((size,) + a.shape[1:], a.dtype), state.params)

    starts = jax.lax.cond(fresh, start_params, no_starts, None)

    def incoming(slots):
        return start(take(starts, slots), state.aux, num_lanes, trace_len, state.objective.dtype)

    pool = jax.lax.cond(fresh, lambda _: incoming(jnp.arange(num_lanes)), lambda _: state, None)
    return pool, incoming


def restart_convergence(lanes: Lanes, mask, max_iter) -> Lanes:
    """``lanes`` whose convergence test starts afresh where ``mask`` (L,) is set: their last
    objective was computed under a looser precision guard (the em-EM short runs) and a difference
    across the two forms must not count. Such a lane forgets its objective and its last change
    (NaN: neither can make the next two evaluations close) and runs again if it had converged,
    unless it has failed, been stopped or made ``max_iter`` updates; its windowed test (float32)
    looks back no further than its next evaluation (``since``)."""
    reset = mask & ~lanes.failed & ~lanes.stopped & (lanes.n_iter < max_iter)
    nan = jnp.full_like(lanes.objective, jnp.nan)
    return lanes._replace(objective=jnp.where(reset, nan, lanes.objective), delta=jnp.where(reset, nan, lanes.delta),
                          close=jnp.where(reset, 0, lanes.close), converged=lanes.converged & ~reset,
                          since=jnp.where(reset, lanes.n_iter + 1, lanes.since))


def take(tree, index):
    """Lanes (or any batched pytree) at ``index`` along the lane axis (NumPy or JAX)."""
    return jax.tree_util.tree_map(lambda a: a[index], tree)


# ----------------------------------------------------------------------------------------------
# The search (host side): starts in batches of lanes, the best short runs continued
# ----------------------------------------------------------------------------------------------
#: Iterations of every start before the best ones are kept (the em-EM short runs).
INIT_ITER = 20
#: Bounds of the automatic number of starts (powers of two in between).
MIN_STARTS, MAX_STARTS = 4, 256
#: Work of the short runs under ``n_init="auto"``: starts x INIT_ITER x N x K x p at most this.
START_BUDGET = 2e8


#: Above this many components the default search runs at least ``8 (K - 32)`` starts (the power of
#: two at or above, up to :data:`LARGE_K_MAX_STARTS`: 8 at K = 33, 64 at K = 40, 128 from K = 48),
#: as far as :data:`LARGE_K_BUDGET` allows. On well-separated unit-variance clusters (centres at
#: least 5 sd apart, every cluster on at least 25 of 80 K rows, D = 4, full, 8-16 data sets each)
#: the budget's 4-8 starts missed the optimum by merging two clusters and splitting a third, 16-145
#: nats short and saying converged, in 3 of 16 data sets at K = 40, 7 of 16 at 48 and 8 of 16 at
#: 64 (2 of 8 at K = 64 in D = 2), and never up to K = 32 (not even with 4 starts); with 64 starts
#: at K = 40 and 128 at 48 none missed, with 128 at K = 64 1 of 16 (256: none). Warm fits with
#: those starts took 0.8, 3.6 and 8.1 s (N = 3200, 3840, 5120; two shared cores) against 0.3-0.7 s.
LARGE_K = 32
LARGE_K_MAX_STARTS = 128
#: The short runs' work (as :data:`START_BUDGET`) the large-K floor may spend (128 starts at K = 64,
#: D = 4 on 5120 rows: 8 s warm on two shared cores, the continued runs included).
LARGE_K_BUDGET = 64 * START_BUDGET


def auto_starts(num_obs: int, num_components: int, num_features: int, covariance_type: str,
                init_iter: int = INIT_ITER) -> tuple[int, int]:
    """``(starts, kept)`` of ``n_init="auto"``.

    As many k-means++ starts as fit in :data:`START_BUDGET` (a power of two between 4 and 256:
    256 on Old Faithful, 4 for N=1e5, D=16, K=16), and one kept run per 16 starts (at least one,
    at most 16). Above :data:`LARGE_K` components at least ``8 (K - 32)`` starts (up to 128) as
    far as :data:`LARGE_K_BUDGET` allows (at K = 64, D = 4, full: 128 up to N = 5200, 64 up to 10,400). One component has one
    fit from every start (each row's responsibility is 1): one start, ``(1, 1)``.
    """
    from ._stats import num_suff_features

    if num_components == 1:
        return 1, 1
    cost = init_iter * num_obs * num_components * num_suff_features(num_features, covariance_type)
    fit = max(START_BUDGET / cost, 1.0)
    starts = int(min(MAX_STARTS, max(MIN_STARTS, 2 ** math.floor(math.log2(fit)))))
    if num_components > LARGE_K:
        wanted = min(LARGE_K_MAX_STARTS, 2 ** math.ceil(math.log2(8 * (num_components - LARGE_K))))
        affordable = 2 ** math.floor(math.log2(max(LARGE_K_BUDGET / cost, 1.0)))
        starts = max(starts, min(wanted, affordable))
    return starts, kept_runs(starts)


def resolve_starts(n_init, num_obs, num_components, num_features, covariance_type,
                   init_iter: int | None = None) -> tuple[int, int]:
    """``(starts, kept)`` for the public ``n_init``: ``"auto"`` (:func:`auto_starts`, sized for
    short runs of ``init_iter``) or an int: that many independent restarts, each run to
    convergence (scikit-learn's meaning), or with ``init_iter`` given the em-EM search over them
    (:func:`kept_runs` continued)."""
    if isinstance(n_init, str):
        if n_init != "auto":
            raise ValueError(f"n_init must be 'auto' or a positive integer, got {n_init!r}.")
        return auto_starts(num_obs, num_components, num_features, covariance_type, short_run_length(init_iter))
    from .params import check_positive_integers

    check_positive_integers(n_init=n_init)
    starts = int(n_init)
    return starts, starts if init_iter is None else kept_runs(starts)


def kept_runs(starts: int) -> int:
    """Runs continued after the short runs of an em-EM search over ``starts``: one per
    16 starts, at least 1 and at most 16 (on larger data the short runs go in blocks of that many
    lanes, the last block filled up with repeated starts; on small data that many lanes are the
    pool of the queue, :func:`queued_lanes`)."""
    return min(16, max(1, starts // 16))


def lane_bucket(num_lanes: int, num_obs: int, num_components: int, num_features: int, covariance_type: str) -> int:
    """Lanes the compiled program runs when a search needs ``num_lanes`` (one group).

    On small data, where the default search runs its maximum of 16 lanes (:func:`auto_starts`;
    N x K x p up to about 39,000) and a lane's iteration costs microseconds against a second or
    more of compiling, every number of lanes up to 16 runs 16 and larger numbers the next power
    of two: the default fit, ``n_init`` up to 16 and given starts share one program. Elsewhere
    lanes are not padded: each costs a full E-step, and ``n_init=1`` on larger data must not pay
    for extra ones. The extra lanes repeat the first ones and their results are dropped
    (:func:`padded_lanes`).
    """
    if not pooled(num_obs, num_components, num_features, covariance_type):
        return num_lanes
    return max(kept_runs(MAX_STARTS), 2 ** math.ceil(math.log2(num_lanes)))


def pooled(num_obs: int, num_components: int, num_features: int, covariance_type: str) -> bool:
    """Small data, where the default search runs :data:`MAX_STARTS` starts and keeps 16 runs: a
    call's lanes are padded (:func:`lane_bucket`), and one group's lanes run as a queue through
    that pool (:func:`queued_lanes`)."""
    return auto_starts(num_obs, num_components, num_features, covariance_type)[1] >= kept_runs(MAX_STARTS)


#: Most lanes of a short-run block on larger data (:func:`short_run_lanes`).
MAX_SHORT_RUN_LANES = 16
#: Elements of the per-lane temporaries (a few (K, N) arrays per lane) a short-run block may hold.
SHORT_RUN_ELEMENTS = 2**27


def short_run_lanes(num_obs: int, num_components: int) -> int:
    """Lanes of the em-EM short runs' blocks where the program is not padded (larger data): up to
    :data:`MAX_SHORT_RUN_LANES`, fewer when their responsibilities, about ``4 N K`` elements a lane,
    would pass :data:`SHORT_RUN_ELEMENTS` (1 GiB in float64); 1 at N K >= 2^25."""
    return max(1, min(MAX_SHORT_RUN_LANES, SHORT_RUN_ELEMENTS // (4 * num_obs * num_components)))


def padded_lanes(call, num_run: int):
    """A :func:`search` ``call`` of one group whose program runs ``num_run`` lanes
    (:func:`lane_bucket`) whatever number of lanes, at most that, a call asks for: the extra lanes
    repeat the first ones, in the starts block (axes (1, lanes, ...)) and the state, and are
    dropped from the output."""
    import numpy as np

    def padded(block, state, limit, fresh, abandon_after):
        num_lanes = jax.tree_util.tree_leaves(block)[0].shape[1]
        if num_lanes >= num_run:
            return call(block, state, limit, fresh, abandon_after)
        repeat = np.arange(num_run) % num_lanes
        block = jax.tree_util.tree_map(lambda a: a[:, repeat], block)
        return take(call(block, take(state, repeat), limit, fresh, abandon_after), slice(0, num_lanes))

    return padded


def queued_lanes(call, pool_lanes: int, queue_size: int = MAX_STARTS):
    """A :func:`search` ``call`` of one group whose program runs any number of lanes as a queue
    through a pool of ``pool_lanes`` (:func:`iterate_queue`): the starts asked for are padded (with
    repeats) to ``queue_size``, or the power of two above, the state (continuing calls, at most
    ``pool_lanes`` lanes) to the pool, and the number asked for is passed as ``num_queued``; the
    padding never runs and is dropped from the output. One program then serves every call of the
    search: all of its short runs in one call, the continued runs, and ``n_init`` restarts up to
    ``queue_size``."""
    import numpy as np

    def queued(block, state, limit, fresh, abandon_after):
        num_lanes = jax.tree_util.tree_leaves(block)[0].shape[1]
        if not fresh and num_lanes > pool_lanes:
            raise ValueError(f"a continuing call queues at most {pool_lanes} lanes, got {num_lanes}")
        size = max(queue_size, 2 ** math.ceil(math.log2(num_lanes)))
        size = -(-size // pool_lanes) * pool_lanes
        block = jax.tree_util.tree_map(lambda a: a[:, np.arange(size) % num_lanes], block)
        state = take(state, np.arange(pool_lanes) % num_lanes)
        out = call(block, state, limit, fresh, abandon_after, num_queued=num_lanes)
        return take(out, slice(0, num_lanes))

    return queued


def short_run_length(init_iter) -> int:
    """The em-EM short runs' length: ``init_iter`` checked (a positive int), :data:`INIT_ITER` when None."""
    if init_iter is None:
        return INIT_ITER
    from .params import check_positive_integers

    check_positive_integers(init_iter=init_iter)
    return int(init_iter)


#: Shortest objective trace: every ``max_iter`` below it (the defaults' 1000 included) shares one
#: program; the trace costs 8 KiB per lane.
MIN_TRACE = 1024


def trace_length(max_iter: int) -> int:
    """Static length of the objective trace (``max_iter + 1`` entries): :data:`MIN_TRACE`, or the
    power of two that holds a longer one (:func:`bayesgmm._compile.length_bucket`), so that
    ``max_iter`` itself is traced and changing it does not compile."""
    return length_bucket(int(max_iter) + 1, MIN_TRACE)


def best_first(objective, degenerate, excluded=None):
    """Indices that order runs best first along the last axis (NumPy): non-degenerate runs, then
    degenerate ones, then those with a non-finite objective or ``excluded``; within each, by
    objective (ties keep their order)."""
    import numpy as np

    score = np.asarray(objective, np.float64)
    finite = np.isfinite(score)
    tier = np.where(finite, np.asarray(degenerate).any(axis=-1).astype(int), 2)
    if excluded is not None:
        tier = np.where(excluded, 2, tier)
    return np.lexsort((-np.where(tier < 2, score, 0.0), tier), axis=-1)


#: ``abandon_after`` of a call that must run every lane to convergence or its limit.
NEVER = np.iinfo(np.int32).max


def search(call, starts, placeholder, *, num_groups: int, num_starts: int, num_kept: int, init_iter: int,
           max_iter: int, avoid_degenerate: bool = True, short_lanes: int | None = None):
    """The em-EM search of G groups (Biernacki, Celeux & Govaert 2003), driving a compiled program.

    Parameters
    ----------
    call : callable ``(starts_block, state, limit, fresh, abandon_after) -> output``
        Runs ``G * lanes`` lanes (group-major): afresh from ``starts_block`` (a pytree with
        leading axes (G, lanes)) when ``fresh``, else continuing ``state``, until ``limit``
        updates; returns host (NumPy) output with ``.lanes`` (:class:`Lanes`) and ``.degenerate``
        (lanes, K). A call may stop a lane that is degenerate after ``abandon_after`` updates
        (:data:`NEVER`: it must not); the search asks for that only when it looks for
        non-degenerate runs, and then never reports a degenerate one.
    starts : pytree with leading axes (G, num_starts)
        What each start begins from (uniform numbers, ...).
    placeholder : Lanes
        A state of the lanes' shapes (any number of lanes; never read), repeated to the lanes of
        each fresh call.
    avoid_degenerate : bool
        When every continued run of a group ends degenerate, continue its next-best short runs
        too (``num_kept`` at a time, with the same compiled program) until one does not or the
        starts run out: a spurious maximiser often has the highest likelihood, so the best
        non-degenerate optimum can lie in a basin the short runs ranked lower. These further
        runs are looking for a non-degenerate optimum only: one that is still degenerate
        ``init_iter`` updates after its short run is stopped there (``abandon_after``), and a
        degenerate one never replaces a run continued first. When none is found, the group
        keeps the best of its first continued runs, each run to convergence.
    short_lanes : int, optional
        Lanes per group of the short runs' calls (at least ``num_kept``, at most ``num_starts``;
        default ``num_kept``). More lanes make fewer calls: each call's set-up (the features of
        the rows, a host round trip) is paid once for the block, and the fast form's passes over
        the rows serve every lane of it.

    Returns
    -------
    output : G * num_kept lanes, per group the best of every run continued (non-degenerate first)
    start_objective : (G, num_starts) each start's objective after its short run (after its full
        run when ``num_kept == num_starts``: then one call runs every start to convergence)
    """
    import numpy as np

    num_placeholder = np.shape(jax.tree_util.tree_leaves(placeholder)[0])[0]

    def blank(lanes):  # the placeholder state of a fresh call of ``lanes`` lanes per group
        return take(placeholder, np.arange(num_groups * lanes) % num_placeholder)

    if num_kept == num_starts:
        out = call(starts, blank(num_starts), max_iter, True, NEVER)
        return out, np.asarray(out.lanes.objective, np.float64).reshape(num_groups, num_starts)
    short = num_kept if short_lanes is None else min(num_starts, max(num_kept, short_lanes))

    def block(b, lanes):  # the last block is filled up with the first starts (their runs are dropped)
        index = np.arange(b * lanes, (b + 1) * lanes) % num_starts
        return jax.tree_util.tree_map(lambda a: a[:, index], starts)

    def by_group(tree):  # (G * lanes, ...) -> (G, lanes, ...); explicit sizes: a leaf may be empty
        return jax.tree_util.tree_map(lambda a: a.reshape((num_groups, a.shape[0] // num_groups) + a.shape[1:]), tree)

    def flat(tree):  # (G, lanes, ...) -> (G * lanes, ...)
        return jax.tree_util.tree_map(lambda a: a.reshape((a.shape[0] * a.shape[1],) + a.shape[2:]), tree)

    def pick(tree, index):  # per group, the runs at index (G, lanes)
        return jax.tree_util.tree_map(
            lambda a: np.take_along_axis(a, index.reshape(index.shape + (1,) * (a.ndim - 2)), axis=1), tree)

    shorts = [by_group(call(block(b, short), blank(short), min(init_iter, max_iter), True, NEVER))
              for b in range(-(-num_starts // short))]
    shorts = jax.tree_util.tree_map(lambda *a: np.concatenate(a, axis=1)[:, :num_starts], *shorts)  # (G, R, ...)
    start_objective = np.asarray(shorts.lanes.objective, np.float64)
    order = best_first(start_objective, shorts.degenerate)
    done = by_group(call(block(0, num_kept), flat(pick(shorts.lanes, order[:, :num_kept])), max_iter, False, NEVER))
    rounds = 1
    while avoid_degenerate and rounds * num_kept < num_starts:
        clean = ~np.asarray(done.degenerate).any(axis=-1) & np.isfinite(np.asarray(done.lanes.objective))
        if clean.any(axis=1).all():
            break
        chosen = order[:, np.arange(rounds * num_kept, (rounds + 1) * num_kept) % num_starts]  # filled up as block()
        more = by_group(call(block(0, num_kept), flat(pick(shorts.lanes, chosen)), max_iter, False, 2 * min(init_iter, max_iter)))
        both = jax.tree_util.tree_map(lambda *a: np.concatenate(a, axis=1), done, more)  # (G, 2 kept, ...)
        # a degenerate further run (possibly stopped before converging) never replaces a first one
        set_aside = np.asarray(more.degenerate).any(axis=-1) | np.asarray(more.lanes.stopped)
        excluded = np.concatenate([np.zeros(clean.shape, bool), set_aside], axis=1)
        keep = best_first(both.lanes.objective, both.degenerate, excluded)[:, :num_kept]
        done = pick(both, keep)
        rounds += 1
    return flat(done), start_objective
