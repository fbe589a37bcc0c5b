"""Entry point: build the DETR Studio Gradio app and launch it (also the Spaces `app_file`).

    python app.py [--host 127.0.0.1] [--port 7860] [--model NAME]

Host and port default to GRADIO_SERVER_NAME / GRADIO_SERVER_PORT, else 127.0.0.1:7860.
"""

from __future__ import annotations

import argparse
import os

from app.ui import build_app


def main() -> None:
    parser = argparse.ArgumentParser(description="Run the DETR Studio app.")
    parser.add_argument("--host", default=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"))
    parser.add_argument("--port", type=int, default=int(os.environ.get("GRADIO_SERVER_PORT", "7860")))
    parser.add_argument("--model", default=None, help="model selected at start (default: DETR_STUDIO_MODEL or DETR-R50)")
    args = parser.parse_args()
    if args.model:
        os.environ["DETR_STUDIO_MODEL"] = args.model
    build_app().queue().launch(server_name=args.host, server_port=args.port)


if __name__ == "__main__":
    main()
