"""``--compile`` (on by default): the frozen trunk compiled ahead of time by AOTInductor
(chextriev.compiled) gives the eager embeddings, leaves gradients (Grad-CAM) to the eager trunk,
is compiled once into the compiled cache and loaded from there by a second process, and falls
back to eager where no compiler is found or compiling fails.

The rest of the suite runs eagerly (tests/conftest.py sets CHEXTRIEV_COMPILE=off); the tests here
that are about the default take that variable out of their subprocesses' environment."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from child_env import child_env

from chextriev.compiled import COMPILE_MODES, DEFAULT_COMPILE, parse_compile
from chextriev.errors import UnknownNameError


def test_compile_modes_and_their_spellings():
    assert COMPILE_MODES == ("off", "on") and DEFAULT_COMPILE == "on"
    for text in ("on", "ON", "1", "true", "yes", True, "", None):
        assert parse_compile(text) == "on"
    for text in ("off", "0", "false", "no", False):
        assert parse_compile(text) == "off"
    with pytest.raises(UnknownNameError, match="off, on"):
        parse_compile("maybe")


def test_the_flag_defaults_to_on_reads_the_environment_and_imports_no_torch(monkeypatch):
    code = ("import argparse, sys; from chextriev.cli_options import add_compile_option; "
            "p = argparse.ArgumentParser(); add_compile_option(p); "
            "print(p.parse_args([]).compile, p.parse_args(['--compile', '0']).compile, 'torch' in sys.modules)")
    for value, default in ((None, "on"), ("no", "off"), ("yes", "on")):
        env = {k: v for k, v in child_env().items() if k != "CHEXTRIEV_COMPILE"}
        if value is not None:
            env["CHEXTRIEV_COMPILE"] = value
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                             env=env).stdout
        assert out.split() == [default, "off", "False"], value
    from chextriev.cli_options import add_compile_option

    monkeypatch.delenv("CHEXTRIEV_COMPILE")
    parser = argparse.ArgumentParser()
    add_compile_option(parser)
    assert parser.parse_args([]).compile == "on"
    with pytest.raises(SystemExit):
        parser.parse_args(["--compile", "sometimes"])


def test_the_compiled_cache_folder_is_documented_and_overridable(monkeypatch, tmp_path):
    from chextriev.compiled import cache_dir

    monkeypatch.delenv("CHEXTRIEV_COMPILE_CACHE", raising=False)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    assert cache_dir() == Path.home() / ".cache" / "chextriev" / "compiled"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_dir() == tmp_path / "xdg" / "chextriev" / "compiled"
    monkeypatch.setenv("CHEXTRIEV_COMPILE_CACHE", str(tmp_path / "mine"))
    assert cache_dir() == tmp_path / "mine"


def _embed(checkpoint, records, **options):
    from chextriev.checkpoint import load_checkpoint
    from chextriev.embedding import embed_images
    from chextriev.io.images import load_image

    loaded = load_checkpoint(checkpoint, **options)
    images = [load_image(r.source) for r in records[:6]]
    return loaded, embed_images(loaded, images, [r.boxes for r in records[:6]], batch_size=4)


@pytest.fixture(scope="module")
def compiled_cache(tmp_path_factory) -> Path:
    """One compiled cache for this module's in-process tests (packages are reused between them)."""
    return tmp_path_factory.mktemp("compiled-cache")


def _counting(trunk):
    """Count the calls that reach ``trunk``'s compiled runner (not the eager fallback)."""
    calls = []
    runner = trunk.runner

    def counted(inputs):
        calls.append(tuple(inputs.shape))
        return runner(inputs)

    trunk.runner = counted
    return calls


@pytest.mark.slow
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_compiled_trunk_gives_the_eager_embeddings(tiny_checkpoint, tiny_records, precision, compiled_cache,
                                                   monkeypatch):
    import torch

    from chextriev.compiled import STATS, compiled_trunk
    from chextriev.embedding import embed_images
    from chextriev.io.images import load_image

    monkeypatch.setenv("CHEXTRIEV_COMPILE_CACHE", str(compiled_cache))
    _, reference = _embed(tiny_checkpoint, tiny_records, precision="fp32")
    loaded_eager, eager = _embed(tiny_checkpoint, tiny_records, precision=precision)
    assert compiled_trunk(loaded_eager.model) is None  # the library's default: eager
    before = STATS["compiled"]
    loaded, _ = _embed(tiny_checkpoint, tiny_records, precision=precision, compile=True, compile_batch=4)
    trunk = compiled_trunk(loaded.model)
    assert trunk is not None and trunk.failed is None and trunk.precision == precision
    assert STATS["compiled"] == before + 1 and trunk.how == "compiled" and trunk.path.parent == compiled_cache
    calls = _counting(trunk)
    images = [load_image(r.source) for r in tiny_records[:6]]
    compiled = embed_images(loaded, images, [r.boxes for r in tiny_records[:6]], batch_size=4)
    assert [shape[0] for shape in calls] == [4, 2]  # both batches compiled (dynamic batch), none eager
    cosine = np.sum(eager.embeddings * compiled.embeddings, axis=1)
    if precision == "fp32":
        assert cosine.min() >= 0.99999, cosine
        np.testing.assert_allclose(eager.probabilities, compiled.probabilities, atol=1e-4)
    else:  # two bf16 roundings (batch norm folded or not): each as close to fp32 as the other
        to_fp32 = np.sum(reference.embeddings * compiled.embeddings, axis=1)
        eager_to_fp32 = np.sum(reference.embeddings * eager.embeddings, axis=1)
        assert to_fp32.min() >= 0.999 and to_fp32.min() >= eager_to_fp32.min() - 5e-4, (to_fp32, eager_to_fp32)
    assert "compiled_trunk" not in " ".join(loaded.model.state_dict())  # no new weights to save

    # gradients (Grad-CAM) go through the eager trunk
    x = torch.rand(1, 1, loaded.config.image_size, loaded.config.image_size)
    from chextriev.precision import autocast

    with torch.enable_grad(), autocast(loaded.precision, "cpu"):
        features = loaded.model.regions.feature_map(x.requires_grad_(True))
        features.float().sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    assert len(calls) == 2

    # the same trunk again (another process would do the same): loaded from the cache
    again, _ = _embed(tiny_checkpoint, tiny_records, precision=precision, compile=True, compile_batch=4)
    assert compiled_trunk(again.model).how == "cached" and STATS["compiled"] == before + 1


@pytest.mark.slow
def test_auto_compiles_bf16_at_load_and_runs_what_its_check_keeps(tiny_checkpoint, compiled_cache, monkeypatch):
    """``auto`` compiles the bf16 trunk before its first-batch check (so that a server is ready
    compiled); the check installs it when bf16 is kept, and a fp32 trunk when it falls back."""
    from chextriev.checkpoint import load_checkpoint
    from chextriev.compiled import compiled_trunk
    from chextriev.precision import native_bf16, weights_precision

    if not native_bf16("cpu"):
        pytest.skip("auto runs fp32 on a CPU without native bf16")
    monkeypatch.setenv("CHEXTRIEV_COMPILE_CACHE", str(compiled_cache))
    for cosine, kept in ((1.0, "bf16"), (0.5, "fp32")):
        loaded = load_checkpoint(tiny_checkpoint, precision="auto", compile=True, compile_batch=4)
        assert loaded.verify_bf16 and compiled_trunk(loaded.model) is None
        assert loaded._pending_trunk is not None and loaded._pending_trunk.precision == "bf16"
        assert weights_precision(loaded.model) == "fp32"  # the bf16 package came from a copy
        assert loaded.settle_bf16(cosine, 4) == kept
        trunk = compiled_trunk(loaded.model)
        assert trunk is not None and trunk.precision == kept == weights_precision(loaded.model)


def _index(checkpoint, folder: Path, index_dir: Path, *, env: dict, timeout: int = 900):
    """``chextriev -v index`` in a fresh interpreter with the commands' defaults (no --compile)."""
    argv = [sys.executable, "-m", "chextriev_cli.main", "-v", "index", "--data", str(folder), "--checkpoint",
            str(checkpoint), "--index-dir", str(index_dir), "--precision", "fp32", "--device", "cpu",
            "--workers", "0", "--batch-size", "4", "--preview-side", "0", "--json"]
    run = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=timeout, check=False)
    assert run.returncode == 0, run.stderr[-3000:]
    return run


def _default_env(tmp_path: Path, name: str, **extra) -> dict:
    env = {k: v for k, v in child_env().items() if k != "CHEXTRIEV_COMPILE"}  # the default, as users get it
    return {**env, "CHEXTRIEV_COMPILE_CACHE": str(tmp_path / "compiled"),
            "TORCHINDUCTOR_CACHE_DIR": str(tmp_path / f"inductor-{name}"), **extra}


def _model_code(folder: Path) -> list[Path]:
    """The model code AOTInductor generated and built under TorchInductor's cache folder (its
    ``*.kernel.cpp`` and ``*.wrapper.so``; not the few-line probes of the CPU's vector ISA that
    loading a package builds where a compiler exists)."""
    if not folder.is_dir():
        return []
    return sorted([*folder.rglob("*.kernel.cpp"), *folder.rglob("*.wrapper.so")])


@pytest.mark.slow
def test_the_default_compiles_once_and_a_second_process_loads_it(tiny_checkpoint, tiny_records, tmp_path):
    """`chextriev index` with default flags compiles the trunk into the compiled cache; a second
    run (another process, another empty TorchInductor folder) loads it and compiles nothing."""
    folder = Path(tiny_records[0].source).parent
    first = _index(tiny_checkpoint, folder, tmp_path / "first", env=_default_env(tmp_path, "first"))
    packages = sorted((tmp_path / "compiled").glob("*.pt2"))
    assert len(packages) == 1, first.stderr[-3000:]
    assert first.stderr.count("--compile: compiling the") == 1 and "compiled in" in first.stderr
    assert _model_code(tmp_path / "inductor-first")  # TorchInductor really generated and built code
    stamp = packages[0].stat().st_mtime_ns

    second = _index(tiny_checkpoint, folder, tmp_path / "second", env=_default_env(tmp_path, "second"))
    assert "loaded from the cache" in second.stderr and "--compile: compiling the" not in second.stderr
    assert _model_code(tmp_path / "inductor-second") == []  # nothing compiled in the second process
    assert sorted((tmp_path / "compiled").glob("*.pt2")) == packages and packages[0].stat().st_mtime_ns == stamp
    assert json.loads(first.stdout)["indexed"] == json.loads(second.stdout)["indexed"] > 0


@pytest.mark.slow
def test_without_a_compiler_the_default_runs_eagerly_with_one_log_line(tiny_checkpoint, tiny_records, tmp_path):
    """No C++ compiler where TorchInductor looks ($CXX pointing nowhere) and nothing cached: the
    default runs eagerly, says so once, and writes no package."""
    folder = Path(tiny_records[0].source).parent
    env = _default_env(tmp_path, "none", CXX=str(tmp_path / "no-such-c++"))
    run = _index(tiny_checkpoint, folder, tmp_path / "idx", env=env)
    assert run.stderr.count("no C++ compiler found") == 1, run.stderr[-3000:]
    assert "--compile: compiling the" not in run.stderr
    assert not list((tmp_path / "compiled").glob("*.pt2"))
    assert json.loads(run.stdout)["indexed"] > 0


@pytest.mark.slow
def test_a_failing_compiler_falls_back_to_the_eager_trunk(tiny_checkpoint, tiny_records, tmp_path):
    """A compiler that answers ``--version`` but fails every compilation, in a fresh interpreter
    (TorchInductor caches the compiler it found for the whole process): logged, eager, the
    embeddings of --compile off, nothing left in the cache."""
    compiler = tmp_path / "broken-c++"
    compiler.write_text('#!/bin/sh\nif [ "$1" = "--version" ]; then echo "broken 1.0"; exit 0; fi\n'
                        'echo "broken: cannot compile" >&2; exit 1\n')
    compiler.chmod(0o755)
    code = f"""
import json, logging, numpy as np
logging.basicConfig(level=logging.WARNING)
from chextriev.checkpoint import load_checkpoint
from chextriev.compiled import STATS, compiled_trunk
from chextriev.embedding import embed_images
from chextriev.io.images import load_image
sources = {json.dumps([str(r.source) for r in tiny_records[:3]])}
images = [load_image(s) for s in sources]
eager = embed_images(load_checkpoint({str(tiny_checkpoint)!r}), images).embeddings
loaded = load_checkpoint({str(tiny_checkpoint)!r}, compile=True, compile_batch=3)
result = embed_images(loaded, images).embeddings
print(json.dumps({{"installed": compiled_trunk(loaded.model) is not None, "stats": dict(STATS),
                   "difference": float(np.abs(eager - result).max())}}))
"""
    env = child_env(CXX=str(compiler), CHEXTRIEV_COMPILE_CACHE=str(tmp_path / "compiled"),
                    TORCHINDUCTOR_CACHE_DIR=str(tmp_path / "inductor"))
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=600,
                         check=False)
    assert run.returncode == 0, run.stderr[-3000:]
    outcome = json.loads(run.stdout.strip().splitlines()[-1])
    assert outcome["installed"] is False and outcome["stats"] == {"failed": 1}, outcome
    assert run.stderr.count("compiling the backbone trunk failed") == 1 and "running it eagerly" in run.stderr
    assert outcome["difference"] <= 1e-6, outcome
    assert not [p for p in (tmp_path / "compiled").iterdir() if p.suffix == ".pt2"]


@pytest.mark.slow
def test_processes_starting_together_compile_once(tiny_checkpoint, tmp_path):
    """Two processes (server workers starting at once) asking for the same package: one compiles,
    the other waits on the lock and loads what the first wrote."""
    code = f"""
import json
from chextriev.checkpoint import load_checkpoint
from chextriev.compiled import STATS, compiled_trunk
loaded = load_checkpoint({str(tiny_checkpoint)!r}, precision="fp32", compile=True, compile_batch=1)
print(json.dumps({{"stats": dict(STATS), "how": compiled_trunk(loaded.model).how}}))
"""
    env = child_env(CHEXTRIEV_COMPILE_CACHE=str(tmp_path / "compiled"))
    workers = [subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True, env={**env, "TORCHINDUCTOR_CACHE_DIR": str(tmp_path / f"inductor-{i}")})
               for i in range(2)]
    outcomes = []
    for worker in workers:
        out, err = worker.communicate(timeout=900)
        assert worker.returncode == 0, err[-3000:]
        outcomes.append(json.loads(out.strip().splitlines()[-1]))
    assert sorted(o["how"] for o in outcomes) == ["cached", "compiled"], outcomes
    assert sum(o["stats"].get("compiled", 0) for o in outcomes) == 1
    assert all(o["stats"]["loaded"] == 1 for o in outcomes)
    assert len(list((tmp_path / "compiled").glob("*.pt2"))) == 1
