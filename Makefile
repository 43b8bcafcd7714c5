# The two commands a newcomer needs: `make run` (the main job, end to end on fixture content)
# and `make test`. Both run `make setup` first, which installs what is missing and is fast otherwise.
VENV   := .venv
PY     := $(VENV)/bin/python
OUT    ?= out/run
PYTEST_ARGS ?=

.PHONY: setup run test unit bench clean

setup:
	@bash tests/scripts/setup.sh

run: setup
	$(PY) -m tests.support.main_job --output $(OUT)

test: setup
	$(PY) -m pytest $(PYTEST_ARGS)

unit: setup
	$(PY) -m pytest tests/unit $(PYTEST_ARGS)

bench: setup
	$(PY) -m tests.bench.bench

clean:
	rm -rf out build .pytest_cache
