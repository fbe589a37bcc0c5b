"""Entry point: build the DETR Studio Gradio app and launch it (also the Spaces `app_file`).

    python app.py [--host 127.0.0.1] [--port 7860] [--model NAME] [--data-dir DIR] [--dataset NAME]
                  [--auth USER:PASSWORD] [--cpu-bf16]

Host and port default to GRADIO_SERVER_NAME / GRADIO_SERVER_PORT, else 127.0.0.1:7860. The data
directory (FiftyOne database unless FIFTYONE_DATABASE_URI is set, media, model versions) defaults
to DETR_STUDIO_DATA, else /data/detr-studio when /data exists (Spaces storage), else ~/.detr-studio.
"""

from __future__ import annotations

try:  # on a ZeroGPU Space, `spaces` must be imported before anything touches CUDA
    import spaces  # noqa: F401
except ImportError:
    pass

import argparse
import os
from pathlib import Path

from datasets.review import DEFAULT_DATASET, configure_fiftyone, default_data_dir


def main() -> None:
    parser = argparse.ArgumentParser(description="Run the DETR Studio app.")
    parser.add_argument("--host", default=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"))
    parser.add_argument("--port", type=int, default=int(os.environ.get("GRADIO_SERVER_PORT", "7860")))
    parser.add_argument("--model", default=None, help="model selected at start (default: DETR_STUDIO_MODEL or DETR-R50)")
    parser.add_argument("--data-dir", type=Path, default=None, help="app data directory (default: DETR_STUDIO_DATA, "
                        "/data/detr-studio on Spaces, else ~/.detr-studio)")
    parser.add_argument("--dataset", default=os.environ.get("DETR_STUDIO_DATASET", DEFAULT_DATASET),
                        help="name of the FiftyOne review dataset")
    parser.add_argument("--cpu-bf16", action="store_true", help="run models on CPU under bf16 autocast (~1.8x "
                        "faster where the CPU has AVX512-BF16 or AMX; scores move by ~1e-2); or DETR_STUDIO_CPU_BF16=1")
    parser.add_argument("--auth", default=os.environ.get("DETR_STUDIO_AUTH"), metavar="USER:PASSWORD",
                        help="password-protect the app (a team server); signed-in users are named in reviews")
    args = parser.parse_args()
    if args.auth and ":" not in args.auth:
        parser.error("--auth takes USER:PASSWORD")
    if args.cpu_bf16:
        os.environ["DETR_STUDIO_CPU_BF16"] = "1"
    if args.model:
        os.environ["DETR_STUDIO_MODEL"] = args.model
    data_dir = (args.data_dir or default_data_dir()).expanduser().resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    where = configure_fiftyone(data_dir)  # before anything opens a FiftyOne connection
    print(f"DETR Studio data: {data_dir} (review dataset {args.dataset!r}; {where})", flush=True)

    from app import review
    from app.ui import build_app, launch

    review.configure(args.dataset, data_dir)
    from app import train

    if resumed := train.continue_unfinished():
        print(f"Continuing an interrupted fine-tune of {resumed} in the background.", flush=True)
    auth = tuple(args.auth.split(":", 1)) if args.auth else None
    demo = launch(build_app(), data_dir, server_name=args.host, server_port=args.port, auth=auth)
    print(f"FiftyOne App on the review dataset: {demo.local_url.rstrip('/')}/fiftyone/", flush=True)
    demo.block_thread()


if __name__ == "__main__":
    main()
