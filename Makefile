# The two commands of the README: `make demo` (main job) and `make test` (the tests).
# Both create .venv and install the package with the tested pins on first use.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
OUT    ?= runs/demo

.PHONY: install demo test bench clean

$(BIN)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q -c constraints.txt -e '.[dev]'
	touch $@

install: $(BIN)/.installed

demo: install
	$(BIN)/labelstore demo --out $(OUT)

test: install
	$(BIN)/python -m pytest -n 2 tests

bench: install
	$(BIN)/labelstore bench

clean:
	rm -rf $(VENV) runs .pytest_cache
