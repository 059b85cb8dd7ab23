# Two commands on a fresh clone: `make run` and `make test` (see docs/running.md).
# Without DATABASE_URL / REDIS_URL / MQTT_URL in the environment both start embedded services.

# The interpreter .venv is made with: PYTHON if given (`make PYTHON=python3.12 run`), else the
# newest python3.N on PATH with N >= 11 that runs (a pyenv shim exists for inactive versions too).
PYTHON ?=
PYTHON_VERSIONS := 19 18 17 16 15 14 13 12 11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.requirements-installed
TEST_STAMP := $(VENV)/.requirements-test-installed
DEV_STAMP := $(VENV)/.requirements-dev-installed
# Leaflet and uPlot for the admin's maps and charts, from the npm registry at pinned versions.
VENDOR_STAMP := accounts/static/regional_admin/vendor/versions.json
PYTEST_ARGS ?=

.PHONY: run test lint bench venv soak demo vendor wheel image stack-test

venv: $(STAMP)

vendor: $(VENDOR_STAMP)

$(PY):
	@python="$(PYTHON)"; \
	if [ -z "$$python" ]; then \
		for minor in $(PYTHON_VERSIONS); do \
			if python3.$$minor -c '' >/dev/null 2>&1; then python=python3.$$minor; break; fi; \
		done; \
	fi; \
	if [ -z "$$python" ]; then \
		echo "make: no python3.11 or newer on PATH; install one, or name it: make PYTHON=/path/to/python3.12" >&2; \
		exit 1; \
	fi; \
	version=$$("$$python" -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null) || { \
		echo "make: PYTHON=$$python does not run; name a Python 3.11 or newer: make PYTHON=/path/to/python3.12" >&2; \
		exit 1; \
	}; \
	if ! "$$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then \
		echo "make: $$python is Python $$version; the platform needs Python 3.11 or newer:" \
			"install one, or name it: make PYTHON=/path/to/python3.12" >&2; \
		exit 1; \
	fi; \
	echo "make: creating $(VENV) with $$python (Python $$version)"; \
	"$$python" -m venv $(VENV)

# Reinstall only when requirements.txt changed since the last install.
$(STAMP): requirements.txt | $(PY)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements.txt
	touch $@

# Fetch again only when the pins in the script changed (docs/admin.md, "Maps and charts").
$(VENDOR_STAMP): devtools/vendor.py | $(PY)
	$(PY) -m devtools.vendor
	touch $@

# pytest, the browser driver and the API fuzzer, for `make test`, `make soak` and `make bench`.
$(TEST_STAMP): requirements-test.txt $(STAMP)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements-test.txt
	touch $@

# The linter, the type checker and its stubs, for `make lint` only.
$(DEV_STAMP): requirements-dev.txt $(TEST_STAMP)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements-dev.txt
	touch $@

run: $(STAMP) $(VENDOR_STAMP)
	$(PY) -m devtools.supervisor

# A demo account with two real tracks and calculators, on the services of a running `make run`.
demo: $(STAMP)
	$(PY) manage.py demo

test: $(TEST_STAMP) $(VENDOR_STAMP)
	$(PY) -m devtools.embedded exec -- $(PY) -m pytest $(PYTEST_ARGS)

# The long fault soak: five passes of kills of every process and broker restarts (tests/test_soak.py),
# 100 kill rounds of the contract and ten rounds of every handover between hosts.
soak: $(TEST_STAMP)
	FLESPI_SLOW=1 $(PY) -m devtools.embedded exec -- $(PY) -m pytest -s tests/test_soak.py tests/analytics/test_fleet_contract.py tests/analytics/test_fleet_hosts.py $(PYTEST_ARGS)

lint: $(STAMP) $(DEV_STAMP)
	$(PY) -m ruff check .
	$(PY) -m mypy flespi_site accounts regions devices analytics devtools webhooks

bench: $(TEST_STAMP)
	@set -e; for script in bench/*.py; do \
		[ -e "$$script" ] || continue; \
		echo "== $$script"; \
		$(PY) -m devtools.embedded exec -- $(PY) "$$script"; \
	done

# The platform as a wheel (dist/), with the admin's browser code in it.
wheel: $(STAMP) $(VENDOR_STAMP)
	$(PY) -m pip wheel --quiet --disable-pip-version-check --no-deps --wheel-dir dist .

# The container image and the production-like stack (docs/deployment.md).
image:
	bash deploy/build.sh

# Builds the image, starts the stack, walks the quick start, kills a calc container, checks the
# intervals against a from-scratch calculation, removes everything it started.
stack-test:
	bash deploy/stack-test.sh
