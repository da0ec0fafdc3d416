#!/usr/bin/env bash
# Install kstar_utils and everything it needs into a virtual environment (default: .venv in the repository).
#
#   bash scripts/install.sh            # the package, model sources, reports and test tools
#   KSTAR_VENV=/path/env bash scripts/install.sh
#   KSTAR_EXTRAS=all bash scripts/install.sh   # without the test tools
#
# This is the one place that works around robustbench 1.1.1's packaging (see kstar_utils/compat.py for the runtime
# half): robustbench pins timm==1.0.9, which open_clip_torch >= 3 rejects, so robustbench is installed with --no-deps
# after its real runtime dependencies (listed in pyproject.toml's `models` extra, with setuptools<81 for
# pkg_resources and pyautoattack for `autoattack`).
set -euo pipefail
cd "$(dirname "$0")/.."
venv="${KSTAR_VENV:-.venv}"
python="${PYTHON:-python3}"
extras="${KSTAR_EXTRAS:-all,test}"
constraints="${KSTAR_CONSTRAINTS:-scripts/constraints.txt}"

if [ ! -x "$venv/bin/python" ]; then
  echo "kstar: creating virtual environment $venv"
  "$python" -m venv "$venv"
fi
pip=("$venv/bin/python" -m pip)
"${pip[@]}" install --quiet --upgrade "pip>=24"
"${pip[@]}" install --quiet -c "$constraints" -e ".[${extras}]"
"${pip[@]}" install --quiet -c "$constraints" --no-deps "robustbench==1.1.1"
"$venv/bin/python" -m kstar_utils.compat --check
echo "kstar: installed into $venv (activate with: source $venv/bin/activate)"
