# mosaic_ray: `make demo` runs MOSAIC vs Random on the NGSIM recordings; `make test` runs the tests.
CONFIG ?= jobs/ngsim_demo.yaml
VENV := .venv/bin

.PHONY: setup demo test clean
setup:
	@scripts/setup.sh

demo: setup
	$(VENV)/mosaic-ray run $(CONFIG)

test: setup
	$(VENV)/python -m pytest -q tests

clean:
	rm -rf runs .pytest_cache
