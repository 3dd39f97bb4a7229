#!/usr/bin/env bash
# Make sure a headless Chromium exists, for tests/services/test_ui_browser.py (the registry UI in a real browser).
# Installs Debian's `chromium` package (and a font) when no chromium is found. Idempotent and quiet: prints one
# line. The tests skip with a message naming this script when no browser can be found.
set -euo pipefail

find_chromium() {
    local name
    for name in "${DAPT_CHROMIUM:-}" chromium chromium-browser google-chrome-stable google-chrome; do
        [ -n "$name" ] && command -v "$name" 2>/dev/null && return 0
    done
    return 1
}

if browser="$(find_chromium)"; then
    echo "chromium: $browser"
    exit 0
fi

bash "$(dirname "$0")/apt-install.sh" chromium fonts-dejavu-core

if browser="$(find_chromium)"; then
    echo "chromium: $browser (installed)"
else
    echo "ensure-chromium: apt-get install chromium finished but no chromium binary was found" >&2
    exit 1
fi
