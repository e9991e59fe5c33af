#!/usr/bin/env bash
# The Kafka-protocol broker for the end-to-end tests: nisshi (the renamed
# tansu), built once from crates.io and cached outside the checkout.
#
#   tests/broker.sh install        build nisshi if it is not cached yet
#   tests/broker.sh run CMD...     start a broker on a free loopback port,
#                                  run CMD with HERALD_TEST_BROKER=127.0.0.1:PORT
#                                  (and the broker's pid in HERALD_BROKER_PID),
#                                  stop the broker, exit with CMD's status
set -euo pipefail

VERSION=0.7.0-pre.2
CACHE="${HERALD_CACHE:-$HOME/.cache/herald}"
ROOT="$CACHE/nisshi-$VERSION"
BIN="$ROOT/bin/nisshi"

install() {
    if [ -x "$BIN" ]; then return; fi
    echo "tests/broker.sh: building nisshi $VERSION (about 10 minutes, once) into $ROOT" >&2
    # Its own target directory: the workspace's must not be locked meanwhile.
    CARGO_TARGET_DIR="$CACHE/nisshi-build" cargo install "nisshi@$VERSION" --locked \
        --no-default-features --features dynostore --root "$ROOT" --quiet
    rm -rf "$CACHE/nisshi-build"
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
    run) shift; run "$@" ;;
    *) echo "usage: $0 install | run CMD..." >&2; exit 2 ;;
esac
