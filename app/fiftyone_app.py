"""The FiftyOne App served by our own server under ``/fiftyone``: one port, one origin.

FiftyOne's server (``fiftyone.server.app``, a Starlette app) is mounted into the Gradio server,
so "Review in FiftyOne" works on a Space (one exposed port) and locally without a second one. It
is wrapped in `FiftyOneGuard`, because as shipped it is made for one trusted local user:

- ``/media?filepath=...`` serves any readable file (``/etc/passwd`` included). Here only files
  whose real path lies under the app's media directories are served; anything else is 403.
- A label edit by a writer (``PATCH /dataset/{id}/sample/{id}``) is passed on, then reported to
  ``on_sample_edit``, which records it as a revision of the review with who made it.
- Tagging, operators and saved-view mutations change data for everyone. Callers that may not
  write (``can_write(scope)`` is False: anonymous visitors of a public Space) get a read-only App:
  GET everywhere, POST only to the read endpoints, GraphQL queries and the session-state
  mutations the App needs to browse; everything else is 403.

The frontend must be opened with ``?proxy=/fiftyone/`` (see `app_url`), or it calls ``/events``
at the site root. A mounted sub-app's lifespan does not run; FiftyOne's only needs it for its
operator notification service, which the embedded App does without.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from urllib.parse import parse_qs, quote

PREFIX = "/fiftyone"
SAMPLE_EDIT = re.compile(r"^/dataset/[0-9a-f]{24}/sample/([0-9a-f]{24})(?:/.*)?$")

logger = logging.getLogger(__name__)

# POST endpoints of the FiftyOne server that only read (the App posts its queries).
READ_ONLY_POSTS = frozenset({
    "/aggregate", "/values", "/sort", "/frames", "/geo", "/event", "/events", "/graphql", "/operators",
    "/operators/resolve-type", "/operators/resolve-placements", "/operators/resolve-execution-options",
    "/get-similar-labels-frames", "/video-labels/index", "/video-labels/window",
})
# GraphQL mutations that change only what one viewer sees (the App calls them while browsing).
SESSION_MUTATIONS = frozenset({
    "setDataset", "setView", "setSample", "setGroupSlice", "setSelected", "setSelectedSamples",
    "setSelectedLabels", "setSampleSelectionStyle", "setLabelSelectionStyle", "setFieldVisibilityStage",
    "setSpaces", "searchSelectFields",
})


def app_url(dataset: str, embedded: bool = False) -> str:
    """Where the mounted App shows ``dataset`` (relative to our server's root)."""
    url = f"{PREFIX}/datasets/{quote(dataset)}?proxy={PREFIX}/"
    return url + "&polling=true" if embedded else url  # inside an iframe, server-sent events may not flow


def _forbidden(message: str):
    body = json.dumps({"error": message}).encode()

    async def respond(send) -> None:
        await send({"type": "http.response.start", "status": 403,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})

    return respond


def _mutations(body: bytes) -> set[str] | None:
    """The top-level mutation fields a GraphQL request body asks for; None when it cannot be read."""
    from graphql import GraphQLError, OperationType, parse

    try:
        documents = json.loads(body or b"{}")
        requests = documents if isinstance(documents, list) else [documents]
        fields: set[str] = set()
        for request in requests:
            for definition in parse(request.get("query") or "").definitions:
                if getattr(definition, "operation", None) == OperationType.MUTATION:
                    fields |= {selection.name.value for selection in definition.selection_set.selections
                               if hasattr(selection, "name")}
        return fields
    except (ValueError, AttributeError, TypeError, GraphQLError):
        return None


class FiftyOneGuard:
    """ASGI wrapper of FiftyOne's server: media confined to ``media_dirs``; read-only without write rights."""

    def __init__(self, app, media_dirs: Sequence[Path], can_write: Callable[[dict], bool],
                 on_sample_edit: Callable[[str, dict], None] | None = None):
        self.app = app
        self.roots = [os.path.realpath(directory) for directory in media_dirs]
        self.can_write = can_write
        self.on_sample_edit = on_sample_edit

    async def _edit(self, scope, receive, send, sample_id: str) -> None:
        """Pass a writer's label edit on, then (if FiftyOne accepted it) report it, so it becomes a
        revision of the review record with who made it (`datasets.revisions`)."""
        status = {}

        async def watch(message):
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        await self.app(scope, receive, watch)
        if self.on_sample_edit is not None and 200 <= status.get("code", 500) < 300:
            try:
                await asyncio.to_thread(self.on_sample_edit, sample_id, scope)
            except Exception:  # the edit stands; it is adopted again on the sample's next read
                logger.exception("could not record the FiftyOne App edit of sample %s", sample_id)

    def _media_allowed(self, scope: dict) -> bool:
        query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
        paths = query.get("filepath", [])
        if len(paths) != 1 or not paths[0]:
            return False
        real = os.path.realpath(paths[0])  # links and ".." resolved before the check
        return any(os.path.commonpath([real, root]) == root for root in self.roots)

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        root = scope.get("root_path", "")
        path = scope["path"][len(root):] if scope["path"].startswith(root) else scope["path"]
        path = "/" + path.strip("/")
        method = scope["method"]
        if path == "/media" and not self._media_allowed(scope):
            await _forbidden("only the review dataset's media can be served")(send)
            return
        if self.can_write(scope) and method in ("PATCH", "PUT", "POST") and (match := SAMPLE_EDIT.match(path)):
            await self._edit(scope, receive, send, match.group(1))
            return
        if self.can_write(scope) or method in ("GET", "HEAD", "OPTIONS"):
            await self.app(scope, receive, send)
            return
        if method != "POST" or path not in READ_ONLY_POSTS:
            await _forbidden("sign in to change data; this FiftyOne App is read-only for visitors")(send)
            return
        if path != "/graphql":
            await self.app(scope, receive, send)
            return
        # Read the body to look for mutations, then hand the same bytes on.
        chunks, more = [], True
        while more:
            message = await receive()
            chunks.append(message.get("body", b""))
            more = message.get("more_body", False)
        body = b"".join(chunks)
        mutations = _mutations(body)
        if mutations is None or not mutations <= SESSION_MUTATIONS:
            await _forbidden("sign in to change data; this FiftyOne App is read-only for visitors")(send)
            return
        delivered = False

        async def replay():
            nonlocal delivered
            if not delivered:
                delivered = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)


def mount_fiftyone(server, media_dirs: Sequence[Path], can_write: Callable[[dict], bool],
                   on_sample_edit: Callable[[str, dict], None] | None = None) -> None:
    """Mount FiftyOne's server (guarded) at ``/fiftyone`` of ``server`` (Gradio's FastAPI app,
    ``demo.app`` after ``launch(prevent_thread_lock=True)``). FiftyOne must be configured first."""
    from fiftyone.server.app import app as fiftyone_server
    from starlette.routing import Mount

    routes = server.router.routes
    routes[:] = [route for route in routes if getattr(route, "path", None) != PREFIX]  # once, on relaunch too
    routes.insert(0, Mount(PREFIX, app=FiftyOneGuard(fiftyone_server, media_dirs, can_write, on_sample_edit)))
