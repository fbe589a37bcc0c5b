"""The detector and everything DETR-specific about training it.

Model families (`core.family`), loading without timm (`core.loading`, `core.timm_weights`), image
decoding and preprocessing, inference that keeps every object query (and its ONNX export and CPU
engines: `core.export`, `core.engines`), box arithmetic (`core.boxes`), the
Hungarian matcher, the set-prediction losses, the training loop with its checkpoints and the
Co-DETR / H-DETR hybrid branches, head surgery, COCO evaluation, and the flags helper every
command line uses. `core` depends on torch, transformers, scipy, pycocotools and supervision (and,
when an engine runs, onnxruntime or openvino);
it never imports `app`, `training` or `datasets` (see DESIGN.md).
"""
