# The two commands of the README:  `make demo` (the main job) and `make test`.
PYTHON ?= python3
PIP := $(PYTHON) -m pip
CHECKPOINT ?=

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
# installed opencv-python-headless stays as it is. System packages come from apt (as root, or sudo);
# elsewhere the target stops with one line naming what to install.
GUI_OPENCV := build/opencv-gui
SUDO := $(if $(filter 0,$(shell id -u)),,sudo)
WINDOW_TEST_APT_PACKAGES := xvfb xdotool libgl1 libglib2.0-0 libsm6 libice6 libxext6 libx11-6
WINDOW_TEST_NEEDS := make test needs Xvfb, xdotool and OpenCV's GL/X libraries for the demo window's test \
	(Debian/Ubuntu packages: $(WINDOW_TEST_APT_PACKAGES))

.PHONY: install demo test test-core bench window-test-deps onnx-web-deps

window-test-deps: install
	@version=$$($(PYTHON) -c "from importlib.metadata import version; print(version('opencv-python-headless'))"); \
	test -d $(GUI_OPENCV)/opencv_python-$$version.dist-info || { rm -rf $(GUI_OPENCV) && \
		$(PIP) install -q --no-deps --target $(GUI_OPENCV) "opencv-python==$$version"; }
	@if ! command -v Xvfb >/dev/null || ! command -v xdotool >/dev/null || \
			! PYTHONPATH=$(GUI_OPENCV) $(PYTHON) -c "import cv2" 2>/dev/null; then \
		if ! command -v apt-get >/dev/null || { [ -n "$(SUDO)" ] && ! command -v sudo >/dev/null; }; then \
			echo "$(WINDOW_TEST_NEEDS): there is no apt-get (or no root / sudo to run it) here, so install" \
				"them with your package manager, or run \`make test-core\` to run every test but that one" >&2; \
			exit 1; fi; \
		$(SUDO) apt-get update -q && $(SUDO) apt-get install -y -q --no-install-recommends \
			$(WINDOW_TEST_APT_PACKAGES); fi

# The browser decoder's test (tests/test_onnx_web.py) runs the exported decoder in onnxruntime-web under Node:
# the pinned package goes into build/ once (npm from Node.js 18 or later)
ONNX_WEB := build/onnxruntime-web
ONNX_WEB_VERSION := 1.31.1

onnx-web-deps:
	@grep -qs '"version": "$(ONNX_WEB_VERSION)"' $(ONNX_WEB)/node_modules/onnxruntime-web/package.json || { \
		command -v npm >/dev/null || { echo "make test needs Node.js 18+ with npm for the browser decoder's test" \
			"(tests/test_onnx_web.py): install Node.js from your package manager or nodejs.org" >&2; exit 1; }; \
		npm install --prefix $(ONNX_WEB) --save-exact --no-audit --no-fund --loglevel=error \
			onnxruntime-web@$(ONNX_WEB_VERSION); }

# pytest exits 5 when it collected nothing: that is a failure here, not a pass
run_pytest = @$(PYTHON) -m pytest -q -p no:cacheprovider $(1); status=$$?; \
	if [ $$status -eq 5 ]; then echo "pytest collected no tests" >&2; exit 1; fi; exit $$status

test: install window-test-deps onnx-web-deps
	$(call run_pytest)

# Opt-in, for systems without apt: every test but the demo window's (which needs Xvfb and xdotool)
test-core: install
	$(call run_pytest,--deselect tests/test_demo.py::test_window_under_xvfb)

bench: install
	$(PYTHON) benchmarks/bench_sam.py
