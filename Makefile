# Two commands on a fresh clone: `make run` and `make test` (see docs/running.md).
# Without DATABASE_URL / REDIS_URL / MQTT_URL in the environment both start embedded services.

PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.requirements-installed
DEV_STAMP := $(VENV)/.requirements-dev-installed
PYTEST_ARGS ?=

.PHONY: run test lint bench venv

venv: $(STAMP)

$(PY):
	$(PYTHON) -m venv $(VENV)

# Reinstall only when requirements.txt changed since the last install.
$(STAMP): requirements.txt | $(PY)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements.txt
	touch $@

# The type checker and its stubs, for `make lint` only.
$(DEV_STAMP): requirements-dev.txt $(STAMP)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements-dev.txt
	touch $@

run: $(STAMP)
	$(PY) -m flespi_site.supervisor

test: $(STAMP)
	$(PY) -m flespi_site.embedded exec -- $(PY) -m pytest $(PYTEST_ARGS)

lint: $(STAMP) $(DEV_STAMP)
	$(PY) -m ruff check .
	$(PY) -m mypy flespi_site accounts regions devices analytics

bench: $(STAMP)
	@set -e; for script in bench/*.py; do \
		[ -e "$$script" ] || continue; \
		echo "== $$script"; \
		$(PY) -m flespi_site.embedded exec -- $(PY) "$$script"; \
	done
