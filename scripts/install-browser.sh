#!/usr/bin/env bash
# Debian's chromium, for the browser check of the MLflow UI (tests/test_server.py).
# Playwright drives it; its own browser download is not used (no such downloads here).
set -euo pipefail
if command -v chromium >/dev/null || [ -n "${HISTO_EXP_CHROMIUM:-}" ]; then
    exit 0
fi
if ! command -v apt-get >/dev/null; then
    echo "no chromium and no apt-get: the MLflow UI browser test will be skipped" \
         "(install chromium, or point HISTO_EXP_CHROMIUM at a Chromium binary)" >&2
    exit 0
fi
sudo=""
if [ "$(id -u)" -ne 0 ]; then
    if ! sudo -n true 2>/dev/null; then
        echo "no chromium, and installing it needs root: run 'sudo apt-get install chromium' once;" \
             "until then the MLflow UI browser test is skipped" >&2
        exit 0
    fi
    sudo="sudo -n"
fi
echo "installing Debian's chromium for the browser test (apt-get)"
$sudo apt-get update -qq
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq chromium > /dev/null
