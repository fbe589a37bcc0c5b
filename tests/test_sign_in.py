"""Sign-in on a Space through Gradio's supported API (`gr.OAuthProfile`), with Gradio's real OAuth
routes and session: the server runs with the variables a Space sets (``SYSTEM=spaces``, ``SPACE_ID``,
``OAUTH_CLIENT_ID``...), and a signed-in browser's session cookie is made as Gradio's
SessionMiddleware makes it (signed with the Space's OAuth secret)."""

from __future__ import annotations

import base64
import json
import time

import pytest
import supervision as sv

from app.config import AppConfig
from conftest import state_with
from core.loading import ASSETS_DIR
from datasets.shapes import generate_sample

SECRET = "test-oauth-secret"
SPACE = {"SYSTEM": "spaces", "SPACE_ID": "someone/detr-studio", "SPACE_CREATOR_USER_ID": "creator-sub-1",
         "OAUTH_CLIENT_ID": "test-client", "OAUTH_CLIENT_SECRET": SECRET, "OAUTH_SCOPES": "openid profile",
         "OPENID_PROVIDER_URL": "https://huggingface.co"}


def session_cookie(sub: str, username: str, expires_in: float = 3600) -> str:
    """The ``session`` cookie of a browser signed in as ``username`` (Starlette's SessionMiddleware
    format, with the key Gradio derives from the OAuth secret)."""
    import hashlib

    import itsdangerous

    info = {"access_token": "hf_oauth_token", "scope": "openid profile", "expires_at": int(time.time() + expires_in),
            "userinfo": {"sub": sub, "preferred_username": username, "name": username, "picture": "",
                         "profile": f"https://huggingface.co/{username}"}}
    data = base64.b64encode(json.dumps({"oauth_info": info}).encode())
    signer = itsdangerous.TimestampSigner(hashlib.sha256(f"{SECRET}-v4".encode()).hexdigest())
    return signer.sign(data).decode()


@pytest.fixture
def space(state, review_store, monkeypatch):
    """The app served as a Space with Gradio's OAuth, on ``state``'s data; yields its URL and sample id."""
    import gradio.oauth

    from app.ui import build_app, launch

    for name, value in SPACE.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(gradio.oauth, "OAUTH_CLIENT_SECRET", SECRET)  # read by Gradio at import
    monkeypatch.setattr(gradio.oauth, "OAUTH_CLIENT_ID", SPACE["OAUTH_CLIENT_ID"])
    monkeypatch.setattr(gradio.oauth, "OPENID_PROVIDER_URL", SPACE["OPENID_PROVIDER_URL"])
    monkeypatch.setattr(gradio.oauth, "OAUTH_SCOPES", SPACE["OAUTH_SCOPES"])
    config = AppConfig.from_env(model="bundled", dataset=state.config.dataset, engine="torch",
                                reviewers=("bob",))
    assert config.on_space and config.space_creator_id == "creator-sub-1"
    served = state_with(state, **{name: getattr(config, name) for name in
                                  ("model", "system", "space_id", "space_creator_id", "oauth_client_id", "reviewers")})
    sample_id = review_store.add_image(generate_sample(3).image, sv.Detections.empty(), "test", ["circle"])
    demo = launch(build_app(served), served, server_name="127.0.0.1", server_port=None, quiet=True)
    try:
        yield demo.local_url, sample_id
    finally:
        demo.close()


def _save(url: str, sample_id: str, cookie: str | None):
    from gradio_client import Client, handle_file

    client = Client(url, verbose=False, headers={"Cookie": f"session={cookie}"} if cookie else None)
    value = {"image": handle_file(str(ASSETS_DIR / "examples" / "shapes-701.png")), "boxes": [{"xmin": 2, "ymin": 2, "xmax": 30, "ymax": 30,
                                                                "label": "circle"}]}
    return client.predict(sample_id, 0, value, "typed name", 0.5, api_name="/save_review")


@pytest.mark.parametrize("who, cookie, allowed, message", [
    ("the Space's creator (by sub, not by name)", lambda: session_cookie("creator-sub-1", "someone-else"), True, None),
    ("a reviewer named in DETR_STUDIO_REVIEWERS", lambda: session_cookie("sub-2", "bob"), True, None),
    ("a signed-in stranger", lambda: session_cookie("sub-3", "mallory"), False, "signed in as mallory"),
    ("an expired login (Gradio treats it as signed out)", lambda: session_cookie("creator-sub-1", "x", -60), False,
     "Sign in with your Hugging Face account"),
    ("nobody signed in", lambda: None, False, "Sign in with your Hugging Face account"),
])
def test_only_the_creator_and_named_reviewers_write_on_a_space(space, review_store, who, cookie, allowed, message):
    url, sample_id = space
    if allowed:
        _save(url, sample_id, cookie())
        record = review_store.get(sample_id)
        assert record.revision == 1 and record.reviewer != "typed name", who  # named by the sign-in
    else:
        with pytest.raises(Exception, match=message):
            _save(url, sample_id, cookie())
        assert review_store.get(sample_id).revision == 0, who
