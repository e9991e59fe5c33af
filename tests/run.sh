#!/usr/bin/env bash
# `just test`'s runner: every suite runs even when one fails, and the last
# line totals them ("N passed, M failed"), so a newcomer sees the whole
# picture and CI reads one line.
#
#   tests/run.sh HERALD_BIN HERALD_DEB
#
# Unit tests (host and, natively, the handlers) first, then the end-to-end
# suites (one binary, `herald-tests`'s `e2e`) against a real broker. The
# broker's first build (several minutes) was started in the background by
# `just test` before anything else, and is waited for here.
set -uo pipefail
cd "$(dirname "$0")/.."
bin=$1 deb=$2
logs=$(mktemp -d -t herald-test-XXXX)
status=0

cargo test --release --workspace --exclude herald-tests --no-fail-fast 2>&1 | tee "$logs/unit.log"
[ "${PIPESTATUS[0]}" = 0 ] || status=1

# Built before waiting for the broker, so that both builds share the time.
cargo test --release -p herald-tests --no-run 2>&1 | tee "$logs/e2e-build.log"
[ "${PIPESTATUS[0]}" = 0 ] || status=1

if ! tests/broker.sh install; then
    echo "just test: the test broker did not build (above); end-to-end suites not run" >&2
    status=1
else
    HERALD_BIN=$bin HERALD_DEB=$deb tests/broker.sh run \
        cargo test --release -p herald-tests --no-fail-fast 2>&1 | tee "$logs/e2e.log"
    [ "${PIPESTATUS[0]}" = 0 ] || status=1
fi

# cargo prints "test result: ok. 12 passed; 0 failed; ..." per test binary.
read -r passed failed < <(cat "$logs"/unit.log "$logs"/e2e.log 2>/dev/null |
    sed -n 's/^test result: [A-Za-z]*\. \([0-9]*\) passed; \([0-9]*\) failed.*/\1 \2/p' |
    awk '{p += $1; f += $2} END {print p + 0, f + 0}')
if [ "$status" != 0 ] && [ "$failed" = 0 ]; then
    # A build error or a test binary that died prints no result line.
    echo "just test: cargo failed outside any test (a build error or a crashed test binary, above)"
fi
rm -rf "$logs"
echo "$passed passed, $failed failed"
[ "$status" = 0 ] && [ "$failed" = 0 ]
