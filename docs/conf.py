"""Sphinx configuration of the bayesgmm documentation site.

Build it with ``sphinx-build -W -b html docs docs/_build/html`` (after ``pip install ".[docs]"``).
The example gallery runs every script in ``examples/`` and shows what it prints and draws;
``BAYESGMM_DOCS_GALLERY`` chooses how much of it runs: ``full`` (default: every example with
its own default arguments), ``quick`` (only ``em_steps.py``, on a subset: what the test suite
builds) or ``off`` (code only).
"""

import os
import pathlib
import sys

DOCS = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(DOCS / "sphinxext"))
sys.path.insert(0, str(DOCS.parent))
os.environ.setdefault("BAYESGMM_COMPILE_CACHE", "0")  # building the docs leaves the user's cache alone
os.environ.setdefault("MPLBACKEND", "Agg")

import gallery  # noqa: E402

import bayesgmm  # noqa: E402

project = "bayesgmm"
author = "the bayesgmm developers"
copyright = "2026, the bayesgmm developers"
release = version = bayesgmm.__version__

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.mathjax",
    "sphinx.ext.viewcode",
    "numpydoc",
    "myst_parser",
    "sphinx_gallery.gen_gallery",
]

source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
root_doc = "index"
exclude_patterns = ["_build", "generated/*.examples", "sg_execution_times.rst", "**/sg_execution_times.rst"]
templates_path = ["_templates"]

# MyST: $...$ and $$...$$ maths, ::: fences, heading anchors for links between pages
myst_enable_extensions = ["dollarmath", "amsmath", "colon_fence", "deflist"]
myst_heading_anchors = 3

# API reference: one page per public name, from its numpydoc docstring
autosummary_generate = True
autosummary_imported_members = False
# scikit-learn generates set_fit_request (metadata routing, for fit's sample_weight); its docstring
# refers to scikit-learn's own glossary
autodoc_default_options = {"member-order": "bysource", "exclude-members": "set_fit_request"}
autodoc_typehints = "none"  # numpydoc's Parameters sections say the types
numpydoc_show_class_members = False  # the class template lists members itself
numpydoc_class_members_toctree = False
numpydoc_xref_param_type = False
add_module_names = False

html_theme = "pydata_sphinx_theme"
html_title = f"bayesgmm {release}"
html_theme_options = {
    "navigation_with_keys": False,
    "show_toc_level": 2,
    "secondary_sidebar_items": ["page-toc"],
    "footer_start": ["copyright"],
    "footer_end": ["sphinx-version"],
}
html_static_path = []
html_show_sourcelink = False

sphinx_gallery_conf = {
    "examples_dirs": "../examples",
    "gallery_dirs": "auto_examples",
    "filename_pattern": gallery.filename_pattern(),
    "ignore_pattern": r"__init__\.py|/output/",
    "plot_gallery": gallery.plot_gallery(),
    "reset_argv": "gallery.example_arguments",
    "image_scrapers": ("gallery.written_figures",),
    "within_subsection_order": "FileNameSortKey",
    "abort_on_example_error": True,
    "download_all_examples": False,
    "remove_config_comments": True,
    "capture_repr": (),
    "show_memory": False,
    "min_reported_time": 1e9,  # times depend on the machine; the pages need not show them
    "write_computation_times": False,
}
