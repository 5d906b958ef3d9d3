# d2_pillars: two commands set everything up.
#   make demo   create .venv, install, train + evaluate on the built-in synthetic dataset
#   make test   create .venv, install, run lint and the test suite
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
VPY := $(VENV)/bin/python
STAMP := $(VENV)/.d2_pillars-installed
DEPS := requirements.txt requirements-nodeps.txt requirements-dev.txt requirements-deploy.txt setup.py tools/install_detectron2.py

.PHONY: demo test lint format venv clean-venv

venv: $(STAMP)

$(STAMP): $(DEPS)
	@test -x $(VPY) || $(PYTHON) -m venv $(VENV)
	$(VPY) -m pip install -q --upgrade pip wheel "setuptools<81"
	$(VPY) -m pip install -q torch==2.14.1 torchvision==0.29.1
	$(VPY) -m pip install -q -r requirements.txt -r requirements-dev.txt -r requirements-deploy.txt
	$(VPY) -m pip install -q --no-deps -r requirements-nodeps.txt pycls==0.1.1
	$(VPY) tools/install_detectron2.py
	$(VPY) -m pip install -q --no-deps --no-build-isolation -e .
	@bash tools/install_system_deps.sh
	$(VPY) -c "import detectron2.engine, detectron2.modeling, detectron2.evaluation; from detectron2.engine import default_setup; import d2_pillars"
	@touch $@

demo: $(STAMP)
	$(VPY) tools/demo.py

lint: $(STAMP)
	$(VPY) -m isort --check-only --diff d2_pillars tools tests setup.py
	$(VPY) -m black --check -l 100 d2_pillars tools tests setup.py
	$(VPY) -m flake8 d2_pillars tools tests setup.py

format: $(STAMP)
	$(VPY) -m isort d2_pillars tools tests setup.py
	$(VPY) -m black -l 100 d2_pillars tools tests setup.py

test: $(STAMP) lint
	$(VPY) -m pytest tests

clean-venv:
	rm -rf $(VENV)
