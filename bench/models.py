"""The DETR configurations the benchmarks build: full-size DETR-R50, or a tiny one for ``--quick``."""

from __future__ import annotations

from transformers import DetrConfig, ResNetConfig


def detr_config(tiny: bool, **overrides) -> DetrConfig:
    """DETR-R50 as released (ResNet-50 backbone, 100 queries; random weights give the same FLOPs),
    or a model small enough for a test to run in seconds. ``overrides`` set further config fields."""
    if tiny:
        backbone = ResNetConfig(embedding_size=8, hidden_sizes=[8, 16, 16, 32], depths=[1, 1, 1, 1],
                                layer_type="basic", out_features=["stage4"])
        sizes = dict(d_model=32, encoder_layers=1, decoder_layers=2, encoder_ffn_dim=32, decoder_ffn_dim=32,
                     encoder_attention_heads=2, decoder_attention_heads=2, num_queries=12)
    else:
        backbone = ResNetConfig(embedding_size=64, hidden_sizes=[256, 512, 1024, 2048], depths=[3, 4, 6, 3],
                                layer_type="bottleneck", out_features=["stage4"])
        sizes = dict(num_queries=100)
    return DetrConfig(backbone_config=backbone, **{**sizes, **overrides})
