"""Builds the Gradio Blocks app from the tab handlers. No logic lives here, only wiring."""

from __future__ import annotations

from pathlib import Path

import gradio as gr

from app.detect import DETECTION_HEADERS, detect
from app.models import default_model, model_choices
from core.loading import ASSETS_DIR

EXAMPLES_DIR = ASSETS_DIR / "examples"


def _examples() -> list[str]:
    return sorted(str(path) for path in Path(EXAMPLES_DIR).glob("*.jpg"))


def build_app() -> gr.Blocks:
    """The whole app; `app.py` launches it, tests drive it through `gradio_client` or a browser."""
    with gr.Blocks(title="DETR Studio") as demo:
        gr.Markdown("# DETR Studio\nLook inside DETR-family detectors: run detection on your images.")
        with gr.Tab("Detect"):
            with gr.Row():
                with gr.Column():
                    image = gr.Image(label="Image", type="numpy", elem_id="detect-input")
                    model = gr.Dropdown(
                        choices=model_choices(), value=default_model(), label="Model", allow_custom_value=True,
                        info="A hub id, a local save_pretrained directory, or 'bundled'.",
                    )
                    threshold = gr.Slider(0.0, 1.0, value=0.5, step=0.01, label="Score threshold")
                    size = gr.Slider(0, 1344, value=0, step=32, label="Processing size (shortest edge, px)",
                                     info="0 = the model's own (800 for DETR-R50, 224 for the bundled model); "
                                          "512 is about 3x faster than 800 on a CPU.")
                    run = gr.Button("Detect", variant="primary", elem_id="detect-button")
                    gr.Examples(_examples(), inputs=[image], label="Examples")
                with gr.Column():
                    annotated = gr.Image(label="Detections", type="numpy", interactive=False, elem_id="detect-output")
                    status = gr.Markdown(elem_id="detect-status")
                    table = gr.Dataframe(headers=DETECTION_HEADERS, label="Detections", interactive=False,
                                         elem_id="detect-table")
            run.click(detect, inputs=[image, model, threshold, size], outputs=[annotated, table, status],
                      api_name="detect")
    return demo
