"""The FiftyOne App mounted under /fiftyone of our server: media confined, read-only for visitors.

Requests go over HTTP to the real Gradio server with FiftyOne's real server mounted in it.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request

import pytest

from conftest import state_with

from app.fiftyone_app import _mutations


def _request(url: str, data: bytes | None = None, method: str | None = None) -> tuple[int, bytes]:
    request = urllib.request.Request(url, data=data, method=method, headers={"content-type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


@pytest.fixture(params=[False, True], ids=["local", "space"])
def served(request, state, review_store):
    """The app (bundled model) with one reviewed sample, FiftyOne mounted, served locally or as a
    Space; yields (url, store, sample path, on a Space)."""
    from app import review
    from app.ui import build_app, launch
    from datasets.shapes import generate_sample

    served = state_with(state, model="bundled", system="spaces", space_id="someone/detr-studio" if request.param else None)
    review.send_to_review(served, generate_sample(3).image, "bundled", 0.5, 0)
    demo = launch(build_app(served), served, server_name="127.0.0.1", server_port=None, quiet=True)
    yield demo.local_url.rstrip("/"), review_store, review_store.dataset.first().filepath, request.param
    demo.close()


def _media(url: str, path: str) -> int:
    return _request(f"{url}/fiftyone/media?filepath={urllib.parse.quote(path)}")[0]


def test_media_is_confined_to_the_review_media(served, tmp_path):
    url, store, sample_path, _ = served
    assert _media(url, sample_path) == 200
    secret = tmp_path / "secret.txt"
    secret.write_text("not for visitors")
    link = store.media_dir / "link.png"
    link.symlink_to(secret)  # a link inside the media folder pointing out of it
    for path in ["/etc/passwd", str(secret), str(store.media_dir / ".." / ".." / "secret.txt"), str(link), ""]:
        assert _media(url, path) == 403, path


def test_app_page_loads_through_the_mount(served):
    url, store, _, _ = served
    status, body = _request(f"{url}/fiftyone/datasets/{store.dataset.name}?proxy=/fiftyone/")
    assert status == 200 and b"<html" in body.lower()


QUERY = {"query": "query { config { colorPool } }"}
SAVE_VIEW = {"query": 'mutation { createSavedView(subscription: "x", viewName: "v", datasetName: "d") { id } }'}
SET_VIEW = {"query": 'mutation { setView(subscription: "x", view: [], datasetName: "d") { id } }'}


def test_visitors_on_a_space_get_a_read_only_app(served):
    """Local use stays open; on a Space, visitors who are not signed in get a read-only App."""
    url, store, _, on_space = served
    writes_allowed = not on_space
    status, _ = _request(f"{url}/fiftyone/graphql", json.dumps(QUERY).encode())
    assert status == 200  # reading is open to everyone
    refused = {"mutation": _request(f"{url}/fiftyone/graphql", json.dumps(SAVE_VIEW).encode())[0],
               "tag": _request(f"{url}/fiftyone/tag", b"{}")[0],
               "operator": _request(f"{url}/fiftyone/operators/execute", b"{}")[0]}
    if writes_allowed:
        assert all(status != 403 for status in refused.values()), refused
    else:
        assert all(status == 403 for status in refused.values()), refused
        # browsing mutations (what one viewer sees) stay allowed
        assert _request(f"{url}/fiftyone/graphql", json.dumps(SET_VIEW).encode())[0] != 403


@pytest.mark.parametrize("body, expected", [
    (QUERY, set()),
    (SAVE_VIEW, {"createSavedView"}),
    ([QUERY, SET_VIEW], {"setView"}),  # batched requests are read whole
    ({"query": "mutation {"}, None),  # unreadable: refused by the guard
])
def test_mutations_found_in_graphql_bodies(body, expected):
    assert _mutations(json.dumps(body).encode()) == expected
