# The front door: `make help` lists the targets.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
LOCK_HASH := $(shell cat requirements.txt requirements.lock 2>/dev/null | sha256sum | cut -c1-12)
STAMP := $(VENV)/.installed-$(LOCK_HASH)
SAMPLE ?= data/clicks
RUN_DATE ?= 2026-01-09

export SPARK_LOCAL_IP := 127.0.0.1
export PYTHONHASHSEED := 0
export HNSWLIB_NO_NATIVE := 1
export AIRFLOW_HOME := $(CURDIR)/.airflow
export AIRFLOW__CORE__LOAD_EXAMPLES := False
export AIRFLOW__CORE__DAGS_FOLDER := $(CURDIR)/dags
export AIRFLOW__CORE__UNIT_TEST_MODE := False

.PHONY: help install run serve airflow test test-fast lint fmt bench bench-train bench-data bench-quality bench-serve bench-e2e chaos clean spark-up spark-down report-png

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-12s %s\n", $$1, $$2}'

install: $(STAMP) ## create .venv and install the locked requirements (again only when the lock changes)

$(STAMP): requirements.txt requirements.lock
	@test -x $(PY) || python3 -m venv $(VENV)
	@echo "== installing the locked requirements into $(VENV) (a few minutes the first time)"
	@set -o pipefail; HNSWLIB_NO_NATIVE=1 $(PY) -m pip install --disable-pip-version-check -q \
		-r requirements.txt -c requirements.lock 2>&1 | { grep -v "is ignored: it is neither" || true; }
	@$(PY) -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])' | xargs -I{} sh -c 'echo "$(CURDIR)" > {}/item_embeddings_project.pth'
	@rm -f $(VENV)/.installed-*; touch $@

$(AIRFLOW_HOME)/airflow.db: | $(STAMP)
	@mkdir -p $(AIRFLOW_HOME)
	$(VENV)/bin/airflow db migrate > $(AIRFLOW_HOME)/migrate.log 2>&1 || (tail -20 $(AIRFLOW_HOME)/migrate.log; exit 1)

$(SAMPLE): | $(STAMP)
	$(PY) -m embedding generate --out $(SAMPLE) --events 200000 --days 8 --profile standard

run: install $(SAMPLE) $(AIRFLOW_HOME)/airflow.db ## sample log -> daily DAG once (airflow dags test) -> print version, metrics, neighbours
	@echo "== airflow dags test item_embeddings $(RUN_DATE) (data interval: the day before; log in $(AIRFLOW_HOME)/dags_test.log)"
	@$(VENV)/bin/airflow dags test item_embeddings $(RUN_DATE) > $(AIRFLOW_HOME)/dags_test.log 2>&1 \
		|| (grep -E "ERROR|Error|error:" $(AIRFLOW_HOME)/dags_test.log | tail -20; exit 1)
	@$(PY) -m embedding -q versions --last-run
	@$(PY) -m serving.probe --publish-root publish --k 5

serve: install ## start the service on 127.0.0.1:8000 over ./publish
	$(PY) -m serving --publish-root publish

airflow: install $(AIRFLOW_HOME)/airflow.db ## Airflow's UI on 127.0.0.1:8080 with the DAGs (prints how to log in; Ctrl-C stops)
	$(PY) -m embedding.devtools.airflow_local --home $(AIRFLOW_HOME)

test: install ## lint, then the whole test suite (real Spark, Airflow, Parquet, HTTP)
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check .
	$(PY) -m pytest

test-fast: install ## the suite without the slow end-to-end scenarios
	$(PY) -m pytest -m "not slow"

lint: install ## ruff check and format check
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check .

fmt: install ## ruff format and autofix
	$(VENV)/bin/ruff format . && $(VENV)/bin/ruff check --fix .

bench: bench-train bench-data bench-quality bench-serve bench-e2e ## every benchmark -> bench/results/

bench-train: install ## skip-gram wrapper vs raw gensim on the same corpus -> bench/results/train.json
	$(PY) -m bench.bench_train

bench-quality: install ## default config vs baselines and text defaults, 3 seeds, trivago/yoochoose/globo + generator standard/sparse -> bench/results/quality.json
	$(PY) -m bench.bench_quality

bench-data: install ## Spark sessionize vs the same rules in DuckDB, 1M/3M/10M events -> bench/results/data.json
	$(PY) -m bench.bench_data

bench-serve: install ## load test of python -m serving over 1M published vectors (recall, p99, swap under load) -> bench/results/serve.json
	$(PY) -m bench.bench_serve

chaos: install ## SIGKILL the pipeline at 15 points (CLI) and 7 (airflow dags test), rerun, compare with an undisturbed run; two concurrent runs -> bench/results/chaos.json
	$(PY) -m bench.bench_chaos

bench-e2e: install ## the whole daily DAG (airflow dags test, cold start) on 1M generated events, stage times, vs the CLI -> bench/results/e2e.json
	$(PY) -m bench.bench_e2e

report-png: install ## the published version's report (VERSION=..., default CURRENT) as a PNG via headless Chromium -> bench/results/report.png
	@command -v chromium >/dev/null || { \
		SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
		echo "== chromium missing: $${SUDO:+sudo }apt-get install -y chromium"; \
		$$SUDO apt-get update -q && $$SUDO apt-get install -y -q chromium; }
	$(PY) -m embedding report --out bench/results/report.html $(if $(VERSION),--version $(VERSION))
	@echo "== chromium --headless --screenshot (D-Bus warnings filtered)"
	@set -o pipefail; chromium --headless --no-sandbox --disable-gpu --hide-scrollbars --window-size=1400,8000 \
		--screenshot=$(abspath bench/results/report.png) file://$(abspath bench/results/report.html) 2>&1 \
		| { grep -vE 'dbus/|/usr/bin/chromium: [0-9]+: \[' || true; }
	@echo "== wrote $(abspath bench/results/report.png) (from $(abspath bench/results/report.html))"

clean: ## remove generated data, published versions and the Airflow home (keeps .venv)
	rm -rf data publish .airflow bench/results spark-warehouse

spark-up: install ## start a standalone Spark master and worker on 127.0.0.1:7077 (UI: see output)
	$(PY) -m jobs.cluster up

spark-down: ## stop the standalone Spark cluster
	$(PY) -m jobs.cluster down
