# The two commands a newcomer needs are `make run` and `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
PG_ADMIN_URL ?= postgresql://postgres@127.0.0.1:5432/postgres
# The one setting for every Redis database `make test` touches: the suite's two processes use
# its database and the one below it (15, 14), the chaos step its database again, after them.
TEST_REDIS_URL ?= redis://127.0.0.1:6379/15
# Two processes per half (tests that need many connections share one; see docs/testing.md).
PYTEST := $(PY) -m pytest -p no:cacheprovider -n 2 --dist loadgroup
# Moments the suite runs at again, to prove no test depends on today's date.
SQLITE_CLOCKS := 2027-01-03T12:00:00Z 2028-02-29T12:00:00Z 2027-12-31T23:59:50Z
POSTGRES_CLOCK := 2027-12-31T23:59:00Z
PG_TEST_ENV := CREDITAPP_TEST_DATABASE=postgresql TEST_PG_ADMIN_URL=$(PG_ADMIN_URL) \
	TEST_REDIS_URL=$(TEST_REDIS_URL)

# The chaos run's short version in `make test`: a fixed seed, every kind of fault at least once.
CHAOS_SHORT := --seconds 45 --seed 3 --users 10 --warm-up 3 --fault-every 4

.PHONY: venv tools run test test-busy test-sqlite test-postgres test-chaos test-clock mutation lint bench chaos clean

$(VENV)/.installed: requirements.txt requirements-dev.txt
	python3.11 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements-dev.txt
	touch $@

venv: $(VENV)/.installed  ## create the virtual environment and install pinned packages

tools:  ## Debian's nginx, Chromium and promtool for the edge, browser and alert tests (when missing; root)
	@command -v nginx >/dev/null 2>&1 || test -x /usr/sbin/nginx || \
	  apt-get install -y nginx || (apt-get update && apt-get install -y nginx)
	@test -x /usr/bin/chromium || \
	  apt-get install -y chromium || (apt-get update && apt-get install -y chromium)
	@command -v promtool >/dev/null 2>&1 || apt-get install -y --no-install-recommends prometheus \
	  || (apt-get update && apt-get install -y --no-install-recommends prometheus)

run: venv  ## migrate, seed demo data; serve http://127.0.0.1:$PORT (default 5000) with a worker and beat (SQLite, no servers); FRESH=1 deletes the database of earlier runs first
	$(PY) scripts/run_embedded.py $(if $(filter 1,$(FRESH)),--fresh)

test: venv tools lint test-sqlite test-postgres test-chaos test-clock  ## the whole suite on SQLite, on PostgreSQL + Redis, a short chaos run, then with the clock moved

test-busy:  ## the whole suite while stress-ng keeps every core busy, as a loaded CI machine may be
	@command -v stress-ng >/dev/null 2>&1 || apt-get install -y stress-ng \
	  || (apt-get update && apt-get install -y stress-ng)
	stress-ng --cpu $$(nproc) --quiet & hog=$$!; \
	trap 'kill $$hog' EXIT; \
	$(MAKE) test

# The browser tests' screenshots of every page, kept as the run's artifacts.
test-sqlite: venv tools
	DASHBOARD_SCREENSHOTS=artifacts/screenshots CREDITAPP_TEST_DATABASE=sqlite $(PYTEST)

test-postgres: venv tools
	$(PG_TEST_ENV) $(PYTEST)

test-chaos: venv  ## a minute of the chaos run (bench/chaos.py) on PostgreSQL + Redis
	PG_ADMIN_URL=$(PG_ADMIN_URL) TEST_REDIS_URL=$(TEST_REDIS_URL) $(PY) bench/chaos.py $(CHAOS_SHORT)

chaos: venv  ## the chaos run: five minutes of load and faults (CHAOS_SECONDS=, CHAOS_SEED= to choose)
	PG_ADMIN_URL=$(PG_ADMIN_URL) TEST_REDIS_URL=$(TEST_REDIS_URL) $(PY) bench/chaos.py \
	  --seconds $(or $(CHAOS_SECONDS),300) $(if $(CHAOS_SEED),--seed $(CHAOS_SEED))

test-clock: venv  ## the suite again at other dates (a leap day, a year's last minute)
	for moment in $(SQLITE_CLOCKS); do \
	  CREDITAPP_TEST_CLOCK=$$moment LEDGER_MACHINE_EXAMPLES=20 CREDITAPP_TEST_DATABASE=sqlite \
	  $(PYTEST) -q || exit 1; \
	done
	CREDITAPP_TEST_CLOCK=$(POSTGRES_CLOCK) LEDGER_MACHINE_EXAMPLES=20 $(PG_TEST_ENV) $(PYTEST) -q

mutation: venv  ## mutation testing of the ledger, pricing and money code (docs/testing.md)
	rm -rf mutants
	CREDITAPP_TEST_DATABASE=sqlite LEDGER_MACHINE_EXAMPLES=10 LEDGER_MACHINE_SEED=1 \
	$(VENV)/bin/mutmut run
	$(VENV)/bin/mutmut results

lint: venv  ## ruff and mypy
	$(VENV)/bin/ruff check creditapp tasks tests bench migrations scripts wsgi.py celery_worker.py gunicorn.conf.py
	$(VENV)/bin/ruff format --check creditapp tasks tests bench migrations scripts wsgi.py celery_worker.py gunicorn.conf.py
	$(VENV)/bin/mypy

bench: venv  ## benchmarks on PostgreSQL; see docs/benchmarks.md
	PG_ADMIN_URL=$(PG_ADMIN_URL) $(PY) bench/ledger.py
	PG_ADMIN_URL=$(PG_ADMIN_URL) $(PY) bench/messages.py
	PG_ADMIN_URL=$(PG_ADMIN_URL) $(PY) bench/usage.py
	PG_ADMIN_URL=$(PG_ADMIN_URL) $(PY) bench/streaming.py
	PG_ADMIN_URL=$(PG_ADMIN_URL) $(PY) bench/gateway.py
	PG_ADMIN_URL=$(PG_ADMIN_URL) $(PY) bench/instructions.py

clean:
	rm -rf $(VENV) instance artifacts mutants .pytest_cache .mypy_cache .ruff_cache
