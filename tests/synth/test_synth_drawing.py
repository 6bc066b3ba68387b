"""The drawing shows its findings: lesions change the pixels inside their masks, normals are
clean, and the anatomy is where the boxes say."""

from __future__ import annotations

import numpy as np

from chextriev.synth.anatomy import sample_patient
from chextriev.synth.phantom import draw_phantom
from chextriev.vocab import REGIONS


def _pair(conditions, seed=4, size=128):
    patient = sample_patient(np.random.default_rng(seed))
    normal = draw_phantom(np.random.default_rng(seed + 1), patient, "PA", (), size)
    sick = draw_phantom(np.random.default_rng(seed + 1), patient, "PA", conditions, size)
    return normal, sick


def test_normal_has_no_findings():
    normal, _ = _pair(())
    assert normal.lesions == [] and not normal.labels.any() and not normal.region_labels.any()


def test_opacities_brighten_their_mask_and_pneumothorax_darkens():
    for conditions, sign in ((("consolidation",), 1), (("effusion",), 1), (("pneumothorax",), -1)):
        normal, sick = _pair(conditions)
        mask = np.any([lesion.mask for lesion in sick.lesions], axis=0)
        diff = (sick.image - normal.image)[mask].mean()
        assert sign * diff > 0.02, (conditions, diff)


def test_lungs_are_darker_than_the_mediastinum():
    normal, _ = _pair(())
    img = normal.image
    def mean(region):
        x1, y1, x2, y2 = normal.boxes[REGIONS.index(region)].astype(int)
        return img[y1:y2, x1:x2].mean()
    assert mean("right mid lung zone") < mean("cardiac silhouette") - 0.1
    assert mean("left mid lung zone") < mean("upper mediastinum") - 0.1
