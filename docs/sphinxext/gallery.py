"""How the example gallery runs the scripts in ``examples/`` and collects their figures.

Each example is a command-line script that writes its PNG figures into ``--out``. The gallery
runs it with an output folder of its own (``docs/_build/gallery_output/<name>``) and shows the
figures it wrote there, in the order it wrote them.
"""

from __future__ import annotations

import os
import pathlib
import shutil

from sphinx_gallery.scrapers import figure_rst

DOCS = pathlib.Path(__file__).resolve().parents[1]
OUTPUT = DOCS / "_build" / "gallery_output"

# The quick gallery (what the test suite builds) runs one example, on a subset of its data.
QUICK_EXAMPLE = "em_steps"
QUICK_ARGUMENTS = {QUICK_EXAMPLE: ["--num-obs", "120", "--iterations", "0", "1", "--max-iter", "60", "--dpi", "60"]}


def mode() -> str:
    """``full`` (every example, default arguments), ``quick`` or ``off``; from ``BAYESGMM_DOCS_GALLERY``."""
    value = os.environ.get("BAYESGMM_DOCS_GALLERY", "full")
    if value not in ("full", "quick", "off"):
        raise ValueError(f"BAYESGMM_DOCS_GALLERY={value!r}: use 'full', 'quick' or 'off'")
    return value


def plot_gallery() -> bool:
    return mode() != "off"


def filename_pattern() -> str:
    return rf"/{QUICK_EXAMPLE}\.py$" if mode() == "quick" else r"\.py$"


def _output_folder(src_file) -> pathlib.Path:
    return OUTPUT / pathlib.Path(src_file).stem


def example_arguments(gallery_conf, script_vars) -> list[str]:
    """The command-line arguments of one example: its output folder (emptied first), and in
    quick mode the small run."""
    name = pathlib.Path(script_vars["src_file"]).stem
    out = _output_folder(script_vars["src_file"])
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    extra = QUICK_ARGUMENTS.get(name, []) if mode() == "quick" else []
    return [*extra, "--out", str(out)]


def written_figures(block, block_vars, gallery_conf) -> str:
    """Image scraper: move the PNGs the example wrote into the gallery's image paths."""
    out = _output_folder(block_vars["src_file"])
    written = sorted(out.glob("*.png"), key=lambda p: p.stat().st_mtime_ns) if out.is_dir() else []
    shown = []
    for path, target in zip(written, block_vars["image_path_iterator"]):
        shutil.move(path, target)
        shown.append(target)
    return figure_rst(shown, gallery_conf["src_dir"]) if shown else ""
