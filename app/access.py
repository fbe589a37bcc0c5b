"""Who may change data. Local use is open; on a Hugging Face Space only signed-in users may.

A Space is recognised by ``SPACE_ID`` (`app.config.AppConfig.on_space`). Sign-in there is
Gradio's OAuth (``hf_oauth: true`` in the README front matter sets ``OAUTH_CLIENT_ID``), which
keeps the user in the request session under ``oauth_info``.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable

from app.config import AppConfig


def signed_in(scope: dict) -> bool:
    """Whether the ASGI request ``scope`` carries a signed-in Hugging Face user."""
    session = scope.get("session") or {}
    return bool(session.get("oauth_info"))


def may_change_data(config: AppConfig, scope: dict) -> bool:
    """Off Spaces everyone may (a local or team server); on a Space only a signed-in user."""
    return not config.on_space or signed_in(scope)


def _scope(request) -> dict:
    return getattr(getattr(request, "request", None), "scope", None) or {}


def caller_may_change_data(config: AppConfig, request) -> bool:
    """For a Gradio handler's ``gr.Request``."""
    return may_change_data(config, _scope(request)) or bool(getattr(request, "username", None))  # --auth user


def user_name(request) -> str | None:
    """The signed-in Hugging Face user (OAuth) or the ``--auth`` user of the request, if any."""
    session = _scope(request).get("session") or {}
    info = (session.get("oauth_info") or {}).get("userinfo") or {}
    return info.get("preferred_username") or getattr(request, "username", None) or None


def needs_sign_in(handler: Callable, config: AppConfig, name_argument: str | None = None,
                  training: bool = False) -> Callable:
    """Wrap a Gradio handler that changes data: on a Space, callers who are not signed in get an error.

    Hidden buttons are not access control; this runs on every call, the API's included. Gradio
    injects the request because the wrapper declares a last parameter annotated ``gr.Request``.
    ``name_argument`` names a parameter (the reviewer) that a signed-in user's name replaces.
    ``training``: also require the user to be on ``config.trainers`` (``DETR_STUDIO_TRAINERS``) when set.
    """
    import gradio as gr

    signature = inspect.signature(handler)
    names = list(signature.parameters)

    def checked(args: tuple, kwargs: dict) -> tuple:
        bound = wrapper.__signature__.bind(*args, **kwargs)
        request = bound.arguments.pop("request", None)
        args = tuple(bound.arguments.values())
        if request is None:  # called from Python, not through the server
            return args
        if not caller_may_change_data(config, request):
            raise gr.Error("Sign in with your Hugging Face account (button at the top) to change data on this "
                           "Space; detection and the query views work without signing in.")
        user = user_name(request)
        allowed = {name.strip() for name in config.trainers if name.strip()} if training else set()
        if allowed and user not in allowed:
            raise gr.Error(f"Fine-tuning on this server is limited to {', '.join(sorted(allowed))}; "
                           f"you are signed in as {user or 'nobody'}.")
        if user and name_argument in names and names.index(name_argument) < len(args):
            index = names.index(name_argument)
            args = (*args[:index], user, *args[index + 1:])
        return args

    if inspect.isgeneratorfunction(handler):
        @functools.wraps(handler)
        def wrapper(*args, **kwargs):
            yield from handler(*checked(args, kwargs))
    else:
        @functools.wraps(handler)
        def wrapper(*args, **kwargs):
            return handler(*checked(args, kwargs))

    parameters = [p for p in signature.parameters.values() if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    parameters.append(inspect.Parameter("request", inspect.Parameter.POSITIONAL_OR_KEYWORD, default=None,
                                        annotation=gr.Request))
    wrapper.__signature__ = signature.replace(parameters=parameters)
    wrapper.__annotations__ = {**getattr(handler, "__annotations__", {}), "request": gr.Request}
    return wrapper
