# Two commands on a fresh machine with only python3: `make run` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
ARGS ?=

.PHONY: run test bench clean browser test-tools screenshot

# Debian's python3 ships venv without ensurepip until python3-venv is installed.
$(PY):
	$(PYTHON) -m venv $(VENV) || { rm -rf $(VENV); apt-get update -qq && apt-get install -y -qq python3-venv && $(PYTHON) -m venv $(VENV); }

# The project itself is installed (editable), so examples/ can `import connection`.
$(VENV)/.installed: $(PY) requirements.txt setup.py
	$(PY) -m pip install -q --disable-pip-version-check -r requirements.txt
	$(PY) -m pip install -q --disable-pip-version-check --no-deps -e .
	touch $@

$(VENV)/.test-installed: $(VENV)/.installed requirements-test.txt
	$(PY) -m pip install -q --disable-pip-version-check -r requirements-test.txt
	touch $@

run: $(VENV)/.installed
	$(PY) broker.py $(ARGS)

# The dashboard's tests drive Debian's chromium; it is installed when missing. Where it cannot
# be (no root, no Debian archive) those tests are skipped and say why.
browser:
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null || \
	  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver; } || \
	  echo "could not install chromium: the dashboard tests will be skipped"

# Tools some tests need: strace (durability tests watch the broker's fsyncs) and a C compiler
# (the power-cut test builds its file-system shim), installed from Debian when missing.
# Where they cannot be, or may not run (no ptrace in a container), those tests are skipped
# and say why.
test-tools:
	@missing=""; command -v strace >/dev/null || missing="$$missing strace"; \
	  command -v cc >/dev/null || missing="$$missing gcc libc6-dev"; \
	  [ -z "$$missing" ] || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; } || \
	  echo "could not install$$missing: the tests that need them will be skipped"

test: $(VENV)/.test-installed browser test-tools
	$(PY) -m pytest -q tests

# The README's picture of the dashboard.
screenshot: $(VENV)/.test-installed browser
	$(PY) -m tests.dashboard_screenshot docs/dashboard.png

# BENCH_URL=amqp://guest:guest@127.0.0.1:5682/%2f measures a reference broker in the same run.
bench: $(VENV)/.test-installed
	$(PY) bench/throughput.py
	$(PY) bench/json_line_cost.py
	$(PY) bench/amqp_workloads.py $(if $(BENCH_URL),--url "$(BENCH_URL)")
	$(PY) bench/amqp_broker_bound.py $(if $(BENCH_URL),--url "$(BENCH_URL)")
	$(PY) bench/start_time.py
	$(PY) bench/connections.py
	$(PY) bench/watching.py
	$(PY) bench/queue_features.py $(if $(BENCH_URL),--url "$(BENCH_URL)")
	$(PY) bench/quorum.py $(if $(BENCH_URL),--url "$(BENCH_URL)")
	$(PY) bench/streams.py $(if $(BENCH_URL),--url "$(BENCH_URL)")

clean:
	rm -rf $(VENV) .pytest_cache
