"""`python -m benchmarks variant`: the list is the variant table, errors say what to do, the best
checkpoint of a run folder is found."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="module")
def variant_script():
    from benchmarks import variant

    return variant


def test_variant_script_lists_the_table_and_explains_errors(variant_script, tmp_path, capsys):
    from chextriev.model.config import VARIANTS

    assert variant_script.main(["list"]) == 0
    assert [line.split()[0] for line in capsys.readouterr().out.splitlines()] == list(VARIANTS)
    assert variant_script.main(["evaluate", "v5", "--preset", "synthetic-small", "--data", str(tmp_path),
                                "--run-dir", str(tmp_path / "none")]) == 2
    assert "python -m benchmarks variant train v5 --preset synthetic-small" in capsys.readouterr().err
    assert variant_script.main(["train", "v9", "--preset", "synthetic-small", "--data", str(tmp_path)]) == 2
    assert "v6-published-code" in capsys.readouterr().err  # the valid names
    assert variant_script.main(["train", "v5"]) == 2  # the default preset is the published one: it needs data
    assert "preset mimic needs --data" in capsys.readouterr().err
    assert variant_script.main(["evaluate-all", "--preset", "synthetic-small", "--data", str(tmp_path),
                                "--runs", str(tmp_path / "none")]) == 2
    assert "no variant has a checkpoint" in capsys.readouterr().err


def test_variant_script_finds_the_best_checkpoint(variant_script, tmp_path):
    run = tmp_path / "run"
    assert variant_script.best_checkpoint(run) is None
    (run / "logs").mkdir(parents=True)
    (run / "logs" / "epoch=1.ckpt").write_bytes(b"")
    assert variant_script.best_checkpoint(run) == run / "logs" / "epoch=1.ckpt"
    (run / "best.ckpt").write_bytes(b"")
    assert variant_script.best_checkpoint(run) == run / "best.ckpt"
