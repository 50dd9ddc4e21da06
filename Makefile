# Set-up and entry points. Everything runs inside .venv, created on first use.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

DEMO_DIR ?= demo
DEMO_CFG ?= configs/demo_cpu.yaml
DEMO_NUM ?= 1500

.PHONY: install test demo clean-demo

install: $(STAMP)

$(STAMP): requirements.txt requirements-test.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade --quiet pip
	$(PY) -m pip install -r requirements.txt -r requirements-test.txt
	$(PY) -m pip install --quiet --no-deps --no-build-isolation -e .
	touch $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q tests

# The main job on the embedded default: synthetic Kaggle-layout leaves -> one-hot tree -> train -> test ->
# Grad-CAM of the first test leaf of each class folder.
demo: $(STAMP) $(DEMO_DIR)/raw/train.csv
	$(PY) process/prepare.py --src $(DEMO_DIR)/raw --dst $(DEMO_DIR)/dataset --size 160
	$(PY) main.py --cfg $(DEMO_CFG) --data-path $(DEMO_DIR)/dataset
	$(PY) test.py --cfg $(DEMO_CFG) --data-path $(DEMO_DIR)/dataset
	$(PY) visual.py --cfg $(DEMO_CFG) --images $$(for d in $(DEMO_DIR)/dataset/test/*/; do ls $$d*.jpg | head -n 1; done)

# train.csv is written last: its presence means the synthetic dataset is complete.
$(DEMO_DIR)/raw/train.csv: | $(STAMP)
	$(PY) process/synthesize.py --out $(DEMO_DIR)/raw --num $(DEMO_NUM) --seed 0

clean-demo:
	rm -rf $(DEMO_DIR) output/demo_cpu
