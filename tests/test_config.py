"""Configuration: the app's settings come from one dataclass (defaults, environment, flags), nothing is
written back to the environment, CLI flags are generated from config dataclasses (nested ones too),
and the model family record drives matcher and loss weights."""

from __future__ import annotations

import argparse
import json
import os
from dataclasses import asdict
from pathlib import Path

import pytest

from app.config import HUB_MODELS, AppConfig
from core.family import CONDITIONAL_DETR, DETR, family_of
from core.flags import add_flags, from_dict, from_flags, to_argv, with_flags
from core.losses import criterion_for
from core.matcher import HungarianMatcher
from training.config import FinetuneConfig


def test_app_settings_come_from_defaults_then_environment_then_flags():
    assert AppConfig.parse([], environ={}) == AppConfig()
    assert AppConfig().model == HUB_MODELS[0] and AppConfig().queue_size == 32
    environ = {"DETR_STUDIO_MODEL": "bundled", "DETR_STUDIO_CPU_BF16": "1", "GRADIO_SERVER_PORT": "8000",
               "DETR_STUDIO_TRAINERS": "bob, carol", "DETR_STUDIO_DATA": "/tmp/somewhere", "SPACE_ID": "a/b"}
    config = AppConfig.parse([], environ=environ)
    assert (config.model, config.cpu_bf16, config.port, config.trainers, config.data_dir, config.space_id) == (
        "bundled", True, 8000, ("bob", "carol"), Path("/tmp/somewhere"), "a/b")
    flagged = AppConfig.parse(["--model", "microsoft/conditional-detr-resnet-50", "--no-cpu-bf16", "--port",
                               "9000", "--queue-size", "4"], environ=environ)
    assert (flagged.model, flagged.cpu_bf16, flagged.port, flagged.queue_size) == (
        "microsoft/conditional-detr-resnet-50", False, 9000, 4)
    assert AppConfig.parse(["--cpu-bf16"], environ={}).cpu_bf16 is True  # a bare switch, as before


def test_parsing_settings_writes_nothing_into_the_environment(monkeypatch):
    monkeypatch.delenv("DETR_STUDIO_MODEL", raising=False)
    monkeypatch.delenv("DETR_STUDIO_CPU_BF16", raising=False)
    before = dict(os.environ)
    config = AppConfig.parse(["--model", "bundled", "--cpu-bf16"])
    assert config.model == "bundled" and dict(os.environ) == before


@pytest.mark.parametrize("argv, environ, message", [
    (["--auth", "nocolon"], {}, "USER:PASSWORD"),
    ([], {"GRADIO_SERVER_PORT": "eighty"}, "GRADIO_SERVER_PORT='eighty' is not a valid port"),
    ([], {"DETR_STUDIO_CPU_BF16": "maybe"}, "DETR_STUDIO_CPU_BF16"),
])
def test_bad_settings_are_named(argv, environ, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        AppConfig.parse(argv, environ=environ)
    assert exit_info.value.code == 2 and message in capsys.readouterr().err


def test_platform_settings_are_not_flags():
    parser = argparse.ArgumentParser()
    add_flags(parser, AppConfig)
    flags = {action.dest for action in parser._actions}
    assert "space_id" not in flags and "oauth_client_id" not in flags and "model" in flags


def test_finetune_flags_reach_the_nested_configs_and_round_trip():
    parser = argparse.ArgumentParser()
    add_flags(parser, FinetuneConfig)
    args = parser.parse_args(["--lr", "1e-3", "--hybrid", "co-detr", "--scale-jitter", "1", "1.25",
                              "--max-steps", "5", "--patience", "3", "--no-freeze-stem"])
    config = from_flags(FinetuneConfig, args)
    assert config.train.lr == 1e-3 and config.hybrid.method == "co-detr" and config.patience == 3
    assert config.train.scale_jitter == (1.0, 1.25) and config.train.max_steps == 5 and config.train.freeze_stem is False
    assert config.train.log_every == FinetuneConfig().train.log_every  # run plumbing is not a flag, keeps its default
    assert from_flags(FinetuneConfig, parser.parse_args(to_argv(config))) == config
    assert from_dict(FinetuneConfig, json.loads(json.dumps(asdict(config)))) == config  # what job.json holds
    assert with_flags(FinetuneConfig(), lr=1e-3, hybrid="co-detr", patience=3, scale_jitter=(1.0, 1.25),
                      max_steps=5, freeze_stem=False) == config


def test_one_family_record_gives_the_published_weights():
    for family, weights, no_object in [(DETR, (1.0, 5.0, 2.0), True), (CONDITIONAL_DETR, (2.0, 5.0, 2.0), False)]:
        matcher = HungarianMatcher.for_family(family)
        assert (matcher.class_weight, matcher.bbox_weight, matcher.giou_weight) == weights
        assert matcher.no_object is no_object
        criterion = criterion_for(family, 3)
        assert tuple(criterion.weights.values()) == weights and criterion.no_object is no_object
    assert family_of("detr") is DETR
    with pytest.raises(ValueError, match="not a model family"):
        family_of("yolo")
