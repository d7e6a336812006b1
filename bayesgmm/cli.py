"""The ``bayesgmm`` command line: batch experiments on top of :mod:`bayesgmm.experiments`.

Commands
--------
``demo``      Old Faithful, every engine: the comparison table printed, figures and fits written.
``fit``       Fit one engine to a CSV/Parquet file: JSON summary, NetCDF (ArviZ), PNG; with
              ``--stream``, EM out of core on a .npy/Parquet file of any size.
``compare``   Several engines on the same data: CSV/JSON table, engines figure, NetCDF per fit.
``select``    BIC/AIC/ICL over a grid of K and covariance structures: CSV table, BIC plot.
``simulate``  Draw a data set from the generative story: CSV (with the true component) + truth JSON.
``study``     A simulation study (many simulated data sets, every engine): CSV rows + summary.
``sbc``       Simulation-based calibration of a Bayesian engine: ranks CSV, p-values, rank plot.
``run``       Any of the above from a TOML file, so a study is one reproducible command.

Every command takes ``--out DIR`` and writes its files there (nothing is pickled): a new or
empty folder, or with ``--overwrite`` one holding an earlier run, whose files (listed in its
manifest, :data:`MANIFEST`) are replaced; the files appear only when the command succeeds
(:class:`OutputFolder`). Options
given on the command line and in a TOML file have the same names and types (``--num-components``
is ``num_components``, an integer; ``--no-plot`` is ``plot = false``); relative paths in a TOML
file (``out``, ``[data] path``) are relative to the file's folder. Engine options go in
``[engines.<method>]`` tables of the TOML file, or ``--engine-option mcmc.num_samples=500`` on
the command line; they may not set what the command sets itself (the data, K, the covariance
type, the seed), and only methods the command runs may have them.

Exit codes: 0 success; 2 invalid usage, input, data or configuration (a one-line message on
stderr names the problem); 1 an unexpected internal error (with its traceback); 130 interrupted
(Ctrl-C: one line, no files written).

JAX's persistent compilation cache is on (in ``~/.cache/bayesgmm/xla``), so repeated commands
skip most compilation; ``--compile-cache DIR`` (before or after the command name; or the
environment variable ``BAYESGMM_COMPILE_CACHE``) moves it, ``--compile-cache off`` turns it off.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import sys
import tempfile
import threading
import tomllib
import traceback
import warnings
from pathlib import Path

from .engines import engine_names
from .params import COVARIANCE_TYPES

__all__ = ["UsageError", "build_parser", "console_main", "main"]

ENGINES = engine_names()
DATASETS = ("faithful", "galaxies")
DEMO_ENGINES = {"mcmc": {"num_warmup": 500, "num_samples": 500}, "svi": {"num_steps": 3000}}


class UsageError(ValueError):
    """Invalid command-line or configuration input (exit code 2)."""


# ----------------------------------------------------------------------------------------------
# Data in, files out
# ----------------------------------------------------------------------------------------------

def _n_init(text: str):
    """``--n-init``: "auto" or a positive integer."""
    if text == "auto":
        return text
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected 'auto' or a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected 'auto' or a positive integer, got {text!r}")
    return value

def _read_table(path):
    """A DataFrame from a CSV/TSV/Parquet file; every problem with the file is a UsageError naming it."""
    import pandas as pd

    p = Path(path)
    name = repr(str(path))
    if not p.exists():
        raise UsageError(f"input file {name} does not exist.")
    if p.is_dir():
        raise UsageError(f"input {name} is a folder, not a data file.")
    suffix = p.suffix.lower()
    if suffix == ".npy":
        raise UsageError(f"input file {name}: .npy files are read out of core with fit --stream; "
                         "to fit in memory, use .csv, .tsv or .parquet.")
    try:
        if suffix in (".parquet", ".pq"):
            try:
                df = pd.read_parquet(p)
            except ImportError as err:
                raise UsageError(f"reading Parquet needs pyarrow ({err}); pip install pyarrow, or convert to CSV.") from None
            except (OSError, ValueError) as err:  # pyarrow's ArrowInvalid is a ValueError
                raise UsageError(f"input file {name} is not a readable Parquet file: {_first_line(err)}") from None
        elif suffix in (".csv", ".txt", ".tsv"):
            try:
                df = pd.read_csv(p, sep="\t" if suffix == ".tsv" else ",")
            except pd.errors.EmptyDataError:
                raise UsageError(f"input file {name} is empty: no header and no rows.") from None
            except UnicodeDecodeError:
                raise UsageError(f"input file {name} is not a text file (not UTF-8); give a CSV/TSV text file "
                                 "or a Parquet file.") from None
            except pd.errors.ParserError as err:
                raise UsageError(f"input file {name} could not be parsed as {suffix[1:].upper()}: {_first_line(err)}") from None
        else:
            raise UsageError(f"input file {name}: unknown format {p.suffix!r}; use .csv, .tsv or .parquet "
                             "(.npy with fit --stream).")
    except OSError as err:  # unreadable (permissions, I/O)
        raise UsageError(f"cannot read input file {name}: {err.strerror or err}.") from None
    if suffix in (".csv", ".txt", ".tsv"):
        _check_header(p, name, "\t" if suffix == ".tsv" else ",")
    if len(df) == 0:
        raise UsageError(f"input file {name} has no data rows (only a header: {list(df.columns)}).")
    return df


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _check_header(path: Path, name: str, sep: str) -> None:
    """A CSV/TSV file's first line must name the columns: a first line of numbers is a data row,
    which would otherwise silently become the column names (one observation lost)."""
    import csv

    with open(path, encoding="utf-8", newline="") as f:
        first = next(csv.reader(f, delimiter=sep), [])
    fields = [field.strip() for field in first]
    if fields and all(field and _is_number(field) for field in fields):
        shown = sep.join(fields) if len(fields) <= 8 else sep.join(fields[:8]) + sep + "..."
        example = sep.join(f"x{j}" for j in range(min(len(fields), 8))) + (sep + "..." if len(fields) > 8 else "")
        raise UsageError(f"input file {name} has no header row: its first line ({shown}) is numbers, a data row, "
                         f"not column names. Add a first line naming the columns (e.g. {example}); if those numbers "
                         "really are column names, rename them so that they are not numbers.")


def _first_line(err) -> str:
    text = str(err).strip().splitlines()
    return text[0] if text else type(err).__name__


def _as_names(value, what: str) -> list:
    """Column names from a string or a list of strings (TOML or the command line)."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
        return list(value)
    raise UsageError(f"{what} must be a column name or a list of column names (strings), got {value!r}.")


def load_data(spec: dict):
    """Features (DataFrame) and labels (array or None) from a data spec.

    ``spec``: ``dataset`` (a bundled data set) or ``path`` (CSV/TSV/Parquet), optional
    ``columns`` (the features: a name or a list of names; default every column except the label
    column, all of which must then be numeric) and ``label_column`` (not a feature).
    """
    from pandas.api.types import is_bool_dtype, is_numeric_dtype

    import bayesgmm as bg

    if not isinstance(spec, dict):
        raise UsageError(f"the data spec must be a table (dataset or path, columns, label_column), got {spec!r}.")
    allowed = {"dataset", "path", "columns", "label_column"}
    unknown = set(spec) - allowed
    if unknown:
        raise UsageError(f"unknown data option(s) {sorted(unknown)}; allowed: {sorted(allowed)}.")
    for key in ("dataset", "path", "label_column"):
        if spec.get(key) is not None and not isinstance(spec[key], (str, os.PathLike)):
            raise UsageError(f"data option {key!r} must be a string, got {spec[key]!r}.")
    if bool(spec.get("dataset")) == bool(spec.get("path")):
        raise UsageError("give exactly one data source: an input file (path) or --dataset " + "|".join(DATASETS) + ".")
    if spec.get("dataset"):
        name = spec["dataset"]
        if name not in DATASETS:
            raise UsageError(f"unknown dataset {name!r}; bundled: {DATASETS}.")
        df = bg.datasets.load_faithful(as_frame=True) if name == "faithful" else bg.datasets.load_galaxies(as_frame=True)
        source = f"dataset {name!r}"
    else:
        df = _read_table(spec["path"])
        source = repr(str(spec["path"]))
    columns = _as_names(spec["columns"], "columns") if spec.get("columns") else None
    label = spec.get("label_column") or None
    if label is not None and columns and label in columns:
        raise UsageError(f"the label column {label!r} cannot also be a feature column; remove it from the columns "
                         f"(the label column is used only for ARI/NMI).")
    missing = [c for c in (columns or []) + ([label] if label else []) if c not in df.columns]
    if missing:
        raise UsageError(f"column(s) {missing} not in {source}; available: {[str(c) for c in df.columns]}.")
    labels = None
    if label is not None:
        labels = df[label].to_numpy()
        df = df.drop(columns=[label])
    if columns:
        df = df[columns]
    bad = [str(c) for c, t in zip(df.columns, df.dtypes) if not is_numeric_dtype(t) or is_bool_dtype(t)]
    if bad:
        how = ("choose numeric columns" if columns else
               "by default every column except the label column is a feature; choose numeric ones")
        raise UsageError(f"non-numeric column(s) {bad} in {source}: {how} with --columns (columns in a TOML file's "
                         "[data] table), or encode them as numbers.")
    return df, labels


MANIFEST = "bayesgmm_run.json"
_STAGING_PREFIX = ".bayesgmm-staging-"


class OutputFolder:
    """The ``--out`` folder of one command: one run's files, complete, or nothing.

    Every file is first written into a hidden staging folder inside ``--out``; when the
    command has finished, the files are moved into place together (one ``os.replace`` each,
    atomic per file, with Ctrl-C held off for those few milliseconds) and :data:`MANIFEST`
    records the command and the files it wrote. On an error or Ctrl-C the staging folder is
    deleted: no truncated or partial file is ever left, and an earlier run's files stay as
    they were.

    A folder that is not empty is refused unless ``overwrite``: then the files of the earlier
    run listed in its manifest (and stale staging folders of killed runs) are deleted when the
    new files are moved in, so runs are never mixed; files bayesgmm did not write, and the
    command's own ``inputs`` (e.g. ``data.csv`` of an earlier ``simulate`` fitted in place), are
    left alone.
    """

    def __init__(self, path, *, overwrite: bool = False, command: str = "", options: dict | None = None,
                 inputs=()):
        out = Path(path)
        if out.exists() and not out.is_dir():
            raise UsageError(f"output folder {str(path)!r} exists and is not a folder; give a folder with --out.")
        self.created = not out.exists()
        try:
            out.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise UsageError(f"cannot create output folder {str(path)!r}: {err.strerror or err}.") from None
        if not os.access(out, os.W_OK | os.X_OK):
            raise UsageError(f"output folder {str(path)!r} is not writable.")
        entries = sorted(p.name for p in out.iterdir())
        if entries and not overwrite:
            shown = ", ".join(entries[:5]) + (f", ... ({len(entries)} entries)" if len(entries) > 5 else "")
            raise UsageError(
                f"output folder {str(path)!r} is not empty ({shown}); give a new or empty folder with --out, or "
                "--overwrite to replace the files of the earlier bayesgmm run there (overwrite = true in a TOML file)."
            )
        self.out = out
        self.command = command
        self.options = options or {}
        self.inputs = {Path(p).resolve() for p in inputs}
        self.previous = self._previous_files() if entries else []
        self.stage = Path(tempfile.mkdtemp(prefix=_STAGING_PREFIX, dir=out))
        self.names: list[str] = []
        self.committed = False

    def _previous_files(self) -> list[Path]:
        """Files of the earlier run (its manifest and what it lists) and stale staging folders."""
        found = [p for p in self.out.iterdir() if p.name.startswith(_STAGING_PREFIX) and p.is_dir()]
        manifest = self.out / MANIFEST
        if manifest.is_file():
            try:
                listed = json.loads(manifest.read_text(encoding="utf-8")).get("files", [])
            except (ValueError, OSError, AttributeError):
                listed = []
            for name in listed:
                if not (isinstance(name, str) and name == Path(name).name):  # a plain file name, never a path
                    continue
                if (self.out / name).resolve() in self.inputs:  # this command reads it: kept
                    continue
                found.append(self.out / name)
            found.append(manifest)
        return found

    def path(self, name: str) -> Path:
        """Where to write the output file ``name`` (inside the staging folder)."""
        if name in self.names:
            raise RuntimeError(f"output file {name!r} written twice")
        self.names.append(name)
        return self.stage / name

    @property
    def files(self) -> list[Path]:
        """The final paths of the files written, in the order written, the manifest last."""
        return [self.out / name for name in self.names] + ([self.out / MANIFEST] if self.committed else [])

    def commit(self) -> None:
        """Move the staged files into ``--out`` (removing the earlier run's) and write the manifest."""
        from . import __version__
        from ._files import write_text

        missing = [n for n in self.names if not (self.stage / n).is_file()]
        if missing:
            raise RuntimeError(f"output file(s) {missing} were announced but not written")
        manifest = {"bayesgmm_version": __version__, "command": self.command,
                    "options": self.options, "files": list(self.names)}
        text = json.dumps(manifest, indent=2, default=str)
        with _COMMIT_LOCK, _no_interrupt():
            for old in self.previous:
                if old.is_dir() and old.name.startswith(_STAGING_PREFIX):
                    shutil.rmtree(old, ignore_errors=True)
                elif (old.is_file() or old.is_symlink()) and old.name not in self.names:
                    old.unlink()
            for name in self.names:
                os.replace(self.stage / name, self.out / name)
            write_text(self.out / MANIFEST, text)
            self.committed = True
            self.discard()

    def discard(self) -> None:
        """Delete the staging folder (and ``--out`` itself if this command created it and it is empty)."""
        shutil.rmtree(self.stage, ignore_errors=True)
        if self.created and not self.committed:
            with contextlib.suppress(OSError):
                self.out.rmdir()


#: held while an output folder is committed: the interrupt watcher of :func:`console_main` waits for it
_COMMIT_LOCK = threading.Lock()
#: the output folder of the command running now (for the interrupt watcher)
_ACTIVE: list = []


@contextlib.contextmanager
def _no_interrupt():
    """Hold Ctrl-C off (SIGINT ignored) for a short critical section; main thread only."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def _figure(fig, path):
    fig.savefig(path, dpi=150)
    import matplotlib.pyplot as plt

    plt.close(fig)


def _print_fit(result, out=None):
    out = sys.stdout if out is None else out
    names = result.feature_names
    print(f"{result.method} fit, K={result.num_components}, covariance_type={result.covariance_type}: "
          f"log-likelihood {result.log_likelihood:.3f}, converged={result.converged} after {result.n_iter} iterations",
          file=out)
    for k in range(result.num_components):
        mean = ", ".join(f"{n}={v:.4g}" for n, v in zip(names, result.means[k]))
        print(f"  component {k}: weight {result.weights[k]:.4f}, mean ({mean})", file=out)
        sd = ", ".join(f"{n}={v:.4g}" for n, v in zip(names, result.full_covariances[k].diagonal() ** 0.5))
        print(f"               sd ({sd})", file=out)


def _fit_figure(result, x):
    from . import plotting

    arr = x.to_numpy(dtype=float) if hasattr(x, "to_numpy") else x
    ax = plotting.plot_density_1d(result, arr) if arr.shape[1] == 1 else plotting.plot_clusters_2d(result, arr)
    return ax.figure


def _print_table(table, columns, out=None):
    out = sys.stdout if out is None else out
    import pandas as pd

    shown = table[[c for c in columns if c in table.columns]]
    with pd.option_context("display.width", 200, "display.max_columns", 30, "display.float_format", "{:.4g}".format):
        print(shown.to_string(index=False), file=out)


def _wrote(written):
    print("wrote " + ", ".join(str(p) for p in written))


def _print_features(x, labels_column=None, out=None):
    """Say which columns are the features (and which one holds the labels)."""
    out = sys.stdout if out is None else out
    names = [str(c) for c in x.columns]
    label = f"; label column {labels_column!r} (not a feature)" if labels_column else ""
    print(f"features ({len(names)}): {', '.join(names)}{label}; {len(x)} rows", file=out)


# ----------------------------------------------------------------------------------------------
# Commands: each takes a dict of options (from argparse or a TOML file)
# ----------------------------------------------------------------------------------------------
def _engine_kwargs(opts, method):
    return dict(opts.get("engines", {}).get(method, {}))


_EM_NO_PRIOR = ("--method em is maximum likelihood and takes no prior (engine option prior); for MAP-EM use "
                "--method map-em, which uses the default prior (mclust's, Prior.default) unless prior= is given.")


def _prior_option(value, x, k):
    """The engine option ``prior``: "default" (Prior.default of the data; for a stream, resolved by
    the streaming engine from its first pass) or a table of Prior fields."""
    from .params import Prior

    if isinstance(value, str) and value == "default":
        return "default" if x is None else Prior.default(x, k)
    if isinstance(value, dict):
        fields = ("weight_concentration", "mean", "mean_precision", "degrees_of_freedom", "scale")
        missing, unknown = [f for f in fields if f not in value], sorted(set(value) - set(fields))
        if missing or unknown:
            what = "; ".join(([f"missing {missing}"] if missing else []) + ([f"unknown {unknown}"] if unknown else []))
            raise UsageError(f"engine option prior: a prior table has exactly the fields {list(fields)} ({what}); "
                             "or give prior=default.")
        try:
            return Prior(**value)
        except (TypeError, ValueError) as err:
            raise UsageError(f"engine option prior: not a valid prior table ({_first_line(err)}); give prior=default or "
                             "prior={weight_concentration=..., mean=[...], mean_precision=..., "
                             "degrees_of_freedom=..., scale=[[...]]}.") from None
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
    columns = _as_names(spec["columns"], "columns") if spec.get("columns") else None
    if columns and all(str(c).isdigit() for c in columns):
        columns = [int(c) for c in columns]
    return fit_em_stream(spec["path"], opts["num_components"], covariance_type=opts["covariance_type"],
                         columns=columns, batch_size=opts["batch_size"], seed=opts["seed"],
                         progress_bar=opts.get("progress", False), **kw)


def run_fit(opts, out: OutputFolder) -> int:
    from .experiments import fit
    from .storage import save_result

    method = opts["method"]
    stem = f"{method}_k{opts['num_components']}"
    if opts.get("stream"):
        x = None
        result = _fit_stream(opts)
        stem += "_stream"
    else:
        x, _ = load_data(opts["data"])
        _print_features(x, opts["data"].get("label_column"))
        kw = _engine_kwargs(opts, method)
        if method in ("svi", "mcmc") and opts.get("progress", False):
            kw.setdefault("progress_bar", True)
        kw = _resolve_prior(kw, method, x, opts["num_components"])
        result = fit(x, opts["num_components"], method, covariance_type=opts["covariance_type"], seed=opts["seed"], **kw)
    _print_fit(result)
    result.to_json(out.path(f"{stem}.json"))
    save_result(result, out.path(f"{stem}.nc"), x=x)
    if opts["plot"] and x is not None:
        _figure(_fit_figure(result, x), out.path(f"{stem}.png"))
    return 0


COMPARE_COLUMNS = ("method", "fit_seconds", "run_seconds", "log_likelihood", "test_lpd", "ari", "nmi", "elbo",
                   "ess_per_second", "divergences", "max_rhat", "effective_components", "converged")


def run_compare(opts, out: OutputFolder, *, title=None) -> int:
    import numpy as np

    from .experiments import compare
    from .storage import save_result

    x, labels = load_data(opts["data"])
    if title:
        print(title)
    _print_features(x, opts["data"].get("label_column"))
    frac = float(opts["test_fraction"])
    if not 0 <= frac < 1:
        raise UsageError(f"test_fraction must be in [0, 1), got {frac}.")
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
        return_fits=True,
    )
    _print_table(table, COMPARE_COLUMNS)
    for row in table.itertuples():
        if row.warnings:
            print(f"  {row.method}: {row.warnings}", file=sys.stderr)
    table.to_csv(out.path("comparison.csv"), index=False)
    out.path("comparison.json").write_text(table.to_json(orient="records", indent=2))
    for method, result in fits.items():
        if hasattr(result, "to_json"):
            result.to_json(out.path(f"{method}.json"))
            save_result(result, out.path(f"{method}.nc"), x=x_train)
    if opts["plot"]:
        from . import plotting

        panels = {m: r for m, r in fits.items() if hasattr(r, "to_json")}
        if panels:
            fig, _ = plotting.plot_engines(panels, x_train.to_numpy(dtype=float))
            _figure(fig, out.path("engines.png"))
        if "em" in fits:
            _figure(_fit_figure(fits["em"], x_train), out.path("em_clusters.png"))
    return 0


def run_select(opts, out: OutputFolder) -> int:
    from .selection import select

    x, labels = load_data(opts["data"])
    _print_features(x, opts["data"].get("label_column"))
    ks = opts["k"]
    prior = {"none": None, "default": "default"}.get(opts["prior"])
    if opts["prior"] not in ("none", "default"):
        raise UsageError(f"prior must be 'none' or 'default', got {opts['prior']!r}.")
    result = select(x, ks, covariance_types=opts["covariance_types"], prior=prior, n_init=opts["n_init"], seed=opts["seed"])
    _print_table(result.table, ("covariance_type", "num_components", "log_likelihood", "num_parameters", "bic", "aic",
                                "icl", "converged", "degenerate"))
    best = result.best("bic")
    agreement = ""
    if labels is not None:
        from .experiments import adjusted_rand_index

        ari = adjusted_rand_index(labels, best.predict(x))
        agreement = f"; adjusted Rand index against {opts['data']['label_column']!r}: {ari:.3f}"
    print(f"best by BIC (lower is better): {best.covariance_type}, K={best.num_components}{agreement}  "
          f"({result.info['seconds']:.2f} s for {len(result.table)} fits)")
    result.table.to_csv(out.path("selection.csv"), index=False)
    best.to_json(out.path("best_bic.json"))
    if opts["plot"]:
        _figure(result.plot("bic").figure, out.path("selection_bic.png"))
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
        progress_bar=opts["progress"],
    )
    summary = summarise_study(study)
    _print_table(summary, ("method", "num_obs", "separation", "num_components", "ari", "means_error",
                           "coverage_weights", "coverage_means", "coverage_covariances", "fit_seconds", "num_datasets"))
    study.to_csv(out.path("study.csv"), index=False)
    summary.to_csv(out.path("summary.csv"), index=False)
    return 0


def sbc_prior(num_features: int, overrides: dict | None = None):
    """The SBC default prior of :func:`bayesgmm.sbc`'s docstring, with TOML ``[prior]`` overrides."""
    import numpy as np

    from .params import Prior

    d = num_features
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
                 progress_bar=opts["progress"])
    print(result.summary())
    result.ranks.to_csv(out.path("sbc_ranks.csv"), index=False)
    result.to_json(out.path("sbc.json"))
    if opts["plot"]:
        from . import plotting

        fig, _ = plotting.plot_sbc_ranks(result, "hist")
        _figure(fig, out.path("sbc_ranks.png"))
        fig, _ = plotting.plot_sbc_ranks(result, "ecdf")
        _figure(fig, out.path("sbc_ecdf.png"))
    return 0


def run_demo(opts, out: OutputFolder) -> int:
    engines = {m: dict(v) for m, v in DEMO_ENGINES.items()}
    for method, kw in opts.get("engines", {}).items():
        engines.setdefault(method, {}).update(kw)
    demo = {
        "data": {"dataset": "faithful"}, "num_components": 2, "methods": ("kmeans",) + tuple(opts["methods"]),
        "covariance_type": "full", "test_fraction": 0.25, "seed": opts["seed"], "out": opts["out"],
        "engines": engines, "plot": True, "progress": opts["progress"],
    }
    return run_compare(demo, out, title="Old Faithful (272 eruptions: eruption length and waiting time, minutes), K=2, "
                                   "75% training / 25% held out")


# ----------------------------------------------------------------------------------------------
# Argument parsing and TOML configuration
# ----------------------------------------------------------------------------------------------
def _parse_engine_options(items) -> dict:
    """``["mcmc.num_samples=500", ...]`` -> ``{"mcmc": {"num_samples": 500}}`` (TOML values)."""
    engines: dict = {}
    for item in items or ():
        key, sep, value = item.partition("=")
        method, dot, name = key.partition(".")
        if not sep or not dot or not name:
            raise UsageError(f"--engine-option {item!r}: write METHOD.NAME=VALUE, e.g. mcmc.num_samples=500.")
        try:
            parsed = tomllib.loads(f"v = {value}")["v"]
        except tomllib.TOMLDecodeError:
            parsed = value  # a bare string
        engines.setdefault(method.strip(), {})[name.strip()] = parsed
    return engines


def _data_spec(args) -> dict:
    spec = {}
    for key in ("dataset", "columns", "label_column"):
        if getattr(args, key, None):
            spec[key] = getattr(args, key)
    if getattr(args, "input", None):
        spec["path"] = args.input
    return spec


def _common(p, *, out_default):
    p.add_argument("--out", default=out_default,
                   help="output folder; must be new or empty unless --overwrite (default: %(default)s)")
    p.add_argument("--overwrite", action="store_true",
                   help="write into a non-empty --out folder, replacing the files of the earlier bayesgmm run there "
                        "(listed in its " + MANIFEST + "); other files are left alone (default: refuse a non-empty folder)")
    p.add_argument("--seed", type=int, default=0, help="random seed; the same seed gives the same results (default: %(default)s)")


def _data_args(p, *, labels=False):
    p.add_argument("input", nargs="?",
                   help="CSV, TSV or Parquet file with a header row of column names (default: none; or use --dataset)")
    p.add_argument("--dataset", choices=DATASETS, help="a bundled data set instead of a file (default: none)")
    p.add_argument("--columns", nargs="+",
                   help="feature columns, all numeric (default: every column except the label column; "
                        "name the numeric ones if the file has others)")
    if labels:
        p.add_argument("--label-column",
                       help="column of true labels: not a feature, used only to score the clustering (ARI/NMI) "
                            "(default: none)")


def _plot_args(p):
    p.add_argument("--no-plot", dest="plot", action="store_false", help="do not write figures (default: write them)")


def _progress_args(p):
    p.add_argument("--no-progress", dest="progress", action="store_false",
                   help="hide progress bars (default: show them)")


def _engine_option_args(p, *, one_engine: bool):
    if one_engine:
        p.add_argument("--engine-option", action="append", metavar="NAME=VALUE",
                       help="keyword argument of the engine, a TOML value, e.g. n_init=10, num_samples=500, "
                            "prior=default (repeatable; default: the engine's defaults)")
    else:
        p.add_argument("--engine-option", action="append", metavar="METHOD.NAME=VALUE",
                       help="keyword argument of one engine, a TOML value, e.g. mcmc.num_samples=500 "
                            "(repeatable; default: the engines' defaults)")


_COMPILE_CACHE_HELP = ("folder for JAX's persistent compilation cache, or 'off' "
                       "(default: $BAYESGMM_COMPILE_CACHE, else ~/.cache/bayesgmm/xla)")
_K_HELP = "number of mixture components K"


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="bayesgmm", description="Bayesian Gaussian mixture models: fit, compare, select, calibrate.",
                                 epilog="Exit codes: 0 success, 2 invalid input or configuration, 1 internal error, "
                                        "130 interrupted (Ctrl-C; no files written).")
    ap.add_argument("--compile-cache", default=None, help=_COMPILE_CACHE_HELP)
    # --compile-cache also after the command; SUPPRESS keeps the value given before it (or the
    # default, set on import from the environment) when the command's own parser does not see it
    shared = argparse.ArgumentParser(add_help=False)
    shared.add_argument("--compile-cache", default=argparse.SUPPRESS, help=_COMPILE_CACHE_HELP)
    subparsers = ap.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name, **kwargs):
        return subparsers.add_parser(name, parents=[shared], **kwargs)

    demo = command("demo", help="Old Faithful with every engine: comparison table, figures, fits")
    _common(demo, out_default="bayesgmm_demo")
    demo.add_argument("--methods", nargs="+", choices=ENGINES, default=["em", "vb", "svi", "mcmc"],
                      help="engines to run besides k-means (default: %(default)s)")
    _engine_option_args(demo, one_engine=False)
    _progress_args(demo)
    demo.set_defaults(handler=run_demo)

    fit = command("fit", help="fit one engine to a data file")
    _data_args(fit)
    fit.add_argument("-k", "--num-components", type=int, required=True, help=_K_HELP + " (required)")
    fit.add_argument("--method", choices=ENGINES, default="em",
                     help="engine: em (maximum likelihood), map-em (MAP-EM, default prior unless prior= is given), "
                          "vb, svi or mcmc (default: %(default)s)")
    fit.add_argument("--covariance-type", choices=COVARIANCE_TYPES, default="full",
                     help="covariance structure (default: %(default)s)")
    _engine_option_args(fit, one_engine=True)
    fit.add_argument("--stream", action="store_true",
                     help="EM or MAP-EM out of core: read a .npy or Parquet file in chunks (memory bounded by "
                          "--batch-size) (default: in memory)")
    fit.add_argument("--batch-size", type=int, default=65536, help="rows per chunk with --stream (default: %(default)s)")
    _progress_args(fit)
    _common(fit, out_default="bayesgmm_out")
    _plot_args(fit)
    fit.set_defaults(handler=run_fit)

    cmp_ = command("compare", help="several engines on the same data: one table")
    _data_args(cmp_, labels=True)
    cmp_.add_argument("-k", "--num-components", type=int, required=True, help=_K_HELP + " (required)")
    cmp_.add_argument("--methods", nargs="+", choices=ENGINES + ("kmeans",), default=["em", "vb", "svi", "mcmc"],
                      help="engines to compare (default: %(default)s)")
    cmp_.add_argument("--covariance-type", choices=COVARIANCE_TYPES, default="full",
                      help="covariance structure (default: %(default)s)")
    cmp_.add_argument("--test-fraction", type=float, default=0.0,
                      help="share of rows held out to score the held-out log predictive density (default: %(default)s)")
    _engine_option_args(cmp_, one_engine=False)
    _progress_args(cmp_)
    _common(cmp_, out_default="bayesgmm_compare")
    _plot_args(cmp_)
    cmp_.set_defaults(handler=run_compare)

    sel = command("select", help="BIC/AIC/ICL over K and covariance structures")
    _data_args(sel, labels=True)
    sel.add_argument("-k", nargs="+", type=int, default=[1, 2, 3, 4, 5],
                     help="numbers of components to compare (default: 1 2 3 4 5)")
    sel.add_argument("--covariance-types", nargs="+", choices=COVARIANCE_TYPES, default=list(COVARIANCE_TYPES),
                     help="covariance structures to compare (default: all four)")
    sel.add_argument("--prior", choices=("none", "default"), default="none",
                     help="none: maximum likelihood; default: MAP-EM with mclust's default prior per K "
                          "(default: %(default)s)")
    sel.add_argument("--n-init", type=_n_init, default="auto",
                     help="starts per model: 'auto' (the default search of fit_em) or an integer (default: %(default)s)")
    _common(sel, out_default="bayesgmm_select")
    _plot_args(sel)
    sel.set_defaults(handler=run_select)

    sim = command("simulate", help="draw a data set from the generative story")
    sim.add_argument("-n", "--num-obs", type=int, default=500, help="number of observations (default: %(default)s)")
    sim.add_argument("-k", "--num-components", type=int, default=3, help=_K_HELP + " (default: %(default)s)")
    sim.add_argument("-d", "--num-features", type=int, default=2, help="number of features D (default: %(default)s)")
    sim.add_argument("--separation", type=float, default=4.0,
                     help="distance between component means in units of their spread (default: %(default)s)")
    sim.add_argument("--covariance-type", choices=COVARIANCE_TYPES, default="full",
                     help="covariance structure (default: %(default)s)")
    _common(sim, out_default="bayesgmm_simulated")
    sim.set_defaults(handler=run_simulate)

    study = command("study", help="simulation study: every engine on many simulated data sets")
    study.add_argument("--num-datasets", type=int, default=20,
                       help="simulated data sets per setting (default: %(default)s)")
    study.add_argument("-n", "--num-obs", type=int, nargs="+", default=[200],
                       help="numbers of observations to try (default: 200)")
    study.add_argument("--separation", type=float, nargs="+", default=[3.0],
                       help="separations of the component means to try (default: 3.0)")
    study.add_argument("-k", "--num-components", type=int, nargs="+", default=[2],
                       help="numbers of components to try (default: 2)")
    study.add_argument("-d", "--num-features", type=int, default=2, help="number of features D (default: %(default)s)")
    study.add_argument("--methods", nargs="+", choices=ENGINES, default=["em", "vb", "mcmc"],
                       help="engines to run on every data set (default: %(default)s)")
    study.add_argument("--covariance-type", choices=COVARIANCE_TYPES, default="full",
                       help="covariance structure (default: %(default)s)")
    _engine_option_args(study, one_engine=False)
    _progress_args(study)
    _common(study, out_default="bayesgmm_study")
    study.set_defaults(handler=run_study)

    sb = command("sbc", help="simulation-based calibration of a Bayesian engine")
    sb.add_argument("-k", "--num-components", type=int, default=2, help=_K_HELP + " (default: %(default)s)")
    sb.add_argument("-n", "--num-obs", type=int, default=100,
                    help="observations per simulated data set (default: %(default)s)")
    sb.add_argument("-d", "--num-features", type=int, default=1, help="number of features D (default: %(default)s)")
    sb.add_argument("--method", choices=("vb", "svi", "mcmc"), default="vb",
                    help="Bayesian engine to calibrate (default: %(default)s)")
    sb.add_argument("--covariance-type", choices=COVARIANCE_TYPES, default="full",
                    help="covariance structure (default: %(default)s)")
    sb.add_argument("--replications", type=int, default=100,
                    help="simulated data sets, one rank each (default: %(default)s)")
    sb.add_argument("--num-ranks", type=int, default=99,
                    help="posterior draws each rank is computed from (default: %(default)s)")
    _engine_option_args(sb, one_engine=True)
    _progress_args(sb)
    _common(sb, out_default="bayesgmm_sbc")
    _plot_args(sb)
    sb.set_defaults(handler=run_sbc)

    run = command("run", help="run a command described by a TOML file",
                  description="Run an experiment described by a TOML file: a 'command' key (fit, compare, select, "
                              "simulate, study, sbc, demo), the command's options by their long names "
                              "(num_components = 3), a [data] table (dataset or path, columns, label_column), "
                              "[engines.<method>] tables and, for sbc, a [prior] table. Values have the options' "
                              "types (true/false for flags). Relative paths in the file (data path, out) are "
                              "relative to the file's folder.")
    run.add_argument("config", help="TOML file (required)")
    run.add_argument("--out", help="output folder (default: the file's 'out', else the command's default folder)")
    run.add_argument("--overwrite", action="store_true", default=None,
                     help="as the command's --overwrite (default: the file's 'overwrite', else false)")
    run.set_defaults(handler=None)
    return ap


#: options each command takes (argparse dest names), besides data/engines
_OPTIONS = {
    "demo": ("out", "overwrite", "seed", "methods", "progress"),
    "fit": ("num_components", "method", "covariance_type", "out", "overwrite", "seed", "plot", "stream", "batch_size",
            "progress"),
    "compare": ("num_components", "methods", "covariance_type", "test_fraction", "out", "overwrite", "seed", "plot",
                "progress"),
    "select": ("k", "covariance_types", "prior", "n_init", "out", "overwrite", "seed", "plot"),
    "simulate": ("num_obs", "num_components", "num_features", "separation", "covariance_type", "out", "overwrite",
                 "seed"),
    "study": ("num_datasets", "num_obs", "separation", "num_components", "num_features", "methods", "covariance_type",
              "out", "overwrite", "seed", "progress"),
    "sbc": ("num_components", "num_obs", "num_features", "method", "covariance_type", "replications", "num_ranks",
            "out", "overwrite", "seed", "plot", "progress"),
}
_HANDLERS = {"demo": run_demo, "fit": run_fit, "compare": run_compare, "select": run_select,
             "simulate": run_simulate, "study": run_study, "sbc": run_sbc}
_TAKES_DATA = ("fit", "compare", "select")


#: engine keyword arguments that a command sets itself, and the command's own option for each
_OWN_FLAGS = {
    "num_components": "-k/--num-components", "covariance_type": "--covariance-type", "seed": "--seed",
    "method": "--method", "columns": "--columns", "batch_size": "--batch-size", "progress_bar": "--no-progress",
}


def _set_by_command(command, method, opts) -> dict:
    """``{engine keyword: the command's own option (None: fixed by the command)}`` for ``method``."""
    if command == "fit" and opts.get("stream"):
        names = ("source", "num_components", "covariance_type", "columns", "batch_size", "seed", "progress_bar")
    elif command == "fit":
        names = ("x", "num_components", "method", "covariance_type", "seed")
    elif command == "sbc":
        names = ("x", "num_components", "prior", "covariance_type", "seed")
    elif method == "kmeans":
        names = ("x", "num_components", "seed")
    else:  # compare, study, demo: one prior for every engine
        names = ("x", "num_components", "method", "covariance_type", "prior", "seed")
    flags = {name: _OWN_FLAGS.get(name) for name in names}
    if command in ("compare", "study", "demo") and "method" in flags:
        flags["method"] = "--methods"
    if command == "demo":
        flags.update(num_components=None, covariance_type=None)
    if command == "sbc":
        flags["prior"] = "the [prior] table of a TOML file"
    return flags


def check_engine_options(command, opts) -> None:
    """Engine options only for the methods the command runs, and none that the command sets itself."""
    engines = opts.get("engines") or {}
    if command in ("fit", "sbc"):
        methods = (opts["method"],)
    else:
        methods = (("kmeans",) if command == "demo" else ()) + tuple(opts.get("methods") or ())
    idle = [m for m in engines if m not in methods]
    if idle:
        runs = f"--method is {opts['method']!r}" if command in ("fit", "sbc") else f"the methods run are {list(methods)}"
        raise UsageError(f"engine options for {', '.join(map(repr, idle))}, which this command does not run "
                         f"({runs}); remove them or run that method.")
    for method, kwargs in engines.items():
        own = _set_by_command(command, method, opts)
        for name in kwargs:
            if name not in own:
                continue
            label = name if command in ("fit", "sbc") else f"{method}.{name}"
            if own[name] is None:
                why = (": every engine gets the same default prior, so that they are compared on one model"
                       if name == "prior" else "")
                raise UsageError(f"engine option {label} is set by the {command!r} command itself and cannot be given{why}.")
            by = f"the command's own flag {own[name]}" if own[name].startswith("-") else own[name]
            raise UsageError(f"engine option {label} is set by {by}; use that.")


def options_from_args(args) -> dict:
    opts = {name: getattr(args, name) for name in _OPTIONS[args.command]}
    if args.command in _TAKES_DATA:
        opts["data"] = _data_spec(args)
    items = getattr(args, "engine_option", None) or ()
    if args.command in ("fit", "sbc"):  # one engine: NAME=VALUE, the method prefix optional
        for item in items:
            if "=" not in item:
                raise UsageError(f"--engine-option {item!r}: write NAME=VALUE, e.g. num_samples=500.")
        opts["engines"] = _parse_engine_options(
            [item if item.partition(".")[0] in ENGINES else f"{opts['method']}.{item}" for item in items])
    else:
        opts["engines"] = _parse_engine_options(items)
    return opts


def _option_kinds(parser, command) -> dict:
    """``{option: (kind, type, choices)}`` of a command's options, read from its argparse parser:
    kind is "bool" (a flag), "list" (``nargs="+"``) or "scalar"."""
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices[command]
    kinds = {}
    for action in sub._actions:
        if action.dest in _OPTIONS[command]:
            kind = "bool" if action.nargs == 0 else "list" if action.nargs in ("+", "*") else "scalar"
            kinds[action.dest] = (kind, action.type or str, action.choices)
    return kinds


_TYPE_NAMES = {int: "an integer", float: "a number", str: "a string"}


def _toml_value(where, key, value, kind, typ, choices):
    """``value`` checked against the command-line option's type (a scalar may stand for a list of one)."""
    def bad(expected):
        return UsageError(f"{where}: {key} must be {expected}, got {value!r}.")

    if kind == "bool":
        if not isinstance(value, bool):
            raise bad("true or false (a TOML boolean)")
        return value
    items = value if kind == "list" and isinstance(value, list) else [value]
    if kind == "list" and not items:
        raise bad("a non-empty list")
    checked = []
    for item in items:
        ok = (isinstance(item, str) if typ is str else
              isinstance(item, int) and not isinstance(item, bool) if typ is int else
              isinstance(item, (int, float)) and not isinstance(item, bool))
        if not ok:
            expected = _TYPE_NAMES.get(typ, typ.__name__)
            raise bad(f"{expected} or a list of them" if kind == "list" else expected)
        item = typ(item)
        if choices is not None and item not in choices:
            raise bad(("one or a list of " if kind == "list" else "one of ") + ", ".join(map(repr, choices)))
        checked.append(item)
    return checked if kind == "list" else checked[0]


def _relative_to(base: Path, value: str) -> str:
    path = Path(value).expanduser()
    return str(path if path.is_absolute() else base / path)


def options_from_toml(path, out=None, overwrite=None) -> dict:
    """The options dict of a TOML experiment file (see ``bayesgmm run --help``).

    Relative paths in the file (``[data] path``, ``out``) are relative to the file's folder;
    ``out`` given here (``run --out``) is used as it is, and ``overwrite`` (``run
    --overwrite``), when not None, replaces the file's.
    """
    p = Path(path)
    where = f"config file {str(path)!r}"
    if not p.exists():
        raise UsageError(f"{where} does not exist.")
    if p.is_dir():
        raise UsageError(f"{where} is a folder, not a TOML file.")
    try:
        config = tomllib.loads(p.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as err:
        raise UsageError(f"{where} is not valid TOML: {err}.") from None
    except UnicodeDecodeError:
        raise UsageError(f"{where} is not valid TOML: not UTF-8 text.") from None
    except OSError as err:
        raise UsageError(f"cannot read {where}: {err.strerror or err}.") from None
    command = config.pop("command", None)
    if not isinstance(command, str) or command not in _HANDLERS:
        raise UsageError(f"{where}: 'command' must be one of {sorted(_HANDLERS)}, got {command!r}.")
    parser = build_parser()
    argv = [command] + (["--dataset", "faithful"] if command in _TAKES_DATA else [])
    argv += {"fit": ["-k", "1"], "compare": ["-k", "1"]}.get(command, [])
    defaults = options_from_args(parser.parse_args(argv))  # the command-line defaults
    data = config.pop("data", None)
    engines = config.pop("engines", {})
    prior = config.pop("prior", None) if command == "sbc" else None  # select's prior is an option
    if isinstance(config.get("prior"), dict):
        raise UsageError(f"{where}: a [prior] table is only read by 'sbc'.")
    unknown = set(config) - set(_OPTIONS[command])
    if unknown:
        raise UsageError(
            f"{where}: unknown option(s) {sorted(unknown)} for {command!r}; allowed: "
            f"{sorted(_OPTIONS[command])} and the tables [data], [engines.<method>]" + (", [prior]" if command == "sbc" else "") + "."
        )
    kinds = _option_kinds(parser, command)
    config = {key: _toml_value(where, key, value, *kinds[key]) for key, value in config.items()}
    base = p.parent
    if "out" in config:
        config["out"] = _relative_to(base, config["out"])
    if command in _TAKES_DATA:
        if not isinstance(data, dict):
            raise UsageError(f"{where}: a [data] table (dataset or path) is required for {command!r}.")
        data = dict(data)
        if isinstance(data.get("path"), str):
            data["path"] = _relative_to(base, data["path"])
        defaults["data"] = data
    elif data is not None:
        raise UsageError(f"{where}: {command!r} takes no [data] table.")
    if command in ("fit", "compare") and "num_components" not in config:
        raise UsageError(f"{where}: num_components is required for {command!r}.")
    if not isinstance(engines, dict) or not all(isinstance(v, dict) for v in engines.values()):
        raise UsageError(f"{where}: engine options go in tables like [engines.mcmc].")
    defaults.update(config)
    defaults["engines"] = engines
    if prior is not None:
        if not isinstance(prior, dict):
            raise UsageError(f"{where}: the prior goes in a [prior] table.")
        defaults["prior"] = prior
    if out is not None:
        defaults["out"] = out
    if overwrite is not None:
        defaults["overwrite"] = overwrite
    defaults["command"] = command
    return defaults


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
        return len(text)

    def flush(self):
        if not self.broken:
            try:
                self.stream.flush()
            except BrokenPipeError:
                self._break()

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


def _one_line_warning(message, category, filename, lineno, file=None, line=None):
    """Warnings during a command: one line on stderr, no Python source line."""
    text = " ".join(str(message).split())
    try:
        print(f"bayesgmm: warning: {category.__name__}: {text}", file=sys.stderr if file is None else file)
    except (OSError, ValueError):  # stderr closed
        pass


def _interrupted() -> int:
    print("bayesgmm: interrupted (Ctrl-C); no files were written.", file=sys.stderr)
    return 130


def main(argv=None) -> int:
    """Run the command line; returns the exit code (0, 1, 2, or 130 after Ctrl-C)."""
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
            warnings.showwarning = _one_line_warning
            return _run(args)
    except KeyboardInterrupt:
        return _interrupted()
    except BrokenPipeError:  # a closed pipe met outside sys.stdout: stop quietly, as Unix tools do
        _quiet_stdout()
        return 1
    except ValueError as err:  # UsageError and the library's input validation
        print(f"bayesgmm: error: {_one_line(err)}", file=sys.stderr)
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
        traceback.print_exc()
        return 1
    except Exception:  # noqa: BLE001 - report, with the traceback, as an internal error
        traceback.print_exc()
        return 1


def _one_line(err) -> str:
    return " ".join(str(err).split())


def _run(args) -> int:
    if args.compile_cache is not None:
        _set_compile_cache(args.compile_cache)
    if args.command == "run":
        opts = options_from_toml(args.config, args.out, args.overwrite)
        command = opts.pop("command")
    else:
        opts = options_from_args(args)
        command = args.command
    check_engine_options(command, opts)
    inputs = [p for p in ((opts.get("data") or {}).get("path"), getattr(args, "config", None)) if p]
    out = OutputFolder(opts["out"], overwrite=opts.get("overwrite", False), command=command,
                       options={k: v for k, v in opts.items() if k != "progress"}, inputs=inputs)
    _ACTIVE.append(out)
    try:
        stdout = sys.stdout = _PipeSafeStdout(sys.stdout)
        try:
            rc = _HANDLERS[command](opts, out)
            if rc == 0:
                out.commit()
                _wrote(out.files)
            stdout.flush()  # here, so that a closed pipe is not reported at exit
        finally:
            sys.stdout = stdout.stream
    finally:
        _ACTIVE.remove(out)
        out.discard()
    return rc


def _exit_now(rc: int) -> None:
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(rc)


def _watch_interrupts(read_fd: int) -> None:
    """Thread body: on SIGINT, delete the running command's staged files, print one line and
    exit 130 at once, whatever the main thread is doing (an XLA compilation or run, a NetCDF
    write, Python's garbage collector, which would swallow a ``KeyboardInterrupt``). Waits for a
    commit in progress; after a commit the command is done and finishes normally."""
    while True:
        try:
            data = os.read(read_fd, 64)
        except InterruptedError:
            continue
        if not data:
            return
        if signal.SIGINT in data:
            break
    with _COMMIT_LOCK:
        active = list(_ACTIVE)
        if any(out.committed for out in active):
            return
        for out in active:
            for _ in range(3):  # the main thread may still be creating files in the staging folder
                out.discard()
                if not out.stage.exists():
                    break
        _interrupted()
        _exit_now(130)


def _install_interrupt_watcher() -> None:
    """SIGINT wakes :func:`_watch_interrupts` (through :func:`signal.set_wakeup_fd`, written by
    the C-level handler the moment the signal arrives) instead of raising KeyboardInterrupt."""
    read_fd, write_fd = os.pipe()
    os.set_blocking(write_fd, False)
    signal.signal(signal.SIGINT, lambda signum, frame: None)  # the watcher acts, not the main thread
    signal.set_wakeup_fd(write_fd, warn_on_full_buffer=False)
    threading.Thread(target=_watch_interrupts, args=(read_fd,), name="bayesgmm-interrupt", daemon=True).start()


def console_main() -> int:
    """The ``bayesgmm`` executable and ``python -m bayesgmm``: :func:`main`, with Ctrl-C handled
    by a watcher thread that exits at once (status 130, one line, no partial files) and skips
    interpreter shutdown, which could otherwise crash (SIGSEGV) while XLA threads are still
    compiling or running."""
    try:
        _install_interrupt_watcher()
    except (OSError, ValueError):  # no pipe, or not the main thread: KeyboardInterrupt as in main()
        pass
    rc = main()
    if rc == 130:
        _exit_now(130)
    return rc


if __name__ == "__main__":
    sys.exit(console_main())
