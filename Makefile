# The README's two commands: `make run` (main job on the bundled real data) and `make test`.
# `install` puts torch==2.13.0 in first (a local CPU wheel on our machines) so that nothing
# later pulls the multi-gigabyte CUDA build, then the project with its test extras, every package at
# the version in constraints.txt (the set the suite last passed with on a fresh machine).
PY ?= python3
STAMP := .cache/installed.stamp
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1

.PHONY: install run test bench

$(STAMP): setup.cfg pyproject.toml constraints.txt
	$(PY) -m pip install -c constraints.txt "torch==2.13.0"
	$(PY) -m pip install -c constraints.txt -e ".[dev]"
	mkdir -p $(dir $(STAMP)) && touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(PY) -m accelerate.commands.launch --num_processes 1 --num_machines 1 --mixed_precision no \
		--dynamo_backend no distill.py $(ARGS)

test: $(STAMP)
	$(PY) -m pytest -q $(PYTEST_ARGS)
