# Two entry points (see README): `make run` and `make test`. Both install what they need.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check -q

.PHONY: install run test test-all bench clean postgres browser

# torch goes in first and pinned: the CPU wheel for 2.13.0 is on disk, and installing it before
# anything that depends on torch keeps pip from resolving a (multi-GB) CUDA build.
$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install torch==2.13.0
	$(PIP) install -e '.[test]'
	touch $@

install: $(VENV)/.installed

# The kudos[ray] extra (Ray RLlib) for the tests of `kudos train --engine rllib`; `make run` does
# without it.
$(VENV)/.installed-ray: $(VENV)/.installed
	$(PIP) install -e '.[ray]'
	touch $@

# The main job on embedded defaults: a short training run on NetHackScore with ONI-Classification
# rewards, the embedded LLM labelling captions as the agent plays.
run: install
	$(VENV)/bin/kudos train --task Score --reward classification --steps 200000 --output runs/demo

# PostgreSQL server binaries for the label-store parity tests (Debian's package; installed when
# running as root, as CI does; without them those tests skip and say why).
postgres:
	@ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || [ "$$(id -u)" != 0 ] || \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null)

# Debian's headless Chromium for the HTML report test (installed when running as root; without
# it that test skips and says why).
browser:
	@command -v chromium >/dev/null 2>&1 || [ "$$(id -u)" != 0 ] || \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null)

# The quick suite (long tests are marked `slow` and skipped); `test-all` runs every test, as CI does.
test: install $(VENV)/.installed-ray postgres browser
	$(PY) -m pytest -q

test-all: install $(VENV)/.installed-ray postgres browser
	$(PY) -m pytest -q -m "" --durations=25

bench: install
	$(PY) bench/env_throughput.py

clean:
	rm -rf $(VENV)
