"""The ``bayesgmm`` command line.

Subcommands
-----------
``demo``  EM on the bundled Old Faithful data: prints the fitted parameters, writes a figure and
          the fit as JSON.
``fit``   Fit a mixture to a CSV file (column selection), writing JSON (and NetCDF for engines
          with ArviZ support) plus a figure.

Exit codes: 0 success, 2 bad usage or input (missing file, unknown column, invalid option).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

ENGINES = ("em", "vb", "svi", "mcmc")


def _fit(x, k, method, covariance_type, seed, n_init):
    import bayesgmm as bg

    if method == "em":
        return bg.fit_em(x, k, covariance_type=covariance_type, n_init=n_init, seed=seed)
    if method == "vb":
        from .vb import fit_vb

        return fit_vb(x, k, covariance_type=covariance_type, n_init=n_init, seed=seed)
    if method == "svi":
        from .svi import fit_svi

        return fit_svi(x, k, covariance_type=covariance_type, seed=seed)
    from .mcmc import fit_mcmc

    return fit_mcmc(x, k, covariance_type=covariance_type, seed=seed)


def _print_fit(result, out=None):
    out = sys.stdout if out is None else out
    names = result.feature_names
    print(f"{result.method} fit, K={result.num_components}, covariance_type={result.covariance_type}: "
          f"log-likelihood {result.log_likelihood:.3f}, converged={result.converged} after {result.n_iter} iterations",
          file=out)
    for k in range(result.num_components):
        mean = ", ".join(f"{n}={v:.4g}" for n, v in zip(names, result.means[k]))
        print(f"  component {k}: weight {result.weights[k]:.4f}, mean ({mean})", file=out)
        cov = result.full_covariances[k]
        sd = ", ".join(f"{n}={v:.4g}" for n, v in zip(names, cov.diagonal() ** 0.5))
        print(f"               sd ({sd})", file=out)


def _figure(result, x, path):
    import matplotlib

    matplotlib.use("Agg")
    from . import plotting

    if x.shape[1] == 1:
        fig = plotting.plot_density_1d(result, x).figure
    else:
        fig = plotting.plot_clusters_2d(result, x).figure
    fig.savefig(path, dpi=150)
    return path


def cmd_demo(args) -> int:
    import bayesgmm as bg

    x = bg.datasets.load_faithful(as_frame=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    result = bg.fit_em(x, 2, n_init=args.n_init, seed=args.seed)
    print("Old Faithful (272 eruptions; eruption length and waiting time, minutes)")
    _print_fit(result)
    print(f"  BIC {result.bic(x):.2f}")
    result.to_json(out / "faithful_em.json")
    fig = _figure(result, x.to_numpy(), out / "faithful_em.png")
    print(f"wrote {out / 'faithful_em.json'} and {fig}")
    return 0


def _read_table(path, columns):
    import pandas as pd

    p = Path(path)
    if not p.exists():
        raise ValueError(f"input file {path!r} does not exist.")
    df = pd.read_parquet(p) if p.suffix in (".parquet", ".pq") else pd.read_csv(p)
    if columns:
        missing = [c for c in columns if c not in df.columns]
        if missing:
            raise ValueError(f"column(s) {missing} not in {path!r}; available: {list(df.columns)}.")
        df = df[columns]
    return df


def cmd_fit(args) -> int:
    df = _read_table(args.input, args.columns)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    result = _fit(df, args.num_components, args.method, args.covariance_type, args.seed, args.n_init)
    _print_fit(result)
    stem = f"{args.method}_k{args.num_components}"
    result.to_json(out / f"{stem}.json")
    written = [out / f"{stem}.json"]
    if result.draws is not None or args.netcdf:
        from .diagnostics import save_result

        save_result(result, out / f"{stem}.nc", x=df)
        written.append(out / f"{stem}.nc")
    if not args.no_plot:
        written.append(_figure(result, df.to_numpy(dtype=float), out / f"{stem}.png"))
    print("wrote " + ", ".join(map(str, written)))
    return 0


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="bayesgmm", description="Bayesian Gaussian mixture models.")
    sub = ap.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="EM on the bundled Old Faithful data; prints parameters, writes a figure.")
    demo.add_argument("--out", default="bayesgmm_demo", help="output folder (default: %(default)s)")
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--n-init", type=int, default=5)
    demo.set_defaults(func=cmd_demo)
    fit = sub.add_parser("fit", help="fit a mixture to a CSV or Parquet file")
    fit.add_argument("input", help="CSV or Parquet file")
    fit.add_argument("-k", "--num-components", type=int, required=True)
    fit.add_argument("--columns", nargs="+", help="columns to use (default: all)")
    fit.add_argument("--method", choices=ENGINES, default="em")
    fit.add_argument("--covariance-type", choices=("full", "diag", "spherical", "tied"), default="full")
    fit.add_argument("--n-init", type=int, default=5)
    fit.add_argument("--seed", type=int, default=0)
    fit.add_argument("--out", default="bayesgmm_out", help="output folder (default: %(default)s)")
    fit.add_argument("--netcdf", action="store_true", help="also write ArviZ NetCDF for point fits")
    fit.add_argument("--no-plot", action="store_true")
    fit.set_defaults(func=cmd_fit)
    return ap


def main(argv=None) -> int:
    os.environ.setdefault("MPLBACKEND", "Agg")
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except ValueError as err:
        print(f"bayesgmm: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
