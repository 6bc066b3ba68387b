"""Reduced-precision backends for the ResNet50 trunk, measured in one run: speed and accuracy.

    .venv/bin/python -m benchmarks int8 --archive /tmp/demo-archive --images 48 --calibrate 16

The trunk (ResNet50 at 512 px, 85-90 % of an upload's model time) is run by every backend that
is installed (the others are reported as absent):

* ``torch fp32`` (the reference) and ``torch bf16`` (autocast: what ``--precision bf16`` runs
  eagerly); ``torch bf16 compiled`` / ``torch fp32 compiled``: the trunk compiled ahead of time
  as ``--compile on`` (the default) runs it (``chextriev.compiled``; from the compiled cache);
* ``torch int8``: torch's own static post-training quantisation (FX graph mode, ``x86``
  backend, per-channel weights, calibrated on ``--calibrate`` archive images);
* ``onnxruntime fp32`` / ``onnxruntime int8`` (``quantize_static``, QDQ, per-channel, the same
  calibration images);
* ``openvino fp32`` / ``openvino bf16`` (``INFERENCE_PRECISION_HINT``) / ``openvino int8``
  (``nncf.quantize`` on the same calibration images).

For each: median milliseconds per image at batch 1 (backends interleaved image by image), and
the accuracy of the whole embedding against fp32 (each backend's feature map goes through the
same fp32 RoIAlign, graph and heads of the default architecture, its feature standardisation
fitted on 64 archive images unless ``--fit-images`` says otherwise (0: unfitted, as a trunk with
real weights behaves; :func:`benchmarks.harness.default_checkpoint`): smallest and mean cosine over
``--images`` images (none of them a calibration image) and their top-10 overlap. The issue's bar
for adopting a backend: cosine >= 0.999 and top-10 overlap >= 0.95. None of OpenVINO, ONNX
Runtime or nncf is a dependency of the project: install them to run their rows.
"""

from __future__ import annotations

import argparse
import atexit
import copy
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from benchmarks.harness import (
    archive_images,
    default_checkpoint,
    machine_line,
    synth_archive,
    top_k_overlap,
)

Runner = Callable[[np.ndarray], np.ndarray]  # (1, 3, S, S) float32 -> (1, F, S/32, S/32) float32


def torch_runners(trunk: torch.nn.Module, calibration: list[np.ndarray]) -> dict[str, Runner]:
    def fp32(x):
        with torch.inference_mode():
            return trunk(torch.from_numpy(x).contiguous(memory_format=torch.channels_last)).float().numpy()

    def bf16(x):
        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
            return trunk(torch.from_numpy(x).contiguous(memory_format=torch.channels_last)).float().numpy()

    runners: dict[str, Runner] = {"torch fp32": fp32, "torch bf16": bf16}
    try:
        from torch.ao.quantization import get_default_qconfig_mapping
        from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx
    except ImportError as error:
        print(f"torch int8: not available ({error})")
        return runners
    torch.backends.quantized.engine = "x86"
    example = (torch.from_numpy(calibration[0]),)
    prepared = prepare_fx(copy.deepcopy(trunk).to(memory_format=torch.contiguous_format).eval(),
                          get_default_qconfig_mapping("x86"), example)
    with torch.inference_mode():
        for x in calibration:
            prepared(torch.from_numpy(x))
    quantized = convert_fx(prepared)

    def int8(x):
        with torch.inference_mode():
            return quantized(torch.from_numpy(x)).float().numpy()

    runners["torch int8"] = int8
    return runners


def compiled_runners(module) -> dict[str, Runner]:
    """The trunk as ``--compile on`` runs it, per precision (skipped, said, when none can be had)."""
    from chextriev.compiled import compile_trunk

    runners: dict[str, Runner] = {}
    for precision in ("fp32", "bf16"):
        trunk = compile_trunk(module, precision=precision, batch=1, device="cpu")
        if trunk is None:
            print(f"torch {precision} compiled: no compiled trunk (see the log)")
            continue

        def run(x, trunk=trunk, precision=precision):
            with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
                return trunk(torch.from_numpy(x).contiguous(memory_format=torch.channels_last)).float().numpy()

        runners[f"torch {precision} compiled"] = run
    return runners


class _Calibration:
    """ONNX Runtime's CalibrationDataReader protocol over a list of inputs."""

    def __init__(self, name: str, inputs: list[np.ndarray]):
        self.name, self.inputs = name, iter(inputs)

    def get_next(self):
        x = next(self.inputs, None)
        return None if x is None else {self.name: x}


def onnx_runners(trunk: torch.nn.Module, calibration: list[np.ndarray], work: Path, threads: int) -> dict[str, Runner]:
    try:
        import onnxruntime as ort
        from onnxruntime.quantization import (
            CalibrationMethod,
            QuantFormat,
            QuantType,
            quantize_static,
        )
        from onnxruntime.quantization.shape_inference import quant_pre_process
    except ImportError as error:
        print(f"onnxruntime: not installed ({error})")
        return {}
    path = work / "trunk.onnx"
    torch.onnx.export(copy.deepcopy(trunk).to(memory_format=torch.contiguous_format).eval(),
                      (torch.from_numpy(calibration[0]),), str(path), input_names=["x"], output_names=["y"],
                      opset_version=17, dynamo=False)
    pre = work / "trunk-pre.onnx"
    quant_pre_process(str(path), str(pre))
    quantized = work / "trunk-int8.onnx"
    quantize_static(str(pre), str(quantized), _Calibration("x", calibration), quant_format=QuantFormat.QDQ,
                    per_channel=True, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                    calibrate_method=CalibrationMethod.MinMax)
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    sessions = {name: ort.InferenceSession(str(p), options, providers=["CPUExecutionProvider"])
                for name, p in (("onnxruntime fp32", path), ("onnxruntime int8", quantized))}
    return {name: (lambda x, s=session: s.run(None, {"x": x})[0]) for name, session in sessions.items()}


def openvino_runners(trunk: torch.nn.Module, calibration: list[np.ndarray], threads: int,
                     int8: bool = True) -> dict[str, Runner]:
    try:
        import openvino as ov
    except ImportError as error:
        print(f"openvino: not installed ({error})")
        return {}
    core = ov.Core()
    model = ov.convert_model(copy.deepcopy(trunk).to(memory_format=torch.contiguous_format).eval(),
                             example_input=torch.from_numpy(calibration[0]))
    config = {"INFERENCE_NUM_THREADS": threads, "PERFORMANCE_HINT": "LATENCY"}
    compiled = {"openvino fp32": core.compile_model(model, "CPU", {**config, "INFERENCE_PRECISION_HINT": "f32"}),
                "openvino bf16": core.compile_model(model, "CPU", {**config, "INFERENCE_PRECISION_HINT": "bf16"})}
    try:
        if not int8:
            raise ImportError("not asked for (--only)")
        import nncf

        quantized = nncf.quantize(model, nncf.Dataset(calibration), subset_size=len(calibration))
        compiled["openvino int8"] = core.compile_model(quantized, "CPU", config)
    except ImportError as error:
        print(f"openvino int8: nncf not installed ({error})")
    return {name: (lambda x, c=c: c(x)[0]) for name, c in compiled.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--archive", type=Path, default=Path(tempfile.gettempdir()) / "bench-embed-archive")
    parser.add_argument("--patients", type=int, default=600, help="patients when the archive is drawn")
    parser.add_argument("--images", type=int, default=48, help="evaluation images (after the calibration ones)")
    parser.add_argument("--calibrate", type=int, default=16, help="calibration images")
    parser.add_argument("--checkpoint", type=Path, default=None,
                        help="checkpoint (default: the default architecture, random weights, fitted standardisation)")
    parser.add_argument("--fit-images", type=int, default=64,
                        help="images the default checkpoint's standardisation is fitted on (0: unfitted)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--only", nargs="*", default=None, help="backend rows to run (default all)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    from chextriev.checkpoint import load_checkpoint
    from chextriev.model.backbone import normalize
    from chextriev.model.region_features import box_mask

    archive = synth_archive(args.archive, args.patients)
    images, boxes, _ = archive_images(archive, args.calibrate + args.images)
    fit = args.fit_images
    name = f"{archive.name}-v6-default.ckpt" if fit == 64 else f"{archive.name}-v6-fit{fit}.ckpt"
    checkpoint = args.checkpoint or default_checkpoint(archive.parent / name, images[:fit], boxes[:fit])
    loaded = load_checkpoint(checkpoint, precision="fp32")
    model = loaded.model
    trunk = model.regions.trunk
    size = loaded.image_size
    inputs, model_boxes = [], []
    for image, box in zip(images, boxes):
        x, b = model.prepare_batch([image], [box])
        inputs.append(np.ascontiguousarray(normalize(x).numpy()))
        model_boxes.append(b)
    calibration, evaluation = inputs[:args.calibrate], inputs[args.calibrate:]
    eval_boxes = model_boxes[args.calibrate:]
    work = Path(tempfile.mkdtemp(prefix="bench-int8-"))  # the ONNX models, removed on exit
    atexit.register(shutil.rmtree, work, True)
    wanted = set(args.only or [])

    def asked(prefix: str) -> bool:
        return not wanted or any(name.startswith(prefix) for name in wanted)

    runners = torch_runners(trunk, calibration)
    if asked("torch"):
        runners.update(compiled_runners(model.regions))
    if asked("onnxruntime"):
        runners.update(onnx_runners(trunk, calibration, work, args.threads))
    if asked("openvino"):
        runners.update(openvino_runners(trunk, calibration, args.threads, int8=asked("openvino int8")))
    if args.only:
        runners = {k: v for k, v in runners.items() if k in args.only or k == "torch fp32"}

    def embedding(feature_map: np.ndarray, b: torch.Tensor) -> np.ndarray:
        with torch.inference_mode():
            pooled = model.regions.pool_regions(torch.from_numpy(feature_map).float(), b)
            return model.retrieval_embedding(model.forward_features(pooled, box_mask(b))).numpy()

    for runner in runners.values():  # warm-up
        runner(evaluation[0])
    times = {name: [] for name in runners}
    embeddings = {name: [] for name in runners}
    for x, b in zip(evaluation, eval_boxes):
        for name, runner in runners.items():
            started = time.perf_counter()
            feature_map = runner(x)
            times[name].append((time.perf_counter() - started) * 1000)
            embeddings[name].append(embedding(feature_map, b)[0])
    reference = np.stack(embeddings["torch fp32"])
    base = statistics.median(times["torch fp32"])
    print(f"machine: {machine_line()}")
    print(f"trunk: ResNet50 at {size} px, batch 1; {len(evaluation)} evaluation images, {len(calibration)} "
          f"calibration images from {archive}; checkpoint {checkpoint}")
    print("| backend | ms / image (median) | speed-up vs torch fp32 | embedding cosine min | mean | top-10 overlap |")
    print("|---|---|---|---|---|---|")
    for name in runners:
        e = np.stack(embeddings[name])
        cosine = np.sum(reference * e, axis=1)
        median = statistics.median(times[name])
        print(f"| {name} | {median:.1f} | {base / median:.2f}x | {cosine.min():.5f} | {cosine.mean():.5f} | "
              f"{top_k_overlap(reference, e, 10):.3f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
