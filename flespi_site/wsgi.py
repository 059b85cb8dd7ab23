import os

from django.core.exceptions import ImproperlyConfigured
from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "flespi_site.settings")
application = get_wsgi_application()

from flespi_site import preflight  # noqa: E402 - settings are loaded by now

# `flespi web` checks this before starting gunicorn; a server started some other way checks here.
if problems := preflight.problems("web", production=False):
    raise ImproperlyConfigured("; ".join(problems))

from flespi_site.runner import startup_frozen  # noqa: E402

# A web process lives as long as its modules, settings and apps: they stay out of the garbage
# collector's walks (flespi_site.runner).
startup_frozen("web")
