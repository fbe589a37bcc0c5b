"""Who may change data. Local use is open; on a Hugging Face Space only the writers may.

A Space is recognised as Gradio recognises one (`app.config.AppConfig.on_space`: ``SYSTEM=spaces``
and ``SPACE_ID``). Sign-in there is Gradio's OAuth (``hf_oauth: true`` in the README front matter),
read the supported way: a handler parameter typed ``gr.OAuthProfile | None``, which Gradio fills
from the session and leaves None once the login has expired. Anyone with a Hugging Face account
can sign in, so signing in is not enough to write: the writers are the Space's creator (the
profile's ``sub`` equals ``SPACE_CREATOR_USER_ID``; ``SPACE_AUTHOR_NAME`` is only the namespace,
an organisation for an organisation's Space) and the names in ``DETR_STUDIO_REVIEWERS``. Everyone
may look, detect and inspect. ``--auth`` users (a team server) may write wherever they run.

The FiftyOne App mount is plain ASGI, not a Gradio handler: `may_change_data` reads the same
session there, with the same expiry rule.
"""

from __future__ import annotations

import functools
import inspect
import time
from collections.abc import Callable, Mapping

from app.config import AppConfig


def is_writer(config: AppConfig, profile: Mapping | None) -> bool:
    """On a Space: whether the signed-in ``profile`` is the Space's creator or a named reviewer."""
    if not profile:
        return False
    if config.space_creator_id and str(profile.get("sub") or "") == config.space_creator_id:
        return True
    reviewers = {name.strip().lower() for name in config.reviewers if name.strip()}
    return str(profile.get("preferred_username") or "").lower() in reviewers


def session_profile(scope: dict) -> dict | None:
    """The signed-in user's profile in an ASGI request ``scope`` (Gradio's session), None when not
    signed in or when the login has expired (the rule Gradio applies to ``gr.OAuthProfile``)."""
    info = (scope.get("session") or {}).get("oauth_info")
    if not info or (info.get("expires_at") is not None and info["expires_at"] < time.time()):
        return None
    return info.get("userinfo") or None


def may_change_data(config: AppConfig, scope: dict) -> bool:
    """For the FiftyOne mount: off Spaces everyone may (a local or team server); on a Space only its writers."""
    return not config.on_space or is_writer(config, session_profile(scope))


def user_name_in(scope: dict) -> str | None:
    """The signed-in Hugging Face user of an ASGI request ``scope``, if any."""
    return (session_profile(scope) or {}).get("preferred_username") or None


def user_name(profile: Mapping | None, request=None) -> str | None:
    """The signed-in Hugging Face user (OAuth profile) or the ``--auth`` user of the request, if any."""
    return (profile or {}).get("preferred_username") or getattr(request, "username", None) or None


def refusal(config: AppConfig, profile: Mapping | None, request=None) -> str | None:
    """Why the caller may not change data (for the page and the API), or None if they may.
    ``profile``: Gradio's ``gr.OAuthProfile`` (None: not signed in, or the login expired)."""
    if not config.on_space or getattr(request, "username", None) or is_writer(config, profile):
        return None
    if not profile:
        return ("Sign in with your Hugging Face account (button at the top) to change data on this Space; "
                "detection and the query views work without signing in.")
    return (f"You are signed in as {user_name(profile) or 'an unnamed user'}, but on this Space only its creator "
            "and the reviewers it names (DETR_STUDIO_REVIEWERS) may change data; detection and the query views "
            "work for everyone.")


def access_note(config: AppConfig, profile: Mapping | None, request=None) -> str:
    """One line for the top of the page: what this visitor may do here, and why buttons refuse."""
    if not config.on_space:
        return ""
    if (why := refusal(config, profile, request)) is None:
        return f"Signed in as **{user_name(profile, request)}**: you may review, import, export and fine-tune."
    return f"**View only.** {why}"


def needs_sign_in(handler: Callable, config: AppConfig, name_argument: str | None = None,
                  training: bool = False) -> Callable:
    """Wrap a Gradio handler that changes data: on a Space, callers who may not write get an error.

    Hidden buttons are not access control; this runs on every call, the API's included. Gradio
    injects the request and the sign-in because the wrapper declares two last parameters annotated
    ``gr.Request`` and ``gr.OAuthProfile | None``.
    ``name_argument`` names a parameter (the reviewer) that a signed-in user's name replaces.
    ``training``: also require the user to be on ``config.trainers`` (``DETR_STUDIO_TRAINERS``) when set.
    """
    import gradio as gr

    signature = inspect.signature(handler)
    names = list(signature.parameters)

    def checked(args: tuple, kwargs: dict) -> tuple:
        bound = wrapper.__signature__.bind(*args, **kwargs)
        request = bound.arguments.pop("request", None)
        profile = bound.arguments.pop("profile", None)
        args = tuple(bound.arguments.values())
        if request is None:  # called from Python, not through the server
            return args
        if (why := refusal(config, profile, request)) is not None:
            raise gr.Error(why)
        user = user_name(profile, request)
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
    parameters.append(inspect.Parameter("profile", inspect.Parameter.POSITIONAL_OR_KEYWORD, default=None,
                                        annotation=gr.OAuthProfile | None))
    wrapper.__signature__ = signature.replace(parameters=parameters)
    wrapper.__annotations__ = {**getattr(handler, "__annotations__", {}), "request": gr.Request,
                               "profile": gr.OAuthProfile | None}
    return wrapper
