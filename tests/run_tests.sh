#!/usr/bin/env bash
# The one test command: installs what the tests need from PyPI, then lints and runs the suite.
set -euo pipefail
cd "$(dirname "$0")/.."
python -m pip install -q -r requirements-test.txt
# ldm (the UNet code A1111 uses for SD1/SD2) ships in this package; its own pins are not needed.
python -m pip install -q --no-deps stable-diffusion-sdkit==2.1.5
python -m ruff check .
python -m pytest -q "$@"
