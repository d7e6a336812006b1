"""Model selection: criteria against independent recomputation and scikit-learn, batching, errors."""

import warnings

import numpy as np
import pytest
from _references import log_joint, mixture_log_density
from sklearn.mixture import GaussianMixture

import bayesgmm as bg
from bayesgmm.selection import select, select_bayesian


@pytest.fixture(scope="module")
def faithful_grid(faithful):
    return select(faithful, range(1, 5), n_init=8, seed=0)


def test_criteria_recomputed_independently(faithful_grid, faithful):
    """Every row: log L by scipy at the reported parameters, p as scikit-learn counts it,
    BIC/AIC by their formulas and ICL from the fit's own responsibilities."""
    n = len(faithful)
    for row in faithful_grid.table.itertuples():
        fit = faithful_grid.fits[(row.covariance_type, row.num_components)]
        ll = mixture_log_density(faithful, *fit.params, fit.covariance_type).sum()
        np.testing.assert_allclose(row.log_likelihood, ll, rtol=1e-9)
        if fit.info.get("selection_grid"):  # the runs' objectives on the data's scale, as fit_em's
            np.testing.assert_allclose(fit.info["restart_objectives"][fit.info["best_restart"]], ll, rtol=1e-5)
        gm = GaussianMixture(row.num_components, covariance_type=row.covariance_type)
        gm.means_ = fit.means
        assert row.num_parameters == gm._n_parameters()
        np.testing.assert_allclose(row.bic, -2 * ll + row.num_parameters * np.log(n), rtol=1e-9)
        np.testing.assert_allclose(row.aic, -2 * ll + 2 * row.num_parameters, rtol=1e-9)
        resp = fit.predict_proba(faithful)
        entropy = -np.sum(resp * np.log(np.where(resp > 0, resp, 1.0)))
        np.testing.assert_allclose(row.entropy, entropy, rtol=1e-6, atol=1e-6)
        # mclust's icl(): BIC less twice the log-probabilities of the rows' MAP labels
        np.testing.assert_allclose(row.icl, row.bic - 2 * np.sum(np.log(resp.max(axis=1))), rtol=1e-9, atol=1e-6)


def test_faithful_choice_and_parity_with_sklearn(faithful_grid, faithful):
    """BIC picks 3 components with a shared (tied) covariance, mclust's well-known choice for
    these data; the full K=2 optimum is scikit-learn's to 1e-6."""
    best = faithful_grid.best("bic")
    assert (best.covariance_type, best.num_components) == ("tied", 3)
    sk = GaussianMixture(2, n_init=8, random_state=0, tol=1e-6).fit(faithful)
    row = faithful_grid.table.query("covariance_type == 'full' and num_components == 2").iloc[0]
    np.testing.assert_allclose(row.bic, sk.bic(faithful), rtol=1e-6)
    # every fit of the grid is at least as good as a separate single-start fit would usually be:
    # for K <= 2 the optimum is unique, so the grid must reach scikit-learn's exactly
    for ct in ("full", "diag", "spherical", "tied"):
        for k in (1, 2):
            sk = GaussianMixture(k, covariance_type=ct, n_init=8, random_state=0, tol=1e-6).fit(faithful)
            got = faithful_grid.table.query(f"covariance_type == '{ct}' and num_components == {k}").iloc[0].bic
            np.testing.assert_allclose(got, sk.bic(faithful), rtol=1e-5)


def test_bic_recovers_the_simulated_structure_and_k():
    data = bg.datasets.make_mixture(600, 3, 2, covariance_type="diag", separation=5.0, seed=11)
    r = select(data.x, range(1, 6), covariance_types=("full", "diag", "spherical"), n_init=5, seed=0)
    best = r.best("bic")
    assert best.num_components == 3 and best.covariance_type == "diag"
    assert r.best("icl").num_components == 3


def test_nested_structures_order_their_likelihoods_without_the_models_between_them():
    """Spherical is nested in diagonal through mclust's VEI, which this grid lacks: the repair of a
    larger model's weak fit from a nested one followed direct pairs only, so diag's K = 5 fit
    stayed 23.6 nats below spherical's (-2383.8 against -2360.1) and best() chose K = 6; with VEI
    in the grid it chose K = 5. Every nested pair is compared now, chains included."""
    rng = np.random.default_rng(2)
    x = np.vstack([rng.normal(rng.normal(0, 3, 3), rng.uniform(0.3, 1.5, 3), (int(n), 3)) for n in rng.integers(30, 120, 6)])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # n_init=1 on overlapping clusters: flagged components, unconverged starts
        grid = select(x, [3, 4, 5, 6], covariance_types=["spherical", "diag"], n_init=1, seed=2)
    for k in (3, 4, 5, 6):
        assert grid.fits[("diag", k)].log_likelihood >= grid.fits[("spherical", k)].log_likelihood - 1e-6, k
    assert grid.fits[("diag", 5)].info["started_from"] == "VII, K=5"
    best = grid.best("bic")
    assert (best.covariance_type, best.num_components) == ("diag", 5)


def test_one_compilation_per_structure(faithful):
    x = faithful[:150]  # a shape no other test uses
    from conftest import CompileCounter

    first = select(x, [1, 2, 3], covariance_types=("full", "diag"), n_init=2, seed=0)
    with CompileCounter() as counter:
        again = select(x[::-1], [1, 2, 3], covariance_types=("full", "diag"), n_init=2, seed=1)
    assert counter.compiles == 0  # one program per structure, reused for every K and for new data
    assert set(first.info["compile_seconds"]) == {"full", "diag"}
    assert all(v == 0.0 for v in again.info["compile_seconds"].values())


def test_default_prior_grid_is_map_em(faithful):
    """With prior="default" each K is MAP-EM under its own Prior.default(x, K): the objective
    reported at the final parameters is log L + log prior of exactly that prior (scipy)."""
    r = select(faithful, [2, 3], covariance_types=("full",), prior="default", n_init=3, seed=0)
    for k in (2, 3):
        fit = r.fits[("full", k)]
        assert fit.method == "map-em" and fit.objective == "log_posterior"
        prior = bg.Prior.default(faithful, k)
        np.testing.assert_allclose(fit.trace[-1], log_joint(faithful, fit.params, prior, "full"), rtol=1e-9)
        # the runs' objectives on the data's scale, as fit_em's (compute precision)
        best = fit.info["restart_objectives"][fit.info["best_restart"]]
        np.testing.assert_allclose(best, fit.trace[-1], rtol=1e-5)


def test_degenerate_fits_are_flagged_not_hidden():
    x = np.repeat(np.arange(6.0), 10)[:, None] + np.r_[np.zeros(59), 0.5][:, None]  # 6 tied values
    with pytest.warns(bg.DegenerateComponentWarning, match="degenerate fits in the grid"):
        r = select(x, [1, 7], covariance_types=("spherical",), n_init=2, seed=0)
    assert bool(r.table.query("num_components == 7").degenerate.iloc[0])
    assert r.best("bic").num_components == 1


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(k_range=[]), "k_range must hold positive integers"),
        (dict(k_range=[0, 1]), "k_range must hold positive integers"),
        (dict(k_range=[1, 400]), "400 components but x has 272 observations"),
        (dict(covariance_types=("ful",)), "covariance_type must be one of"),
        (dict(prior="mclust"), "prior must be None, 'default' or a bayesgmm.Prior"),
        (dict(n_init=0), "n_init must be a positive integer"),
        (dict(allow_degenerate="no"), "allow_degenerate must be True or False"),  # was taken as true
    ],
)
def test_bad_arguments(kwargs, match, faithful):
    with pytest.raises(ValueError, match=match):
        select(faithful, **{"k_range": [1, 2], **kwargs})


def test_a_cell_whose_every_run_is_singular_is_a_clear_error():
    """Three distinct points, each repeated 20 times, at K = 3: every run ends on a singular
    covariance in float32, and the grid raised numpy's LinAlgError from deep inside (float64
    keeps the fit, flagged degenerate)."""
    from conftest import precision

    dup = np.repeat(np.random.default_rng(0).normal(size=(3, 2)), 20, axis=0)
    with precision(np.float32), pytest.raises(ValueError, match="select: EM failed for covariance_type='full', K=3: a "
                                                                "covariance became singular"):
        bg.select(dup, [3], covariance_types=("full",))


def test_best_rejects_unknown_criterion(faithful_grid):
    with pytest.raises(ValueError, match="criterion must be one of"):
        faithful_grid.best("dic")


def test_bayesian_comparison_by_loo_and_effective_k():
    data = bg.datasets.make_mixture(300, 2, 2, separation=5.0, seed=3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", bg.ConvergenceWarning)
        table, fits, effective = select_bayesian(data.x, [1, 2, 3], method="vb", num_draws=200, seed=0)
    assert list(sorted(table.index)) == ["K=1", "K=2", "K=3"]
    assert table.index[0] in ("K=2", "K=3") and table.loc["K=1", "rank"] == 2
    # LOO and WAIC agree on these well-behaved fits, and the ELBO is reported for VB
    assert table.loc["K=1", "elpd_loo"] < table.loc["K=2", "elpd_loo"] - 50
    np.testing.assert_allclose(table["elpd_waic"], table["elpd_loo"], rtol=1e-2)
    assert np.isfinite(table["elbo"]).all()
    assert effective["effective_components"] == 2
    with pytest.raises(ValueError, match="method must be one of"):
        select_bayesian(data.x, [1, 2], method="em")
    # the overfitted fit's K checked before any fit (K = N - 1 fitted every K, then failed on K + 2)
    six = data.x[:6]
    with pytest.raises(ValueError, match="num_components=9"):
        select_bayesian(six, [1, 2], method="vb", overfit_components=9)
    assert select_bayesian(six, range(1, 6), method="vb", num_draws=20, seed=0)[2]["fit"].num_components == 6
    # missing values: missing= reaches the data's check (it refused them, asking for missing=)
    holed = data.x.copy()
    holed[::7, 1] = np.nan
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", bg.ConvergenceWarning)
        table, _, effective = select_bayesian(holed, [1, 2], method="vb", num_draws=200, seed=0, missing="marginalize")
    assert table.index[0] == "K=2" and effective["effective_components"] == 2
    # SVI's point-mass guide: refused after its first fit (ArviZ's compare failed with an IndexError)
    with pytest.raises(ValueError, match="returned a point estimate \\(no draws\\); use a guide with spread"):
        select_bayesian(data.x[:120], [1, 2], method="svi", guide="delta", num_steps=100)


def test_grid_cells_take_split_and_merge_moves_and_pick_the_true_k():
    """16 separated unit-covariance clusters on 20,000 rows in D = 4: the grid's budget leaves
    each K few starts, and its K = 16 cell ended 4708 nats below the optimum (two components
    on one cluster, one on two), so BIC chose K = 17 (a review found such picks in 3 of 11 data
    sets). Its cells now take fit_em's split-and-merge moves, in the grid's own program: the
    K = 16 cell ends above the generating parameters' log-likelihood and K = 16 is chosen."""
    k, d, n = 16, 4, 20_000
    rng = np.random.default_rng(1)
    centres = []
    while len(centres) < k:  # centres ~ N(0, 3^2 I), at least 6 sd apart
        c = rng.normal(0.0, 3.0, d)
        if all(np.linalg.norm(c - e) >= 6.0 for e in centres):
            centres.append(c)
    centres = np.array(centres)
    weights = rng.dirichlet(np.full(k, 5.0))
    x = centres[rng.choice(k, n, p=weights)] + rng.normal(size=(n, d))
    grid = select(x, range(k - 1, k + 2), covariance_types="tied", seed=0)
    best = grid.best()
    assert (best.covariance_type, best.num_components) == ("tied", k)
    truth = mixture_log_density(x, weights, centres, np.eye(d), "tied").sum()
    cell = grid.fits[("tied", k)]
    assert cell.log_likelihood > truth  # the optimum is above the truth; the missed one was 4708 nats below
    assert cell.info["split_merge"]["moves"]  # it took a move
    from conftest import CompileCounter

    with CompileCounter() as counter:  # the moves run in the grid's own program: nothing more compiles
        again = select(x[::-1], range(k - 1, k + 2), covariance_types="tied", seed=0)
    assert counter.compiles == 0 and again.fits[("tied", k)].log_likelihood > truth
