"""Figures of bayesgmm.plotting: rendered to files (Agg) and checked against what they must show.

Each test checks the drawn numbers, not only that a file appears: density curves integrate to
one and equal an independent scipy mixture density, ellipses lie on the Mahalanobis contour of
the covariance, point colours are the responsibility-weighted blend, EM panels reproduce the
iterations of one longer run.
"""

import dataclasses

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
from _references import mixture_log_density, responsibilities  # noqa: E402
from matplotlib.patches import Ellipse  # noqa: E402
from scipy import stats  # noqa: E402

import bayesgmm as bg  # noqa: E402
from bayesgmm import plotting  # noqa: E402
from bayesgmm.em import fit_em_path  # noqa: E402
from bayesgmm.labels import match_result  # noqa: E402


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


@pytest.fixture(scope="module")
def faithful_frame():
    return bg.datasets.load_faithful(as_frame=True).rename(columns={"eruptions": "eruptions (min)", "waiting": "waiting (min)"})


@pytest.fixture(scope="module")
def em2(faithful_frame):
    return bg.fit_em(faithful_frame, 2, seed=0)


@pytest.fixture(scope="module")
def feet():
    rng = np.random.default_rng(1)
    return np.concatenate([rng.normal(240, 7, 350), rng.normal(270, 6, 150)])


FEET_INIT = dict(weights_init=[0.5, 0.5], means_init=[[210.0], [290.0]], precisions_init=1 / np.array([12.0, 15.0])[:, None, None] ** 2)


@pytest.fixture(scope="module")
def feet_panels(feet):
    """Hard-EM panels of the 1-D data: start and one iteration (one compiled EM program)."""
    fits = fit_em_path(feet, 2, (0, 1), hard=True, **FEET_INIT)
    return (*plotting.plot_em_iterations(feet, fits), fits)


@pytest.fixture(scope="module")
def em1d(feet_panels):
    return feet_panels[2][1]


def _saved(fig, path):
    fig.savefig(path, dpi=60)
    assert path.stat().st_size > 5_000
    return path


def _ellipses(ax):
    return [p for p in ax.patches if isinstance(p, Ellipse)]


def _mahalanobis_of_outline(ellipse, mean, cov):
    """Mahalanobis distance of points on the drawn outline (data coordinates) from ``mean``."""
    # An Ellipse patch is the unit circle mapped by its patch transform (centre, axes, angle).
    t = np.linspace(0.0, 2 * np.pi, 64)
    pts = ellipse.get_patch_transform().transform(np.column_stack([np.cos(t), np.sin(t)]))
    diff = pts - mean
    return np.sqrt(np.einsum("ni,ij,nj->n", diff, np.linalg.inv(cov), diff))


def test_component_colors_are_stable_and_distinct():
    c3, c8, c12 = (plotting.component_colors(k) for k in (3, 8, 12))
    np.testing.assert_array_equal(c3, c8[:3])  # component k has one colour whatever K
    assert c12.shape == (12, 3)
    assert len({tuple(row) for row in c8}) == 8


def test_covariance_ellipse_lies_on_the_mahalanobis_contour():
    cov = np.array([[2.0, 1.2], [1.2, 1.5]])
    mean = np.array([1.0, -2.0])
    for n_std in (1.0, 2.0):
        d = _mahalanobis_of_outline(plotting.covariance_ellipse(mean, cov, n_std), mean, cov)
        np.testing.assert_allclose(d, n_std, rtol=1e-10)
    with pytest.raises(ValueError, match="2x2"):
        plotting.covariance_ellipse(mean, np.eye(3))


def test_density_1d_matches_scipy_and_integrates_to_one(em1d, feet, tmp_path):
    ax = plotting.plot_density_1d(em1d, feet)
    _saved(ax.figure, tmp_path / "density.png")
    lines = {line.get_label(): line for line in ax.get_lines()}
    mix = lines["mixture density"]
    grid, dens = mix.get_xdata(), mix.get_ydata()
    ref = np.exp(mixture_log_density(grid, *em1d.params, em1d.covariance_type))
    np.testing.assert_allclose(dens, ref, rtol=1e-10, atol=1e-14)
    assert abs(np.trapezoid(dens, grid) - 1.0) < 2e-3  # the plotted range holds the mass
    comps = [line for name, line in lines.items() if name.startswith("component")]
    assert len(comps) == 2
    np.testing.assert_allclose(sum(c.get_ydata() for c in comps), dens, rtol=1e-12)
    heights = np.array([p.get_height() for p in ax.patches])
    widths = np.array([p.get_width() for p in ax.patches])
    assert abs(np.sum(heights * widths) - 1.0) < 1e-9  # density histogram
    assert ax.get_xlabel() == "x0" and ax.get_ylabel() == "density"
    assert ax.get_legend() is not None
    with pytest.raises(ValueError, match="feature"):
        plotting.plot_density_1d(em1d, feet, feature=1)
    with pytest.raises(ValueError, match="not one of the fit's features"):
        plotting.plot_density_1d(em1d, feet, feature="waiting")
    by_name = plotting.plot_density_1d(em1d, feet, feature="x0")
    np.testing.assert_array_equal(by_name.get_lines()[0].get_ydata(), ax.get_lines()[0].get_ydata())


def test_a_frame_is_read_by_column_name(em2, faithful_frame):
    """A DataFrame's columns are matched to the fit's names, as predict_proba reads them: one in
    another order was drawn by position, with the axes swapped under the fit's labels."""
    swapped = faithful_frame[["waiting (min)", "eruptions (min)"]]
    ours, theirs = plotting.plot_clusters_2d(em2, faithful_frame), plotting.plot_clusters_2d(em2, swapped)
    for a, b in zip(ours.collections[:1], theirs.collections[:1]):
        np.testing.assert_array_equal(a.get_offsets(), b.get_offsets())
        np.testing.assert_array_equal(a.get_facecolors(), b.get_facecolors())
    np.testing.assert_array_equal(ours.collections[0].get_offsets()[0], faithful_frame.to_numpy()[0])
    line = lambda ax: {ln.get_label(): ln for ln in ax.get_lines()}["mixture density"]  # noqa: E731
    by_order = plotting.plot_density_1d(em2, faithful_frame, feature="waiting (min)")
    by_name = plotting.plot_density_1d(em2, swapped, feature="waiting (min)")
    assert by_name.get_xlim() == by_order.get_xlim() and by_name.get_xlabel() == "waiting (min)"
    np.testing.assert_array_equal(line(by_name).get_ydata(), line(by_order).get_ydata())
    fits = {0: em2}
    fig, axes = plotting.plot_em_iterations(swapped, fits, legend=False)
    np.testing.assert_array_equal(axes[0].collections[0].get_offsets(), ours.collections[0].get_offsets())
    # the axes' features by name too (as plot_density_1d's feature; a bare int() error before)
    named = plotting.plot_clusters_2d(em2, faithful_frame, features=("waiting (min)", "eruptions (min)"))
    np.testing.assert_array_equal(named.collections[0].get_offsets()[0], faithful_frame.to_numpy()[0, ::-1])
    with pytest.raises(ValueError, match=r"names among \['eruptions \(min\)', 'waiting \(min\)'\]"):
        plotting.plot_clusters_2d(em2, faithful_frame, features=("waiting", "eruptions (min)"))


def test_components_are_numbered_beside_their_means(em2, faithful_frame):
    """In grey several of the palette's colours look alike (luminances 0.33-0.38 for components
    0, 1, 2 and 6) and every component had the same markers: each mean is numbered now."""
    ax = plotting.plot_clusters_2d(em2, faithful_frame)
    numbers = [t for t in ax.texts if t.get_gid() == "component number"]
    assert [t.get_text() for t in numbers] == [str(c) for c in range(em2.num_components)]
    np.testing.assert_allclose([t.xy for t in numbers], em2.means[:, :2])
    labels = [t.get_text() for t in ax.get_legend().get_texts()]  # the mass a 2-D contour holds, not 68%/95%
    assert labels[-2:] == ["1 sd (39%)", "2 sd (86%)"]


def test_names_with_dollar_signs_are_drawn_as_written(em2, faithful_frame, sbc_fake):
    """matplotlib reads text between two $ as a formula: a column "price ($) per unit ($)" was
    labelled "price ()perunit()"; axis labels, panel titles and SBC titles show names as written."""
    frame = faithful_frame.set_axis(["price ($) per unit ($)", "cost_$x$"], axis=1)
    fit = dataclasses.replace(em2, feature_names=tuple(frame.columns))
    ax = plotting.plot_clusters_2d(fit, frame)
    fig = ax.figure
    fig.canvas.draw()  # mathtext parses at drawing
    assert ax.xaxis.label.get_text() == r"price (\$) per unit (\$)" and ax.yaxis.label.get_text() == r"cost_\$x\$"
    fig, axes = plotting.plot_sbc_ranks(_fake_sbc({"mean[$]": sbc_fake.ranks["uniform"].to_numpy()}, sbc_fake.num_ranks))
    assert axes.flat[0].get_title() == r"mean[\$]"


def test_density_histogram_is_the_data_density_in_any_window(em2, faithful_frame):
    """A window narrower than the data once rescaled the bars to the rows inside it (1.17 times
    the data's density on the galaxies) while the curve kept the whole mixture's scale."""
    x = faithful_frame.to_numpy()
    edges = np.linspace(50.0, 80.0, 7)
    ax = plotting.plot_density_1d(em2, faithful_frame, feature=1, xlim=(50.0, 80.0), bins=edges)
    heights = np.array([p.get_height() for p in ax.patches])
    counts, _ = np.histogram(x[:, 1], bins=edges)
    np.testing.assert_allclose(heights, counts / (len(x) * np.diff(edges)), rtol=1e-12)
    assert heights @ np.diff(edges) < 0.9  # rows outside the window count in N, not in the bars


def test_rows_missing_another_column_are_drawn(em2, faithful_frame):
    """Only a missing value in a column drawn leaves a row out (a 1-D histogram once lost every
    row missing any column); plot_em_iterations takes such data as the fits do."""
    x = faithful_frame.to_numpy().copy()
    x[::5, 0] = np.nan
    ax = plotting.plot_density_1d(em2, x, feature=1)
    assert sum(p.get_height() * p.get_width() for p in ax.patches) == pytest.approx(1.0, abs=1e-9)
    heights = np.array([p.get_height() for p in ax.patches])
    edges = np.array([p.get_x() for p in ax.patches] + [ax.patches[-1].get_x() + ax.patches[-1].get_width()])
    np.testing.assert_allclose(heights, np.histogram(x[:, 1], bins=edges)[0] / (len(x) * np.diff(edges)), rtol=1e-9)
    ax = plotting.plot_clusters_2d(em2, x)
    assert len(ax.collections[0].get_offsets()) == np.sum(~np.isnan(x).any(axis=1))
    fig, axes = plotting.plot_em_iterations(x, {0: em2}, legend=False)
    assert len(axes[0].collections[0].get_offsets()) == np.sum(~np.isnan(x).any(axis=1))
    x[3] = np.nan  # a row that observes nothing (check_data refuses such rows): left out too
    assert len(plotting.plot_clusters_2d(em2, x).collections[0].get_offsets()) == np.sum(~np.isnan(x).any(axis=1))
    feet = np.array([230.0, np.nan, 241.0, 255.0, 262.0, np.nan, 270.0])  # 1-D: each NaN row is empty
    fit1 = bg.fit_em(feet[~np.isnan(feet)], 1)
    bars = plotting.plot_density_1d(fit1, feet).patches
    assert sum(p.get_height() * p.get_width() for p in bars) == pytest.approx(1.0)


def test_clusters_2d_ellipses_colours_and_labels(em2, faithful_frame, tmp_path):
    x = faithful_frame.to_numpy()
    ax = plotting.plot_clusters_2d(em2, x)
    _saved(ax.figure, tmp_path / "clusters.png")
    ells = _ellipses(ax)
    assert len(ells) == 2 * em2.num_components  # 1 and 2 sd per component
    levels = []
    for e in ells:  # each outline is a 1- or 2-sd contour of exactly one fitted component
        dists = [_mahalanobis_of_outline(e, m, c) for m, c in zip(em2.means, em2.covariances)]
        on = [d for d in dists if np.ptp(d) < 1e-8]
        assert len(on) == 1
        levels.append(round(float(on[0].mean()), 8))
    assert sorted(levels) == [1.0, 1.0, 2.0, 2.0]
    expected = em2.predict_proba(x) @ plotting.component_colors(2)
    np.testing.assert_allclose(ax.collections[0].get_facecolors()[:, :3], expected, atol=1e-6)
    assert ax.get_xlabel() == "eruptions (min)" and ax.get_ylabel() == "waiting (min)"
    # numbered from 0, as predict() and the fit's tables number them (the figures counted from 1)
    assert [t.get_text().split(" (")[0] for t in ax.get_legend().get_texts()][:2] == ["component 0", "component 1"]
    assert list(em2.summary().index) == [0, 1]
    with pytest.raises(ValueError, match="features"):
        plotting.plot_clusters_2d(em2, x, features=(0, 0))


def test_pairs_draw_every_pair_of_features_on_its_own_contours(tmp_path):
    """More than two features: one panel per pair (a projection on the first two hid the rest);
    each panel's points and 1/2-sd ellipses are those of its two features' marginal."""
    data = bg.datasets.make_mixture(200, 2, 4, seed=3, separation=4)
    fit = bg.fit_em(data.x, 2, seed=0)
    fig, axes = plotting.plot_pairs(fit, data.x)
    _saved(fig, tmp_path / "pairs.png")
    assert axes.shape == (3, 3)
    for r in range(3):
        for c in range(3):
            ax = axes[r, c]
            if c > r:  # the upper triangle: hidden, but for the legend in its corner
                assert not ax.get_visible() or (not ax.axison and (r, c) == (0, 2))
                continue
            i, j = c, r + 1
            np.testing.assert_array_equal(ax.collections[0].get_offsets(), data.x[:, [i, j]])
            for e in _ellipses(ax):
                marginals = [(m[[i, j]], cv[np.ix_([i, j], [i, j])]) for m, cv in zip(fit.means, fit.covariances)]
                dists = [_mahalanobis_of_outline(e, m, cv) for m, cv in marginals]
                assert min(np.ptp(d) for d in dists) < 1e-8
            assert ax.get_xlabel() == (f"x{i}" if r == 2 else "") and ax.get_ylabel() == (f"x{j}" if c == 0 else "")
    labels = [t.get_text() for t in axes[0, 2].get_legend().get_texts()]
    assert labels[0].startswith("component 0 ($\\pi$ = ") and "1 sd (39%)" in labels
    fig, axes = plotting.plot_pairs(fit, data.x, features=("x3", 1))
    assert axes.shape == (1, 1) and axes[0, 0].get_xlabel() == "x3" and axes[0, 0].get_ylabel() == "x1"
    with pytest.raises(ValueError, match="at least two different column indices"):
        plotting.plot_pairs(fit, data.x, features=(1, 1))
    from bayesgmm._cli_io import fit_figure  # the command line's figure of a fit: every pair too

    assert sum(ax.get_visible() and ax.axison for ax in fit_figure(fit, data.x).axes) == 6
    fig, _ = plotting.plot_engines({"em": fit}, data.x, features=(2, 0))  # one pair: said so
    assert fig._suptitle.get_text() == "features x2 and x0 of 4 (plot_pairs draws every pair)"


def _numpy_em(x, weights, means, covs, num_steps):
    """Plain NumPy/SciPy EM (reference): ``num_steps`` E- and M-steps for full covariances."""
    for _ in range(num_steps):
        resp = responsibilities(x, weights, means, covs, "full")
        nk = resp.sum(0)
        weights, means = nk / len(x), (resp.T @ x) / nk[:, None]
        covs = np.stack([((x - m).T * r) @ (x - m) / n for m, r, n in zip(means, resp.T, nk)])
    return weights, means, covs


def test_em_iterations_match_a_reference_em(faithful_std, tmp_path):
    init = dict(weights_init=np.array([0.5, 0.5]), means_init=np.array([[-1.5, 1.0], [1.5, -1.0]]),
                precisions_init=np.tile(np.eye(2) / 0.3, (2, 1, 1)))
    fits = fit_em_path(faithful_std, 2, (0, 1, 3), reg_covar=0.0, **init)  # no warning escapes
    fig, axes = plotting.plot_em_iterations(faithful_std, fits)
    _saved(fig, tmp_path / "iterations.png")
    assert [ax.get_title() for ax in axes] == ["start", "iteration 1", "iteration 3"]
    assert all(len(_ellipses(ax)) == 4 for ax in axes)
    np.testing.assert_allclose(fits[0].means, init["means_init"])
    assert [fits[t].n_iter for t in (1, 3)] == [1, 3]
    for t in (1, 3):  # each panel's parameters are t EM steps from the common start
        w, m, c = _numpy_em(faithful_std, init["weights_init"], init["means_init"], np.tile(0.3 * np.eye(2), (2, 1, 1)), t)
        np.testing.assert_allclose(fits[t].weights, w, rtol=1e-9)
        np.testing.assert_allclose(fits[t].means, m, atol=1e-9)
        np.testing.assert_allclose(fits[t].covariances, c, atol=1e-9)
    np.testing.assert_allclose(fits[3].trace[:2], fits[1].trace, rtol=1e-10)  # one path, not separate runs
    ref_ll = mixture_log_density(faithful_std, [0.5, 0.5], init["means_init"], np.full(2, 0.3), "spherical").sum()
    np.testing.assert_allclose(fits[0].log_likelihood, ref_ll, rtol=1e-10)
    assert fits[0].log_likelihood < fits[1].log_likelihood < fits[3].log_likelihood
    with pytest.raises(ValueError, match="iteration 0"):
        fit_em_path(faithful_std, 2, (0, 1))
    with pytest.raises(ValueError, match="distinct non-negative"):
        fit_em_path(faithful_std, 2, (1, 1))
    with pytest.raises(ValueError, match="fits must be a non-empty dict"):
        plotting.plot_em_iterations(faithful_std, {})


def test_em_iterations_1d_share_axes(feet_panels, tmp_path):
    fig, axes, fits = feet_panels
    _saved(fig, tmp_path / "iterations_1d.png")
    assert axes[0].get_xlim() == axes[1].get_xlim() and axes[0].get_ylim() == axes[1].get_ylim()
    assert fits[1].method == "hard-em" and fits[0].n_iter == 0 and fits[1].n_iter == 1
    assert len(fig.legends) == 1


def test_em_iterations_refuse_wrong_labels_without_leaving_a_figure(feet_panels, feet):
    fits = feet_panels[2]
    before = plt.get_fignums()
    with pytest.raises(ValueError, match="one title per iteration"):
        plotting.plot_em_iterations(feet, fits, labels=["start"])
    assert plt.get_fignums() == before


def test_trace_plots_the_objective(em2, tmp_path):
    ax = plotting.plot_trace(em2)
    _saved(ax.figure, tmp_path / "trace.png")
    line = ax.get_lines()[0]
    np.testing.assert_array_equal(line.get_ydata(), em2.trace)
    np.testing.assert_array_equal(line.get_xdata(), np.arange(len(em2.trace)))
    assert ax.get_ylabel() == "log-likelihood" and ax.get_xlabel() == "iteration"
    ax = plotting.plot_trace(em2, gap=True)
    assert ax.get_yscale() == "log"
    assert np.all(ax.get_lines()[0].get_ydata() > 0)
    svi_like = dataclasses.replace(em2, method="svi", objective="elbo")  # a noisy one-particle ELBO: no final value
    with pytest.raises(ValueError, match="SVI's trace is a noisy one-particle ELBO"):
        plotting.plot_trace(svi_like, gap=True)
    assert plotting.plot_trace(svi_like).get_xlabel() == "optimisation step"


def test_trace_of_a_sampler_is_one_line_per_chain(em2):
    """A sampler's trace (chains concatenated) was one line joining the chains, titled with
    iterations; each chain is its own line over its draws, and gap=True is refused."""
    lp = np.concatenate([np.linspace(-1200, -1150, 30), np.linspace(-1190, -1151, 30)])
    fake = dataclasses.replace(em2, method="mcmc", objective="log_posterior", trace=lp, n_iter=30,
                               info={**em2.info, "num_chains": 2})
    ax = plotting.plot_trace(fake)
    lines = ax.get_lines()
    assert len(lines) == 2 and [ln.get_label() for ln in lines] == ["chain 0", "chain 1"]
    for c, ln in enumerate(lines):
        np.testing.assert_array_equal(ln.get_xdata(), np.arange(30))
        np.testing.assert_array_equal(ln.get_ydata(), lp[30 * c: 30 * (c + 1)])
    assert ax.get_xlabel() == "draw (after warm-up)" and ax.get_title() == "NUTS: 2 chains of 30 draws"
    np.testing.assert_array_equal(plotting.plot_trace(fake, first=5).get_lines()[1].get_xdata(), np.arange(5, 30))
    with pytest.raises(ValueError, match="sampler"):
        plotting.plot_trace(fake, gap=True)
    with pytest.raises(ValueError, match=r"draw index in \[0, 30\)"):
        plotting.plot_trace(fake, first=30)


def _with_draws(result, num_draws, seed=0):
    """An EM result given fake posterior draws: jittered means, scaled covariances, shape (1, S, ...)."""
    rng = np.random.default_rng(seed)
    k, d = result.means.shape
    means = result.means + 0.05 * rng.normal(size=(1, num_draws, k, d)) * np.sqrt(np.diagonal(result.covariances, axis1=1, axis2=2))
    covs = result.covariances * rng.uniform(0.9, 1.1, size=(1, num_draws, k, 1, 1))
    weights = np.broadcast_to(result.weights, (1, num_draws, k))
    draws = {"weights": weights, "means": means, "covariances": covs}
    return dataclasses.replace(result, method="mcmc", draws=draws, raw_draws=draws)


def test_posterior_ellipses_one_per_draw_and_component(em2, faithful_frame, tmp_path):
    x = faithful_frame.to_numpy()
    fake = _with_draws(em2, 40)
    ax = plotting.plot_posterior_ellipses(fake, x, num_draws=10)
    _saved(ax.figure, tmp_path / "posterior.png")
    ells = _ellipses(ax)
    assert len(ells) == 10 * 2 + 2  # every drawn ellipse, plus the point estimate's
    centres = np.array([e.center for e in ells[:-2]])
    drawn = fake.draws["means"][0][np.unique(np.linspace(0, 39, 10).round().astype(int))].reshape(-1, 2)
    np.testing.assert_allclose(centres, drawn)
    with pytest.raises(ValueError, match="no posterior draws"):
        plotting.plot_posterior_ellipses(em2, x)


def test_posterior_draws_1d_are_densities(em1d, feet):
    ax = plotting.plot_posterior_ellipses(_with_draws(em1d, 12), feet, num_draws=12)
    curves = [line for line in ax.get_lines() if line.get_label() != "mixture density"]
    assert len(curves) == 12
    for c in curves:
        assert abs(np.trapezoid(c.get_ydata(), c.get_xdata()) - 1.0) < 5e-3
    # the draws were drawn in component 0's colour, with no legend: read as that component's
    component0 = matplotlib.colors.to_rgba(plotting.component_colors(2)[0])
    assert all(matplotlib.colors.to_rgba(c.get_color())[:3] != component0[:3] for c in curves)
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["posterior draws", "point estimate"]


def test_engines_side_by_side(em2, faithful_frame, tmp_path):
    x = faithful_frame.to_numpy()
    results = {"EM": em2, "posterior (fake draws)": _with_draws(em2, 20)}
    fig, axes = plotting.plot_engines(results, x, num_draws=5)
    _saved(fig, tmp_path / "engines.png")
    assert len(axes) == 2
    assert [ax.get_title().split("\n")[0] for ax in axes] == list(results)
    assert axes[0].get_xlim() == axes[1].get_xlim()
    assert len(_ellipses(axes[0])) == 4 and len(_ellipses(axes[1])) == 4 + 5 * 2
    # the faint ellipses are named in a legend of their own
    assert [t.get_text() for t in axes[1].get_legend().get_texts()] == ["5 posterior draws (2 sd)"]
    # engines keyed by method are shown by their display names
    fig, axes = plotting.plot_engines({"em": em2, "mcmc": _with_draws(em2, 20)}, x, num_draws=5)
    _saved(fig, tmp_path / "engines_named.png")
    assert [ax.get_title().split("\n")[0] for ax in axes] == ["EM", "NUTS"]
    with pytest.raises(ValueError, match="non-empty dict"):
        plotting.plot_engines({}, x)


def test_engines_align_component_colours(em2, faithful_frame):
    x = faithful_frame.to_numpy()
    fake = _with_draws(em2, 6)
    rev = np.array([1, 0])
    swapped = dataclasses.replace(fake, weights=fake.weights[rev], means=fake.means[rev], covariances=fake.covariances[rev],
                                  draws={k: np.asarray(v)[:, :, rev] for k, v in fake.draws.items()})
    back = match_result(swapped, em2)
    for name in ("weights", "means", "covariances"):
        np.testing.assert_array_equal(getattr(back, name), getattr(fake, name))
        np.testing.assert_array_equal(back.draws[name], fake.draws[name])
    fig, axes = plotting.plot_engines({"EM": em2, "swapped": swapped}, x, num_draws=0)
    colour_at = [{tuple(np.round(e.center, 6)): e.get_edgecolor() for e in _ellipses(ax)} for ax in axes]
    assert colour_at[0] == colour_at[1]  # the same component has the same colour in both panels
    with pytest.raises(ValueError, match="same number of components"):
        match_result(em2, dataclasses.replace(em2, means=em2.means[:1]))


def test_engines_of_other_covariance_structures_align(em2, faithful_frame):
    """Fits of another structure (a diagonal fit beside a full one) are matched with their
    covariances written out in full, so the default ``plot_engines(align=True)`` draws them
    (it raised "cannot match components" before) with one colour per component."""
    x = faithful_frame.to_numpy()
    rev = np.array([1, 0])
    diag = dataclasses.replace(em2, covariance_type="diag", covariance_model=None,
                               covariances=np.einsum("kii->ki", em2.covariances))
    swapped = diag.relabel(rev)
    back = match_result(swapped, em2)
    np.testing.assert_array_equal(back.means, em2.means)
    np.testing.assert_array_equal(back.covariances, diag.covariances)
    fig, axes = plotting.plot_engines({"full": em2, "diag": swapped}, x, num_draws=0)
    colour_at = [{tuple(np.round(e.center, 6)): e.get_edgecolor() for e in _ellipses(ax)} for ax in axes]
    assert colour_at[0] == colour_at[1]


# ----------------------------------------------------------------------------------------------
# Simulation-based calibration and model selection
# ----------------------------------------------------------------------------------------------
def _fake_sbc(ranks: dict, num_ranks: int, seed=(0, 1)):
    """An SBCResult holding given ranks (no fits): the plots need ranks, tests and settings only."""
    import pandas as pd

    from bayesgmm.calibration import SBCResult, rank_bins, uniformity_tests

    frame = pd.DataFrame(ranks)
    frame.index.name = "replication"
    edges = rank_bins(num_ranks, len(frame))
    tests = uniformity_tests(frame, num_ranks, bin_edges=edges, seed=list(seed))
    reps = pd.DataFrame({"num_warnings": np.zeros(len(frame), int), "error": [""] * len(frame)}, index=frame.index)
    settings = {"method": "fake", "covariance_type": "full", "num_components": 2, "num_features": 1, "num_obs": 10,
                "num_replications": len(frame), "num_ranks": num_ranks, "bin_edges": edges.tolist(), "null_seed": list(seed)}
    return SBCResult(frame, tests, reps, frame.astype(float), {}, settings)


@pytest.fixture(scope="module")
def sbc_fake():
    rng = np.random.default_rng(0)
    r, num_ranks = 200, 99
    ranks = {
        "uniform": rng.integers(0, num_ranks + 1, r),
        "too narrow": np.where(rng.random(r) < 0.3, rng.choice([0, num_ranks], r), rng.integers(0, num_ranks + 1, r)),
        "biased": rng.integers(0, 70, r),
    }
    return _fake_sbc(ranks, num_ranks)


def _band_vertices(ax):
    (band,) = [c for c in ax.collections if c.get_gid() == "band"]
    return np.concatenate([p.vertices for p in band.get_paths()])


def test_sbc_rank_histograms(sbc_fake, tmp_path):
    fig, axes = plotting.plot_sbc_ranks(sbc_fake, ncols=2)
    _saved(fig, tmp_path / "sbc_hist.png")
    assert axes.shape == (2, 2) and not axes[1, 1].get_visible()  # 3 panels on a 2 x 2 grid
    assert fig.get_suptitle() == "SBC of fake: K = 2, D = 1, N = 10, 200 replications"
    failed = dataclasses.replace(sbc_fake, ranks=sbc_fake.ranks.iloc[:180])  # 20 replications without ranks
    assert plotting.plot_sbc_ranks(failed)[0].get_suptitle() == "SBC of fake: K = 2, D = 1, N = 10, 180 of 200 replications"
    edges = sbc_fake.bin_edges
    assert len(edges) == 21  # 20 bins of 5 rank values (R = 200)
    r = len(sbc_fake.ranks)
    lo, hi = stats.binom.ppf([0.025, 0.975], r, 1 / 20)
    for ax, q in zip(axes.flat, sbc_fake.quantities):
        assert ax.get_title() == q
        bars = [p for p in ax.patches if p.get_height() >= 0 and p.get_width() > 0]
        assert len(bars) == 20
        np.testing.assert_array_equal([b.get_height() for b in bars], np.histogram(sbc_fake.ranks[q], bins=edges)[0])
        np.testing.assert_array_equal([b.get_x() for b in bars], edges[:-1])
        ys = np.unique(_band_vertices(ax)[:, 1])
        np.testing.assert_array_equal(ys, [lo, hi])  # the 95% band of each count: binomial quantiles
        texts = " ".join(t.get_text() for t in ax.texts)
        p = sbc_fake.p_values.loc[q, "chi2"]
        assert (f"p = {p:.2g}" in texts) if p >= 0.001 else ("p < 0.001" in texts)
    assert axes[0, 0].get_ylabel() == "count" and axes[1, 0].get_ylabel() == "count"
    assert len(fig.legends) == 1
    # other bins: the panel's p-value is that of the bins drawn (it was the result's 20 bins')
    from bayesgmm.ranks import rank_bins

    fig, axes = plotting.plot_sbc_ranks(sbc_fake, bins=5)
    for ax, q in zip(axes.flat, sbc_fake.quantities):
        ranks = sbc_fake.ranks[q].to_numpy()
        counts = np.histogram(ranks, bins=rank_bins(sbc_fake.num_ranks, r, 5))[0]
        p = stats.chisquare(counts).pvalue  # scipy's test on the drawn counts (equal bins: R = 200, L + 1 = 100)
        texts = " ".join(t.get_text() for t in ax.texts)
        assert (f"p = {p:.2g}" in texts) if p >= 0.001 else ("p < 0.001" in texts)
    plt.close(fig)


def test_sbc_ecdf_difference_and_bands(sbc_fake, tmp_path):
    from bayesgmm.calibration import ecdf_band

    r, num_ranks = len(sbc_fake.ranks), sbc_fake.num_ranks
    for simultaneous in (True, False):
        fig, axes = plotting.plot_sbc_ranks(sbc_fake, "ecdf", simultaneous=simultaneous, prob=0.9)
        _saved(fig, tmp_path / f"sbc_ecdf_{simultaneous}.png")
        assert axes.shape == (1, 3)
        band = ecdf_band(r, num_ranks, prob=0.9, simultaneous=simultaneous, seed=sbc_fake.settings["null_seed"])
        z = band.z
        if not simultaneous:  # pointwise: the 5% and 95% binomial quantiles at each point
            np.testing.assert_allclose(band.lower * r, stats.binom.ppf(0.05, r, z), rtol=1e-12)
            np.testing.assert_allclose(band.upper * r, stats.binom.ppf(0.95, r, z), rtol=1e-12)
        for ax, q in zip(axes.flat, sbc_fake.quantities):
            (line,) = [ln for ln in ax.get_lines() if ln.get_label() == "ECDF $-$ uniform"]
            ecdf = np.array([np.mean(sbc_fake.ranks[q].to_numpy() < zz * (num_ranks + 1) - 1e-9) for zz in z])
            np.testing.assert_allclose(line.get_ydata()[1:-1], ecdf - z, atol=1e-12)
            np.testing.assert_allclose(line.get_xdata()[1:-1], z)
            v = _band_vertices(ax)
            for zz, lo, hi in zip(z, band.lower, band.upper):
                at = v[np.isclose(v[:, 0], zz), 1]
                assert np.isclose(at, lo - zz).any() and np.isclose(at, hi - zz).any()
        labels = [t.get_text() for t in fig.legends[0].get_texts()]
        assert labels[0] == f"90% {'simultaneous' if simultaneous else 'pointwise'} band"
    # the simultaneous band is wider than the pointwise one at every point
    sim = ecdf_band(r, num_ranks, prob=0.9, seed=[0, 1])
    point = ecdf_band(r, num_ranks, prob=0.9, simultaneous=False, seed=[0, 1])
    assert np.all(sim.lower <= point.lower) and np.all(sim.upper >= point.upper) and sim.gamma < point.gamma
    # the biased ranks leave the band, the uniform ones stay inside
    ecdf = lambda q: np.array([np.mean(sbc_fake.ranks[q].to_numpy() < zz * (num_ranks + 1) - 1e-9) for zz in sim.z])  # noqa: E731
    assert np.all((ecdf("uniform") >= sim.lower) & (ecdf("uniform") <= sim.upper))
    assert not np.all((ecdf("biased") >= sim.lower) & (ecdf("biased") <= sim.upper))


def test_sbc_rows_for_several_results(sbc_fake, tmp_path):
    other = _fake_sbc({"uniform": np.arange(200) % 100, "biased": np.arange(200) % 60}, 99)
    fig, axes = plotting.plot_sbc_ranks({"VB": sbc_fake, "MCMC": other}, "hist")
    _saved(fig, tmp_path / "sbc_rows.png")
    assert axes.shape == (2, 2)  # the shared quantities only
    assert [ax.get_title() for ax in axes[1]] == ["uniform", "biased"]
    assert axes[0, 0].get_ylabel() == "VB\ncount" and axes[1, 0].get_ylabel() == "MCMC\ncount"
    with pytest.raises(ValueError, match="kind must be one of"):
        plotting.plot_sbc_ranks(sbc_fake, "violin")
    with pytest.raises(ValueError, match="not in every result"):
        plotting.plot_sbc_ranks({"VB": sbc_fake, "MCMC": other}, quantities=["too narrow"])
    with pytest.raises(ValueError, match="SBCResult"):
        plotting.plot_sbc_ranks({})


def _selection_table():
    import pandas as pd

    rows = []
    for ct, shift in (("full", 0.0), ("diag", 15.0), ("spherical", 40.0), ("tied", 5.0)):
        for k in (3, 1, 2, 4):  # unsorted on purpose
            rows.append({"covariance_type": ct, "num_components": k, "log_likelihood": -400.0 + 10 * k,
                         "num_parameters": 5 * k, "bic": 1000 - 60 * min(k, 2) + 12 * k + shift,
                         "aic": 900 - 50 * min(k, 3) + 10 * k + shift, "icl": 1010 - 60 * min(k, 2) + 15 * k + shift})
    table = pd.DataFrame(rows)
    table.loc[(table.covariance_type == "tied") & (table.num_components == 4), "bic"] = np.nan  # a failed fit
    return table


def test_selection_curves(tmp_path):
    table = _selection_table()
    ax = plotting.plot_selection(table)
    _saved(ax.figure, tmp_path / "selection.png")
    lines = {ln.get_label(): ln for ln in ax.get_lines()}
    assert set(lines) == {"full", "diag", "spherical", "tied", "best"}
    for ct in ("full", "diag", "spherical", "tied"):
        sub = table[(table.covariance_type == ct) & table.bic.notna()].sort_values("num_components")
        np.testing.assert_array_equal(lines[ct].get_xdata(), sub.num_components)
        np.testing.assert_array_equal(lines[ct].get_ydata(), sub.bic)
    best = table.loc[table.bic.idxmin()]
    assert (best.covariance_type, best.num_components) == ("full", 2)
    np.testing.assert_array_equal(lines["best"].get_xdata(), [2])
    np.testing.assert_array_equal(lines["best"].get_ydata(), [best.bic])
    assert "best: full, K = 2" in [t.get_text() for t in ax.texts]
    assert ax.get_ylabel() == "BIC (lower is better)"
    assert len({tuple(ln.get_color()) if not isinstance(ln.get_color(), str) else ln.get_color() for ln in lines.values()}) == 5
    ax = plotting.plot_selection(table, "aic")
    best = {ln.get_label(): ln for ln in ax.get_lines()}["best"]
    assert best.get_xdata()[0] == 3 and ax.get_ylabel() == "AIC (lower is better)"
    with pytest.raises(ValueError, match="criterion must be one of"):
        plotting.plot_selection(table, "loo")
    with pytest.raises(ValueError, match=r"lacks column\(s\) \['icl'\]"):
        plotting.plot_selection(table.drop(columns="icl"), "icl")
    # a structure far worse than the rest no longer sets the y-range: the minimum stays readable
    worse = table.assign(bic=np.where(table.covariance_type == "spherical", table.bic + 5000.0, table.bic))
    ax = plotting.plot_selection(worse)
    bottom, top = ax.get_ylim()
    good = worse.loc[worse.covariance_type != "spherical", "bic"].dropna()
    assert bottom < good.min() and top < worse.bic.max() - 1000.0
    assert "worse models off the scale" in [t.get_text() for t in ax.texts]
    # the lowest criteria from degenerate fits: the best (non-degenerate) stays inside the axes
    flagged = pd.DataFrame({"covariance_type": ["full"] * 6, "num_components": [1, 2, 3, 4, 5, 6],
                            "bic": [100.0, 60.0, 10.0, 9.0, 8.0, 7.0], "degenerate": [False, False] + [True] * 4})
    ax = plotting.plot_selection(flagged)
    bottom, top = ax.get_ylim()
    assert "best: full, K = 2" in [t.get_text() for t in ax.texts] and bottom < 60.0 < top


def test_bundled_data_get_units_on_the_axes():
    galaxies = bg.datasets.load_galaxies(as_frame=True)
    fit = bg.fit_em(galaxies, 2)
    assert plotting.plot_density_1d(fit, galaxies).get_xlabel() == "velocity (km/s)"
    assert bg.datasets.AXIS_LABELS["waiting"] == "waiting (min)"


def test_units_only_for_the_bundled_data_sets_columns(em2, faithful_frame):
    """A fit on Old Faithful's own columns gets minutes on its axes; a column of one's own that is
    also named ``waiting`` (in days, say) does not (it was labelled "waiting (min)")."""
    x = faithful_frame.to_numpy()
    faithful = dataclasses.replace(em2, feature_names=("eruptions", "waiting"))
    ax = plotting.plot_clusters_2d(faithful, x)
    assert (ax.get_xlabel(), ax.get_ylabel()) == ("eruptions (min)", "waiting (min)")
    own = dataclasses.replace(em2, feature_names=("waiting", "eruptions_per_day"))
    ax = plotting.plot_clusters_2d(own, x)
    assert (ax.get_xlabel(), ax.get_ylabel()) == ("waiting", "eruptions_per_day")
    assert plotting.plot_density_1d(own, x, feature=0).get_xlabel() == "waiting"
