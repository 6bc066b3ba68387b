"""The install: one dependency list, mirrored by environment.yml, and a torch/torchvision pair
whose compiled ops work on this (CPU-only) machine."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import yaml

REPO_ROOT = Path(__file__).resolve().parents[1]


def _name(requirement: str) -> str:
    return re.split(r"[<>=!~\[ ;]", requirement.strip().strip('"'), maxsplit=1)[0].lower()


def test_environment_yml_names_the_same_packages_as_pyproject():
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
    wanted = {_name(r) for r in project["dependencies"]}
    wanted |= {_name(r) for r in project["optional-dependencies"]["dev"]}
    wanted |= {_name(r) for r in project["optional-dependencies"]["cpu"]}
    env = yaml.safe_load((REPO_ROOT / "environment.yml").read_text())
    pip_section = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    listed = {_name(r) for r in pip_section if not r.startswith("-e")}
    assert listed == wanted
    assert "-e ." in pip_section


def test_torchvision_roi_align_runs():
    import torch
    from torchvision.ops import roi_align

    features = torch.arange(2 * 3 * 8 * 8, dtype=torch.float32).reshape(2, 3, 8, 8)
    boxes = [torch.tensor([[0.0, 0.0, 4.0, 4.0]]), torch.tensor([[2.0, 2.0, 8.0, 8.0]])]
    out = roi_align(features, boxes, output_size=(2, 2), spatial_scale=1.0, aligned=True)
    assert out.shape == (2, 3, 2, 2)
    # A box over a linearly increasing map averages to values inside its range.
    assert features[0, 0, :4, :4].min() <= out[0, 0].min() <= out[0, 0].max() <= features[0, 0, :4, :4].max()


def test_console_script_lists_every_subcommand():
    from chextriev_cli.main import build_parser

    help_text = build_parser().format_help()
    for command in ("synth", "train", "train-detector", "shards", "evaluate", "index", "db", "serve",
                    "demo"):
        assert command in help_text


def test_faiss_is_chosen_by_exactly_one_extra():
    """faiss-cpu and faiss-gpu install the same `faiss` folder: neither may be a base dependency,
    and each of the `cpu` and `gpu` extras brings exactly one of them."""
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]

    def faiss_wheels(requirements):
        return [_name(r) for r in requirements if _name(r).startswith("faiss")]

    assert faiss_wheels(project["dependencies"]) == []
    assert faiss_wheels(extras["cpu"]) == ["faiss-cpu"]
    assert faiss_wheels(extras["gpu"]) == ["faiss-gpu"]
    assert faiss_wheels(extras["dev"]) == []
