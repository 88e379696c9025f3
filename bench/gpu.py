"""``make bench-gpu``: histo_exp's training speed against the device's compute ceiling (Keras on JAX).

  (a) ceiling: one trial's CNN trained by a jitted JAX step on random uint8 patches already on
      the device (no input pipeline at all);
  (b) histo_exp's own path: the same network from ``SpaceHyperModel`` fitted on ``PatchBatches``
      over the uint8 cache of a full-size synthetic dataset (279 x 995 patches), as a trial fits,
      reading from the host cache file and from the cache held in device memory
      (``trainer.data_on_device``); both at float32 and mixed_bfloat16, batch 256 and 1024:
      images/s and the ratio (b)/(a);
  (c) one 10-trial search through the CLI at the best (b) setting, 2 epochs per trial, timed from
      start to the printed table, and from it a *projection* of a 10 x 20-epoch search.
``--size small`` runs every part on a CPU in a minute or two (a test does, so it cannot rot).
Prints a markdown table with the machine; ``--write`` adds it to bench/results.md.
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("KERAS_BACKEND", "jax")

HERE = Path(__file__).resolve().parent
SIZES = {  # synthetic data, batches, precisions, epochs timed, search trials and epochs
    "full": dict(data=["data.synthetic.patients=279", "data.synthetic.patches_per_patient=995"], batches=[256, 1024],
                 precisions=["float32", "mixed_bfloat16"], epochs=2, trials=10, trial_epochs=2),
    "small": dict(data=["data.synthetic.patients=6", "data.synthetic.patches_per_patient=40"], batches=[32],
                  precisions=["float32"], epochs=1, trials=1, trial_epochs=1),
}
LOADERS = 2  # trainer.loader_workers in (b) and (c)
# One trial's network, fixed: the original method's CNN at widths 32-64-128, 3x3 kernels.
NETWORK = {"blocks": 3, "filters": 32, "kernel_size": 3, "activation": "relu",
           "dense_units_1": 256, "dense_units_2": 128, "dense_units_3": 64, "learning_rate": 1e-3}


def config(size: str, *overrides: str):
    from hydra import compose, initialize_config_dir

    from histo_exp.config import CONFIG_DIR

    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return compose("config", overrides=[*SIZES[size]["data"], "paths.work_dir=.", "paths.output_dir=.",
                                            "trainer.early_stopping_patience=null", *overrides])


def trial_model(cfg, input_shape):
    import keras_tuner as kt

    from histo_exp import build
    from histo_exp.settings import load

    hypermodel = build.hypermodel(load(cfg), input_shape)
    hp = kt.HyperParameters()
    for name, value in NETWORK.items():
        hp.Fixed(name, value)
    return hypermodel, hp


def ceiling(cfg, input_shape, n: int, epochs: int) -> float:
    """Images/s of a jitted train step on device-resident random uint8 patches."""
    import jax
    import keras
    import numpy as np

    hypermodel, hp = trial_model(cfg, input_shape)
    model = hypermodel.build(hp)
    batch = int(cfg.trainer.batch_size)
    steps = max(1, n // batch)
    rng = np.random.default_rng(0)
    x = jax.device_put(rng.integers(0, 256, (steps * batch, *input_shape), dtype=np.uint8))
    y = jax.device_put(np.eye(2, dtype="float32")[rng.integers(0, 2, steps * batch)])
    loss_fn, optimizer = keras.losses.BinaryCrossentropy(), model.optimizer
    optimizer.build(model.trainable_variables)

    def loss_and_state(trainable, non_trainable, xb, yb):
        pred, non_trainable = model.stateless_call(trainable, non_trainable, xb, training=True)
        return loss_fn(yb, pred), non_trainable

    grad = jax.value_and_grad(loss_and_state, has_aux=True)

    @jax.jit
    def step(state, x, y, i):
        trainable, non_trainable, opt = state
        xb = jax.lax.dynamic_slice_in_dim(x, i * batch, batch)
        yb = jax.lax.dynamic_slice_in_dim(y, i * batch, batch)
        (loss, non_trainable), grads = grad(trainable, non_trainable, xb, yb)
        trainable, opt = optimizer.stateless_apply(opt, grads, trainable)
        return loss, (trainable, non_trainable, opt)

    state = ([v.value for v in model.trainable_variables], [v.value for v in model.non_trainable_variables],
             [v.value for v in optimizer.variables])
    loss, state = step(state, x, y, 0)  # compile
    loss.block_until_ready()
    t = time.perf_counter()
    for _ in range(epochs):
        for i in range(steps):
            loss, state = step(state, x, y, i)
    loss.block_until_ready()
    return steps * batch * epochs / (time.perf_counter() - t)


def ours(cfg, data, epochs: int, images) -> float:
    """Images/s of ``SpaceHyperModel.fit`` on ``PatchBatches`` of the training split, as a trial fits,
    gathering from ``images`` (the cache file behind its memory map, or the same array in device memory)."""
    from histo_exp.data.batches import PatchBatches

    hypermodel, hp = trial_model(cfg, data.input_shape)
    model = hypermodel.build(hp)
    train = PatchBatches(images, data.labels, data.split.train, int(cfg.trainer.batch_size), shuffle=True,
                         seed=int(cfg.seed), workers=int(cfg.trainer.loader_workers))
    hypermodel.fit(hp, model, train, epochs=1, verbose=0)  # compiles the full and the last, partial batch
    t = time.perf_counter()
    hypermodel.fit(hp, model, train, epochs=epochs, verbose=0)
    return data.split.train.size * epochs / (time.perf_counter() - t)


def search(size: str, batch: int, precision: str, folder: Path) -> float:
    """Seconds of a whole search through the CLI (``logger=none``), start to printed table."""
    spec = SIZES[size]
    args = [sys.executable, "-m", "histo_exp", *spec["data"], f"tuner.max_trials={spec['trials']}",
            f"trainer.epochs={spec['trial_epochs']}", "trainer.early_stopping_patience=null",
            f"trainer.batch_size={batch}", f"trainer.precision={precision}", "trainer.steps_per_execution=4",
            "trainer.lr_scaling=sqrt", "trainer.data_on_device=auto", f"trainer.loader_workers={LOADERS}",
            "trainer.verbose=0", "logger=none", f"hydra.run.dir={folder}"]
    t = time.perf_counter()
    done = subprocess.run(args, cwd=folder.parent, capture_output=True, text=True, env={**os.environ})
    took = time.perf_counter() - t
    if done.returncode != 0 or "auc" not in done.stdout + done.stderr:
        raise RuntimeError(f"the search failed:\n{done.stderr[-3000:]}")
    return took


def machine() -> str:
    import jax
    import keras

    devices = ", ".join(sorted({d.device_kind for d in jax.devices()}))
    return (f"{devices} ({jax.default_backend()}), {os.cpu_count()} CPU cores, Python {platform.python_version()}, "
            f"jax {jax.__version__}, Keras {keras.__version__}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", choices=sorted(SIZES), default="full")
    parser.add_argument("--work", type=Path, default=Path.home() / ".cache" / "histo_exp" / "bench-gpu")
    parser.add_argument("--write", action="store_true", help="append the table to bench/results.md")
    args = parser.parse_args()
    spec = SIZES[args.size]
    args.work.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("HISTO_EXP_CACHE", str(args.work / "cache"))

    from histo_exp.data.dataset import load
    from histo_exp.data.device import on_device

    t = time.perf_counter()
    data = load(config(args.size).data, progress=False)
    print(f"data: {data.split.train.size} training patches ready in {time.perf_counter() - t:.0f} s", flush=True)
    t = time.perf_counter()
    held = on_device(data.images, True)
    print(f"data: the {data.images.nbytes / 2**20:.0f} MiB cache put in device memory in "
          f"{time.perf_counter() - t:.1f} s", flush=True)
    rows, best = [], None
    for precision in spec["precisions"]:
        for batch in spec["batches"]:
            cfg = config(args.size, f"trainer.batch_size={batch}", f"trainer.precision={precision}",
                         f"trainer.loader_workers={LOADERS}")
            a = ceiling(cfg, data.input_shape, data.split.train.size, spec["epochs"])
            host = ours(cfg, data, spec["epochs"], data.images)
            device = ours(cfg, data, spec["epochs"], held)
            b = max(host, device)
            rows.append(f"| {precision} | {batch} | {a:,.0f} | {host:,.0f} | {device:,.0f} | {b / a:.2f} |")
            print(rows[-1], flush=True)
            best = max(best or (b, batch, precision), (b, batch, precision))
    rate, batch, precision = best
    took = search(args.size, batch, precision, args.work / "search")
    per_epoch = data.split.train.size / rate
    projected = took + spec["trials"] * (20 - spec["trial_epochs"]) * per_epoch
    table = "\n".join([
        f"### make bench-gpu ({args.size}, {time.strftime('%Y-%m-%d')})", "", f"Machine: {machine()}", "",
        "| precision | batch | (a) ceiling, images/s | (b) histo_exp fit from the host cache file, images/s "
        "| (b) from device memory, images/s | best (b)/(a) |",
        "|---|---|---|---|---|---|", *rows, "",
        f"(b) gathers batches with {LOADERS} loader threads (`trainer.loader_workers`).", "",
        f"(c) {spec['trials']}-trial search through the CLI at {precision}, batch {batch}, "
        f"{spec['trial_epochs']} epochs per trial, {data.split.train.size} training patches: "
        f"**{took:.0f} s** from start to the printed table.",
        f"Projection (not measured): a {spec['trials']} x 20-epoch search, adding {20 - spec['trial_epochs']} "
        f"epochs per trial at (b)'s rate: about **{projected / 60:.1f} min**.", ""])
    print(table)
    if args.write:
        with open(HERE / "results.md", "a") as handle:
            handle.write("\n" + table)


if __name__ == "__main__":
    main()
