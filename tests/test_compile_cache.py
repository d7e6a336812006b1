"""JAX's persistent compilation cache, on by default (issue 13): a fresh process reuses the
programs an earlier one compiled, with identical results; the environment variable and
:func:`bayesgmm.set_compilation_cache` turn it off or move it; a user's own JAX setting wins.

Each check runs in a fresh interpreter, where the import-time setting happens."""

import concurrent.futures
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import compiled_afresh

import bayesgmm as bg
from bayesgmm import _compile

FIT = """
import json, sys, jax, jax.monitoring
jax.config.update("jax_enable_x64", True)
events, traced = [], []
jax.monitoring.register_event_listener(lambda name, **kw: events.append(name))
jax.monitoring.register_event_duration_secs_listener(
    lambda name, seconds, **kw: traced.append(kw.get("fun_name")) if name == "/jax/core/compile/jaxpr_trace_duration" else None)
import bayesgmm as bg
from bayesgmm import _program_store
_program_store.ENABLED = sys.argv[1] == "store"
x = bg.datasets.load_faithful()
r = bg.fit_em(x, 2, n_init=2, seed=0)
print(json.dumps({"dir": jax.config.jax_compilation_cache_dir, "loglik": r.log_likelihood.hex(), "traced": traced,
                  "hits": events.count("/jax/compilation_cache/cache_hits")}))
"""


def _run(code, *args, **env):
    full = {k: v for k, v in os.environ.items() if k not in ("BAYESGMM_COMPILE_CACHE", "JAX_COMPILATION_CACHE_DIR")}
    full.update(env)
    out = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, env=full, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def _helpers(run) -> int:
    """Programs other than EM's that a run traced (each may be a hit of JAX's cache)."""
    return len([name for name in run["traced"] if name != "_run"])


def test_a_second_process_reuses_the_first_ones_programs(tmp_path):
    """Without the program store, JAX's cache serves the EM program (after tracing it again);
    with it, a second process loads the program without tracing it. A program meant for the
    store is compiled under a JAX cache key of its own: where JAX's cache already holds it under
    its plain key (as after an upgrade of the package, whose store files no longer match), it is
    compiled again and stored, not served from there unstorable (that left every later process
    tracing it); the same after the store's eviction (a new generation salts the keys). Every fit
    equals the first, bit for bit."""
    folder = tmp_path / "cache"
    first = _run(FIT, "jax", BAYESGMM_COMPILE_CACHE=str(folder))
    assert first["dir"] == str(folder) and any(folder.iterdir()) and "_run" in first["traced"]
    second = _run(FIT, "jax", BAYESGMM_COMPILE_CACHE=str(folder))
    assert second["hits"] >= 1 and "_run" in second["traced"]  # the EM program came from JAX's cache
    upgraded = _run(FIT, "store", BAYESGMM_COMPILE_CACHE=str(folder))
    # compiled here and stored, not served unstorable (a hit may be a small helper's, a key split,
    # which a loaded machine can make compile past the cache's 0.25 s floor)
    assert "_run" in upgraded["traced"] and upgraded["hits"] <= _helpers(upgraded)
    assert len(list((folder / "programs").glob("*.bin"))) == 1
    loaded = _run(FIT, "store", BAYESGMM_COMPILE_CACHE=str(folder))
    assert "_run" not in loaded["traced"] and loaded["hits"] <= _helpers(loaded)  # loaded, neither traced nor looked up
    again = _run(FIT, "jax", BAYESGMM_COMPILE_CACHE=str(folder))
    assert again["hits"] >= 1  # the plain key's entry is still JAX's to serve
    for stored in (folder / "programs").glob("*.bin"):  # the store's eviction: its files go, a new generation
        stored.unlink()
    (folder / "programs" / "generation").write_text("after an eviction")
    evicted = _run(FIT, "store", BAYESGMM_COMPILE_CACHE=str(folder))
    assert "_run" in evicted["traced"] and evicted["hits"] <= _helpers(evicted)  # compiled again, not served unstorable
    assert len(list((folder / "programs").glob("*.bin"))) == 1
    assert (first["loglik"] == second["loglik"] == upgraded["loglik"] == loaded["loglik"] == again["loglik"]
            == evicted["loglik"])


SAMPLERS = """
import json, sys, warnings
import bayesgmm as bg
x = bg.datasets.load_faithful()[:100]
with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # few draws: the ESS warning
    nuts = bg.fit_mcmc(x, 2, num_warmup=20, num_samples=20, num_chains=2, seed=0)
    gibbs = bg.fit_gibbs(x, 2, num_warmup=10, num_samples=10, num_chains=2, seed=0)
print(json.dumps({"numpyro": "numpyro" in sys.modules, "means": [nuts.means.tolist(), gibbs.means.tolist()]}))
"""


def test_samplers_loaded_from_the_store_import_no_numpyro(tmp_path):
    """A second process's NUTS and Gibbs fits load their programs from the store and never import
    NumPyro (0.4-0.7 s of a warm NUTS fit's 3 s): the starts' program returned NumPyro's
    ``ParamInfo``, which unpickling the stored program imported, and the samplers' modules
    imported the model's distributions at import. The first process traces, so imports it; both
    give the same draws."""
    folder = str(tmp_path / "cache")
    first = _run(SAMPLERS, BAYESGMM_COMPILE_CACHE=folder)
    second = _run(SAMPLERS, BAYESGMM_COMPILE_CACHE=folder)
    assert first["numpyro"] and not second["numpyro"]
    assert first["means"] == second["means"]


def test_the_program_store_loads_what_it_stored_and_only_what_it_may(tmp_path, monkeypatch):
    """A stored program is loaded by a new :class:`CompiledProgram` (no compilation, the same
    outputs bit for bit), also through ``compile_in_background``; a damaged file is ignored and
    the program compiled again; lambdas, closures and partials are never stored, nor calls with
    static arguments that are not plain values or arguments placed on a device, nor programs
    with host callbacks (a progress bar's)."""
    import functools

    from bayesgmm import _program_store, _stats

    compiled = []
    compile_lowered = _compile.compile_lowered
    monkeypatch.setattr(_compile, "compile_lowered", lambda lowered, *options: compiled.append(1) or compile_lowered(lowered, *options))
    monkeypatch.setattr(_compile, "CACHE_MIN_COMPILE_SECONDS", 0.0)
    monkeypatch.setattr(_program_store, "ENABLED", True)
    before = jax.config.jax_compilation_cache_dir
    x = np.random.default_rng(0).normal(size=(7, 3)).astype(np.float32)

    def fresh():
        return _compile.CompiledProgram(_stats.suff_features, static_argnames=("covariance_type",))

    try:
        bg.set_compilation_cache(tmp_path / "cache")
        expected = fresh()(x, covariance_type="full").outputs
        assert len(compiled) == 1
        (stored,) = (tmp_path / "cache" / "programs").glob("*.bin")
        loaded = fresh()(x, covariance_type="full")
        assert len(compiled) == 1 and loaded.compile_seconds > 0
        np.testing.assert_array_equal(loaded.outputs, expected)
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            out_info, done = fresh().compile_in_background(pool, x, covariance_type="full")
            assert done.result() > 0 and len(compiled) == 1
        assert (out_info.shape, out_info.dtype) == (expected.shape, expected.dtype)

        stored.write_bytes(b"not a program")
        np.testing.assert_array_equal(fresh()(x, covariance_type="full").outputs, expected)
        assert len(compiled) == 2  # compiled again, and stored again
        assert fresh()(x, covariance_type="full").compile_seconds > 0 and len(compiled) == 2

        assert _program_store.storable(_stats.suff_features) == "bayesgmm._stats.suff_features"
        assert _program_store.storable(lambda a: a) is None
        assert _program_store.storable(functools.partial(_stats.suff_features, covariance_type="full")) is None
        assert _program_store.storable(_compile.jit) == "bayesgmm._compile.jit"
        assert _program_store.storable(fresh) is None  # a function of the tests
        dressed = functools.wraps(_stats.suff_features)(lambda *a, **k: _stats.suff_features(*a, **k))
        assert dressed.__qualname__ == "suff_features" and _program_store.storable(dressed) is None
        from bayesgmm import mcmc

        assert mcmc.START_PROGRAM._stored_name == "bayesgmm.mcmc._start_program"  # through its decorator's wrapper
        leaves = (((7, 3), "float32", None),)
        assert _program_store.signature("p", {"config": ("full", 2, None, 1.5)}, "T", leaves, None) is not None
        assert _program_store.signature("p", {"config": object()}, "T", leaves, None) is None
        assert _program_store.signature("p", {}, "T", (((7, 3), "float32", "a sharding"),), None) is None
        ticking = jax.jit(lambda a: jax.debug.callback(lambda v: None, a) or a * 2).lower(x).compile()
        assert not _program_store.save("a progress bar's program", ticking)  # its callback lives in this process
        doubling = jax.jit(lambda a: a * 2).lower(x).compile()
        with monkeypatch.context() as patch:
            patch.setattr(_program_store.zlib, "compress", lambda *args: object())  # the file's write fails
            assert not _program_store.save("a program whose write fails", doubling)
        assert not list((tmp_path / "cache" / "programs").glob("*.tmp"))  # no temporary file left behind
        bg.set_compilation_cache(None)  # off with the persistent cache
        assert _program_store.folder() is None
    finally:
        bg.set_compilation_cache(before)


def test_on_by_default_in_the_users_cache_folder_and_off_on_request(tmp_path):
    where = "import json, jax, bayesgmm; print(json.dumps({'dir': jax.config.jax_compilation_cache_dir}))"
    default = _run(where, XDG_CACHE_HOME=str(tmp_path))
    assert default["dir"] == str(tmp_path / "bayesgmm" / "xla" / f"jax-{jax.__version__}")
    for off in ("0", "off", ""):
        assert _run(where, BAYESGMM_COMPILE_CACHE=off)["dir"] is None
    # the user's own JAX setting is left alone
    assert _run(where, JAX_COMPILATION_CACHE_DIR=str(tmp_path / "mine"))["dir"] == str(tmp_path / "mine")


def test_set_compilation_cache_moves_and_turns_off(tmp_path, monkeypatch):
    before = jax.config.jax_compilation_cache_dir
    try:
        bg.set_compilation_cache(tmp_path / "elsewhere")
        assert jax.config.jax_compilation_cache_dir == str(tmp_path / "elsewhere")
        assert (tmp_path / "elsewhere").is_dir()
        bg.set_compilation_cache(None)
        assert jax.config.jax_compilation_cache_dir is None
        blocker = tmp_path / "file"
        blocker.write_text("")
        with pytest.raises(OSError):
            bg.set_compilation_cache(blocker / "sub")
        # an unwritable default leaves the cache off instead of breaking the import
        monkeypatch.setenv(_compile.CACHE_ENV, str(blocker / "sub"))
        assert _compile.configure_default_cache() is None
    finally:
        bg.set_compilation_cache(before)


def test_an_entry_a_killed_process_left_without_its_access_time_is_removed(tmp_path):
    """JAX's size-bounded cache reads every entry's access-time file before it writes a new entry:
    one entry without it (a process killed between the two writes) made every later cache write
    in the folder fail with a warning, in every process. Such entries are removed (under the
    cache's lock); complete entries and stray access times stay."""
    (tmp_path / "complete-cache").write_bytes(b"program")
    (tmp_path / "complete-atime").write_bytes((1).to_bytes(8, "little"))
    (tmp_path / "orphan-cache").write_bytes(b"half a progr")
    (tmp_path / "stray-atime").write_bytes((2).to_bytes(8, "little"))
    assert _compile.remove_orphan_entries(tmp_path) == ["orphan-cache"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [".lockfile", "complete-atime", "complete-cache", "stray-atime"]
    assert _compile.remove_orphan_entries(tmp_path / "gone") == []  # a folder removed meanwhile: nothing to do
    with _compile.cache_writes_finished(timeout=1.0):  # the lock JAX writes under, from another thread too
        pass


def test_compile_modes_choose_the_xla_options(monkeypatch):
    """``auto``: EM-like programs ask for the fast-compiling emitters, samplers keep XLA's
    defaults, their starts compile unoptimised (``FASTEST``) on up to 8192 rows; ``fast-compile`` /
    ``fast-run`` force either; ``fastest-compile`` also takes EM-like programs to ``FASTEST``
    (not the samplers); anything else is a clear error."""
    fast, fastest = _compile.FAST_COMPILE_OPTIONS, _compile.FASTEST_COMPILE_OPTIONS
    sampler = _compile.small_rows  # NUTS and full-batch SVI: fast on small data only
    settings = (True, False, sampler, _compile.small_rows_once)
    small, large, larger = np.zeros((511, 2)), np.zeros((512, 2)), np.zeros((8193, 2))
    # order: True, False, sampler, start on small data; sampler, start on large data; start on larger data
    expected = {"auto": (fast, None, fast, fastest, None, fastest, None),
                "fast-compile": (fast, fast, fast, fastest, fast, fastest, fast),
                "fastest-compile": (fastest, fast, fast, fastest, fast, fastest, fast),
                "fast-run": (None,) * 7}
    for mode, options in expected.items():
        monkeypatch.setenv(_compile.COMPILE_MODE_ENV, mode)
        got = [_compile.compiler_options(_compile.resolve_fast_compile(s, small)) for s in settings]
        got += [_compile.compiler_options(_compile.resolve_fast_compile(s, large)) for s in settings[2:]]
        got.append(_compile.compiler_options(_compile.resolve_fast_compile(settings[3], larger)))
        assert tuple(got) == options, mode
    assert fastest["xla_backend_optimization_level"] == 0
    monkeypatch.setenv(_compile.COMPILE_MODE_ENV, "quick")
    with pytest.raises(ValueError, match="BAYESGMM_COMPILE_MODE.*auto, fast-compile, fastest-compile, fast-run"):
        _compile.compiler_options(True)


def test_the_options_reach_xla_and_an_xla_without_them_still_compiles(monkeypatch):
    """An option this XLA does not know is refused by XLA itself (so the options are really
    passed); the program then compiles with the defaults, and later programs skip the options."""
    import jax.numpy as jnp

    monkeypatch.setenv(_compile.COMPILE_MODE_ENV, "fast-compile")
    monkeypatch.setattr(_compile, "FAST_COMPILE_OPTIONS", {"xla_cpu_no_such_option_in_any_xla": False})
    monkeypatch.setattr(_compile, "_OPTIONS_UNSUPPORTED", False)
    program = _compile.CompiledProgram(lambda a: jnp.sin(a) * 3.0, static_argnames=())
    assert float(program(jnp.asarray(0.5)).outputs) == pytest.approx(3 * np.sin(0.5))
    assert _compile._OPTIONS_UNSUPPORTED and _compile.compiler_options(True) is None

    monkeypatch.setattr(_compile, "_OPTIONS_UNSUPPORTED", False)
    jitted = _compile.jit(lambda a: jnp.cos(a) * 2.0)
    assert float(jitted(jnp.asarray(0.5))) == pytest.approx(2 * np.cos(0.5))
    assert _compile._OPTIONS_UNSUPPORTED


def test_a_programs_own_cpu_options_reach_xla_in_every_mode_and_an_unknown_one_is_dropped(monkeypatch):
    """``cpu_options`` are added to the compile mode's options (also under ``fast-run``, where
    there are none): a product handed to YNNPACK by default is compiled without it; an option
    this XLA does not know is dropped alone, the mode's options still passed."""
    import jax.numpy as jnp

    from bayesgmm import _stats

    off = {_stats.YNN_FUSION_OPTION: ""}
    rng = np.random.default_rng(0)
    a, b = jnp.asarray(rng.normal(size=(256, 16))), jnp.asarray(rng.normal(size=(16, 16)))

    def fn(u, v):
        return jnp.sum(jnp.exp(u @ v), axis=1)

    monkeypatch.setattr(_compile, "_CPU_OPTIONS_UNSUPPORTED", False)
    for mode in ("auto", "fast-run"):
        monkeypatch.setenv(_compile.COMPILE_MODE_ENV, mode)
        plain = _compile.CompiledProgram(fn, static_argnames=())
        without = _compile.CompiledProgram(fn, static_argnames=(), cpu_options=lambda u, v: off)
        texts = [p._executable((a, b), {})[1].as_text() for p in (plain, without)]
        # XLA's default (jaxlib 0.10) hands this product to YNNPACK; the option takes it back
        assert '"__ynn_fusion"' not in texts[1], mode
        if jax.__version_info__[:2] == (0, 10):
            assert '"__ynn_fusion"' in texts[0], mode
        np.testing.assert_allclose(np.asarray(without(a, b).outputs), np.asarray(fn(a, b)), rtol=1e-12)
    assert _compile.compiler_options(False, off) == off and _compile.compiler_options(False) is None

    monkeypatch.setenv(_compile.COMPILE_MODE_ENV, "fast-compile")
    unknown = _compile.CompiledProgram(lambda u: jnp.sin(u) * 3.0, static_argnames=(),
                                       cpu_options=lambda u: {"xla_cpu_no_such_option_in_any_xla": ""})
    assert float(unknown(jnp.asarray(0.5)).outputs) == pytest.approx(3 * np.sin(0.5))
    assert _compile._CPU_OPTIONS_UNSUPPORTED and not _compile._OPTIONS_UNSUPPORTED
    assert _compile.compiler_options(True, off) == _compile.FAST_COMPILE_OPTIONS


def test_em_and_vb_programs_use_ynnpack_only_where_it_was_faster(faithful):
    """EM's program hands no product or reduction to YNNPACK except for tied covariances, VB's
    except for full and tied ones (``_stats.library_kernels``; ``benchmarks/library_kernels.py``
    measures the rule), and the fits are those of XLA's defaults to round-off."""
    from bayesgmm import _em_core, _stats, vb

    def compiled_text(program, fit, covariance_type):  # the executable the fit ran
        fit(faithful, 2, covariance_type=covariance_type, n_init=2, seed=0)
        return list(program._cache.values())[-1].as_text()  # the most recently used

    for engine, program, fit, layouts in (("em", _em_core.PROGRAM, bg.fit_em, ("full", "diag", "spherical", "tied")),
                                          ("vb", vb.PROGRAM, bg.fit_vb, ("full", "diag"))):
        for ct in layouts:
            uses_ynn = '"__ynn_fusion"' in compiled_text(program, fit, ct)
            kept = ct == "tied" or (engine, ct) == ("vb", "full")
            assert kept == (_stats.library_kernels(ct, engine) == {})
            if not kept:
                assert not uses_ynn, (engine, ct)
            elif jax.__version_info__[:2] == (0, 10):  # XLA's default there: YNNPACK's kernels
                assert uses_ynn, (engine, ct)
    # the same fit with XLA's defaults (YNNPACK on): equal to round-off
    em_diag = bg.fit_em(faithful, 2, covariance_type="diag", n_init=2, seed=0)
    with pytest.MonkeyPatch.context() as patch, compiled_afresh():
        patch.setattr(_stats, "library_kernels", lambda *args, **kwargs: {})
        default = bg.fit_em(faithful, 2, covariance_type="diag", n_init=2, seed=0)
    assert default.n_iter == em_diag.n_iter
    assert default.log_likelihood == pytest.approx(em_diag.log_likelihood, rel=1e-12)
    np.testing.assert_allclose(default.means, em_diag.means, rtol=1e-9)


def test_both_compile_modes_give_the_same_fit(monkeypatch):
    """The emitters and LLVM's optimisation change the machine code, not the computation: EM's
    fit agrees to round-off."""
    x = bg.datasets.load_faithful()
    fits = {}
    for mode in ("fast-run", "fast-compile", "fastest-compile"):
        monkeypatch.setenv(_compile.COMPILE_MODE_ENV, mode)
        _compile.clear_caches()
        fits[mode] = bg.fit_em(x, 2, n_init=2, seed=0)
    a = fits["fast-run"]
    for b in fits.values():
        assert a.n_iter == b.n_iter
        assert a.log_likelihood == pytest.approx(b.log_likelihood, rel=1e-12)
        np.testing.assert_allclose(a.means, b.means, rtol=1e-9)


@pytest.mark.parametrize("guess", ["right", "wrong"])
def test_compile_together_with_known_output_shapes_compiles_the_second_first(guess, monkeypatch):
    """With ``out_shapes`` the second program compiles first, for the shapes given; when they
    were wrong it compiles again for the real ones, so a run never compiles."""
    order = []
    compile_lowered = _compile.compile_lowered
    monkeypatch.setattr(_compile, "compile_lowered",
                        lambda lowered, *options: order.append(lowered.as_text().count("sqrt")) or compile_lowered(lowered, *options))
    rows = 2 if guess == "right" else 3
    first = _compile.CompiledProgram(lambda x: x * 2.0, static_argnames=(),
                                     out_shapes=lambda x: jax.ShapeDtypeStruct((rows, 3), x.dtype))
    second = _compile.CompiledProgram(lambda y: jnp.sqrt(y), static_argnames=())
    x = np.arange(6.0, dtype=np.float32).reshape(2, 3)
    assert _compile.compile_together(first, (x,), {}, second, lambda out: (out,), {}) > 0
    assert order[0] == 1  # the second program (with its sqrt) was compiled first
    assert len(order) == (2 if guess == "right" else 3)
    assert second(first(x).outputs).compile_seconds == 0.0
    np.testing.assert_allclose(second(first(x).outputs).outputs, np.sqrt(2 * x))


@pytest.mark.parametrize("engine", ["mcmc", "svi", "gibbs"])
def test_the_samplers_start_programs_know_their_output_shapes(engine, monkeypatch):
    """NUTS's, Gibbs's and SVI's start programs tell their outputs' shapes without a trace (so that the
    main program compiles first); those equal the traced program's for every covariance
    structure, K = 1 and missing values."""
    from bayesgmm import _chains, svi

    class Stop(Exception):
        pass

    calls = []

    def record(first, first_args, first_static, *rest):
        calls.append((first, first_args, first_static))
        raise Stop

    monkeypatch.setattr(svi if engine == "svi" else _chains, "compile_together", record)
    x = np.random.default_rng(0).normal(size=(40, 2))
    x_missing = x.copy()
    x_missing[3, 1] = np.nan
    cases = [(ct, 2, x) for ct in ("full", "diag", "spherical", "tied")] + [("full", 1, x), ("diag", 2, x_missing)]
    for ct, k, data in cases:
        with pytest.raises(Stop):
            if engine == "mcmc":
                bg.fit_mcmc(data, k, covariance_type=ct, num_warmup=5, num_samples=5, num_chains=2, seed=0,
                            missing="marginalize")
            elif engine == "gibbs":
                bg.fit_gibbs(data, k, covariance_type=ct, num_warmup=5, num_samples=5, num_chains=2, seed=0,
                             missing="marginalize")
            else:
                bg.fit_svi(data, k, covariance_type=ct, num_steps=5, seed=0, missing="marginalize")
    assert len(calls) == len(cases)
    for first, args, static in calls:
        assert _compile._same_shapes(first.out_shapes(*args, **static), first.eval_out_shapes(*args, **static))


def test_compile_together_compiles_both_once_and_their_runs_reuse_them(monkeypatch):
    """The second program is compiled for the first's outputs as shapes; running it on the
    computed outputs then finds that executable (no compilation at run time), and a second
    ``compile_together`` compiles nothing."""
    compiled = []
    compile_lowered = _compile.compile_lowered
    monkeypatch.setattr(_compile, "compile_lowered", lambda lowered, *options: compiled.append(1) or compile_lowered(lowered, *options))
    first = _compile.CompiledProgram(lambda x, *, scale: {"y": x * scale, "n": x.sum()}, static_argnames=("scale",))
    second = _compile.CompiledProgram(lambda x, outputs, *, power: outputs["y"] ** power + outputs["n"] - x,
                                      static_argnames=("power",))
    x = np.arange(6.0, dtype=np.float32).reshape(2, 3)
    seconds = _compile.compile_together(first, (x,), {"scale": 2.0}, second, lambda out: (x, out), {"power": 2})
    assert seconds > 0 and len(compiled) == 2
    outputs = first(x, scale=2.0)
    result = second(x, outputs.outputs, power=2)
    assert outputs.compile_seconds == result.compile_seconds == 0.0 and len(compiled) == 2
    np.testing.assert_allclose(result.outputs, (2 * x) ** 2 + x.sum() - x)
    assert _compile.compile_together(first, (x,), {"scale": 2.0}, second, lambda out: (x, out), {"power": 2}) == 0.0
    with concurrent.futures.ThreadPoolExecutor(1) as pool:  # compiled before: the shapes come from the executable
        out_info, done = first.compile_in_background(pool, x, scale=2.0)
        assert done.result() == 0.0
    # ... without its device, so that a program compiled for them may run on other devices
    assert [(a.shape, a.sharding) for a in jax.tree_util.tree_leaves(out_info)] == [((), None), ((2, 3), None)]


def _dots(hlo_text: str) -> list[str]:
    return [line for line in hlo_text.splitlines() if " dot(" in line]


def test_float32_products_are_computed_in_full_precision_unless_the_user_chose_otherwise():
    """JAX's default lets a GPU round a float32 product's inputs to TensorFloat-32 (10 bits) and a
    TPU to bfloat16; every program of the package asks for full float32 products instead, EM's
    included. A user's own ``jax.default_matmul_precision`` wins, and a program compiled under one
    precision is not reused under another."""
    x = bg.datasets.load_faithful().astype(np.float32)
    with jax.enable_x64(False):
        bg.fit_em(x, 2, seed=0)
        compiled = [exe for ref in _compile._PROGRAMS if ref() is not None for exe in ref()._cache.values()]
    dots = [line for exe in compiled for line in _dots(exe.as_text())]
    assert dots and all("operand_precision={highest,highest}" in line for line in dots)

    a = np.ones((3, 3), np.float32)
    product = _compile.CompiledProgram(lambda u, v: u @ v, static_argnames=())
    product.compile(a, a)
    (full,) = product._cache.values()
    assert all("operand_precision={highest,highest}" in line for line in _dots(full.as_text()))
    with jax.default_matmul_precision("bfloat16"):
        assert not product.is_compiled(a, a)
        product.compile(a, a)
        text = _compile.jit(lambda u, v: u @ v).lower(a, a).as_text()
    assert "precision = [DEFAULT, DEFAULT]" in text
    assert len(product._cache) == 2 and product.is_compiled(a, a)


def test_the_store_s_cache_key_salt_is_this_thread_s_only(tmp_path, monkeypatch):
    """:func:`keyed_apart` salts JAX's cache keys with the store's fingerprint and generation in
    its own thread only; other threads' compilations keep their plain keys. The generation is
    new when the store removes files (eviction) or loses its token."""
    from jax._src import cache_key

    from bayesgmm import _program_store

    where = tmp_path / "programs"
    monkeypatch.setattr(_program_store, "folder", lambda: where)
    plain = cache_key.custom_hook()
    seen = {}
    with _program_store.keyed_apart():
        seen["here"] = cache_key.custom_hook()
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            seen["other thread"] = pool.submit(cache_key.custom_hook).result()
    first = _program_store.generation(where)
    assert seen["here"].endswith(f"{_program_store.fingerprint()}/{first}") and seen["here"] != plain
    assert seen["other thread"] == plain == cache_key.custom_hook()
    assert _program_store.generation(where) == first  # kept in the folder

    for i in range(3):
        (where / f"{i}.bin").write_bytes(b"x" * 10)
    monkeypatch.setattr(_program_store, "MAX_BYTES", 25)
    _program_store._evict(where)  # removes the oldest file
    assert len(list(where.glob("*.bin"))) == 2 and _program_store.generation(where) != first
    second = _program_store.generation(where)
    _program_store._evict(where)  # nothing to remove: the same generation
    assert _program_store.generation(where) == second
    (where / _program_store.GENERATION_FILE).unlink()
    assert _program_store.generation(where) not in (first, second)


def test_the_store_follows_tracing_settings_and_refuses_changed_code_or_constants(monkeypatch):
    """Programs were filed under the tracing settings read at a process's first fit, so a setting
    changed later (the PRNG implementation) filed, and loaded, programs under the wrong key, and
    the in-memory cache ignored the change; a package constant changed at run time, or a source
    file edited after the import, had the store file the process's programs for every later one."""
    from bayesgmm import _program_store, _stats

    monkeypatch.setattr(_program_store, "ENABLED", True)
    before_fp = _program_store.fingerprint()
    program = _compile.CompiledProgram(_stats.suff_features, static_argnames=("covariance_type",))
    x = np.ones((5, 2))
    key = program._key((x,), {"covariance_type": "full"})
    partitionable = jax.config.jax_threefry_partitionable
    try:
        jax.config.update("jax_threefry_partitionable", not partitionable)
        assert _program_store.fingerprint() != before_fp
        assert program._key((x,), {"covariance_type": "full"}) != key
    finally:
        jax.config.update("jax_threefry_partitionable", partitionable)
    assert _program_store.fingerprint() == before_fp
    if jax.config.jax_compilation_cache_dir is None:
        return  # the store is off altogether here; the checks below need it on
    assert _program_store.folder() is not None
    monkeypatch.setattr(_stats, "PRECISE_THRESHOLD", 1e-2)
    assert _program_store.folder() is None  # a constant as the files do not say
    monkeypatch.undo()
    monkeypatch.setattr(_program_store, "ENABLED", True)
    assert _program_store.folder() is not None
    path = next(iter(_program_store._SOURCE[1]))
    mtime, size = _program_store._SOURCE[1][path]
    monkeypatch.setitem(_program_store._SOURCE[1], path, (mtime - 1, size))  # as if edited since the import
    assert _program_store.folder() is None


def test_compiled_programs_run_one_at_a_time_across_threads(faithful):
    """jaxlib splits large batched LAPACK calls over XLA's thread pool and waits there for the
    pieces: fit_em beside fit_vb (missing values, D = 6) or two fit_gibbs on a user's two threads
    each waited for pieces queued behind the other's, forever, on two cores. A program now runs
    only while it holds ``_compile.RUN_LOCK``: a fit on another thread waits for it."""
    import threading

    bg.fit_em(faithful, 2, seed=0)  # compiled (or loaded) first: the thread below only runs
    done = threading.Event()
    worker = threading.Thread(target=lambda: (bg.fit_em(faithful, 2, seed=0), done.set()))
    with _compile.RUN_LOCK:
        worker.start()
        assert not done.wait(1.0)  # its program waits for the lock
    worker.join(120)
    assert done.is_set()


INTERRUPTED_RUNS_SCRIPT = r"""
import os, signal, threading, time
from bayesgmm import _chains

ended = []

def run(r):
    time.sleep(1.5)
    ended.append(time.monotonic())
    return r

def press_ctrl_c_twice():
    for _ in range(2):
        time.sleep(0.3)
        os.kill(os.getpid(), signal.SIGINT)

threading.Thread(target=press_ctrl_c_twice).start()
try:
    _chains.run_every(run, 2)
except KeyboardInterrupt:
    caught = time.monotonic()
    print(len(ended), all(e <= caught for e in ended))
"""


def test_an_interrupt_waits_for_the_chain_runs_the_lock_covers():
    """A sampler's caller holds ``RUN_LOCK`` while its runs of chains run on threads without it.
    Ctrl-C pressed twice used to break the wait for them: the lock was released with the chains
    still running, and the user's next fit ran beside them (the hang the lock prevents). Every
    run ends before the interrupt propagates now (in a subprocess: the signal goes to its main
    thread)."""
    proc = subprocess.run([sys.executable, "-c", INTERRUPTED_RUNS_SCRIPT], capture_output=True, text=True, timeout=120)
    assert proc.stdout.split() == ["2", "True"], proc.stdout + proc.stderr


def test_an_error_while_compiling_together_propagates_without_waiting_for_the_other_compilation():
    """Ctrl-C during a sampler's first call (its two programs compile at once) waited for the
    background compilation to end, seconds later; the error propagates at once now."""
    import time

    class Background:  # the first program: its compilation takes 3 s on the other thread
        out_shapes = None

        def compile_in_background(self, executor, *args, **static):
            return None, executor.submit(time.sleep, 3.0)

    class Failing:  # the second: interrupted while it compiles here
        def compile(self, *args, **static):
            raise KeyboardInterrupt

    began = time.perf_counter()
    with pytest.raises(KeyboardInterrupt):
        _compile.compile_together(Background(), (), {}, Failing(), lambda outputs: (), {})
    assert time.perf_counter() - began < 1.5


def test_jitted_helpers_run_one_at_a_time_across_threads():
    """``_compile.jit`` programs (the streaming fits', the observed information's) only took the
    tracing lock and returned before running: two streaming fits with missing values (D = 6) on a
    user's two threads hung in jaxlib's split LAPACK calls, as the samplers had. A call now runs
    under ``RUN_LOCK`` to its end; inside a scope holding the lock (a streaming pass) it only
    dispatches, and the scope waits."""
    import threading

    doubled = _compile.jit(lambda a: a * 2.0)
    x = jnp.arange(3.0)
    np.testing.assert_array_equal(doubled(x), 2 * x)  # compiled here first: the thread below only runs
    done = threading.Event()
    worker = threading.Thread(target=lambda: (doubled(x), done.set()))
    with _compile.RUN_LOCK:
        worker.start()
        assert not done.wait(1.0)  # its program waits for the lock
    worker.join(60)
    assert done.is_set()
    assert not _compile.holding()
    with _compile.running():
        assert _compile.holding()
        np.testing.assert_array_equal(doubled(x), 2 * x)
    assert not _compile.holding()
