"""The similar-case report filed back into the PACS: a DICOM Comprehensive SR holding a TID 1500
Measurement Report, written with highdicom.

    report = SimilarCaseReport(findings=[FindingReport("Effusion", 0.83, True, box, "right lung",
                                                       similar=7)],
                               k=10, model=ModelInfo(...), result_url="https://chextriev/?study=...")
    ds = build_report(query_header, report)      # a new SR instance in the query's study
    data = report_bytes(ds)                       # Part 10 bytes (what STOW-RS sends)

What it holds, and nothing else:

* the **query image**, referenced (Current Requested Procedure Evidence, the Image Library, and
  every measurement group's source image); its patient and study modules copied as they are
  (highdicom's ``copy_patient_and_study_information``; a Type 2 attribute the image lacks is
  written empty, as the standard allows);
* one measurement group per finding (TID 1501, or TID 1410 with the box where the model says
  where): the model's probability for THIS image, present/absent at the checkpoint's
  threshold, the region's box as a closed polyline on the query image (SCOORD, image pixels)
  and its anatomical region; and the similar-case evidence for the finding, "7 of 10 similar
  archived cases" (a count among the top ``k``);
* a group with ``k`` (how many similar cases the counts are among), always present, so a model
  without a finding head (no probabilities) still gives a valid report;
* the model and index that produced it (TID 4019 Algorithm Identification on every group; the
  device observer names the checkpoint), and a text summary with the address of the full result
  in the viewer (TID 1500 "Qualitative Evaluations" TEXT items).

It names no other patient: no other study's UIDs, identifiers, dates or images (a similar case
is another patient's; only counts by finding travel). Every call makes new Series and SOP
Instance UIDs. Findings and regions are coded in the private scheme ``99CHEXTRIEV`` (declared in
the Coding Scheme Identification Sequence); units are UCUM, presence SNOMED CT.
"""

from __future__ import annotations

import hashlib
import io
import re
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

#: The private coding scheme of the findings, regions and the report's own concepts.
SCHEME = "99CHEXTRIEV"
SCHEME_NAME = "CheXtriev findings and similar-case evidence"
#: Series description of every report (how a viewer lists it).
SERIES_DESCRIPTION = "CheXtriev similar-case report"
#: The series number reports are filed under in the query's study.
SERIES_NUMBER = 9701
MANUFACTURER = "CheXtriev"
#: DICOM limits: LO 64 characters, UT for long text.
_LO = 64
_UT = 10240


@dataclass(frozen=True)
class FindingReport:
    """What the report says about one finding of the query image.

    ``probability``: the model's, or ``None`` (a model without that finding);
    ``present``: at the checkpoint's threshold (``None`` without a probability); ``box``:
    ``(x1, y1, x2, y2)`` in the query image's pixels (column, row), or ``None`` where the model
    says no where; ``region``: the anatomical region of the box; ``similar``: how many of the
    ``k`` similar archived cases hold the finding (``None``: not counted).
    """

    name: str
    probability: float | None = None
    present: bool | None = None
    box: tuple[float, float, float, float] | None = None
    region: str | None = None
    similar: int | None = None


@dataclass(frozen=True)
class ModelInfo:
    """The model and index that produced a report."""

    checkpoint_id: str
    index_build_id: str | None = None
    index_size: int | None = None
    model_name: str = "CheXtriev"
    software_version: str = "0"
    #: settings of the search, as ``name=value`` texts (k, filters, exclusions)
    parameters: tuple[str, ...] = ()


@dataclass(frozen=True)
class SimilarCaseReport:
    """Everything :func:`build_report` writes besides the query's own header."""

    findings: Sequence[FindingReport]
    k: int
    model: ModelInfo
    result_url: str | None = None
    #: how the counts were made (e.g. "known label, else the model's prediction")
    count_basis: str | None = None
    notes: tuple[str, ...] = field(default=())


def _code_value(text: str, prefix: str) -> str:
    """A short code value (at most 16 characters, the SH limit) for a name: its letters and
    digits upper-cased when they fit, else a prefix and 8 hex digits of its hash."""
    slug = re.sub(r"[^A-Z0-9]+", "-", text.upper()).strip("-")
    if slug and len(slug) <= 16:
        return slug
    return f"{prefix}{hashlib.sha1(text.encode()).hexdigest()[:8].upper()}"


def finding_code(name: str):
    """The coded concept of a finding name (private scheme, the name as its meaning)."""
    from highdicom.sr import CodedConcept

    return CodedConcept(_code_value(name, "F-"), SCHEME, name[:_LO])


def region_code(name: str):
    from highdicom.sr import CodedConcept

    return CodedConcept(_code_value(name, "R-"), SCHEME, name[:_LO])


def _concepts():
    from highdicom.sr import CodedConcept

    return {
        "probability": CodedConcept("CXT-PROB", SCHEME, "Model probability of finding"),
        "similar": CodedConcept("CXT-SIMILAR", SCHEME, "Similar archived cases with finding"),
        "k": CodedConcept("CXT-K", SCHEME, "Similar archived cases retrieved"),
        "summary": CodedConcept("CXT-SUMMARY", SCHEME, "Similar-case search summary"),
        "url": CodedConcept("CXT-RESULT-URL", SCHEME, "Full similar-case result"),
        "evidence": CodedConcept("CXT-EVIDENCE", SCHEME, "Similar-case evidence"),
        "unit_one": CodedConcept("1", "UCUM", "no units"),
        "unit_cases": CodedConcept("{cases}", "UCUM", "cases"),
        "present": CodedConcept("52101004", "SCT", "Present"),
        "absent": CodedConcept("2667000", "SCT", "Absent"),
        "chest_xr": CodedConcept("399208008", "SCT", "Plain chest X-ray"),
        "qualitative": CodedConcept("C0034375", "UMLS", "Qualitative Evaluations"),
    }


def uid_from(text: str) -> str:
    """A stable DICOM UID (``2.25.<integer>``) from a text (the device UID of a checkpoint)."""
    digest = hashlib.sha256(text.encode()).digest()
    return f"2.25.{uuid.UUID(bytes=digest[:16], version=4).int}"


#: Type 2 attributes of the Patient and General Study modules that highdicom reads from the
#: evidence (an image lacking one gets it empty: "unknown", as Type 2 allows).
_TYPE2 = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate",
          "StudyTime", "ReferringPhysicianName", "StudyID", "AccessionNumber")


def query_evidence(header):
    """The query image's header as highdicom's evidence: a copy without pixel data, with the
    Type 2 patient and study attributes present (empty where the image has none)."""
    from pydicom import Dataset

    from chextriev.errors import DataFormatError

    evidence = Dataset()
    for element in header:
        if element.tag.group == 0x7FE0:  # pixel data of any kind
            continue
        evidence.add(element)
    for keyword in _TYPE2:
        if keyword not in evidence:
            setattr(evidence, keyword, "")
    for keyword in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID"):
        if not evidence.get(keyword):
            raise DataFormatError(f"the query image has no {keyword}: a report cannot reference it")
    return evidence


def _library_entry_possible(evidence) -> bool:
    """Whether highdicom can describe the image in the Image Library (TID 1600, optional): a
    projection radiograph needs its PatientOrientation and ImagerPixelSpacing for it."""
    return bool(evidence.get("PatientOrientation")) and bool(evidence.get("ImagerPixelSpacing")) \
        and len(evidence.PatientOrientation) == 2


def _box_polyline(box: Sequence[float], rows: int | None, columns: int | None) -> np.ndarray | None:
    """A box ``(x1, y1, x2, y2)`` as a closed polyline of 5 (column, row) points, clipped to the
    image; ``None`` when not finite or empty."""
    x1, y1, x2, y2 = (float(v) for v in box)
    if not all(np.isfinite([x1, y1, x2, y2])):
        return None
    if columns:
        x1, x2 = np.clip([x1, x2], 0.0, float(columns))
    if rows:
        y1, y2 = np.clip([y1, y2], 0.0, float(rows))
    if x2 <= x1 or y2 <= y1:
        return None
    return np.array([[x1, y1], [x2, y1], [x2, y2], [x1, y2], [x1, y1]], dtype=np.float32)


def _summary_line(finding: FindingReport, k: int) -> str:
    parts = []
    if finding.probability is not None:
        verdict = "" if finding.present is None else (" (present)" if finding.present
                                                       else " (absent)")
        parts.append(f"model probability {finding.probability:.2f}{verdict}")
    if finding.region and finding.box is not None:
        parts.append(f"where: {finding.region}")
    if finding.similar is not None:
        parts.append(f"{finding.similar} of {k} similar archived cases")
    return f"{finding.name}: " + "; ".join(parts)


def build_report(header, report: SimilarCaseReport, *, series_number: int = SERIES_NUMBER,
                 instance_number: int = 1):
    """The SR (a ``highdicom.sr.ComprehensiveSR``, a pydicom Dataset) of ``report`` about the
    image ``header`` (its DICOM header; pixels not needed), to be stored in that image's study.

    New Series and SOP Instance UIDs every call. Raises ``DataFormatError`` when the header
    lacks the UIDs it must be referenced by.
    """
    import highdicom as hd
    from highdicom.sr import (
        AlgorithmIdentification,
        ComprehensiveSR,
        DeviceObserverIdentifyingAttributes,
        FindingSite,
        ImageRegion,
        Measurement,
        MeasurementReport,
        MeasurementsAndQualitativeEvaluations,
        ObservationContext,
        ObserverContext,
        PlanarROIMeasurementsAndQualitativeEvaluations,
        QualitativeEvaluation,
        SourceImageForMeasurementGroup,
        SourceImageForRegion,
        TrackingIdentifier,
    )
    from highdicom.sr.value_types import ContainerContentItem, ContentSequence, TextContentItem
    from pydicom.sr.codedict import codes
    from pydicom.uid import generate_uid

    c = _concepts()
    evidence = query_evidence(header)
    sop_class, sop_instance = str(evidence.SOPClassUID), str(evidence.SOPInstanceUID)
    rows, columns = evidence.get("Rows"), evidence.get("Columns")
    model = report.model
    parameters = [f"checkpoint {model.checkpoint_id}"]
    if model.index_build_id:
        parameters.append(f"index build {model.index_build_id}")
    if model.index_size is not None:
        parameters.append(f"index size {model.index_size}")
    parameters += [f"k={report.k}", *model.parameters]
    algorithm = AlgorithmIdentification(name=model.model_name[:_LO],
                                        version=model.software_version[:_LO],
                                        parameters=[text[:_UT] for text in parameters])
    groups: list[Any] = []
    for number, finding in enumerate(report.findings, start=1):
        measurements = []
        if finding.probability is not None and np.isfinite(finding.probability):
            measurements.append(Measurement(name=c["probability"],
                                            value=round(float(finding.probability), 4),
                                            unit=c["unit_one"]))
        if finding.similar is not None:
            measurements.append(Measurement(name=c["similar"], value=int(finding.similar),
                                            unit=c["unit_cases"]))
        evaluations = []
        if finding.present is not None and finding.probability is not None:
            evaluations.append(QualitativeEvaluation(
                finding_code(finding.name), c["present"] if finding.present else c["absent"]))
        tracking = TrackingIdentifier(uid=generate_uid(),
                                      identifier=f"finding {number}: {finding.name}"[:_LO])
        polyline = None if finding.box is None else _box_polyline(finding.box, rows, columns)
        common = {"tracking_identifier": tracking, "finding_type": finding_code(finding.name),
                  "algorithm_id": algorithm, "measurements": measurements or None,
                  "qualitative_evaluations": evaluations or None}
        if polyline is not None:
            region = ImageRegion(graphic_type=hd.sr.GraphicTypeValues.POLYLINE,
                                 graphic_data=polyline,
                                 source_image=SourceImageForRegion(sop_class, sop_instance))
            sites = [FindingSite(region_code(finding.region))] if finding.region else None
            groups.append(PlanarROIMeasurementsAndQualitativeEvaluations(
                referenced_region=region, finding_sites=sites, **common))
        else:
            groups.append(MeasurementsAndQualitativeEvaluations(
                source_images=[SourceImageForMeasurementGroup(sop_class, sop_instance)], **common))
    groups.append(MeasurementsAndQualitativeEvaluations(
        tracking_identifier=TrackingIdentifier(uid=generate_uid(),
                                               identifier="similar-case evidence"),
        finding_type=c["evidence"], algorithm_id=algorithm,
        source_images=[SourceImageForMeasurementGroup(sop_class, sop_instance)],
        measurements=[Measurement(name=c["k"], value=int(report.k), unit=c["unit_cases"])]))

    observer = ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=DeviceObserverIdentifyingAttributes(
            uid=uid_from(f"chextriev checkpoint {model.checkpoint_id}"),
            name=model.model_name[:_LO], manufacturer_name=MANUFACTURER,
            model_name=f"checkpoint {model.checkpoint_id}"[:_LO],
            serial_number=(model.index_build_id or "no index build")[:_LO]))
    content = MeasurementReport(
        observation_context=ObservationContext(observer_device_context=observer),
        procedure_reported=c["chest_xr"], imaging_measurements=groups,
        referenced_images=[evidence] if _library_entry_possible(evidence) else None)
    root = content[0]
    texts = [_summary_line(finding, report.k) for finding in report.findings]
    if not report.findings:
        texts.append("the model has no finding head and no archived case holds a finding label: "
                     "the report holds the similar-case search only")
    if report.count_basis:
        texts.append(f"counts among the {report.k} most similar archived cases, by "
                     f"{report.count_basis}")
    texts.extend(report.notes)
    qualitative = ContainerContentItem(name=c["qualitative"],
                                       relationship_type=hd.sr.RelationshipTypeValues.CONTAINS)
    qualitative.ContentSequence = ContentSequence()
    for text in texts:
        qualitative.ContentSequence.append(TextContentItem(
            name=c["summary"], value=text[:_UT],
            relationship_type=hd.sr.RelationshipTypeValues.CONTAINS))
    if report.result_url:
        qualitative.ContentSequence.append(TextContentItem(
            name=c["url"], value=report.result_url[:_UT],
            relationship_type=hd.sr.RelationshipTypeValues.CONTAINS))
    root.ContentSequence.append(qualitative)

    from highdicom.coding_schemes import CodingSchemeIdentificationItem

    return ComprehensiveSR(
        evidence=[evidence], content=content, series_instance_uid=generate_uid(),
        series_number=series_number, sop_instance_uid=generate_uid(),
        instance_number=instance_number, manufacturer=MANUFACTURER, is_complete=True,
        is_final=False, is_verified=False, series_description=SERIES_DESCRIPTION,
        coding_schemes=[CodingSchemeIdentificationItem(
            designator=SCHEME, name=SCHEME_NAME, responsible_organization=MANUFACTURER)])


def report_bytes(ds) -> bytes:
    """The report as a DICOM Part 10 file (what STOW-RS sends, what a test validates)."""
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def report_summary(ds) -> dict[str, Any]:
    """The UIDs of a stored report (for the API response and the CLI's JSON line)."""
    return {"study_instance_uid": str(ds.StudyInstanceUID),
            "series_instance_uid": str(ds.SeriesInstanceUID),
            "sop_instance_uid": str(ds.SOPInstanceUID), "sop_class_uid": str(ds.SOPClassUID)}


def _walk(items):
    for item in items or ():
        yield item
        yield from _walk(item.get("ContentSequence"))


def _concept(item) -> tuple[str, str] | None:
    names = item.get("ConceptNameCodeSequence")
    if not names:
        return None
    code = names[0]
    return str(code.get("CodeValue") or code.get("LongCodeValue") or ""), str(code.CodingSchemeDesignator)


def read_report(ds) -> dict[str, Any]:
    """What a report built by :func:`build_report` says, read back from its content tree:
    ``{"findings": {name: {"probability", "present", "similar", "box", "region"}}, "k",
    "result_url", "texts", "referenced_instances"}`` (``box``: ``[x1, y1, x2, y2]``). For tests
    and for checking a report fetched back from the PACS."""
    findings: dict[str, dict[str, Any]] = {}
    out: dict[str, Any] = {"findings": findings, "k": None, "result_url": None, "texts": [],
                           "referenced_instances": set()}
    for item in _walk(ds.get("ContentSequence")):
        for ref in item.get("ReferencedSOPSequence") or ():
            out["referenced_instances"].add(str(ref.ReferencedSOPInstanceUID))
        concept = _concept(item)
        if concept == ("CXT-SUMMARY", SCHEME):
            out["texts"].append(str(item.TextValue))
        elif concept == ("CXT-RESULT-URL", SCHEME):
            out["result_url"] = str(item.TextValue)
        if item.get("ValueType") != "CONTAINER" or concept != ("125007", "DCM"):
            continue
        group = list(item.ContentSequence)
        finding = next((entry.ConceptCodeSequence[0].CodeMeaning for entry in group
                        if _concept(entry) == ("121071", "DCM")), None)
        values: dict[str, Any] = {"probability": None, "present": None, "similar": None,
                                  "box": None, "region": None}
        for entry in _walk(group):
            code = _concept(entry)
            if entry.get("ValueType") == "NUM":
                number = float(entry.MeasuredValueSequence[0].NumericValue)
                if code == ("CXT-PROB", SCHEME):
                    values["probability"] = number
                elif code == ("CXT-SIMILAR", SCHEME):
                    values["similar"] = int(number)
                elif code == ("CXT-K", SCHEME):
                    out["k"] = int(number)
            elif entry.get("ValueType") == "SCOORD":
                points = np.asarray(entry.GraphicData, dtype=np.float64).reshape(-1, 2)
                values["box"] = [float(points[:, 0].min()), float(points[:, 1].min()),
                                 float(points[:, 0].max()), float(points[:, 1].max())]
            elif entry.get("ValueType") == "CODE" and code == ("363698007", "SCT"):
                values["region"] = str(entry.ConceptCodeSequence[0].CodeMeaning)
            elif entry.get("ValueType") == "CODE" and finding is not None and code is not None \
                    and code[1] == SCHEME and entry.ConceptNameCodeSequence[0].CodeMeaning == finding:
                values["present"] = entry.ConceptCodeSequence[0].CodeValue == "52101004"
        if finding is not None and finding != "Similar-case evidence":
            findings[str(finding)] = values
    return out
