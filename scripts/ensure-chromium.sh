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

if [ "$(id -u)" -eq 0 ]; then
    run_as_root=()
elif command -v sudo >/dev/null 2>&1; then
    run_as_root=(sudo)
else
    echo "ensure-chromium: need root (or sudo) to run apt-get install chromium" >&2
    exit 1
fi
if ! command -v apt-get >/dev/null 2>&1; then
    echo "ensure-chromium: no apt-get here; install Chromium with your package manager (or set DAPT_CHROMIUM)" >&2
    exit 1
fi

export DEBIAN_FRONTEND=noninteractive
"${run_as_root[@]}" apt-get update -qq >/dev/null
"${run_as_root[@]}" apt-get install -y -qq --no-install-recommends chromium fonts-dejavu-core >/dev/null

if browser="$(find_chromium)"; then
    echo "chromium: $browser (installed)"
else
    echo "ensure-chromium: apt-get install chromium finished but no chromium binary was found" >&2
    exit 1
fi
