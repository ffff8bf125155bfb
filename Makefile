# The two commands of the README:  `make demo` (the main job) and `make test`.
PYTHON ?= python3
PIP := $(PYTHON) -m pip
CHECKPOINT ?=

.PHONY: install demo test bench window-test-deps

# torch first, pinned to the release the project is tested with, and only when none is installed
# (on the project machines pip finds its CPU build on disk instead of a multi-GB CUDA download)
install:
	@$(PYTHON) -c "import torch" 2>/dev/null || $(PIP) install -q "torch==2.13.*"
	@$(PIP) install -q -e ".[dev]"

demo: install
	$(PYTHON) -m maskml segment examples/truck.jpg --model mobile_sam --point 500,375 \
		--out out/truck_mask.png --overlay out/truck_overlay.jpg $(if $(CHECKPOINT),--checkpoint $(CHECKPOINT))

# The demo window's test needs a virtual display (Xvfb), xdotool to click in it, and OpenCV's
# desktop build: that one goes into its own folder, put on PYTHONPATH by that test only, so the
# installed opencv-python-headless stays as it is. System packages come from apt (as root, or sudo).
GUI_OPENCV := build/opencv-gui
SUDO := $(if $(filter 0,$(shell id -u)),,sudo)

window-test-deps: install
	@version=$$($(PYTHON) -c "from importlib.metadata import version; print(version('opencv-python-headless'))"); \
	test -d $(GUI_OPENCV)/opencv_python-$$version.dist-info || { rm -rf $(GUI_OPENCV) && \
		$(PIP) install -q --no-deps --target $(GUI_OPENCV) "opencv-python==$$version"; }
	@if ! command -v Xvfb >/dev/null || ! command -v xdotool >/dev/null || \
			! PYTHONPATH=$(GUI_OPENCV) $(PYTHON) -c "import cv2" 2>/dev/null; then \
		$(SUDO) apt-get update -q && $(SUDO) apt-get install -y -q --no-install-recommends \
			xvfb xdotool libgl1 libglib2.0-0 libsm6 libice6 libxext6 libx11-6; fi

# pytest exits 5 when it collected nothing: that is a failure here, not a pass
test: install window-test-deps
	@$(PYTHON) -m pytest -q -p no:cacheprovider; status=$$?; \
	if [ $$status -eq 5 ]; then echo "pytest collected no tests" >&2; exit 1; fi; exit $$status

bench: install
	$(PYTHON) benchmarks/bench_sam.py
