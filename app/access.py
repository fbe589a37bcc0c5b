"""Who may change data. Local use is open; on a Hugging Face Space only the writers may.

A Space is recognised by ``SPACE_ID`` (`app.config.AppConfig.on_space`). Sign-in there is
Gradio's OAuth (``hf_oauth: true`` in the README front matter sets ``OAUTH_CLIENT_ID``), which
keeps the user in the request session under ``oauth_info``. Anyone with a Hugging Face account
can sign in, so signing in is not enough to write: the writers are the Space's creator (the
profile's ``sub`` equals ``SPACE_CREATOR_USER_ID``; ``SPACE_AUTHOR_NAME`` is only the namespace,
an organisation for an organisation's Space) and the names in ``DETR_STUDIO_REVIEWERS``. Everyone
may look, detect and inspect. ``--auth`` users (a team server) may write wherever they run.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable

from app.config import AppConfig


def _userinfo(scope: dict) -> dict:
    session = scope.get("session") or {}
    return (session.get("oauth_info") or {}).get("userinfo") or {}


def signed_in(scope: dict) -> bool:
    """Whether the ASGI request ``scope`` carries a signed-in Hugging Face user."""
    session = scope.get("session") or {}
    return bool(session.get("oauth_info"))


def is_writer(config: AppConfig, scope: dict) -> bool:
    """On a Space: whether the signed-in user is the Space's creator or a named reviewer."""
    info = _userinfo(scope)
    if config.space_creator_id and str(info.get("sub") or "") == config.space_creator_id:
        return True
    reviewers = {name.strip().lower() for name in config.reviewers if name.strip()}
    return str(info.get("preferred_username") or "").lower() in reviewers


def may_change_data(config: AppConfig, scope: dict) -> bool:
    """Off Spaces everyone may (a local or team server); on a Space only its writers."""
    return not config.on_space or (signed_in(scope) and is_writer(config, scope))


def _scope(request) -> dict:
    return getattr(getattr(request, "request", None), "scope", None) or {}


def caller_may_change_data(config: AppConfig, request) -> bool:
    """For a Gradio handler's ``gr.Request``."""
    return may_change_data(config, _scope(request)) or bool(getattr(request, "username", None))  # --auth user


def user_name_in(scope: dict) -> str | None:
    """The signed-in Hugging Face user of an ASGI request ``scope``, if any."""
    return _userinfo(scope).get("preferred_username") or None


def user_name(request) -> str | None:
    """The signed-in Hugging Face user (OAuth) or the ``--auth`` user of the request, if any."""
    info = _userinfo(_scope(request))
    return info.get("preferred_username") or getattr(request, "username", None) or None


def refusal(config: AppConfig, request) -> str | None:
    """Why the caller of ``request`` may not change data (for the page and the API), or None if they may."""
    if caller_may_change_data(config, request):
        return None
    if not signed_in(_scope(request)):
        return ("Sign in with your Hugging Face account (button at the top) to change data on this Space; "
                "detection and the query views work without signing in.")
    return (f"You are signed in as {user_name(request) or 'an unnamed user'}, but on this Space only its creator "
            "and the reviewers it names (DETR_STUDIO_REVIEWERS) may change data; detection and the query views "
            "work for everyone.")


def access_note(config: AppConfig, request) -> str:
    """One line for the top of the page: what this visitor may do here, and why buttons refuse."""
    if not config.on_space:
        return ""
    if (why := refusal(config, request)) is None:
        return f"Signed in as **{user_name(request)}**: you may review, import, export and fine-tune."
    return f"**View only.** {why}"


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
        if (why := refusal(config, request)) is not None:
            raise gr.Error(why)
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
