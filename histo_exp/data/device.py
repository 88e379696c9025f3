"""The uint8 cache held in accelerator memory, so each batch is a gather there and nothing crosses
from the host per step (the full dataset is 2 GB; a GPU has tens of GB)."""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from histo_exp.errors import UsageError

log = logging.getLogger(__name__)

SHARE = 0.25  # auto: at most this share of the device's memory; the rest is the model's


def on_device(images: np.ndarray, mode: str | bool) -> Any:
    """``images`` in device memory when ``mode`` (``trainer.data_on_device``) asks for it, else as
    they are. ``auto``: under JAX on a GPU or TPU when the cache takes at most a quarter of its
    memory; ``true`` also on a CPU device (tests); ``false`` never. ``PatchBatches`` gathers from
    either the same way."""
    mode = str(mode).lower()
    if mode not in ("auto", "true", "false"):
        raise UsageError(f"trainer.data_on_device must be auto, true or false; got {mode!r}")
    if mode == "false":
        return images
    import keras

    if keras.backend.backend() != "jax":
        if mode == "true":
            raise UsageError(f"trainer.data_on_device=true needs the jax backend (KERAS_BACKEND=jax); this run "
                             f"is on {keras.backend.backend()}. Use auto or false here.")
        return images
    import jax

    device = jax.local_devices()[0]
    if mode == "auto":
        limit = (device.memory_stats() or {}).get("bytes_limit", 0) if device.platform != "cpu" else 0
        if images.nbytes > SHARE * limit:  # a CPU device (limit 0) holds the data in host memory already
            return images
    log.info("holding the %d MiB uint8 cache in %s memory: batches are gathered there",
             images.nbytes // 2**20, device.platform.upper())
    return jax.device_put(images, device)
