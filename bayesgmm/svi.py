"""Stochastic variational inference on the one model: NumPyro's SVI on :func:`bayesgmm.model.gmm_model`.

The component labels ``z`` are summed out (``marginalize=True``), so the guide covers only the
continuous sites ``weights``, ``covariances`` and ``means``; the loss is NumPyro's
``Trace_ELBO`` (one particle per step), its per-site terms summed in a fixed order so that the
ELBO values are bit-reproducible across processes (:class:`_SortedTraceELBO`). Guides:

``"normal"``
    ``AutoNormal``: mean field, one independent normal per unconstrained coordinate.
``"mvn"``
    ``AutoMultivariateNormal``: one full-covariance normal over all unconstrained coordinates
    (captures the correlation of a mean with its covariance, and of the weights).
``"delta"``
    ``AutoDelta``: a point mass, i.e. MAP estimation by gradient ascent on
    ``log p(x, theta)``, the same objective as MAP-EM (:func:`bayesgmm.fit_em` with a prior).

or a user-supplied guide (see :func:`fit_svi`).

One compiled program per shape
------------------------------
Everything runs in one ``jax.jit``-ed program,
compiled once per data shape, K, structure, guide and settings (later fits of same-shaped data
reuse it; ``learning_rate``, the data, the prior and the seed are traced arguments):

1. a MAP start in standardised units: k-means (4 seedings) each followed by a fixed number of
   closed-form MAP-EM iterations (:mod:`bayesgmm._stats` in a ``lax.fori_loop``), best log
   posterior kept. The guide is centred there (``init_to_value``); without it the ELBO
   optimisation can settle in poor local optima (merged or empty components). The start also
   fixes which component is which;
2. a ``lax.fori_loop`` of ``num_steps`` (traced) ``SVI.update`` steps (what ``SVI.run`` does),
   each loss written to a buffer of at least 65536 steps (so another ``num_steps`` reuses the
   program), ticking a tqdm bar from inside the program when ``progress_bar=True`` (a host
   callback; the fit is the same);
3. ``num_draws`` draws from the fitted guide (``Predictive``), the guide's median, and an
   unbiased estimate of the ELBO at the final parameters with ``num_draws`` particles.

The program is compiled ahead of time (``jit(...).lower(...).compile()``, cached per shapes and
settings), so the result's ``info`` reports ``compile_seconds`` (0.0 when the program was
reused) apart from ``run_seconds``, the time of running it. A guide or optimizer that cannot be
hashed is compiled for its one call (never cached).

Units and the ELBO
------------------
The data are standardised internally, ``x_s = (x - shift) / sd``, and everything is mapped back.
Write ``theta_s = T(theta)`` for the matching (affine) map of the parameters. The model's joint
density picks up both Jacobians: ``log p(x, theta) = log p_s(x_s, theta_s) + J_x + J_theta``
(``J_x, J_theta = params.log_jacobians(...)``). The variational density is pushed forward by the
same map, ``log q(theta) = log q_s(theta_s) + J_theta``. So in
``ELBO = E_q[log p(x, theta) - log q(theta)]`` the parameter Jacobian cancels *exactly*, and

    ELBO (original units) = ELBO (standardised) + J_x,

the same shift as the log evidence ``log p(x) = log p_s(x_s) + J_x``; the gap
``log p(x) - ELBO = KL(q || posterior)`` does not depend on units. For ``guide="delta"`` (and
any ``AutoDelta`` class or instance) there is
no entropy term: the loss is ``-log p_s(x_s, theta_s)``, a log posterior *density*, which does
not cancel, so its trace is reported as ``objective="log_posterior"`` shifted by
``J_x + J_theta`` (the units of MAP-EM's trace).

Precision: float32 unless ``jax_enable_x64`` is on and ``x`` is float64 (library code never
changes JAX's configuration). Results are NumPy float64 on the original scale.
"""

from __future__ import annotations

import copy
import functools
import inspect
import warnings
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
from numpyro.infer import SVI, Predictive, Trace_ELBO, init_to_uniform, init_to_value
from numpyro.infer.autoguide import AutoDelta, AutoGuide, AutoLaplaceApproximation, AutoMultivariateNormal, AutoNormal

from . import _numerics, _sticks
from . import _numpyro_common as shared
from ._chains import LAPACK_SPLIT_FLOPS
from ._compile import (
    CompiledProgram,
    compile_together,
    length_bucket,
    progress,
    small_rows,
    small_rows_once,
    tick_every,
    tick_interval,
    write_step,
)
from .labels import align_draws
from .model import gmm_model, model_kwargs
from .params import (
    ConvergenceWarning,
    DegenerateComponentWarning,
    GMMParams,
    Prior,
    check_covariance_type,
    check_data,
    check_int,
    check_num_components,
    check_prior,
    log_jacobians,
    observed_entry_counts,
    params_to_original,
    real_scalar,
    seed_to_key,
)
from .results import FitResult

__all__ = ["GUIDES", "fit_svi"]

#: ``guide=`` name -> NumPyro autoguide class.
GUIDES = {"normal": AutoNormal, "mvn": AutoMultivariateNormal, "delta": AutoDelta}
INIT_METHODS = ("map", "uniform")

#: The default optimizer's schedule: Adam at ``learning_rate`` for the first three quarters of the
#: steps (:func:`held_steps`), then a geometric decay to ``STEP_DECAY`` times it at the last step.
#: At a constant step Adam's
#: iterates keep jittering by about the step (in standardised units) around the optimum, which
#: does not shrink with N while the posterior does: the default fit ended 0.15-0.36 posterior sds
#: from fit_vb's means on Old Faithful (0.6-1.1 nats of ELBO short) and 1.6-2.0 sds on 20,000 rows,
#: each saying converged; with the decay (and :data:`MAX_INIT_SCALE`) 0.03-0.12 (4 seeds in each
#: precision) and 0.08-0.17 (``tests/test_svi.py``).
STEP_DECAY = 1e-3
#: Largest initial scale of the built-in mean-field and multivariate-normal guides (NumPyro's
#: default); below it ``1 / sqrt(rows)``, about the posterior's own scale in standardised units.
#: From NumPyro's 0.1 the scales of a fit on 20,000 rows had not come down by the decay, and the
#: posterior standard deviations came out 1.2-1.5 times fit_vb's.
MAX_INIT_SCALE = 0.1

#: The shortest loss trace (512 KiB in float64): every ``num_steps`` up to it shares one program,
#: and above it every ``num_steps`` up to the next power of two. The losses are the only buffer
#: that grows with the steps, so the bucket is wide.
MIN_TRACE = 2**16

#: The smallest buffer of guide draws and final ELBO particles: every ``num_draws`` up to it shares
#: one program, and above it every ``num_draws`` up to the next power of two.
MIN_DRAWS = 64


class _Config(NamedTuple):
    """Static choices of one SVI program (hashable: the jit cache key)."""

    num_components: int
    covariance_type: str
    guide: Any
    trace_len: int  # the loss trace's buffer (_compile.length_bucket): num_steps itself is traced
    draw_len: int  # the guide draws' and final ELBO particles' buffer: num_draws itself is traced
    subsample_size: int | None
    init_mode: str
    optimizer: Any
    progress_bar: bool
    missing: bool = False  # NaN entries of the data are missing values (the model's MarginalMixture)


class _SortedTraceELBO(Trace_ELBO):
    """NumPyro's ``Trace_ELBO`` with the per-site terms summed in sorted site-name order.

    NumPyro (since it gained ``sum_sites``) sums the sites' ``log p - log q`` terms in the
    iteration order of a Python ``set`` of site names, which depends on the string hash seed
    (``PYTHONHASHSEED``), different in every process. Floating-point addition is not
    associative, so the ELBO *values* (the loss trace, the final ELBO estimate) differed in their
    last bits between two processes with the same seed (the gradients, hence the fit, did not).
    Summing in a fixed order makes them bit-reproducible. NumPyro versions without
    ``sum_sites`` sum in the traces' (deterministic) order and are used unchanged.
    """

    def __init__(self, num_particles: int = 1):
        super().__init__(num_particles=num_particles, sum_sites=False)

    def loss_with_mutable_state(self, rng_key, param_map, model, guide, *args, **kwargs):
        out = super().loss_with_mutable_state(rng_key, param_map, model, guide, *args, **kwargs)
        terms = out["loss"]  # site name -> -(log p - log q), particles already averaged
        loss = functools.reduce(jnp.add, (terms[name] for name in sorted(terms)))
        return {**out, "loss": loss}


def _elbo() -> Trace_ELBO:
    """The loss of every SVI fit: a one-particle ``Trace_ELBO`` summed in a fixed site order."""
    if "sum_sites" in inspect.signature(Trace_ELBO.__init__).parameters:
        return _SortedTraceELBO()
    return Trace_ELBO()  # pragma: no cover - older NumPyro: already summed in trace order


def _make_guide(spec, init_loc_fn, num_rows: int):
    """The guide object for one fit (a fresh one each time: guides keep set-up state). The
    built-in normal guides start at the scale :func:`initial_scale` of ``num_rows``."""
    if isinstance(spec, str):
        if spec == "delta":
            return GUIDES[spec](gmm_model, init_loc_fn=init_loc_fn)
        return GUIDES[spec](gmm_model, init_loc_fn=init_loc_fn, init_scale=initial_scale(num_rows))
    if isinstance(spec, type) and issubclass(spec, AutoGuide):
        return spec(gmm_model, init_loc_fn=init_loc_fn)
    if isinstance(spec, AutoGuide):
        return copy.deepcopy(spec)  # never mutate (set up) the user's object
    return spec


def initial_scale(num_rows: int) -> float:
    """Initial scale of the built-in normal guides on ``num_rows`` rows (the padded bucket or,
    with minibatches, N): ``min(MAX_INIT_SCALE, 1 / sqrt(num_rows))``. Too small a scale grows
    fast (the entropy's gradient does not depend on the data); too large a one shrinks only as the
    noisy likelihood term pulls it."""
    return float(min(MAX_INIT_SCALE, 1.0 / np.sqrt(num_rows)))


def step_schedule(learning_rate, num_steps):
    """The default optimizer's step size at step ``i`` (:data:`STEP_DECAY`): ``learning_rate``
    for the first :func:`held_steps`, then geometrically down to ``STEP_DECAY * learning_rate`` at the
    last step. Both arguments may be traced."""
    learning_rate = jnp.asarray(learning_rate)
    hold = held_steps(num_steps)

    def step_size(i):
        done = jnp.clip((i - hold) / jnp.maximum(num_steps - 1 - hold, 1), 0.0, 1.0)
        return learning_rate * jnp.asarray(STEP_DECAY, learning_rate.dtype) ** done.astype(learning_rate.dtype)

    return step_size


def converged_steps(num_steps: int, decayed: bool) -> int:
    """The steps whose ELBO trace judges convergence: with the default optimizer's decay, those
    at the full step (the first three quarters; the decay then refines, and its ever smaller steps would
    pass for stillness), else all."""
    return max(held_steps(num_steps), 1) if decayed else num_steps


def held_steps(num_steps):
    """The step up to which the default optimizer holds the full step size: ``num_steps`` less a
    quarter of them, and less at least two, so that with two or more steps the last is taken at
    the decayed size (:func:`step_schedule`); ``num_steps`` may be traced. The decay needs few
    steps, the scales of a large data set's posterior many at the full step."""
    if isinstance(num_steps, (int, np.integer)):
        return max(int(num_steps) - max(int(num_steps) // 4, 2), 0)
    return jnp.maximum(num_steps - jnp.maximum(num_steps // 4, 2), 0)


class _StartConfig(NamedTuple):
    """Static choices of the MAP start's program (shared by SVI settings that differ in the rest)."""

    num_components: int
    covariance_type: str
    missing: bool
    reorder: bool = True  # the start to the weight prior's most probable labelling (shared.weights_ordered)


@shared.without_validation
def _start_program(xs, row_mask, prior, key, *, config: _StartConfig):
    """The MAP start (:func:`bayesgmm._numpyro_common.map_start`), a program of its own that
    compiles on a second thread while :func:`_program` is traced and compiled
    (:func:`bayesgmm._compile.compile_together`)."""
    key_start = jax.random.split(key, 4)[0]
    filled = jnp.where(jnp.isnan(xs), 0.0, xs) if config.missing else xs  # the start: missing entries at the median
    return shared.map_start(shared.map_start_noise(key_start, config.num_components, filled.dtype), filled, prior,
                            config.num_components, config.covariance_type, row_weight=row_mask, reorder=config.reorder)


def _start_shapes(xs, row_mask, prior, key, *, config: _StartConfig):
    """:func:`_start_program`'s outputs' shapes and dtypes without tracing it, so that the SVI
    program compiles first."""
    start = shared.placeholder_init(config.num_components, xs.shape[1], config.covariance_type, xs.dtype)
    return jax.tree_util.tree_map(lambda a: jax.ShapeDtypeStruct(a.shape, xs.dtype), start)


@shared.without_validation
def _program(xs, row_mask, prior, key, learning_rate, num_steps, num_draws, start, *, config: _Config):
    """SVI from ``start`` (the MAP start or the user's), guide draws and final ELBO estimate: one
    function (jitted by the caller). ``num_steps`` is traced: the loss trace is a buffer of
    ``config.trace_len`` steps, of which the first ``num_steps`` are written, so that a new
    number of steps in the bucket reuses the program. ``num_draws`` likewise: the guide draws
    fill ``config.draw_len`` (the caller keeps the first ``num_draws``; draw ``i`` comes from
    ``split(key, n)[i]``, the same key for every ``n`` under JAX's partitionable threefry), and
    the final ELBO's particles are ``num_draws`` (traced) of a buffer of that length.

    Without minibatches ``xs`` is padded to its row bucket and ``row_mask`` marks the data rows
    (the padding is masked out of the model); with them ``row_mask`` is None."""
    k, cov_type = config.num_components, config.covariance_type
    _, key_svi, key_draws, key_elbo = jax.random.split(key, 4)
    if config.init_mode == "uniform":
        init_loc_fn = init_to_uniform
    else:
        init_loc_fn = init_to_value(values=shared.site_values(start, k))
    guide = _make_guide(config.guide, init_loc_fn, xs.shape[0])
    optimizer = config.optimizer
    if optimizer is None:
        optimizer = numpyro.optim.Adam(step_schedule(learning_rate, num_steps))
    kwargs = model_kwargs(k, prior, cov_type, subsample_size=config.subsample_size, missing=config.missing,
                          row_mask=row_mask)
    svi = SVI(gmm_model, guide, optimizer, loss=_elbo())
    params, losses = _optimise(svi, key_svi, num_steps, config.trace_len, xs, kwargs, progress_bar=config.progress_bar)

    sites = ["weights", "means", "covariances"]
    draws = Predictive(gmm_model, guide=guide, params=params, num_samples=config.draw_len, return_sites=sites)(
        key_draws, xs, **kwargs
    )
    draws = GMMParams(*(draws[s] for s in sites))
    median = start
    if isinstance(guide, AutoGuide):
        try:
            med = guide.median(params)
        except NotImplementedError:
            med = {}
        if all(s in med for s in sites[1:]):
            median = GMMParams(med["weights"] if k > 1 else jnp.ones(1, xs.dtype), med["means"], med["covariances"])
    # Unbiased ELBO estimate at the final parameters: num_draws independent one-particle estimates.
    # On the CPU one after another: vmap-ed in groups they ran no faster (N = 600 and 5000, 500
    # draws) and took 0.9 s longer to compile, of a fit's 6 s; and jaxlib 0.10 splits a batched
    # LAPACK call of more than LAPACK_SPLIT_FLOPS over XLA's thread pool, where two at once hung on
    # two cores (D = K = 16, 400 rows; _numerics.in_turn). Elsewhere in groups below that size,
    # the keys padded to whole groups. A loop over the traced number of groups; the buffer's
    # entries past num_draws stay NaN (the caller keeps the first num_draws).
    # A point mass's objective is the log joint at it, exact on every row (with minibatches too);
    # other guides' particles each take their own minibatch, whose noise their spread includes
    final_kwargs = dict(kwargs, subsample_size=None) if _is_delta(config.guide) else kwargs
    one_elbo = lambda kk: -_elbo().loss(kk, params, gmm_model, guide, xs, **final_kwargs)  # noqa: E731
    per_draw = k * xs.shape[1] ** 2 * max(xs.shape[0], xs.shape[1])
    group = 1 if jax.default_backend() == "cpu" else int(min(config.draw_len, max(1, LAPACK_SPLIT_FLOPS // per_draw)))
    keys = jax.random.split(key_elbo, config.draw_len)
    keys = jnp.concatenate([keys, keys[: -config.draw_len % group]])

    def elbo_group(g, buffer):
        values = jax.vmap(one_elbo)(jax.lax.dynamic_slice_in_dim(keys, g * group, group))
        return jax.lax.dynamic_update_slice_in_dim(buffer, values, g * group, 0)

    elbo_final = jax.lax.fori_loop(0, (num_draws + group - 1) // group, elbo_group,
                                   jnp.full((keys.shape[0],), jnp.nan, xs.dtype))
    return start, median, draws, -losses, elbo_final


def _optimise(svi, key, num_steps, trace_len: int, xs, kwargs, *, progress_bar: bool):
    """``num_steps`` (traced) of ``SVI.update`` in a loop (what ``SVI.run`` does without a bar),
    each step's loss written to a buffer of ``trace_len``, ticking the host-side progress bar
    from inside when asked. Returns ``(params, losses)``; losses past ``num_steps`` are NaN."""
    state = svi.init(key, xs, **kwargs)
    every = tick_interval(num_steps)

    def step(i, carry):
        state, losses = carry
        state, loss = svi.update(state, xs, **kwargs)
        if progress_bar:
            tick_every("svi", i, every)
        return state, write_step(losses, i, loss)

    losses = jnp.full((trace_len,), jnp.nan, xs.dtype)
    state, losses = jax.lax.fori_loop(0, num_steps, step, (state, losses))
    return svi.get_params(state), losses


#: The MAP start and the SVI program, compiled ahead of time once per data shape, dtype and
#: (hashable) settings.
START_PROGRAM = CompiledProgram(_start_program, static_argnames=("config",), fast_compile=small_rows_once,
                                out_shapes=_start_shapes)
PROGRAM = CompiledProgram(
    _program, static_argnames=("config",), fast_compile=small_rows,  # XLA's default emitters above 511 rows
    memory_advice="Use minibatches (subsample_size=...), or a subsample of the rows.",
)


# ----------------------------------------------------------------------------------------------
# Helpers of the public entry point
# ----------------------------------------------------------------------------------------------
def _is_delta(guide) -> bool:
    """A point-mass guide (``"delta"``, ``AutoDelta`` or a subclass, or an instance of one): its
    objective is the log joint ``log p(x, theta)`` (MAP), not an ELBO (module docstring)."""
    if isinstance(guide, str):
        return guide == "delta"
    return (isinstance(guide, type) and issubclass(guide, AutoDelta)) or isinstance(guide, AutoDelta)


def _check_guide(guide):
    """The guide as :func:`fit_svi` uses it: a name of :data:`GUIDES`, with the built-in classes
    themselves (``AutoNormal``, ``AutoMultivariateNormal``, ``AutoDelta``) mapped to their names
    so that the class and the string are one fit (same program, objective and result)."""
    for name, cls in GUIDES.items():
        if guide is cls:
            return name
    if (isinstance(guide, type) and issubclass(guide, AutoLaplaceApproximation)) or isinstance(guide, AutoLaplaceApproximation):
        # trained as a point mass (its loss is the log joint in unconstrained coordinates, not an
        # ELBO), its draws here would all be the mode, passing for a posterior
        raise ValueError(
            "guide AutoLaplaceApproximation is not supported: it is fitted as a point mass, so its draws would all be "
            "the mode and its loss is no evidence bound. Use guide='delta' for the MAP estimate, 'mvn' for a Gaussian "
            "approximation of the posterior, or bayesgmm.fit_mcmc for the posterior itself."
        )
    if isinstance(guide, str):
        if guide not in GUIDES:
            raise ValueError(
                f"guide must be one of {tuple(GUIDES)}, a numpyro AutoGuide class or instance, or a guide "
                f"function with the model's signature; got {guide!r}."
            )
        return guide
    if isinstance(guide, type) and not issubclass(guide, AutoGuide):  # a class is callable, but builds no guide
        raise ValueError(f"guide must be one of {tuple(GUIDES)}, a numpyro AutoGuide class or instance, or a guide "
                         f"function with the model's signature; got the class {guide.__name__}, not an AutoGuide.")
    if callable(guide):
        return guide
    raise ValueError(f"guide must be a string in {tuple(GUIDES)} or a callable numpyro guide, got {guide!r}.")


def _user_init(init, k, d, covariance_type, shift, sd, dtype) -> GMMParams:
    """The user's start (one GMMParams, original scale) on the standardised scale."""
    if not isinstance(init, GMMParams):
        raise ValueError(f"init must be one of {INIT_METHODS} or a bayesgmm.GMMParams, got {init!r}.")
    std = shared.standard_init(init, k, d, covariance_type, shift, sd)
    return GMMParams(*(np.asarray(a, dtype=dtype) for a in std))


def fit_svi(
    x,
    num_components: int,
    *,
    covariance_type: str = "full",
    prior: Prior | None = None,
    guide="normal",
    num_steps: int = 5000,
    learning_rate: float = 0.01,
    optimizer=None,
    subsample_size: int | None = None,
    num_draws: int = 500,
    init="map",
    seed=0,
    progress_bar: bool = False,
    missing: str = "error",
) -> FitResult:
    """Fit the Bayesian Gaussian mixture by stochastic variational inference (NumPyro SVI).

    Parameters
    ----------
    x : array-like (N, D) or (N,)
        Data; DataFrame column names become feature names.
    num_components : int
        K.
    covariance_type : {"full", "diag", "spherical", "tied"}
        All four structures of :func:`bayesgmm.model.gmm_model` run; ``full`` and ``diag`` are
        the tested ones (``spherical`` and ``tied`` are tested for running and recovering the
        truth only).
    prior : Prior, optional
        Defaults to ``Prior.default(x, K)`` (mclust's weak conjugate prior).
    guide : {"normal", "mvn", "delta"} or numpyro guide
        ``"normal"`` (AutoNormal, mean field), ``"mvn"`` (AutoMultivariateNormal) or ``"delta"``
        (AutoDelta: MAP by gradient). The classes ``AutoNormal``, ``AutoMultivariateNormal``
        and ``AutoDelta`` themselves are the same fits as their names. Also accepted: an
        ``AutoGuide`` subclass (built here as
        ``cls(gmm_model, init_loc_fn=<MAP start>)``, e.g. ``AutoLowRankMultivariateNormal``;
        not ``AutoLaplaceApproximation``, which is trained as a point mass); an
        unused ``AutoGuide`` instance built on :func:`bayesgmm.model.gmm_model` (copied, used as
        is, with its own ``init_loc_fn``); or a guide function with the model's signature
        ``guide(x, *, num_components, prior, covariance_type, subsample_size, ...)`` sampling
        ``weights`` (when K > 1), ``covariances`` and ``means`` on the *standardised* scale.
    num_steps : int
        Optimisation steps. Traced: another number of steps (up to 65536, or up to the same power
        of two above it) reuses the compiled program, and the losses of the first three quarters
        of the steps (at the full step size) are those of a longer run with the same seed.
    learning_rate : float
        Step size of the default optimizer, Adam, for the first three quarters of the steps; it then decays
        geometrically to ``1e-3 * learning_rate`` at the last step (:func:`step_schedule`): at a
        constant step Adam's iterates keep jittering about the optimum by about the step, which
        left the point estimate up to two posterior standard deviations off on 20,000 rows.
    optimizer : numpyro optimizer or optax GradientTransformation, optional
        Replaces the default (``learning_rate`` is then ignored); convergence is then judged on
        all the steps.
    subsample_size : int, optional
        Minibatch size: the model's ``obs`` plate subsamples and rescales the likelihood, so each
        step uses an unbiased estimate of the ELBO's gradient from ``subsample_size`` points.
    num_draws : int
        Draws from the fitted guide (``draws``) and particles of the final ELBO estimate (a
        point-mass guide makes one of each: its draws and particles are all the same).
    init : {"map", "uniform"} or GMMParams
        ``"map"`` (default): the guide is centred at a MAP solution (k-means, then closed-form
        MAP-EM). ``"uniform"``: NumPyro's ``init_to_uniform`` (often a poor local optimum). A
        ``GMMParams`` (original scale) centres the guide there.
    seed : int or jax key
        Same seed, same result, bit for bit.
    progress_bar : bool
        Show a tqdm bar of the optimisation steps, advanced from inside the compiled program
        (a host callback every 1% of the steps): the fit is the same with and without it.
    missing : {"error", "marginalize"}
        ``"marginalize"``: NaN entries are missing at random; SVI fits the observed-data
        likelihood of the model (:class:`bayesgmm.model.MarginalMixture`). The default refuses NaN.

    Returns
    -------
    FitResult
        ``method="svi"``, ``objective="elbo"`` (``"log_posterior"`` for ``guide="delta"`` and any
        ``AutoDelta`` class or instance, see the module docstring). ``trace``: the one-particle
        ELBO estimate of every step, original units. ``draws``: ``num_draws`` guide draws,
        shape (1, S, ...), label-aligned to the guide's median
        (:func:`bayesgmm.labels.align_draws`); ``raw_draws`` before alignment; both None for
        a point-mass guide (``"delta"``), whose result is a point estimate as MAP-EM's (its
        ``num_draws`` identical draws would pass for a posterior without spread, and
        ``az.loo`` would score the training fit as out-of-sample). Point estimate:
        the mean of the aligned draws (the guide's median, i.e. the MAP, for ``"delta"``);
        ``log_likelihood`` the training log-likelihood there. ``converged``: the drift of the
        ELBO over the last 10% of the steps judged, and at least the last 200, and its steady
        climb over the last half of them (a fitted slope)
        (:func:`bayesgmm._numpyro_common.elbo_convergence`), are below 1e-3 nats per observation
        after allowing for its Monte Carlo noise, and that noise (``elbo_noise_per_obs``, twice
        the standard error per observation) is at most 1e-2: a noisier ELBO could hide a climb.
        The steps judged are the first three quarters under the default optimizer (the full step size:
        the decay's ever smaller steps would pass for stillness), all of them under another.
        ``n_iter = num_steps``. ``info``: ``elbo`` (mean of
        the last 10% of ``trace``), ``elbo_final`` and ``elbo_final_se`` (ELBO at the final
        guide parameters from ``num_draws`` particles, each on its own minibatch with
        ``subsample_size``; for ``"delta"`` the log posterior density there, exactly, on every
        row, with ``elbo_final_se`` 0 and ``num_draws`` None), ``elbo_drift_per_obs``,
        ``map_log_likelihood`` (at the MAP start), ``label_switch_fraction`` (the share of draws
        relabelled to match the guide's median; a guide without a median, such as
        ``AutoIAFNormal``, is matched to the MAP start instead, and a flow that learned the
        components in another order shows 1.0 without any switching among its draws), the settings, and
        timings: ``compile_seconds`` (tracing and compiling the program; 0.0 when a program
        compiled for the same shapes and settings was reused), ``run_seconds`` (running it:
        MAP start, optimisation, guide draws and final ELBO, without compilation and without
        the NumPy post-processing) and ``fit_seconds`` (their sum).

    Warns
    -----
    ConvergenceWarning
        When the ELBO still drifts over the last 10% of the steps (at least the last 200).
    DegenerateComponentWarning
        When a component's posterior-mean weight holds less than one observation.

    Raises
    ------
    ValueError
        Invalid input (unknown guide, ``subsample_size`` > N, ``num_steps`` < 1, ...), or a
        non-finite ELBO at the end (lower ``learning_rate``).
    """
    arr, names = check_data(x, missing=missing)
    n, d = arr.shape
    k = check_num_components(num_components, n)
    check_covariance_type(covariance_type)
    guide = _check_guide(guide)
    num_steps = check_int("num_steps", num_steps, 1)
    num_draws = check_int("num_draws", num_draws, 1)
    if subsample_size is not None:
        subsample_size = check_int("subsample_size", subsample_size, 1)
        if subsample_size > n:
            raise ValueError(
                f"subsample_size={subsample_size} exceeds the number of observations N={n}; use "
                "subsample_size <= N, or None for full-batch SVI."
            )
        if subsample_size == n:
            subsample_size = None
    rate = real_scalar(learning_rate)  # 0-d NumPy and JAX arrays too
    if rate is None or not (np.isfinite(rate) and rate > 0):
        raise ValueError(f"learning_rate must be a positive number, got {learning_rate!r}.")
    learning_rate = rate
    if optimizer is not None and not (isinstance(optimizer, numpyro.optim._NumPyroOptim) or hasattr(optimizer, "update")):
        raise ValueError(
            "optimizer must be a numpyro.optim optimizer or an optax GradientTransformation, "
            f"got {optimizer!r}."
        )
    if not isinstance(progress_bar, (bool, np.bool_)):
        raise ValueError(f"progress_bar must be True or False, got {progress_bar!r}.")
    prior = check_prior(prior, d, k, default_from=arr)
    is_delta = _is_delta(guide)
    if is_delta and k > 1 and prior.weight_prior == "dirichlet_process":
        raise ValueError(
            "guide='delta' (MAP) is not defined under weight_prior='dirichlet_process' (the stick-breaking "
            "density of the weights is unbounded as the last components empty); use guide='normal' or 'mvn'."
        )
    if is_delta and k > 1 and np.any(prior.concentration(k) < 1):
        raise ValueError(
            "guide='delta' (MAP) needs weight_concentration >= 1 (the Dirichlet density is unbounded "
            "below 1, so there is no MAP); use guide='normal' or 'mvn', or fit_vb."
        )

    std = shared.standardise(arr, k, covariance_type, prior)
    xs, prior_arrays, shift, sd, dtype = std.xs, std.prior_arrays, std.shift, std.sd, std.dtype
    np_dtype = np.dtype(dtype)
    if isinstance(init, str):
        if init not in INIT_METHODS:
            raise ValueError(f"init must be one of {INIT_METHODS} or a bayesgmm.GMMParams, got {init!r}.")
        init_mode = init
        user_init = shared.placeholder_init(k, d, covariance_type, np_dtype)
    else:
        init_mode = "user"
        user_init = _user_init(init, k, d, covariance_type, shift, sd, np_dtype)
    key = seed_to_key(seed)
    # a point mass: every draw and every ELBO particle is the same, so the program makes one of each
    # num_steps and num_draws are traced (buffers of their buckets): other numbers reuse the program
    num_program_draws = 1 if is_delta else num_draws
    draw_len = 1 if is_delta else length_bucket(num_draws, MIN_DRAWS)
    config = _Config(k, covariance_type, guide, length_bucket(num_steps, MIN_TRACE), draw_len, subsample_size,
                     init_mode, optimizer, bool(progress_bar), bool(np.isnan(arr).any()))
    try:
        hash(config)
        cacheable = True
    except TypeError:  # an unhashable user guide/optimizer: compile for this call only
        cacheable = False
    lr = np.asarray(learning_rate, np_dtype)
    # full batches: padded to the row bucket, so a new N in the bucket reuses the program (a
    # minibatch plate draws its indices from all N rows, so minibatched data are not padded)
    xs, row_mask = shared.pad_rows(xs) if subsample_size is None else (xs, None)
    args = (xs, row_mask, prior_arrays, key, lr, np.int32(num_steps), np.int32(num_program_draws))
    program, static = PROGRAM, {"config": config}
    if not cacheable:  # an unhashable guide or optimizer: compiled for this call only
        program, static = CompiledProgram(functools.partial(_program, config=config), static_argnames=(),
                                          fast_compile=False), {}

    with progress("svi", num_steps, enabled=bool(progress_bar), desc=f"SVI {num_steps} steps"):
        compile_seconds = run_seconds = 0.0
        if init_mode == "user":
            start = user_init
        else:  # the MAP start's program compiles beside the SVI program, then runs
            start_config = _StartConfig(k, covariance_type, config.missing, shared.weights_ordered(prior_arrays.concentration))
            start_args, start_static = (xs, row_mask, prior_arrays, key), {"config": start_config}
            compile_seconds = compile_together(START_PROGRAM, start_args, start_static, program,
                                               lambda outputs: (*args, outputs), static)
            started = START_PROGRAM(*start_args, **start_static)
            start, run_seconds = started.outputs, started.run_seconds
        timed = program(*args, start, **static)
    start_std, median_std, draws_std, elbo_std, elbo_final = timed.outputs
    draws_std = tuple(np.asarray(a)[:num_program_draws] for a in draws_std)
    elbo_final = np.asarray(elbo_final)[:num_program_draws]
    compile_seconds, run_seconds = compile_seconds + timed.compile_seconds, run_seconds + timed.run_seconds

    # ---- back to the original scale (NumPy float64)
    ll_shift, prior_shift = log_jacobians(sd, n, k, covariance_type, observed_entry_counts(arr))
    shift_obj = ll_shift + (prior_shift if is_delta else 0.0)
    trace = np.asarray(elbo_std, np.float64)[:num_steps] + shift_obj
    elbo_final = np.asarray(elbo_final, np.float64) + shift_obj
    if not np.isfinite(trace[-1]) or not all(np.all(np.isfinite(np.asarray(a))) for a in draws_std):
        raise ValueError(
            "SVI diverged: the ELBO or the guide's draws are not finite at the end. Lower "
            "learning_rate, or start from init='map'."
        )
    to_orig = lambda p: params_to_original(GMMParams(*(np.asarray(a) for a in p)), shift, sd, covariance_type)  # noqa: E731
    start = to_orig(start_std)
    median = to_orig(median_std)
    raw = to_orig(draws_std)
    raw_draws = {name: v[None] for name, v in zip(("weights", "means", "covariances"), raw)}
    switched = 0.0
    if is_delta:  # a point mass: no posterior, so no draws (as MAP-EM); az.loo / az.compare then refuse it
        draws = raw_draws = None
    elif k > 1:
        draws, perms = align_draws(raw_draws, median, covariance_type)
        switched = float(np.mean(np.any(perms != np.arange(k), axis=-1)))
    else:
        draws = dict(raw_draws)
    if is_delta:
        point = median
    else:
        point = GMMParams(*(np.mean(draws[name], axis=(0, 1)) for name in ("weights", "means", "covariances")))
    arr64 = arr.astype(np.float64)
    log_lik = _numerics.totals(arr64, *point, covariance_type).log_likelihood
    if is_delta:  # the log posterior density at the MAP, recomputed in float64 (the program's is the compute type's)
        prior_arrays = prior.arrays(k, covariance_type)
        w = _numerics.floored_weights(np.asarray(point.weights, np.float64))
        log_prior = _sticks.draws_log_prior(w[None], point.means[None], point.covariances[None], prior_arrays,
                                            covariance_type)[0]
        elbo_final = np.array([log_lik + log_prior])
    judged = converged_steps(num_steps, optimizer is None)
    converged, drift, noise = shared.elbo_convergence(trace[:judged], n)
    tail = trace[-max(num_steps // 10, 1):]
    degenerate = tuple(int(i) for i in np.flatnonzero(point.weights * n < 1.0))

    if not converged:
        window = min(judged, max(judged // 10, shared.ELBO_DRIFT_MIN_WINDOW))
        phase = (f"the first {judged} of {num_steps} steps (at the full step size, before its decay)" if judged < num_steps
                 else f"{num_steps} steps")
        if not np.isfinite(drift):
            why, advice = f"{num_steps} steps are too few to judge", "Increase num_steps"
        elif drift >= shared.ELBO_DRIFT_TOL:
            span = min(judged, max(judged // 2, 2 * window))
            why = (f"the ELBO drifted by {drift:.2e} nats per observation at the end of {phase} (over "
                   f"the last {window}, or as a steady climb over the last {span}; threshold {shared.ELBO_DRIFT_TOL:g})")
            advice = "Increase num_steps or learning_rate"
        else:
            why = (f"the ELBO's step-to-step noise over the last {window} of {phase} could hide a drift of "
                   f"{noise:.2e} nats per observation (judged up to {shared.ELBO_NOISE_MAX:g})")
            advice = ("Increase num_steps (the window grows with the run), or use a guide nearer the posterior "
                      "(e.g. 'mvn'; on strongly correlated features fit_vb's closed form)")
        warnings.warn(f"SVI may not have converged: {why}. {advice}.", ConvergenceWarning, stacklevel=2)
    if degenerate:
        warnings.warn(
            f"SVI component(s) {list(degenerate)} hold less than one observation's weight; use fewer "
            "components.",
            DegenerateComponentWarning,
            stacklevel=2,
        )
    return FitResult(
        method="svi",
        covariance_type=covariance_type,
        weights=point.weights,
        means=point.means,
        covariances=point.covariances,
        log_likelihood=log_lik,
        converged=converged,
        n_iter=num_steps,
        trace=trace,
        objective="log_posterior" if is_delta else "elbo",
        feature_names=names,
        num_obs=n,
        degenerate_components=degenerate,
        prior=prior,
        draws=draws,
        raw_draws=raw_draws,
        info={
            "seed": int(seed) if isinstance(seed, (int, np.integer)) else None,
            "guide": guide if isinstance(guide, str) else getattr(guide, "__name__", type(guide).__name__),
            "elbo": float(np.mean(tail)),
            "elbo_final": float(np.mean(elbo_final)),
            "elbo_final_se": float(np.std(elbo_final) / np.sqrt(elbo_final.size)),
            "elbo_drift_per_obs": drift,
            "elbo_noise_per_obs": noise,
            "num_steps": num_steps,
            "learning_rate": float(learning_rate) if optimizer is None else None,
            "subsample_size": subsample_size,
            "num_draws": None if is_delta else num_draws,
            "init": init_mode,
            "map_log_likelihood": _numerics.totals(arr64, *start, covariance_type).log_likelihood,
            "label_switch_fraction": switched,
            "compile_seconds": compile_seconds,
            "run_seconds": run_seconds,
            "fit_seconds": compile_seconds + run_seconds,
            "dtype": str(dtype),
        },
    )
