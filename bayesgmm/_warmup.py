"""NUTS warmup adaptation whose number of steps is a traced value.

NumPyro's HMC adapts the step size (dual averaging) and the mass matrix (Welford estimates over
windows that double in length, Stan's schedule) during warmup. It builds the windows in Python
from ``num_warmup`` (:func:`numpyro.infer.hmc_util.build_adaptation_schedule`), so the number of
warmup steps must be a concrete int and every new value compiles a new sampler program. The
rest of its kernel compares the step index with ``num_warmup`` in traced code only.

:func:`adaptation_ends` builds the same windows from a traced count, as the ends of at most
:data:`MAX_WINDOWS` windows; :func:`warmup_adapter` is NumPyro's adapter with that schedule
(its step-size and mass-matrix updates are NumPyro's own functions; a dense mass matrix's
estimate is first shrunk towards its diagonal, :func:`shrunk_to_diagonal`), and
:func:`traced_warmup` lets NumPyro's kernel use it while a sampler program is traced. For a
concrete count the adapter is NumPyro's, so the two agree step for step.
"""

from __future__ import annotations

import contextlib
import threading

import jax
import jax.numpy as jnp

#: Windows of the schedule: the initial buffer, doubling windows from 25 steps (30 of them cover
#: more warmup steps than an int32 counts), and the final buffer.
MAX_WINDOWS = 32


def adaptation_ends(num_steps):
    """The last step of each adaptation window for ``num_steps`` (traced) warmup steps, as
    :func:`numpyro.infer.hmc_util.build_adaptation_schedule` lays them out: ``(ends, count)``,
    ``ends`` (:data:`MAX_WINDOWS`,) int with -1 after the ``count`` windows.

    Stan's layout: fewer than 20 steps are one window; otherwise a start buffer of 75 steps, an
    end buffer of 50 and slow windows from 25 steps, each twice the last, the last one stretched
    to the end buffer (with fewer than 150 steps: buffers of 15% and 10% of the steps, floored,
    and one window between them).
    """
    n = jnp.asarray(num_steps, jnp.int32)
    shrunk = n < 75 + 50 + 25
    start_buffer = jnp.where(shrunk, (15 * n) // 100, 75)  # int(0.15 n), exactly, for n < 150
    end_buffer = jnp.where(shrunk, n // 10, 50)
    end_start = n - end_buffer
    ends = jnp.full((MAX_WINDOWS,), -1, jnp.int32).at[0].set(start_buffer - 1)

    def slow_window(_, carry):
        ends, count, start, size = carry
        more = start < end_start
        doubles = 3 * size <= end_start - start
        stop = start + jnp.where(doubles, size, end_start - start)
        ends = jnp.where(more, ends.at[count].set(stop - 1), ends)
        return (ends, count + more, jnp.where(more, stop, start),
                jnp.where(more & doubles, 2 * size, size))

    first_size = jnp.where(shrunk, n - start_buffer - end_buffer, 25)
    ends, count, _, _ = jax.lax.fori_loop(0, MAX_WINDOWS - 2, slow_window, (ends, jnp.int32(1), start_buffer, first_size))
    ends, count = ends.at[count].set(n - 1), count + 1
    one_window = jnp.full((MAX_WINDOWS,), -1, jnp.int32).at[0].set(n - 1)
    return jnp.where(n < 20, one_window, ends), jnp.where(n < 20, 1, count)


def warmup_adapter(num_adapt_steps, find_reasonable_step_size=None, adapt_step_size=True, adapt_mass_matrix=True,
                   dense_mass=False, target_accept_prob=0.8, regularize_mass_matrix=True):
    """:func:`numpyro.infer.hmc_util.warmup_adapter` for a traced ``num_adapt_steps`` (NumPyro's
    own for a concrete one): ``(init_fn, update_fn)``, the same updates with the windows of
    :func:`adaptation_ends`."""
    from numpyro.infer import hmc_util

    options = dict(find_reasonable_step_size=find_reasonable_step_size, adapt_step_size=adapt_step_size,
                   adapt_mass_matrix=adapt_mass_matrix, dense_mass=dense_mass,
                   target_accept_prob=target_accept_prob, regularize_mass_matrix=regularize_mass_matrix)
    if not isinstance(num_adapt_steps, jax.core.Tracer):
        return hmc_util.warmup_adapter(num_adapt_steps, **options)
    # the initial state does not depend on the schedule: NumPyro's, from any concrete count
    init_fn, _ = hmc_util.warmup_adapter(20, **options)
    find_step_size = find_reasonable_step_size or (lambda step_size, *_: step_size)
    ss_init, ss_update = hmc_util.dual_averaging()
    mm_init, mm_update, mm_final = hmc_util.welford_covariance(diagonal=not dense_mass)
    ends, num_windows = adaptation_ends(num_adapt_steps)

    def at_window_end(z_info, rng_key_ss, state):  # a slow window's end: new mass matrix, step size found again
        step_size, inverse_mass_matrix, mass_matrix_sqrt, mass_matrix_sqrt_inv, ss_state, mm_state, *rest = state
        if adapt_mass_matrix:
            if dense_mass:
                mm_state = shrunk_to_diagonal(mm_state)
            inverse_mass_matrix, mass_matrix_sqrt, mass_matrix_sqrt_inv = mm_final(mm_state, regularize=regularize_mass_matrix)
            size = ({k: v.shape for k, v in inverse_mass_matrix.items()} if isinstance(inverse_mass_matrix, dict)
                    else inverse_mass_matrix.shape[-1])
            mm_state = mm_init(size)
        if adapt_step_size:
            step_size = find_step_size(step_size, inverse_mass_matrix, z_info, rng_key_ss)
            ss_state = ss_init(jnp.log(10) + jnp.log(step_size))
        return hmc_util.HMCAdaptState(step_size, inverse_mass_matrix, mass_matrix_sqrt, mass_matrix_sqrt_inv,
                                      ss_state, mm_state, *rest)

    def update_fn(t, accept_prob, z_info, state):
        step_size, inverse_mass_matrix, mass_matrix_sqrt, mass_matrix_sqrt_inv, ss_state, mm_state, window_idx, rng_key = state
        rng_key_ss = None
        if rng_key is not None:
            rng_key, rng_key_ss = jax.random.split(rng_key)
        if adapt_step_size:  # dual averaging; the last warmup step takes the averaged step size
            ss_state = ss_update(target_accept_prob - accept_prob, ss_state)
            log_step_size, log_step_size_avg, *_ = ss_state
            step_size = jnp.where(t == num_adapt_steps - 1, jnp.exp(log_step_size_avg), jnp.exp(log_step_size))
            finfo = jnp.finfo(jnp.result_type(step_size))
            step_size = jnp.clip(step_size, finfo.tiny, finfo.max)
        middle = (0 < window_idx) & (window_idx < num_windows - 1)
        if adapt_mass_matrix:
            mm_state = jax.lax.cond(middle, lambda s: mm_update(z_info[0], s), lambda s: s, mm_state)
        window_end = t == ends[window_idx]
        window_idx = jnp.where(window_end, window_idx + 1, window_idx)
        state = hmc_util.HMCAdaptState(step_size, inverse_mass_matrix, mass_matrix_sqrt, mass_matrix_sqrt_inv,
                                       ss_state, mm_state, window_idx, rng_key)
        return jax.lax.cond(window_end & middle, lambda s: at_window_end(z_info, rng_key_ss, s), lambda s: s, state)

    return init_fn, update_fn


def shrunk_to_diagonal(state):
    """A dense Welford state ``(mean, m2, n)`` whose scatter matrix ``m2`` (p x p) is shrunk
    towards its diagonal by ``p / (n + p)``: a window of few draws (``n`` not much above ``p``)
    estimates p (p + 1) / 2 covariances, and the raw estimate is nearly singular (Stan's
    regularisation, applied after, only adds 1e-3 5 / (n + 5) to the diagonal). The diagonal is
    kept: with many draws the estimate is the sample covariance, with few the diagonal one."""
    mean, m2, n = state
    p = m2.shape[-1]
    weight = (n / (n + p)).astype(m2.dtype)
    return mean, weight * m2 + (1 - weight) * jnp.diag(jnp.diagonal(m2)), n


_PATCH_LOCK = threading.RLock()


@contextlib.contextmanager
def traced_warmup():
    """NumPyro's HMC kernels built inside the block take :func:`warmup_adapter`, so that their
    ``num_warmup`` may be traced (for a concrete count it is NumPyro's adapter, so other code
    that builds a kernel meanwhile is unaffected)."""
    from numpyro.infer import hmc

    with _PATCH_LOCK:
        original = hmc.warmup_adapter
        hmc.warmup_adapter = warmup_adapter
        try:
            yield
        finally:
            hmc.warmup_adapter = original
