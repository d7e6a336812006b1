"""The documentation site builds without a warning, and its API reference lists every public name.

The site is built once per test session (``sphinx-build -W``) in quick gallery mode: one example
runs on a subset of its data, so that the gallery's runner and figure scraper are exercised;
``tests/test_examples.py`` runs every example. Without building it, numpydoc's validator checks
that every public function, class, method and property documents each of its parameters.
"""

import dataclasses
import functools
import importlib
import inspect
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


CHECKED_CODES = ("GL08", "PR01", "PR02", "PR07")  # no docstring; parameter undocumented, unknown, undescribed


def public_modules():
    """The package and each of its modules whose name does not start with an underscore."""
    yield bayesgmm
    for info in pkgutil.iter_modules(bayesgmm.__path__):
        if not info.name.startswith("_"):
            yield importlib.import_module(f"bayesgmm.{info.name}")


def record_fields(cls):
    """The fields of a NamedTuple or dataclass record (its constructor's parameters), else None."""
    if dataclasses.is_dataclass(cls):
        return [field.name for field in dataclasses.fields(cls) if field.init]
    if issubclass(cls, tuple) and hasattr(cls, "_fields"):
        return list(cls._fields)
    return None


def documented_objects() -> dict:
    """Dotted name -> object for every public function and class, once each, under the public
    module that defines it (or, for a name defined in an underscore module, the first public module
    that exports it), and for every public method, property, classmethod and staticmethod those
    classes define themselves.

    Left out: names re-exported from another public module (checked there); constants and modules
    in ``__all__``; inherited members; ``__init__``, whose parameters numpydoc checks against the
    class docstring when it validates the class; plain class attributes (dataclass defaults,
    constants such as a distribution's ``support``), which have no docstring of their own; and
    NamedTuple field accessors, whose docstrings Python generates ("Alias for field number 0"):
    the class docstring documents the fields instead (see :func:`record_problems`).
    """
    modules = list(public_modules())
    public = {module.__name__ for module in modules}
    objects, seen = {}, set()
    for module in modules:
        for name in module.__all__:
            obj = getattr(module, name)  # bayesgmm.GaussianMixture imports scikit-learn here
            if not (inspect.isclass(obj) or inspect.isroutine(inspect.unwrap(obj))):
                continue  # constants and modules; a jitted function unwraps to its Python function
            if (obj.__module__ in public and obj.__module__ != module.__name__) or id(obj) in seen:
                continue
            seen.add(id(obj))
            objects[f"{module.__name__}.{name}"] = obj
            if inspect.isclass(obj):
                objects.update({f"{module.__name__}.{name}.{member}": getattr(obj, member)
                                for member, value in vars(obj).items()
                                if not member.startswith("_") and (inspect.isfunction(value) or isinstance(
                                    value, (property, functools.cached_property, classmethod, staticmethod)))})
    return objects


def record_problems(cls) -> list[str]:
    """A record's fields are its constructor's parameters; numpydoc looks for them in the
    Parameters section only, but a record may document them as Attributes. Each field must be in
    one of the two, with a description."""
    from numpydoc.docscrape import NumpyDocString

    doc = NumpyDocString(inspect.getdoc(cls) or "")  # not ClassDoc, which fills Attributes in itself
    described = {}
    for section in ("Parameters", "Other Parameters", "Attributes"):
        for entry in doc[section]:
            for field in entry.name.split(", "):
                described[field] = described.get(field) or any(line.strip() for line in entry.desc)
    missing = [field for field in record_fields(cls) if field not in described]
    bare = [field for field in record_fields(cls) if described.get(field) is False]
    return ([f"PR01: fields {missing} not documented (Parameters or Attributes)"] if missing else []) + [
        f'PR07: field "{field}" has no description' for field in bare]


def test_every_public_name_documents_every_parameter():
    """numpydoc's own checks on every public name: every function and class in a public module's
    ``__all__`` (the scikit-learn estimator included), and every public method and property of those
    classes, has a docstring that documents each parameter, with a description."""
    from numpydoc.validate import Validator, get_doc_object, validate

    objects = documented_objects()
    problems = {}
    for name, obj in objects.items():
        errors = validate(name)["errors"]
        fields = record_fields(obj) if inspect.isclass(obj) else None
        found = [f"{code}: {message}" for code, message in errors
                 if code in CHECKED_CODES and not (fields is not None and code == "PR01")]
        found += record_problems(obj) if fields is not None else []
        # numpydoc skips PR07 when the type is a set of options ({"full", "diag"}); check those too
        found += [f'PR07: Parameter "{parameter}" has no description'
                  for parameter, (kind, desc) in Validator(get_doc_object(obj)).doc_all_parameters.items()
                  if "{" in kind and not any(line.strip() for line in desc)]
        problems[name] = sorted(set(found))
    assert len(objects) > 150
    for name in ("bayesgmm.em.fit_em", "bayesgmm.estimator.GaussianMixture", "bayesgmm.results.FitResult.bic",
                 "bayesgmm.params.Prior.default", "bayesgmm.results.FitResult.num_components",
                 "bayesgmm.model.log_joint", "bayesgmm.set_compilation_cache", "bayesgmm.datasets.MixtureData"):
        assert name in objects, name
    failing = {name: errors for name, errors in problems.items() if errors}
    assert not failing, "\n".join(f"{name}: {'; '.join(errors)}" for name, errors in failing.items())
