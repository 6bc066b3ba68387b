"""The similar-case report (chextriev/io/sr.py): a TID 1500 Comprehensive SR that dciodvfy
accepts, that copies the query's patient and study modules as they are, references the query
image and nothing else, gets new UIDs every time, puts the model's boxes on the query image,
and stays valid for a model without a finding head; and the choice of a study's query image
(chextriev/io/dicomweb.py: the indexer's view rule, PA before AP before unknown)."""

from __future__ import annotations

import io

import numpy as np
import pydicom
import pytest
from dicom_files import dciodvfy_errors, make_dicom

from chextriev.errors import DataFormatError, NoFrontalImageError, StudyNotFoundError
from chextriev.io.dicomweb import check_uid, choose_frontal
from chextriev.io.sr import (
    FindingReport,
    ModelInfo,
    SimilarCaseReport,
    build_report,
    read_report,
    report_bytes,
    uid_from,
)

DX = "1.2.840.10008.5.1.4.1.1.1.1"
#: highdicom's Implementation Class UID (in the file meta of what it writes)
HIGHDICOM_IMPLEMENTATION = "1.2.826.0.1.3680043.9.7433."
#: The modules copied from the query image, as highdicom's Patient and General Study modules.
COPIED = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyInstanceUID", "StudyDate",
          "StudyTime", "AccessionNumber", "StudyID", "ReferringPhysicianName", "StudyDescription")


def _query(**tags) -> pydicom.Dataset:
    defaults = {"PatientName": "DOE^JANE", "PatientBirthDate": "19700101", "StudyTime": "101500",
                "AccessionNumber": "ACC-77", "StudyID": "S77", "ReferringPhysicianName": "WHO^DR",
                "StudyDescription": "CHEST PA", "SOPClassUID": DX, "Manufacturer": "ACME"}
    ds = make_dicom(np.zeros((200, 100), np.uint16), **{**defaults, **tags})
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    return ds


def _report(findings=None, **kwargs) -> SimilarCaseReport:
    findings = [FindingReport("Effusion", 0.83, True, (10.0, 20.0, 60.0, 150.0), "right lung", 7),
                FindingReport("pulmonary edema/hazy opacity", 0.12, False, None, None, 2),
                FindingReport("Cardiomegaly", 0.55, True, (5.0, 5.0, 500.0, 500.0), "cardiac silhouette", 0)] \
        if findings is None else findings
    return SimilarCaseReport(findings=findings, k=10,
                             model=ModelInfo("ckpt-0123abcd", "build-42", 1234, software_version="0.1.0",
                                             parameters=("view=PA",)),
                             result_url="https://chextriev.example/?study=1.2.3", **kwargs)


def _roundtrip(ds) -> pydicom.Dataset:
    return pydicom.dcmread(io.BytesIO(report_bytes(ds)))


def _uids(ds) -> set[str]:
    found: set[str] = set()

    def visit(dataset):
        for element in dataset:
            if element.VR == "SQ":
                for item in element.value:
                    visit(item)
            elif element.VR == "UI" and element.value:
                values = element.value if isinstance(element.value, (list, pydicom.multival.MultiValue)) \
                    else [element.value]
                found.update(str(v) for v in values)

    visit(ds)
    visit(ds.file_meta)
    return found


def test_report_is_valid_and_says_what_the_model_found(tmp_path):
    query = _query()
    report = _roundtrip(build_report(query, _report()))
    path = tmp_path / "report.dcm"
    path.write_bytes(report_bytes(report))
    assert dciodvfy_errors(path) == []
    assert report.SOPClassUID == pydicom.uid.ComprehensiveSRStorage and report.Modality == "SR"
    assert report.ContentTemplateSequence[0].TemplateIdentifier == "1500"
    for keyword in COPIED:  # the query's patient and study modules, as they are
        assert report.get(keyword) == query.get(keyword), keyword
    read = read_report(report)
    effusion = read["findings"]["Effusion"]
    assert effusion["probability"] == pytest.approx(0.83) and effusion["present"] is True
    assert effusion["similar"] == 7 and effusion["region"] == "right lung"
    assert effusion["box"] == pytest.approx([10.0, 20.0, 60.0, 150.0])
    edema = read["findings"]["pulmonary edema/hazy opacity"]
    assert edema["present"] is False and edema["box"] is None and edema["similar"] == 2
    # a box beyond the image is clipped to it (Columns 100, Rows 200)
    assert read["findings"]["Cardiomegaly"]["box"] == pytest.approx([5.0, 5.0, 100.0, 200.0])
    assert read["k"] == 10 and read["result_url"] == "https://chextriev.example/?study=1.2.3"
    assert any("Effusion" in text and "7 of 10 similar archived cases" in text for text in read["texts"])
    assert read["referenced_instances"] == {str(query.SOPInstanceUID)}


def test_report_names_only_the_query_and_gets_new_uids_each_time():
    query = _query()
    first, second = build_report(query, _report()), build_report(query, _report())
    for report in (first, second):
        assert report.StudyInstanceUID == query.StudyInstanceUID
        assert report.SeriesInstanceUID != query.SeriesInstanceUID
        evidence = report.CurrentRequestedProcedureEvidenceSequence
        assert len(evidence) == 1 and evidence[0].StudyInstanceUID == query.StudyInstanceUID
        assert [ref.ReferencedSOPInstanceUID for ref in evidence[0].ReferencedSeriesSequence[0].ReferencedSOPSequence] \
            == [query.SOPInstanceUID]
        assert "PertinentOtherEvidenceSequence" not in report
    assert first.SOPInstanceUID != second.SOPInstanceUID and first.SeriesInstanceUID != second.SeriesInstanceUID
    # every UID in it is the query's, its own, a DICOM-defined one or made for this report; of
    # those made, only the device observer's (one per checkpoint) is the same in both
    query_uids = {str(query.StudyInstanceUID), str(query.SeriesInstanceUID), str(query.SOPInstanceUID)}
    defined = {uid for uid in _uids(first) | _uids(second)
               if uid.startswith(("1.2.840.10008.", HIGHDICOM_IMPLEMENTATION))}
    made_first, made_second = (_uids(report) - query_uids - defined for report in (first, second))
    assert all(uid.startswith((pydicom.uid.PYDICOM_ROOT_UID, "2.25.")) for uid in made_first | made_second)
    assert made_first & made_second == {uid_from("chextriev checkpoint ckpt-0123abcd")}


def test_a_model_without_findings_still_files_a_valid_report(tmp_path):
    report = _roundtrip(build_report(_query(), _report(findings=[])))
    path = tmp_path / "empty.dcm"
    path.write_bytes(report_bytes(report))
    assert dciodvfy_errors(path) == []
    read = read_report(report)
    assert read["findings"] == {} and read["k"] == 10
    assert any("no finding head" in text for text in read["texts"])
    # counts from the archive's labels without a probability: valid too
    counted = _roundtrip(build_report(_query(), _report(findings=[FindingReport("Effusion", similar=3)])))
    path.write_bytes(report_bytes(counted))
    assert dciodvfy_errors(path) == []
    assert read_report(counted)["findings"]["Effusion"] == {
        "probability": None, "present": None, "similar": 3, "box": None, "region": None}


def test_missing_type2_attributes_are_written_empty_and_missing_uids_refused(tmp_path):
    query = _query(PatientName=None, PatientBirthDate=None, AccessionNumber=None, StudyID=None,
                   ReferringPhysicianName=None, StudyTime=None)
    report = _roundtrip(build_report(query, _report()))
    for keyword in ("PatientName", "PatientBirthDate", "AccessionNumber", "StudyID", "StudyTime"):
        assert keyword in report and not report.get(keyword)
    path = tmp_path / "r.dcm"
    path.write_bytes(report_bytes(report))
    assert dciodvfy_errors(path) == []
    with pytest.raises(DataFormatError, match="SOPInstanceUID"):
        build_report(_query(SOPInstanceUID=None), _report())


def test_a_box_that_is_not_finite_or_empty_gives_a_group_without_region():
    findings = [FindingReport("Effusion", 0.9, True, (float("nan"), 1.0, 2.0, 3.0), "right lung"),
                FindingReport("Mass", 0.9, True, (50.0, 50.0, 50.0, 80.0), "left lung")]
    read = read_report(_roundtrip(build_report(_query(), _report(findings=findings))))
    assert read["findings"]["Effusion"]["box"] is None and read["findings"]["Mass"]["box"] is None


def _instance(view, modality="DX", series="1.2.3", instance="1.2.3.1", **tags):
    return {"StudyInstanceUID": "1.2", "SeriesInstanceUID": series, "SOPInstanceUID": instance,
            "Modality": modality, **({"ViewPosition": view} if view is not None else {}), **tags}


def test_the_query_image_of_a_study_follows_the_view_rule():
    lateral, pa, ap, unknown = (_instance("LL", instance="1.1"), _instance("PA", instance="1.2"),
                                _instance("AP", instance="1.3"), _instance(None, instance="1.4"))
    report = _instance(None, modality="SR", instance="1.5")
    assert choose_frontal("1.2", [lateral, ap, unknown, pa, report]).instance_uid == "1.2"
    assert choose_frontal("1.2", [lateral, unknown, ap]).instance_uid == "1.3"
    assert choose_frontal("1.2", [lateral, unknown]).instance_uid == "1.4"  # unknown: assumed frontal
    by_number = [_instance("PA", instance="2.1", InstanceNumber=3), _instance("PA", instance="2.2", InstanceNumber=1)]
    assert choose_frontal("1.2", by_number).instance_uid == "2.2"
    with pytest.raises(NoFrontalImageError) as error:
        choose_frontal("1.2", [lateral, report])
    assert {(f["modality"], f["view"]) for f in error.value.found} == {("DX", "LL"), ("SR", None)}
    assert "LL" in str(error.value)
    with pytest.raises(StudyNotFoundError):
        choose_frontal("1.2", [])


def test_uids_given_by_a_user_are_checked():
    assert check_uid(" 1.2.840.1 ", "study_uid") == "1.2.840.1"
    assert check_uid("", "series_uid") is None
    for bad in ("1.2.abc", "1" * 65, "../etc", "1..2"):
        with pytest.raises(DataFormatError, match="not a DICOM UID"):
            check_uid(bad, "study_uid")
