"""DICOM UIDs in the results and the PACS viewer link (--viewer-url / CHEXTRIEV_VIEWER_URL)."""

from __future__ import annotations

import pytest

from server import create_app
from server.config import ConfigError, resolve_config
from server.results import viewer_link

TEMPLATE = "https://pacs.example/viewer?StudyInstanceUIDs={study_uid}&SeriesInstanceUID={series_uid}"
ROW = {"study_instance_uid": "1.2.3", "series_instance_uid": "1.2.3.4", "sop_instance_uid": "1.2.3.4.5",
       "pseudonymised": False}


def test_viewer_link_rules():
    assert viewer_link(None, ROW) == (None, None)
    assert viewer_link(TEMPLATE, ROW) == (
        "https://pacs.example/viewer?StudyInstanceUIDs=1.2.3&SeriesInstanceUID=1.2.3.4", None)
    url, note = viewer_link(TEMPLATE, {**ROW, "pseudonymised": True})
    assert url is None and "pseudonymised" in note
    url, note = viewer_link(TEMPLATE, {**ROW, "series_instance_uid": None})
    assert url is None and "series_instance_uid" in note
    url, note = viewer_link(TEMPLATE, {**ROW, "study_instance_uid": "9f2c" * 8})  # an HMAC
    assert url is None and "not a DICOM UID" in note


def test_viewer_template_is_checked_at_start_up():
    assert resolve_config({"VIEWER_URL": TEMPLATE}, environ={})["VIEWER_URL"] == TEMPLATE
    assert resolve_config({}, environ={"CHEXTRIEV_VIEWER_URL": TEMPLATE})["VIEWER_URL"] == TEMPLATE
    with pytest.raises(ConfigError, match="study_uid"):
        resolve_config({"VIEWER_URL": "https://pacs/viewer?uid={uid}"}, environ={})
    with pytest.raises(ConfigError, match="http"):
        resolve_config({"VIEWER_URL": "javascript:alert({study_uid})"}, environ={})
    with pytest.raises(ConfigError, match="none of"):
        resolve_config({"VIEWER_URL": "https://pacs/viewer"}, environ={})


def test_results_carry_uids_and_the_viewer_link(app):
    service = app.extensions["chextriev"]
    viewer = create_app({"SERVICE": service, "VIEWER_URL": TEMPLATE, "LOAD": "manual"}).test_client()
    rows = service.images(service.catalog.index.ids.tolist())
    dicom = next(r for r in rows if r["format"] == "dicom")
    png = next(r for r in rows if r["format"] == "png")
    detail = viewer.get(f"/api/v1/images/{dicom['id']}").get_json()
    assert detail["study_instance_uid"] == dicom["study_instance_uid"] and detail["sop_instance_uid"]
    assert detail["viewer_url"] == TEMPLATE.format(study_uid=dicom["study_instance_uid"],
                                                   series_uid=dicom["series_instance_uid"])
    plain = viewer.get(f"/api/v1/images/{png['id']}").get_json()
    assert plain["viewer_url"] is None and "no DICOM" in plain["viewer_note"]
    body = viewer.post(f"/api/v1/search/by-id/{png['id']}", data={"k": "20"}).get_json()
    linked = [r for r in body["results"] if r["viewer_url"]]
    assert linked and all(r["study_instance_uid"] in r["viewer_url"] for r in linked)
    # Without a template: the UIDs, no link fields.
    client = app.test_client()
    detail = client.get(f"/api/v1/images/{dicom['id']}").get_json()
    assert detail["series_instance_uid"] == dicom["series_instance_uid"] and "viewer_url" not in detail
