# Every target sets up .venv first (fast when already done).
export HF_HUB_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false
BIN := .venv/bin

.PHONY: setup demo llm test test-slow lint format bench llamacpp
setup:
	@bash scripts/setup.sh

demo: setup
	$(BIN)/compress demo

llm: setup  # the language-model pipeline (configs/pipelines/llm.yaml), about 22 minutes on 2 CPU cores
	$(BIN)/compress pipeline --config configs/pipelines/llm.yaml

test: setup
	$(BIN)/python -m pytest -q -n 2 --dist loadfile

test-slow: setup llamacpp
	$(BIN)/python -m pytest -q -m slow

bench: setup
	$(BIN)/pip install -q -r bench/requirements.txt  # bench-only peers (TRL)
	$(BIN)/python -m bench.run

# llama.cpp for the GGUF rows of the language-model report and its slow test; builds from source once
# (measured: 22.5 min on 2 busy cores), then pip reuses the wheel from its cache.
llamacpp: setup
	@$(BIN)/python -c "import llama_cpp" 2>/dev/null || CMAKE_BUILD_PARALLEL_LEVEL=2 $(BIN)/pip install -e ".[llamacpp]"

lint: setup
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

format: setup
	$(BIN)/ruff format . && $(BIN)/ruff check --fix .
