"""Ctrl-C while the command line is still starting.

``import bayesgmm`` loads JAX, NumPyro and XLA for a few seconds before :mod:`bayesgmm.cli` can
install its interrupt watcher. A ``KeyboardInterrupt`` raised in that window prints an import
traceback, or is swallowed by a garbage-collector callback and the command then runs to the
end. When the process is the ``bayesgmm`` executable or ``python -m bayesgmm``, the package's
first statement therefore installs a handler that exits at once with status 130 and one line:
nothing has been written yet. :func:`bayesgmm.cli.console_main` replaces it with the watcher.
"""

from __future__ import annotations

import os
import signal
import sys

#: What the command line prints after Ctrl-C (and exits with status 130).
INTERRUPTED = "bayesgmm: interrupted (Ctrl-C); no files were written."


def launched_as_command_line() -> bool:
    """True in the ``bayesgmm`` executable and in ``python -m bayesgmm``."""
    if sys.argv and os.path.basename(sys.argv[0]) in ("bayesgmm", "bayesgmm.exe"):
        return True
    argv = getattr(sys, "orig_argv", [])
    return any(flag == "-m" and module == "bayesgmm" for flag, module in zip(argv, argv[1:]))


def _exit_interrupted(signum, frame) -> None:
    try:
        sys.stderr.write(INTERRUPTED + "\n")
        sys.stderr.flush()
    finally:
        os._exit(130)


def exit_on_interrupt_while_starting() -> None:
    """Install the start-up SIGINT handler (not where SIGINT is ignored, as for a background job
    of a non-interactive shell, nor outside the main thread)."""
    try:
        if signal.getsignal(signal.SIGINT) is not signal.SIG_IGN:
            signal.signal(signal.SIGINT, _exit_interrupted)
    except ValueError:  # not the main thread
        pass
