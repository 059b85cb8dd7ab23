"""The page at ``/``: a short HTML page for a person with a browser, the JSON envelope's 404 for
API clients (an ``Accept`` that prefers JSON, ``*/*`` as curl sends it, or none)."""

from __future__ import annotations

import functools
import re

from django.conf import settings
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.views.decorators.csrf import csrf_exempt

from flespi_site.api import handlers

HTML, JSON = "text/html", "application/json"
_FENCE = re.compile(r"^```[^\n]*\n(.*?)^```", re.MULTILINE | re.DOTALL)


@functools.cache
def readme_curl_examples() -> tuple[str, ...]:
    """The README's code blocks that call the API with curl, as written there (none when the
    README is not beside the code)."""
    try:
        text = (settings.BASE_DIR / "README.md").read_text(encoding="utf-8")
    except OSError:
        return ()
    return tuple(block.rstrip() for block in _FENCE.findall(text) if "curl " in block)


def wants_html(request: HttpRequest) -> bool:
    # JSON first: a client that names neither, or accepts anything, is an API client.
    return request.get_preferred_type([JSON, HTML]) == HTML


@csrf_exempt  # any other method gets the JSON 404 it got before this page existed, not a CSRF page
def landing(request: HttpRequest) -> HttpResponse:
    if request.method not in ("GET", "HEAD") or not wants_html(request):
        return handlers.not_found(request)
    return render(request, "flespi_site/landing.html", {"curl_examples": readme_curl_examples()})
