"""Architecture rules that keep the code base honest."""

import ast
import pathlib
import subprocess
import sys

import pytest

import bayesgmm as bg

PKG = pathlib.Path(bg.__file__).parent
FITTERS = ("em", "streaming", "vb", "svi", "mcmc")


def imported_modules(path: pathlib.Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level == 1:
                names.add((node.module or "").split(".")[0])
                names.update(a.name for a in node.names if node.module is None)
            elif node.module and node.module.startswith("bayesgmm"):
                names.add(node.module.split(".")[1] if "." in node.module else "")
        elif isinstance(node, ast.Import):
            names.update(a.name.split(".")[1] for a in node.names if a.name.startswith("bayesgmm."))
    return names


@pytest.mark.parametrize("fitter", FITTERS)
def test_fitters_do_not_import_each_other(fitter):
    path = PKG / f"{fitter}.py"
    if not path.exists():
        pytest.skip(f"{fitter}.py not present")
    others = set(FITTERS) - {fitter}
    assert not imported_modules(path) & others


def test_import_is_light():
    """`import bayesgmm` must not pull in ArviZ, matplotlib, pandas or scikit-learn."""
    code = "import sys, bayesgmm; print(sorted(m for m in ('arviz', 'matplotlib', 'pandas', 'sklearn') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_public_api_is_explicit():
    for name in bg.__all__:
        assert hasattr(bg, name), name
    assert len(bg.__all__) <= 26
