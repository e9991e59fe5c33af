#!/usr/bin/env bash
# The JavaScript SDK's tools (componentize-js, esbuild, smol-toml: package.json,
# pinned by package-lock.json) in guest-sdk/js/node_modules, and each handler
# folder's link to the SDK (its node_modules/herald-guest):
#
#   guest-sdk/js/setup.sh HANDLER_DIR...
#
# Needs node (18 or newer) and npm; as root with apt, it installs Debian's
# nodejs and npm when they are missing.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)

if ! command -v node >/dev/null || ! command -v npm >/dev/null ||
    ! node -e 'process.exit(Number(process.versions.node.split(".")[0]) < 18 ? 1 : 0)'; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        echo "guest-sdk/js/setup.sh: installing nodejs and npm with apt" >&2
        apt-get install -y -qq nodejs npm >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq nodejs npm; }
    else
        echo "guest-sdk/js/setup.sh: needs node 18 or newer and npm (install them, or run as root with apt)" >&2
        exit 1
    fi
fi

# Installed again only when the lock file changed since.
if ! cmp -s "$here/package-lock.json" "$here/node_modules/.package-lock.json.installed" 2>/dev/null; then
    echo "guest-sdk/js/setup.sh: npm ci in $here" >&2
    (cd "$here" && npm ci --no-audit --no-fund --loglevel=error >&2)
    cp "$here/package-lock.json" "$here/node_modules/.package-lock.json.installed"
fi
for dir in "$@"; do
    [ -e "$dir/node_modules/herald-guest" ] ||
        (cd "$dir" && npm install --no-audit --no-fund --loglevel=error >&2)
done
