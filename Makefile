# Two commands: `make demo` and `make test`. Each creates .venv on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test benchmark clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -c constraints.txt -e '.[dev,export,cluster]' 2>&1 \
		| grep -v "is neither a file nor a directory" || true
	$(BIN)/python -c "import vislab, torch, torchvision, timm" && touch $(STAMP)

demo: $(STAMP)
	$(BIN)/vislab train configs/quickstart/digits.yaml

test: $(STAMP)
	$(BIN)/python -m pytest -q

benchmark: $(STAMP)
	$(BIN)/python benchmarks/quickstart.py
	$(BIN)/python benchmarks/train_step.py
	$(BIN)/python benchmarks/backbones.py
	$(BIN)/python benchmarks/video.py
	$(BIN)/python benchmarks/video.py --ava
	$(BIN)/python benchmarks/detection.py
	$(BIN)/python benchmarks/scaling.py

clean:
	rm -rf $(VENV) runs .pytest_cache
