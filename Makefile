# Two commands do all set-up on a fresh machine: `make run` and `make test`.
SHELL := /bin/bash
PYTHON ?= python3.11
UV_VERSION := 0.13.9
UV := .tools/bin/uv
PY := .venv/bin/python
SERVICES := order payment minting stamping
export SSL_CERT_FILE ?= /etc/ssl/certs/ca-certificates.crt
export UV_PYTHON_DOWNLOADS := never

.PHONY: run test fuzz setup servers packages browser web venv lint bench-messaging bench-callbacks bench-stamping rush rush-cluster chaos cluster cluster-stop cluster-status prometheus clean

## run: set everything up, then supervise every api, worker and relay and the ingress on :8080 (Ctrl-C stops all)
run: setup
	EMETERAI_LOG_JSON=$${EMETERAI_LOG_JSON:-false} EMETERAI_TRUSTED_PROXIES=$${EMETERAI_TRUSTED_PROXIES-127.0.0.1,::1} \
	  exec .venv/bin/honcho start -f Procfile

## test: set everything up, then run the whole suite against the real servers: in TEST_WORKERS (2) processes,
## a test file to each, then alone the tests that restart RabbitMQ or PostgreSQL (marked restarts_servers)
TEST_WORKERS ?= 2
test: venv servers packages browser web
	@$(PY) -m pytest -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder -m "not restarts_servers" $(PYTEST_ARGS); together=$$?; \
	$(PY) -m pytest -m restarts_servers $(PYTEST_ARGS); alone=$$?; \
	if [ $$together -eq 5 ] && [ $$alone -eq 5 ]; then exit 5; fi; \
	[ $$together -eq 5 ] && together=0; [ $$alone -eq 5 ] && alone=0; \
	echo "make test: $$together (together), $$alone (alone; 0 = passed)"; [ $$together -eq 0 ] && [ $$alone -eq 0 ]

## fuzz: schemathesis over the four services, FUZZ_EXAMPLES (200) cases per operation from FUZZ_SEED (random)
FUZZ_EXAMPLES ?= 200
ifndef FUZZ_SEED
FUZZ_SEED := $(shell od -An -N4 -tu4 /dev/urandom | tr -d ' ')
endif
fuzz: venv servers
	@echo "fuzzing with FUZZ_SEED=$(FUZZ_SEED) FUZZ_EXAMPLES=$(FUZZ_EXAMPLES)"
	FUZZ_EXAMPLES=$(FUZZ_EXAMPLES) FUZZ_SEED=$(FUZZ_SEED) $(PY) -m pytest tests/test_fuzz.py --timeout 0 $(PYTEST_ARGS)

## setup: databases, migrations and broker topology for every service
setup: venv servers packages web
	$(PY) -m payment_service dev-bank
	@for s in $(SERVICES); do $(PY) -m $${s}_service setup || exit 1; done
	$(PY) -m minting_service stock ensure --min 100000

servers:
	@scripts/ensure-servers

## web: build the applicants' page into web/dist (npm ci from web/package-lock.json, then vite build)
web: web/dist/index.html

web/dist/index.html: web/package-lock.json web/vite.config.js web/index.html $(wildcard web/src/*)
	cd web && npm ci --no-audit --no-fund --loglevel=error && npm run build --silent
	@touch $@

## browser: Debian's chromium for the browser tests (Playwright drives it; no browser download)
browser:
	@scripts/ensure-packages chromium

## packages: Debian packages beside the servers (nginx-light for the ingress), installed when missing
packages:
	@scripts/ensure-packages
	@scripts/ensure-promtool

venv: .venv/.synced

$(UV):
	$(PYTHON) -m venv .tools
	.tools/bin/pip install -q uv==$(UV_VERSION)

.venv/.synced: $(UV) uv.lock pyproject.toml shared/pyproject.toml testkit/pyproject.toml $(wildcard services/*/pyproject.toml)
	$(UV) sync --frozen --python $(PYTHON)
	@touch $@

## lint: ruff over the tree, mypy (strict) over the kernel, the four services, the test kit and bench
lint: venv
	.venv/bin/ruff check shared services testkit tests bench
	.venv/bin/mypy -p emeterai_shared -p emeterai_testkit -p order_service -p payment_service \
	  -p minting_service -p stamping_service -p bench

## bench-messaging: raw commit and confirm ceilings beside the outbox pipeline rate
bench-messaging: venv servers
	$(PY) -m bench.messaging

## bench-callbacks: signed SNAP payment callbacks/s end to end beside a trivial aiohttp endpoint
bench-callbacks: venv servers
	$(PY) -m bench.callbacks

## bench-stamping: stamped and signed documents/s through the service beside a plain pyHanko loop
bench-stamping: venv servers
	$(PY) -m bench.stamping

## rush: a registration rush of BUYERS applicants, QRIS_SHARE of them paying by QRIS (platform started if down);
## ACQUIRER_OUTAGE=N stops the QRIS acquirer for N s during the purchases; report in bench/results/latest.json
BUYERS ?= 2000
QRIS_SHARE ?= 0.5
ACQUIRER_OUTAGE ?= 0
rush: venv servers
	$(PY) -m bench.rush --buyers $(BUYERS) --qris-share $(QRIS_SHARE) --acquirer-outage-s $(ACQUIRER_OUTAGE)

## chaos: CHAOS_BUYERS applicants (200) while RabbitMQ, PostgreSQL and workers fail; invariants checked after
## (CLUSTER=1: on a three-node RabbitMQ cluster of its own: a node killed, partitioned, a rolling restart; invariants checked after each)
chaos: venv servers
	$(PY) -m bench.chaos $(if $(filter-out 0,$(CLUSTER)),--cluster)

## rush-cluster: the cost of replication: RUSH_CLUSTER_BUYERS (150, at most 300) buying against the machine's broker, then a three-node cluster
RUSH_CLUSTER_BUYERS ?= 150
rush-cluster: venv servers
	$(PY) -m bench.cluster_rush --buyers $(RUSH_CLUSTER_BUYERS)

## cluster: a three-node RabbitMQ cluster of its own (CLUSTER_CMD=start|stop|status; data in var/cluster), beside the machine's broker
CLUSTER_CMD ?= start
cluster: venv
	$(PY) -m emeterai_testkit.cluster $(CLUSTER_CMD)
cluster-stop cluster-status: venv
	$(PY) -m emeterai_testkit.cluster $(@:cluster-%=%)

## prometheus: scrape the `make run` processes with the alert rules (Debian's prometheus package)
prometheus:
	@if command -v prometheus >/dev/null; then \
	  mkdir -p var/prometheus && \
	  exec prometheus --config.file=ops/prometheus/prometheus.yml --storage.tsdb.path=var/prometheus \
	    --web.listen-address=127.0.0.1:9090; \
	else \
	  echo "prometheus is not installed: sudo apt-get install prometheus (Debian), then make prometheus"; \
	  echo "(the packaged service may already listen on :9090: sudo systemctl stop prometheus)"; \
	  exit 1; \
	fi

clean:
	rm -rf .venv .tools .pytest_cache web/node_modules web/dist
