"""Official DETR checkpoints whose ResNet is stored under timm's names, loaded without timm.

timm needs torchvision, which the project never installs. Such a checkpoint's config is rewritten
to transformers' own ResNet (`native_backbone_config`) and its weights renamed on load
(`timm_key_mapping`, passed to ``from_pretrained(key_mapping=...)``), with 0 missing and 0
unexpected keys for DETR-R50 and Conditional DETR-R50.
"""

from __future__ import annotations

from typing import Any


class UnsupportedBackbone(ValueError):
    """A timm backbone that cannot be loaded without timm (the message names it and what to use)."""

# timm ResNet name -> (transformers ResNet layer_type, depths, hidden_sizes)
TIMM_RESNETS: dict[str, tuple[str, list[int], list[int]]] = {
    "resnet18": ("basic", [2, 2, 2, 2], [64, 128, 256, 512]),
    "resnet34": ("basic", [3, 4, 6, 3], [64, 128, 256, 512]),
    "resnet50": ("bottleneck", [3, 4, 6, 3], [256, 512, 1024, 2048]),
    "resnet101": ("bottleneck", [3, 4, 23, 3], [256, 512, 1024, 2048]),
    "resnet152": ("bottleneck", [3, 8, 36, 3], [256, 512, 1024, 2048]),
}


def timm_key_mapping(stages: int = 4, convs_per_block: int = 3) -> dict[str, str]:
    """Regex renames from timm ResNet parameter names to transformers' ResNet names.

    Matches both the legacy layout of hub checkpoints (``model.backbone.conv_encoder.model.``)
    and the transformers-5 layout (``model.backbone.model.``). Each pattern has at most one
    capture group because transformers' `WeightRenaming` substitutes ``\\1`` only; the stage and
    conv numbers are therefore spelled out per pattern rather than captured.

    timm -> transformers:
        conv1 / bn1                        -> embedder.embedder.convolution / .normalization
        layer{s}.{b}.conv{c} / bn{c}       -> encoder.stages.{s-1}.layers.{b}.layer.{c-1}.convolution / .normalization
        layer{s}.{b}.downsample.0 / .1     -> encoder.stages.{s-1}.layers.{b}.shortcut.convolution / .normalization
    """
    prefix = r"backbone\.(?:conv_encoder\.)?model\."
    out = "backbone.model."
    mapping = {
        prefix + r"conv1\.": out + "embedder.embedder.convolution.",
        prefix + r"bn1\.": out + "embedder.embedder.normalization.",
    }
    for stage in range(1, stages + 1):
        block = f"{out}encoder.stages.{stage - 1}.layers.\\1."
        for conv in range(1, convs_per_block + 1):
            mapping[prefix + rf"layer{stage}\.(\d+)\.conv{conv}\."] = f"{block}layer.{conv - 1}.convolution."
            mapping[prefix + rf"layer{stage}\.(\d+)\.bn{conv}\."] = f"{block}layer.{conv - 1}.normalization."
        mapping[prefix + rf"layer{stage}\.(\d+)\.downsample\.0\."] = f"{block}shortcut.convolution."
        mapping[prefix + rf"layer{stage}\.(\d+)\.downsample\.1\."] = f"{block}shortcut.normalization."
    return mapping


def _timm_backbone_name(config: dict[str, Any]) -> str | None:
    """The timm backbone a config.json asks for, or None when it uses transformers' own backbone."""
    backbone_config = config.get("backbone_config")
    if isinstance(backbone_config, dict):
        if backbone_config.get("model_type") == "timm_backbone":
            return backbone_config.get("backbone") or "resnet50"
        return None
    # Legacy (transformers 4) configs: use_timm_backbone defaults to True when absent.
    if config.get("use_timm_backbone", True):
        return config.get("backbone") or "resnet50"
    return None


def native_backbone_config(config: dict[str, Any], where: str) -> tuple[dict[str, Any], bool]:
    """Rewrite a config.json dict so the model uses transformers' ResNet instead of timm's.

    Returns ``(new_config, converted)``; ``converted`` says whether timm weights need renaming.
    """
    timm_name = _timm_backbone_name(config)
    if timm_name is None:
        return config, False
    if timm_name not in TIMM_RESNETS:
        raise UnsupportedBackbone(
            f"{where} uses the timm backbone '{timm_name}', which cannot be loaded without timm; "
            f"supported timm backbones are {', '.join(TIMM_RESNETS)}."
        )
    backbone_config = config.get("backbone_config") if isinstance(config.get("backbone_config"), dict) else {}
    if config.get("dilation") or backbone_config.get("output_stride"):
        raise UnsupportedBackbone(
            f"{where} is a dilated (DC5) checkpoint; transformers' ResNet has no dilation, so it "
            "cannot be loaded without timm. Use a non-DC5 checkpoint such as facebook/detr-resnet-50."
        )
    layer_type, depths, hidden_sizes = TIMM_RESNETS[timm_name]
    new = {k: v for k, v in config.items() if k not in ("use_timm_backbone", "backbone", "backbone_kwargs")}
    new["use_pretrained_backbone"] = False
    new["backbone_config"] = {
        "model_type": "resnet",
        "num_channels": config.get("num_channels", 3),
        "embedding_size": 64,
        "hidden_sizes": hidden_sizes,
        "depths": depths,
        "layer_type": layer_type,
        "hidden_act": "relu",
        "downsample_in_first_stage": False,
        "downsample_in_bottleneck": False,  # timm's ResNet-50 is "v1.5": the stride is in the 3x3 conv
        "out_features": ["stage4"],  # DETR and Conditional DETR use only the last feature map
    }
    return new, True
