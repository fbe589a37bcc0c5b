"""The launched app driven by `gradio_client` through its stable API names, review store included."""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import state_with
from core.loading import ASSETS_DIR

SHAPES = ASSETS_DIR / "examples" / "shapes-701.png"
API_NAMES = ["/detect", "/detect_batch", "/queries", "/query_attention", "/slot_plot", "/send_to_review",
             "/promote_query", "/save_review", "/undo_review", "/next_to_review", "/import_folder", "/import_coco",
             "/export_coco", "/evaluate", "/open_fiftyone", "/accept_and_next", "/skip", "/import_upload",
             "/export_download"]


def serve(state, **options):
    """Launch the app on ``state`` as app.py does, on a free port."""
    from app.ui import build_app, launch

    return launch(build_app(state), state, server_name="127.0.0.1", server_port=None, quiet=True, **options)


@pytest.fixture
def client(state, review_store, tiny_detr_dir):
    from gradio_client import Client

    demo = serve(state_with(state, model=str(tiny_detr_dir)))
    yield Client(demo.local_url, verbose=False)
    demo.close()


def test_every_feature_has_its_api_name(client):
    named = client.view_api(return_format="dict", print_info=False)["named_endpoints"]
    assert set(API_NAMES) <= set(named)


def test_a_script_can_inspect_queries_and_review(client, review_store, tiny_detr_dir):
    from gradio_client import handle_file

    model = str(tiny_detr_dir)
    image = handle_file(str(SHAPES))
    annotated, table, status = client.predict(image, model, 0.5, 256, ["circle"], api_name="/detect")
    assert {row[1] for row in table["data"]} <= {"circle"}  # the class filter
    key, queries, grid, layers, heads, status = client.predict(image, model, 256, 0.5, api_name="/queries")
    assert [row[0] for row in queries["data"]] == list(range(12))
    overlay, grid, details = client.predict(key, 3, "0", "1", 0.5, api_name="/query_attention")
    assert "Query 3" in details and "layer 0" in details and "head 1" in details

    editor, sample_id, revision, status = client.predict(image, model, 0.5, 256, api_name="/send_to_review")
    assert revision == 0 and review_store.get(sample_id).status == "to_review"
    boxes = [{"xmin": 10, "ymin": 12, "xmax": 60, "ymax": 70, "label": "star"}]
    value = {"image": handle_file(str(SHAPES)), "boxes": boxes}
    editor, sample_id, revision, status = client.predict(sample_id, 0, value, "script", 0.5, api_name="/save_review")
    assert revision == 1 and status.startswith("Saved.")
    truth = review_store.get(sample_id).ground_truth
    assert truth.data["class_name"].tolist() == ["star"]
    assert truth.xyxy.round().tolist() == [[10, 12, 60, 70]]
    # A second save against revision 0 is refused; the first stays.
    with pytest.raises(Exception, match="Nothing was overwritten"):
        client.predict(sample_id, 0, {**value, "boxes": []}, "late", 0.5, api_name="/save_review")
    assert review_store.get(sample_id).ground_truth.data["class_name"].tolist() == ["star"]
    summary, per_class, plot = client.predict(api_name="/evaluate")
    assert "mAP" in summary


def test_gradio_serves_only_what_the_app_needs(client):
    import urllib.error
    import urllib.request

    def status(path):
        try:
            with urllib.request.urlopen(f"{client.src.rstrip('/')}/gradio_api/file={path}", timeout=30) as response:
                return response.status
        except urllib.error.HTTPError as error:
            return error.code

    root = Path(__file__).resolve().parents[1]
    assert status(ASSETS_DIR / "examples" / "coffee.jpg") == 200
    for private in [root / "README.md", ASSETS_DIR / "bundled" / "config.json", Path("/etc/passwd")]:
        assert status(private) == 403, private


def test_on_a_space_visitors_detect_but_cannot_change_data(client, state, review_store, tiny_detr_dir):
    """Hidden buttons are not access control: the API itself refuses writes from a visitor."""
    from gradio_client import Client, handle_file

    model, image = str(tiny_detr_dir), handle_file(str(SHAPES))
    editor, sample_id, revision, status = client.predict(image, model, 0.5, 256, api_name="/send_to_review")
    # The same data served as a Space (offering the test model); this visitor has not signed in.
    space = serve(state_with(state, model=model, system="spaces", space_id="someone/detr-studio", models=(model,)))
    client = Client(space.local_url, verbose=False)
    annotated, table, status = client.predict(image, model, 0.5, 256, [], api_name="/detect")
    assert "queries" in status or table is not None  # detection still works
    value = {"image": handle_file(str(SHAPES)), "boxes": [{"xmin": 1, "ymin": 1, "xmax": 9, "ymax": 9, "label": "x"}]}
    refused = [("/send_to_review", (image, model, 0.5, 256)),
               ("/save_review", (sample_id, 0, value, "visitor", 0.5)),
               ("/import_folder", ("/tmp", model, 0.5, 256)),
               ("/export_coco", ("/tmp/out",)),
               ("/finetune", ("bundled", 1, 1e-3, "heads"))]
    try:
        for api_name, args in refused:
            with pytest.raises(Exception, match="Sign in with your Hugging Face account"):
                client.predict(*args, api_name=api_name)
    finally:
        space.close()
    assert len(review_store.dataset) == 1 and review_store.get(sample_id).revision == 0  # nothing changed


def test_a_full_queue_answers_busy(state, review_store):
    """With room for one waiting event, a third fine-tune request is refused at once, not piled up."""
    import time

    from gradio_client import Client

    from training.star_check import build_review_dataset

    build_review_dataset(review_store, 10)
    busy = state_with(state, model="bundled", queue_size=1)
    demo = serve(busy)
    try:
        client = Client(demo.local_url, verbose=False)
        running = client.submit("bundled", 200, 1e-3, "heads", api_name="/finetune")  # runs for minutes
        deadline = time.time() + 60
        while busy.job.current is None and time.time() < deadline:
            time.sleep(0.2)
        waiting = client.submit("bundled", 1, 1e-3, "heads", api_name="/finetune")  # the one waiting place
        time.sleep(1.0)
        with pytest.raises(Exception, match="(?i)queue is full"):
            client.predict("bundled", 1, 1e-3, "heads", api_name="/finetune")
    finally:
        busy.job.cancel()
        for job in (running, waiting):
            job.cancel()
        deadline = time.time() + 60
        while busy.job.current is not None and time.time() < deadline:  # the worker stops within a step
            time.sleep(0.2)
        demo.close()
    assert busy.job.current is None


def test_a_password_protected_team_server_names_the_signed_in_reviewer(state, review_store, tiny_detr_dir):
    """`--auth USER:PASSWORD`: the user may change data (even where SPACE_ID is set) and is the reviewer;
    with an allow-list of trainers (DETR_STUDIO_TRAINERS) only those may fine-tune."""
    from gradio_client import Client, handle_file

    team = state_with(state, model=str(tiny_detr_dir), system="spaces", space_id="someone/detr-studio", auth="ana:secret",
                      trainers=("bob", "carol"), models=(str(tiny_detr_dir),))
    demo = serve(team, auth=team.config.login_credentials)
    try:
        client = Client(demo.local_url, verbose=False, auth=("ana", "secret"))
        image = handle_file(str(SHAPES))
        editor, sample_id, revision, status = client.predict(image, str(tiny_detr_dir), 0.5, 256,
                                                             api_name="/send_to_review")
        value = {"image": image, "boxes": [{"xmin": 10, "ymin": 12, "xmax": 60, "ymax": 70, "label": "circle"}]}
        client.predict(sample_id, revision, value, "somebody else", 0.5, api_name="/save_review")
        assert review_store.get(sample_id).reviewer == "ana"
        with pytest.raises(Exception, match="limited to bob, carol; you are signed in as ana"):
            client.predict("bundled", 1, 1e-3, "heads", api_name="/finetune")
    finally:
        demo.close()


def test_an_upload_over_the_cap_is_refused(client, tmp_path):
    """launch(max_file_size=50 MB): Gradio's upload route refuses a bigger file before any handler runs."""
    import httpx

    from app.ui import MAX_UPLOAD

    assert MAX_UPLOAD == "50mb"
    url = f"{client.src.rstrip('/')}/gradio_api/upload"
    small, big = tmp_path / "small.png", tmp_path / "big.png"
    small.write_bytes(SHAPES.read_bytes())
    big.write_bytes(b"\0" * (51 * 1024 * 1024))
    with small.open("rb") as handle:
        assert httpx.post(url, files={"files": handle}, timeout=60).status_code == 200
    with big.open("rb") as handle:
        response = httpx.post(url, files={"files": handle}, timeout=60)
    assert response.status_code == 413, response.text
