"""The models and the migrations agree: no model change waits for a migration."""

import io

import pytest
from django.core.management import call_command


@pytest.mark.django_db(databases="__all__")
def test_no_model_change_lacks_a_migration():
    out = io.StringIO()
    try:
        call_command("makemigrations", "--check", "--dry-run", stdout=out, stderr=out)
    except SystemExit as exit:  # --check exits 1 when a migration is missing
        pytest.fail(f"a model change has no migration:\n{out.getvalue()}  (exit {exit.code})")
    assert "No changes detected" in out.getvalue()
