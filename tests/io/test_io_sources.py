"""open_source: which source each spec gives, streaming records with key and version, the one
manifest dialect (both former dialects' columns), fetch_bytes, layout registration."""

from __future__ import annotations

import os
import pickle

import numpy as np
import pytest
from dicom_files import make_dicom, write_dicom
from PIL import Image

from chextriev.errors import DataFormatError, ImageReadError, UnknownNameError
from chextriev.io import datasets
from chextriev.io.dicomweb import Credentials, DicomwebSource, parse_study_date, service_root
from chextriev.io.folder import read_manifest
from chextriev.io.sources import (
    DatasetSource,
    FileSource,
    FolderSource,
    ManifestSource,
    fetch_bytes,
    open_source,
)
from chextriev.records import Record


def _tree(root):
    (root / "a").mkdir(parents=True)
    Image.new("L", (16, 16), 10).save(root / "a" / "x.png")
    write_dicom(root / "a" / "IM0001", make_dicom(np.arange(16, dtype=np.uint16).reshape(4, 4)))
    return root


def test_specs_give_their_sources(tmp_path):
    root = _tree(tmp_path / "tree")
    assert isinstance(open_source(root), FolderSource)
    assert isinstance(open_source(root / "a" / "x.png"), FileSource)
    (root / "list.csv").write_text("path\na/x.png\n")
    assert isinstance(open_source(root / "list.csv"), ManifestSource)
    assert isinstance(open_source(root, manifest=root / "list.csv"), ManifestSource)
    nih = tmp_path / "nih"
    nih.mkdir()
    (nih / "Data_Entry_2017.csv").write_text("Image Index\n")
    assert isinstance(open_source(nih), DatasetSource)
    web = open_source("https://pacs.example/dicom-web/", credentials=Credentials.bearer("s3cret"))
    assert isinstance(web, DicomwebSource) and web.root == "https://pacs.example/dicom-web"
    assert "s3cret" not in web.describe() + repr(web) + repr(web.connection) + repr(web.connection.credentials)
    with pytest.raises(DataFormatError, match="credentials inside the URL https://pacs/dicom-web"):
        open_source("https://user:pw@pacs/dicom-web")
    with pytest.raises(DataFormatError, match="does not exist"):
        open_source(tmp_path / "nope")
    with pytest.raises(UnknownNameError, match="nih"):
        open_source(root, layout="zip")


def test_streamed_records_are_cheap_picklable_and_keyed(tmp_path):
    root = _tree(tmp_path / "tree")
    records = list(open_source(root).iter_records())
    assert [os.path.basename(r.key) for r in records] == ["IM0001", "x.png"]
    dicom = records[0]
    assert dicom.patient_id is None and dicom.meta["image_id_source"] == "path"  # tags not read
    assert pickle.loads(pickle.dumps(dicom)).key == dicom.key
    assert fetch_bytes(dicom) == (root / "a" / "IM0001").read_bytes()
    with pytest.raises(ImageReadError, match="cannot read file"):
        fetch_bytes(Record(source=tmp_path / "gone.png", image_id="gone"))
    with pytest.raises(ImageReadError, match="no connection"):
        fetch_bytes(Record(source="x", image_id="x", key="dicomweb:https://elsewhere/x"))


def test_one_manifest_dialect_covers_both_former_ones(tmp_path):
    Image.new("L", (8, 8)).save(tmp_path / "a.png")
    Image.new("L", (8, 8)).save(tmp_path / "b.png")
    # the indexer's former columns (aliases, sex, age, NIH finding columns)
    (tmp_path / "old.csv").write_text(
        "path,patient,study,ViewPosition,sex,age,Atelectasis,Cardiomegaly\n"
        "a.png,P1,S1,PA,female,045Y,1,0\nb.png,P2,S2,AP,M,61,,1\n")
    parsed = read_manifest(tmp_path / "old.csv")
    first, second = parsed.rows
    assert first.fields == {"patient_id": "P1", "study_id": "S1", "view": "PA", "sex": "F", "age": 45}
    assert parsed.class_names == ("Atelectasis", "Cardiomegaly") and first.labels.tolist() == [1, 0]
    assert second.labels is None  # an empty cell: unknown, not normal
    # the io reader's former columns (a labels column, split, image_id)
    (tmp_path / "new.csv").write_text(
        "file,image_id,split,labels\na.png,one,train,Pneumonia|Pleural Effusion\nb.png,two,test,No Finding\n")
    rows = {r.image_id: r for r in open_source(tmp_path / "new.csv").iter_records()}
    assert rows["one"].split == "train" and rows["one"].labels.sum() == 2
    assert "pneumonia" in rows["one"].class_names and rows["two"].is_normal
    (tmp_path / "nih.csv").write_text("path,labels\na.png,Infiltration|Mass\n")
    assert len(read_manifest(tmp_path / "nih.csv").class_names) == 14  # the NIH list holds both
    (tmp_path / "bad.csv").write_text("path,labels\na.png,broken bone\n")
    with pytest.raises(UnknownNameError, match="broken bone"):
        read_manifest(tmp_path / "bad.csv")
    (tmp_path / "gone.csv").write_text("path\na.png\nmissing.png\n")
    assert len(list(open_source(tmp_path / "gone.csv").iter_records())) == 1  # warned, skipped


def test_registered_layout_joins_detection(tmp_path, monkeypatch):
    monkeypatch.setattr(datasets, "DATASET_LAYOUTS", list(datasets.DATASET_LAYOUTS))
    (tmp_path / "train.csv").write_text("x\n")
    Image.new("L", (8, 8)).save(tmp_path / "img.png")

    def read(path, class_list, **options):
        return [Record(source=tmp_path / "img.png", image_id="from-reader")]

    datasets.register_layout(datasets.DatasetLayout(
        "toy", lambda p: (p / "train.csv").is_file(), read, "imagenome"), before="nih")
    assert datasets.detect_layout(tmp_path) == "toy" and "toy" in datasets.layout_names()
    (record,) = open_source(tmp_path).iter_records()
    assert record.image_id == "from-reader" and record.version and record.key.endswith("img.png")
    with pytest.raises(ValueError, match="already"):
        datasets.register_layout(datasets.DatasetLayout("toy", bool, read))


def test_dicomweb_options_are_checked():
    assert service_root("HTTPS://pacs:8443/dicom-web/") == "https://pacs:8443/dicom-web"
    assert parse_study_date("20240101-20241231") == "20240101-20241231"
    assert parse_study_date("20240101-") == "20240101-"
    for bad in ("2024-01-01", "20241231-20240101", "yesterday"):
        with pytest.raises(DataFormatError):
            parse_study_date(bad)
    with pytest.raises(DataFormatError, match="query"):
        service_root("https://pacs/dicom-web?x=1")
