"""The app on ZeroGPU, through the real `spaces` package (0.51) in ZeroGPU mode: its torch patches,
its schedule / allow / release calls, its forked worker and pickling. Only ZeroGPU's device API is
a stand-in (`DeviceApi`, answering as the real one does) and the worker's CUDA start-up is skipped
(tests/zerogpu_app.py), because these machines have no GPU. Shortened: 5-second chunks."""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import pytest
from PIL import Image

from conftest import free_port
from datasets.shapes import generate_sample
from training.star_check import build_review_dataset

ROOT = Path(__file__).resolve().parents[1]
pytest.importorskip("spaces", reason="the `spaces` package (requirements-dev.txt) runs these tests")


class DeviceApi:
    """ZeroGPU's device API as `spaces.zero.api.APIClient` calls it: ``/startup-report``,
    ``/schedule`` (JSON `ScheduleResponse`), ``/allow``, ``/release``. Records every call.
    ``fail_schedules`` : the n-th calls of /schedule (1-based) that answer 503, "No GPU was available"."""

    def __init__(self, fail_schedules: set[int] = frozenset()):
        self.calls: list[tuple[str, dict]] = []
        self.fail_schedules = set(fail_schedules)
        api = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                url = urlparse(self.path)
                params = {k: v[0] for k, v in parse_qs(url.query).items()}
                api.calls.append((url.path, params))
                body, status = b"", 200
                if url.path == "/schedule":
                    if len([c for c in api.calls if c[0] == "/schedule"]) in api.fail_schedules:
                        status = 503
                    else:
                        body = json.dumps({"idle": True, "nvidiaIndex": 0, "nvidiaUUID": "GPU-standin",
                                           "allowToken": f"token-{len(api.calls)}"}).encode()
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def schedules(self) -> list[dict]:
        return [params for path, params in self.calls if path == "/schedule"]

    def close(self):
        self.server.shutdown()


def _user_token(name: str) -> str:
    """An ``X-IP-Token`` as ZeroGPU's proxy sets it (a JWT; `spaces` reads its payload)."""
    payload = base64.urlsafe_b64encode(json.dumps({"user": name}).encode()).decode().rstrip("=")
    return f"header.{payload}.signature"


@pytest.fixture
def zero_gpu_app(state, tmp_path):
    """``tests/zerogpu_app.py`` (the app under `spaces` in ZeroGPU mode) on ``state``'s data and dataset;
    yields ``(url, device api, log path, server pid)``."""
    api = DeviceApi(fail_schedules={4})  # prepare, chunk 1, (detect,) then a chunk's schedule fails once
    port, log = free_port(), tmp_path / "zerogpu-app.log"
    env = {**os.environ, "SPACES_ZERO_GPU": "true", "SPACES_ZERO_DEVICE_API_URL": api.url, "HF_HUB_OFFLINE": "1",
           "DETR_STUDIO_ZEROGPU_CHUNK_S": "5", "ZEROGPU_PROC_SELF_CGROUP_PATH": str(tmp_path / "cgroup"),
           "PYTHONPATH": str(ROOT)}
    (tmp_path / "cgroup").write_text("5:devices:/zerogpu-test\n")
    app = subprocess.Popen([sys.executable, str(ROOT / "tests" / "zerogpu_app.py"), "--host", "127.0.0.1", "--port",
                            str(port), "--data-dir", str(state.data_dir), "--dataset", state.config.dataset,
                            "--model", "bundled"], cwd=ROOT, env=env, stdout=open(log, "wb"), stderr=subprocess.STDOUT,
                           start_new_session=True)  # its own process group: the forked GPU workers too
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.time() + 180
        while True:
            try:
                urllib.request.urlopen(url, timeout=2)
                break
            except OSError:
                if app.poll() is not None or time.time() > deadline:
                    raise RuntimeError(f"the ZeroGPU app did not start: {log.read_text()[-3000:]}")
                time.sleep(0.5)
        yield url, api, log, app.pid
    finally:
        os.killpg(app.pid, signal.SIGKILL)  # the server and the GPU workers `spaces` forked (daemons a kill orphans)
        app.wait(timeout=60)
        api.close()


def test_detect_and_a_chunked_fine_tune_run_through_the_real_spaces_package(zero_gpu_app, state, review_store,
                                                                            tmp_path):
    from gradio_client import Client, handle_file

    url, api, log, server_pid = zero_gpu_app
    build_review_dataset(review_store, 12)
    client = Client(url, verbose=False, headers={"X-IP-Token": _user_token("ana")})
    image = tmp_path / "shapes.png"
    Image.fromarray(generate_sample(7).image).save(image)

    # Detect: the model loaded on CPU in the server; its forward pass ran in a forked GPU worker.
    _, rows, status = client.predict(handle_file(str(image)), "bundled", 0.3, 0, [], api_name="/detect")
    assert rows["data"] and "bundled" in status, status
    assert api.schedules()[0]["token"] == _user_token("ana")  # the visitor's quota, not the Space's
    # spaces' start-up hook ran inside launch(), then one GPU call: schedule, the worker's allow, release
    assert [path for path, _ in api.calls[:4]] == ["/startup-report", "/schedule", "/allow", "/release"]

    # A fine-tune: prepare, chunks (the second fails once: no GPU), scoring; then a version.
    job = client.submit("bundled", 12, 1e-4, "transformer", "off", api_name="/finetune")
    statuses = [str(output[0]) for output in job]
    final = job.result()
    assert "version:v0001" in final[0], (final[0], log.read_text()[-3000:])
    schedules = api.schedules()
    chunks = [s for s in schedules if s["durationSeconds"] == "5"]
    # How many chunks the 12 epochs need depends on the machine's speed; at least two ran (one paused, so
    # the next resumed it), plus the one refused.
    assert len(chunks) >= 3, (schedules, statuses)
    assert any("ZeroGPU chunk ended (paused)" in text for text in statuses), statuses
    assert all(s["token"] == _user_token("ana") for s in schedules)  # every GPU call in the user's context
    workers = {int(params["pid"]) for path, params in api.calls if path == "/allow"}
    assert workers and server_pid not in workers  # the tensor work ran in forked workers
    assert any("No GPU was available" in text and "attempt 2 of 4" in text for text in statuses), statuses
    info = json.loads((state.data_dir / "models" / "v0001" / "version.json").read_text())
    epochs = [h["epoch"] for h in info["history"]]
    assert epochs == list(range(len(epochs))) and len(epochs) >= 3  # every validated epoch, across the chunks
