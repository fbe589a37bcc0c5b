"""The README front matter is the Space's configuration: it must match what the code is tested with."""

from __future__ import annotations

from pathlib import Path

import gradio
import yaml

ROOT = Path(__file__).resolve().parents[1]


def front_matter() -> dict:
    text = (ROOT / "README.md").read_text()
    assert text.startswith("---\n"), "README.md must start with the Spaces front matter"
    return yaml.safe_load(text.split("---\n")[1])


LOADER_FILES = {"config.json", "preprocessor_config.json", "model.safetensors"}


def test_front_matter_names_the_tested_gradio_and_preloads_only_what_the_loader_reads():
    config = front_matter()
    assert config["sdk"] == "gradio" and config["app_file"] == "app.py"
    assert config["sdk_version"] == gradio.__version__  # Spaces installs this Gradio itself
    assert str(config["python_version"]) == "3.10"  # a Python ZeroGPU runs (3.10.13)
    preloaded = dict(line.split(" ", 1) for line in config["preload_from_hub"])
    assert set(preloaded) == {"facebook/detr-resnet-50", "microsoft/conditional-detr-resnet-50"}
    for repo, files in preloaded.items():  # never the pickled pytorch_model.bin the repositories also hold
        assert set(files.split(",")) == LOADER_FILES, repo
    assert config["hf_oauth"] is True  # sign-in; visitors without it cannot change data


def test_requirements_pin_a_torch_zerogpu_lists_for_the_spaces_python():
    """The Space (Python 3.10) gets torch 2.8.0, the newest of ZeroGPU's list; these machines (3.11)
    the local CPU wheel the suite runs on."""
    lines = [line.strip() for line in (ROOT / "requirements.txt").read_text().splitlines()
             if line.startswith("torch")]
    assert 'torch==2.8.0; python_version < "3.11"' in lines and 'torch==2.13.0; python_version >= "3.11"' in lines
    assert "libcurl4" in (ROOT / "packages.txt").read_text().split()  # what the bundled MongoDB links


def test_requirements_leave_gradio_to_the_space():
    lines = [line.split(";")[0].strip() for line in (ROOT / "requirements.txt").read_text().splitlines()
             if line.strip() and not line.startswith("#")]
    gradio_lines = [line for line in lines if line.startswith("gradio") and not line.startswith("gradio_")]
    assert gradio_lines and all("==" not in line for line in gradio_lines), gradio_lines  # a range, never a pin
