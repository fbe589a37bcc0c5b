"""An image input that hands the uploaded file to the handler undecoded.

`gr.Image` opens every upload with PIL before the handler runs (even with ``type="filepath"``):
random bytes, a truncated file or a decompression bomb then fail inside Gradio, and the user
sees only its generic error; a huge PNG is decoded in full before any check. `UploadedImage`
looks and behaves like `gr.Image` in the page, but its handler gets the uploaded file's path (or,
for a ``data:`` URL sent through the API, its bytes) untouched, for `core.images.load_image` to
check from the header and refuse with a message that says what is wrong.
"""

from __future__ import annotations

import base64
import binascii

import gradio as gr

# A data: URL arrives in the request body, not through the upload route and its size cap.
MAX_DATA_URL_CHARS = 70_000_000


class UploadedImage(gr.Image):
    """`gr.Image` whose handler value is the upload's path (a ``str``) or bytes, never decoded."""

    is_template = True  # the page renders it as the Image component it subclasses
    # No __init__ of its own: Gradio sends the page the properties named in the class's __init__
    # signature, so it keeps gr.Image's. Create it with type="filepath", image_mode=None.

    def preprocess(self, payload) -> str | bytes | None:
        if payload is None:
            return None
        url = getattr(payload, "url", None) or ""
        if url.startswith("data:"):
            if len(url) > MAX_DATA_URL_CHARS:
                raise gr.Error("The image sent is over 50 MB; send a smaller file.")
            try:
                return base64.b64decode(url.split(",", 1)[1], validate=True)
            except (IndexError, binascii.Error, ValueError):
                raise gr.Error("The image sent as a data URL is not valid base64; upload the file instead.") from None
        if payload.path is None:
            raise gr.Error("The upload arrived without its file; upload the image again.")
        return str(payload.path)
