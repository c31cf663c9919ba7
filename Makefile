# Two commands on a fresh machine (python3.11 and make): `make demo` and `make test`.
PYTHON ?= python3.11
VENV := .venv
VENV_HOST := .venv-a1111
PIP_FLAGS := --disable-pip-version-check --quiet
ARGS ?=
export GRADIO_ANALYTICS_ENABLED := False
export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: demo test test-standalone test-host setup setup-host serve browser clean

# Standalone environment: diffusers pipelines, gradio 4.x (as in Forge).
$(VENV)/.installed: requirements.txt requirements/standalone.txt requirements/test.txt requirements/ldm.txt
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install $(PIP_FLAGS) -r requirements/standalone.txt -r requirements/test.txt
	$(VENV)/bin/pip install $(PIP_FLAGS) --no-deps -r requirements/ldm.txt
	touch $@

# Host-compat environment: A1111 1.10's pins (gradio 3.41.2, transformers 4.30.2, no diffusers).
$(VENV_HOST)/.installed: requirements.txt requirements/host-a1111.txt requirements/test.txt requirements/ldm.txt
	test -x $(VENV_HOST)/bin/python || $(PYTHON) -m venv $(VENV_HOST)
	$(VENV_HOST)/bin/pip install $(PIP_FLAGS) -r requirements/host-a1111.txt -r requirements/test.txt
	$(VENV_HOST)/bin/pip install $(PIP_FLAGS) --no-deps -r requirements/ldm.txt
	touch $@

setup: $(VENV)/.installed
setup-host: $(VENV_HOST)/.installed

demo: setup
	$(VENV)/bin/python -m lib_lora demo $(ARGS)

serve: setup
	$(VENV)/bin/python -m lib_lora $(ARGS)

browser:
	bash tests/browser/ensure_chromium.sh

test: setup setup-host browser
	$(MAKE) --no-print-directory test-host
	$(MAKE) --no-print-directory test-standalone

test-standalone:
	$(VENV)/bin/python -m pytest tests $(ARGS)

test-host:
	$(VENV_HOST)/bin/python -m pytest tests -m hostcompat $(ARGS)

clean:
	rm -rf $(VENV) $(VENV_HOST) .pytest_cache
