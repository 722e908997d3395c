# One way to set up and run: `make run` (the app) and `make test` (every test). Both create the
# virtual environment on first use and are quick on the next call.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat requirements.txt | sha1sum | cut -c1-12)
PORT ?= 8501
# Where the app listens: this machine only by default. `make run ADDRESS=0.0.0.0` serves a network (set
# RMD_REVIEWER_CODE and RMD_ADMIN_CODE first, and put TLS in front: README, "Running a study on a network").
ADDRESS ?= 127.0.0.1
# `make run CHECKPOINT=DIR` opens a model of your own (RMD_CHECKPOINT); RMD_DATA=DIR for the data of its demo cases.
CHECKPOINT ?=
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1

.PHONY: run test venv cohort browser clean gpu-check comparison

venv: $(STAMP)

# pip lists each package as it goes (first use: a few minutes), so the set-up is never silent.
$(STAMP): requirements.txt
	@echo "Installing the Python packages into $(VENV) (first use, or requirements.txt changed: a few minutes)…"
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@$(BIN)/pip install --disable-pip-version-check -r requirements.txt
	@rm -f $(VENV)/.installed-* && touch $@

# Quiet when the cohort is in place; on first use it says what it generates and how long that takes.
cohort: venv
	@$(BIN)/python -c "from core.data.cohort.generate import ensure_cohort; from core.paths import default_cohort_dir; ensure_cohort(default_cohort_dir())"

# The review page asks for a shared reviewer code: `demo` unless RMD_REVIEWER_CODE is set, and only while the
# app listens on this machine alone; served on a network without one, reviewing stays closed. Streamlit prints
# its URL about 1 s after starting; without showEmailPrompt=false its first run on a desktop would stop at
# an email prompt instead (and exit when stdin is not a terminal).
run: venv $(if $(CHECKPOINT)$(RMD_CHECKPOINT),,cohort)
	@code="$${RMD_REVIEWER_CODE:-}"; \
	case "$(ADDRESS)" in \
	  127.0.0.1|localhost|::1) code="$${code:-demo}" ;; \
	  *) [ -n "$$code" ] || echo "Serving on $(ADDRESS) without RMD_REVIEWER_CODE: reviewing stays closed (the demo code is for localhost only)." ;; \
	esac; \
	$(if $(CHECKPOINT),RMD_CHECKPOINT="$(CHECKPOINT)") RMD_REVIEWER_CODE="$$code" $(BIN)/streamlit run app.py --server.address $(ADDRESS) --server.port $(PORT) \
	  --browser.gatherUsageStats false --server.showEmailPrompt false

# Debian's chromium for the real-browser test (never a downloaded browser).
browser:
	@command -v chromium >/dev/null 2>&1 || { \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq chromium >/dev/null; }

# A test that hangs fails after 20 min with every thread's stack, instead of holding CI to its limit.
# Two workers take whole files, longest first (tests/conftest.py, HEAVY_FILES), so neither idles at the end.
test: venv browser
	$(BIN)/python -m pytest -q -n 2 --dist loadfile --no-loadscope-reorder --timeout 1200 tests

# On a machine with an NVIDIA GPU (CUDA build of torch in .venv, see README "GPU"): compare the GPU with the
# CPU, benchmark it and time the default checkpoint's training there; results in runs/gpu-check/.
gpu-check: venv cohort
	$(BIN)/python -m core doctor --device cuda --bench --train-default --out runs/gpu-check

# The comparison of BENCHMARKS.md and the Robustness lab (issue 28): every method, each trained fresh with one
# recipe for 3 seeds, under every availability pattern, random and not-at-random missingness and the data as they
# come. Hours on a 2-core CPU (JOBS models at once, one thread each); rerunning it resumes from the models finished
# in runs/eval-full/parts. Copy runs/eval-full/ to assets/evaluation/ for the app to show it.
JOBS ?= 2
comparison: venv cohort
	$(BIN)/python -m core evaluate --config configs/default.yaml --seeds 3 --jobs $(JOBS) --out runs/eval-full

clean:
	rm -rf $(VENV) .pytest_cache test-output
