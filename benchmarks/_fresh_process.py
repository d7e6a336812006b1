"""What the fresh-process benchmarks share: child processes that import bayesgmm as an installed
package does, from cached bytecode.

pip compiles an installed package's modules to bytecode when it installs them (as it did the
site-packages of JAX and NumPyro), so a user's process never compiles bayesgmm's sources. Run from
a source checkout (an editable install) with ``PYTHONDONTWRITEBYTECODE`` set, as on this project's
development VM, every fresh process would compile them again: about 0.2 s of ``import bayesgmm``
(0.60 s instead of 0.79 s, medians of 5, 2026-12-06), which the measurements would charge to
bayesgmm and not to the plain NumPyro run they compare with.

Imported by ``first_fit_latency.py``, ``shared_machine.py`` and ``em_vs_sklearn.py`` (run as
scripts, so this folder is on ``sys.path``).
"""

from __future__ import annotations

import compileall
import os
import pathlib

_COMPILED = False


def child_env(**variables: str) -> dict:
    """The environment for a fresh benchmark process: this one's, with ``variables`` set, and
    bytecode written and read as for an installed package (``PYTHONDONTWRITEBYTECODE`` removed).
    The first call compiles bayesgmm's modules to bytecode (as pip does when it installs them)."""
    global _COMPILED
    if not _COMPILED:
        import bayesgmm

        compileall.compile_dir(str(pathlib.Path(bayesgmm.__file__).parent), quiet=1)
        _COMPILED = True
    env = dict(os.environ, **variables)
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    return env


def bytecode_note() -> str:
    """One line for a benchmark's header: how its child processes import bayesgmm."""
    return ("# child processes import bayesgmm from cached bytecode, as an installed package does "
            "(PYTHONDONTWRITEBYTECODE unset for them)")
