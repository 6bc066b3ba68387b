"""Decoding workers: a decoder that kills its process fails that one file, the run goes on."""

from __future__ import annotations

import pytest
from indexer_fakes import FakeEmbedder, crash_on_abort_name, slow_crash_on_abort_name, write_png
from sqlalchemy import select

from chextriev.records import Record
from indexer.db import STATUS_FAILED, STATUS_INDEXED, Image
from indexer.decode import OK
from indexer.decode_pool import CRASH_REASON, decode_stream


def _tasks(paths):
    return [(Record(source=p, image_id=p.stem, key=str(p), version="1:1"), 256, None)
            for p in paths]


@pytest.mark.slow
def test_a_crashing_decoder_fails_its_file_alone(tmp_path):
    paths = [write_png(tmp_path / f"img{i}.png", i) for i in range(6)]
    paths.insert(3, write_png(tmp_path / "abort-me.png", 99))
    results = list(decode_stream(_tasks(paths), 2, task_fn=crash_on_abort_name, window=4))
    assert [r.key for r in results] == [str(p) for p in paths]  # order kept, nothing lost
    statuses = {r.key: r.status for r in results}
    assert statuses.pop(str(tmp_path / "abort-me.png")) == "failed"
    assert set(statuses.values()) == {OK}
    crashed = next(r for r in results if r.key.endswith("abort-me.png"))
    assert crashed.reason == CRASH_REASON.format(error="BrokenProcessPool")


@pytest.mark.slow
def test_a_worker_dying_while_a_result_is_being_used_is_recovered(tmp_path):
    """The pool can break between two results (a decoder died while the consumer held the
    previous one): the next task's submit finds it broken; that task is not lost, the culprit
    fails alone, and the stream goes on in order."""
    import time

    paths = [write_png(tmp_path / f"img{i}.png", i) for i in range(4)]
    paths.insert(1, write_png(tmp_path / "abort-me.png", 99))
    stream = decode_stream(_tasks(paths), 2, task_fn=slow_crash_on_abort_name, window=2)
    first = next(stream)  # img0; abort-me is running in the other worker
    time.sleep(4)  # abort-me kills its process meanwhile: the pool is broken before the next submit
    results = [first, *stream]
    assert [r.key for r in results] == [str(p) for p in paths]
    assert [r.status for r in results] == [OK, "failed", OK, OK, OK]
    assert results[1].reason == CRASH_REASON.format(error="BrokenProcessPool")


def test_in_process_decoding_keeps_the_order(tmp_path):
    paths = [write_png(tmp_path / f"img{i}.png", i) for i in range(3)]
    assert [r.key for r in decode_stream(_tasks(paths), 0)] == [str(p) for p in paths]


@pytest.mark.slow
def test_run_index_survives_a_crashing_decoder(tmp_path, monkeypatch):
    from indexer import pipeline

    root = tmp_path / "archive"
    for i in range(5):
        write_png(root / f"img{i}.png", i)
    write_png(root / "abort-me.png", 99)
    monkeypatch.setattr(pipeline, "decode_task", crash_on_abort_name)
    summary = pipeline.run_index(root, embedder=FakeEmbedder(), index_dir=tmp_path / "idx",
                                 workers=2, progress=False)
    assert summary.indexed == 5 and summary.failed == 1
    from indexer_fakes import open_sessions

    with open_sessions(tmp_path / "idx")() as session:
        rows = dict(session.execute(select(Image.image_id, Image.status)).all())
    assert rows.pop("abort-me") == STATUS_FAILED
    assert set(rows.values()) == {STATUS_INDEXED}
