"""Ahead-of-time compiled programs, cached per abstract signature, with compile and run times.

The engines compile one program per data shape and static settings. Calling a ``jax.jit``
function hides how long compilation took; users comparing engines want fit times with and
without it. :class:`CompiledProgram` lowers and compiles explicitly the first time a signature
is seen (``jit(f).lower(...).compile()``), keeps the executable, and reports for every call the
seconds spent compiling (0.0 when reused) and running.

The cache key is the static arguments plus, for every array leaf of the traced arguments, its
shape, dtype and sharding (an executable is specialised to all three), and the tree structure
(``None`` leaves select different programs).

Compile time: on the CPU, XLA's newer fusion emitters generate code that is no faster for the
EM and VB programs but takes 35-45% longer to compile than its classic ones. Programs made with
``fast_compile=True`` (EM, VB, k-means, streaming, the helpers) ask for the classic emitters;
the samplers (NUTS, SVI, Gibbs), whose draws run 8-25% faster with the new ones, keep XLA's
default, except NUTS and full-batch SVI on at most :data:`SAMPLER_FAST_COMPILE_ROWS` (padded)
rows, where the compile time saved (about 4 s of a first NUTS fit on Old Faithful) outweighs the
slower steps (0.2 s of its 4 chains x 2000 draws). The programs that run once per fit, the
samplers' and SVI's starts (the MAP start, the chains' first potential and gradient), compile
with ``fast_compile=FASTEST`` on data of up to :data:`SAMPLER_START_FASTEST_ROWS` (padded) rows
(:func:`small_rows_once`): LLVM does not optimise their code either, which halves their compile
time (1.9 s to 0.85 s on Old Faithful) for a run of milliseconds, and on 2000-8000 rows (D = 3,
K = 4) saves 1.5-2.0 s of a first NUTS fit, 0.9-1.5 s of a Gibbs fit and 0.7-0.9 s of an SVI
fit for at most 0.1 s more run time. ``$BAYESGMM_COMPILE_MODE`` overrides the choice: ``fast-compile`` for every program
(short scripts; the starts keep ``FASTEST``), ``fastest-compile`` as that with ``FASTEST`` for
the programs that ask for fast compiles outright (EM, VB, k-means, streaming, the helpers; on
small data, as in the test suite, they compile in about two thirds of the time and run several
times slower), ``fast-run`` for none, ``auto`` (the default) as above. Whatever the mode, a program may add
XLA options of its own per signature on the CPU (``cpu_options``): EM's and VB's leave
YNNPACK's kernels out where XLA's own code runs their products faster
(:func:`bayesgmm._stats.library_kernels`).
"""

from __future__ import annotations

import collections
import concurrent.futures
import contextlib
import functools
import importlib.util
import os
import pathlib
import threading
import time
import weakref
from typing import Any, Callable, NamedTuple

import jax
import numpy as np

from . import _program_store


class InsufficientMemoryError(ValueError, MemoryError):
    """A compiled program needs more memory than the device has free (checked before it runs,
    from XLA's own account of the program's buffers). The message says what to do instead."""


#: Programs smaller than this are never refused: a machine without this much free memory is
#: short of it for reasons the fit cannot explain (and such a shortage is often momentary).
MEMORY_CHECK_MIN = 2**28


def memory_size(num_bytes: float) -> str:
    """``num_bytes`` as people read it: GiB with one decimal from 1 GiB up, MiB below (a refusal
    on a small machine said "needs about 0.0 GiB ... only 0.0 GiB are free")."""
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if round(num_bytes / size, 1) >= 1:  # after rounding: 2**20 - 1 bytes is 1.0 MiB, not 1024.0 KiB
            return f"{num_bytes / size:.1f} {unit}"
    return f"{int(num_bytes)} bytes"


def available_memory(device) -> int | None:
    """Bytes free for a program on ``device``: the accelerator's limit less what is in use, or on
    the CPU the host's available memory (``MemAvailable``); None when unknown."""
    stats = device.memory_stats() if hasattr(device, "memory_stats") else None
    if stats and "bytes_limit" in stats:
        return int(stats["bytes_limit"]) - int(stats.get("bytes_in_use", 0))
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def program_memory(executable) -> int | None:
    """Bytes a compiled program holds while it runs: its arguments, outputs and temporaries, as
    XLA's buffer assignment counts them (None where the backend does not say)."""
    try:
        stats = executable.memory_analysis()
    except Exception:  # noqa: BLE001 (backends without the analysis)
        return None
    if stats is None:
        return None
    return int(stats.argument_size_in_bytes + stats.output_size_in_bytes + stats.temp_size_in_bytes
               - stats.alias_size_in_bytes)


class Timed(NamedTuple):
    """Outputs of one call of a compiled program and where the time went."""

    outputs: Any
    compile_seconds: float
    run_seconds: float


def _leaf_signature(leaf):
    if isinstance(leaf, jax.ShapeDtypeStruct):  # an output of another program, not computed yet
        return (leaf.shape, str(leaf.dtype), None)
    if isinstance(leaf, jax.Array):
        sharding = leaf.sharding if getattr(leaf, "committed", False) else None
        return (leaf.shape, str(leaf.dtype), sharding)
    arr = np.asarray(leaf)
    return (arr.shape, str(arr.dtype), None)


def _shapes_only(out_info):
    """Outputs' shapes and dtypes without the devices they were placed on: a compiled program's
    ``out_info`` names its device, and a program compiled for it would be tied to that device
    (NUTS's chains spread over several devices take the starts' program's outputs)."""
    return jax.tree_util.tree_map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, weak_type=a.weak_type), out_info)


#: XLA options of a ``fast_compile`` program on the CPU: the classic elemental emitters.
FAST_COMPILE_OPTIONS = {"xla_cpu_use_fusion_emitters": False}
#: ``fast_compile`` value of a program that runs once per fit: :data:`FASTEST_COMPILE_OPTIONS`.
FASTEST = 2
#: XLA options of a ``fast_compile=FASTEST`` program on the CPU: also no LLVM optimisation (code
#: about 4.5 times slower, compiled in about half the time).
FASTEST_COMPILE_OPTIONS = {**FAST_COMPILE_OPTIONS, "xla_backend_optimization_level": 0}
#: NUTS and full-batch SVI compile fast on data of at most this many (padded) rows.
SAMPLER_FAST_COMPILE_ROWS = 511
#: The samplers' and SVI's starts compile unoptimised (``FASTEST``) on at most this many (padded)
#: rows: on 8000 rows their run took at most 0.1 s longer, for 0.7-2.0 s less compile time.
SAMPLER_START_FASTEST_ROWS = 8192


def small_rows(xs, *args) -> bool:
    """``fast_compile`` of the samplers: the data ``xs`` (the first argument) has at most
    :data:`SAMPLER_FAST_COMPILE_ROWS` rows."""
    return xs.shape[-2] <= SAMPLER_FAST_COMPILE_ROWS


def small_rows_once(xs, *args) -> bool | int:
    """``fast_compile`` of the samplers' starts (programs that run once per fit):
    :data:`FASTEST` on data of at most :data:`SAMPLER_START_FASTEST_ROWS` rows, where their run
    takes at most about 0.1 s even unoptimised; XLA's defaults above."""
    return FASTEST if xs.shape[-2] <= SAMPLER_START_FASTEST_ROWS else False


#: Environment variable choosing which programs compile with :data:`FAST_COMPILE_OPTIONS`.
COMPILE_MODE_ENV = "BAYESGMM_COMPILE_MODE"
COMPILE_MODES = ("auto", "fast-compile", "fastest-compile", "fast-run")
#: Set when this JAX's XLA does not know the options (they are then never passed again).
_OPTIONS_UNSUPPORTED = False
#: Set when this JAX's XLA does not know a program's own ``cpu_options`` (experimental XLA flags
#: that a later jaxlib may rename): they are then left out, the compile mode's options kept.
_CPU_OPTIONS_UNSUPPORTED = False


def compile_mode() -> str:
    """``$BAYESGMM_COMPILE_MODE`` (one of :data:`COMPILE_MODES`; ``auto`` when unset)."""
    mode = os.environ.get(COMPILE_MODE_ENV, "auto").strip().lower() or "auto"
    if mode not in COMPILE_MODES:
        raise ValueError(f"{COMPILE_MODE_ENV}={mode!r} is not a compile mode; use one of {', '.join(COMPILE_MODES)}.")
    return mode


def compiler_options(fast_compile: bool | int, cpu_options: dict | None = None) -> dict | None:
    """The XLA compile options for a program (None: XLA's defaults); see the module docstring.
    ``fast_compile``: False, True or :data:`FASTEST`. ``cpu_options``: the program's own options
    for this signature (a :class:`CompiledProgram`'s ``cpu_options``), added whatever the compile
    mode, unless this XLA refused them once (:data:`_CPU_OPTIONS_UNSUPPORTED`)."""
    mode = compile_mode()
    wanted = mode in ("fast-compile", "fastest-compile") or (mode == "auto" and fast_compile)
    if _OPTIONS_UNSUPPORTED or jax.default_backend() != "cpu":
        return None
    options = dict(FASTEST_COMPILE_OPTIONS if fast_compile == FASTEST else FAST_COMPILE_OPTIONS) if wanted else {}
    if cpu_options and not _CPU_OPTIONS_UNSUPPORTED:
        options.update(cpu_options)
    return options or None


def resolve_fast_compile(setting, *args) -> bool | int:
    """A program's ``fast_compile`` for the arguments ``args``: a callable's answer, else the
    setting; under ``$BAYESGMM_COMPILE_MODE=fastest-compile`` the setting True (EM, VB, k-means,
    streaming, the helpers; not the samplers, whose draws must not depend on how chains are
    grouped, which at the lowest optimisation they do) becomes :data:`FASTEST`."""
    if callable(setting):
        return setting(*args)
    if setting is True and compile_mode() == "fastest-compile":
        return FASTEST
    return setting


#: The precision of float32 matrix products in every program of the package, unless the user
#: chose one (``jax_default_matmul_precision``, globally or in a ``jax.default_matmul_precision``
#: block). JAX's own default lets a GPU round float32 inputs of a product to TensorFloat-32 (10
#: bits of mantissa, as on NVIDIA GPUs since Ampere) and a TPU to bfloat16; EM's expanded
#: quadratic forms and statistics lose digits that float32 keeps (its precision guard assumes
#: float32's rounding). On the CPU the setting changes nothing.
FULL_PRECISION = "highest"


def matmul_precision() -> str:
    """The float32 product precision programs are traced with now: the user's
    ``jax_default_matmul_precision`` if set, else :data:`FULL_PRECISION`."""
    return jax.config.jax_default_matmul_precision or FULL_PRECISION


def traced_precisely():
    """The context every program of the package is traced in (:func:`matmul_precision`)."""
    return jax.default_matmul_precision(matmul_precision())


#: Held while a program of the package is traced (one thread at a time, re-entrant). NumPyro's
#: effect handlers are one process-wide stack: two NUTS fits compiling on a user's two threads at
#: once recorded each other's sample sites and raised "all sites must have unique names" (the
#: experiments' tasks on a thread pool already run one at a time: ``_executors``). Compiling and
#: running stay concurrent.
TRACE_LOCK = threading.RLock()

#: Held while a compiled program of the package runs (re-entrant; :func:`running`). jaxlib splits
#: a large batched LAPACK call (a Cholesky factor, a triangular solve) over XLA's thread pool and
#: waits there for its pieces: two programs running such calls at once, on a user's two threads,
#: each waited for pieces queued behind the other's and held both threads of a two-core machine
#: forever (fit_em beside fit_vb with missing values, two fit_gibbs). Programs run one at a time,
#: each on every core (XLA's own threads); a sampler's runs of chains on threads of its own, sized
#: to stay below the split (:func:`bayesgmm._chains.concurrent_runs`), run under the lock their
#: caller holds (:func:`run_as_group`).
RUN_LOCK = threading.RLock()
_GROUP = threading.local()
_HELD = threading.local()
#: The thread holding :data:`RUN_LOCK` through :func:`running` (None when none): the fit whose
#: programs run now, whose progress bar their ticks advance (:func:`tick_every`).
_OWNER: int | None = None


@contextlib.contextmanager
def running():
    """Hold :data:`RUN_LOCK` while a program runs (not in a thread of a group its holder runs).

    A scope of several programs (a streaming pass) may hold it around them all: their calls
    inside it then only dispatch (:func:`jit`), and the scope waits for their outputs before it
    ends."""
    if getattr(_GROUP, "member", False):
        yield
        return
    global _OWNER
    with RUN_LOCK:
        _HELD.depth = getattr(_HELD, "depth", 0) + 1
        _OWNER = threading.get_ident()
        try:
            yield
        finally:
            _HELD.depth -= 1
            if _HELD.depth == 0:
                _OWNER = None


def holding() -> bool:
    """Whether this thread runs programs under :data:`RUN_LOCK` already (inside :func:`running`,
    or a thread of a group its holder runs)."""
    return getattr(_HELD, "depth", 0) > 0 or getattr(_GROUP, "member", False)


def run_as_group(fn: Callable) -> Callable:
    """``fn`` for a thread of a group of runs whose caller holds :data:`RUN_LOCK`: its programs run
    without taking the lock (the group's sizes keep their LAPACK calls below jaxlib's split)."""

    @functools.wraps(fn)
    def member(*args, **kwargs):
        _GROUP.member = True
        try:
            return fn(*args, **kwargs)
        finally:
            _GROUP.member = False

    return member


def _unknown_option(err: Exception) -> bool:
    return "No such compile option" in str(err)


def compile_lowered(lowered, fast_compile: bool | int, cpu_options: dict | None = None):
    """``lowered.compile()`` with :func:`compiler_options`; an XLA without them compiles as usual
    (without the program's ``cpu_options`` first, then without any)."""
    global _OPTIONS_UNSUPPORTED, _CPU_OPTIONS_UNSUPPORTED
    options = compiler_options(fast_compile, cpu_options)
    if options:
        try:
            return lowered.compile(compiler_options=options)
        except jax.errors.JaxRuntimeError as err:
            if not _unknown_option(err):
                raise
            if cpu_options and not _CPU_OPTIONS_UNSUPPORTED:
                _CPU_OPTIONS_UNSUPPORTED = True
                return compile_lowered(lowered, fast_compile)
            _OPTIONS_UNSUPPORTED = True
    return lowered.compile()


def jit(fn: Callable | None = None, *, fast_compile: bool = True, **jit_kwargs):
    """``jax.jit`` whose compilations use :func:`compiler_options` (usable as a decorator, with or
    without keyword arguments). The options are read at the first call; a call inside another
    program (traced arguments) is the plain ``jax.jit`` function, inlined there.

    A call runs under :data:`RUN_LOCK` and returns when its outputs are ready (two programs at
    once may hang in jaxlib's split LAPACK calls: two streaming fits with missing values on two
    threads did), or inside a scope that holds the lock only dispatches (:func:`running`)."""
    if fn is None:
        return lambda f: jit(f, fast_compile=fast_compile, **jit_kwargs)
    plain = jax.jit(fn, **jit_kwargs)
    compiled: dict = {}

    def jitted():
        if "fn" not in compiled:
            options = compiler_options(resolve_fast_compile(fast_compile))
            compiled["fn"] = jax.jit(fn, compiler_options=options, **jit_kwargs) if options else plain
        return compiled["fn"]

    @functools.wraps(fn)
    def call(*args, **kwargs):
        if any(isinstance(leaf, jax.core.Tracer) for leaf in jax.tree_util.tree_leaves((args, kwargs))):
            return plain(*args, **kwargs)  # inside another program: inlined there (options only at the top)
        if holding():  # inside a scope that holds RUN_LOCK: dispatched, the scope waits for the outputs
            return dispatch(*args, **kwargs)
        with running():  # one program at a time (RUN_LOCK): run to the end before the lock goes
            return jax.block_until_ready(dispatch(*args, **kwargs))

    def dispatch(*args, **kwargs):
        global _OPTIONS_UNSUPPORTED
        with TRACE_LOCK, traced_precisely():  # a first call traces (NumPyro's model: one thread at a time)
            try:
                return jitted()(*args, **kwargs)
            except jax.errors.JaxRuntimeError as err:
                if compiled["fn"] is plain or not _unknown_option(err):
                    raise
                _OPTIONS_UNSUPPORTED = True
                compiled["fn"] = plain
                return plain(*args, **kwargs)

    def lower(*args, **kwargs):
        with TRACE_LOCK, traced_precisely():
            return jitted().lower(*args, **kwargs)

    call.lower = lower
    return call


#: The entry of a program's signature (:meth:`CompiledProgram._key`) naming its product precision.
_PRECISION_KEY = "matmul precision"

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
    fast_compile : bool, FASTEST or callable
        Compile with :func:`compiler_options` (see the module docstring): for programs whose
        run time does not suffer from it (:data:`FASTEST`: that run once per fit, on small
        data). A callable decides per signature from the traced arguments (e.g. by the number
        of rows).
    memory_advice : str or None
        With it, every call first compares the program's memory (:func:`program_memory`) with
        what the device has free (:func:`available_memory`) and, when it does not fit, raises
        :class:`InsufficientMemoryError` ending with this advice, instead of letting XLA die with
        ``RESOURCE_EXHAUSTED`` (or the host swap) mid-run.
    out_shapes : callable or None
        ``out_shapes(*args, **static)``: the outputs' ``jax.ShapeDtypeStruct`` found without
        tracing ``fn`` (which may take half a second), so that a program taking them can be
        traced and compiled first (:func:`compile_together`).
    cpu_options : callable or None
        ``cpu_options(*args, **static)``: XLA options of this signature on the CPU beyond the
        compile mode's (a dict; e.g. :func:`bayesgmm._stats.library_kernels`), whatever the mode.
    """

    def __init__(self, fn: Callable, static_argnames: tuple[str, ...], *, max_entries: int = 16,
                 fast_compile: bool | int | Callable[..., bool | int] = True, memory_advice: str | None = None,
                 out_shapes: Callable | None = None, cpu_options: Callable[..., dict] | None = None):
        self._jitted = jax.jit(fn, static_argnames=static_argnames)
        self.out_shapes = out_shapes
        self._stored_name = _program_store.storable(fn)
        self._fast_compile = fast_compile
        self._cpu_options = cpu_options
        self._memory_advice = memory_advice
        self._memory: dict = {}
        self._static_argnames = tuple(static_argnames)
        self._cache: collections.OrderedDict = collections.OrderedDict()
        self._max_entries = int(max_entries)
        _PROGRAMS.append(weakref.ref(self))

    def compile(self, *args, **static) -> float:
        """Compile for ``args`` (arrays, or ``jax.ShapeDtypeStruct`` for inputs not computed yet)
        without running (so that several threads can then run the program at once); returns the
        seconds it took, 0.0 when already compiled."""
        return self._executable(args, static)[2]

    def compiled_out_shapes(self, *args, **static):
        """The outputs' shapes and dtypes of the executable compiled for ``args`` (compiling it if needed)."""
        return _shapes_only(self._executable(args, static)[1].out_info)

    def eval_out_shapes(self, *args, **static):
        """The outputs' shapes and dtypes from a trace of the program (no compilation)."""
        with TRACE_LOCK, traced_precisely():
            return _shapes_only(self._jitted.eval_shape(*args, **static))

    def is_compiled(self, *args, **static) -> bool:
        """Whether the executable for ``args`` is at hand: compiled in this process, or loaded
        now from :mod:`bayesgmm._program_store` (and kept)."""
        key = self._key(args, static)
        if key in self._cache:
            return True
        exe = self._from_store(key, args, static)[-1]
        if exe is not None:
            self._keep(key, exe)
        return exe is not None

    def compile_in_background(self, executor: concurrent.futures.Executor, *args, **static):
        """Trace and lower for ``args`` on this thread, and leave XLA's compilation to ``executor``.

        XLA compiles outside Python's lock, so this thread can meanwhile trace and compile
        another program (:func:`compile_together`).

        Returns
        -------
        out_info : pytree of jax.ShapeDtypeStruct
            The program's outputs (arguments of a program to compile next).
        compiled : concurrent.futures.Future
            Resolves to the seconds of tracing, lowering and compiling (0.0 when already compiled).
        """
        key = self._key(args, static)
        start = time.perf_counter()
        seconds = 0.0
        exe = self._cache.get(key)
        if exe is not None:
            self._cache.move_to_end(key)
        else:
            fast, own, stored, exe = self._from_store(key, args, static)
            if exe is None:
                with TRACE_LOCK, traced_precisely():
                    traced = self._jitted.trace(*args, **static)
                    lowered = traced.lower()

                def compile_and_keep() -> float:
                    compiled = self._compile_and_store(lowered, fast, own, stored, start)
                    self._keep(key, compiled)
                    return time.perf_counter() - start

                return _shapes_only(traced.out_info), executor.submit(compile_and_keep)
            self._keep(key, exe)
            seconds = time.perf_counter() - start
        done: concurrent.futures.Future = concurrent.futures.Future()
        done.set_result(seconds)
        return _shapes_only(exe.out_info), done

    def _key(self, args, static):
        """The signature an executable is kept under: the static arguments, the product
        precision it is traced with (:func:`matmul_precision`), the tree and its leaves', and
        JAX's tracing settings now (:func:`bayesgmm._program_store.tracing_settings`: one changed
        between two fits, such as the PRNG implementation, gives another program)."""
        leaves, treedef = jax.tree_util.tree_flatten(args)
        static = tuple(sorted(static.items())) + ((_PRECISION_KEY, matmul_precision()),)
        return (static, treedef, tuple(_leaf_signature(a) for a in leaves), _program_store.tracing_settings())

    def _from_store(self, key, args, static):
        """For a signature not compiled in this process: ``(fast, own, stored, executable)``,
        whether it compiles with :func:`compiler_options`, the program's own ``cpu_options`` for
        it, what it is filed under in :mod:`bayesgmm._program_store` (None: not stored), and the
        executable found there (or None)."""
        fast = resolve_fast_compile(self._fast_compile, *args)
        own = self._cpu_options(*args, **static) if self._cpu_options is not None else None
        if self._stored_name is None or _program_store.folder() is None:
            return fast, own, None, None
        static_key, treedef, leaves, _ = key  # the tracing settings: in the store's fingerprint
        stored = _program_store.signature(self._stored_name, dict(static_key), treedef, leaves,
                                          compiler_options(fast, own))
        return fast, own, stored, _program_store.load(stored) if stored is not None else None

    @staticmethod
    def _compile_and_store(lowered, fast: bool, own: dict | None, stored: str | None, start: float):
        """XLA's executable, kept in the program store when it was compiled here (not taken
        from JAX's cache: a storable program is looked up there under a key of its own,
        :func:`bayesgmm._program_store.keyed_apart`) and took at least
        :data:`CACHE_MIN_COMPILE_SECONDS`."""
        if stored is None:
            return compile_lowered(lowered, fast, own)
        hits = _program_store.jax_cache_hits()
        with _program_store.keyed_apart():
            exe = compile_lowered(lowered, fast, own)
        if time.perf_counter() - start >= CACHE_MIN_COMPILE_SECONDS and _program_store.jax_cache_hits() == hits:
            _program_store.save(stored, exe)
        return exe

    def _keep(self, key, exe) -> None:
        self._cache[key] = exe
        while len(self._cache) > self._max_entries:
            self._cache.popitem(last=False)

    def _executable(self, args, static):
        key = self._key(args, static)
        compile_seconds = 0.0
        exe = self._cache.get(key)
        if exe is None:
            start = time.perf_counter()
            fast, own, stored, exe = self._from_store(key, args, static)
            if exe is None:
                with TRACE_LOCK, traced_precisely():
                    lowered = self._jitted.lower(*args, **static)
                exe = self._compile_and_store(lowered, fast, own, stored, start)
            compile_seconds = time.perf_counter() - start
            self._keep(key, exe)
        else:
            self._cache.move_to_end(key)
        return key, exe, compile_seconds

    def __call__(self, *args, **static) -> Timed:
        """Run on ``args`` (arrays or pytrees of arrays; no Python scalars), compiling if needed."""
        key, exe, compile_seconds = self._executable(args, static)
        leaves = jax.tree_util.tree_leaves(args)
        if self._memory_advice is not None:
            self._check_memory(key, exe, leaves)
        with running():
            start = time.perf_counter()
            outputs = jax.block_until_ready(exe(*args))
        return Timed(outputs, compile_seconds, time.perf_counter() - start)

    def _check_memory(self, key, exe, leaves) -> None:
        if key not in self._memory:
            self._memory[key] = program_memory(exe)
        need = self._memory[key]
        if need is None or need < MEMORY_CHECK_MIN:  # never refused: no need to ask the system (every call)
            return
        here = jax.process_index()  # several processes (jax.distributed): this process's devices
        devices = [d for a in leaves if isinstance(a, jax.Array) for d in a.devices() if d.process_index == here]
        devices = devices or jax.local_devices()[:1]
        free = available_memory(devices[0])
        if free is None or need <= free:
            return
        inputs = sum(getattr(a, "nbytes", 0) for a in leaves)
        raise InsufficientMemoryError(
            f"This fit needs about {memory_size(need)} of memory on {devices[0].platform.upper()} "
            f"({memory_size(inputs)} of it for the inputs), but only {memory_size(free)} are free. "
            f"{self._memory_advice}"
        )

    def clear(self) -> None:
        """Drop every compiled executable of this program."""
        self._cache.clear()
        self._memory.clear()


def compile_together(first: CompiledProgram, first_args: tuple, first_static: dict, second: CompiledProgram,
                     second_args: Callable[[Any], tuple], second_static: dict) -> float:
    """Compile two programs at once, the second taking the first's outputs.

    ``first`` is traced and lowered on this thread, then compiled on a second one while ``second``
    is traced and compiled here for the arguments ``second_args(outputs)``, where ``outputs`` are
    ``first``'s outputs as ``jax.ShapeDtypeStruct`` (XLA compiles outside Python's lock). When
    ``first`` knows its outputs' shapes without a trace (``out_shapes``), the order turns round:
    ``second`` (the larger) is traced, lowered and compiled on the second thread from the
    start, and ``first`` is traced and compiled here meanwhile. The
    samplers and SVI compile their starting program (the MAP start) this way beside their main
    one: on two cores a first NUTS fit on Old Faithful compiles about a second sooner.

    Returns
    -------
    float
        The wall seconds, 0.0 when both programs were compiled before.
    """
    began = time.perf_counter()
    compiler = concurrent.futures.ThreadPoolExecutor(1)
    try:
        if first.out_shapes is not None and not first.is_compiled(*first_args, **first_static):
            # the second program's compilation starts first, before the first is even traced:
            # the first (a start, of short compile) is traced, lowered and compiled meanwhile
            with TRACE_LOCK:  # out_shapes may trace the model (NUTS's start)
                guess = first.out_shapes(*first_args, **first_static)
            second_compiled = second.compile_in_background(compiler, *second_args(guess), **second_static)[1]
            first_compiled = first.compile(*first_args, **first_static)
            compiled = second_compiled.result() or first_compiled
            outputs = first.compiled_out_shapes(*first_args, **first_static)
            if not _same_shapes(outputs, guess):  # out_shapes erred: one compilation lost, no wrong program
                compiled = second.compile(*second_args(outputs), **second_static) or compiled
        else:
            out_info, first_compiled = first.compile_in_background(compiler, *first_args, **first_static)
            second_compiled = second.compile(*second_args(out_info), **second_static)
            compiled = first_compiled.result() or second_compiled
    finally:  # an interrupt propagates at once: a compilation left running keeps its program, harmlessly
        compiler.shutdown(wait=False)
    return time.perf_counter() - began if compiled else 0.0


def _same_shapes(a, b) -> bool:
    """Whether two pytrees of arrays or ``jax.ShapeDtypeStruct`` have one structure, shapes and dtypes."""
    leaves_a, tree_a = jax.tree_util.tree_flatten(a)
    leaves_b, tree_b = jax.tree_util.tree_flatten(b)
    return tree_a == tree_b and all(_leaf_signature(x)[:2] == _leaf_signature(y)[:2] for x, y in zip(leaves_a, leaves_b))


def clear_caches() -> None:
    """Drop every compiled program: bayesgmm's ahead-of-time caches and JAX's own
    (``jax.clear_caches``). The next fit of each shape compiles again (or loads the program from
    :mod:`bayesgmm._program_store`, as a new process would). Long-running processes
    that fit very many different shapes can call it to release the compiled code."""
    for ref in list(_PROGRAMS):
        program = ref()
        if program is None:
            _PROGRAMS.remove(ref)
        else:
            program.clear()
    jax.clear_caches()


#: Environment variable naming the persistent compilation cache's folder; ``0``, ``off``,
#: ``false``, ``no`` or an empty value turn the cache off.
CACHE_ENV = "BAYESGMM_COMPILE_CACHE"
CACHE_OFF_VALUES = frozenset({"", "0", "off", "false", "no", "none"})
#: Programs that compile faster than this are not written to the cache (tiny helper programs
#: would only fill the folder); every engine's main program takes longer.
CACHE_MIN_COMPILE_SECONDS = 0.25
#: The folder's size limit; JAX evicts the least recently used programs beyond it.
CACHE_MAX_BYTES = 2 * 2**30


def default_cache_dir() -> pathlib.Path:
    """The user's cache folder for compiled programs: ``$XDG_CACHE_HOME/bayesgmm/xla`` (by default
    ``~/.cache/bayesgmm/xla``), one sub-folder per JAX version (executables do not carry over)."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return pathlib.Path(base) / "bayesgmm" / "xla" / f"jax-{jax.__version__}"


def set_compilation_cache(path, *, min_compile_time_secs: float = CACHE_MIN_COMPILE_SECONDS) -> None:
    """Turn JAX's persistent compilation cache on in ``path``, or off with ``path=None``.

    bayesgmm turns the cache on when it is imported (in :func:`default_cache_dir`, or in
    ``$BAYESGMM_COMPILE_CACHE``), unless that variable says ``0``/``off`` or JAX's own cache folder
    (``JAX_COMPILATION_CACHE_DIR``) is already set. A fresh process then reuses the programs an
    earlier process compiled for the same shapes and settings instead of compiling them again (a
    first NUTS fit costs seconds of compilation). The setting is JAX's and applies to the whole
    process; call this to move the cache or (``None``) to turn it off from Python.

    Parameters
    ----------
    path : str, os.PathLike or None
        Folder for the cache (created if needed); None turns the cache off.
    min_compile_time_secs : float
        Only programs that took at least this long to compile are written to the cache.

    Raises
    ------
    OSError
        When the folder cannot be created.
    """
    from jax.experimental.compilation_cache import compilation_cache

    if path is None or path is False:
        jax.config.update("jax_compilation_cache_dir", None)
        compilation_cache.reset_cache()
        return
    os.makedirs(path, exist_ok=True)
    if jax.config.jax_compilation_cache_dir != str(path):
        compilation_cache.reset_cache()  # a cache already opened elsewhere keeps its folder otherwise
    jax.config.update("jax_compilation_cache_dir", str(path))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", float(min_compile_time_secs))
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    if importlib.util.find_spec("filelock") is not None:  # JAX bounds the size only with it
        jax.config.update("jax_compilation_cache_max_size", CACHE_MAX_BYTES)
        # later, off the importing thread (filelock's import and the folder's listing took 10-30 ms
        # of `import bayesgmm`, and competed with it from a thread started at once)
        repair = threading.Timer(REPAIR_DELAY_SECONDS, remove_orphan_entries, args=(path,))
        repair.daemon = True  # never keeps a short script alive
        repair.start()


#: Seconds after the cache is turned on before :func:`remove_orphan_entries` looks at it.
REPAIR_DELAY_SECONDS = 2.0


#: JAX's size-bounded cache: every entry ``KEY-cache`` has its access time in ``KEY-atime``, and
#: both are written under the folder's lock file.
_CACHE_SUFFIX, _ATIME_SUFFIX, _CACHE_LOCK = "-cache", "-atime", ".lockfile"


def remove_orphan_entries(path) -> list[str]:
    """Remove the entries of JAX's size-bounded cache in ``path`` that have no access-time file
    (left by a process killed between writing the two) and return their names.

    JAX reads every entry's access time before it writes a new one, so a single orphan made every
    later write into the folder fail, with a warning, in every process. Done under the cache's
    lock (as JAX writes), so that an entry being written now is not taken for one.
    """
    import filelock

    folder = pathlib.Path(path)
    try:
        with filelock.FileLock(folder / _CACHE_LOCK, timeout=5):
            names = {entry.name for entry in os.scandir(folder)}
            orphans = [n for n in names if n.endswith(_CACHE_SUFFIX) and n[: -len(_CACHE_SUFFIX)] + _ATIME_SUFFIX not in names]
            for name in orphans:
                with contextlib.suppress(OSError):
                    (folder / name).unlink()
    except (OSError, filelock.Timeout):  # unreadable, or busy: JAX copes or warns as before
        return []
    return orphans


@contextlib.contextmanager
def cache_writes_finished(timeout: float = 5.0):
    """Wait (up to ``timeout`` seconds) until no thread of any process is writing JAX's
    size-bounded persistent cache, and hold that off while inside: for exiting at once
    (:func:`os._exit` after Ctrl-C) without leaving a truncated entry or one without its access
    time. A no-op without such a cache."""
    folder = jax.config.jax_compilation_cache_dir
    if not folder or jax.config.jax_compilation_cache_max_size == -1 or importlib.util.find_spec("filelock") is None:
        yield
        return
    import filelock

    lock = filelock.FileLock(pathlib.Path(folder) / _CACHE_LOCK, timeout=timeout, thread_local=False)
    try:
        lock.acquire()
    except (OSError, filelock.Timeout):
        yield
        return
    try:
        yield
    finally:
        lock.release()


def configure_default_cache() -> pathlib.Path | None:
    """At import: the persistent cache in ``$BAYESGMM_COMPILE_CACHE`` or :func:`default_cache_dir`,
    unless turned off there or JAX's own folder is set. A folder that cannot be created leaves
    the cache off (a read-only home must not break the import). Returns the folder in use."""
    env = os.environ.get(CACHE_ENV)
    if env is not None and env.strip().lower() in CACHE_OFF_VALUES:
        return None
    if env is None and jax.config.jax_compilation_cache_dir:
        return pathlib.Path(jax.config.jax_compilation_cache_dir)  # the user's own choice
    folder = pathlib.Path(env) if env is not None else default_cache_dir()
    try:
        set_compilation_cache(folder)
    except OSError:
        return None
    return folder


# ----------------------------------------------------------------------------------------------
# Progress bars for compiled loops
# ----------------------------------------------------------------------------------------------
#: The bars of the runs in progress, by name and the thread of their fit. A compiled program is
#: cached and reused, so its host callback cannot capture a bar object; it looks the bar up here
#: at run time instead: that of the fit whose thread holds :data:`RUN_LOCK` (programs run one at
#: a time), so that two fits with bars on two threads each advance their own.
_BARS: dict = {}


def tick_interval(total):
    """Steps between two ticks: about 100 updates of the bar per run (``total`` an int, or a
    traced integer inside a program whose loop length is traced)."""
    if isinstance(total, (int, np.integer)):
        return max(int(total) // 100, 1)
    return jax.numpy.maximum(total // 100, 1)


def tick_every(name: str, step, every) -> None:
    """Inside traced code: advance the progress bar ``name`` by ``every`` when ``step + 1`` is a
    multiple of ``every`` (a ``jax.debug.callback``; values computed are unchanged). ``every``
    may be traced (:func:`tick_interval` of a traced length).

    ``step`` must not depend on batched (``vmap``-ped) values, so that the condition stays a
    real branch and the bar moves once per loop step, not once per chain.
    """

    def advance(size):
        bar = _BARS.get((name, _OWNER))
        if bar is not None:
            bar.advance(int(size))

    jax.lax.cond((step + 1) % every == 0, lambda: jax.debug.callback(advance, every), lambda: None)


def length_bucket(length: int, minimum: int = 64) -> int:
    """Static length of a buffer for ``length`` loop steps: the power of two that holds it, at
    least ``minimum``. A program whose loop runs a traced number of steps into such a buffer
    serves every length in the bucket: a sampler's new ``num_samples`` or SVI's new
    ``num_steps`` then reuses it instead of compiling (at most twice the buffer's memory)."""
    return max(int(minimum), 1 << max(int(length) - 1, 0).bit_length())


def write_step(buffers, index, values):
    """``buffers`` (a pytree of arrays with a leading step axis) with ``values`` written at
    ``index`` (traced): the body of a loop that fills a :func:`length_bucket` buffer."""
    return jax.tree_util.tree_map(lambda b, v: jax.lax.dynamic_update_index_in_dim(b, v, index, 0), buffers, values)


def step_buffers(values, length: int):
    """Zero buffers of ``length`` steps shaped as one step's ``values`` (arrays or shapes)."""
    return jax.tree_util.tree_map(lambda v: jax.numpy.zeros((length,) + tuple(v.shape), v.dtype), values)


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
        self._key = None
        self._lock = threading.Lock()  # ticks come from the chains' threads at once

    def advance(self, steps: int) -> None:
        with self._lock:
            if self._bar is None:
                from tqdm.auto import tqdm

                self._bar = tqdm(total=self.total, desc=self.desc, unit="step")
            self._bar.update(steps)

    def __enter__(self):
        if self.enabled:
            self._key = (self.name, threading.get_ident())
            _BARS[self._key] = self
        return self

    def __exit__(self, *exc):
        if self._key is not None:
            _BARS.pop(self._key, None)
        with self._lock:
            if self._bar is not None:
                if exc[0] is None:
                    self._bar.update(self.total - self._bar.n)
                self._bar.close()
        return False
