"""k-means against a Gaussian mixture when the clusters differ in spread and size.
===============================================================================

Simulated data (seeded): a large, tight cluster (750 points, standard deviation 0.5) beside a
small, wide one (250 points, standard deviation 2.0), centres 3 apart. k-means assigns every
point to the nearest centre, so its boundary is the perpendicular bisector between the centres:
it cuts through the wide cluster and hands the wide cluster's points near the tight centre to
the tight cluster. A Gaussian mixture (EM, full covariances) models each cluster's spread and
share; its boundary curls tightly around the tight cluster, close to the Bayes-optimal one
(the classifier that knows the true parameters).

Printed: the accuracy of k-means, of the mixture and of the Bayes-optimal classifier, each
after the best matching of cluster labels to the true groups. The figure shows the truth and
both clusterings, with misassigned points ringed and each method's decision boundary.

Run ``python examples/kmeans_vs_gmm.py --help`` for options.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import pathlib
import sys

import numpy as np

TIGHT_SD, WIDE_SD, SEPARATION = 0.5, 2.0, 3.0

# this folder's output/; sphinx-gallery runs the script without __doc__ and __file__
OUTPUT = pathlib.Path(globals().get("__file__", sys.argv[0])).resolve().parent / "output"


def simulate(n_tight: int, n_wide: int, seed: int):
    """Points (N, 2) and true labels (0 = tight cluster at the origin, 1 = wide cluster)."""
    rng = np.random.default_rng(seed)
    tight = rng.normal(0.0, TIGHT_SD, (n_tight, 2))
    wide = rng.normal(0.0, WIDE_SD, (n_wide, 2)) + np.array([SEPARATION, 0.0])
    return np.concatenate([tight, wide]), np.repeat([0, 1], [n_tight, n_wide])


def best_permutation(truth, labels, k: int):
    """The relabelling ``perm`` (labels -> truth) that maximises agreement, and that accuracy."""
    best = max(itertools.permutations(range(k)), key=lambda p: np.mean(np.asarray(p)[labels] == truth))
    perm = np.asarray(best)
    return perm, float(np.mean(perm[labels] == truth))


def bayes_optimal_labels(x, n_tight: int, n_wide: int):
    """Most probable true group of each point under the true mixture."""
    w = np.array([n_tight, n_wide]) / (n_tight + n_wide)
    centres = np.array([[0.0, 0.0], [SEPARATION, 0.0]])
    sds = np.array([TIGHT_SD, WIDE_SD])
    d2 = np.sum((x[:, None, :] - centres[None]) ** 2, axis=2)
    log_post = np.log(w) - 2 * np.log(sds) - 0.5 * d2 / sds**2
    return np.argmax(log_post, axis=1)


def parse_args(args):
    p = argparse.ArgumentParser(description=(__doc__ or " ").splitlines()[0])
    p.add_argument("--n-tight", type=int, default=750, help="points in the tight cluster")
    p.add_argument("--n-wide", type=int, default=250, help="points in the wide cluster")
    p.add_argument("--n-init", type=int, default=5, help="restarts of k-means and EM")
    p.add_argument("--grid", type=int, default=300, help="grid points per axis for the decision boundaries")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--dpi", type=int, default=150, help="resolution of the PNG figures")
    p.add_argument("--out", type=pathlib.Path, default=OUTPUT, help="output folder")
    return p.parse_args(args)


def _errors(ax, x, wrong):
    ax.scatter(x[wrong, 0], x[wrong, 1], s=40, facecolors="none", edgecolors="black", linewidths=0.8, zorder=5)


def main(args=()):
    """Run the example; returns a dict with the accuracies, fits and the figure path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    import bayesgmm as bg
    from bayesgmm import plotting

    a = parse_args(list(args))
    a.out.mkdir(parents=True, exist_ok=True)
    x, truth = simulate(a.n_tight, a.n_wide, a.seed)

    km = bg.kmeans(x, 2, n_init=a.n_init, seed=a.seed)
    gmm = bg.fit_em(x, 2, covariance_type="full", n_init=a.n_init, seed=a.seed)
    km_perm, km_acc = best_permutation(truth, km.labels, 2)
    gmm_perm, gmm_acc = best_permutation(truth, gmm.predict(x), 2)
    bayes_acc = float(np.mean(bayes_optimal_labels(x, a.n_tight, a.n_wide) == truth))
    # Reorder the mixture's components so component k is true group k (same colours in every panel).
    order = np.argsort(gmm_perm)
    gmm = dataclasses.replace(gmm, weights=gmm.weights[order], means=gmm.means[order], covariances=gmm.covariances[order])
    km_labels = km_perm[km.labels]
    gmm_labels = gmm.predict(x)

    colors = plotting.component_colors(2)
    size = float(np.clip(6000.0 / len(x), 5.0, 20.0))
    (x0, x1), (y0, y1) = (np.min(x[:, 0]), np.max(x[:, 0])), (np.min(x[:, 1]), np.max(x[:, 1]))
    pad_x, pad_y = 0.06 * (x1 - x0), 0.06 * (y1 - y0)
    limits = ((x0 - pad_x, x1 + pad_x), (y0 - pad_y, y1 + pad_y))
    gx, gy = np.meshgrid(np.linspace(*limits[0], a.grid), np.linspace(*limits[1], a.grid))
    grid = np.column_stack([gx.ravel(), gy.ravel()])
    km_grid = km_perm[np.argmin(np.sum((grid[:, None] - km.centers[None]) ** 2, axis=2), axis=1)].reshape(gx.shape)
    gmm_grid = gmm.predict_proba(grid)[:, 1].reshape(gx.shape)

    fig, axes = plt.subplots(1, 3, figsize=(12.0, 4.3), layout="constrained", sharex=True, sharey=True)
    ax = axes[0]
    ax.scatter(x[:, 0], x[:, 1], c=colors[truth], s=size, lw=0, alpha=0.85)
    ax.set_title(f"truth: {a.n_tight} points (sd {TIGHT_SD}) + {a.n_wide} points (sd {WIDE_SD})", fontsize="medium")
    ax = axes[1]
    ax.scatter(x[:, 0], x[:, 1], c=colors[km_labels], s=size, lw=0, alpha=0.85)
    centres = km.centers[np.argsort(km_perm)]
    ax.scatter(centres[:, 0], centres[:, 1], marker="X", s=110, c=colors, edgecolors="black", linewidths=0.8, zorder=6)
    ax.contour(gx, gy, km_grid, levels=[0.5], colors="black", linewidths=1.6, linestyles=":")
    _errors(ax, x, km_labels != truth)
    ax.set_title(f"k-means: accuracy {km_acc:.3f}", fontsize="medium")
    ax = axes[2]
    plotting.plot_clusters_2d(gmm, x, ax=ax, legend=False, limits=limits, point_size=size)
    ax.contour(gx, gy, gmm_grid, levels=[0.5], colors="black", linewidths=1.6, linestyles=":")
    _errors(ax, x, gmm_labels != truth)
    ax.set_title(f"Gaussian mixture (EM): accuracy {gmm_acc:.3f}", fontsize="medium")
    for ax in axes:
        ax.set_xlim(*limits[0])
        ax.set_ylim(*limits[1])
        ax.set_aspect("equal")
        ax.set_xlabel("$x_1$")
        ax.spines[["top", "right"]].set_visible(False)
    axes[0].set_ylabel("$x_2$")
    axes[2].set_ylabel("")
    handles = [
        Line2D([], [], color=colors[0], marker="o", ls="none", label="tight group"),
        Line2D([], [], color=colors[1], marker="o", ls="none", label="wide group"),
        Line2D([], [], color="0.5", mec="black", marker="X", ls="none", ms=8, label="centre / mean"),
        Line2D([], [], marker="o", mfc="none", mec="black", ls="none", ms=7, label="misassigned"),
        Line2D([], [], color="black", ls=":", lw=1.6, label="decision boundary"),
        Line2D([], [], color="0.3", ls="-", label="1 sd"),
        Line2D([], [], color="0.3", ls=(0, (3, 2)), label="2 sd"),
    ]
    fig.legend(handles=handles, loc="outside lower center", ncols=len(handles), frameon=False, fontsize="small")
    path = a.out / "kmeans_vs_gmm.png"
    fig.savefig(path, dpi=a.dpi)
    plt.close(fig)

    print(f"N = {len(x)}: {a.n_tight} tight (sd {TIGHT_SD}) + {a.n_wide} wide (sd {WIDE_SD}), centres {SEPARATION} apart")
    print(f"accuracy  k-means {km_acc:.3f}   Gaussian mixture {gmm_acc:.3f}   Bayes-optimal (true parameters) {bayes_acc:.3f}")
    print(f"misassigned  k-means {np.sum(km_labels != truth)}   Gaussian mixture {np.sum(gmm_labels != truth)}")
    sds = np.sqrt(np.diagonal(gmm.covariances, axis1=1, axis2=2))
    print(f"mixture weights {np.round(gmm.weights, 3)}, sds {np.round(sds, 2).tolist()}")
    print(f"figure: {path}")
    return {
        "kmeans_accuracy": km_acc,
        "gmm_accuracy": gmm_acc,
        "bayes_accuracy": bayes_acc,
        "kmeans": km,
        "gmm": gmm,
        "x": x,
        "truth": truth,
        "figures": [path],
    }


if __name__ == "__main__":
    main(sys.argv[1:])
