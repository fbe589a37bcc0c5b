"""Entry point: build the DETR Studio Gradio app and launch it (also the Spaces `app_file`).

    python app.py [--host 127.0.0.1] [--port 7860] [--model NAME] [--data-dir DIR] [--dataset NAME]
                  [--auth USER:PASSWORD] [--cpu-bf16] ...    (python app.py --help lists them all)

Every setting is a field of `app.config.AppConfig`: a flag, an environment variable
(GRADIO_SERVER_NAME / GRADIO_SERVER_PORT for host and port, DETR_STUDIO_* for the rest) and a
default. The data directory (FiftyOne database unless FIFTYONE_DATABASE_URI is set, media, model
versions) defaults to /data/detr-studio when /data exists (Spaces storage), else ~/.detr-studio.
"""

from __future__ import annotations

try:  # on a ZeroGPU Space, `spaces` must be imported before anything touches CUDA
    import spaces  # noqa: F401
except ImportError:
    pass

from app.config import AppConfig
from core.allocator import keep_freed_memory
from datasets.database import configure_fiftyone


def main() -> None:
    config = AppConfig.parse()
    keep_freed_memory()  # CPU inference and fine-tunes reuse freed buffers (core.allocator)
    data_dir = config.resolved_data_dir
    data_dir.mkdir(parents=True, exist_ok=True)
    where = configure_fiftyone(data_dir)  # before anything opens a FiftyOne connection
    print(f"DETR Studio data: {data_dir} (review dataset {config.dataset!r}; {where})", flush=True)

    from app.state import AppState
    from app.train import continue_unfinished
    from app.ui import build_app, launch

    state = AppState(config, data_dir)
    if config.journal_repo:  # the journal lives in a private Hub dataset repo: fetch it, then keep uploading
        from datasets.journal import download_from_hub, upload_to_hub

        found = download_from_hub(config.journal_repo, state.journal.root)
        print(f"Journal: {config.journal_repo} ({'fetched' if found else 'new'}), uploaded every "
              f"{config.journal_every_min:g} min", flush=True)
        upload_to_hub(config.journal_repo, state.journal.root, config.journal_every_min)
    if (restored := state.restore_from_journal()) is not None:
        print(f"Journal {state.journal.root}: restored {restored['samples']} samples, {restored['media']} images and "
              f"{restored['versions']} model versions", flush=True)
    demo = launch(build_app(state), state, server_name=config.host, server_port=config.port,
                  auth=config.login_credentials)
    print(f"FiftyOne App on the review dataset: {demo.local_url.rstrip('/')}/fiftyone/", flush=True)
    # After launch: on ZeroGPU `spaces` starts up inside launch(), before any GPU call may run.
    if resumed := continue_unfinished(state):
        print(f"Continuing an interrupted fine-tune of {resumed} in the background.", flush=True)
    demo.block_thread()


if __name__ == "__main__":
    main()
