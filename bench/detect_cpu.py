"""Benchmark 2: detect one image on CPU with each engine, vs transformers' object-detection pipeline.

    python bench/detect_cpu.py [--quick] [--threads 2] [--repeats 7] [--sizes 800 512]

Full-size DETR-R50 built from its config with random weights (the released model's FLOPs, no
download), the same weights for every row. Baseline: `transformers.pipeline("object-detection")`
with the DETR image processor that runs without torchvision. Ours: `core.inference.predict` end to
end (decode, preprocessing in torch, the forward pass, every query's probabilities and boxes) with
the forward pass run by each engine (`core.engines`):

- ``torch``: PyTorch eager, fp32, channels-last (the default before this benchmark);
- ``torch bf16``: the same under bf16 autocast (CPUs with AVX512-BF16 / AMX);
- ``torch.compile``: inductor on CPU, fp32;
- ``onnxruntime``, ``openvino``: the `core.export` graph, fp32;
- ``onnxruntime int8``: that graph with the transformer's MatMul weights dynamically quantized to int8;
- ``openvino bf16``: OpenVINO allowed bf16 arithmetic.

With ``--model NAME`` (e.g. ``bundled``) a real model runs instead; for a sigmoid family
(Conditional DETR) the reference is our own PyTorch row, as the pipeline's post-processing is
DETR's. One 640x480 photo (skimage's coffee) at each shortest edge; median of ``--repeats`` runs after a
warm-up (torch.compile's compilation and the exports happen before timing). Accuracy on every
query against the pipeline: "exact" means every label equal and every score within 1e-3 (boxes:
the pipeline rounds them to whole pixels, so within 2 px). Prints a table, then one JSON line per
row. ``--quick`` uses a tiny model and the fp32 engines so a test can run it in seconds.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from skimage import data  # noqa: E402
from transformers import DetrForObjectDetection, pipeline  # noqa: E402
from transformers.models.detr.image_processing_pil_detr import DetrImageProcessorPil  # noqa: E402

from bench.models import detr_config  # noqa: E402
from bench.timing import timed  # noqa: E402
from core.engines import OnnxRuntimeEngine, OpenVinoEngine  # noqa: E402
from core.export import cached_export  # noqa: E402
from core.inference import predict  # noqa: E402
from core.loading import load_detector  # noqa: E402

SCORE_TOLERANCE, BOX_TOLERANCE_PX = 1e-3, 2.0


def build(quick: bool, directory: Path) -> Path:
    """Save DETR (R50, or tiny with ``quick``) with random weights to ``directory``; returns it."""
    torch.manual_seed(0)
    model = DetrForObjectDetection(detr_config(quick, **({"init_std": 0.3} if quick else {}))).eval()
    with torch.no_grad():  # random DETR gives every query the same output; spread them so there is something to match
        model.class_labels_classifier.weight.mul_(3)
        model.model.query_position_embeddings.weight.mul_(30)
    model.save_pretrained(directory)
    return directory


def quantized(path: Path) -> Path:
    """The graph with dynamically quantized int8 MatMul weights (the transformer's linear layers)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    out = path.with_name("model-int8.onnx")
    if not out.is_file():
        quantize_dynamic(str(path), str(out), op_types_to_quantize=["MatMul"], weight_type=QuantType.QInt8)
    return out


def engines(detector, cache: Path, threads: int, quick: bool, bf16: bool, fp32_only: bool = False) -> dict:
    """Name -> function that sets the detector up for that engine (and undoes the others)."""
    graph = cached_export(detector, cache)
    plain = detector.model

    def use(engine=None, cpu_bf16=False, model=plain):
        def setup():
            detector.engine, detector.cpu_bf16, detector.model = engine, cpu_bf16, model
        return setup

    rows = {"torch": use(), "onnxruntime": use(OnnxRuntimeEngine(graph, threads)),
            "openvino": use(OpenVinoEngine(graph, threads))}
    if not quick and not fp32_only:
        rows["onnxruntime int8"] = use(OnnxRuntimeEngine(quantized(graph), threads))
        rows["torch.compile"] = use(model=torch.compile(plain, dynamic=False))
        if bf16:
            rows["torch bf16"] = use(cpu_bf16=True)
            rows["openvino bf16"] = use(OpenVinoEngine(graph, threads, precision="bf16"))
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--sizes", type=int, nargs="+", default=[800, 512])
    parser.add_argument("--fp32-only", action="store_true", help="only the engines that keep fp32 arithmetic")
    parser.add_argument("--model", default=None, help="a model to load instead of random DETR-R50 (e.g. bundled); "
                        "the pipeline then runs with that model's own normalization")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    image = data.coffee()
    repeats = 1 if args.quick else args.repeats
    bf16 = torch.ops.mkldnn._is_mkldnn_bf16_supported()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        source = args.model or build(args.quick, Path(tmp) / "model")
        detector = load_detector(source, device="cpu")  # channels-last, as loaded
        model = detector.model
        from PIL import Image

        picture = Image.fromarray(image)
        height, width = image.shape[:2]
        setups = engines(detector, Path(tmp) / "engines", args.threads, args.quick, bf16, args.fp32_only)
        name = args.model or ("tiny" if args.quick else "DETR-R50")
        for short in args.sizes:
            long = round(short * detector.preprocess.longest_edge / detector.preprocess.shortest_edge)
            processor = DetrImageProcessorPil(size={"shortest_edge": short, "longest_edge": long},
                                              image_mean=list(detector.preprocess.image_mean),
                                              image_std=list(detector.preprocess.image_std))
            if detector.family.no_object:  # the pipeline's post-processing is DETR's (softmax, one box per query)
                detect = pipeline("object-detection", model=model, image_processor=processor, device="cpu")
                # The baseline runs the model as transformers leaves it (contiguous weights); ours as
                # load_detector leaves it (channels-last). Same object, converted in place between runs.
                model.to(memory_format=torch.contiguous_format)
                base_s, theirs = timed(lambda: detect(picture, threshold=0.0), repeats, warmup=True)
                model.to(memory_format=torch.channels_last)
                # threshold 0: the pipeline returns every query, in query order, as we do
                their_labels = [d["label"] for d in theirs]
                their_scores = np.array([d["score"] for d in theirs])
                their_boxes = np.array([[d["box"][k] for k in ("xmin", "ymin", "xmax", "ymax")] for d in theirs])
            else:  # sigmoid families (Conditional DETR): the reference is our own PyTorch row
                setups["torch"]()
                base_s, reference = timed(lambda: predict(detector, [image], shortest_edge=short)[0], repeats,
                                          warmup=True)
                their_labels = [reference.labels[i] for i in reference.label_ids]
                their_scores, their_boxes = reference.scores, reference.boxes
            their_boxes = np.clip(their_boxes, 0, [width, height, width, height])  # ours are clipped to the image
            for engine, setup in setups.items():
                setup()
                ours_s, ours = timed(lambda: predict(detector, [image], shortest_edge=short)[0], repeats, warmup=True)
                agree = float(np.mean([a == ours.labels[i] for a, i in zip(their_labels, ours.label_ids)]))
                score_diff = float(np.abs(their_scores - ours.scores).max())
                box_diff = float(np.abs(their_boxes - ours.boxes).max())
                exact = (len(their_labels) == ours.num_queries and agree == 1.0 and score_diff <= SCORE_TOLERANCE
                         and box_diff <= BOX_TOLERANCE_PX)
                rows.append({"bench": "detect_cpu", "device": f"cpu ({args.threads} threads)",
                             "setting": f"{name} at {short}, {engine}",
                             "engine": engine, "size": short, "ours": ours_s * 1e3, "baseline": base_s * 1e3,
                             "unit": "ms per image", "speedup": base_s / ours_s, "parity": bool(exact),
                             "labels_agree": agree, "max_score_diff": score_diff, "max_box_diff_px": box_diff})
            setups["torch"]()
    print(f"{'setting':<34}{'ours ms':>9}{'pipeline ms':>13}{'speedup':>9}  labels agree  max score diff  exact")
    for row in rows:
        print(f"{row['setting']:<34}{row['ours']:>9.0f}{row['baseline']:>13.0f}{row['speedup']:>8.2f}x"
              f"{row['labels_agree']:>14.3f}{row['max_score_diff']:>16.5f}  {row['parity']}")
    for row in rows:
        print(json.dumps(row))
    # The fp32 engines must keep the pipeline's accuracy; bf16 and int8 rows report how far they move.
    return 0 if all(row["parity"] for row in rows if row["engine"] in ("torch", "onnxruntime", "openvino")) else 1


if __name__ == "__main__":
    sys.exit(main())
