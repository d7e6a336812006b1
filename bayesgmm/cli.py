"""The ``bayesgmm`` command line: batch experiments on top of :mod:`bayesgmm.experiments`.

Commands
--------
``demo``
    Old Faithful, every engine: the comparison table printed, figures and fits written.
``fit``
    Fit one engine to a CSV/Parquet file: JSON summary, NetCDF (ArviZ), PNG; with ``--stream``,
    EM out of core on a .npy/Parquet file of any size.
``compare``
    Several engines on the same data: CSV/JSON table, engines figure, NetCDF per fit.
``select``
    BIC/AIC/ICL over a grid of K and covariance structures: CSV table, BIC plot.
``simulate``
    Draw a data set from the generative story: CSV (with the true component) + truth JSON.
``study``
    A simulation study (many simulated data sets, every engine): CSV rows + summary.
``sbc``
    Simulation-based calibration of a Bayesian engine: ranks CSV, p-values, rank plot.
``run``
    Any of the above from a TOML file, so a study is one reproducible command.

Every command takes ``--out DIR`` and writes its files there (nothing is pickled): a new or
empty folder, or with ``--overwrite`` one holding an earlier run, whose files (listed in its
manifest, :data:`MANIFEST`) are replaced; the files appear only when the command succeeds
(:class:`OutputFolder`); ``study`` and ``sbc`` keep the data sets they finish in
``OUT/checkpoint`` until then, and ``--resume`` continues an interrupted run from them. Options
given on the command line and in a TOML file have the same names and types (``--num-components``
is ``num_components``, an integer; ``--no-plot`` is ``plot = false``); relative paths in a TOML
file (``out``, ``[data] path``) are relative to the file's folder. Engine options go in
``[engines.<method>]`` tables of the TOML file, or ``--engine-option mcmc.num_samples=500`` on
the command line; they may not set what the command sets itself (the data, K, the covariance
type, the seed), and only methods the command runs may have them.

Exit codes: 0 success; 2 invalid usage, input, data or configuration (a one-line message on
stderr names the problem); 1 an unexpected internal error (with its traceback); 130 interrupted
(Ctrl-C: one line, no files written but a study's or sbc's checkpoint, named on a second line);
143 terminated (SIGTERM), likewise.

JAX's persistent compilation cache is on (in ``~/.cache/bayesgmm/xla``), so repeated commands
skip most compilation; ``--compile-cache DIR`` (before or after the command name; or the
environment variable ``BAYESGMM_COMPILE_CACHE``) moves it, ``--compile-cache off`` turns it off.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import json
import os
import re
import shutil
import signal
import sys
import threading
import traceback
import warnings
from pathlib import Path

from ._checkpoint import RECORD as CHECKPOINT_RECORD
from ._checkpoint import finished_task_indices
from ._cli_config import CHECKPOINT_FOLDER, STREAM_BATCH_SIZE, build_parser, check_engine_options, options_from_args, options_from_toml
from ._cli_io import (
    COMMIT_LOCK,
    DEMO_ENGINES,
    ENGINES,
    MANIFEST,
    OutputFolder,
    UsageError,
    as_names,
    figure,
    first_line,
    fit_figure,
    load_data,
    print_features,
    print_fit,
    print_table,
    table_files,
    table_json,
    write_table,
    wrote,
)
from ._startup import INTERRUPTED

__all__ = ["ENGINES", "MANIFEST", "UsageError", "build_parser", "console_main", "main"]

# ----------------------------------------------------------------------------------------------
# Commands: each takes a dict of options (from argparse or a TOML file)
# ----------------------------------------------------------------------------------------------
def _engine_kwargs(opts, method):
    return dict(opts.get("engines", {}).get(method, {}))


_EM_NO_PRIOR = ("--method em is maximum likelihood and takes no prior (engine option prior); for MAP-EM use "
                "--method map-em, which uses the default prior (mclust's, Prior.default) unless prior= is given.")


def _prior_option(value, x, k):
    """The engine option ``prior``: "default" (Prior.default of the data; for a stream, resolved by
    the streaming engine from its first pass) or a table of Prior fields, the fields it leaves out
    taken from Prior.default (``prior={weight_concentration=0.01}``: the sparse prior of an
    overfitted mixture; ``prior={weight_prior="dirichlet_process"}``: Dirichlet-process weights)."""
    import dataclasses

    from .params import Prior

    if isinstance(value, str) and value == "default":
        return "default" if x is None else Prior.default(x, k)
    if isinstance(value, dict):
        required = ("weight_concentration", "mean", "mean_precision", "degrees_of_freedom", "scale")
        fields = required + ("weight_prior",)
        unknown = sorted(set(value) - set(fields))
        if unknown or not value:
            raise UsageError(f"engine option prior: a prior table takes the fields {list(fields)} (unknown {unknown}); "
                             "those it leaves out are Prior.default's. Or give prior=default.")
        try:
            if all(f in value for f in required):
                return Prior(**value)
            if x is None:
                raise UsageError(f"engine option prior: with --stream a prior table needs every field {list(required)}, "
                                 "or give prior=default.")
            return Prior(**{**dataclasses.asdict(Prior.default(x, k)), **value})
        except UsageError:  # already says what to do
            raise
        except (TypeError, ValueError) as err:
            raise UsageError(f"engine option prior: not a valid prior table ({first_line(err)}); give prior=default or "
                             "prior={weight_concentration=..., mean=[...], mean_precision=..., "
                             "degrees_of_freedom=..., scale=[[...]]} (fields left out are Prior.default's).") from None
    raise UsageError(f"engine option prior must be 'default' or a table of Prior fields, got {value!r}.")


def _resolve_prior(kw, method, x, k):
    """Engine options with ``prior`` resolved; ``prior`` with ``--method em`` is an error, never dropped."""
    if "prior" not in kw:
        return kw
    if method == "em":
        raise UsageError(_EM_NO_PRIOR)
    return {**kw, "prior": _prior_option(kw["prior"], x, k)}


def _fit_stream(opts):
    """EM out of core on a .npy or Parquet file (``--stream``): the data never sit in memory."""
    from .streaming import fit_em_stream

    spec = opts["data"]
    if not spec.get("path") or spec.get("label_column"):
        raise UsageError("--stream reads a .npy or Parquet file given as the input path (no --dataset, no --label-column).")
    if not Path(spec["path"]).exists():
        raise UsageError(f"input file {str(spec['path'])!r} does not exist.")
    if Path(spec["path"]).is_dir():
        raise UsageError(f"input {str(spec['path'])!r} is a folder, not a data file.")
    if opts["method"] not in ("em", "map-em"):
        raise UsageError(f"--stream fits by EM or MAP-EM; --method {opts['method']!r} needs the data in memory.")
    kw = _engine_kwargs(opts, opts["method"])
    if opts["method"] == "map-em":
        kw.setdefault("prior", "default")  # the default prior, from the stream's first pass
    kw = _resolve_prior(kw, opts["method"], None, opts["num_components"])
    columns = as_names(spec["columns"], "columns") if spec.get("columns") else None
    if columns and Path(spec["path"]).suffix.lower() == ".npy":
        # a .npy file's columns are numbered (Parquet's are named): 0, -1, or the names the fit
        # gives them (x0, x1, ...)
        numbered = [str(c)[1:] if re.fullmatch(r"x\d+", str(c)) else str(c) for c in columns]
        if all(re.fullmatch(r"-?\d+", c) for c in numbered):
            columns = [int(c) for c in numbered]
    if opts.get("missing", "error") != "error":
        kw["missing"] = opts["missing"]
    return fit_em_stream(spec["path"], opts["num_components"], covariance_type=opts["covariance_type"],
                         columns=columns, batch_size=STREAM_BATCH_SIZE if opts.get("batch_size") is None else opts["batch_size"],
                         seed=opts["seed"],
                         progress_bar=opts.get("progress", False), **kw)


def run_fit(opts, out: OutputFolder) -> int:
    from .experiments import fit
    from .storage import save_result

    method = opts["method"]
    stem = f"{method}_k{opts['num_components']}"
    if opts.get("stream"):
        x = labels = None
        result = _fit_stream(opts)
        stem = f"{result.method}_k{opts['num_components']}_stream"  # online-em when asked for
    else:
        if opts.get("batch_size") is not None:
            raise UsageError("--batch-size sets the rows per chunk of a streamed fit; add --stream, or leave it out "
                             "(batch_size in a TOML file).")
        out.refuse_conflicts_now([f"{stem}.json", f"{stem}.nc"] + ([f"{stem}.png"] if opts["plot"] else []))
        x, labels = load_data(opts["data"])
        print_features(x, opts["data"].get("label_column"))
        kw = _engine_kwargs(opts, method)
        if method in ("svi", "mcmc", "gibbs") and opts.get("progress", False):
            kw.setdefault("progress_bar", True)
        if opts.get("missing", "error") != "error":
            kw["missing"] = opts["missing"]
        kw = _resolve_prior(kw, method, x, opts["num_components"])
        result = fit(x, opts["num_components"], method, covariance_type=opts["covariance_type"], seed=opts["seed"], **kw)
    print_fit(result)
    if x is not None and labels is not None:
        from .experiments import adjusted_rand_index

        print(f"adjusted Rand index against {opts['data']['label_column']!r}: "
              f"{adjusted_rand_index(labels, result.predict(x)):.3f}")
    result.to_json(out.path(f"{stem}.json"))
    save_result(result, out.path(f"{stem}.nc"), x=x)
    if opts["plot"]:  # a streamed fit has no data in memory to draw: its objective's trace
        if x is not None:
            figure(fit_figure(result, x), out.path(f"{stem}.png"))
        else:
            from . import plotting

            figure(plotting.plot_trace(result).figure, out.path(f"{stem}_trace.png"))
    return 0


COMPARE_COLUMNS = ("method", "fit_seconds", "run_seconds", "log_likelihood", "test_lpd", "ari", "nmi", "elbo",
                   "ess_per_second", "divergences", "max_rhat", "effective_components", "converged")


def run_compare(opts, out: OutputFolder, *, title=None) -> int:
    import numpy as np

    from .experiments import compare
    from .storage import save_result

    out.refuse_conflicts_now(table_files("comparison") + ["comparison.json"])
    x, labels = load_data(opts["data"])
    if title:
        print(title)
    print_features(x, opts["data"].get("label_column"))
    frac = float(opts["test_fraction"])
    if not 0 <= frac < 1:
        raise UsageError(f"test_fraction must be in [0, 1), got {frac}.")
    num_test = int(round(frac * len(x)))
    if frac > 0 and not 2 <= num_test <= len(x) - 2:
        raise UsageError(f"--test-fraction {frac:g} of {len(x)} rows holds out {num_test} row(s); both the training "
                         "and the held-out part need at least 2: choose a fraction between "
                         f"{2 / len(x):.3g} and {1 - 2 / len(x):.3g}, or 0 to score on the training data.")
    x_train, x_test, lab_train = x, None, labels
    if frac > 0:
        rng = np.random.default_rng(opts["seed"])
        test = rng.permutation(len(x))[: int(round(frac * len(x)))]
        mask = np.zeros(len(x), bool)
        mask[test] = True
        x_train, x_test = x[~mask], x[mask]
        lab_train = None if labels is None else labels[~mask]
    engines = dict(opts.get("engines", {}))
    table, fits = compare(
        x_train, opts["num_components"], methods=opts["methods"], covariance_type=opts["covariance_type"],
        x_test=x_test, labels=lab_train, engine_kwargs=engines, seed=opts["seed"], progress_bar=opts["progress"],
        return_fits=True, on_error=opts.get("on_error", "raise"),
    )
    print_table(table, COMPARE_COLUMNS)
    failed = [m for m, r in fits.items() if r is None]
    fits = {m: r for m, r in fits.items() if r is not None}  # an engine that failed (--on-error record) has no fit
    for row in table.itertuples():
        if row.warnings:
            print(f"  {row.method}: {_for_the_command_line(row.warnings, 'compare')}", file=sys.stderr)
        if row.method in failed:
            print(f"  {row.method} failed: {_for_the_command_line(_one_line(row.error), 'compare')}", file=sys.stderr)
    write_table(table, out, "comparison")
    out.path("comparison.json").write_text(table_json(table))
    for method, result in fits.items():
        if hasattr(result, "to_json"):
            result.to_json(out.path(f"{method}.json"))
            save_result(result, out.path(f"{method}.nc"), x=x_train)
    parameters = _parameters(fits, x_train)
    if parameters is not None:
        write_table(parameters, out, "parameters")
    if opts["plot"]:
        from . import plotting

        panels = {m: r for m, r in fits.items() if hasattr(r, "to_json")}
        if panels:
            fig, _ = plotting.plot_engines(panels, x_train.to_numpy(dtype=float))
            if failed:  # said on the figure, not left out without a word
                fig.text(0.5, 0.005, f"failed, not shown: {', '.join(failed)}", ha="center", va="bottom", fontsize=8)
            figure(fig, out.path("engines.png"))
        if "em" in fits:
            figure(fit_figure(fits["em"], x_train), out.path("em_clusters.png"))
    return 0


def _parameters(fits: dict, x):
    """Every fit's parameters in one table (:func:`bayesgmm.parameter_table`), EM's standard errors
    from the observed information where it can be inverted; None when no fit is a mixture."""
    import numpy as np

    from .reporting import parameter_table
    from .results import FitResult

    results = {m: r for m, r in fits.items() if isinstance(r, FitResult)}
    if not results:  # k-means only: no mixture parameters to tabulate
        return None
    try:
        return parameter_table(results, x)
    except (ValueError, np.linalg.LinAlgError) as err:  # the last resort: EM's estimates without errors, said
        warnings.warn(f"EM's standard errors could not be computed ({err}); the parameter table leaves them blank.",
                      UserWarning, stacklevel=2)
        return parameter_table(results, x, em_intervals=None)


#: What the selection tables' criteria mean, written beside them (mclust prints the negatives).
CRITERIA_NOTE = ("BIC = -2 log L + p log N, AIC = -2 log L + 2 p, ICL = BIC - 2 sum_n log max_k r_nk: lower is better "
                 "(mclust prints -BIC and -ICL, higher better).")


def run_select(opts, out: OutputFolder) -> int:
    from .selection import select

    out.refuse_conflicts_now(table_files("selection") + table_files("bic_table") + ["best_bic.json"]
                             + (["selection_bic.png"] if opts["plot"] else []))
    x, labels = load_data(opts["data"])
    print_features(x, opts["data"].get("label_column"))
    ks = opts["k"]
    prior = {"none": None, "default": "default"}.get(opts["prior"])
    if opts["prior"] not in ("none", "default"):
        raise UsageError(f"prior must be 'none' or 'default', got {opts['prior']!r}.")
    types = opts["covariance_types"]
    types = "all" if "all" in ([types] if isinstance(types, str) else types) else types
    result = select(x, ks, covariance_types=types, prior=prior, n_init=opts["n_init"], seed=opts["seed"],
                    missing=opts.get("missing", "error"))
    print_table(result.table, ("covariance_type", "num_components", "log_likelihood", "num_parameters", "bic", "aic",
                                "icl", "converged", "degenerate"))
    best = result.best("bic")
    agreement = ""
    if labels is not None:
        from .experiments import adjusted_rand_index

        ari = adjusted_rand_index(labels, best.predict(x))
        agreement = f"; adjusted Rand index against {opts['data']['label_column']!r}: {ari:.3f}"
    name = next(label for (label, _), fit in result.fits.items() if fit is best)  # as the table names it
    print(f"best by BIC (lower is better): {name}, K={best.num_components}{agreement}  "
          f"({result.info['seconds']:.2f} s for {len(result.table)} fits)")
    write_table(result.table, out, "selection", note=CRITERIA_NOTE)
    # mclust's layout, K by structure, in this package's sign
    write_table(result.criterion_table("bic").reset_index(), out, "bic_table", note=CRITERIA_NOTE)
    best.to_json(out.path("best_bic.json"))
    if opts["plot"]:
        figure(result.plot("bic").figure, out.path("selection_bic.png"))
    return 0


def run_simulate(opts, out: OutputFolder) -> int:
    import pandas as pd

    from .datasets import make_mixture

    data = make_mixture(opts["num_obs"], opts["num_components"], opts["num_features"],
                        covariance_type=opts["covariance_type"], separation=opts["separation"], seed=opts["seed"])
    df = pd.DataFrame(data.x, columns=[f"x{j}" for j in range(data.x.shape[1])])
    df["component"] = data.labels
    df.to_csv(out.path("data.csv"), index=False)
    truth = {"covariance_type": opts["covariance_type"], "weights": data.params.weights.tolist(),
             "means": data.params.means.tolist(), "covariances": data.params.covariances.tolist(), "seed": opts["seed"]}
    out.path("truth.json").write_text(json.dumps(truth, indent=2))
    print(f"simulated {opts['num_obs']} observations of a {opts['num_components']}-component mixture "
          f"(D={opts['num_features']}, separation {opts['separation']}); label column 'component'")
    return 0


def run_study(opts, out: OutputFolder) -> int:
    from .experiments import simulation_study, summarise_study

    study = simulation_study(
        opts["num_datasets"], num_obs=opts["num_obs"], separation=opts["separation"],
        num_components=opts["num_components"], num_features=opts["num_features"], methods=opts["methods"],
        covariance_type=opts["covariance_type"], engine_kwargs=dict(opts.get("engines", {})), seed=opts["seed"],
        progress_bar=opts["progress"], checkpoint=opts.get("checkpoint"), on_error=opts["on_error"],
    )
    summary = summarise_study(study)
    print_table(summary, ("method", "num_obs", "separation", "num_components", "ari", "means_error",
                           "coverage_weights", "coverage_means", "coverage_covariances", "fit_seconds", "num_datasets",
                           "num_failed"))
    if "error" in study and study["error"].notna().any():
        errors = study["error"].dropna()
        print(f"  {len(errors)} fit(s) failed (the error column of study.csv); the first: "
              f"{_for_the_command_line(_one_line(errors.iloc[0]), 'study')}", file=sys.stderr)
    study.to_csv(out.path("study.csv"), index=False)
    write_table(summary, out, "summary")
    return 0


def sbc_prior(num_features: int, overrides: dict | None = None):
    """The SBC default prior of :func:`bayesgmm.sbc`'s docstring, with TOML ``[prior]`` overrides."""
    import numpy as np

    from .params import Prior

    d = num_features
    if isinstance(d, bool) or not isinstance(d, int) or d < 1:
        raise UsageError(f"-d/--num-features must be a positive integer, got {d!r}.")
    spec = dict(weight_concentration=5.0, mean=np.zeros(d), mean_precision=0.2, degrees_of_freedom=d + 4.0,
                scale=(d + 3.0) * np.eye(d))
    unknown = set(overrides or {}) - set(spec)
    if unknown:
        raise UsageError(f"unknown prior option(s) {sorted(unknown)}; allowed: {sorted(spec)}.")
    spec.update(overrides or {})
    return Prior(**spec)


def run_sbc(opts, out: OutputFolder) -> int:
    from .calibration import sbc

    prior = sbc_prior(opts["num_features"], opts.get("prior"))
    result = sbc(opts["num_components"], opts["num_obs"], prior=prior, method=opts["method"],
                 covariance_type=opts["covariance_type"], num_replications=opts["replications"],
                 num_ranks=opts["num_ranks"], engine_kwargs=_engine_kwargs(opts, opts["method"]), seed=opts["seed"],
                 progress_bar=opts["progress"], checkpoint=opts.get("checkpoint"), on_error=opts["on_error"])
    print(result.summary())
    result.ranks.to_csv(out.path("sbc_ranks.csv"), index=False)
    result.to_json(out.path("sbc.json"))
    if opts["plot"]:
        from . import plotting

        fig, _ = plotting.plot_sbc_ranks(result, "hist")
        figure(fig, out.path("sbc_ranks.png"))
        fig, _ = plotting.plot_sbc_ranks(result, "ecdf")
        figure(fig, out.path("sbc_ecdf.png"))
    return 0


def run_demo(opts, out: OutputFolder) -> int:
    methods = ("kmeans",) + tuple(opts["methods"])
    engines = {m: dict(v) for m, v in DEMO_ENGINES.items() if m in methods}  # the demo's settings of the engines run
    for method, kw in opts.get("engines", {}).items():
        engines.setdefault(method, {}).update(kw)
    demo = {
        "data": {"dataset": "faithful"}, "num_components": 2, "methods": methods,
        "covariance_type": "full", "test_fraction": 0.25, "seed": opts["seed"], "out": opts["out"],
        "engines": engines, "plot": True, "progress": opts["progress"],
    }
    return run_compare(demo, out, title="Old Faithful (272 eruptions: eruption length and waiting time, minutes), K=2, "
                                   "75% training / 25% held out")


HANDLERS = {"demo": run_demo, "fit": run_fit, "compare": run_compare, "select": run_select,
            "simulate": run_simulate, "study": run_study, "sbc": run_sbc}

#: Output folders of the commands in progress (the Ctrl-C watcher leaves a committing one alone).
_ACTIVE: list = []
#: Set once the command has written its files, or has returned: a signal after that changes nothing.
_DONE = threading.Event()


def _set_compile_cache(path) -> None:
    from ._compile import CACHE_OFF_VALUES, set_compilation_cache

    if str(path).strip().lower() in CACHE_OFF_VALUES:
        set_compilation_cache(None)
        return
    cache = Path(path)
    if cache.exists() and not cache.is_dir():
        raise UsageError(f"--compile-cache {str(path)!r} exists and is not a folder.")
    try:
        set_compilation_cache(cache)
    except OSError as err:
        raise UsageError(f"cannot create the compile cache folder {str(path)!r}: {err.strerror or err}.") from None


class _PipeSafeStdout:
    """sys.stdout for the duration of a command: when the reader of a pipe goes away
    (``bayesgmm fit ... | head``), the rest of the printed output is dropped and the command
    still finishes its work (its files are written)."""

    def __init__(self, stream):
        self.stream = stream
        self.broken = False

    def write(self, text):
        if not self.broken:
            try:
                return self.stream.write(text)
            except BrokenPipeError:
                self._break()
            except OSError as err:  # a full disk behind a redirection, an I/O error: no traceback
                self._fail(err)
        return len(text)

    def flush(self):
        if not self.broken:
            try:
                self.stream.flush()
            except BrokenPipeError:
                self._break()
            except OSError as err:
                self._fail(err)

    def _fail(self, err):
        self.broken = True
        _quiet_stdout()
        raise UsageError(f"cannot write to standard output ({err.strerror or err}); no files were written.") from None

    def _break(self):
        self.broken = True
        _quiet_stdout()

    def __getattr__(self, name):
        return getattr(self.stream, name)


def _quiet_stdout() -> None:
    """After a broken pipe (``bayesgmm ... | head``): send what is left of stdout to /dev/null,
    so that neither the handler nor Python's final flush reports the error."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):  # stdout without a file descriptor (captured)
        pass


def _one_line_warning(message, category, filename, lineno, file=None, line=None, *, command=None):
    """Warnings during a command: one line on stderr, no Python source line, the library's
    advice in the command's flags."""
    text = _for_the_command_line(" ".join(str(message).split()), command)
    try:
        print(f"bayesgmm: warning: {category.__name__}: {text}", file=sys.stderr if file is None else file)
    except (OSError, ValueError):  # stderr closed
        pass


#: Lines an interrupted command prints after :data:`INTERRUPTED` (the tasks a checkpoint keeps).
_KEPT_NOTES: list[str] = []


def _interrupted() -> int:
    print(INTERRUPTED, file=sys.stderr)
    for note in _KEPT_NOTES:
        print(note, file=sys.stderr)
    _KEPT_NOTES.clear()
    return 130


#: What the command line prints after SIGTERM (``kill``, ``timeout``, a batch scheduler's time
#: limit), exiting with status 143 (128 + 15) as a process the signal killed would.
TERMINATED = "bayesgmm: terminated (SIGTERM); no files were written."


def main(argv=None) -> int:
    """Run the command line; returns the exit code (0, 1, 2, or 130 after Ctrl-C).

    Parameters
    ----------
    argv : list of str, optional
        The arguments after the program's name, e.g. ``["fit", "data.csv", "-k", "3"]``;
        default ``sys.argv[1:]``.

    Returns
    -------
    int
        0 on success, 2 for invalid input or configuration (one ``bayesgmm: error:`` line on
        stderr), 1 for an internal error (with its traceback), 130 when interrupted.
    """
    try:
        return _main(argv)
    except KeyboardInterrupt:  # anywhere, even while parsing or importing
        return _interrupted()


def _main(argv) -> int:
    os.environ.setdefault("MPLBACKEND", "Agg")
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        with warnings.catch_warnings():
            warnings.showwarning = functools.partial(_one_line_warning, command=args.command)
            return _run(args)
    except KeyboardInterrupt:
        return _interrupted()
    except BrokenPipeError:  # a closed pipe met outside sys.stdout: stop quietly, as Unix tools do
        _quiet_stdout()
        return 1
    except ValueError as err:  # UsageError and the library's input validation
        print(f"bayesgmm: error: {_for_the_command_line(_one_line(err), args.command)}", file=sys.stderr)
        return 2
    except TypeError as err:
        if "unexpected keyword argument" in str(err) or "multiple values for keyword argument" in str(err):
            print(f"bayesgmm: error: engine option not accepted: {_one_line(err)}", file=sys.stderr)
            return 2
        traceback.print_exc()
        return 1
    except OSError as err:
        if err.filename is not None:  # a file-system problem with a path the user gave
            print(f"bayesgmm: error: {err.strerror or err}: {err.filename!r}.", file=sys.stderr)
            return 2
        if err.errno in _STORAGE_ERRNOS:  # raised by a writer that does not name the file (pandas, pyarrow)
            print(f"bayesgmm: error: {err.strerror or os.strerror(err.errno)} while writing the results; no files were "
                  "written. Free space (or quota) and run the command again.", file=sys.stderr)
            return 2
        traceback.print_exc()
        return 1
    except Exception as err:  # noqa: BLE001 - report, with the traceback, as an internal error
        said = str(err)
        storage = [os.strerror(code) for code in _STORAGE_ERRNOS if os.strerror(code) in said]
        if storage:  # h5py (NetCDF files) raises a RuntimeError naming the system's error
            print(f"bayesgmm: error: {storage[0]} while writing the results; no files were written. Free space "
                  "(or quota) and run the command again.", file=sys.stderr)
            return 2
        traceback.print_exc()
        return 1
    finally:  # a study's or sbc's finished data sets, kept after an error (an interruption printed them)
        for note in _KEPT_NOTES:
            print(note, file=sys.stderr)
        _KEPT_NOTES.clear()


#: Errors of a full or over-quota file system: the machine's state, not bayesgmm's (exit code 2).
_STORAGE_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


def _one_line(err) -> str:
    """The error's message and its notes (where in a study or SBC run it happened), one line."""
    return " ".join(" ".join([str(err), *getattr(err, "__notes__", ())]).split())


#: Library advice (Python arguments) as the command line's flags, per command; ``None``: every command.
_FLAGS = (
    ("fit", "pass missing='marginalize'", "pass --missing marginalize (missing = \"marginalize\" in a TOML file)"),
    ("fit", "(missing='marginalize')", "(--missing marginalize)"),
    ("compare", "pass engine_kwargs={method: {'missing': 'marginalize'}} for each method",
     "pass --engine-option METHOD.missing=marginalize for each method"),
    ("compare", "pass missing='marginalize'", "pass --engine-option METHOD.missing=marginalize for each method"),
    ("compare", "(missing='marginalize')", "(--engine-option METHOD.missing=marginalize)"),
    ("fit", "fit MAP-EM with prior=bayesgmm.Prior.default(x, K)", "fit MAP-EM (--method map-em)"),
    ("compare", "fit MAP-EM with prior=bayesgmm.Prior.default(x, K)", "compare MAP-EM (--methods map-em)"),
    ("study", "fit MAP-EM with prior=bayesgmm.Prior.default(x, K)", "study MAP-EM (--methods map-em)"),
    ("select", "pass missing='marginalize'", "pass --missing marginalize (missing = \"marginalize\" in a TOML file)"),
    ("select", "(missing='marginalize')", "(--missing marginalize)"),
    ("select", "pass allow_degenerate=True or use prior='default'", "use --prior default (MAP-EM)"),
    ("select", "use prior='default' (MAP-EM)", "use --prior default (MAP-EM)"),
    ("select", "Use prior='default' (MAP-EM)", "Use --prior default (MAP-EM)"),
    ("study", "give a new folder, or delete this one to start again",
     "give a new --out folder, or --overwrite without --resume to start again"),
    ("sbc", "give a new folder, or delete this one to start again",
     "give a new --out folder, or --overwrite without --resume to start again"),
    (None, "pass columns=[...] with numeric columns only",
     "choose numeric columns with --columns (columns in a TOML file's [data] table)"),
)
#: The library's argument checks, by the command's flags (not in a TOML file's errors, whose keys
#: are the arguments' own names).
_ARGUMENT_FLAGS = (
    (None, "num_components must", "-k/--num-components must"),
    ("select", "k_range must", "-k must"),
    ("sbc", "num_replications must", "--replications must"),
    (None, "batch_size must", "--batch-size must"),
    (None, "test_fraction must", "--test-fraction must"),
    (None, "seed must", "--seed must"),
    ("sbc", "num_ranks must", "--num-ranks must"),
    ("sbc", "num_obs must", "-n/--num-obs must"),
    ("sbc", "fewer than num_ranks=", "fewer than --num-ranks="),
    ("sbc", "engine_kwargs give", "--engine-option gives"),
    ("sbc", "or lower num_ranks", "or lower --num-ranks"),
    ("study", "num_obs must", "-n/--num-obs must"),
    ("fit", "columns for an array or .npy source must", "--columns of a .npy file must"),
    ("fit", "columns for a Parquet source must", "--columns of a Parquet file must"),
)


#: The library's arguments by a TOML file's keys, where they differ (``run``).
_TOML_KEYS = (
    (None, "k_range must", "k must"),
    (None, "num_replications must", "replications must"),
)


def _for_the_command_line(message: str, command: str) -> str:
    """A library message as the command line's user acts on it: its options by their flags, or
    in a TOML file's run (``command`` "run") by the file's keys."""
    flags = (_FLAGS if message.startswith("config file") else
             _FLAGS + _TOML_KEYS if command == "run" else _FLAGS + _ARGUMENT_FLAGS)
    for where, python, flag in flags:
        if where is None or where == command:
            message = message.replace(python, flag)
    return message


def _run(args) -> int:
    if args.compile_cache is not None:
        _set_compile_cache(args.compile_cache)
    if args.command == "run":
        opts = options_from_toml(args.config, args.out, args.overwrite, args.resume)
        command = opts.pop("command")
    else:
        opts = options_from_args(args)
        command = args.command
    check_engine_options(command, opts)
    inputs = [p for p in ((opts.get("data") or {}).get("path"), getattr(args, "config", None))
              if p and isinstance(p, (str, os.PathLike))]  # anything else: load_data's error, after
    resumable = "resume" in opts  # study and sbc: finished data sets kept in OUT/checkpoint until done
    recorded = {k: v for k, v in opts.items() if k not in ("progress", "resume")}  # the manifest's options
    checkpoint = Path(opts["out"]) / CHECKPOINT_FOLDER
    ours = checkpoint.is_dir() and not checkpoint.is_symlink() and (checkpoint / CHECKPOINT_RECORD).is_file()
    if opts.get("resume") and _finished_here(opts["out"], command, recorded):  # a requeued job after the end
        if ours:  # left by a process killed between writing its files and removing it
            shutil.rmtree(checkpoint)
        print(f"nothing to resume: {str(opts['out'])!r} holds this command's finished run ({MANIFEST}); "
              "its files are unchanged.")
        return 0
    out = OutputFolder(opts["out"], overwrite=opts.get("overwrite", False), command=command, options=recorded,
                       inputs=inputs, checkpoint=CHECKPOINT_FOLDER if resumable else None, resume=bool(opts.get("resume")))
    if resumable and (checkpoint.exists() or checkpoint.is_symlink()):
        if not ours and not (checkpoint.is_dir() and not any(checkpoint.iterdir())):
            out.discard()
            raise UsageError(f"{str(checkpoint)!r} is not a bayesgmm checkpoint, and {command} keeps its finished data "
                             "sets there; move it, or give another --out folder.")
        if ours and not opts["resume"]:  # --overwrite without --resume: start afresh (the earlier one kept until commit)
            out.replace_checkpoint()
        beyond = [i for i in finished_task_indices(checkpoint) if i >= opts.get("replications", float("inf"))]
        if ours and opts["resume"] and beyond:  # sbc: fewer replications would drop finished ones at the end
            out.discard()
            raise UsageError(f"--resume with --replications {opts['replications']}: the interrupted run in "
                             f"{str(checkpoint)!r} has finished replications up to {beyond[-1]}, which this run "
                             f"would discard; resume with --replications {beyond[-1] + 1} or more (its options "
                             "otherwise the same), or --overwrite without --resume to start again.")
    opts["checkpoint"] = checkpoint if resumable else None
    _ACTIVE.append(out)
    try:
        stdout = sys.stdout = _PipeSafeStdout(sys.stdout)
        try:
            rc = HANDLERS[command](opts, out)
            if rc == 0:
                out.commit()
                _DONE.set()
                if resumable:  # the command's files hold every data set now
                    shutil.rmtree(checkpoint, ignore_errors=True)
                wrote(out.files)
            stdout.flush()  # here, so that a closed pipe is not reported at exit
        finally:
            sys.stdout = stdout.stream
    except (KeyboardInterrupt, Exception):  # after the error's line: the data sets kept for --resume
        note = out.kept_note()
        if note:
            _KEPT_NOTES.append(note)
        raise
    finally:
        _ACTIVE.remove(out)
        out.discard()
    return rc


def _finished_here(folder, command: str, options: dict) -> bool:
    """Whether ``folder``'s manifest records a finished run of this command with these options."""
    try:
        manifest = json.loads((Path(folder) / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    mine = json.loads(json.dumps(options, default=str))  # as the manifest writes them
    if not (isinstance(manifest, dict) and isinstance(manifest.get("options"), dict)):
        return False
    found = {k: v for k, v in manifest["options"].items() if k != "out"}  # the folder itself, however spelled
    return manifest.get("command") == command and found == {k: v for k, v in mine.items() if k != "out"}


def _exit_now(rc: int) -> None:
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(rc)


def _watch_interrupts(read_fd: int) -> None:
    """Thread body: on SIGINT (or SIGTERM), delete the running command's staged files, print one
    line and exit 130 (143) at once, whatever the main thread is doing (an XLA compilation or
    run, a NetCDF write, Python's garbage collector, which would swallow a
    ``KeyboardInterrupt``). Waits for a commit in progress; after a commit the command is done
    and finishes normally."""
    while True:
        try:
            data = os.read(read_fd, 64)
        except InterruptedError:
            continue
        if not data:
            return
        if signal.SIGINT in data or signal.SIGTERM in data:
            terminated = signal.SIGINT not in data
            break
    with COMMIT_LOCK:
        active = list(_ACTIVE)
        if _DONE.is_set() or any(out.committed for out in active):
            return
        for out in active:
            for _ in range(3):  # the main thread may still be creating files in the staging folder
                out.discard()
                if not out.stage.exists():
                    break
        _KEPT_NOTES.extend(note for note in (out.kept_note() for out in active) if note)
        if terminated:
            with contextlib.suppress(Exception):
                print(TERMINATED, file=sys.stderr)
                for note in _KEPT_NOTES:
                    print(note, file=sys.stderr)
        else:
            _interrupted()
        # never in the middle of writing JAX's persistent cache: a truncated entry, or one without
        # its access time, would make later processes warn on it, or fail every cache write there
        from ._compile import cache_writes_finished

        with cache_writes_finished():
            _exit_now(128 + signal.SIGTERM if terminated else 130)


def _install_interrupt_watcher() -> None:
    """SIGINT and SIGTERM wake :func:`_watch_interrupts` (through :func:`signal.set_wakeup_fd`,
    written by the C-level handler the moment the signal arrives) instead of raising
    KeyboardInterrupt or killing the process with its staging folder left behind."""
    read_fd, write_fd = os.pipe()
    os.set_blocking(write_fd, False)
    signal.signal(signal.SIGINT, lambda signum, frame: None)  # the watcher acts, not the main thread
    signal.signal(signal.SIGTERM, lambda signum, frame: None)
    signal.set_wakeup_fd(write_fd, warn_on_full_buffer=False)
    threading.Thread(target=_watch_interrupts, args=(read_fd,), name="bayesgmm-interrupt", daemon=True).start()


def console_main() -> int:
    """The ``bayesgmm`` executable and ``python -m bayesgmm``: :func:`main`, with Ctrl-C handled
    by a watcher thread that exits at once (status 130, one line, no partial files) and skips
    interpreter shutdown, which could otherwise crash (SIGSEGV) while XLA threads are still
    compiling or running. Every other ending skips it too: once the command has written its
    files it has succeeded, and a Ctrl-C or SIGTERM arriving during the second or so of shutdown
    (which puts the default handlers back) would have made it die of the signal, status 130 or
    143, which means no files were written."""
    watched = True
    try:
        _install_interrupt_watcher()
    except (OSError, ValueError):  # no pipe, or not the main thread: KeyboardInterrupt as in main()
        watched = False
    rc = main()
    if rc != 130:
        _DONE.set()
    if rc == 130 or watched:
        from ._compile import cache_writes_finished

        with cache_writes_finished():  # another thread's write of JAX's cache is never cut short
            _exit_now(rc)
    return rc


if __name__ == "__main__":
    sys.exit(console_main())
