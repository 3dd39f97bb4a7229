#!/usr/bin/env bash
# Install Debian packages quietly, as root or through sudo: `bash scripts/apt-install.sh PACKAGE...`.
# Shared by ensure-postgres.sh and ensure-chromium.sh; says clearly when it cannot.
set -euo pipefail

if [ "$(id -u)" -eq 0 ]; then
    run_as_root=()
elif command -v sudo >/dev/null 2>&1; then
    run_as_root=(sudo)
else
    echo "apt-install: need root (or sudo) to run apt-get install $*" >&2
    exit 1
fi
if ! command -v apt-get >/dev/null 2>&1; then
    echo "apt-install: no apt-get here; install $* with your package manager" >&2
    exit 1
fi

export DEBIAN_FRONTEND=noninteractive
"${run_as_root[@]}" apt-get update -qq >/dev/null
"${run_as_root[@]}" apt-get install -y -qq --no-install-recommends "$@" >/dev/null
