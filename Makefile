# mosaic_ray: `make demo` runs MOSAIC vs Random on the NGSIM recordings; `make test` runs the tests
# (`make test-core`: only the tests that need neither Ray nor ../shared/data, well under a minute).
CONFIG ?= jobs/ngsim_demo.yaml
VENV := .venv/bin

.PHONY: setup demo test test-core clean
setup:
	@scripts/setup.sh

demo: setup
	$(VENV)/mosaic-ray run $(CONFIG)

test: setup
	$(VENV)/python -m pytest -q tests

test-core: setup
	$(VENV)/python -m pytest -q tests -m "not ray and not data"

clean:
	rm -rf runs .pytest_cache
