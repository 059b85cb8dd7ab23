"""The OpenAPI document's view (apart from ``schema.py``, which DRF's settings import while
drf-spectacular's views import DRF's settings)."""

from drf_spectacular.views import SpectacularAPIView


class SchemaView(SpectacularAPIView):
    """The OpenAPI document. The API has one version, so a ``version`` parameter is ignored
    rather than copied into the answer's headers."""

    authentication_classes = []
    permission_classes = []

    def _get_version_parameter(self, request):
        return None
