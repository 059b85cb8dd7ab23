"""Marks each request with the region its host names (``request.host_region``)."""

from __future__ import annotations

from regions.selectors import region_for_host


class RegionHostMiddleware:
    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        try:
            host = request.get_host()
        except Exception:  # DisallowedHost: Django answers it with a 400 later on
            host = request.META.get("SERVER_NAME", "")
        request.host_region, request.host_is_central = region_for_host(host=host)
        return self.get_response(request)
