"""Every setting of the app, in one dataclass: its default, its environment variable, its flag.

    config = AppConfig.parse(sys.argv[1:])            # flags over environment over defaults
    config = AppConfig(model="bundled", cpu_bf16=True)  # tests and scripts: plain values

Read once, at start-up (`app.py`), and handed to `app.state.AppState`; nothing else in the app
reads these variables or writes them back.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from core.engines import DEFAULT_ENGINE, ENGINES
from core.flags import add_flags, from_flags, parse_value
from datasets.database import default_data_dir
from datasets.review import DEFAULT_DATASET

HUB_MODELS = ("facebook/detr-resnet-50", "microsoft/conditional-detr-resnet-50")


def _setting(default, env: str, help: str | None = None, flag: bool = True):
    text = f"{help}; env {env}" if help else f"env {env}"
    metadata = {"env": env, "help": text, **({} if flag else {"flag": False})}
    return field(default=default, metadata=metadata)


@dataclass(frozen=True)
class AppConfig:
    """The app's settings. ``env`` in each field's metadata names the variable that sets it."""

    host: str = _setting("127.0.0.1", "GRADIO_SERVER_NAME", "address to listen on")
    port: int = _setting(7860, "GRADIO_SERVER_PORT")
    model: str = _setting(HUB_MODELS[0], "DETR_STUDIO_MODEL", "model selected at start (the bundled model "
                          "stands in when the hub cannot be reached)")
    data_dir: Path | None = _setting(None, "DETR_STUDIO_DATA", "app data directory (default: /data/detr-studio "
                                     "on Spaces storage, else ~/.detr-studio)")
    dataset: str = _setting(DEFAULT_DATASET, "DETR_STUDIO_DATASET", "name of the FiftyOne review dataset")
    auth: str | None = _setting(None, "DETR_STUDIO_AUTH", "USER:PASSWORD: password-protect the app (a team "
                                "server); signed-in users are named in reviews")
    cpu_bf16: bool = _setting(False, "DETR_STUDIO_CPU_BF16", "run models on CPU under bf16 autocast (~1.8x "
                              "faster where the CPU has AVX512-BF16 or AMX; scores move by ~1e-2)")
    engine: str = _setting(DEFAULT_ENGINE, "DETR_STUDIO_ENGINE", f"what runs models on CPU: {', '.join(ENGINES)} "
                           "(docs/benchmarks.md); the Queries tab's attention maps always use torch")
    model_concurrency: int = _setting(1, "DETR_STUDIO_MODEL_CONCURRENCY", "events that run a model at once")
    queue_size: int = _setting(32, "DETR_STUDIO_QUEUE_SIZE", "requests waiting at most; more answer 'busy'")
    trainers: tuple[str, ...] = _setting((), "DETR_STUDIO_TRAINERS", "user names allowed to fine-tune "
                                         "(comma-separated in the variable; empty: anyone who may change data)")
    reviewers: tuple[str, ...] = _setting((), "DETR_STUDIO_REVIEWERS", "on a Space: Hugging Face names that may "
                                          "change data besides the Space's creator (comma-separated)")
    import_roots: tuple[Path, ...] = _setting((), "DETR_STUDIO_IMPORT_ROOTS", "server folders import and export "
                                              "may use besides DATA/imports and DATA/exports (comma-separated)")
    models: tuple[str, ...] = _setting((), "DETR_STUDIO_MODELS", "models offered besides bundled, the hub models "
                                       "and the fine-tuned versions (on a Space, the only others allowed)")
    model_cache: int = _setting(3, "DETR_STUDIO_MODEL_CACHE", "models kept loaded at once (least recently used "
                                "out)")
    journal: Path | None = _setting(None, "DETR_STUDIO_JOURNAL", "folder of the durable journal of reviews, images "
                                    "and model versions (a mounted storage bucket on a Space); restored into an "
                                    "empty database at start-up (docs/hosting-on-spaces.md)")
    journal_repo: str | None = _setting(None, "DETR_STUDIO_JOURNAL_REPO", "private Hub dataset repo the journal "
                                        "folder is uploaded to (CommitScheduler; needs HF_TOKEN with write access)")
    journal_every_min: float = _setting(1.0, "DETR_STUDIO_JOURNAL_EVERY", "with --journal-repo: minutes between "
                                        "uploads")
    zero_gpu_chunk_s: float = _setting(60.0, "DETR_STUDIO_ZEROGPU_CHUNK_S", "on ZeroGPU: seconds of GPU one "
                                       "fine-tune chunk asks for (ZeroGPU's default slice is 60)")
    # Set by the platform (Hugging Face Spaces), never by a flag.
    system: str | None = _setting(None, "SYSTEM", flag=False)
    space_id: str | None = _setting(None, "SPACE_ID", flag=False)
    zero_gpu: bool = _setting(False, "SPACES_ZERO_GPU", flag=False)
    space_creator_id: str | None = _setting(None, "SPACE_CREATOR_USER_ID", flag=False)
    oauth_client_id: str | None = _setting(None, "OAUTH_CLIENT_ID", flag=False)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides) -> AppConfig:
        """Defaults, overridden by the environment's variables, then by ``overrides``."""
        environ = os.environ if environ is None else environ
        hints = typing.get_type_hints(cls)
        values = {}
        for item in dataclasses.fields(cls):
            text = environ.get(item.metadata["env"])
            if text is not None and text.strip():
                try:
                    values[item.name] = parse_value(hints[item.name], text.strip())
                except (ValueError, argparse.ArgumentTypeError) as error:
                    raise ValueError(f"{item.metadata['env']}={text!r} is not a valid {item.name} ({error}).") from None
        return cls(**{**values, **overrides})

    @classmethod
    def parse(cls, argv: list[str] | None = None, environ: Mapping[str, str] | None = None) -> AppConfig:
        """Flags (``python app.py --help``) over the environment over the defaults."""
        parser = argparse.ArgumentParser(prog="python app.py", description="Run the DETR Studio app.")
        try:
            base = cls.from_env(environ)
        except ValueError as error:
            parser.error(str(error))
        add_flags(parser, cls, base)
        config = from_flags(cls, parser.parse_args(argv), base)
        if config.auth and ":" not in config.auth:
            parser.error("--auth takes USER:PASSWORD")
        if config.model_cache < 1:
            parser.error("--model-cache (DETR_STUDIO_MODEL_CACHE) must be at least 1")
        if config.zero_gpu_chunk_s < 5:
            parser.error("--zero-gpu-chunk-s (DETR_STUDIO_ZEROGPU_CHUNK_S) must be at least 5 seconds")
        if config.engine not in ENGINES:
            parser.error(f"--engine (DETR_STUDIO_ENGINE) must be one of {', '.join(ENGINES)}; got {config.engine!r}")
        return config

    @property
    def resolved_data_dir(self) -> Path:
        return (self.data_dir or default_data_dir()).expanduser().resolve()

    @property
    def on_space(self) -> bool:
        """On a Hugging Face Space: ``SYSTEM=spaces`` and a ``SPACE_ID``, as Gradio checks it (its
        OAuth is real only then; elsewhere it mocks the login as the host's own account)."""
        return self.system == "spaces" and bool(self.space_id)

    @property
    def public_space_without_login(self) -> bool:
        """On a Space with no login configured (``hf_oauth: true`` sets ``OAUTH_CLIENT_ID``), anyone
        could change data or train."""
        return self.on_space and not self.oauth_client_id

    @property
    def login_credentials(self) -> tuple[str, str] | None:
        """``--auth`` as Gradio's ``auth`` argument."""
        return tuple(self.auth.split(":", 1)) if self.auth else None
