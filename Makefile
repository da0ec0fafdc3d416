# The two commands of README.md. Both install what they need first (scripts/install.sh, once).
VENV ?= .venv
STAMP := $(VENV)/.kstar-installed

.PHONY: report test install clean-cache

report: $(STAMP)
	$(VENV)/bin/kstar report --profile default --out reports/

test: $(STAMP)
	bash scripts/install-system.sh
	HF_HUB_OFFLINE=1 $(VENV)/bin/python -m pytest

install: $(STAMP)

$(STAMP): pyproject.toml scripts/install.sh scripts/constraints.txt
	KSTAR_VENV=$(VENV) bash scripts/install.sh
	touch $(STAMP)

clean-cache:
	rm -rf .kstar-cache
