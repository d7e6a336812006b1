"""Bundled data, simulation from the model, and the command line."""

import json

import numpy as np
import pytest
from scipy import stats

import bayesgmm as bg
from bayesgmm import cli


def test_bundled_data_match_their_provenance():
    x = bg.datasets.load_faithful()
    assert x.shape == (272, 2)
    np.testing.assert_allclose(x.mean(0), [3.487783, 70.897059], atol=1e-6)
    df = bg.datasets.load_faithful(as_frame=True)
    assert list(df.columns) == ["eruptions", "waiting"]
    g = bg.datasets.load_galaxies()
    assert g.shape == (82, 1) and g.min() == 9172 and g.max() == 34279


@pytest.mark.parametrize("covariance_type", ["full", "diag", "spherical", "tied"])
def test_make_mixture_draws_from_the_stated_parameters(covariance_type):
    data = bg.datasets.make_mixture(20000, 3, 2, covariance_type=covariance_type, seed=4)
    w, m, c = data.params
    full = bg.FitResult(
        "truth", covariance_type, w, m, c, 0.0, True, 0, np.zeros(1), "log_likelihood", ("a", "b"), 1
    ).full_covariances
    counts = np.bincount(data.labels, minlength=3)
    # label frequencies: chi-square goodness of fit against the weights
    assert stats.chisquare(counts, 20000 * w).pvalue > 1e-3
    for k in range(3):
        xk = data.x[data.labels == k]
        se = np.sqrt(np.diag(full[k]) / len(xk))
        assert np.all(np.abs(xk.mean(0) - m[k]) < 4.5 * se)
        np.testing.assert_allclose(np.cov(xk.T), full[k], atol=6 * np.sqrt(2 / len(xk)) * full[k].diagonal().max())
    again = bg.datasets.make_mixture(20000, 3, 2, covariance_type=covariance_type, seed=4)
    assert np.array_equal(again.x, data.x)


def test_demo_prints_parameters_and_writes_outputs(tmp_path, capsys):
    pytest.importorskip("bayesgmm.plotting")
    assert cli.main(["demo", "--out", str(tmp_path), "--n-init", "2"]) == 0
    out = capsys.readouterr().out
    assert "component 0" in out and "log-likelihood -1130.2" in out
    saved = json.loads((tmp_path / "faithful_em.json").read_text())
    assert saved["feature_names"] == ["eruptions", "waiting"]
    assert (tmp_path / "faithful_em.png").stat().st_size > 10_000


def test_fit_command_on_a_csv_with_column_selection(tmp_path, capsys):
    pytest.importorskip("bayesgmm.plotting")
    df = bg.datasets.load_faithful(as_frame=True)
    df["label"] = "x"
    path = tmp_path / "data.csv"
    df.to_csv(path, index=False)
    rc = cli.main(["fit", str(path), "-k", "2", "--columns", "eruptions", "waiting", "--out", str(tmp_path / "o")])
    assert rc == 0
    fit = bg.FitResult.from_json(tmp_path / "o" / "em_k2.json")
    ref = bg.fit_em(df[["eruptions", "waiting"]], 2, n_init=5, seed=0)
    np.testing.assert_allclose(fit.log_likelihood, ref.log_likelihood, rtol=1e-12)


@pytest.mark.parametrize(
    "argv,message",
    [
        (["fit", "missing.csv", "-k", "2"], "does not exist"),
        (["fit", "{csv}", "-k", "2", "--columns", "nope"], "not in"),
        (["fit", "{csv}", "-k", "0", "--columns", "eruptions", "waiting"], "at least 1"),
        (["fit", "{csv}", "-k", "2", "--columns", "label"], "numeric"),
    ],
)
def test_cli_errors_are_clear_and_exit_2(argv, message, tmp_path, capsys):
    df = bg.datasets.load_faithful(as_frame=True)
    df["label"] = "x"
    path = tmp_path / "data.csv"
    df.to_csv(path, index=False)
    argv = [a.replace("{csv}", str(path)) for a in argv]
    assert cli.main(argv + ["--out", str(tmp_path / "o"), "--no-plot"]) == 2
    assert message in capsys.readouterr().err


def test_cli_help_exits_cleanly(capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["--help"])
    assert exc.value.code == 0
    assert "demo" in capsys.readouterr().out
