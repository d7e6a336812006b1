"""Test configuration.

The suite runs with 64-bit JAX so that oracle comparisons (scikit-learn, closed forms) can be
tight; float32 behaviour is tested inside ``with jax.enable_x64(False):`` (the package computes in
JAX's default float, :func:`bayesgmm.params.compute_dtype`), e.g. through :func:`precision`. Warnings are errors
(pyproject.toml), so every expected warning is asserted with ``pytest.warns``.
"""

import contextlib
import os

os.environ.setdefault("MPLBACKEND", "Agg")
# Compile every program with the fast-compiling XLA options (bayesgmm._compile), the samplers' too,
# and EM, VB, k-means and the helpers without LLVM's optimisation: the suite's time is mostly
# compilation (a third less this way), its data are small and its sampler runs short. Subprocesses
# inherit it.
os.environ.setdefault("BAYESGMM_COMPILE_MODE", "fastest-compile")

import jax  # noqa: E402

jax.config.update("jax_enable_x64", True)

import numpy as np  # noqa: E402
import pytest  # noqa: E402

import bayesgmm as bg  # noqa: E402


class CompileCounter:
    """Counts XLA compilations (``backend_compile`` events of ``jax.monitoring``) while active."""

    count = 0
    active = False
    _registered = False

    def __enter__(self):
        if not CompileCounter._registered:
            import jax.monitoring

            def listener(name, duration, **kwargs):
                if CompileCounter.active and name.endswith("backend_compile_duration"):
                    CompileCounter.count += 1

            jax.monitoring.register_event_duration_secs_listener(listener)
            CompileCounter._registered = True
        CompileCounter.count, CompileCounter.active = 0, True
        return self

    def __exit__(self, *exc):
        CompileCounter.active = False
        return False

    @property
    def compiles(self) -> int:
        return CompileCounter.count


def grid(names, values, fast):
    """``pytest.mark.parametrize`` over every combination in ``values``, those not in ``fast``
    marked slow: the default run checks a subset that still covers each value of each axis, and
    ``-m slow`` the rest of the grid."""
    import itertools

    cases = list(itertools.product(*values))
    missing = [c for c in fast if c not in cases]
    assert not missing, missing
    return pytest.mark.parametrize(
        names, [c if c in fast else pytest.param(*c, marks=pytest.mark.slow) for c in cases]
    )


def precision(dtype):
    """A context in which JAX's default float, and so every engine's compute type, is ``dtype``."""
    return jax.enable_x64(np.dtype(dtype) == np.float64)


def assert_a_failed_write_keeps_the_file(path, write_first, write_second, monkeypatch):
    """``write_first(path)``, then ``write_second(path)`` on a disk that fails at the rename (a
    full disk, an interrupt): the first file stays whole and no temporary file is left."""
    import os

    write_first(path)
    before = path.read_text()

    def crash(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError, match="disk full"):
        write_second(path)
    assert path.read_text() == before and os.listdir(path.parent) == [path.name]


def separated_clusters(num_obs: int, num_components: int, num_features: int, seed: int = 1):
    """Unit-variance clusters around centres drawn N(0, 3^2) per feature (float64), the data of
    ``benchmarks/float32_floor.py`` and ``em_per_fit.py``."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 3, size=(num_components, num_features))
    return centres[rng.integers(0, num_components, num_obs)] + rng.normal(size=(num_obs, num_features))


def rough_start_and_optimum(x, num_components: int, max_iter: int):
    """A common start (three EM iterations from one k-means++ start, as ``fit_em`` keyword
    arguments) and the log-likelihood that ``max_iter`` float64 iterations from it reach."""
    import warnings

    with warnings.catch_warnings(), precision(np.float64):
        warnings.simplefilter("ignore", bg.ConvergenceWarning)  # a rough start, and a run with no tolerance
        start = bg.fit_em(x, num_components, max_iter=3, n_init=1, seed=0)
        given = dict(weights_init=start.weights, means_init=start.means,
                     precisions_init=np.linalg.inv(start.covariances), n_init=1)
        best = bg.fit_em(x, num_components, **given, tol=0.0, max_iter=max_iter).log_likelihood
    return given, best


#: Memory mappings of this process above which the compiled programs are freed after a module.
MAX_MAPPINGS = 24000


def _memory_mappings() -> int | None:
    try:
        with open("/proc/self/maps") as maps:
            return sum(1 for _ in maps)
    except OSError:
        return None


#: Signatures each package program keeps compiled in a worker (the package keeps 16, enough for a
#: user's process): the suite's workers fit many more shapes, and with 16 a third of the EM
#: program's compilations in a run were signatures compiled before and pushed out since.
#: :func:`_release_compiled_programs` still bounds the memory mappings.
PROGRAM_ENTRIES = 128


def _keep_more_programs():
    from bayesgmm import _compile

    make = _compile.CompiledProgram.__init__

    def make_keeping_more(self, *args, **kwargs):  # programs of modules imported later
        make(self, *args, **kwargs)
        self._max_entries = max(self._max_entries, PROGRAM_ENTRIES)

    _compile.CompiledProgram.__init__ = make_keeping_more
    for ref in list(_compile._PROGRAMS):  # those made already
        program = ref()
        if program is not None:
            program._max_entries = max(program._max_entries, PROGRAM_ENTRIES)


_keep_more_programs()


@pytest.fixture(scope="module", autouse=True)
def _release_compiled_programs():
    """Free every compiled program after a test module once this process holds many memory
    mappings (each XLA:CPU executable holds hundreds): one process keeping the whole suite's
    programs would exceed the kernel's limit (vm.max_map_count, 65530 by default) and abort
    inside XLA's compiler. Below that, later modules reuse the programs earlier ones compiled.
    Without /proc (not Linux) they are freed after every module."""
    yield
    mappings = _memory_mappings()
    if mappings is None or mappings > MAX_MAPPINGS:
        from bayesgmm._compile import clear_caches

        clear_caches()


@contextlib.contextmanager
def compiled_afresh():
    """Inside the block every package program compiles (or loads from the program store) as in a
    new process; afterwards the programs compiled before it are kept again, beside those compiled
    inside. :func:`bayesgmm._compile.clear_caches` alone would make every later test of this
    worker compile its programs a second time (about 40 compilations of the suite did)."""
    from bayesgmm import _compile

    programs = [ref() for ref in list(_compile._PROGRAMS)]
    kept = [(p, dict(p._cache), dict(p._memory)) for p in programs if p is not None]
    _compile.clear_caches()
    try:
        yield
    finally:
        for program, cache, memory in kept:
            for key, exe in cache.items():
                if key not in program._cache:
                    program._keep(key, exe)
            for key, need in memory.items():
                program._memory.setdefault(key, need)


@contextlib.contextmanager
def compile_mode(mode: str):
    """``$BAYESGMM_COMPILE_MODE`` set to ``mode`` inside the block (:mod:`bayesgmm._compile`).
    The suite compiles with ``fastest-compile``; a test whose programs run long (many models,
    lanes and iterations) is quicker with LLVM's optimisation (``fast-compile``)."""
    before = os.environ.get("BAYESGMM_COMPILE_MODE")
    os.environ["BAYESGMM_COMPILE_MODE"] = mode
    try:
        yield
    finally:
        if before is None:
            del os.environ["BAYESGMM_COMPILE_MODE"]
        else:
            os.environ["BAYESGMM_COMPILE_MODE"] = before


@pytest.fixture(scope="session")
def faithful():
    return bg.datasets.load_faithful()


@pytest.fixture(scope="session")
def faithful_std(faithful):
    return (faithful - faithful.mean(0)) / faithful.std(0)


@pytest.fixture(scope="session")
def sim3():
    """Well-separated simulated data with known truth: N=600, D=2, K=3."""
    return bg.datasets.make_mixture(600, 3, 2, separation=5.0, seed=3)


def calls_of_one_step(monkeypatch) -> list:
    """Samplers' runs in calls of one step each after a first of three (``_chains.in_segments``),
    every call recorded in the list returned (its ``(begin, end)``)."""
    from bayesgmm import _chains

    calls = []
    original = _chains.in_segments

    def counted(call, carry, steps):
        return original(lambda *a: calls.append(a[1:]) or call(*a), carry, steps)

    monkeypatch.setattr(_chains, "FIRST_SEGMENT_STEPS", 3)
    monkeypatch.setattr(_chains, "SEGMENT_SECONDS", 1e-6)  # every later call a step
    monkeypatch.setattr(_chains, "in_segments", counted)
    return calls


#: Gibbs settings of the session's Old Faithful fit (test_gibbs.py, and test_mcmc.py against NUTS).
GIBBS_SETTINGS = dict(num_warmup=200, num_samples=1000, num_chains=4)


@pytest.fixture(scope="session")
def faithful_gibbs(faithful):
    """Conjugate Gibbs on Old Faithful, K = 2, the default prior (as test_mcmc's NUTS fits)."""
    return bg.fit_gibbs(faithful, 2, seed=0, **GIBBS_SETTINGS)


@pytest.fixture
def rng():
    return np.random.default_rng(0)


# ----------------------------------------------------------------------------------------------
# Opt-in profile of where the suite's time goes: BAYESGMM_TEST_PROFILE=folder writes, per worker,
# a JSON line per test with its wall time and the seconds spent tracing, lowering and compiling
# (and the persistent-cache hits). `python tests/_profile_report.py folder` sums them per file.
# ----------------------------------------------------------------------------------------------
_PROFILE_DIR = os.environ.get("BAYESGMM_TEST_PROFILE")
_PROFILE = {"test": None, "totals": {}, "programs": {}}
_PROFILE_EVENTS = {
    "/jax/core/compile/jaxpr_trace_duration": "trace",
    "/jax/core/compile/jaxpr_to_mlir_module_duration": "lower",
    "/jax/core/compile/backend_compile_duration": "compile",
}

if _PROFILE_DIR:
    import json
    import time

    import jax.monitoring

    def _profile_duration(name, duration, **kwargs):
        kind = _PROFILE_EVENTS.get(name)
        if kind is not None and _PROFILE["test"] is not None:
            totals = _PROFILE["totals"].setdefault(_PROFILE["test"], {})
            totals[kind] = totals.get(kind, 0.0) + duration
            if kind == "compile":
                totals["compiles"] = totals.get("compiles", 0) + 1
                program = _PROFILE["programs"].setdefault(kwargs.get("fun_name", "?"), [0, 0.0])
                program[0] += 1
                program[1] += duration

    def _profile_event(name, **kwargs):
        if name == "/jax/compilation_cache/cache_hits" and _PROFILE["test"] is not None:
            totals = _PROFILE["totals"].setdefault(_PROFILE["test"], {})
            totals["cache_hits"] = totals.get("cache_hits", 0) + 1

    jax.monitoring.register_event_duration_secs_listener(_profile_duration)
    jax.monitoring.register_event_listener(_profile_event)

    from bayesgmm import _compile

    _program_executable = _compile.CompiledProgram._executable

    def _logged_executable(self, args, static):
        """Every new signature of a package program, with the test that compiled it (JSON lines)."""
        key, exe, seconds = _program_executable(self, args, static)
        if seconds > 0:
            leaves, treedef = jax.tree_util.tree_flatten(args, is_leaf=lambda a: a is None)
            worker = os.environ.get("PYTEST_XDIST_WORKER", "main")
            row = {"test": _PROFILE["test"], "program": self._jitted.__name__, "seconds": seconds,
                   "static": {k: repr(v) for k, v in sorted(static.items())},
                   "args": [None if a is None else [list(np.shape(a)), str(np.asarray(a).dtype) if not hasattr(a, "dtype")
                                                   else str(a.dtype)] for a in leaves]}
            os.makedirs(_PROFILE_DIR, exist_ok=True)
            with open(os.path.join(_PROFILE_DIR, f"{worker}.signatures.jsonl"), "a") as out:
                out.write(json.dumps(row) + "\n")
        return key, exe, seconds

    _compile.CompiledProgram._executable = _logged_executable

    @pytest.hookimpl(hookwrapper=True)
    def pytest_runtest_protocol(item, nextitem):
        _PROFILE["test"] = item.nodeid
        start = time.perf_counter()
        yield
        totals = _PROFILE["totals"].setdefault(item.nodeid, {})
        totals["wall"] = time.perf_counter() - start
        worker = os.environ.get("PYTEST_XDIST_WORKER", "main")
        os.makedirs(_PROFILE_DIR, exist_ok=True)
        with open(os.path.join(_PROFILE_DIR, f"{worker}.jsonl"), "a") as out:
            out.write(json.dumps({"test": item.nodeid, **totals}) + "\n")
        _PROFILE["test"] = None

    def pytest_sessionfinish(session):
        worker = os.environ.get("PYTEST_XDIST_WORKER", "main")
        if _PROFILE["programs"]:
            os.makedirs(_PROFILE_DIR, exist_ok=True)
            with open(os.path.join(_PROFILE_DIR, f"{worker}.programs.json"), "w") as out:
                json.dump(_PROFILE["programs"], out)
