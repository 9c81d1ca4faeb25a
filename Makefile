# One entry point for users and CI: `make study`, `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

# Offline on these machines: the datasets sit in ../shared/data beside the checkout.
ifeq ($(DEEPSHRINK_DATA),)
ifneq ($(wildcard ../shared/data),)
export DEEPSHRINK_DATA := $(abspath ../shared/data)
endif
endif

.PHONY: setup test lint study quick clean bench fuzz

# Inputs per reader for `make fuzz` (a small run of every reader is part of `make test`).
FUZZ_N ?= 1000
FUZZ_JOBS ?= 2

setup: $(STAMP)

$(STAMP): pyproject.toml
	@# The microcontroller target's cross-compiler is a system package, and clang checks the generated C
	@# beside gcc: installed when root, else the command to run.
	@missing=""; command -v arm-none-eabi-gcc >/dev/null || missing="gcc-arm-none-eabi libnewlib-arm-none-eabi"; \
	command -v clang >/dev/null || missing="$$missing clang"; \
	if [ -n "$$missing" ]; then if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	else echo "deepshrink mcu needs: sudo apt-get install $$missing"; fi; fi
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# The CPU wheel of torch 2.13.0 lies on disk; an unpinned torch would pull a CUDA build.
	$(BIN)/python -m pip install -q torch==2.13.0
	# The Ray and microcontroller extras too, so `make test` runs the Ray executor's tests against a real Ray
	# and the emulator's tests against a real emulator.
	$(BIN)/python -m pip install -q -e '.[dev,ray,mcu,openvino]'
	touch $(STAMP)

test: setup
	$(BIN)/python -m pytest -q tests; rc=$$?; if [ $$rc -eq 5 ]; then echo "no tests collected"; exit 0; fi; exit $$rc

lint: setup
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/mypy src

study: setup
	$(BIN)/deepshrink study paper
	@echo "report: runs/paper/report.html"

quick: setup
	$(BIN)/deepshrink study quick
	@echo "report: runs/quick/report.html"

bench: setup
	$(BIN)/python benchmarks/run.py

# Every reader of a user's file, mutated from valid seeds: prints reader / inputs / crashes; exits 1 on a crash.
fuzz: setup
	$(BIN)/python tests/fuzz/run.py --n $(FUZZ_N) --jobs $(FUZZ_JOBS)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
