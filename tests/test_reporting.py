"""Research output: relabelling, the cross-engine parameter table, the compact summary and the
Markdown / LaTeX writers, checked against direct recomputation from the fits and known truth."""

import dataclasses
import warnings

import numpy as np
import pandas as pd
import pytest

import bayesgmm as bg
from bayesgmm.params import ConvergenceWarning, GMMParams
from bayesgmm.reporting import to_latex, to_markdown


@pytest.fixture(scope="module")
def fits(faithful):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        em = bg.fit_em(faithful, 2, seed=0)
        vb = bg.fit_vb(faithful, 2, seed=0, num_draws=400)
    return em, vb


def test_relabel_moves_everything_of_a_component_together(fits, faithful):
    _, vb = fits
    swapped = vb.relabel([1, 0])
    np.testing.assert_array_equal(swapped.weights, vb.weights[::-1])
    np.testing.assert_array_equal(swapped.means, vb.means[::-1])
    np.testing.assert_array_equal(swapped.draws["means"], np.asarray(vb.draws["means"])[:, :, ::-1])
    np.testing.assert_array_equal(swapped.info["expected_counts"], vb.info["expected_counts"][::-1])
    # predictions follow the new labels; densities do not change
    np.testing.assert_allclose(swapped.predict_proba(faithful), vb.predict_proba(faithful)[:, ::-1], rtol=1e-12)
    np.testing.assert_array_equal(swapped.predict(faithful), 1 - vb.predict(faithful))
    np.testing.assert_allclose(swapped.score_samples(faithful), vb.score_samples(faithful), rtol=1e-12)
    assert tuple(swapped.info["order"]) == (1, 0) and swapped.relabel([1, 0]).info["order"] == (0, 1)
    assert vb.relabel([0, 1]) is vb
    for bad in ([0, 0], [0, 1, 2], [0.0, 1.0], "01"):
        with pytest.raises(ValueError, match="permutation of range"):
            vb.relabel(bad)


def test_align_to_undoes_a_relabelling(fits):
    em, vb = fits
    back = vb.relabel([1, 0]).align_to(vb)
    np.testing.assert_array_equal(back.means, vb.means)
    assert np.allclose(em.align_to(vb).means, vb.means, rtol=0.01)
    with pytest.raises(ValueError, match="cannot match components"):
        em.align_to(dataclasses.replace(em, means=em.means[:1]))


def test_parameter_table_puts_engines_side_by_side_in_one_order(fits, faithful):
    em, vb = fits
    table = bg.parameter_table({"EM": em.relabel([1, 0]), "VB": vb}, faithful, level=0.8)
    assert set(table["method"]) == {"EM", "VB"}
    means = table[(table["parameter"] == "means") & (table["feature"] == 0)].set_index(["method", "component"])
    # one canonical order: the first fit's components sorted by the first feature's mean
    assert means.loc[("EM", 0), "estimate"] < means.loc[("EM", 1), "estimate"]
    assert means.loc[("VB", 0), "estimate"] < means.loc[("VB", 1), "estimate"]
    # EM: the observed information's Wald intervals of the relabelled fit
    em_sorted = em.relabel(np.argsort(em.means[:, 0]))
    info = bg.observed_information(em_sorted, faithful, level=0.8).table
    em_rows = table[table["method"] == "EM"].reset_index(drop=True)
    np.testing.assert_allclose(em_rows["se"], info["se"], rtol=1e-10)
    np.testing.assert_allclose(em_rows["lower"], info["lower"], rtol=1e-10)
    assert set(em_rows["interval"]) == {"observed-information"}
    # VB: the posterior sd and 10% / 90% quantiles of its aligned draws
    vb_sorted = vb.relabel(np.argsort(vb.means[:, 0]))
    draws = np.asarray(vb_sorted.draws["means"], np.float64).reshape(-1, 2, 2)[:, :, 0]
    np.testing.assert_allclose(means.xs("VB")["se"], draws.std(0, ddof=1), rtol=1e-10)
    np.testing.assert_allclose(means.xs("VB")["upper"], np.quantile(draws, 0.9, axis=0), rtol=1e-10)
    assert set(table.loc[table["method"] == "VB", "interval"]) == {"posterior"}
    assert (table["level"] == 0.8).all() and len(table) == 2 * (2 + 4 + 8)
    # without data, EM's uncertainty is absent, not invented
    bare = bg.parameter_table([em, vb])
    assert list(bare["method"].unique()) == ["EM", "VB"]
    assert bare.loc[bare["method"] == "EM", "se"].isna().all()
    assert set(bare.loc[bare["method"] == "EM", "interval"]) == {"none"}


def test_parameter_table_with_truth_reports_errors_in_the_truth_order():
    data = bg.datasets.make_mixture(400, 3, 2, separation=5.0, seed=3)
    fit = bg.fit_em(data.x, 3, seed=0)
    flipped = fit.relabel([2, 0, 1])
    table = bg.parameter_table([flipped], truth=data.params)
    weights = table[table["parameter"] == "weights"]
    np.testing.assert_allclose(weights["truth"], data.params.weights)
    np.testing.assert_allclose(weights["error"], weights["estimate"] - weights["truth"])
    assert np.abs(weights["error"]).max() < 0.05  # matched to the right true components
    means = table[table["parameter"] == "means"]
    assert np.abs(means["error"]).max() < 0.5
    # a fit of another structure: weights and means compared, covariances left blank
    diag = bg.fit_em(data.x, 3, covariance_type="diag", seed=0)
    mixed = bg.parameter_table({"full": fit, "diag": diag}, truth=data.params)
    diag_rows = mixed[mixed["method"] == "diag"]
    assert diag_rows.loc[diag_rows["parameter"] == "covariances", "truth"].isna().all()
    assert np.abs(diag_rows.loc[diag_rows["parameter"] == "means", "error"]).max() < 0.5
    # the first fit of another structure than the truth's (it raised: "covariance_model='VVI' is
    # not stored in the covariance_type='full' layout")
    first_diag = bg.parameter_table({"diag": diag, "full": fit}, truth=data.params)
    pd.testing.assert_frame_equal(first_diag.set_index(["method", "parameter", "component", "feature", "feature_bis"])
                                  .sort_index(), mixed.set_index(["method", "parameter", "component", "feature",
                                                                  "feature_bis"]).sort_index())
    # K = D: a (D, D) truth may be diag or tied covariances; a full first fit cannot tell, so say which
    square = bg.datasets.make_mixture(300, 2, 2, covariance_type="diag", separation=5.0, seed=1)
    square_fit = bg.fit_em(square.x, 2, seed=0)
    with pytest.raises(ValueError, match="may be diag or tied covariances .* truth_covariance_type"):
        bg.parameter_table([square_fit], truth=square.params)
    told = bg.parameter_table([square_fit], truth=square.params, truth_covariance_type="diag")
    assert told.loc[told["parameter"] == "covariances", "truth"].isna().all()
    assert np.abs(told.loc[told["parameter"] == "means", "error"]).max() < 0.5
    with pytest.raises(ValueError, match="not 'full' covariances"):
        bg.parameter_table([square_fit], truth=square.params, truth_covariance_type="full")
    with pytest.raises(ValueError, match="contradicts the truth FitResult's 'full'"):
        bg.parameter_table([square_fit], truth=square_fit, truth_covariance_type="diag")
    with pytest.raises(ValueError, match="truth must have 3 components"):
        bg.parameter_table([fit], truth=GMMParams(np.ones(2) / 2, np.zeros((2, 2)), np.ones((2, 2))))
    with pytest.raises(ValueError, match="K=2"):
        bg.parameter_table([fit, bg.fit_em(data.x, 2, seed=0)])
    with pytest.raises(ValueError, match="em_intervals"):
        bg.parameter_table([fit], data.x, em_intervals="jackknife")


def test_summary_is_a_compact_table(fits):
    em, vb = fits
    s = vb.summary()
    assert list(s.index) == [0, 1] and s.attrs["method"] == "vb"
    np.testing.assert_allclose(s["weight"], vb.weights)
    np.testing.assert_allclose(s["mean[x1]"], vb.means[:, 1])
    np.testing.assert_allclose(s["sd[x0]"], np.sqrt(vb.covariances[:, 0, 0]))
    np.testing.assert_allclose(s["weight_sd"], np.asarray(vb.draws["weights"]).reshape(-1, 2).std(0, ddof=1))
    assert "weight_sd" not in em.summary() and em.summary().shape == (2, 5)


def test_markdown_and_latex_writers():
    table = pd.DataFrame({"method": ["EM", "a_b & c"], "value": [1.234567, np.nan], "n": [3, 4],
                          "ok": [True, False]})
    md = to_markdown(table, digits=3)
    lines = md.strip().splitlines()
    assert lines[0] == "| method | value | n | ok |" and lines[1] == "| --- | ---: | ---: | --- |"
    assert lines[2] == "| EM | 1.235 | 3 | True |" and lines[3] == "| a\\_b & c |  | 4 | False |"  # _ is emphasis
    tex = to_latex(table, digits=2, caption="Fits of x_1", label="tab:fits")
    assert r"\begin{tabular}{lrrl}" in tex and r"a\_b \& c &  & 4 & False \\" in tex
    assert r"\caption{Fits of x\_1}" in tex and r"\label{tab:fits}" in tex and "1.23" in tex
    assert to_markdown(pd.DataFrame({"x": [1e-9, 123456789.0, 2.5e16]})).splitlines()[2:] == [
        "| 1e-09 |", "| 123456789.0000 |", "| 2.5e+16 |"]
    # large numbers keep their digits before the point: BICs 48 apart printed as 2.6e+04 alike
    bic = pd.DataFrame({"bic": [26363.98, 26411.57], "x1*x2 [`a`]": ["*c*", "__init__"]})
    assert to_markdown(bic, digits=2).splitlines() == [
        "| bic | x1\\*x2 \\[\\`a\\`\\] |", "| ---: | --- |", "| 26363.98 | \\*c\\* |", "| 26411.57 | \\_\\_init\\_\\_ |"]
    with pytest.raises(ValueError, match="DataFrame"):
        to_markdown([[1, 2]])
    # counts a missing value made float print as integers; -0.0 (one component's entropy) as 0
    counts = pd.DataFrame({"divergences": [0.0, np.nan, 2.0], "entropy": [-0.0, 1.5, 0.25]})
    assert to_markdown(counts, digits=2).splitlines()[2:] == ["| 0 | 0.00 |", "|  | 1.50 |", "| 2 | 0.25 |"]
    # a named or non-default index is the table's key (a criterion table's K): written, not dropped
    keyed = pd.DataFrame({"full": [2607.6, 2322.2]}, index=pd.Index([1, 2], name="num_components"))
    assert to_markdown(keyed, digits=1).splitlines() == [
        "| num\\_components | full |", "| ---: | ---: |", "| 1 | 2607.6 |", "| 2 | 2322.2 |"]
    assert r"num\_components & full \\" in to_latex(keyed)
    # a line break (a third-party warning's text in compare's warnings column) split the row;
    # None and pd.NA are blank as NaN is; LaTeX's < and > printed as other glyphs
    odd = pd.DataFrame({"warnings": ["first line\nsecond <x>", None, pd.NA]})
    assert to_markdown(odd).splitlines()[2:] == ["| first line second \\<x\\> |", "|  |", "|  |"]  # no HTML either
    assert r"first line second \textless{}x\textgreater{} \\" in to_latex(odd)


def test_a_latex_table_wider_than_the_page_is_scaled_to_it():
    """An engine comparison's 17 columns ran off the page: a table whose widest row passes
    ``LATEX_LINE_CHARACTERS`` is scaled to the line width (graphicx), a narrow one is not, and
    ``fit_width`` decides when given."""
    from bayesgmm.reporting import LATEX_LINE_CHARACTERS

    wide = pd.DataFrame({f"column_{j}": [1234.5678, 2.0] for j in range(17)})
    narrow = pd.DataFrame({"method": ["EM"], "bic": [2322.1]})
    tex = to_latex(wide).splitlines()
    begin = next(i for i, line in enumerate(tex) if line.startswith(r"\begin{tabular}"))
    assert tex[begin - 1] == r"\resizebox{\linewidth}{!}{%" and r"\end{tabular}}" in tex
    assert "resizebox" not in to_latex(narrow) and "resizebox" not in to_latex(wide, fit_width=False)
    assert "resizebox" in to_latex(narrow, fit_width=True)
    # the rule: cells plus two characters each, against the line
    edge = pd.DataFrame({"a" * (LATEX_LINE_CHARACTERS - 2): [1]})
    assert "resizebox" not in to_latex(edge) and "resizebox" in to_latex(edge.rename(columns=lambda c: c + "b"))


def test_parameter_table_leaves_mclust_models_intervals_blank_and_keeps_the_others(faithful):
    """An mclust constrained model's fit has no observed information: one such fit made the whole
    table raise (and the command line then dropped every EM fit's intervals); now it warns and its
    rows are blank, while the others keep theirs."""
    em = bg.fit_em(faithful, 2, seed=0)
    vev = bg.fit_em(faithful, 2, covariance_type="VEV", seed=0)
    with pytest.warns(UserWarning, match="em_intervals='bootstrap'"):
        table = bg.parameter_table({"EM": em, "VEV": vev}, faithful)
    by = table.groupby("method")
    assert by["interval"].first().to_dict() == {"EM": "observed-information", "VEV": "none"}
    assert table.loc[table["method"] == "EM", "se"].notna().all() and table.loc[table["method"] == "VEV", "se"].isna().all()
