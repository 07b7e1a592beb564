#!/usr/bin/env bash
# Installs everything the test suite needs on a fresh Debian machine, then runs it.
# This is the README's test command; .ci/run runs exactly this.
set -euo pipefail
cd "$(dirname "$0")/.."

# Debian's chromium for the browser tests (Playwright's own browser download does not
# work on our machines); ffmpeg comes with imageio-ffmpeg's wheel.
if ! command -v chromium >/dev/null 2>&1; then
    SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium fonts-dejavu-core >/dev/null
fi

python3 -m pip install -q --disable-pip-version-check -r requirements-dev.txt -e .

python3 -m ruff check .
# One worker per core, each test file whole on one worker (its module-scoped apps launched
# once); torch in each worker and in every process a test starts keeps to one thread.
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}" MKL_NUM_THREADS="${MKL_NUM_THREADS:-1}"
python3 -m pytest -n auto --dist loadfile "$@"
