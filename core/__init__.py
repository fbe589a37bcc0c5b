"""The detector and everything DETR-specific about training it.

Model families (`core.family`), loading without timm (`core.loading`), image decoding and
preprocessing, inference that keeps every object query, box arithmetic (`core.boxes`), the
Hungarian matcher, the set-prediction losses, the training loop with its checkpoints and the
Co-DETR / H-DETR hybrid branches, head surgery, COCO evaluation, and the flags helper every
command line uses. `core` depends on torch, transformers, scipy, pycocotools and supervision only;
it never imports `app`, `training` or `datasets` (see DESIGN.md).
"""
