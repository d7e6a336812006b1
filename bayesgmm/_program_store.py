"""Compiled programs on disk, found by the signature known before tracing.

JAX's persistent compilation cache (on by default, :func:`bayesgmm._compile.configure_default_cache`)
keys an executable by its lowered program, so a new process must still trace and lower each
program to find it there: 1.3-1.6 s of a first NUTS fit on Old Faithful in a process whose
cache is warm. This store keys the serialized executable by what
:class:`bayesgmm._compile.CompiledProgram` knows *before* tracing: the program (its module and
name), its static arguments, the arguments' tree, shapes and dtypes, the XLA options, and a
fingerprint of everything else that shapes the program (the package's own source, the versions
of Python, NumPy, JAX, jaxlib and NumPyro, JAX's tracing configuration, ``XLA_FLAGS``, the
devices and the CPU). A process that finds its program here loads it without tracing.

What is stored, and when:

* only the package's own programs: functions whose code is in the package's files, not lambdas,
  closing over nothing but package functions and modules (:func:`storable`: a decorator's
  wrapper qualifies), whose behaviour the source digest covers; static arguments made of plain
  values (numbers, strings, None and tuples of them, such as the engines' configuration
  records), whose ``repr`` says everything about them;
* only programs XLA compiled in this process (not those JAX's cache served: see
  :func:`jax_cache_hits`), on one CPU device, whose arguments are not placed on a device, and
  without host callbacks (progress bars); sharded programs, ``jax.distributed`` runs and
  accelerators compile as before. A program meant for the store is compiled under a JAX cache
  key of its own (:func:`keyed_apart`: salted with :func:`fingerprint` and the store's
  :func:`generation`), so that JAX's cache cannot serve it the executable an earlier version of
  the package, or this one before the store removed the program's file, compiled for the same
  lowered program, which could not be stored; without that, every later process traced such a
  program again (about 0.5 s for EM on Old Faithful, 1.2 s for NUTS);
* only while the persistent cache is on (``jax_compilation_cache_dir`` set): the store is the
  folder's ``programs`` sub-folder, so the cache's switches (``BAYESGMM_COMPILE_CACHE=0``,
  :func:`bayesgmm.set_compilation_cache`) turn it off too; it keeps the most recently used
  programs, :data:`MAX_BYTES` of them.

A file that cannot be read, or was written for another signature, is ignored (and the program
compiled again). JAX's tracing settings are read at every lookup (a process may change them
between fits). Module constants the programs read while they are traced count as source: while
any of the package's constants differs from its value at import (a test's ``monkeypatch``, a
user's experiment), or any of its files differs from the one imported (an editable install
edited in a live session), the store is off for this process (:func:`folder`), so that it
neither files programs the files do not describe nor loads the files' programs into changed
code. Like JAX's cache, the folder is trusted: a file in it is code this process runs.
"""

from __future__ import annotations

import contextlib
import enum
import functools
import hashlib
import importlib.util
import inspect
import json
import os
import pathlib
import pickle
import platform
import sys
import tempfile
import threading
import zlib

import jax
import jax.monitoring
import numpy as np

from ._files import write_text

#: Version of the files' layout; files of another version are ignored.
FORMAT = 2
#: Sub-folder of the persistent compilation cache's folder.
SUBDIR = "programs"
#: Bytes kept (a program takes up to about 0.8 MB compressed); the least recently used beyond it are removed.
MAX_BYTES = 2**29
#: The file holding the store's :func:`generation`.
GENERATION_FILE = "generation"
#: Tests that inspect what XLA compiles turn the store off.
ENABLED = True


def storable(fn) -> str | None:
    """The stored name of a program's function (``module.qualname``), or None when it is not one
    the store may hold. It must be the package's own code (:func:`_package_code`): a lambda, a
    ``functools.partial``, a function defined elsewhere (even one dressed as a package function
    by ``functools.wraps``), or a closure over anything but package functions and modules reads
    state that the package's source digest does not cover."""
    if not _package_code(fn):
        return None
    return f"{fn.__module__}.{fn.__qualname__}"


_PACKAGE = pathlib.Path(__file__).resolve().parent
#: Modules whose constants set the store's and the compiler's policy (sizes, thresholds, options
#: in the signature), not what a program computes: changing them does not turn the store off.
_POLICY_MODULES = (__name__, __package__ + "._compile")
#: Module constants as first seen (:func:`_constants_as_imported`).
_CONSTANTS: dict = {}


def _package_code(fn, depth: int = 0) -> bool:
    """Whether ``fn`` is a function whose code is in the package's files, not a lambda, and whose
    closure holds only modules and such functions (a decorator's wrapper)."""
    code = getattr(fn, "__code__", None)
    if not inspect.isfunction(fn) or code is None or code.co_name == "<lambda>" or depth > 2:
        return False
    try:
        if not pathlib.Path(code.co_filename).resolve().is_relative_to(_PACKAGE):
            return False
    except (OSError, ValueError):
        return False
    return all(inspect.ismodule(c.cell_contents) or _package_code(c.cell_contents, depth + 1)
               for c in fn.__closure__ or ())


def _plain(value) -> bool:
    if value is None or isinstance(value, (bool, int, float, str, np.integer, np.floating)):
        return True
    if isinstance(value, tuple):
        return all(_plain(v) for v in value)
    return False


def folder() -> pathlib.Path | None:
    """The store's folder, or None when it is off (also off the CPU, tested there only, with
    another default device than JAX's first, and in ``jax.distributed`` runs)."""
    base = jax.config.jax_compilation_cache_dir
    if (not ENABLED or not base or jax.default_backend() != "cpu" or jax.config.jax_default_device is not None
            or jax.process_count() > 1):
        return None
    if not _source_as_imported() or not _constants_as_imported():
        return None  # this process's programs are not those of the package's files
    return pathlib.Path(base) / SUBDIR


def _source_state():
    """The package's source files now: ``(digest of their contents, {path: (mtime_ns, size)})``."""
    digest, stats = hashlib.sha256(), {}
    for path in sorted(_PACKAGE.rglob("*.py")):
        digest.update(path.relative_to(_PACKAGE).as_posix().encode())
        digest.update(path.read_bytes())
        info = path.stat()
        stats[path] = (info.st_mtime_ns, info.st_size)
    return digest.hexdigest(), stats


def _source_as_imported() -> bool:
    """Whether the package's files are still those read when it was imported (an editable
    install edited since, in a live session: programs traced from the old code in memory must not
    be filed under the new files' digest, nor the new files' programs loaded into the old code)."""
    try:
        return all((info := path.stat()).st_mtime_ns == mtime and info.st_size == size
                   for path, (mtime, size) in _SOURCE[1].items())
    except OSError:
        return False


def _module_constants(module) -> dict:
    return {name: value for name, value in vars(module).items()
            if name.isupper() and not name.startswith("_") and _plain(value)}


def _constants_as_imported() -> bool:
    """Whether every module constant of the package (a plain upper-case value) still has the
    value it had when the module was first seen here (at the package's import, or at the first
    use of the store after a later import): a process that changes one at run time (a test's
    monkeypatch, a user's experiment) traces other programs than the files say, and must neither
    file them for every later process nor load the files' programs."""
    changed = False
    for name, module in list(sys.modules.items()):
        if module is None or not (name == __package__ or name.startswith(__package__ + ".")) or name in _POLICY_MODULES:
            continue
        now = _module_constants(module)
        before = _CONSTANTS.setdefault(name, now)
        changed = changed or before != now
    return not changed


def snapshot_constants() -> None:
    """Record the constants of the package's modules imported so far (called at the end of the
    package's import, before any user code can change them)."""
    _constants_as_imported()


@functools.lru_cache(maxsize=1)
def _prepare_runtime() -> None:
    """What lowering would have set up before a program runs: jaxlib loads its LAPACK kernels
    when it lowers the first linear-algebra operation, and a loaded program calling them before
    that crashes the process."""
    from jax._src.lib import lapack

    lapack._lapack.initialize()


_RUNTIME_THREAD: list = []
_RUNTIME_LOCK = threading.Lock()


def _prepare_quietly() -> None:
    """:func:`_prepare_runtime`, its failure left to the caller's own call (:func:`load`), which
    repeats it, rather than printed from the thread."""
    with contextlib.suppress(Exception):
        _prepare_runtime()


def _runtime_prepared_in_background() -> threading.Thread:
    """:func:`_prepare_runtime` on a thread of its own, started once: jaxlib finds the LAPACK
    kernels in SciPy (``scipy.linalg.cython_lapack``), whose import takes about 0.3 s, while the
    first stored program is read and deserialised (neither needs them; only running does)."""
    with _RUNTIME_LOCK:
        if not _RUNTIME_THREAD:
            thread = threading.Thread(target=_prepare_quietly, name="bayesgmm-lapack", daemon=True)
            thread.start()
            _RUNTIME_THREAD.append(thread)
    return _RUNTIME_THREAD[0]


def _cpu() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            lines = [line for line in f if line.startswith(("model name", "flags"))]
        return "".join(sorted(set(lines)))
    except OSError:
        return platform.processor()


def tracing_settings() -> tuple:
    """JAX's settings that change what tracing produces (x64, the default product precision,
    the PRNG implementation, ...), read now: a process may change them between two fits."""
    try:
        from jax._src.config import trace_context

        return tuple(v for v in trace_context() if _plain(v) or isinstance(v, enum.Enum))
    except Exception:  # noqa: BLE001 (a JAX without it: the public switches that change tracing)
        return (jax.config.jax_enable_x64, jax.config.jax_default_matmul_precision)


@functools.lru_cache(maxsize=1)
def _process_fingerprint() -> str:
    """What this process fixes once: the package's source (as imported), the versions, the
    devices and the CPU."""
    parts = (
        _SOURCE[0], sys.version_info[:2], np.__version__, jax.__version__, _jaxlib_version(),
        _numpyro_version(), os.environ.get("XLA_FLAGS", ""),
        tuple((d.platform, d.device_kind) for d in jax.devices()), jax.process_count(), platform.machine(), _cpu(),
    )
    return hashlib.sha256(repr(parts).encode()).hexdigest()


def fingerprint() -> str:
    """What besides the signature shapes a program, as one digest: :func:`_process_fingerprint`
    and JAX's tracing settings now (they were read once per process, so a setting changed
    between two fits filed the later programs under the earlier settings)."""
    return hashlib.sha256(repr((_process_fingerprint(), repr(tracing_settings()))).encode()).hexdigest()


def _numpyro_version() -> str | None:
    """The installed NumPyro's version file, read without importing NumPyro (EM and VB do not
    import it): the digest must not depend on whether this process happened to import it."""
    try:
        spec = importlib.util.find_spec("numpyro")
        return (pathlib.Path(spec.origin).parent / "version.py").read_text() if spec and spec.origin else None
    except (ImportError, OSError, ValueError):
        return None


def _jaxlib_version() -> str:
    import jaxlib

    return getattr(getattr(jaxlib, "version", None), "__version__", "?")


def signature(name: str, static: dict, treedef, leaves: tuple, options) -> str | None:
    """The text a stored program is filed under, or None when the call is not storable (static
    arguments that are not plain values, or arguments placed on devices)."""
    if not all(_plain(v) for v in static.values()):
        return None
    if any(sharding is not None for *_, sharding in leaves):
        return None
    shapes = tuple((tuple(shape), dtype) for shape, dtype, _ in leaves)
    return repr((FORMAT, name, tuple(sorted(static.items())), str(treedef), shapes, options, fingerprint()))


def _path(where: pathlib.Path, text: str) -> pathlib.Path:
    return where / f"{hashlib.sha256(text.encode()).hexdigest()}.bin"


def load(text: str):
    """The executable stored under ``text`` (a ``jax.stages.Compiled``), or None."""
    where = folder()
    if where is None:
        return None
    path = _path(where, text)
    try:
        data = path.read_bytes()
    except OSError:
        return None
    runtime = _runtime_prepared_in_background()
    try:
        from jax.experimental import serialize_executable

        layout, stored_text, payload, in_tree, out_tree = pickle.loads(zlib.decompress(data))
        if layout != FORMAT or stored_text != text:
            return None
        # the programs stored run on one device: the default one (JAX's own choice is every device)
        executable = serialize_executable.deserialize_and_load(payload, in_tree, out_tree,
                                                               execution_devices=jax.devices()[:1])
    except Exception:  # noqa: BLE001 (a damaged or foreign file: compile instead)
        return None
    finally:
        runtime.join()  # before anything can run
    try:
        _prepare_runtime()  # a no-op once the thread has run it (where it failed, it fails here again)
    except Exception:  # noqa: BLE001 (compile instead, as for a damaged file)
        return None
    try:
        os.utime(path)  # most recently used
    except OSError:
        pass
    return executable


_THIS_THREAD = threading.local()
_LISTENING: list = []
_HOOK_LOCK = threading.Lock()


def _install_key_hook() -> bool:
    """Wrap JAX's cache-key hook (``jax._src.cache_key.custom_hook``, hashed into every key of
    its persistent cache) so that it adds this thread's salt, if any. Returns whether the hook
    is in place (a JAX without it: False, and programs compile as before)."""
    try:
        from jax._src import cache_key
    except ImportError:
        return False
    with _HOOK_LOCK:
        hook = getattr(cache_key, "custom_hook", None)
        if hook is None:
            return False
        if not getattr(hook, "_bayesgmm_salted", False):
            def salted() -> str:
                salt = getattr(_THIS_THREAD, "salt", None)
                return hook() if salt is None else f"{hook()}|bayesgmm program store {salt}"

            salted._bayesgmm_salted = True
            cache_key.custom_hook = salted
    return True


@contextlib.contextmanager
def keyed_apart():
    """Within it, this thread's compilations are filed in JAX's persistent cache under keys
    salted with :func:`fingerprint` and the store's :func:`generation`: a program compiled for
    the store is compiled here (and can be stored) unless this version of the package, since the
    store last removed files, put it in JAX's cache already (a program the store refused: one
    with host callbacks). Other threads' keys are unchanged."""
    where = folder()
    if where is None or not _install_key_hook():
        yield
        return
    previous = getattr(_THIS_THREAD, "salt", None)
    _THIS_THREAD.salt = f"{fingerprint()}/{generation(where)}"
    try:
        yield
    finally:
        _THIS_THREAD.salt = previous


def _count_cache_hit(name: str, **kwargs) -> None:
    if name == "/jax/compilation_cache/cache_hits":
        _THIS_THREAD.hits = getattr(_THIS_THREAD, "hits", 0) + 1


def jax_cache_hits() -> int:
    """How many programs this thread has so far taken from JAX's persistent cache. An executable
    loaded from there cannot be serialised again whole (its code would be missing in the process
    that loads it), so :func:`save` is only given programs XLA compiled in this process."""
    if not _LISTENING:
        _LISTENING.append(jax.monitoring.register_event_listener(_count_cache_hit))
    return getattr(_THIS_THREAD, "hits", 0)


def _portable(executable) -> bool:
    """Whether a program may be stored: on one device, and without host callbacks (a progress
    bar's ticks), whose addresses in the compiling process would be meaningless in another."""
    try:
        shardings = jax.tree_util.tree_leaves((executable.input_shardings, executable.output_shardings))
        if len({device for s in shardings for device in s.device_set}) > 1:
            return False
        unloaded = getattr(executable._executable, "_unloaded_executable", None)  # what serialize() stores
        callbacks = getattr(unloaded, "host_callbacks", None)
        return not callbacks if callbacks is not None else "callback" not in executable.as_text()
    except Exception:  # noqa: BLE001
        return False


def save(text: str, executable) -> bool:
    """Store ``executable`` under ``text`` (atomically; nothing on any error). Returns whether it did."""
    where = folder()
    if where is None or not _portable(executable):
        return False
    try:
        from jax.experimental import serialize_executable

        payload, in_tree, out_tree = serialize_executable.serialize(executable)
        # zlib at level 1: a fifth of the size, for about 15 ms per program (7 ms to read)
        data = zlib.compress(pickle.dumps((FORMAT, text, payload, in_tree, out_tree), protocol=pickle.HIGHEST_PROTOCOL), 1)
        where.mkdir(parents=True, exist_ok=True)
        handle, name = tempfile.mkstemp(dir=where, suffix=".tmp")
        try:  # the temporary file goes on any exit, an interrupt between the write and the rename too
            with os.fdopen(handle, "wb") as tmp:
                tmp.write(data)
            os.replace(name, _path(where, text))
        finally:
            pathlib.Path(name).unlink(missing_ok=True)
    except Exception:  # noqa: BLE001 (a program XLA cannot serialise, a full or read-only disk)
        return False
    _evict(where)
    return True


def save_shapes(text: str, shapes) -> bool:
    """Store arrays' shapes and dtypes (a sequence of ``jax.ShapeDtypeStruct``) under ``text``, as
    :func:`save` does a program: what a program's caller would otherwise trace to learn."""
    where = folder()
    if where is None:
        return False
    data = json.dumps({"format": FORMAT, "text": text, "fingerprint": fingerprint(),
                       "shapes": [[list(a.shape), str(a.dtype)] for a in shapes]})
    try:
        where.mkdir(parents=True, exist_ok=True)
        handle, name = tempfile.mkstemp(dir=where, suffix=".tmp")
        try:
            with os.fdopen(handle, "w") as tmp:
                tmp.write(data)
            os.replace(name, _path(where, text).with_suffix(".json"))
        finally:
            pathlib.Path(name).unlink(missing_ok=True)
    except Exception:  # noqa: BLE001 (a full or read-only disk)
        return False
    return True


def load_shapes(text: str):
    """:func:`save_shapes`'s shapes stored under ``text`` for this package and JAX, or None."""
    where = folder()
    if where is None:
        return None
    try:
        record = json.loads(_path(where, text).with_suffix(".json").read_text())
        if record["format"] != FORMAT or record["text"] != text or record["fingerprint"] != fingerprint():
            return None
        return tuple(jax.ShapeDtypeStruct(tuple(shape), np.dtype(dtype)) for shape, dtype in record["shapes"])
    except Exception:  # noqa: BLE001 (none stored, or a damaged file: trace instead)
        return None


def _evict(where: pathlib.Path) -> None:
    """Remove the least recently used files beyond :data:`MAX_BYTES`, and then start a new
    :func:`generation` (JAX's cache may still hold what was removed, under the old one's keys)."""
    removed = False
    try:
        files = sorted(((p.stat(), p) for p in where.glob("*.bin")), key=lambda f: f[0].st_mtime, reverse=True)
        kept = 0
        for stat, path in files:  # newest first
            kept += stat.st_size
            if kept > MAX_BYTES:
                path.unlink(missing_ok=True)
                removed = True
    except OSError:
        pass
    if removed:
        _new_generation(where)


def generation(where: pathlib.Path) -> str:
    """The store's generation: a random token kept in the folder, new whenever the store has
    removed files (:func:`_evict`) or has lost the token (the folder deleted). It salts the JAX
    cache keys of the programs compiled for the store (:func:`keyed_apart`), so that a program the
    store no longer holds misses JAX's cache too, and is compiled and stored again, instead of
    being served from there unstorable to every process."""
    try:
        return (where / GENERATION_FILE).read_text()
    except OSError:
        return _new_generation(where)


def _new_generation(where: pathlib.Path) -> str:
    token = os.urandom(8).hex()
    try:
        where.mkdir(parents=True, exist_ok=True)
        write_text(where / GENERATION_FILE, token)
    except OSError:
        pass
    return token


#: The package's source when it was imported: (digest, {path: (mtime_ns, size)}).
_SOURCE = _source_state()
