"""``--compile`` (on by default): the frozen trunk compiled ahead of time by AOTInductor
(chextriev.compiled) gives the eager embeddings, leaves gradients (Grad-CAM) to the eager trunk,
is compiled once into the compiled cache and loaded from there by a second process, and falls
back to eager where no compiler is found or compiling fails.

The rest of the suite runs eagerly (tests/conftest.py sets CHEXTRIEV_COMPILE=off); the tests here
that are about the default take that variable out of their subprocesses' environment."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

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
        env = {k: v for k, v in os.environ.items() if k != "CHEXTRIEV_COMPILE"}
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


@pytest.mark.slow
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_compiled_trunk_gives_the_eager_embeddings(tiny_checkpoint, tiny_records, precision):
    import torch
    from torch._dynamo.utils import counters

    from chextriev.compiled import compiled_trunk

    _, reference = _embed(tiny_checkpoint, tiny_records, precision="fp32")
    _, eager = _embed(tiny_checkpoint, tiny_records, precision=precision)
    before = counters["frames"]["ok"]
    loaded, compiled = _embed(tiny_checkpoint, tiny_records, precision=precision, compile=True, compile_batch=4)
    trunk = compiled_trunk(loaded.model)
    assert trunk is not None and trunk.failed is None
    assert counters["frames"]["ok"] > before  # TorchInductor really compiled a graph
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


@pytest.mark.slow
def test_a_failing_compiler_falls_back_to_the_eager_trunk(tiny_checkpoint, tiny_records, tmp_path):
    """A real compiler failure (no C++ compiler where TorchInductor looks, no cached kernels), in
    a fresh interpreter: TorchInductor caches the compiler it found for the whole process."""
    import json
    import os
    import subprocess

    code = f"""
import json, logging, numpy as np
logging.basicConfig(level=logging.WARNING)
from chextriev.checkpoint import load_checkpoint
from chextriev.compiled import compiled_trunk
from chextriev.embedding import embed_images
from chextriev.io.images import load_image
sources = {json.dumps([str(r.source) for r in tiny_records[:3]])}
images = [load_image(s) for s in sources]
eager = embed_images(load_checkpoint({str(tiny_checkpoint)!r}), images).embeddings
loaded = load_checkpoint({str(tiny_checkpoint)!r}, compile=True, compile_batch=3)
result = embed_images(loaded, images).embeddings
print(json.dumps({{"failed": compiled_trunk(loaded.model).failed,
                   "difference": float(np.abs(eager - result).max())}}))
"""
    env = {**os.environ, "CXX": str(tmp_path / "no-such-c++"), "TORCHINDUCTOR_CACHE_DIR": str(tmp_path / "cache"),
           "TORCHINDUCTOR_FORCE_DISABLE_CACHES": "1"}
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=600,
                         check=False)
    assert run.returncode == 0, run.stderr[-3000:]
    outcome = json.loads(run.stdout.strip().splitlines()[-1])
    assert outcome["failed"], outcome
    assert "running it eagerly" in run.stderr
    assert outcome["difference"] <= 1e-6, outcome
