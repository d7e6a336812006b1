"""The EM iteration itself: pure pieces over immutable pytrees, one compiled program, and the
search that drives it.

Shared by :mod:`bayesgmm.em` (in-memory fits, model-selection grids, bootstraps) and
:mod:`bayesgmm.streaming` (its in-memory initialisation), which never import each other.
Everything here works on the standardised scale; units are the callers' business.

**The program** (:data:`PROGRAM`) runs L lanes of EM in one :mod:`bayesgmm._iterate` loop (the
Aitken convergence test; the precise step of :mod:`bayesgmm._stats` where the fast one would
cancel). The lanes belong to G *groups* (one data set / row weighting / set of active components
/ prior each: one fit, the K of a model-selection grid, bootstrap replicates), L / G lanes each.
A call either starts its lanes afresh (from uniform numbers drawn on the host: k-means++ seeds by
default, with user-given pieces substituted) or continues lanes a previous call returned, so one
compiled program serves every number of starts, ``max_iter`` and starting values.

**The search** (:func:`search`; the em-EM strategy of Biernacki, Celeux & Govaert 2003): R starts
per group run ``init_iter`` iterations, L / G at a time; the best non-degenerate short runs of each
group continue to convergence. On small data (one group) the R starts are one queue, worked through
by a pool of L lanes in one call, a lane that is done taking the next start
(:func:`bayesgmm._iterate.iterate_queue`): most short runs there converge in a few updates, and a
batch of L would wait for its slowest one. Short runs rank the basins of attraction cheaply, so many starts
cost little more than one long run, which is what finds the global optimum on the small,
multimodal data sets researchers fit (Old Faithful, the galaxy velocities). With R equal to the
lanes per group every start runs to convergence (independent restarts, scikit-learn's
``n_init``).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from . import _iterate, _missing, _numerics, _sharding, _stats
from ._compile import CompiledProgram
from ._covariance_models import NATIVE, constrained_models
from ._iterate import INIT_ITER, auto_starts, resolve_starts, short_run_length, trace_length  # noqa: F401 (re-exported)
from .kmeans import init_noise, initial_responsibilities, screened_starts, screens
from .params import GMMParams, covariance_shape

#: Smallest reg_covar (standardised units) of the starts' M-step: k-means++ and random_from_data
#: start each component at one point, whose covariance is reg_covar alone, so reg_covar=0 would make
#: every start singular. The updates after it use reg_covar as given; the default (1e-10) is unchanged.
INIT_REG_COVAR = 1e-10


class EMConfig(NamedTuple):
    """Static choices of one EM program."""

    num_components: int
    num_features: int
    covariance_type: str  # the covariances' layout (scikit-learn's structure names)
    hard: bool
    use_prior: bool
    block_rows: _stats.RowBlocks | None = None  # the E-step's row blocks (:func:`bayesgmm._stats.block_rows`)
    covariance_model: str | None = None  # an mclust model in that layout (None: the layout's own)
    components_together: bool = False  # the centred form's components at once (_stats.each_component)

    @property
    def constrained(self) -> bool:
        """Whether the model is one of mclust's constrained ones (not the layout's own)."""
        return self.covariance_model is not None and self.covariance_model not in NATIVE

    def program_config(self) -> "EMConfig":
        """The static part of the compiled program: every constrained model of a layout shares
        one program (:data:`CONSTRAINED`; the model is the traced ``EMProblem.model_index``)."""
        return self._replace(covariance_model=CONSTRAINED if self.constrained else None)

    def model_index(self) -> int:
        return constrained_models(self.covariance_type).index(self.covariance_model) if self.constrained else 0


#: ``EMConfig.covariance_model`` of a program that serves every constrained model of its layout.
CONSTRAINED = "constrained"


class EMProblem(NamedTuple):
    """What one lane fits (a pytree; every field traced).

    Attributes
    ----------
    z : (N, p) exponential-family features of the standardised data (:func:`_stats.suff_features`)
    x : (N, D) the standardised data (the precise step)
    sample_weight : (N,) row weights, or None (all 1). Bootstrap counts; 0 for padding rows.
    active : (K,) bool, or None (all active). Components switched off, so that fits of every
        K' <= K run in one program (model-selection grids).
    prior : PriorArrays or None (maximum likelihood)
    reg_covar : scalar
    model_index : int32 scalar, the constrained model's index in its layout (EMConfig.model_index)
    observed : (N, D) bool, or None (nothing missing). False marks a missing entry (its value in
        ``x`` is a placeholder): the E-step is then :func:`bayesgmm._missing.e_step_stats`.
    """

    z: jax.Array
    x: jax.Array
    sample_weight: jax.Array | None
    active: jax.Array | None
    prior: object
    reg_covar: jax.Array
    model_index: jax.Array = 0
    observed: jax.Array | None = None


class EMOutput(NamedTuple):
    """One call's lanes: the loop state (``lanes.params`` evaluated, ``lanes.objective`` their
    objective, ``lanes.aux`` their expected counts N_k) and the degenerate components (L, K)."""

    lanes: _iterate.Lanes
    degenerate: jax.Array


def e_and_stats(params: GMMParams, problem: EMProblem, config: EMConfig, precise):
    """E-step and the M-step's statistics at ``params``: ``(objective, magnitude, counts, stats)``.

    The objective is the log-likelihood (plus the log prior for MAP; the classification
    likelihood for hard EM) as a pair ``(high, low)`` (:func:`bayesgmm._numerics.compensated_sum`:
    its changes resolved in float32 too), ``magnitude`` its ``sum |l_n|`` (the precision floor), ``stats``
    the centred sufficient statistics ``(N_k, xbar_k, S_k)`` of the responsibilities.
    ``precise``: the centred form (:func:`bayesgmm._stats.e_step_stats`).
    """
    ct = config.covariance_type
    if problem.observed is not None:  # missing values: the exact conditional E-step (no fast form)
        per_row, stats = _missing.e_step_stats(problem.x, problem.observed, problem.sample_weight, params, ct,
                                               active=problem.active, hard=config.hard)
        weighted = per_row if problem.sample_weight is None else per_row * problem.sample_weight
        total, magnitude = _numerics.compensated_sum(weighted), jnp.sum(jnp.abs(weighted))
    else:
        total, magnitude, stats = _stats.e_step_totals(problem.z, problem.x, problem.sample_weight, params, ct,
                                                       precise, active=problem.active, hard=config.hard,
                                                       block_rows=config.block_rows,
                                                       together=config.components_together)
    if config.use_prior:  # its factorisations after the E-step's (_numerics.in_turn)
        from .model import log_prior  # NumPyro's densities: imported by MAP fits only

        lp = log_prior(_numerics.in_turn(total[0], params), problem.prior, ct, problem.active)
        total, magnitude = _numerics.add_to_pair(total, lp), magnitude + jnp.abs(lp)
    counts = stats[0] - 10 * jnp.finfo(stats[0].dtype).eps
    return total, magnitude, counts, stats


def m_step(stats, problem: EMProblem, config: EMConfig, previous: GMMParams | None = None) -> GMMParams:
    """M-step (ML, or MAP under ``problem.prior``) from centred statistics: closed form, or for
    the iterative mclust models inner updates started from ``previous`` (a generalised EM)."""
    prior = problem.prior if config.use_prior else None
    return _stats.m_step(*stats, config.covariance_type, problem.reg_covar, prior, problem.active,
                         constrained=config.covariance_model == CONSTRAINED, model_index=problem.model_index,
                         previous=None if previous is None else previous.covariances)


def em_step(params: GMMParams, problem: EMProblem, config: EMConfig, precise: bool):
    """Evaluate ``params`` and update them: ``(objective, magnitude, counts, new_params)``."""
    total, magnitude, counts, stats = e_and_stats(params, problem, config, precise)
    return total, magnitude, counts, m_step(stats, problem, config, params)


def lane_problem(problem: EMProblem, axes: EMProblem, lane) -> EMProblem:
    """One lane's problem: the fields batched over lanes (``axes`` 0) taken at ``lane``."""
    return jax.tree_util.tree_map(lambda axis, field: field if axis is None else field[lane], axes, problem,
                                  is_leaf=lambda a: a is None)


#: Lanes go one after another (``lax.map``) in the precise step and the fresh starts when a lane's
#: centred intermediates, N x K x D elements, reach this (2 MiB in float64, about a core's cache);
#: below it the batch is cheaper ``vmap``-ped (10 lanes at N=1e4, D=2, K=3 took 1.3x as long one
#: after another).
LANE_BY_LANE_ELEMENTS = 2**18


def one_lane_at_a_time(num_rows: int, config: EMConfig) -> bool:
    """Whether lanes of this size run one after another (:data:`LANE_BY_LANE_ELEMENTS`)."""
    return num_rows * config.num_components * config.num_features >= LANE_BY_LANE_ELEMENTS


def lanes_step(params: GMMParams, problem: EMProblem, axes: EMProblem, config: EMConfig, precise,
               lanes_apart: bool = False):
    """:func:`em_step` of every lane (``params`` and the fields of ``problem`` whose ``axes``
    are 0 have a leading lane axis). ``precise``: False, or a traced (L,) bool, the lanes whose
    step needs the precise form.

    While no lane needs it, the lanes run together in the fast form (``vmap``: their products
    share the passes over the rows). Otherwise every lane takes the precise form: on larger data
    one lane after another (``lax.map``, :func:`one_lane_at_a_time`), since batched its centred
    intermediates (lanes x K x N x D) leave the caches and ten lanes took twice as long per lane
    as one (N=1e5, D=K=16, float32); on smaller data batched, the form chosen inside the E-step
    (:func:`bayesgmm._stats.e_step_stats`), which measured faster there than a choice around it.
    A choice per lane would spare lanes that do not need the precise form, but compiling both
    forms inside the loop over lanes made every EM program about 0.2 s slower to compile. The
    M-step, the same either way, follows once for the batch.

    ``lanes_apart`` (static): every lane's E- and M-step one after another, so that each LAPACK
    call factors one lane's K matrices (rows sharded over CPU devices; see :func:`_run`).
    """
    def batched(form):
        return jax.vmap(lambda p, prob: e_and_stats(p, prob, config, form), in_axes=(0, axes))

    def lane_by_lane(params):
        def one(args):
            lane_params, lane = args
            return e_and_stats(lane_params, lane_problem(problem, axes, lane), config, True)

        return jax.lax.map(one, (params, jnp.arange(params.means.shape[0])))

    if lanes_apart:  # sharded rows: one form, chosen statically (_iterate.fixed_form)
        form = precise if isinstance(precise, bool) else False
        return jax.lax.map(lambda a: em_step(a[0], lane_problem(problem, axes, a[1]), config, form),
                           (params, jnp.arange(params.means.shape[0])))
    if problem.observed is not None or isinstance(precise, bool):  # missing values: one form only
        evaluated = batched(False if problem.observed is not None else precise)(params, problem)
    else:
        if one_lane_at_a_time(problem.x.shape[-2], config):
            evaluated = jax.lax.cond(jnp.any(precise), lane_by_lane, lambda p: batched(False)(p, problem), params)
        else:  # the form chosen inside the E-step (_stats.e_step_stats), for the batch
            evaluated = batched(jnp.any(precise))(params, problem)
    total, magnitude, counts, stats = evaluated
    updated = jax.vmap(lambda s, prob, p: m_step(s, prob, config, p), in_axes=(0, axes, 0))(stats, problem, params)
    return total, magnitude, counts, updated


def _lane_groups(num_lanes: int, num_groups: int):
    return jnp.repeat(jnp.arange(num_groups), num_lanes // num_groups)


def _run(xs, noise, given, state, prior, tol, reg_covar, sample_weight, active, max_iter, fresh, abandon_after, loose, model_index,
         observed, num_queued, *,
         config: EMConfig, init_method: str, num_groups: int, trace_len: int, adaptive: bool = True,
         lanes_apart: bool = False, pool_lanes: int | None = None):
    """L lanes of EM, G groups of L / G lanes (see the module docstring).

    ``xs`` is (N, D) shared or (G, N, D) one data set per group (parametric bootstrap);
    ``sample_weight`` None, (N,) shared or (G, N); ``active`` None or (G, K); ``prior`` None,
    shared, or with a leading G on every leaf. ``fresh`` (a traced bool) starts the lanes from
    ``noise`` (L, ...) uniform numbers, with the pieces of ``given`` (:func:`given_start`: the
    standardised weights / means / covariances and a (3,) mask of those given, shared)
    substituted; otherwise the lanes continue from ``state``. ``tol`` is
    per observation; ``max_iter`` counts updates since the lanes' start. A lane whose parameters
    are degenerate after ``abandon_after`` updates is stopped there (see :func:`_iterate.search`).
    ``loose`` (a traced bool): a fresh call runs em-EM short runs, under the looser precision
    guard :data:`bayesgmm._stats.SHORT_RUN_PRECISE_THRESHOLD` (they only rank the starts); a
    continuing call continues such runs, so lanes whose last evaluation would now take the precise
    form start their convergence test afresh (:func:`_iterate.restart_convergence`).
    ``adaptive`` (static): switch to the precise step where needed; False keeps one form
    throughout, :func:`bayesgmm._iterate.fixed_form`'s (sharded rows: XLA's CPU devices deadlock on collectives
    inside a data-dependent branch).
    ``lanes_apart`` (static): the lanes' steps, starts and checks one after another (rows sharded
    over several CPU devices of this process). Every device runs the replicated M-step at once,
    and jaxlib's CPU LAPACK kernels split a large batch of factorisations over the shared thread
    pool and wait there (:func:`bayesgmm._numerics.in_turn`): with as many devices as cores all
    of them waited forever (N=2e4, D=K=16, ``n_init=10`` on two CPU devices, two cores). One
    lane's K factorisations stay below the split (up to K D^3 of about 6e5), and the degenerate
    check's eigenvalues go one component at a time.
    ``pool_lanes`` (static; one group, shared data): the L lanes of ``noise`` and ``state`` are a
    queue, of which the first ``num_queued`` (traced) run, ``pool_lanes`` at a time
    (:func:`bayesgmm._iterate.iterate_queue`); L is a multiple of ``pool_lanes``, and the starts
    are seeded ``pool_lanes`` at a time, only as many blocks as the queued lanes need.
    """
    k, ct = config.num_components, config.covariance_type
    num_lanes = noise.shape[0]
    # the lanes the steps run at once: all of them, or (a queue) the pool's, of the one group
    groups = _lane_groups(num_lanes if pool_lanes is None else pool_lanes, num_groups)
    data_batched = xs.ndim == 3
    weight_batched = sample_weight is not None and sample_weight.ndim == 2
    prior_batched = prior is not None and prior.mean.ndim == 2

    def per_lane(tree, batched):
        return tree if tree is None or not batched else jax.tree_util.tree_map(lambda a: a[groups], tree)

    if config.block_rows is not None or observed is not None:  # made block by block inside the E-step, or unused
        z = None
    elif data_batched:
        z = jax.vmap(_stats.suff_features, in_axes=(0, None))(xs, ct)
    else:
        z = _stats.suff_features(xs, ct)
    problem = EMProblem(
        z=per_lane(z, data_batched),
        x=per_lane(xs, data_batched),
        sample_weight=per_lane(sample_weight, weight_batched),
        active=per_lane(active, active is not None),
        prior=per_lane(prior, prior_batched),
        reg_covar=reg_covar,
        model_index=model_index,
        observed=observed,
    )
    axes = EMProblem(
        z=0 if data_batched and z is not None else None,
        x=0 if data_batched else None,
        sample_weight=0 if weight_batched else None,
        active=None if active is None else 0,
        prior=None if prior is None else jax.tree_util.tree_map(lambda _: 0 if prior_batched else None, prior),
        reg_covar=None,
        model_index=None,
        observed=None,
    )
    if problem.sample_weight is None:
        n_eff = jnp.full(groups.shape, xs.shape[-2], xs.dtype)
    elif weight_batched:
        n_eff = jnp.sum(problem.sample_weight, axis=-1)
    else:
        n_eff = jnp.full(groups.shape, jnp.sum(problem.sample_weight), xs.dtype)

    # the start's M-step in the memory bound's row blocks where the E-step runs in blocks (the
    # CPU's cache-sized blocks are there for speed, and the start was not measured in them)
    memory_blocks = None if config.block_rows is None else _stats.block_rows(xs.shape[-2], config.num_features, ct)
    start_blocks = None if memory_blocks is None else memory_blocks.precise

    def start_params(_):
        """Fresh lanes' parameters: the initial responsibilities' M-step (MAP under a prior, so that
        one-point starts such as k-means++ still have proper covariances), user pieces substituted."""
        init_config = config._replace(hard=False)

        def one(u, prob):
            values, mask = given
            if init_method == "given":  # every piece given: nothing to compute
                return GMMParams(*(jnp.asarray(g, xs.dtype) for g in values))
            resp0 = initial_responsibilities(u, prob.x, k, init_method, sample_weight=prob.sample_weight, active=prob.active)
            if prob.sample_weight is not None:
                resp0 = resp0 * prob.sample_weight[:, None]
            # one-point starts have no scatter: at least INIT_REG_COVAR here, so reg_covar=0 is usable
            floored = prob._replace(reg_covar=jnp.maximum(prob.reg_covar, INIT_REG_COVAR))
            params0 = m_step(_stats.stats_precise(resp0.T, prob.x, ct, block_rows=start_blocks,
                                                  together=config.components_together), floored, init_config)
            return GMMParams(*(jnp.where(m, jnp.asarray(g, p.dtype), p) for p, g, m in zip(params0, values, mask)))

        def every_piece_given(_):  # the user's start in every lane: no seeding, no M-step
            return GMMParams(*(jnp.broadcast_to(jnp.asarray(g, xs.dtype), (num_lanes,) + jnp.shape(g)) for g in given[0]))

        # a traced choice, so that given and computed starts share the program; seeding (K passes
        # over the rows) and its M-step cost more than an EM iteration on large data
        def computed(_):  # seeding and the M-step: one lane at a time on larger data (as lanes_step)
            if pool_lanes is not None:  # a block of pool_lanes starts at a time, as many as are queued
                return _iterate.in_blocks(lambda u: jax.vmap(one, in_axes=(0, axes))(u, problem), noise, pool_lanes,
                                          num_queued)
            if lanes_apart or one_lane_at_a_time(xs.shape[-2], config):
                return jax.lax.map(lambda a: one(a[0], lane_problem(problem, axes, a[1])), (noise, jnp.arange(num_lanes)))
            return jax.vmap(one, in_axes=(0, axes))(noise, problem)

        return jax.lax.cond(jnp.all(given[1]), every_piece_given, computed, None)

    threshold = jnp.where(fresh & loose, _stats.SHORT_RUN_PRECISE_THRESHOLD, _stats.PRECISE_THRESHOLD)
    # float32: the tight guard with the centred endgame (_stats.ENDGAME_THRESHOLD), not for the
    # short runs, which only rank the starts; float64 keeps the conservative guard
    endgame_threshold = None
    if _iterate.coarse(xs.dtype):
        endgame_threshold = jnp.where(fresh & loose, jnp.inf, _stats.ENDGAME_THRESHOLD).astype(xs.dtype)

    def needs(p, prob):  # the whole batch at once (see _stats.needs_precise); float32: (now, at the end)
        return _stats.needs_precise(p, ct, prob.active, prob.reg_covar, threshold, endgame_threshold=endgame_threshold,
                                    spare_collapsed=fresh & loose)  # short runs only: a reported run never

    def needs_now(p, prob):
        need = needs(p, prob)
        return need[0] if isinstance(need, tuple) else need

    def forget(s):  # continuing short runs: their last objective may be the fast form's
        if not adaptive or observed is not None:
            return s
        evaluated = needs_now(s.params, problem)  # the two checks' batched LAPACK calls one after the other
        later = needs_now(_numerics.in_turn(evaluated, s.next_params), problem)
        return _iterate.restart_convergence(s, evaluated | later, max_iter)

    tol_total = jnp.where(tol > 0, tol * n_eff, -1.0)  # tol = 0: exactly max_iter updates
    eps = jnp.finfo(xs.dtype).eps

    def degenerate(s):  # (L, K) at the lanes' evaluated parameters, from their expected counts
        def mask(counts, cov, act):  # mclust's constrained models: their round-off floor is per feature
            return _numerics.degenerate_mask(counts, cov, ct, reg_covar, eps, config.num_features, act,
                                             per_feature=config.constrained)

        if lanes_apart:  # one component at a time: an eigendecomposition per LAPACK call
            counts, cov = s.aux.reshape(-1, 1), s.params.covariances
            if ct != "tied":
                cov = cov.reshape((-1, 1) + cov.shape[2:])
            act = problem.active
            act = None if act is None else jnp.broadcast_to(act, (num_lanes, k)).reshape(-1, 1)
            flagged = jax.lax.map(lambda a: mask(a[0], cov[a[1] // k if ct == "tied" else a[1]],
                                                 None if act is None else act[a[1]]),
                                  (counts, jnp.arange(num_lanes * k)))
            return flagged.reshape(num_lanes, k)
        act = problem.active
        if act is not None and act.shape[0] != s.aux.shape[0]:  # a queue's lanes: its one group's components
            act = jnp.broadcast_to(act[0], s.aux.shape)
        return jax.vmap(mask, in_axes=(0, 0, None if active is None else 0))(s.aux, s.params.covariances, act)

    def step(p, precise):
        return lanes_step(p, problem, axes, config, precise, lanes_apart)

    check = (lambda p: needs(p, problem)) if adaptive else _iterate.fixed_form(xs.dtype, observed)
    abandon = functools.partial(abandoned, abandon_after=abandon_after, degenerate=degenerate)
    if pool_lanes is None:
        lanes = jax.lax.cond(fresh, lambda _: _iterate.start(start_params(None), state.aux, num_lanes, trace_len, xs.dtype),
                             lambda _: state, None)
        lanes = jax.lax.cond(~fresh & loose, forget, lambda s: s, lanes)
        lanes = _iterate.iterate(lanes, step, tol_total, max_iter, check, abandon=abandon)
        return EMOutput(lanes, degenerate(lanes))

    # a queue of num_lanes lanes through the pool: fresh calls queue their starts (seeded before
    # the loop, every lane of the pool started from the next one waiting); a continuing call
    # queues at most pool_lanes lanes, its state, all in the pool at once
    pool, incoming = _iterate.queue_start(fresh, start_params, state, num_lanes, trace_len)
    pool = jax.lax.cond(~fresh & loose, forget, lambda s: s, pool)
    done = _iterate.iterate_queue(pool, incoming, num_queued, num_lanes, step, tol_total, max_iter, check,
                                  abandon=abandon)
    return EMOutput(done, degenerate(done))


def abandoned(s, abandon_after, degenerate):
    """Lanes to stop: degenerate after ``abandon_after`` updates. The degenerate check (an
    eigendecomposition per lane and component) runs only once some lane has made that many
    updates: most calls never abandon (:data:`bayesgmm._iterate.NEVER`), and on small data the
    check cost about a tenth of an iteration (16 lanes, N=2048, K=3, D=2: 63 us against about
    0.75 ms for the E-step, M-step and precision check, each timed alone)."""
    due = s.n_iter >= abandon_after
    return jax.lax.cond(jnp.any(due), lambda _: due & jnp.any(degenerate(s), axis=-1), lambda _: jnp.zeros_like(due),
                        None)


#: The EM program, compiled ahead of time once per shapes and static settings.
PROGRAM = CompiledProgram(
    _run, static_argnames=("config", "init_method", "num_groups", "trace_len", "adaptive", "lanes_apart", "pool_lanes"),
    memory_advice="Fit out of core with bayesgmm.fit_em_stream(x, K) (command line: bayesgmm fit --stream "
                  "on a .npy or Parquet file), or fit a subsample.",
    cpu_options=lambda *args, config, **static: _stats.library_kernels(config.covariance_type, "em"),
)


# ----------------------------------------------------------------------------------------------
# The search (host side): starts in batches of lanes, the best short runs continued
# ----------------------------------------------------------------------------------------------
class SearchResult(NamedTuple):
    """The kept lanes of a search (NumPy, G * kept lanes, group-major) and its bookkeeping.

    ``start_objective`` (G, R) is each start's objective after its short run (after its full run
    when every start is kept); ``compile_seconds`` / ``run_seconds`` sum over the calls.
    ``run_from(starts, groups=None)`` runs more runs to convergence, one from each of ``starts``
    (:class:`GMMParams`, standardised, of the program's K components) with the search's own
    compiled program, and returns them as a :class:`SearchResult` of those lanes in the order of
    ``starts`` (its own seconds). ``run_width`` is as many as one call runs for the cost of one
    run or less: for several groups (a model-selection grid), as many per group, and ``groups``
    names each start's group (whose active components it runs with).
    """

    output: EMOutput
    start_objective: np.ndarray
    compile_seconds: float
    run_seconds: float
    run_from: Callable[[list], "SearchResult"] | None = None
    run_width: int = 1


def given_start(given, num_components, num_features, covariance_type, dtype):
    """User-given starting pieces ``(weights, means, covariances)``, None where not given, as the
    program takes them: every piece an array (zeros where not given) and a (3,) bool mask of the
    given ones. One pytree for every combination, so given and computed starts share a program."""
    shapes = ((num_components,), (num_components, num_features),
              covariance_shape(num_components, num_features, covariance_type))
    values = tuple(np.zeros(shape, dtype) if g is None else g for g, shape in zip(given, shapes))
    return values, np.array([g is not None for g in given])


def _placeholder_state(num_lanes, num_components, num_features, covariance_type, trace_len, dtype):
    """A state of the right shapes for calls that start afresh (its values are never read)."""
    k, d = num_components, num_features
    cov_shape = covariance_shape(k, d, covariance_type)
    params = GMMParams(np.ones((num_lanes, k), dtype), np.zeros((num_lanes, k, d), dtype),
                       np.ones((num_lanes,) + cov_shape, dtype))
    return _iterate.Lanes(
        params=params, next_params=params, objective=np.zeros(num_lanes, dtype), delta=np.zeros(num_lanes, dtype),
        aux=np.zeros((num_lanes, k), dtype), n_iter=np.zeros(num_lanes, np.int32), close=np.zeros(num_lanes, np.int32),
        converged=np.zeros(num_lanes, bool), failed=np.zeros(num_lanes, bool), stopped=np.zeros(num_lanes, bool),
        trace=np.zeros((num_lanes, trace_len), dtype), floor=np.zeros(num_lanes, dtype),
        objective_low=np.zeros(num_lanes, dtype), since=np.zeros(num_lanes, np.int32),
        endgame=np.zeros(num_lanes, bool),
    )


def search(xs, key, given, prior, *, tol, reg_covar, sample_weight, active, max_iter, init_iter, config: EMConfig,
           init_method: str, num_groups: int, num_starts: int, num_kept: int, trace_len: int,
           avoid_degenerate: bool = True, adaptive: bool = True, num_rows: int | None = None,
           observed=None, host_rows=None, host_weight=None) -> SearchResult:
    """The em-EM search of every group (:func:`bayesgmm._iterate.search`) with :data:`PROGRAM`.

    ``key`` seeds every start's uniform numbers; group g's starts use its own split. With
    ``num_kept == num_starts`` one call runs every start to convergence. ``num_rows``: the real
    rows when ``xs`` is padded (sharded fits). ``observed`` (N, D) bool: missing values (False),
    whose entries of ``xs`` are placeholders (shared data only). ``given``: the user's starting
    pieces, None where not given. One group's lanes are padded to :func:`_iterate.lane_bucket`
    (repeats of its first lanes, dropped from the output), so that ``n_init`` up to the bucket
    and given starts reuse the default fit's program; on small data (:func:`_iterate.pooled`)
    that many lanes are the pool through which every call queues its lanes
    (:func:`_iterate.queued_lanes`): one call for all the short runs, and one program for every
    call of the search. ``host_rows`` and ``host_weight``: the real rows (and their weights) on the
    host, from which screened starts are drawn (:func:`bayesgmm.kmeans.screened_starts`), so that
    rows sharded over devices, or over processes, screen the same starts as one device.
    """
    dtype = np.dtype(xs.dtype)
    n = xs.shape[-2]
    k, d = config.num_components, config.num_features
    if not isinstance(xs, jax.Array):  # once for every call of the search (sharded rows are placed already)
        xs = jax.device_put(xs)
    config = config._replace(components_together=_stats.components_together(xs))
    if adaptive and observed is None:  # row blocks bound the memory (not for sharded rows: blocks would cross devices)
        config = config._replace(block_rows=_stats.block_rows_for(xs, d, config.covariance_type, k))
    lanes_per_call = num_groups * num_kept
    rows = (num_rows or n) * (1 if observed is None else 4 * d)  # as the default search counts them
    # one group on one device: lanes padded to a bucket (not over several devices, whose
    # collectives can deadlock XLA:CPU's shared thread pool on larger per-device work)
    single = num_groups == 1 and len(xs.sharding.device_set) == 1
    lanes_run = _iterate.lane_bucket(lanes_per_call, rows, k, d, config.covariance_type) if single else lanes_per_call
    # small data: every call runs its lanes as a queue through a pool of lanes_run (one call for
    # every short run); larger data (one group, one device): the short runs in blocks of lanes
    pooled = single and _iterate.pooled(rows, k, d, config.covariance_type)
    short_lanes = num_starts if pooled else (_iterate.short_run_lanes(rows, k) if single else None)
    given = given_start(given, k, d, config.covariance_type, dtype)
    # few em-EM starts of k-means++ (larger data, one kept run): the best of SCREEN_CANDIDATES
    # seedings by their potential on a subsample of rows, so that a seeding that leaves a cluster
    # without a centre is rarely among them (kmeans.screened_seedings)
    # (every group: a model-selection grid's K each, its first K components active)
    real = num_rows or n

    def on_host(a):  # readable here: a host array, or a device array this process holds whole
        return not isinstance(a, jax.Array) or a.is_fully_addressable

    screened = ((host_rows is not None or on_host(xs)) and observed is None
                and not _iterate.pooled(rows, k, d, config.covariance_type)
                and (sample_weight is None or (np.ndim(sample_weight) == 1
                                               and (host_weight is not None or on_host(sample_weight))))
                and screens(init_method, num_starts, num_kept))
    if init_method == "given":
        noise = np.zeros((num_groups, num_starts, 1), dtype)
    elif screened:
        # one set of seedings for every group: a group's first m components active (a grid's K)
        # are scored by the first m centres
        seeded = [k] * num_groups if active is None else np.broadcast_to(np.asarray(active), (num_groups, k)).sum(1)
        rows_here = np.asarray(xs)[:real] if host_rows is None else host_rows  # copied only where screened
        weight_here = None if sample_weight is None else (
            np.asarray(sample_weight)[:real] if host_weight is None else host_weight)
        noise = screened_starts(jax.random.split(key, 1)[0], rows_here, num_starts, k, seeded, sample_weight=weight_here)
        init_method = "centres"  # (G, R, K, D)
    else:
        keys = jax.random.split(key, num_groups)
        noise = np.stack([init_noise(kk, init_method, num_starts, real, k, dtype, n) for kk in keys])  # (G, R, ...)
    placeholder = _placeholder_state(lanes_per_call, k, d, config.covariance_type, trace_len, dtype)
    model_index = np.int32(config.model_index())
    config = config.program_config()
    static = dict(config=config, init_method=init_method, num_groups=num_groups, trace_len=trace_len, adaptive=adaptive,
                  lanes_apart=_sharding.on_shared_cpu_threads(xs), pool_lanes=lanes_run if pooled else None)
    common = (prior, np.asarray(tol, dtype), np.asarray(reg_covar, dtype), sample_weight, active)
    seconds = [0.0, 0.0]

    def call(noise_block, state, limit, fresh, abandon_after, num_queued=None):
        # the search's fresh calls short of max_iter are em-EM short runs, and its continuing calls
        # continue them: those short runs take the looser precision guard (see _run)
        loose = limit < max_iter if fresh else init_iter < max_iter
        num_queued = noise_block.shape[1] if num_queued is None else num_queued
        timed = PROGRAM(xs, noise_block.reshape((-1,) + noise_block.shape[2:]), given, state, *common,
                        np.asarray(limit, np.int32), np.asarray(fresh), np.asarray(abandon_after, np.int32),
                        np.asarray(loose), model_index, observed, np.asarray(num_queued, np.int32), **static)
        seconds[0] += timed.compile_seconds
        seconds[1] += timed.run_seconds
        return jax.device_get(timed.outputs)

    if pooled:
        call = _iterate.queued_lanes(call, lanes_run)
    elif lanes_run > lanes_per_call:
        call = _iterate.padded_lanes(call, lanes_run)
    out, start_objective = _iterate.search(call, noise, placeholder, num_groups=num_groups, num_starts=num_starts,
                                           num_kept=num_kept, init_iter=init_iter, max_iter=max_iter,
                                           avoid_degenerate=avoid_degenerate, short_lanes=short_lanes)

    # run_from's calls continue the search's program from a state that starts each lane at one
    # of the given starts (as a fresh lane would start): as many lanes as its continuing calls
    # (a call of another width would compile another program, on whichever later fit first
    # needed it); a pool or padded lanes take any number up to their width
    wrapped = pooled or lanes_run > lanes_per_call
    width = lanes_run if wrapped else lanes_per_call

    def continued(params_list: list[GMMParams]):  # one continuing call, a lane from each of params_list
        params = GMMParams(*(np.stack([np.asarray(getattr(p, f), dtype) for p in params_list]) for f in GMMParams._fields))
        lanes = len(params_list)
        state = _iterate.start(params, np.zeros((lanes, k), dtype), lanes, trace_len, dtype)
        per_group = lanes // num_groups
        return call(noise[:, np.arange(per_group) % num_starts], jax.device_get(state), max_iter, False, _iterate.NEVER)

    def run_from(starts: list[GMMParams], groups=None) -> SearchResult:
        before = list(seconds)
        if num_groups == 1:
            outputs = []
            for first in range(0, len(starts), width):  # calls of at most width lanes
                lanes = min(width, len(starts) - first)
                index = first + np.arange(lanes if wrapped else width) % lanes  # unwrapped: padded with repeats
                outputs.append(_iterate.take(continued([starts[i] for i in index]), slice(0, lanes)))
        else:  # each call: up to num_kept starts of every group in its lanes; a group with none
            # left repeats its own kept run (converged: a few iterations), a valid start for its components
            queues = [[i for i, g in enumerate(groups) if g == group] for group in range(num_groups)]
            taken = {}
            while any(queues):
                lane_starts, owners = [], []
                for group, queue in enumerate(queues):
                    mine, queues[group] = queue[:num_kept], queue[num_kept:]
                    for slot in range(num_kept):
                        if mine:
                            lane_starts.append(starts[mine[slot % len(mine)]])
                            owners.append(mine[slot] if slot < len(mine) else None)
                        else:
                            lane_starts.append(GMMParams(*(np.asarray(a[group * num_kept]) for a in out.lanes.params)))
                            owners.append(None)
                runs = continued(lane_starts)
                for lane, owner in enumerate(owners):
                    if owner is not None:
                        taken[owner] = _iterate.take(runs, slice(lane, lane + 1))
            outputs = [taken[i] for i in range(len(starts))]
        done = jax.tree_util.tree_map(lambda *a: np.concatenate(a, axis=0), *outputs)
        objective = np.asarray(done.lanes.objective, np.float64).reshape(1, len(starts))
        return SearchResult(done, objective, seconds[0] - before[0], seconds[1] - before[1])

    return SearchResult(out, start_objective, seconds[0], seconds[1], run_from, width if num_groups == 1 else num_kept)
