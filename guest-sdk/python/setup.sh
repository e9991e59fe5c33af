#!/usr/bin/env bash
# The Python SDK's tools, installed once into herald's cache
# (HERALD_CACHE, default ~/.cache/herald), and where they are:
#
#   guest-sdk/python/setup.sh    prints the virtualenv (componentize-py and
#                                pytest, requirements.txt) and the wac binary
#
# Needs python3 (3.11 or newer, with venv) and cargo; as root with apt, it
# installs Debian's python3 and python3-venv when they are missing.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
cache="${HERALD_CACHE:-$HOME/.cache/herald}"
env="$cache/python-$(sha256sum "$here/requirements.txt" | cut -c1-12)"
WAC_VERSION=0.12.0
wac="$cache/wac-$WAC_VERSION/bin/wac"

apt_install() {
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        echo "guest-sdk/python/setup.sh: installing $* with apt" >&2
        apt-get install -y -qq "$@" >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq "$@"; }
    else
        echo "guest-sdk/python/setup.sh: needs $* (install them, or run as root with apt)" >&2
        exit 1
    fi
}

# `.complete` is written last: a virtualenv whose install was cut short is
# made again.
if [ ! -e "$env/.complete" ]; then
    python3 -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null || apt_install python3
    python3 -c 'import venv, ensurepip' 2>/dev/null || apt_install python3-venv
    echo "guest-sdk/python/setup.sh: installing $(grep -v '^#' "$here/requirements.txt" | xargs) into $env" >&2
    rm -rf "$env"
    python3 -m venv "$env"
    "$env/bin/pip" install --quiet --disable-pip-version-check -r "$here/requirements.txt" >&2
    touch "$env/.complete"
fi

if [ ! -x "$wac" ]; then
    echo "guest-sdk/python/setup.sh: building wac $WAC_VERSION (crates.io; about 3 minutes, once) into ${wac%/bin/wac}" >&2
    CARGO_TARGET_DIR="$cache/wac-build" cargo install "wac-cli@$WAC_VERSION" --locked \
        --no-default-features --root "${wac%/bin/wac}" --quiet
    rm -rf "$cache/wac-build"
fi

echo "$env $wac"
