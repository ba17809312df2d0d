# The few commands a person runs every day. Each one sets up .venv first if needed.
PY := .venv/bin/python

.PHONY: setup train sweep analyze test test-gpu test-slow test-all lint format bench clean

setup: .venv/.installed
.venv/.installed: pyproject.toml scripts/setup.sh
	bash scripts/setup.sh
	touch $@

train: setup            ## one SAE on the embedded default (SmolLM2-135M, blocks.6.hook_resid_pre)
	$(PY) train.py

sweep: setup            ## the stability experiment: 5 seeds x 2 sizes, one multirun folder
	$(PY) train.py -m seed=1,2,3,4,5 sae.n_features=128,512

analyze: setup          ## stability report for the latest multirun folder
	$(PY) analyze.py

test: setup             ## the default test suite (9-11 minutes on 2 cores)
	$(PY) -m pytest -m "not slow" -q

test-gpu: setup         ## the GPU tests, on a CUDA machine (the other tests always run on the CPU)
	@$(PY) -c "import sys, torch; ok = torch.cuda.is_available(); ok or print(\
		f'make test-gpu: torch {torch.__version__} sees no CUDA GPU here;', \
		'the GPU tests need one and a CUDA build of torch'); sys.exit(not ok)"
	SAESEEDS_TEST_GPU=1 $(PY) -m pytest -m gpu -q

test-slow: setup        ## only the slow tests (embedded SmolLM2 end to end, big benchmarks)
	$(PY) -m pytest -m slow -q

test-all: setup
	$(PY) -m pytest -q

lint: setup
	$(PY) -m ruff check . && $(PY) -m ruff format --check .

format: setup
	$(PY) -m ruff format . && $(PY) -m ruff check --fix .

bench: setup            ## speed figures quoted in the README
	$(PY) scripts/bench_train_step.py

clean:
	rm -rf .venv outputs .pytest_cache .ruff_cache
