"""Who may change data. Local use is open; on a Hugging Face Space only signed-in users may.

A Space is recognised by ``SPACE_ID`` (Spaces set it). Sign-in there is Gradio's OAuth
(``hf_oauth: true`` in the README front matter sets ``OAUTH_CLIENT_ID``), which keeps the user in
the request session under ``oauth_info``.
"""

from __future__ import annotations

import os


def on_space() -> bool:
    return bool(os.environ.get("SPACE_ID"))


def public_space_without_login() -> bool:
    """On a public Hugging Face Space with no login configured, anyone could change data or train."""
    return on_space() and not os.environ.get("OAUTH_CLIENT_ID")


def signed_in(scope: dict) -> bool:
    """Whether the ASGI request ``scope`` carries a signed-in Hugging Face user."""
    session = scope.get("session") or {}
    return bool(session.get("oauth_info"))


def may_change_data(scope: dict) -> bool:
    """Off Spaces everyone may (a local or team server); on a Space only a signed-in user."""
    return not on_space() or signed_in(scope)
