"""The command line: every command end to end on small data, the TOML runner, exit codes."""

import json

import numpy as np
import pandas as pd
import pytest

import bayesgmm as bg
from bayesgmm import cli

FAST = ["--engine-option", "mcmc.num_warmup=100", "--engine-option", "mcmc.num_samples=100",
        "--engine-option", "mcmc.num_chains=2", "--engine-option", "svi.num_steps=300", "--no-progress"]


@pytest.fixture(scope="module")
def csv(tmp_path_factory):
    df = bg.datasets.load_faithful(as_frame=True)
    df["group"] = (df["waiting"] > 70).astype(int)
    df["name"] = "x"
    path = tmp_path_factory.mktemp("data") / "faithful.csv"
    df.to_csv(path, index=False)
    return path


def test_demo_runs_every_engine_and_writes_the_table_and_figures(tmp_path, capsys):
    assert cli.main(["demo", "--out", str(tmp_path), *FAST]) == 0
    out = capsys.readouterr().out
    assert "Old Faithful" in out
    table = pd.read_csv(tmp_path / "comparison.csv")
    assert list(table["method"]) == ["kmeans", "em", "vb", "svi", "mcmc"]
    for method in ("em", "vb", "svi", "mcmc"):
        assert method in out
        restored = bg.FitResult.from_json(tmp_path / f"{method}.json")
        assert restored.num_components == 2 and restored.feature_names == ("eruptions", "waiting")
        assert (tmp_path / f"{method}.nc").stat().st_size > 1000
    # the held-out quarter: EM's plug-in LPD is close to the Bayesian predictive ones
    lpd = table.set_index("method")["test_lpd"]
    assert np.ptp(lpd[["em", "vb", "mcmc"]]) < 0.05
    assert (tmp_path / "engines.png").stat().st_size > 20_000 and (tmp_path / "em_clusters.png").exists()


def test_fit_writes_json_netcdf_and_figure(csv, tmp_path, capsys):
    rc = cli.main(["fit", str(csv), "-k", "2", "--columns", "eruptions", "waiting", "--out", str(tmp_path),
                   "--engine-option", "n_init=3"])
    assert rc == 0
    assert "component 0" in capsys.readouterr().out
    fit = bg.FitResult.from_json(tmp_path / "em_k2.json")
    ref = bg.fit_em(pd.read_csv(csv)[["eruptions", "waiting"]], 2, n_init=3, seed=0)
    np.testing.assert_allclose(fit.log_likelihood, ref.log_likelihood, rtol=1e-12)
    from bayesgmm.diagnostics import load_result

    again = load_result(tmp_path / "em_k2.nc")
    np.testing.assert_allclose(again.means, fit.means)
    assert (tmp_path / "em_k2.png").exists()


def test_fit_streams_a_npy_file_out_of_core(tmp_path, capsys):
    data = bg.datasets.make_mixture(3000, 3, 2, separation=5.0, seed=2)
    np.save(tmp_path / "big.npy", data.x)
    rc = cli.main(["fit", str(tmp_path / "big.npy"), "-k", "3", "--stream", "--batch-size", "512",
                   "--out", str(tmp_path / "o"), "--no-progress", "--engine-option", "n_init=3"])
    assert rc == 0
    fit = bg.FitResult.from_json(tmp_path / "o" / "em_k3_stream.json")
    ref = bg.fit_em(data.x, 3, n_init=3, seed=0, tol=1e-6, max_iter=300)
    assert fit.log_likelihood == pytest.approx(ref.log_likelihood, rel=1e-4)
    assert fit.info["num_chunks"] == 6
    rc = cli.main(["fit", str(tmp_path / "big.npy"), "-k", "3", "--stream", "--method", "vb", "--out", str(tmp_path / "o")])
    assert rc == 2 and "needs the data in memory" in capsys.readouterr().err


def test_compare_with_labels_and_held_out_data(csv, tmp_path):
    rc = cli.main(["compare", str(csv), "-k", "2", "--columns", "eruptions", "waiting", "--label-column", "group",
                   "--methods", "em", "vb", "--test-fraction", "0.2", "--out", str(tmp_path), "--no-plot", "--no-progress"])
    assert rc == 0
    table = pd.read_csv(tmp_path / "comparison.csv")
    assert list(table["method"]) == ["em", "vb"] and table["ari"].min() > 0.8
    assert np.isfinite(table["test_lpd"]).all()
    records = json.loads((tmp_path / "comparison.json").read_text())
    assert records[0]["method"] == "em"


def test_select_writes_the_table_and_the_best_model(tmp_path, capsys):
    rc = cli.main(["select", "--dataset", "faithful", "-k", "1", "2", "3", "--covariance-types", "full", "tied",
                   "--n-init", "3", "--out", str(tmp_path)])
    assert rc == 0
    assert "best by BIC" in capsys.readouterr().out
    table = pd.read_csv(tmp_path / "selection.csv")
    assert len(table) == 6
    best = bg.FitResult.from_json(tmp_path / "best_bic.json")
    assert best.num_components == int(table.loc[table["bic"].idxmin(), "num_components"])
    assert (tmp_path / "selection_bic.png").exists()


def test_simulate_then_fit_recovers_the_truth(tmp_path):
    assert cli.main(["simulate", "-n", "400", "-k", "2", "--separation", "6", "--seed", "3", "--out", str(tmp_path)]) == 0
    data = pd.read_csv(tmp_path / "data.csv")
    truth = json.loads((tmp_path / "truth.json").read_text())
    assert list(data.columns) == ["x0", "x1", "component"] and len(data) == 400
    ref = bg.datasets.make_mixture(400, 2, 2, separation=6.0, seed=3)
    np.testing.assert_allclose(data[["x0", "x1"]].to_numpy(), ref.x)
    np.testing.assert_allclose(truth["means"], ref.params.means)


def test_study_and_sbc_commands(tmp_path):
    rc = cli.main(["study", "--num-datasets", "2", "-n", "120", "--methods", "em", "vb", "--out", str(tmp_path / "s"),
                   "--no-progress"])
    assert rc == 0
    summary = pd.read_csv(tmp_path / "s" / "summary.csv")
    assert set(summary["method"]) == {"em", "vb"} and (summary["num_datasets"] == 2).all()
    rc = cli.main(["sbc", "-k", "1", "-n", "30", "--replications", "12", "--num-ranks", "19", "--out", str(tmp_path / "c"),
                   "--no-progress", "--engine-option", "reg_covar=0.0"])
    assert rc == 0
    ranks = pd.read_csv(tmp_path / "c" / "sbc_ranks.csv")
    assert len(ranks) == 12 and ranks.to_numpy().max() <= 19
    assert (tmp_path / "c" / "sbc_ranks.png").exists()


def test_run_a_toml_experiment(tmp_path, csv):
    config = tmp_path / "study.toml"
    config.write_text(f"""
command = "compare"
num_components = 2
methods = ["em", "map-em"]
seed = 1
out = "{tmp_path / 'from_toml'}"
plot = false
progress = false

[data]
path = "{csv}"
columns = ["eruptions", "waiting"]

[engines.em]
n_init = 2
""")
    assert cli.main(["run", str(config)]) == 0
    table = pd.read_csv(tmp_path / "from_toml" / "comparison.csv")
    assert list(table["method"]) == ["em", "map-em"]
    em = bg.FitResult.from_json(tmp_path / "from_toml" / "em.json")
    assert em.info["n_init"] == 2 and em.info["seed"] == 1


@pytest.mark.parametrize(
    "argv, message",
    [
        (["fit", "missing.csv", "-k", "2"], "does not exist"),
        (["fit", "{csv}", "-k", "2", "--columns", "nope"], "not in"),
        (["fit", "{csv}", "-k", "0", "--columns", "eruptions", "waiting"], "at least 1"),
        (["fit", "{csv}", "-k", "2", "--columns", "name"], "numeric"),
        (["fit", "{csv}", "-k", "2", "--columns", "eruptions", "--engine-option", "n_iters=3"], "engine option not accepted"),
        (["fit", "{csv}", "--dataset", "faithful", "-k", "2"], "exactly one data source"),
        (["compare", "{csv}", "-k", "2", "--label-column", "zzz"], "column(s) ['zzz'] not in"),
        (["compare", "{csv}", "-k", "2", "--test-fraction", "1.5", "--columns", "eruptions"], "test_fraction must be in"),
        (["run", "missing.toml"], "does not exist"),
        (["run", "{bad_toml}"], "is not valid TOML"),
        (["run", "{unknown_key}"], "unknown option(s) ['num_componets']"),
        (["run", "{no_command}"], "'command' must be one of"),
    ],
)
def test_errors_are_one_clear_line_and_exit_2(argv, message, csv, tmp_path, capsys):
    (tmp_path / "bad.toml").write_text("command = 'compare\n")
    (tmp_path / "unknown.toml").write_text("command = 'compare'\nnum_componets = 2\n[data]\ndataset = 'faithful'\n")
    (tmp_path / "none.toml").write_text("num_components = 2\n")
    subs = {"{csv}": str(csv), "{bad_toml}": str(tmp_path / "bad.toml"), "{unknown_key}": str(tmp_path / "unknown.toml"),
            "{no_command}": str(tmp_path / "none.toml")}
    argv = [subs.get(a, a) for a in argv]
    extra = ["--out", str(tmp_path / "o")] + (["--no-plot"] if argv[0] in ("fit", "compare") else [])
    assert cli.main(argv + (extra if argv[0] != "run" else [])) == 2
    err = capsys.readouterr().err
    assert message in err and err.startswith("bayesgmm: error:") and "Traceback" not in err


@pytest.mark.parametrize("command", [None, "demo", "fit", "compare", "select", "simulate", "study", "sbc", "run"])
def test_help_for_every_command(command, capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(([command] if command else []) + ["--help"])
    assert exc.value.code == 0
    assert "usage: bayesgmm" in capsys.readouterr().out


def test_python_dash_m_entry_point():
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-m", "bayesgmm", "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "simulate" in out.stdout
