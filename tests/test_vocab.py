import pytest

from chextriev.errors import UnknownNameError
from chextriev.vocab import (
    CHEXPERT_OBSERVATIONS,
    CHEXPERT_TO_IMAGENOME,
    CHEXPERT_TO_NIH,
    IMAGENOME_FINDINGS,
    NIH_FINDINGS,
    NIH_TO_IMAGENOME,
    REGION_SIDES,
    REGIONS,
    class_list,
    equivalent_findings,
    normalise_finding,
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
    with pytest.raises(UnknownNameError, match="imagenome, nih, chexpert"):
        class_list("mimic")
    with pytest.raises(UnknownNameError, match="right lung"):
        region_index("left kidney")
    assert region_index("trachea") == 17


def test_chexpert_observations_and_cross_tables():
    assert class_list("chexpert") == CHEXPERT_OBSERVATIONS and len(CHEXPERT_OBSERVATIONS) == 14
    assert CHEXPERT_OBSERVATIONS[0] == "No Finding" and CHEXPERT_OBSERVATIONS[-1] == "Support Devices"
    assert set(CHEXPERT_TO_IMAGENOME) <= set(CHEXPERT_OBSERVATIONS)
    assert set(CHEXPERT_TO_IMAGENOME.values()) <= set(IMAGENOME_FINDINGS)
    assert set(CHEXPERT_TO_NIH) <= set(CHEXPERT_OBSERVATIONS) and set(CHEXPERT_TO_NIH.values()) <= set(NIH_FINDINGS)
    assert equivalent_findings("Pleural Effusion") == ["Pleural Effusion", "pleural effusion", "Effusion"]
    assert equivalent_findings("Effusion")[:2] == ["Effusion", "pleural effusion"]
    assert equivalent_findings("Support Devices") == ["Support Devices"]


@pytest.mark.parametrize("raw, name", [
    ("Pleural_Effusion", "Pleural Effusion"), ("edema", "Edema"), ("Edema", "Edema"),
    ("Enlarg_Cardiomediastinum", "Enlarged Cardiomediastinum"),
    ("Enlarged_Cardiomediastinum", "Enlarged Cardiomediastinum"), (" lung-opacity ", "Lung Opacity"),
    ("Airspace Opacity", "Lung Opacity"), ("Nodule", None), ("", None),
])
def test_finding_names_normalised_to_the_vocabulary(raw, name):
    assert normalise_finding(raw) == name
