"""Django-level error pages for paths outside DRF views: the same envelope, never HTML."""

from django.http import JsonResponse

from flespi_site.errors import error_item


def not_found(request, exception=None):
    return JsonResponse({"errors": [error_item(code=404, reason=f"no endpoint at {request.path}")]}, status=404)


def bad_request(request, exception=None):
    # Django's own refusals before any view: a Host header not in ALLOWED_HOSTS, a malformed
    # multipart body, too many fields.
    reason = str(exception) if exception is not None and str(exception) else "bad request"
    return JsonResponse({"errors": [error_item(code=400, reason=reason)]}, status=400)


def server_error(request):
    return JsonResponse({"errors": [error_item(code=500, reason="internal error; it has been logged")]}, status=500)
