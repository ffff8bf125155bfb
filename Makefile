# The two commands of the README:  `make demo` (the main job) and `make test`.
PYTHON ?= python3
PIP := $(PYTHON) -m pip
CHECKPOINT ?=

.PHONY: install demo test bench

# torch first, pinned to the release the project is tested with, and only when none is installed
# (on the project machines pip finds its CPU build on disk instead of a multi-GB CUDA download)
install:
	@$(PYTHON) -c "import torch" 2>/dev/null || $(PIP) install -q "torch==2.13.*"
	@$(PIP) install -q -e ".[dev]"

demo: install
	$(PYTHON) -m maskml segment examples/truck.jpg --model mobile_sam --point 500,375 \
		--out out/truck_mask.png --overlay out/truck_overlay.jpg $(if $(CHECKPOINT),--checkpoint $(CHECKPOINT))

# pytest exits 5 when it collected nothing: that is a failure here, not a pass
test: install
	@$(PYTHON) -m pytest -q -p no:cacheprovider; status=$$?; \
	if [ $$status -eq 5 ]; then echo "pytest collected no tests" >&2; exit 1; fi; exit $$status

bench: install
	$(PYTHON) benchmarks/bench_sam.py
