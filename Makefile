# The two commands a newcomer needs are `make run` and `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
FLASK := $(VENV)/bin/flask --app wsgi
PG_ADMIN_URL ?= postgresql://postgres@127.0.0.1:5432/postgres
TEST_REDIS_URL ?= redis://127.0.0.1:6379/15

.PHONY: venv run test test-sqlite test-postgres lint bench clean

$(VENV)/.installed: requirements.txt requirements-dev.txt
	python3.11 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements-dev.txt
	touch $@

venv: $(VENV)/.installed  ## create the virtual environment and install pinned packages

run: venv  ## migrate, seed demo data; serve http://127.0.0.1:5000 with a worker and beat (SQLite, no servers)
	$(FLASK) db upgrade
	$(FLASK) pricing sync
	$(FLASK) demo seed
	$(PY) scripts/run_embedded.py

test: venv lint test-sqlite test-postgres  ## the whole suite on SQLite, then on PostgreSQL + Redis

test-sqlite: venv
	CREDITAPP_TEST_DATABASE=sqlite $(PY) -m pytest -p no:cacheprovider

test-postgres: venv
	CREDITAPP_TEST_DATABASE=postgresql TEST_PG_ADMIN_URL=$(PG_ADMIN_URL) \
	TEST_REDIS_URL=$(TEST_REDIS_URL) $(PY) -m pytest -p no:cacheprovider

lint: venv  ## ruff and mypy
	$(VENV)/bin/ruff check creditapp tasks tests bench migrations scripts wsgi.py celery_worker.py
	$(VENV)/bin/ruff format --check creditapp tasks tests bench migrations scripts wsgi.py celery_worker.py
	$(VENV)/bin/mypy

bench: venv  ## benchmarks on PostgreSQL; see docs/benchmarks.md
	PG_ADMIN_URL=$(PG_ADMIN_URL) $(PY) bench/ledger.py
	PG_ADMIN_URL=$(PG_ADMIN_URL) $(PY) bench/messages.py
	PG_ADMIN_URL=$(PG_ADMIN_URL) $(PY) bench/usage.py

clean:
	rm -rf $(VENV) instance .pytest_cache .mypy_cache .ruff_cache
