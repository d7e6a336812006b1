"""Architecture rules that keep the code base honest (the layering of DESIGN.md, issue 12).

* engines (``em``, ``streaming``, ``vb``, ``svi``, ``mcmc``) never import one another;
* no import cycles between the package's modules (lazy imports inside functions included);
* no module reaches for another module's private names (``from .x import _name``, ``x._name``);
* views compute nothing: ``plotting`` imports no engine and no experiment;
* every public module says what it exports (``__all__``), and every exported name exists;
* the code passes the linter configured in pyproject.toml (ruff), when ruff is installed.
"""

import ast
import json
import os
import pathlib
import shutil
import subprocess
import sys

import pytest

import bayesgmm as bg

PKG = pathlib.Path(bg.__file__).parent
MODULES = {p.stem: p for p in PKG.glob("*.py")}
FITTERS = ("em", "streaming", "vb", "svi", "mcmc")
EXPERIMENTS = ("experiments", "selection", "calibration", "uncertainty", "cli", "estimator")


def _imports(path: pathlib.Path):
    """(module imported, names taken from it, private attribute uses) for every relative import."""
    tree = ast.parse(path.read_text())
    modules, private = set(), []
    aliases = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.level == 1 or (node.module or "").startswith("bayesgmm")):
            module = node.module or ""
            module = module.split(".", 1)[1] if module.startswith("bayesgmm.") else ("" if module == "bayesgmm" else module)
            if not module:  # from . import x
                for a in node.names:
                    modules.add(a.name)
                    aliases[a.asname or a.name] = a.name
            else:
                target = module.split(".")[0]
                modules.add(target)
                private += [(target, a.name) for a in node.names if a.name.startswith("_") and not a.name.startswith("__")]
        elif isinstance(node, ast.Import):
            modules.update(a.name.split(".")[1] for a in node.names if a.name.startswith("bayesgmm."))
    for node in ast.walk(tree):
        if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in aliases
                and node.attr.startswith("_") and not node.attr.startswith("__")):
            private.append((aliases[node.value.id], node.attr))
    return modules & set(MODULES), private


GRAPH = {name: _imports(path) for name, path in MODULES.items()}


@pytest.mark.parametrize("fitter", FITTERS)
def test_fitters_do_not_import_each_other(fitter):
    assert not GRAPH[fitter][0] & (set(FITTERS) - {fitter})


def test_no_import_cycles():
    """Tarjan's strongly connected components over the import graph (``__init__`` excluded)."""
    graph = {m: GRAPH[m][0] - {"__init__", m} for m in MODULES if m != "__init__"}
    index, low, stack, on_stack, cycles, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.add(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for v in graph:
        if v not in index:
            visit(v)
    assert cycles == []


def test_no_module_uses_another_modules_private_names():
    offences = [(m, target, name) for m, (_, private) in GRAPH.items() for target, name in private if target != m]
    assert offences == []


def test_views_compute_nothing():
    assert not GRAPH["plotting"][0] & (set(FITTERS) | set(EXPERIMENTS))


def test_public_modules_declare_their_exports():
    public = [m for m in MODULES if not m.startswith("_")]
    missing = [m for m in public if "__all__" not in MODULES[m].read_text()]
    assert missing == []


def test_import_is_light():
    """`import bayesgmm` must not pull in ArviZ, matplotlib, pandas or scikit-learn."""
    code = "import sys, bayesgmm; print(sorted(m for m in ('arviz', 'matplotlib', 'pandas', 'sklearn') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_every_public_module_is_an_attribute_of_the_package():
    """``bg.plotting.plot_num_components(...)`` (as the docs write it) raised AttributeError in a
    fresh process: the modules that ``import bayesgmm`` leaves out load on first use instead."""
    code = ("import json, pkgutil, bayesgmm as bg\n"
            "names = [m.name for m in pkgutil.iter_modules(bg.__path__) if not m.name.startswith('_')]\n"
            "print(json.dumps([[n for n in names if not hasattr(bg, n)], bg.plotting.__name__]))")  # kmeans: the function
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert json.loads(out.strip().splitlines()[-1]) == [[], "bayesgmm.plotting"]


def test_numpyro_is_imported_by_the_engines_that_run_it_only():
    """EM, VB and k-means do not import NumPyro (about a third of the import time); nor does
    loading the samplers' module: NUTS and Gibbs import it where they trace their programs (a
    process whose programs come from the store never does, tests/test_compile_cache.py). The
    program store's digest reads NumPyro's version without importing it, so it is the same
    whether or not a process has imported NumPyro (else EM's stored programs would be missed
    after a NumPyro engine ran first)."""
    code = (
        "import sys, json, warnings; warnings.simplefilter('ignore'); import bayesgmm as bg\n"
        "from bayesgmm import _program_store\n"
        "seen = {'import': 'numpyro' in sys.modules}\n"
        "x = bg.datasets.load_faithful()\n"
        "bg.fit_em(x, 2, n_init=1); bg.fit_vb(x, 2, n_init=1); bg.kmeans(x, 2)\n"
        "seen['em, vb, kmeans'] = 'numpyro' in sys.modules\n"
        "before = _program_store.fingerprint(); _program_store._process_fingerprint.cache_clear()\n"
        "seen['fit_mcmc'] = bg.fit_mcmc.__module__ + ' ' + bg.fit_gibbs.__module__\n"
        "seen['after'] = 'numpyro' in sys.modules\n"
        "import numpyro\n"
        "seen['same digest'] = _program_store.fingerprint() == before\n"
        "print(json.dumps(seen))"
    )
    env = {k: v for k, v in os.environ.items() if k != "BAYESGMM_COMPILE_CACHE"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env).stdout
    assert json.loads(out.strip().splitlines()[-1]) == {
        "import": False, "em, vb, kmeans": False, "fit_mcmc": "bayesgmm.mcmc bayesgmm.gibbs", "after": False,
        "same digest": True}


def test_public_api_is_explicit():
    for name in bg.__all__:
        assert hasattr(bg, name), name
    assert len(bg.__all__) <= 29  # curated: a new top-level name is a decision, not a side effect


@pytest.mark.skipif(shutil.which("ruff") is None and not (pathlib.Path(sys.executable).parent / "ruff").exists(),
                    reason="ruff is not installed (pip install '.[test]')")
def test_ruff_is_clean():
    ruff = shutil.which("ruff") or str(pathlib.Path(sys.executable).parent / "ruff")
    root = PKG.parent
    out = subprocess.run([ruff, "check", "--no-cache", "bayesgmm", "tests", "benchmarks", "examples", "docs"], cwd=root,
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


def test_tests_use_no_private_names_of_the_package():
    """Tests reach the package through its names; private modules (unit tests of ``_stats`` and
    the like) are fine, private names inside a module are not."""
    import re

    public_modules = "|".join(m for m in MODULES if not m.startswith("_"))
    namedtuple_api = ("_replace", "_fields", "_asdict", "_make")
    attribute = re.compile(rf"(?<![\w.])(?:bg\.)?(?:{public_modules})\.(_(?!_)[a-z]\w*)")
    imported = re.compile(rf"from bayesgmm\.(?:{public_modules}) import ([^\n]*)")
    offences = []
    for path in sorted((PKG.parent / "tests").glob("*.py")):
        text = path.read_text()
        names = [n.strip().split(" as ")[0] for line in imported.findall(text) for n in line.strip("()").split(",")]
        found = attribute.findall(text) + [n for n in names if n.startswith("_") and not n.startswith("__")]
        offences += [f"{path.name}: {name}" for name in found if name not in namedtuple_api]
    assert offences == []
