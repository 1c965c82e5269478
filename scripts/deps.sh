#!/bin/sh
# Installs what chatd's test suite needs on a Debian/Ubuntu machine:
# PostgreSQL server binaries, Redis, nginx, Chromium (headless browser
# tests), Node.js with npm, and the npm packages of the end-to-end tests
# (the official phoenix client). Safe to run again.
set -eu
cd "$(dirname "$0")/.."

need=""
[ -x /usr/lib/postgresql/15/bin/postgres ] || ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1 || need="$need postgresql"
command -v redis-server >/dev/null 2>&1 || need="$need redis-server"
[ -x /usr/sbin/nginx ] || command -v nginx >/dev/null 2>&1 || need="$need nginx"
command -v chromium >/dev/null 2>&1 || need="$need chromium"
command -v node >/dev/null 2>&1 || need="$need nodejs"
command -v npm >/dev/null 2>&1 || need="$need npm"

if [ -n "$need" ]; then
	if [ "$(id -u)" -ne 0 ]; then
		echo "deps: missing packages:$need; install them (apt-get install$need) or run as root" >&2
		exit 1
	fi
	echo "deps: installing$need"
	export DEBIAN_FRONTEND=noninteractive
	apt-get update -qq
	# shellcheck disable=SC2086
	apt-get install -y -qq $need >/dev/null
fi

if [ ! -d e2e/js/node_modules ] || [ e2e/js/package-lock.json -nt e2e/js/node_modules ]; then
	echo "deps: npm ci (e2e/js)"
	(cd e2e/js && npm ci --no-audit --no-fund --loglevel=error)
	touch e2e/js/node_modules
fi
