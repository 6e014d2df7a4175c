# Quick start: `make demo` (set up and run the main job), `make test` (set up and run the tests).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
OUT ?= out

.PHONY: demo test lint faults clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# The main job, on the embedded default: check the real data under ../shared/data (or
# $$POSEFACE_DATA), score the shipped face detector on real CFP photos (fold 1), run the
# device chain (detector -> shipped PIPNet -> head pose) on real photos (annotated PNG + NME),
# then python -m edge.run recognising CFP fold-9 people (never trained on) from the front and
# the side with the shipped int8 models (contact sheet, identification rates, latency), first with
# every pair at the calibrated FAR, then with the thresholds set for a 1 % stranger rate.
demo: $(BIN)/python
	$(BIN)/pip install -q -e .
	$(BIN)/python -m training.data check
	$(BIN)/python -m edge.detect.cfp_recall --folds 1 --json $(OUT)/demo/detector_cfp_fold1.json
	$(BIN)/poseface demo --out $(OUT)/demo
	$(BIN)/python -m edge.demo_people --out $(OUT)/demo
	$(BIN)/python -m edge.demo_people --out $(OUT)/demo/open_set --stranger-rate 0.01

# The broker tests (tests/test_broker.py) start their own Mosquitto: installed here with apt-get
# when it is missing and we are root with apt-get; otherwise one line says so and they skip.
test: $(BIN)/python
	@if command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ]; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	  echo "make test: installing mosquitto and mosquitto-clients with apt-get (for the broker tests)"; \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq mosquitto mosquitto-clients) \
	    >/dev/null 2>&1 || echo "make test: apt-get could not install mosquitto; the broker tests will skip"; \
	else echo "make test: mosquitto is not installed (needs root and apt-get to install it); the broker tests will skip"; fi
	$(BIN)/pip install -q -e '.[train,quant,dev,baseline,mqtt]'
	$(BIN)/python -m ruff check .
	$(BIN)/python -m pytest

# The reliability campaign (python -m edge.faults): every fault, full repetitions, one table.
faults: $(BIN)/python
	$(BIN)/pip install -q -e '.[dev]'
	$(BIN)/python -m edge.faults --json $(OUT)/faults.json

lint: $(BIN)/python
	$(BIN)/python -m ruff check .

clean:
	rm -rf $(VENV) $(OUT) .pytest_cache .ruff_cache *.egg-info
