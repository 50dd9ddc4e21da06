# Set-up and entry points. Everything runs inside .venv, created on first use.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

DEMO_DIR ?= demo
DEMO_CFG ?= configs/demo_cpu.yaml
DEMO_NUM ?= 1500
# The run directory of DEMO_CFG (OUTPUT/MODEL.NAME/TAG); its .trained stamp means main.py finished there.
DEMO_RUN ?= output/demo_cpu/default
APP_PORT ?= 7860

.PHONY: install test test-fast lint browser tmux demo app clean-demo

install: $(STAMP)

# requirements-app.txt (gradio) goes in without dependency resolution: see that file.
$(STAMP): requirements.txt requirements-test.txt requirements-app.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade --quiet pip
	$(PY) -m pip install -r requirements.txt -r requirements-test.txt
	$(PY) -m pip install --no-deps -r requirements-app.txt
	$(PY) -m pip install --quiet --no-deps --no-build-isolation -e .
	touch $(STAMP)

# One pytest worker per core (pytest-xdist), each test file on one worker; tests/conftest.py splits the
# cores' threads between the workers.
PYTEST := $(PY) -m pytest -q -n auto --dist loadfile

test: $(STAMP) browser tmux
	$(PYTEST) tests

# The quick part (a few minutes on 2 cores): no slow, browser or real-data test (markers in pyproject.toml).
test-fast: $(STAMP)
	$(PYTEST) tests -m "not slow and not browser and not real_data"

# ruff (rules in pyproject.toml): pyflakes, pycodestyle, import order, bugbear.
lint: $(STAMP)
	$(VENV)/bin/ruff check .

# Debian's Chromium, which the browser tests (tests/test_app.py) drive through Playwright; needs root.
browser:
	@test -x /usr/bin/chromium || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium)

# Debian's tmux, for the detached-training test of scripts/train_tmux.sh; needs root.
tmux:
	@command -v tmux >/dev/null || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq tmux)

# The main job on the embedded default: synthetic Kaggle-layout leaves -> one-hot tree -> train -> test ->
# Grad-CAM of the first test leaf of each class.
demo: $(DEMO_RUN)/.trained
	$(PY) test.py --cfg $(DEMO_CFG) --data-path $(DEMO_DIR)/dataset
	$(PY) visual.py --cfg $(DEMO_CFG)

# The demo model in the web page at http://127.0.0.1:$(APP_PORT) (Ctrl-C stops it).
app: $(DEMO_RUN)/.trained
	$(PY) app.py --cfg $(DEMO_CFG) --port $(APP_PORT)

# Prepared tree and trained model; an interrupted training resumes when this runs again.
$(DEMO_RUN)/.trained: $(DEMO_DIR)/raw/train.csv $(DEMO_CFG) | $(STAMP)
	$(PY) process/prepare.py --src $(DEMO_DIR)/raw --dst $(DEMO_DIR)/dataset --size 160
	$(PY) main.py --cfg $(DEMO_CFG) --data-path $(DEMO_DIR)/dataset
	touch $@

# train.csv is written last: its presence means the synthetic dataset is complete.
$(DEMO_DIR)/raw/train.csv: | $(STAMP)
	$(PY) process/synthesize.py --out $(DEMO_DIR)/raw --num $(DEMO_NUM) --seed 0

clean-demo:
	rm -rf $(DEMO_DIR) output/demo_cpu
