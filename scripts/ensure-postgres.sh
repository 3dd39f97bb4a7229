#!/usr/bin/env bash
# Make sure PostgreSQL server binaries (initdb, pg_ctl, postgres) exist, for tests/models/test_registry_postgres.py.
# Installs Debian's `postgresql` package when they are missing. Idempotent and quiet: prints one line.
# The tests start their own throwaway server in a temp dir; the package's own cluster is not used.
set -euo pipefail

find_bindir() {
    local initdb
    initdb="$(command -v initdb 2>/dev/null || true)"
    if [ -z "$initdb" ]; then
        initdb="$(ls -1 /usr/lib/postgresql/*/bin/initdb 2>/dev/null | sort -V | tail -n 1 || true)"
    fi
    [ -n "$initdb" ] && dirname "$(readlink -f "$initdb")"
}

if bindir="$(find_bindir)"; then
    echo "postgres binaries: $bindir"
    exit 0
fi

if [ "$(id -u)" -eq 0 ]; then
    run_as_root=()
elif command -v sudo >/dev/null 2>&1; then
    run_as_root=(sudo)
else
    echo "ensure-postgres: need root (or sudo) to run apt-get install postgresql" >&2
    exit 1
fi
if ! command -v apt-get >/dev/null 2>&1; then
    echo "ensure-postgres: no apt-get here; install PostgreSQL server binaries with your package manager" >&2
    exit 1
fi

export DEBIAN_FRONTEND=noninteractive
"${run_as_root[@]}" apt-get update -qq >/dev/null
"${run_as_root[@]}" apt-get install -y -qq --no-install-recommends postgresql >/dev/null

if bindir="$(find_bindir)"; then
    echo "postgres binaries: $bindir (installed)"
else
    echo "ensure-postgres: postgresql installed but initdb was not found" >&2
    exit 1
fi
