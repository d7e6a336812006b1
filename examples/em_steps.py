"""EM step by step on the Old Faithful eruptions (after Bishop, PRML Figure 9.8).
==============================================================================

The 272 eruptions of Old Faithful (duration and waiting time, in minutes) are standardised and
fitted with a two-component full-covariance Gaussian mixture by EM, started from a deliberately
poor point: means in the two empty corners of the plot, small round covariances (0.3 I),
equal weights. The
figure shows the start, the fit after iterations 1, 2 and 5 and the converged fit, with points
coloured by their responsibilities (blue and red for the two components, purple for points the
model is unsure about) and 1- and 2-standard-deviation ellipses, plus the log-likelihood against
iteration, which EM never decreases.

Run ``python examples/em_steps.py --help`` for options.
"""

from __future__ import annotations

import argparse
import pathlib
import sys

import numpy as np

START_MEANS = ((-1.5, 1.0), (1.5, -1.0))
START_VARIANCE = 0.3

# this folder's output/; sphinx-gallery runs the script without __doc__ and __file__
OUTPUT = pathlib.Path(globals().get("__file__", sys.argv[0])).resolve().parent / "output"


def parse_args(args):
    p = argparse.ArgumentParser(description=(__doc__ or " ").splitlines()[0])
    p.add_argument("--iterations", type=int, nargs="+", default=[0, 1, 2, 5], help="EM iterations shown before the final fit")
    p.add_argument("--max-iter", type=int, default=500, help="iteration limit of the final fit")
    p.add_argument("--tol", type=float, default=None,
                   help="convergence tolerance per observation (default: fit_em's, 1e-5)")
    p.add_argument("--num-obs", type=int, default=None, help="use only the first NUM_OBS eruptions (for quick runs)")
    p.add_argument("--dpi", type=int, default=150, help="resolution of the PNG figures")
    p.add_argument("--out", type=pathlib.Path, default=OUTPUT, help="output folder")
    return p.parse_args(args)


def main(args=()):
    """Run the example; returns a dict with the final fit, the fits per iteration and the figure path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import pandas as pd

    import bayesgmm as bg
    from bayesgmm import plotting
    from bayesgmm.em import fit_em_path

    a = parse_args(list(args))
    a.out.mkdir(parents=True, exist_ok=True)
    raw = bg.datasets.load_faithful()
    if a.num_obs is not None:
        raw = raw[: a.num_obs]
    std = (raw - raw.mean(0)) / raw.std(0)
    x = pd.DataFrame(std, columns=["eruption duration (standardised)", "waiting time (standardised)"])
    init = dict(
        weights_init=np.array([0.5, 0.5]),
        means_init=np.array(START_MEANS, dtype=float),
        precisions_init=np.tile(np.eye(2) / START_VARIANCE, (2, 1, 1)),
    )

    final = bg.fit_em(x, 2, tol=a.tol, max_iter=a.max_iter, **init)
    its = sorted(set(a.iterations) - {final.n_iter})
    its.append(final.n_iter)
    labels = ["start" if t == 0 else f"iteration {t}" for t in its[:-1]] + [f"converged (iteration {final.n_iter})"]

    ncols = 3
    nrows = -(-(len(its) + 1) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(3.6 * ncols, 3.4 * nrows), layout="constrained", squeeze=False)
    axes = axes.ravel()
    fits = fit_em_path(x, 2, its, **init)
    plotting.plot_em_iterations(x, fits, axes=axes[: len(its)], labels=labels, legend=False)
    trace_ax = plotting.plot_trace(final, ax=axes[len(its)], first=1)
    trace_ax.set_title(f"log-likelihood (start: {final.trace[0]:.0f})", fontsize="medium")
    for t in its:
        if t > 0:
            trace_ax.plot(t, final.trace[t], "o", ms=7, mfc="none", mec="#c0392b", mew=1.3)
    trace_ax.plot([], [], "o", ms=7, mfc="none", mec="#c0392b", label="panels shown")
    trace_ax.legend(frameon=False, fontsize="x-small", loc="lower right")
    for ax in axes[len(its) + 1 :]:
        ax.set_visible(False)
    for ax in axes[: len(its)]:  # y labels on the first column only
        ax.set_ylabel(x.columns[1] if ax in axes[::ncols] else "")
    fig.legend(handles=plotting.legend_handles(2, "clusters"), loc="outside lower center", ncols=5, frameon=False)
    path = a.out / "em_steps_faithful.png"
    fig.savefig(path, dpi=a.dpi)
    plt.close(fig)

    trace = np.asarray(final.trace)
    print(f"EM on standardised Old Faithful (N = {len(x)}): converged {final.converged} after {final.n_iter} iterations")
    for t in its:
        r = fits[t]
        print(f"  iteration {t:3d}: log-likelihood {r.log_likelihood:9.3f}  weights {np.round(r.weights, 3)}")
    print(f"final means (standardised):\n{np.round(final.means, 3)}")
    drop = max(0.0, -np.min(np.diff(trace))) / np.max(np.abs(trace))
    print(f"largest relative decrease of the log-likelihood between iterations: {drop:.1e} (round-off level: EM never decreases it)")
    print(f"figure: {path}")
    return {"result": final, "fits": fits, "trace": trace, "x": x.to_numpy(), "figures": [path]}


if __name__ == "__main__":
    main(sys.argv[1:])
