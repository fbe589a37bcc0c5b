"""What a fine-tune trains on: reviewed samples as ``(image, target)`` pairs, and replay samples
labelled by the base model (`training.job` builds both for a job)."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import supervision as sv
import torch

from core.boxes import box_xyxy_to_cxcywhn
from core.images import load_image
from core.inference import predict
from core.loading import Detector
from datasets.review import ReviewedSample


class ReviewedDataset(torch.utils.data.Dataset):
    """``(image, target)`` pairs in the transformers contract; images decoded on first use and kept.
    ``known``: the only classes these samples are labelled for (replay images: the base model's), as
    each target's ``known_classes``; None: every class."""

    def __init__(self, samples: list[ReviewedSample], labels: list[str], known: list[str] | None = None):
        self.samples, self.labels = samples, labels
        self._images: dict[int, np.ndarray] = {}
        self._known = None if known is None else torch.tensor([name in known for name in labels], dtype=torch.bool)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int):
        sample = self.samples[index]
        if index not in self._images:
            self._images[index] = np.asarray(load_image(sample.filepath))
        boxes = box_xyxy_to_cxcywhn(torch.from_numpy(np.asarray(sample.truth.xyxy, dtype=np.float32)), sample.width,
                                    sample.height)
        classes = torch.tensor([self.labels.index(name) for name in sample.truth.data["class_name"]], dtype=torch.long)
        target = {"class_labels": classes, "boxes": boxes.reshape(-1, 4)}
        if self._known is not None:
            target["known_classes"] = self._known.clone()
        return self._images[index], target


def pseudo_labels(detector: Detector, samples: list[ReviewedSample], min_score: float, size: int,
                  longest: int | None = None) -> list[ReviewedSample]:
    """``samples`` with the detector's predictions of score >= ``min_score`` as their truth (clipped
    to the image; boxes under 1 px dropped): a fine-tune's replay images."""
    labelled = []
    outputs = predict(detector, [s.filepath for s in samples], shortest_edge=size, longest_edge=longest)
    for sample, output in zip(samples, outputs):
        found = output.to_detections(min_score)
        xyxy = np.clip(np.asarray(found.xyxy, dtype=np.float32).reshape(-1, 4), 0,
                       [sample.width, sample.height, sample.width, sample.height])
        keep = ((xyxy[:, 2] - xyxy[:, 0]) >= 1) & ((xyxy[:, 3] - xyxy[:, 1]) >= 1)
        names = np.asarray(found.data.get("class_name", np.array([], dtype=object)), dtype=object)[keep]
        labelled.append(replace(sample, truth=sv.Detections(xyxy=xyxy[keep], data={"class_name": names})))
    return labelled
