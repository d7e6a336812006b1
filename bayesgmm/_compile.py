"""Ahead-of-time compiled programs, cached per abstract signature, with compile and run times.

The engines compile one program per data shape and static settings. Calling a ``jax.jit``
function hides how long compilation took; users comparing engines want fit times with and
without it. :class:`CompiledProgram` lowers and compiles explicitly the first time a signature
is seen (``jit(f).lower(...).compile()``), keeps the executable, and reports for every call the
seconds spent compiling (0.0 when reused) and running.

The cache key is the static arguments plus, for every array leaf of the traced arguments, its
shape, dtype and sharding (an executable is specialised to all three), and the tree structure
(``None`` leaves select different programs).
"""

from __future__ import annotations

import collections
import time
import weakref
from typing import Any, Callable, NamedTuple

import jax
import numpy as np


class Timed(NamedTuple):
    """Outputs of one call of a compiled program and where the time went."""

    outputs: Any
    compile_seconds: float
    run_seconds: float


def _leaf_signature(leaf):
    if isinstance(leaf, jax.Array):
        sharding = leaf.sharding if getattr(leaf, "committed", False) else None
        return (leaf.shape, str(leaf.dtype), sharding)
    arr = np.asarray(leaf)
    return (arr.shape, str(arr.dtype), None)


#: Every compiled program of the package, so that :func:`clear_caches` can empty them all.
_PROGRAMS: list = []


class CompiledProgram:
    """A jitted function compiled ahead of time once per abstract signature.

    The executables are kept in a least-recently-used cache of ``max_entries`` signatures: a
    compiled XLA:CPU program holds hundreds of memory mappings of generated code, and a process
    that keeps thousands of them reaches the kernel's limit (``vm.max_map_count``, 65530 by
    default) and aborts inside the compiler.

    Parameters
    ----------
    fn : callable
        The pure function; its keyword-only static arguments are named in ``static_argnames``.
    static_argnames : tuple of str
    max_entries : int
        Executables kept (least recently used dropped first).
    """

    def __init__(self, fn: Callable, static_argnames: tuple[str, ...], *, max_entries: int = 16):
        self._jitted = jax.jit(fn, static_argnames=static_argnames)
        self._static_argnames = tuple(static_argnames)
        self._cache: collections.OrderedDict = collections.OrderedDict()
        self._max_entries = int(max_entries)
        _PROGRAMS.append(weakref.ref(self))

    def __call__(self, *args, **static) -> Timed:
        """Run on ``args`` (arrays or pytrees of arrays; no Python scalars), compiling if needed."""
        leaves, treedef = jax.tree_util.tree_flatten(args)
        key = (tuple(sorted(static.items())), treedef, tuple(_leaf_signature(a) for a in leaves))
        compile_seconds = 0.0
        exe = self._cache.get(key)
        if exe is None:
            start = time.perf_counter()
            exe = self._jitted.lower(*args, **static).compile()
            compile_seconds = time.perf_counter() - start
            self._cache[key] = exe
            while len(self._cache) > self._max_entries:
                self._cache.popitem(last=False)
        else:
            self._cache.move_to_end(key)
        start = time.perf_counter()
        outputs = jax.block_until_ready(exe(*args))
        return Timed(outputs, compile_seconds, time.perf_counter() - start)

    def jitted(self, *args, **static):
        """Call through ``jax.jit`` (for use inside other traced code, e.g. under ``vmap``)."""
        return self._jitted(*args, **static)

    def clear(self) -> None:
        """Drop every compiled executable of this program."""
        self._cache.clear()


def clear_caches() -> None:
    """Drop every compiled program: bayesgmm's ahead-of-time caches and JAX's own
    (``jax.clear_caches``). The next fit of each shape compiles again. Long-running processes
    that fit very many different shapes can call it to release the compiled code."""
    for ref in list(_PROGRAMS):
        program = ref()
        if program is None:
            _PROGRAMS.remove(ref)
        else:
            program.clear()
    jax.clear_caches()


def enable_compilation_cache(path, *, min_compile_time_secs: float = 1.0) -> None:
    """Opt in to JAX's persistent compilation cache in ``path`` (off unless you call this).

    With the cache, a fresh process reuses programs compiled by an earlier process for the same
    shapes and settings instead of compiling them again (the EM, VB, SVI and NUTS programs of
    bayesgmm all qualify). This changes JAX's global configuration for the whole process, which
    is why the library never does it by itself; the ``bayesgmm`` command does it when given
    ``--compile-cache DIR`` or ``BAYESGMM_COMPILE_CACHE``.

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


# ----------------------------------------------------------------------------------------------
# Progress bars for compiled loops
# ----------------------------------------------------------------------------------------------
#: The bars of the runs in progress, by name. A compiled program is cached and reused, so its
#: host callback cannot capture a bar object; it looks the bar up here at run time instead.
_BARS: dict = {}


def tick_interval(total: int) -> int:
    """Steps between two ticks: about 100 updates of the bar per run."""
    return max(int(total) // 100, 1)


def tick_every(name: str, step, every: int) -> None:
    """Inside traced code: advance the progress bar ``name`` by ``every`` when ``step + 1`` is a
    multiple of ``every`` (a ``jax.debug.callback``; values computed are unchanged).

    ``step`` must not depend on batched (``vmap``-ped) values, so that the condition stays a
    real branch and the bar moves once per loop step, not once per chain.
    """

    def advance(_):
        bar = _BARS.get(name)
        if bar is not None:
            bar.advance(every)

    jax.lax.cond((step + 1) % every == 0, lambda: jax.debug.callback(advance, step), lambda: None)


class progress:
    """Context manager showing a tqdm bar that compiled loops advance with :func:`tick_every`.

    The bar appears at the first tick, so the time spent compiling is not counted as steps.

    Parameters
    ----------
    name : str
        The name the traced code ticks.
    total : int
        Expected number of steps.
    enabled : bool
        False: a no-op.
    desc : str
    """

    def __init__(self, name: str, total: int, *, enabled: bool, desc: str):
        self.name, self.total, self.enabled, self.desc = name, total, enabled, desc
        self._bar = None

    def advance(self, steps: int) -> None:
        if self._bar is None:
            from tqdm.auto import tqdm

            self._bar = tqdm(total=self.total, desc=self.desc, unit="step")
        self._bar.update(steps)

    def __enter__(self):
        if self.enabled:
            _BARS[self.name] = self
        return self

    def __exit__(self, *exc):
        _BARS.pop(self.name, None)
        if self._bar is not None:
            if exc[0] is None:
                self._bar.update(self.total - self._bar.n)
            self._bar.close()
        return False
