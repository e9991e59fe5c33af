#!/usr/bin/env bash
# The Kafka-protocol broker for the end-to-end tests: nisshi (the renamed
# tansu), built once from crates.io and cached outside the checkout.
#
#   tests/broker.sh install        build nisshi if it is not cached yet (or
#                                  wait for the build already under way)
#   tests/broker.sh background     start that build in the background, at
#                                  the lowest CPU priority, and return
#   tests/broker.sh background-now the same at the normal priority
#   tests/broker.sh run CMD...     start a broker on a free loopback port,
#                                  run CMD with HERALD_TEST_BROKER=127.0.0.1:PORT
#                                  (and the broker's pid in HERALD_BROKER_PID),
#                                  stop the broker, exit with CMD's status
set -euo pipefail

VERSION=0.7.0-pre.2
CACHE="${HERALD_CACHE:-$HOME/.cache/herald}"
ROOT="$CACHE/nisshi-$VERSION"
BIN="$ROOT/bin/nisshi"

LOCK="$CACHE/nisshi-$VERSION.lock"

build() {
    # Its own target directory: the workspace's must not be locked meanwhile.
    CARGO_TARGET_DIR="$CACHE/nisshi-build" cargo install "nisshi@$VERSION" --locked \
        --no-default-features --features dynostore --root "$ROOT" --quiet
    rm -rf "$CACHE/nisshi-build"
}

install() {
    if [ -x "$BIN" ]; then return; fi
    mkdir -p "$CACHE"
    exec 9>"$LOCK"
    if ! flock -n 9; then
        echo "tests/broker.sh: waiting for the nisshi build under way (log: $CACHE/nisshi-build.log)" >&2
        flock 9
    fi
    if [ -x "$BIN" ]; then return; fi
    echo "tests/broker.sh: building nisshi $VERSION (about 12 minutes on 2 cores, once) into $ROOT" >&2
    build
}

# Start the build in the background and return: `just demo` does so at the
# lowest priority (it takes only CPU that nothing else wants, and goes on
# after the demo is stopped), `just test` at the normal one, before it
# builds anything else. The lock is taken here, before the build starts, so
# an `install` that comes next always waits for it.
background() {
    local niceness=$1
    if [ -x "$BIN" ]; then return; fi
    mkdir -p "$CACHE"
    exec 9>"$LOCK"
    if ! flock -n 9; then return; fi
    echo "tests/broker.sh: building the test broker in the background (log: $CACHE/nisshi-build.log)" >&2
    # Not in a session of its own: Linux shares CPU between sessions
    # (autogroups) whatever their nice value, so only in the caller's does
    # the lowest priority mean "what the demo's build leaves". A
    # non-interactive shell's background job ignores the demo's Ctrl-C.
    nice -n "$niceness" "$0" build-locked >"$CACHE/nisshi-build.log" 2>&1 </dev/null &
    exec 9>&-
}

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'
}

run() {
    install
    local port log
    port=$(free_port)
    log=$(mktemp -t herald-broker-XXXX.log)
    RUST_LOG=warn "$BIN" broker \
        --listener-url "tcp://127.0.0.1:$port" \
        --advertised-listener-url "tcp://127.0.0.1:$port" \
        --storage-engine memory://nisshi/ >"$log" 2>&1 &
    pid=$!
    BROKER_PID=$pid
    trap 'kill $BROKER_PID 2>/dev/null; wait $BROKER_PID 2>/dev/null || true' EXIT
    # Ready when it accepts connections (about 20 ms); give up after 10 s.
    for _ in $(seq 1 200); do
        if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then break; fi
        if ! kill -0 $pid 2>/dev/null; then echo "broker died:" >&2; cat "$log" >&2; exit 1; fi
        sleep 0.05
    done
    echo "tests/broker.sh: nisshi $VERSION on 127.0.0.1:$port (log: $log)" >&2
    HERALD_TEST_BROKER="127.0.0.1:$port" HERALD_BROKER_PID=$pid HERALD_NISSHI="$BIN" "$@"
}

case "${1:-}" in
    install) install ;;
    background) background 19 ;;
    background-now) background 0 ;;
    build-locked) [ -x "$BIN" ] || build ;;
    run) shift; run "$@" ;;
    *) echo "usage: $0 install | run CMD..." >&2; exit 2 ;;
esac
