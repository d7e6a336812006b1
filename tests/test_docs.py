"""The documentation site builds without a warning, and its API reference lists every public name.

The site is built once per test session (``sphinx-build -W``) in quick gallery mode: one example
runs on a subset of its data, so that the gallery's runner and figure scraper are exercised;
``tests/test_examples.py`` runs every example.
"""

import importlib
import os
import pathlib
import pkgutil
import re
import shutil
import subprocess
import sys
import zlib

import pytest

import bayesgmm

ROOT = pathlib.Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
GUIDES = ("getting_started", "model", "choosing", "workflow", "large_data", "numerics", "api", "changelog")

pytest.importorskip("sphinx", reason="the documentation tools are in the test extra: pip install '.[test]'")


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """Build a copy of ``docs/`` and ``examples/`` (the gallery writes beside its sources, and a
    user's full build in ``docs/`` is left alone)."""
    out = tmp_path_factory.mktemp("site")
    generated = shutil.ignore_patterns("_build", "generated", "auto_examples", "output", "__pycache__")
    shutil.copytree(DOCS, out / "docs", ignore=generated)
    shutil.copytree(ROOT / "examples", out / "examples", ignore=generated)
    env = dict(os.environ, BAYESGMM_DOCS_GALLERY="quick", BAYESGMM_COMPILE_CACHE="0", MPLBACKEND="Agg",
               PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run([sys.executable, "-m", "sphinx", "-W", "--keep-going", "-b", "html",
                           "-d", str(out / "doctrees"), str(out / "docs"), str(out / "html")],
                          capture_output=True, text=True, env=env, cwd=out, timeout=900)
    return proc, out / "html"


def inventory(html: pathlib.Path) -> dict[str, str]:
    """Object name -> role (``py:function``, ...) from Sphinx's ``objects.inv``."""
    raw = (html / "objects.inv").read_bytes()
    header_end = 0
    for _ in range(4):
        header_end = raw.index(b"\n", header_end) + 1
    entries = {}
    for line in zlib.decompress(raw[header_end:]).decode().splitlines():
        match = re.match(r"(.+?)\s+(\S+:\S+)\s+(-?\d+)\s+(\S*)\s+(.*)", line)
        if match:
            entries[match.group(1)] = match.group(2)
    return entries


def public_names():
    """(module, name) for every name in every public module's ``__all__``, and the package's."""
    yield bayesgmm, "bayesgmm"
    for info in pkgutil.iter_modules(bayesgmm.__path__):
        if not info.name.startswith("_"):
            module = importlib.import_module(f"bayesgmm.{info.name}")
            for name in module.__all__:
                yield module, name
    for name in bayesgmm.__all__:
        yield bayesgmm, name


def test_the_site_builds_without_warnings(site):
    proc, html = site
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-5000:]
    assert "WARNING" not in log and "ERROR" not in log, log[-5000:]
    for page in GUIDES + ("index", "auto_examples/index"):
        assert (html / f"{page}.html").is_file(), page


def test_every_public_name_is_in_the_api_reference(site):
    _, html = site
    entries = inventory(html)
    documented = {}
    for name, role in entries.items():
        if role.startswith("py:") and name.startswith("bayesgmm"):
            parts = name.split(".")
            try:
                obj = importlib.import_module(name) if role == "py:module" else None
            except ImportError:
                obj = None
            if obj is None:
                try:
                    obj = importlib.import_module(".".join(parts[:-1]))
                    obj = getattr(obj, parts[-1])
                except (ImportError, AttributeError):
                    continue
            documented[id(obj)] = name
    missing = []
    for module, name in public_names():
        qualified = name if module is bayesgmm and name == "bayesgmm" else f"{module.__name__}.{name}"
        obj = bayesgmm if qualified == "bayesgmm" else getattr(module, name)
        if qualified not in entries and id(obj) not in documented:
            missing.append(qualified)
    assert not missing, f"public names missing from docs/api.rst: {missing}"


def test_the_gallery_ran_an_example_and_shows_its_figure_and_output(site):
    _, html = site
    page = (html / "auto_examples" / "em_steps.html").read_text()
    assert re.search(r'<img[^>]+src="[^"]*sphx_glr_em_steps_\d+\.png"', page)
    assert "sphx-glr-script-out" in page  # what the script printed
    for name in ("em_uncertainty", "foot_size", "kmeans_vs_gmm", "missing_values", "sbc_calibration"):
        assert (html / "auto_examples" / f"{name}.html").is_file(), name  # shown, not run, in quick mode


def test_the_readme_links_to_the_site_and_says_how_to_build_it():
    readme = (ROOT / "README.md").read_text()
    assert "docs/_build/html/index.html" in readme
    assert "sphinx-build -W -b html docs docs/_build/html" in readme
    assert 'pip install ".[docs]"' in readme


def test_the_main_api_documents_every_parameter():
    """numpydoc's own checks on what most users call: every function at the package's top level
    and every public method of FitResult documents each of its parameters, with a description."""
    import inspect

    from numpydoc.validate import validate

    names = [f"{obj.__module__}.{obj.__qualname__}" for obj in map(lambda n: getattr(bayesgmm, n), bayesgmm.__all__)
             if inspect.isfunction(obj)]
    names += [f"bayesgmm.results.FitResult.{name}" for name, member in vars(bayesgmm.FitResult).items()
              if not name.startswith("_") and inspect.isfunction(member)]
    names.append("bayesgmm.params.Prior.default")
    problems = {name: [f"{code}: {message}" for code, message in validate(name)["errors"]
                       if code in ("GL08", "PR01", "PR02", "PR07")] for name in names}
    assert len(names) > 30
    assert not {name: errors for name, errors in problems.items() if errors}
