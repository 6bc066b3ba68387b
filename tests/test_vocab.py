import pytest

from chextriev.errors import UnknownNameError
from chextriev.vocab import (
    IMAGENOME_FINDINGS,
    NIH_FINDINGS,
    NIH_TO_IMAGENOME,
    REGION_SIDES,
    REGIONS,
    class_list,
    region_index,
)


def test_regions_in_spec_order_with_sides():
    assert len(REGIONS) == 18 and len(set(REGIONS)) == 18
    assert REGIONS[0] == "right lung" and REGIONS[7] == "left lung"
    assert REGIONS[16] == "cardiac silhouette" and REGIONS[17] == "trachea"
    for name, side in zip(REGIONS, REGION_SIDES):
        if name.startswith("right"):
            assert side == "R"
        elif name.startswith("left"):
            assert side == "L"
        else:
            assert side == "M"


def test_class_lists_are_configuration():
    assert class_list("imagenome") == IMAGENOME_FINDINGS and len(IMAGENOME_FINDINGS) == 9
    assert class_list("nih") == NIH_FINDINGS and len(NIH_FINDINGS) == 14
    assert set(NIH_TO_IMAGENOME) <= set(NIH_FINDINGS)
    assert set(NIH_TO_IMAGENOME.values()) <= set(IMAGENOME_FINDINGS)


def test_unknown_names_list_the_valid_ones():
    with pytest.raises(UnknownNameError, match="imagenome, nih"):
        class_list("chexpert")
    with pytest.raises(UnknownNameError, match="right lung"):
        region_index("left kidney")
    assert region_index("trachea") == 17
