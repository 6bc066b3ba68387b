"""Preprocessed tar shards: round trip, crash safety, streamed reading, training from shards, CLI."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tarfile
import textwrap
import time

import numpy as np
import pytest
import torch
from child_env import child_env

from chextriev.errors import DataFormatError
from chextriev.io.images import load_image
from chextriev.training.shards import (
    INDEX,
    ShardStream,
    is_shard_dir,
    load_shard_records,
    read_index,
    read_shard_image,
    shrink_with_boxes,
    write_shards,
)


@pytest.fixture(scope="module")
def shard_dir(tiny_records, tmp_path_factory):
    out = tmp_path_factory.mktemp("shards")
    write_shards(tiny_records, out, max_side=48, shard_size=7, progress=False)
    return out


def test_round_trip_keeps_records_labels_and_scaled_boxes(tiny_records, shard_dir):
    index = read_index(shard_dir, verify=True)
    assert [s["samples"] for s in index["shards"]] == [7, 7, 6]
    records = load_shard_records(shard_dir)
    assert [r.image_id for r in records] == [r.image_id for r in tiny_records]
    for original, stored in zip(tiny_records, records):
        assert (stored.patient_id, stored.study_id, stored.split, stored.view) == (
            original.patient_id, original.study_id, original.split, original.view)
        assert stored.class_names == original.class_names
        np.testing.assert_array_equal(stored.labels, original.labels)
        np.testing.assert_array_equal(stored.region_labels, original.region_labels)
        np.testing.assert_allclose(stored.boxes, original.boxes * 48 / 64, rtol=1e-6)
        assert stored.image_size == (48, 48) and stored.meta["original_size"] == (64, 64)
        expected, _ = shrink_with_boxes(load_image(original.source), None, 48)
        np.testing.assert_allclose(read_shard_image(stored), expected, atol=1 / 65535 + 1e-6)
    assert len({r.key for r in records}) == len(records)


def test_unknown_labels_stay_unknown(tiny_records, tmp_path):
    from dataclasses import replace

    masked = tiny_records[0].labels.copy()
    masked[1] = np.nan
    records = [replace(tiny_records[0], labels=masked, boxes=None), replace(tiny_records[1], labels=None)]
    write_shards(records, tmp_path, max_side=32, progress=False)
    stored = load_shard_records(tmp_path)
    assert np.isnan(stored[0].labels[1]) and stored[0].labels[0] == masked[0] and stored[0].boxes is None
    assert stored[1].labels is None


def test_members_are_webdataset_pairs_readable_by_tarfile(shard_dir):
    with tarfile.open(shard_dir / "shard-000000.tar") as tar:
        names = tar.getnames()
        meta = json.loads(tar.extractfile("00000000.json").read())
    assert names[:4] == ["00000000.png", "00000000.json", "00000001.png", "00000001.json"]
    assert meta["image_id"] == "img000" and len(meta["boxes"]) == 18


def test_missing_index_truncated_or_replaced_shard_is_refused(shard_dir, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(shard_dir, copy)
    with open(copy / "shard-000001.tar", "r+b") as handle:
        handle.truncate(os.path.getsize(copy / "shard-000001.tar") - 700)
    with pytest.raises(DataFormatError, match="shard-000001.tar.*truncated"):
        load_shard_records(copy)
    (copy / INDEX).unlink()
    assert not is_shard_dir(copy)
    with pytest.raises(DataFormatError, match="did not finish"):
        read_index(copy)
    shutil.rmtree(copy)
    shutil.copytree(shard_dir, copy)
    data = bytearray((copy / "shard-000002.tar").read_bytes())
    data[600] ^= 0xFF  # same size, other bytes
    (copy / "shard-000002.tar").write_bytes(bytes(data))
    read_index(copy)  # sizes match
    with pytest.raises(DataFormatError, match="sha256"):
        read_index(copy, verify=True)


def test_a_killed_write_leaves_nothing_read_as_valid(tiny_records, tmp_path):
    """SIGKILL in the middle of a rewrite over a complete folder: no index, the folder is refused."""
    out = tmp_path / "shards"
    write_shards(tiny_records, out, max_side=48, shard_size=3, progress=False)
    assert is_shard_dir(out)
    script = textwrap.dedent(f"""
        import sys, time
        from chextriev.io.images import load_image
        from chextriev.training.quick import synthetic_records
        from chextriev.training.shards import write_shards
        records = synthetic_records({str(tmp_path / "recs")!r}, n=20, size=64)

        def slow(record):
            if record.image_id == "img007":
                print("mid-write", flush=True)
                time.sleep(60)
            return load_image(record.source)

        write_shards(records, {str(out)!r}, max_side=48, shard_size=3, load=slow, progress=False)
    """)
    process = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True, env=child_env())
    try:
        deadline = time.monotonic() + 60
        line = ""
        while "mid-write" not in line and time.monotonic() < deadline:
            line = process.stdout.readline()
        assert "mid-write" in line
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=10)
    finally:
        if process.poll() is None:
            process.kill()
    assert not is_shard_dir(out)
    with pytest.raises(DataFormatError, match="did not finish"):
        load_shard_records(out)
    assert list(out.glob(".shard-*.partial"))  # the unfinished shard kept its temporary name
    write_shards(tiny_records, out, max_side=48, shard_size=3, progress=False)  # a rerun repairs it
    assert len(load_shard_records(out)) == 20 and not list(out.glob(".shard-*.partial"))


def test_stream_reads_each_record_once_per_epoch_in_a_new_order(shard_dir):
    records = load_shard_records(shard_dir)
    train = [r for r in records if r.split == "train"]
    stream = ShardStream(train, lambda i, image: {"index": i, "mean": float(image.mean())}, seed=0, buffer=4)
    first = [item["index"] for item in stream]
    stream.set_epoch(1)
    second = [item["index"] for item in stream]
    assert sorted(first) == sorted(second) == list(range(len(train)))
    assert first != second
    by_index = {item["index"]: item["mean"] for item in ShardStream(train, lambda i, im: {"index": i, "mean":
                                                                    float(im.mean())}, shuffle=False)}
    for i, record in enumerate(train):
        assert by_index[i] == pytest.approx(float(read_shard_image(record).mean()))


def test_training_from_shards_streamed_with_augmentation(shard_dir, tmp_path, monkeypatch, caplog):
    import logging

    import chextriev.training.data as data_module
    from chextriev.checkpoint import load_checkpoint
    from chextriev.training.fit import train

    monkeypatch.setattr(data_module, "INPUT_CACHE_BYTES", 0)  # too big for memory: stream it
    epochs: list[int] = []
    set_epoch = ShardStream.set_epoch
    monkeypatch.setattr(ShardStream, "set_epoch", lambda self, e: (epochs.append(e), set_epoch(self, e)))
    with caplog.at_level(logging.INFO):
        result = train(shard_dir, tmp_path / "run", variant="v6", preset="tiny", max_epochs=2, progress=False,
                       cache_dir=tmp_path / "cache", augment="standard")
    assert any("streamed from 3 shard files" in r.getMessage() for r in caplog.records)
    assert epochs == [0, 1]  # a new shard order every epoch
    assert load_checkpoint(result.best).thresholds is not None


def test_training_from_shards_caches_features_keyed_by_the_stored_images(shard_dir, tmp_path):
    """Frozen features of shard records are keyed by the stored image's sha256 (from the index:
    no shard is read to compute keys) and trained on like any records."""
    from chextriev.training.data import content_hashes
    from chextriev.training.feature_cache import FeatureCache
    from chextriev.training.fit import train

    result = train(shard_dir, tmp_path / "run", variant="v6", preset="tiny", max_epochs=1, progress=False,
                   cache_dir=tmp_path / "cache")
    assert result.best.is_file() and result.splits["train"] == 12
    records = load_shard_records(shard_dir)
    hashes = content_hashes(FeatureCache(tmp_path / "cache"), records)
    assert hashes == [r.meta["shard"]["sha256"] for r in records]


def test_cli_write_verify_and_train(tmp_path, capsys):
    from chextriev.synth.writer import SynthConfig, write_archive
    from chextriev_cli.main import main

    archive = tmp_path / "archive"
    write_archive(SynthConfig(out=archive, patients=12, seed=0, size=96, workers=1))
    out = tmp_path / "shards"
    assert main(["shards", "write", "--data", str(archive), "--out", str(out), "--max-side", "64",
                 "--shard-size", "8", "--no-progress"]) == 0
    assert "shards" in capsys.readouterr().out
    assert main(["shards", "verify", str(out)]) == 0
    assert main(["train", "--shards", str(out), "--out", str(tmp_path / "run"), "--preset", "tiny",
                 "--max-epochs", "1", "--no-progress", "--cache-dir", str(tmp_path / "cache")]) == 0
    assert main(["train", "--shards", str(tmp_path), "--out", str(tmp_path / "run2"), "--preset", "tiny"]) == 2
    torch.set_num_threads(1)
