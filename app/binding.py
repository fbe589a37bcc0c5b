"""How handlers meet the server: bound to the `app.state.AppState`, with a lost database connection
turned into a message, and the editor's outputs given the dataset's labels."""

from __future__ import annotations

import contextlib
import functools
import inspect
from collections.abc import Callable

import gradio as gr
from gradio_image_annotation import image_annotator
from pymongo.errors import ConnectionFailure

from app.render import class_color
from app.state import AppState
from datasets.journal import JournalError

DATABASE_DOWN = ("The review database is not reachable ({reason}), so nothing was read or saved. Detection and "
                 "the query views still work; try again in a moment (the app reconnects by itself).")


@contextlib.contextmanager
def database_errors():
    """A lost MongoDB connection as a message the user can act on, not Gradio's generic error."""
    try:
        yield
    except JournalError as error:  # the write is in the database; the durable copy is not
        raise gr.Error(str(error)) from None
    except ConnectionFailure as error:
        reason = str(error).split(",")[0].split(" (")[0][:120] or type(error).__name__
        raise gr.Error(DATABASE_DOWN.format(reason=reason)) from None


def bind(handler: Callable, state: AppState) -> Callable:
    """``handler`` with ``state`` as its first argument, seen by Gradio as the rest of its signature
    (so ``gr.Request`` / ``gr.SelectData`` parameters are still injected). A lost database
    connection becomes a clear `gr.Error`."""
    signature = inspect.signature(handler)
    first = next(iter(signature.parameters))
    if inspect.isgeneratorfunction(handler):
        @functools.wraps(handler)
        def bound(*args, **kwargs):
            with database_errors():
                yield from handler(state, *args, **kwargs)
    else:
        @functools.wraps(handler)
        def bound(*args, **kwargs):
            with database_errors():
                return handler(state, *args, **kwargs)
    bound.__signature__ = signature.replace(parameters=list(signature.parameters.values())[1:])
    bound.__annotations__ = {k: v for k, v in handler.__annotations__.items() if k != first}
    return bound


def with_labels(handler, state: AppState):
    """Wrap a handler whose first output is the editor value so the editor offers the dataset's labels."""

    @functools.wraps(handler)
    @database_errors()
    def wrapped(*args):
        value, *rest = handler(*args)
        labels = state.store.labels
        editor = image_annotator(value=value, label_list=labels,
                                 label_colors=[class_color(i) for i in range(len(labels))])
        return (editor, *rest)

    return wrapped
