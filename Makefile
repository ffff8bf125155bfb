# The two commands of the README:  `make demo` (the main job) and `make test`.
PYTHON ?= python3
PIP := $(PYTHON) -m pip
CHECKPOINT ?=
comma := ,

# torch first, pinned to the release the project is tested with, and only when none is installed
# (on the project machines pip finds its CPU build on disk instead of a multi-GB CUDA download)
install:
	@$(PYTHON) -c "import torch" 2>/dev/null || $(PIP) install -q "torch==2.13.*"
	@$(PIP) install -q -e ".[dev]"

demo: install
	$(PYTHON) -m maskml segment examples/truck.jpg --model mobile_sam --point 500,375 \
		--out out/truck_mask.png --overlay out/truck_overlay.jpg $(if $(CHECKPOINT),--checkpoint $(CHECKPOINT))

# Tests that need system packages: each *-test-deps target installs them from apt (as root, or sudo)
# when its check fails; elsewhere it stops with one line naming what to install.
SUDO := $(if $(filter 0,$(shell id -u)),,sudo)
# $(call apt_install,CHECK,PACKAGES,WHAT): run CHECK (a shell condition); when it fails, apt-get PACKAGES
define apt_install
	@if ! { $(1); }; then \
		if ! command -v apt-get >/dev/null || { [ -n "$(SUDO)" ] && ! command -v sudo >/dev/null; }; then \
			echo "make test needs $(3) (Debian/Ubuntu packages: $(2)): there is no apt-get (or no root / sudo" \
				"to run it) here, so install them with your package manager, or run \`make test-core\` to" \
				"run every test but those" >&2; \
			exit 1; fi; \
		$(SUDO) apt-get update -q && $(SUDO) apt-get install -y -q --no-install-recommends $(2); fi
endef

# The demo window's test needs a virtual display (Xvfb), xdotool to click in it, and OpenCV's
# desktop build: that one goes into its own folder, put on PYTHONPATH by that test only, so the
# installed opencv-python-headless stays as it is.
GUI_OPENCV := build/opencv-gui
WINDOW_TEST_APT_PACKAGES := xvfb xdotool libgl1 libglib2.0-0 libsm6 libice6 libxext6 libx11-6

# The browser tests of `maskml serve` drive Debian's Chromium (apt's chromium; Playwright's own browser
# download is never used) through Playwright for Python, which `install` brings with the dev extra.
CHROMIUM := /usr/bin/chromium

# The Docker images' test needs a Docker engine (Debian's docker.io: the test starts its dockerd
# when none answers) and debootstrap, which builds the test's base image where no container
# registry is reached.
DOCKER_TEST_APT_PACKAGES := docker.io debootstrap

.PHONY: install demo test test-core bench window-test-deps browser-test-deps docker-test-deps onnx-web-deps

window-test-deps: install
	@version=$$($(PYTHON) -c "from importlib.metadata import version; print(version('opencv-python-headless'))"); \
	test -d $(GUI_OPENCV)/opencv_python-$$version.dist-info || { rm -rf $(GUI_OPENCV) && \
		$(PIP) install -q --no-deps --target $(GUI_OPENCV) "opencv-python==$$version"; }
	$(call apt_install,command -v Xvfb >/dev/null && command -v xdotool >/dev/null && \
		PYTHONPATH=$(GUI_OPENCV) $(PYTHON) -c "import cv2" 2>/dev/null,$(WINDOW_TEST_APT_PACKAGES),Xvfb$(comma) \
		xdotool and OpenCV's GL/X libraries for the demo window's test)

browser-test-deps: install
	$(call apt_install,[ -x $(CHROMIUM) ],chromium,Chromium at $(CHROMIUM) for the browser tests of maskml serve)

docker-test-deps:
	$(call apt_install,command -v debootstrap >/dev/null && \
		{ command -v dockerd >/dev/null || docker info >/dev/null 2>&1; },$(DOCKER_TEST_APT_PACKAGES),a Docker \
		engine and debootstrap for the Docker images' test)

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

test: install window-test-deps browser-test-deps docker-test-deps onnx-web-deps
	$(call run_pytest)

# Opt-in, for systems without apt or root: every test but the demo window's (Xvfb and xdotool), the
# browser tests of maskml serve (Chromium) and the Docker images' (a Docker engine, debootstrap as root)
test-core: install onnx-web-deps
	$(call run_pytest,--deselect tests/test_demo.py::test_window_under_xvfb --ignore tests/test_serve_browser.py --ignore tests/test_docker.py)

bench: install
	$(PYTHON) benchmarks/bench_sam.py
