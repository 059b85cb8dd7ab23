"""JSON rendered by ``flespi_site.jsontext.dumps_exact`` (orjson, integers beyond 64 bits kept
exact): for answers of tens of thousands of items, which the standard encoder of DRF's
``JSONRenderer`` takes several times longer to write (docs/analytics.md, "Rollups")."""

from __future__ import annotations

from typing import Any

from rest_framework.renderers import JSONRenderer

from flespi_site.jsontext import dumps_exact


class ExactJSONRenderer(JSONRenderer):
    """``JSONRenderer`` (same media type, compact, UTF-8) writing through ``dumps_exact``. An
    answer's data are plain JSON values (dicts, lists, strings, numbers, bools, None)."""

    def render(self, data: Any, accepted_media_type: str | None = None, renderer_context: Any = None) -> bytes:
        if data is None:
            return b""
        return dumps_exact(data)
