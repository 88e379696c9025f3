"""Where a dataset's patches come from: one reader per layout, chosen by ``data.source``.

A reader takes the data settings and returns a ``Manifest``: one row per patch with its label (an
index into ``classes``), patient, and where the source names them its site, its split part and its
place in the slide. Everything after it (the cache, the split, the model) is the same for every
source. A new layout is one more reader here and one more file in ``conf/data/``.
"""

from __future__ import annotations

import importlib
import os
from pathlib import Path

from histo_exp.data.index import Manifest, index, save_listing
from histo_exp.settings import Data

# data.source -> "module:function"; imported when chosen (h5py, say, only for PCam).
READERS = {
    "idc": "histo_exp.data.sources:read_idc",
    "folder": "histo_exp.data.folder:read",
    "manifest": "histo_exp.data.manifest_csv:read",
    "pcam": "histo_exp.data.pcam:read",
}


def read(cfg: Data, progress: bool = True) -> Manifest:
    """The manifest of the dataset ``cfg`` describes, by its source's reader."""
    # The synthetic set of more than two classes is generated as a folder tree (``synthetic.generate``).
    source = "folder" if cfg.synthetic and cfg.synthetic.classes > 2 else cfg.source
    module, name = READERS[source].split(":")
    return getattr(importlib.import_module(module), name)(cfg, progress)


def listings(cfg: Data) -> Path:
    """Where listings are kept, so that a re-run lists no folder that did not change."""
    return Path(cfg.cache_dir).expanduser() / "listings"


def data_root(cfg: Data) -> Path:
    """The dataset folder; for ``data=synthetic`` the generated set, made on first use."""
    if cfg.synthetic:
        from histo_exp.data.synthetic import SyntheticSpec, generate  # OpenCV: not on a cached run's path

        spec = SyntheticSpec(**vars(cfg.synthetic), seed=cfg.seed)
        return generate(Path(cfg.root), spec, workers=cfg.workers or os.cpu_count() or 1)
    return Path(cfg.root)


def read_idc(cfg: Data, progress: bool = True) -> Manifest:
    """IDC's layout (``data=idc``, and the synthetic set made in it): classes "0" and "1" from the names."""
    return index(data_root(cfg), progress=progress, memo=listings(cfg))


def keep_listing(cfg: Data, manifest: Manifest) -> None:
    """Keep a listing that can be split for the next run (IDC's layout; the others list in no time)."""
    if cfg.source == "idc":
        save_listing(listings(cfg), manifest)
