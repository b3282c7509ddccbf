# revsearch: `make serve` sets everything up and starts the service; `make test` runs the tests.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
DATA_DIR ?= data
PORT ?= 50051
# Offline, `make serve` needs no flag: models whose weights cannot be had (ResNet50 here) are skipped
# with the reason and the command that adds them, and new image collections default to resnet50 when
# it is trained, else to efficientnet_lite0 (ImageNet weights from the package registry).
# UNTRAINED=1 builds and serves a seeded untrained ResNet50 when no pretrained weights can be had (tests).
UNTRAINED ?=
WEIGHTS ?=
UNTRAINED_FLAG := $(if $(UNTRAINED),--allow-untrained,)
PYTEST_ARGS ?=

.PHONY: venv protos models serve test test-unit bench clean help

help:
	@echo "make serve [UNTRAINED=1] [WEIGHTS=path]  set up .venv, build models, start Triton + server on :$(PORT)"
	@echo "make test                                 run all tests (unit, service, integration)"
	@echo "make bench                                run the benchmarks into benchmarks/results/"
	@echo "make protos                               regenerate the gRPC stubs into clients/"

# requirements.txt serves; requirements-build.txt adds torch & co. for the model build and the tests.
$(VENV)/.installed: requirements.txt requirements-build.txt pyproject.toml testkit/pyproject.toml
	@$(PYTHON) -c 'import sys; assert sys.version_info[:2] == (3, 11), "Python 3.11 is required (Triton stub)"' \
	  || { echo "set PYTHON=python3.11"; exit 1; }
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements-build.txt
	# Only its bundled tritonserver binary is used; its own pins would fight ours.
	$(PY) -m pip install --quiet --no-deps nvidia-pytriton==0.7.0
	$(PY) -m pip install --quiet --no-deps -e .
	# The tests' and benchmarks' harnesses (revsearch_testkit): a distribution of its own, never in `pip install .`.
	$(PY) -m pip install --quiet --no-deps -e testkit
	touch $@

venv: $(VENV)/.installed

protos: venv
	$(PY) scripts/gen_protos.py

# WEIGHTS is ResNet50's weights file; the other models find theirs themselves.
models: venv
	$(if $(WEIGHTS),$(PY) scripts/build_models.py --models resnet50 --weights $(WEIGHTS))
	$(PY) scripts/build_models.py $(UNTRAINED_FLAG)

serve: models
	$(VENV)/bin/revsearch-server --port $(PORT) --data-dir $(DATA_DIR) $(UNTRAINED_FLAG)

test: venv
	$(PY) scripts/build_models.py --allow-untrained
	$(PY) -m pytest -ra $(PYTEST_ARGS)

test-unit: venv
	$(PY) -m pytest -ra tests/unit $(PYTEST_ARGS)

bench: venv
	$(PY) scripts/build_models.py $(UNTRAINED_FLAG)
	$(PY) benchmarks/bench_embedding_throughput.py $(UNTRAINED_FLAG)
	$(PY) benchmarks/bench_face_pipeline.py

clean:
	rm -rf $(VENV) $(DATA_DIR) model_repository/*/1/model.onnx model_repository/*/build_info.json
