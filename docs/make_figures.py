"""Regenerate every figure in ``docs/`` from the code, so that they show what it produces.

    python docs/make_figures.py            # all six (the SBC run takes longest)
    python docs/make_figures.py engines    # a selection: engines, selection, mclust, em_uncertainty, sbc,
                                           # missing_values

Each figure is made by the command or example a reader would run (the demo, ``bayesgmm select``,
``examples/em_uncertainty.py``, ``examples/sbc_calibration.py``, ``examples/missing_values.py``) in a temporary folder and
copied here.
"""

from __future__ import annotations

import runpy
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

DOCS = Path(__file__).resolve().parent
EXAMPLES = DOCS.parent / "examples"


def _cli(*args: str, out: Path) -> None:
    subprocess.run([sys.executable, "-m", "bayesgmm", *args, "--out", str(out)], check=True)


def _example(name: str, out: Path) -> None:
    module = runpy.run_path(str(EXAMPLES / f"{name}.py"))
    module["main"](["--out", str(out)])


FIGURES = {
    # the demo: Old Faithful with every engine on one set of axes
    "engines": lambda out: _cli("demo", "--no-progress", out=out),
    # BIC of every structure and K on Old Faithful
    "selection": lambda out: _cli("select", "--dataset", "faithful", "-k", "1", "2", "3", "4", "5", "--covariance-types",
                                  "full", "diag", "spherical", "tied", out=out),
    # mclust's 14 covariance models
    "mclust": lambda out: _cli("select", "--dataset", "faithful", "-k", "1", "2", "3", "4", "5", "--covariance-types",
                               "all", out=out),
    "em_uncertainty": lambda out: _example("em_uncertainty", out),
    "sbc": lambda out: _example("sbc_calibration", out),
    "missing_values": lambda out: _example("missing_values", out),
}
#: The file each step writes, and its name in docs/.
FILES = {"engines": ("engines.png", "engines.png"), "selection": ("selection_bic.png", "selection_bic.png"),
         "mclust": ("selection_bic.png", "selection_mclust.png"),
         "em_uncertainty": ("em_uncertainty.png", "em_uncertainty.png"), "sbc": ("sbc_ranks.png", "sbc_ranks.png"),
         "missing_values": ("missing_values.png", "missing_values.png")}


def main(names) -> None:
    unknown = sorted(set(names) - set(FIGURES))
    if unknown:
        raise SystemExit(f"unknown figure(s) {unknown}; choose from {sorted(FIGURES)}")
    for name in names or FIGURES:
        start = time.perf_counter()
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / name
            FIGURES[name](out)
            made, target = FILES[name]
            shutil.copyfile(out / made, DOCS / target)
        print(f"docs/{FILES[name][1]} ({time.perf_counter() - start:.0f} s)")


if __name__ == "__main__":
    main(sys.argv[1:])
