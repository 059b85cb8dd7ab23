# Two commands on a fresh clone: `make run` and `make test` (see docs/running.md).
# Without DATABASE_URL / REDIS_URL / MQTT_URL in the environment both start embedded services.

PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.requirements-installed
PYTEST_ARGS ?=

.PHONY: run test lint bench venv

venv: $(STAMP)

$(PY):
	$(PYTHON) -m venv $(VENV)

# Reinstall only when requirements.txt changed since the last install.
$(STAMP): requirements.txt | $(PY)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements.txt
	touch $@

run: $(STAMP)
	$(PY) -m flespi_site.supervisor

test: $(STAMP)
	$(PY) -m flespi_site.embedded exec -- $(PY) -m pytest $(PYTEST_ARGS)

lint: $(STAMP)
	$(PY) -m ruff check .

bench: $(STAMP)
	@set -e; for script in bench/*.py; do \
		[ -e "$$script" ] || continue; \
		echo "== $$script"; \
		$(PY) -m flespi_site.embedded exec -- $(PY) "$$script"; \
	done
