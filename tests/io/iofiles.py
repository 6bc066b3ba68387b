"""Writers of small files in the real formats for tests/io: ImaGenome scene graphs and boxes here;
the DICOM builder is tests/dicom_files.py."""

from __future__ import annotations

from chextriev.vocab import REGIONS


def scene_graph(
    image_id: str,
    boxes: dict[str, tuple[float, float, float, float]],
    attributes: dict[str, list[list[str]]],
    **extra,
) -> dict:
    """A Chest ImaGenome scene-graph dict with ``objects`` for ``boxes`` and ``attributes``."""
    objects = []
    for name, (x1, y1, x2, y2) in boxes.items():
        objects.append(
            {
                "object_id": f"{image_id}_{name}",
                "bbox_name": name,
                "name": name.capitalize(),
                "x1": int(x1 * 224 / 512), "y1": int(y1 * 224 / 512),
                "x2": int(x2 * 224 / 512), "y2": int(y2 * 224 / 512),
                "original_x1": x1, "original_y1": y1, "original_x2": x2, "original_y2": y2,
                "original_width": x2 - x1, "original_height": y2 - y1,
            }
        )  # fmt: skip
    attrs = [
        {
            "bbox_name": name,
            name: True,
            "attributes": lists,
            "phrases": [f"phrase {i}" for i in range(len(lists))],
        }
        for name, lists in attributes.items()
    ]
    graph = {
        "image_id": image_id,
        "patient_id": 10000032,
        "study_id": 50414267,
        "viewpoint": "PA",
        "objects": objects,
        "attributes": attrs,
        "relationships": [],
    }
    graph.update(extra)
    return graph


def full_boxes() -> dict[str, tuple[float, float, float, float]]:
    """A valid box for each of the 18 regions (distinct, inside 512x512)."""
    return {name: (10.0 + i, 20.0 + i, 200.0 + i, 300.0 + i) for i, name in enumerate(REGIONS)}
