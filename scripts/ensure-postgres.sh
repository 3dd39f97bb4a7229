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

bash "$(dirname "$0")/apt-install.sh" postgresql

if bindir="$(find_bindir)"; then
    echo "postgres binaries: $bindir (installed)"
else
    echo "ensure-postgres: postgresql installed but initdb was not found" >&2
    exit 1
fi
