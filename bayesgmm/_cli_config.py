"""The command line's options: the argument parser, TOML experiment files, and the checks that
turn either into one dict of options per command.

Private to :mod:`bayesgmm.cli`.
"""

from __future__ import annotations

import argparse
import tomllib
from pathlib import Path

from ._cli_io import DATASETS, ENGINES, MANIFEST, UsageError, n_init
from ._covariance_models import MODELS
from .engines import engine_names
from .params import COVARIANCE_TYPES


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


def _data_args(p, *, labels=False, stream=False):
    p.add_argument("input", nargs="?",
                   help="CSV, TSV or Parquet file with a header row of column names" +
                        (", or with --stream a .npy or Parquet file" if stream else "") + " (default: none; or use --dataset)")
    p.add_argument("--dataset", choices=DATASETS, help="a bundled data set instead of a file (default: none)")
    p.add_argument("--columns", nargs="+",
                   help="feature columns, all numeric (default: every column except the label column; "
                        "name the numeric ones if the file has others)")
    if labels:
        p.add_argument("--label-column",
                       help="column of true labels (e.g. simulate's 'component'): not a feature, used only to score "
                            "the clustering (ARI) (default: none)")


def _plot_args(p, *, stream=False):
    p.add_argument("--no-plot", dest="plot", action="store_false",
                   help="do not write figures (default: write them" + ("; a --stream fit's is its objective trace" if stream else "")
                        + ")")


def _on_error_args(parser, what: str) -> None:
    parser.add_argument("--on-error", choices=("raise", "record"), default="raise",
                        help=f"when {what} fails: stop, naming it (raise), or record it in the table and go on "
                             "(record) (default: %(default)s)")


def _progress_args(p):
    p.add_argument("--no-progress", dest="progress", action="store_false",
                   help="hide progress bars (default: show them)")


#: The folder inside ``--out`` where ``study`` and ``sbc`` keep their finished data sets until the
#: command has written its files (the library's ``checkpoint=``), for ``--resume``.
CHECKPOINT_FOLDER = "checkpoint"

_RESUME_HELP = (f"continue an interrupted run in --out: the data sets it finished (kept in OUT/{CHECKPOINT_FOLDER}) are "
                "loaded and only the others run; the options must be the same (default: start afresh)")


def _resume_args(p):
    p.add_argument("--resume", action="store_true", help=_RESUME_HELP)


def _engine_option_args(p, *, one_engine: bool, prior: bool = True):
    if one_engine:
        example = "n_init=10, num_samples=500" + (", prior=default" if prior else "")
        p.add_argument("--engine-option", action="append", metavar="NAME=VALUE",
                       help=f"keyword argument of the engine, a TOML value, e.g. {example} (repeatable; default: the "
                            "engine's defaults)")
    else:
        p.add_argument("--engine-option", action="append", metavar="METHOD.NAME=VALUE",
                       help="keyword argument of one engine, a TOML value, e.g. mcmc.num_samples=500 "
                            "(repeatable; default: the engines' defaults)")


_COMPILE_CACHE_HELP = ("folder for JAX's persistent compilation cache, or 'off' "
                       "(default: $BAYESGMM_COMPILE_CACHE, else ~/.cache/bayesgmm/xla/jax-<version>)")
_K_HELP = "number of mixture components K"


def build_parser() -> argparse.ArgumentParser:
    """The command line's argument parser: the global ``--compile-cache`` option and one
    sub-command per task (``demo``, ``fit``, ``compare``, ``select``, ``simulate``, ``study``,
    ``sbc``, ``run``), each with its options and their defaults in its help.

    Returns
    -------
    argparse.ArgumentParser
        A new parser; ``parse_args`` gives the namespace :func:`bayesgmm.cli.main` runs, the
        sub-command in its ``command`` attribute.
    """
    ap = argparse.ArgumentParser(prog="bayesgmm", description="Bayesian Gaussian mixture models: fit, compare, select, calibrate.",
                                 epilog="Exit codes: 0 success, 2 invalid input or configuration, 1 internal error, "
                                        "130 interrupted (Ctrl-C; no files written), 143 terminated (SIGTERM, "
                                        "e.g. a job's time limit; no files written). An interrupted study or sbc "
                                        f"keeps the data sets it finished in OUT/{CHECKPOINT_FOLDER} for --resume.")
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
    demo.add_argument("--methods", nargs="+", choices=ENGINES, default=["em", "vb", "svi", "mcmc", "gibbs"],
                      help="engines to run besides k-means (default: %(default)s)")
    _engine_option_args(demo, one_engine=False)
    _progress_args(demo)

    fit = command("fit", help="fit one engine to a data file")
    _data_args(fit, labels=True, stream=True)
    fit.add_argument("-k", "--num-components", type=int, required=True, help=_K_HELP + " (required)")
    fit.add_argument("--method", choices=ENGINES, default="em",
                     help="engine: em (maximum likelihood), map-em (MAP-EM, default prior unless prior= is given), "
                          "vb, svi, mcmc or gibbs (default: %(default)s)")
    fit.add_argument("--covariance-type", choices=COVARIANCE_TYPES + MODELS, default="full", metavar="TYPE",
                     help="covariance structure: full, diag, spherical, tied, or with --method em or map-em one of mclust's "
                          "models EII ... VVV (default: %(default)s)")
    _engine_option_args(fit, one_engine=True)
    fit.add_argument("--missing", choices=("error", "marginalize"), default="error",
                     help="NaN cells (empty CSV cells): refuse them, or treat them as missing at random and fit the "
                          "observed-data likelihood (every engine, --stream too) (default: %(default)s)")
    fit.add_argument("--stream", action="store_true",
                     help="EM or MAP-EM out of core: read a .npy or Parquet file in chunks (memory bounded by "
                          "--batch-size) (default: in memory)")
    fit.add_argument("--batch-size", type=int, default=None,
                     help=f"rows per chunk with --stream, and only there (default: {STREAM_BATCH_SIZE})")
    _progress_args(fit)
    _common(fit, out_default="bayesgmm_out")
    _plot_args(fit, stream=True)

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
    _on_error_args(cmp_, "an engine")
    _progress_args(cmp_)
    _common(cmp_, out_default="bayesgmm_compare")
    _plot_args(cmp_)

    sel = command("select", help="BIC/AIC/ICL over K and covariance structures")
    _data_args(sel, labels=True)
    sel.add_argument("-k", nargs="+", type=int, default=[1, 2, 3, 4, 5],
                     help="numbers of components to compare (default: 1 2 3 4 5)")
    sel.add_argument("--covariance-types", nargs="+", choices=COVARIANCE_TYPES + MODELS + ("all",),
                     default=list(COVARIANCE_TYPES), metavar="TYPE",
                     help="covariance structures to compare: full, diag, spherical, tied, mclust's models EII ... VVV, "
                          "or all (mclust's 14) (default: full diag spherical tied)")
    sel.add_argument("--prior", choices=("none", "default"), default="none",
                     help="none: maximum likelihood; default: MAP-EM with mclust's default prior per K "
                          "(default: %(default)s)")
    sel.add_argument("--n-init", type=n_init, default="auto",
                     help="starts per model: 'auto' (the default search of fit_em) or an integer (default: %(default)s)")
    sel.add_argument("--missing", choices=("error", "marginalize"), default="error",
                     help="NaN cells (empty CSV cells): refuse them, or treat them as missing at random and compare "
                          "the models' observed-data likelihoods (default: %(default)s)")
    _common(sel, out_default="bayesgmm_select")
    _plot_args(sel)

    sim = command("simulate", help="draw a data set from the generative story")
    sim.add_argument("-n", "--num-obs", type=int, default=500, help="number of observations (default: %(default)s)")
    sim.add_argument("-k", "--num-components", type=int, default=3, help=_K_HELP + " (default: %(default)s)")
    sim.add_argument("-d", "--num-features", type=int, default=2, help="number of features D (default: %(default)s)")
    sim.add_argument("--separation", type=float, default=4.0,
                     help="distance between component means in units of their spread (default: %(default)s)")
    sim.add_argument("--covariance-type", choices=COVARIANCE_TYPES, default="full",
                     help="covariance structure (default: %(default)s)")
    _common(sim, out_default="bayesgmm_simulated")

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
    _on_error_args(study, "a fit")
    _progress_args(study)
    _common(study, out_default="bayesgmm_study")
    _resume_args(study)

    sb = command("sbc", help="simulation-based calibration of a Bayesian engine")
    sb.add_argument("-k", "--num-components", type=int, default=2, help=_K_HELP + " (default: %(default)s)")
    sb.add_argument("-n", "--num-obs", type=int, default=100,
                    help="observations per simulated data set (default: %(default)s)")
    sb.add_argument("-d", "--num-features", type=int, default=1, help="number of features D (default: %(default)s)")
    sb.add_argument("--method", choices=engine_names(draws=True), default="vb",
                    help="Bayesian engine to calibrate (default: %(default)s)")
    sb.add_argument("--covariance-type", choices=COVARIANCE_TYPES, default="full",
                    help="covariance structure (default: %(default)s)")
    sb.add_argument("--replications", type=int, default=100,
                    help="simulated data sets, one rank each (default: %(default)s)")
    sb.add_argument("--num-ranks", type=int, default=99,
                    help="posterior draws each rank is computed from (default: %(default)s)")
    _engine_option_args(sb, one_engine=True, prior=False)
    _on_error_args(sb, "a replication's fit")
    _progress_args(sb)
    _common(sb, out_default="bayesgmm_sbc")
    _resume_args(sb)
    _plot_args(sb)

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
    run.add_argument("--resume", action="store_true", default=None,
                     help="as study's and sbc's --resume (default: the file's 'resume', else false)")
    return ap


#: ``fit --stream``'s rows per chunk unless ``--batch-size`` is given.
STREAM_BATCH_SIZE = 65536

#: options each command takes (argparse dest names), besides data/engines
_OPTIONS = {
    "demo": ("out", "overwrite", "seed", "methods", "progress"),
    "fit": ("num_components", "method", "covariance_type", "out", "overwrite", "seed", "plot", "stream", "batch_size",
            "progress", "missing"),
    "compare": ("num_components", "methods", "covariance_type", "test_fraction", "out", "overwrite", "seed", "plot",
                "progress", "on_error"),
    "select": ("k", "covariance_types", "prior", "n_init", "out", "overwrite", "seed", "plot", "missing"),
    "simulate": ("num_obs", "num_components", "num_features", "separation", "covariance_type", "out", "overwrite",
                 "seed"),
    "study": ("num_datasets", "num_obs", "separation", "num_components", "num_features", "methods", "covariance_type",
              "out", "overwrite", "seed", "progress", "resume", "on_error"),
    "sbc": ("num_components", "num_obs", "num_features", "method", "covariance_type", "replications", "num_ranks",
            "out", "overwrite", "seed", "plot", "progress", "resume", "on_error"),
}
#: The commands (their functions are in :mod:`bayesgmm.cli`).
COMMANDS = ("demo", "fit", "compare", "select", "simulate", "study", "sbc")
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
        if typ not in _TYPE_NAMES:  # the option's own parser (--n-init: "auto" or a positive integer)
            if isinstance(item, bool) or not isinstance(item, (int, str)):
                raise bad("a string or an integer as on the command line")
            try:
                checked.append(typ(str(item)))
            except (argparse.ArgumentTypeError, ValueError) as err:
                raise UsageError(f"{where}: {key} must be {str(err).removeprefix('expected ')}.") from None
            continue
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


def options_from_toml(path, out=None, overwrite=None, resume=None) -> dict:
    """The options dict of a TOML experiment file (see ``bayesgmm run --help``).

    Relative paths in the file (``[data] path``, ``out``) are relative to the file's folder;
    ``out`` given here (``run --out``) is used as it is, and ``overwrite`` and ``resume`` (``run
    --overwrite``, ``run --resume``), when not None, replace the file's.
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
    if not isinstance(command, str) or command not in COMMANDS:
        raise UsageError(f"{where}: 'command' must be one of {sorted(COMMANDS)}, got {command!r}.")
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
    if resume is not None:
        if "resume" not in _OPTIONS[command]:
            raise UsageError(f"--resume continues an interrupted study or sbc; {where} runs {command!r}.")
        defaults["resume"] = resume
    defaults["command"] = command
    return defaults


