"""The bundled default model shipped in assets/bundled: loadable by name, within its size, and
detecting shapes on freshly generated images (a regression check of the shipped file; the full
quality figure comes from `python -m core.evaluate`, see README)."""

from __future__ import annotations

import pytest

from core.evaluate import coco_metrics, to_coco_results
from core.inference import predict
from core.loading import BUNDLED_DIR, load_detector
from datasets.shapes import generate_sample, write_coco

pytestmark = pytest.mark.skipif(not (BUNDLED_DIR / "config.json").is_file(), reason="no bundled model in assets/")


def test_bundled_loads_by_name():
    detector = load_detector("bundled", device="cpu")
    assert detector.labels == ["circle", "square", "triangle"]
    assert detector.num_queries == 100 and detector.kind == "conditional_detr"
    assert sum(f.stat().st_size for f in BUNDLED_DIR.iterdir()) < 20 * 2**20
    assert not any(f.suffix in (".bin", ".pt", ".pth") for f in BUNDLED_DIR.iterdir())


def test_bundled_detects_shapes(tmp_path):
    """On 30 fresh images (seeds never trained on) the shipped model must clearly work:
    AP50 above 0.4 (the shipped model measures far higher; random weights score about 0)."""
    detector = load_detector("bundled", device="cpu")
    path = write_coco(tmp_path, 30, first_seed=900_000)
    import json

    document = json.loads(path.read_text())
    images = [tmp_path / image["file_name"] for image in document["images"]]
    categories = {c["name"]: c["id"] for c in document["categories"]}
    results = []
    for image, out in zip(document["images"], predict(detector, images)):
        results.extend(to_coco_results(image["id"], out, categories))
    assert coco_metrics(document, results).AP50 > 0.4
    sample = generate_sample(900_001)
    best = predict(detector, [sample.image])[0].to_detections(0.3)
    assert len(best) >= 1
