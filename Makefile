# Two commands on a fresh machine (python3.11 and make): `make demo` and `make test`.
PYTHON ?= python3.11
VENV := .venv
VENV_HOST := .venv-a1111
PIP_FLAGS := --disable-pip-version-check --quiet
ARGS ?=
export GRADIO_ANALYTICS_ENABLED := False
export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: demo test test-standalone test-host test-hosts host-venvs setup setup-host serve browser screenshots clean

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

# Real-host tests: the real Forge Neo and A1111 1.10.1 (shared trees in HOSTS_DIR) with this extension installed,
# driven over HTTP and in Chromium (tests/realhost, README "Real-host tests"). The host venvs (~6 GB each) and test
# checkpoints are built once, only when missing, under HOST_CACHE; the tests run in .venv. CI runs the smoke
# subset; HOSTS_FULL=1 runs every test, with A1111's tiny SDXL and Neo's full-size random SDXL (7 GB) too.
HOSTS_DIR ?= $(abspath $(CURDIR)/../shared/hosts)
NEO_HOST_DIR ?= $(HOSTS_DIR)/forge-neo
A1111_HOST_DIR ?= $(HOSTS_DIR)/a1111-1.10.1
HOST_CACHE ?= $(HOME)/.cache/lora-studio-hosts
HOST_VENVS ?= $(HOST_CACHE)
HOST_MODELS ?= $(HOST_CACHE)/models
HOSTS_FULL ?=
NEO_MODEL := $(HOST_MODELS)/neo/models/Stable-diffusion/random-sd15.safetensors
A1111_SD1_MODEL := $(HOST_MODELS)/a1111/models/Stable-diffusion/tiny-sd1.safetensors
A1111_SDXL_MODEL := $(HOST_MODELS)/a1111/models/Stable-diffusion/tiny-sdxl.safetensors
NEO_SDXL_MODEL := $(HOST_MODELS)/neo-sdxl/random-sdxl.safetensors
# A1111 runs (and make-model.py builds) from webui/repositories; a copy without them cannot: then only Neo's tests
# run (--hosts=neo), and make says why.
A1111_COMPLETE := $(wildcard $(A1111_HOST_DIR)/webui/repositories)
HOST_MODEL_FILES := $(NEO_MODEL) $(if $(HOSTS_FULL),$(NEO_SDXL_MODEL)) \
	$(if $(A1111_COMPLETE),$(A1111_SD1_MODEL) $(if $(HOSTS_FULL),$(A1111_SDXL_MODEL)))
# a venv counts as built when its python finds torch, gradio and transformers (a build cut short does not)
HOST_VENV_OK = $(HOST_VENVS)/$(1)/bin/python -c "import importlib.util as u, sys; \
	sys.exit(not all(map(u.find_spec, ('torch', 'gradio', 'transformers'))))" 2>/dev/null

test-hosts: setup browser host-venvs $(HOST_MODEL_FILES)
	LS_REALHOST_NEO_DIR=$(NEO_HOST_DIR) LS_REALHOST_A1111_DIR=$(A1111_HOST_DIR) LS_REALHOST_VENVS=$(HOST_VENVS) \
		LS_REALHOST_MODELS=$(HOST_MODELS) LS_REALHOST_FULL=$(HOSTS_FULL) \
		$(VENV)/bin/python -m pytest tests/realhost $(if $(HOSTS_FULL),,-m smoke) $(if $(A1111_COMPLETE),,--hosts=neo) \
		$(ARGS)

host-venvs:
	@test -f $(NEO_HOST_DIR)/start.sh -a -f $(A1111_HOST_DIR)/start.sh \
		|| { echo "no host trees in HOSTS_DIR=$(HOSTS_DIR): set HOSTS_DIR to the shared hosts folder" >&2; exit 2; }
	@test -d $(A1111_HOST_DIR)/webui/repositories || echo "warning: $(A1111_HOST_DIR)/webui has no repositories/" \
		"(the five its README lists): A1111 cannot start, so only Neo is tested; set A1111_HOST_DIR to a complete copy" >&2
	@$(call HOST_VENV_OK,neo) || bash $(NEO_HOST_DIR)/build-env.sh $(HOST_VENVS)/neo
	@$(call HOST_VENV_OK,a1111) || bash $(A1111_HOST_DIR)/build-env.sh $(HOST_VENVS)/a1111

# The checkpoints are made once here (Neo's random full-size SD1.5 is 2.1 GB); the tests link them into each fresh
# host work folder. A run cut short leaves no half-written file behind.
$(NEO_MODEL): | host-venvs
	$(HOST_VENVS)/neo/bin/python $(NEO_HOST_DIR)/make-model.py $(HOST_MODELS)/neo || { rm -f $@; exit 1; }

# make_neo_sdxl.py writes under a temporary name and renames at the end (about 7 GB, 14 GB of memory at peak).
$(NEO_SDXL_MODEL): | host-venvs
	PYTHONPATH=$(CURDIR) $(HOST_VENVS)/neo/bin/python tests/realhost/make_neo_sdxl.py $(NEO_HOST_DIR)/webui $@

$(A1111_SD1_MODEL): | host-venvs
	$(HOST_VENVS)/a1111/bin/python $(A1111_HOST_DIR)/make-model.py $(HOST_MODELS)/a1111 --sd1 \
		|| { rm -f $@; exit 1; }

$(A1111_SDXL_MODEL): | host-venvs
	$(HOST_VENVS)/a1111/bin/python $(A1111_HOST_DIR)/make-model.py $(HOST_MODELS)/a1111 --sdxl \
		|| { rm -f $@; exit 1; }

# The README's screenshots of the three tabs, taken by the browser tests that drive each tab (tiny model).
screenshots: setup browser
	LS_SCREENSHOT_DIR=$(CURDIR)/docs/screenshots $(VENV)/bin/python -m pytest -q -p no:cacheprovider \
		tests/test_browser_dataset.py::test_tag_edit_save_and_undo_in_the_browser \
		tests/test_browser_train.py::test_train_from_the_character_recipe_then_stop_and_save \
		tests/test_browser_blocks.py::test_pick_generate_and_grid

clean:
	rm -rf $(VENV) $(VENV_HOST) .pytest_cache
