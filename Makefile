# Two commands for a newcomer:  `make run` (install + start the app), `make test` (install + run the suite).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PIP := $(PY) -m pip install --quiet --disable-pip-version-check

.PHONY: run test install browser clean

run: install
	$(PY) app.py

# The suite in TEST_JOBS processes (pytest-xdist), each with its own throwaway MongoDB and engine cache.
TEST_JOBS ?= 2

test: install browser
	$(PY) -m pytest --numprocesses=$(TEST_JOBS)

install: $(STAMP)

# torch first, pinned (the line of requirements.txt for this Python), so the CPU wheel satisfies it
# and nothing later pulls a CUDA build.
# constraints.txt pins every package to the versions the suite was last run with.
$(STAMP): requirements.txt requirements-dev.txt constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PIP) --upgrade pip
	grep '^torch==' requirements.txt > $(VENV)/torch.txt
	$(PIP) -r $(VENV)/torch.txt
	$(PIP) -r requirements.txt -r requirements-dev.txt -c constraints.txt
	touch $(STAMP)

# Browser tests drive Debian's Chromium (Playwright cannot download browsers offline).
# Installed when missing and possible (root + apt); otherwise those tests skip and say why.
browser:
	@if [ -x /usr/bin/chromium ]; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		echo "installing chromium for the browser tests"; \
		DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null || \
		echo "could not install chromium: browser tests will skip"; \
	else echo "chromium not found at /usr/bin/chromium: browser tests will skip"; fi

clean:
	rm -rf $(VENV) .pytest_cache
