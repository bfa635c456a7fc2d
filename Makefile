# Two commands for a newcomer: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
NOTO_FONT := /usr/share/fonts/truetype/noto/NotoColorEmoji.ttf

.PHONY: demo test clean system-demo system-test

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

# torch first, as the CPU wheel where that is the one available; a torch already in the
# venv (a GPU build, say) is kept.
$(STAMP): $(BIN)/python pyproject.toml
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e ".[test,serve,annotate]"
	touch $(STAMP)

# Debian packages: installed where we are root with apt-get, else one sentence saying what to install.
define apt_install
	@if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		echo "installing Debian packages: $(1)"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(1) >/dev/null; \
	else \
		echo "$(2) needs the Debian packages $(1); install them (sudo apt-get install -y $(1)) and run it again."; \
		exit 1; \
	fi
endef

# The sample dataset's third artwork set is the Noto Color Emoji font.
system-demo:
	@test -f $(NOTO_FONT) || $(MAKE) --no-print-directory _apt PACKAGES="fonts-noto-color-emoji" FOR="make demo"

# The report and web page tests drive Debian's headless Chromium (never a downloaded browser).
system-test: system-demo
	@(command -v chromium >/dev/null && command -v chromedriver >/dev/null) || \
		$(MAKE) --no-print-directory _apt PACKAGES="chromium chromium-driver" FOR="make test"

.PHONY: _apt
_apt:
	$(call apt_install,$(PACKAGES),$(FOR))

demo: system-demo $(STAMP)
	HF_HUB_OFFLINE=1 $(BIN)/emovlm-kd demo --out runs/demo

test: system-test $(STAMP)
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest

clean:
	rm -rf $(VENV) runs
