# The README names these targets. `make demo` and `make test` each do all set-up on a fresh machine.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# Extras installed with the package: `test` for development and CI; Dockerfile.gpu runs this same
# target with EXTRAS=gpu (GPU image: + xformers, onnxruntime-gpu in place of onnxruntime) or EXTRAS= (CPU image: the package alone).
EXTRAS ?= test
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1

.PHONY: install demo embed-demo test test-all test-deps typecheck lint openapi postman test-postman bench redis clean gpu-check gpu-check-smoke

$(BIN)/gensvc: pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.$(if $(strip $(EXTRAS)),[$(EXTRAS)])'
	$(if $(findstring gpu,$(EXTRAS)),$(BIN)/python -m pip uninstall -q -y onnxruntime && $(BIN)/python -m pip install -q --no-deps --force-reinstall onnxruntime-gpu)
	touch $(BIN)/gensvc

install: $(BIN)/gensvc

redis:
	@scripts/ensure-redis

# Servers the tests start themselves (redis-server, redis-sentinel), apt-installed when missing.
test-deps:
	@scripts/ensure-test-deps

# Starts Redis (if none answers), the gateway and a worker on the embedded demo model,
# generates one image into ./demo.png, then stops everything.
demo: install
	$(BIN)/gensvc demo --out demo.png

# Makes a trained shapes bundle the embedded `demo` model (no checkpoints, card re-rendered, the
# Walkthrough's LoRA rewritten for its UNet, all staged in git): make embed-demo BUNDLE=/path/to/bundle
embed-demo: install
	@test -n "$(BUNDLE)" || { echo "usage: make embed-demo BUNDLE=DIR" >&2; exit 2; }
	$(BIN)/python scripts/embed-demo $(BUNDLE)

# Type check first (seconds with mypy's cache): a type error fails CI before any test runs.
typecheck: install
	$(BIN)/python -m mypy

test: install test-deps redis typecheck
	@$(BIN)/python -m pytest -q -m "not slow and not gpu" --durations=30; rc=$$?; \
	  if [ $$rc -eq 5 ]; then echo "no tests collected"; exit 0; fi; exit $$rc

test-all: install test-deps redis
	$(BIN)/python -m pytest -q -m "not gpu"

lint: install
	$(BIN)/ruff check generative_service workers tests benchmarks
	$(BIN)/ruff format --check generative_service workers tests benchmarks
	$(BIN)/python -m mypy

openapi: install
	$(BIN)/python -m generative_service.openapi_export

# The Postman collection's Walkthrough, run by newman (npm-installed into .cache/newman) against a
# live service: POSTMAN_URL (default GENSVC_URL, else http://127.0.0.1:8000), POSTMAN_API_KEY.
postman:
	scripts/postman

# CI's second step (.ci/run): newman runs the Walkthrough against a service the test starts (gateway +
# worker on the tiny model), every assertion must pass. Slow-marked (minutes), so not in `make test`.
test-postman: install test-deps redis
	@command -v npm >/dev/null || { echo "test-postman: npm is needed for newman (apt-get install npm)" >&2; exit 1; }
	$(BIN)/python -m pytest -q -m slow tests/clients/test_postman.py

bench: install redis
	$(BIN)/python -m benchmarks.run_all

# One command for whoever has a CUDA machine for ten minutes: full-size SDXL (random weights),
# the service's own configuration and every engine backend, the upscaler, 10 jobs through the
# API; writes the gpu-check section of benchmarks/REPORT.md. The smoke run checks it on the CPU.
gpu-check: install redis
	$(BIN)/python benchmarks/gpu_check.py

gpu-check-smoke: install redis
	$(BIN)/python benchmarks/gpu_check.py --smoke --no-report

clean:
	rm -rf $(VENV) .pytest_cache
