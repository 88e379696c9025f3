"""Keras on JAX where TensorFlow is not installed: the augmentation layers and a whole search."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

from helpers import REPO, TINY, cli_env, runs

STRENGTHS = {"hed": 0.05, "brightness": 0.1, "contrast": 0.1, "saturation": 0.1, "hue": 0.05}


ALL = {"flip": True, "rotate90": True, **STRENGTHS}


JAX_CHECKS = textwrap.dedent("""
    import json
    import jax
    import keras
    import numpy as np
    from histo_exp.model.augment import Dihedral, input_layers

    ALL = json.loads({all!r})
    x = np.random.default_rng(0).integers(0, 256, (8, 12, 12, 3)).astype("float32")
    out = {{"backend": keras.backend.backend()}}

    def stack(seed):
        return keras.Sequential([keras.Input((12, 12, 3)), *input_layers(**ALL, seed=seed)])

    # jitted, as in fit; one trace serves the three stacks' seed states
    a, b, c = stack(7), stack(7), stack(8)
    augment = jax.jit(lambda states, x: a.stateless_call([], states, x, training=True)[0])
    ya, yb, yc = (np.asarray(augment([v.value for v in m.non_trainable_variables], x)) for m in (a, b, c))
    out["same_seed_same_batch"] = bool(np.array_equal(ya, yb))
    out["other_seed_other_batch"] = bool(not np.allclose(ya, yc))
    out["changed_when_training"] = bool(not np.allclose(ya, x))
    out["off_at_inference"] = all(np.array_equal(np.asarray(l(x, training=False)), x) for l in a.layers)
    out["dihedral_5"] = bool(np.array_equal(np.asarray(Dihedral(5)(x)), np.flip(np.rot90(x, 1, (1, 2)), 2)))

    keras.config.set_dtype_policy("mixed_bfloat16")
    model = keras.Sequential([keras.Input((12, 12, 3)), *input_layers(**ALL, gray=True, seed=0),
                              keras.layers.Conv2D(2, 3), keras.layers.GlobalAveragePooling2D(),
                              keras.layers.Dense(2, activation="softmax", dtype="float32")])
    out["dtypes"] = sorted({{str(layer.output.dtype) for layer in model.layers[:7]}})
    model.compile(optimizer="adam", loss="categorical_crossentropy")
    before = [np.asarray(v).copy() for v in model.non_trainable_variables]
    hist = model.fit(x, np.eye(2, dtype="float32")[np.arange(8) % 2], batch_size=8, epochs=1, verbose=0)
    after = [np.asarray(v) for v in model.non_trainable_variables]
    out["fit_loss_finite"] = bool(np.isfinite(hist.history["loss"][0]))
    out["fit_advanced_seeds"] = [bool(not np.array_equal(b, a)) for b, a in zip(before, after)]
    print("RESULT", json.dumps(out))
""")


def test_the_same_checks_pass_on_jax():
    pytest.importorskip("jax")
    env = {**os.environ, "KERAS_BACKEND": "jax", "JAX_PLATFORMS": "cpu"}
    code = JAX_CHECKS.format(all=json.dumps(ALL))
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (line,) = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    out = json.loads(line.removeprefix("RESULT "))
    assert out == {
        "backend": "jax", "same_seed_same_batch": True, "other_seed_other_batch": True,
        "changed_when_training": True, "off_at_inference": True, "dihedral_5": True, "dtypes": ["float32"],
        "fit_loss_finite": True, "fit_advanced_seeds": [True] * 6,
    }


def test_runs_on_jax_where_tensorflow_is_not_installed(tmp_path, cache_dir):
    """A GPU machine with jax and no TensorFlow: the search, its tracking and prediction never import
    TensorFlow, and histo_exp picks the jax backend by itself. As on a GPU, the cache is held in
    device memory (the CPU device here) and two threads gather batches there."""
    pytest.importorskip("jax", reason="jax is not installed (pip install -e '.[jax]')")
    without_tf = [sys.executable, str(REPO / "tests" / "without_tensorflow.py")]
    done = subprocess.run([*without_tf, "histo_exp", *TINY, "tuner.max_trials=1", "hydra.run.dir=out",
                           "trainer.data_on_device=true", "trainer.loader_workers=2"],
                          cwd=tmp_path, env=cli_env(cache_dir), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "on the jax backend" in done.stdout + done.stderr
    assert "uint8 cache in CPU memory: batches are gathered there" in done.stdout + done.stderr
    _, search, trials = runs(tmp_path)
    assert search[0].info.status == "FINISHED" and len(trials) == 1
    assert search[0].data.tags["histo_exp.keras_backend"] == "jax"
    patch = next(cache_dir.rglob("*.png"))
    predicted = subprocess.run([*without_tf, "histo_exp.predict", "model=out/best_model.keras", f"input={patch}",
                                "output=p.csv"], cwd=tmp_path, env=cli_env(cache_dir), capture_output=True,
                               text=True, timeout=600)
    assert predicted.returncode == 0, predicted.stderr[-3000:]
    assert (tmp_path / "p.csv").read_text().count("\n") == 2
