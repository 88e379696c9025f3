"""A cohort scored whole by a saved model (``histo_exp.evaluate``'s scoring), in this process."""

import keras
import numpy as np

from histo_exp.data.dataset import PatchData
from histo_exp.data.index import Manifest
from histo_exp.data.split import Split
from histo_exp.evaluation.external import Cohort, check_classes, score
from histo_exp.settings import Eval


def test_more_than_two_classes_are_decided_by_the_most_probable_with_each_class_auc(tmp_path):
    """A 3-class model that carries its classes, on a cohort of them (no decoding)."""
    rng = np.random.default_rng(0)
    n, names = 60, ("a", "b", "c")
    labels, patients = np.arange(n) % 3, np.array([f"p{i % 6}" for i in range(n)])
    images = rng.integers(0, 256, (n, 8, 8, 3), dtype=np.uint8)
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((8, 8, 3)), keras.layers.Rescaling(1 / 255), keras.layers.Flatten(),
                              keras.layers.Dense(3, activation="softmax")])
    xy = np.full(n, -1)
    manifest = Manifest(tmp_path, [f"{i}.png" for i in range(n)], patients, xy, xy, labels, classes=names)
    data = PatchData(images, labels, patients, xy, xy, Split(np.empty(0, int), np.empty(0, int), np.arange(n)),
                     tmp_path, tmp_path, classes=names)
    cohort = Cohort(data, manifest, np.ones(n, bool))
    meta = {"classes": list(names), "threshold": None}
    check_classes(meta, 3, cohort)
    result, prob = score(model, meta, cohort, Eval(tta=False, threshold="youden", batch_size=16, bootstrap=50,
                                                   max_maps=0, ensemble=1), tmp_path / "out", 0)
    assert result.threshold is None and "threshold" not in result.metrics and prob.shape == (n, 3)
    assert {"test_auc", "test_auc_a", "test_auc_c_ci_high"} <= set(result.metrics)
    assert result.table.startswith("decision: the most probable of 3 classes")
    assert [p.name for p in result.plots] == ["roc.png", "pr.png", "confusion.png"]
