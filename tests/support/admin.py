"""The admin tests' host, quick superuser passwords, and query counts of a page over every
database."""

from __future__ import annotations

import pytest
from django.db import connections
from django.test.utils import CaptureQueriesContext

HOST = {"HTTP_HOST": "localhost"}


@pytest.fixture(autouse=True)
def fast_password_hashing(settings):
    """Imported into a test module, quick hashing for every test of it: the superuser of
    ``admin_client`` is hashed with this; the default hasher takes ~0.5 s."""
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


def page_queries(client, path: str) -> dict[str, int]:
    """How many queries a second load of ``path`` makes on each database that it queries (the
    first one warms the session and the placement cache)."""
    client.get(path, **HOST)
    contexts = {alias: CaptureQueriesContext(connections[alias]) for alias in connections}
    for context in contexts.values():
        context.__enter__()
    try:
        response = client.get(path, **HOST)
    finally:
        for context in contexts.values():
            context.__exit__(None, None, None)
    assert response.status_code == 200, response.content.decode()[:2000]
    return {
        alias: len(context.captured_queries)
        for alias, context in contexts.items()
        if context.captured_queries
    }
