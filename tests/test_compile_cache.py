"""JAX's persistent compilation cache, on by default (issue 13): a fresh process reuses the
programs an earlier one compiled, with identical results; the environment variable and
:func:`bayesgmm.set_compilation_cache` turn it off or move it; a user's own JAX setting wins.

Each check runs in a fresh interpreter, where the import-time setting happens."""

import json
import os
import subprocess
import sys

import jax
import pytest

import bayesgmm as bg
from bayesgmm import _compile

FIT = """
import json, jax, jax.monitoring
jax.config.update("jax_enable_x64", True)
events = []
jax.monitoring.register_event_listener(lambda name, **kw: events.append(name))
import bayesgmm as bg
x = bg.datasets.load_faithful()
r = bg.fit_em(x, 2, n_init=2, seed=0)
print(json.dumps({"dir": jax.config.jax_compilation_cache_dir, "loglik": r.log_likelihood.hex(),
                  "hits": events.count("/jax/compilation_cache/cache_hits")}))
"""


def _run(code, **env):
    full = {k: v for k, v in os.environ.items() if k not in ("BAYESGMM_COMPILE_CACHE", "JAX_COMPILATION_CACHE_DIR")}
    full.update(env)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=full, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_a_second_process_reuses_the_first_ones_programs(tmp_path):
    folder = tmp_path / "cache"
    first = _run(FIT, BAYESGMM_COMPILE_CACHE=str(folder))
    assert first["dir"] == str(folder) and any(folder.iterdir())
    second = _run(FIT, BAYESGMM_COMPILE_CACHE=str(folder))
    assert second["hits"] >= 1  # the EM program came from the cache
    assert second["loglik"] == first["loglik"]  # bit for bit


def test_on_by_default_in_the_users_cache_folder_and_off_on_request(tmp_path):
    where = "import json, jax, bayesgmm; print(json.dumps({'dir': jax.config.jax_compilation_cache_dir}))"
    default = _run(where, XDG_CACHE_HOME=str(tmp_path))
    assert default["dir"] == str(tmp_path / "bayesgmm" / "xla" / f"jax-{jax.__version__}")
    for off in ("0", "off", ""):
        assert _run(where, BAYESGMM_COMPILE_CACHE=off)["dir"] is None
    # the user's own JAX setting is left alone
    assert _run(where, JAX_COMPILATION_CACHE_DIR=str(tmp_path / "mine"))["dir"] == str(tmp_path / "mine")


def test_set_compilation_cache_moves_and_turns_off(tmp_path, monkeypatch):
    before = jax.config.jax_compilation_cache_dir
    try:
        bg.set_compilation_cache(tmp_path / "elsewhere")
        assert jax.config.jax_compilation_cache_dir == str(tmp_path / "elsewhere")
        assert (tmp_path / "elsewhere").is_dir()
        bg.set_compilation_cache(None)
        assert jax.config.jax_compilation_cache_dir is None
        blocker = tmp_path / "file"
        blocker.write_text("")
        with pytest.raises(OSError):
            bg.set_compilation_cache(blocker / "sub")
        # an unwritable default leaves the cache off instead of breaking the import
        monkeypatch.setenv(_compile.CACHE_ENV, str(blocker / "sub"))
        assert _compile.configure_default_cache() is None
    finally:
        bg.set_compilation_cache(before)
