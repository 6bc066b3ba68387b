"""Which conditions a study shows, with realistic co-occurrence, and which findings each one
labels. Conditions are what the drawing shows; labels follow from what is drawn, so nothing
but the image tells the findings apart (sex, age, view and exposure are independent of them).
"""

from __future__ import annotations

import numpy as np

#: Drawable conditions, in sampling order.
CONDITIONS: tuple[str, ...] = (
    "opacity", "consolidation", "pneumonia", "atelectasis",
    "effusion", "cardiomegaly", "edema", "pneumothorax",
)

#: Relative frequency of each condition as the first one of an abnormal study.
PRIMARY_WEIGHTS: dict[str, float] = {
    "opacity": 0.19, "effusion": 0.17, "atelectasis": 0.15, "cardiomegaly": 0.14,
    "edema": 0.11, "pneumonia": 0.10, "consolidation": 0.07, "pneumothorax": 0.07,
}

#: P(add condition | condition present), over a base rate: the co-occurrence structure
#: seen in real reports (effusion with heart failure and edema, atelectasis with effusion...).
BOOSTS: dict[tuple[str, str], float] = {
    ("cardiomegaly", "effusion"): 0.35, ("cardiomegaly", "edema"): 0.3,
    ("edema", "effusion"): 0.45, ("edema", "cardiomegaly"): 0.35,
    ("effusion", "atelectasis"): 0.4, ("effusion", "cardiomegaly"): 0.2,
    ("pneumonia", "opacity"): 0.25, ("pneumonia", "effusion"): 0.2,
    ("consolidation", "effusion"): 0.15, ("atelectasis", "effusion"): 0.25,
    ("atelectasis", "opacity"): 0.2, ("opacity", "atelectasis"): 0.15,
    ("pneumothorax", "atelectasis"): 0.1,
}
BASE_RATE = 0.05
MAX_CONDITIONS = 4

#: Findings each condition's lesions are labelled with (ImaGenome names).
CONDITION_FINDINGS: dict[str, tuple[str, ...]] = {
    "opacity": ("lung opacity",),
    "consolidation": ("consolidation", "lung opacity"),
    "pneumonia": ("pneumonia", "lung opacity"),
    "atelectasis": ("atelectasis",),
    "effusion": ("pleural effusion",),
    "cardiomegaly": ("enlarged cardiac silhouette",),
    "edema": ("pulmonary edema/hazy opacity",),
    "pneumothorax": ("pneumothorax",),
}
#: Fluid overload / heart failure is the pattern edema + enlarged heart (its lesions are the
#: edema lesions); it is drawn whenever both are.
FLUID_OVERLOAD = "fluid overload/heart failure"


def sample_conditions(rng: np.random.Generator, previous: tuple[str, ...] | None = None,
                      persist: float = 0.6) -> tuple[str, ...]:
    """Conditions of one abnormal study (1 to 4, ordered as CONDITIONS).

    previous: the conditions of the patient's previous study; each persists with
    probability ``persist`` (chronic findings follow the patient).
    """
    present: set[str] = set()
    if previous:
        present = {c for c in previous if rng.random() < persist}
    if not present:
        names = list(PRIMARY_WEIGHTS)
        weights = np.array([PRIMARY_WEIGHTS[n] for n in names])
        present.add(names[int(rng.choice(len(names), p=weights / weights.sum()))])
    for name in CONDITIONS:
        if name in present or len(present) >= MAX_CONDITIONS:
            continue
        boost = max((BOOSTS.get((have, name), 0.0) for have in present), default=0.0)
        if rng.random() < BASE_RATE + boost:
            present.add(name)
    return tuple(c for c in CONDITIONS if c in present)
