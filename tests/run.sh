#!/usr/bin/env bash
# `just test`'s runner: every suite runs even when one fails, and the last
# line totals them ("N passed, M failed"), so a newcomer sees the whole
# picture and CI reads one line.
#
#   tests/run.sh HERALD_BIN HERALD_DEB
#
# Unit tests (host and, natively, the handlers; the Python SDK and Python
# handlers with pytest, the JavaScript ones with node --test) first, then the
# end-to-end suites (one binary, `herald-tests`'s `e2e`) against a real
# broker. The
# broker's first build (several minutes) was started in the background by
# `just test` before anything else, and is waited for here.
set -uo pipefail
cd "$(dirname "$0")/.."
bin=$1 deb=$2
logs=$(mktemp -d -t herald-test-XXXX)
status=0

cargo test --release --workspace --exclude herald-tests --no-fail-fast 2>&1 | tee "$logs/unit.log"
[ "${PIPESTATUS[0]}" = 0 ] || status=1

# A suite of another language, as one "test result:" line like cargo's, so
# that the total below counts it: `summarise NAME PASSED FAILED STATUS`.
summarise() {
    local verdict=ok passed=${2:-0} failed=${3:-0}
    # A runner that failed without counting a failure (a crash, an import
    # error) still counts as one.
    if [ "$4" != 0 ] && [ "$failed" = 0 ]; then failed=1; fi
    if [ "$failed" != 0 ]; then verdict=FAILED; status=1; fi
    echo "test result: $verdict. $passed passed; $failed failed; ($1)" | tee -a "$logs/unit.log"
}

# Python: the SDK's tests and each Python handler's, natively, against
# bindings generated from wit/herald.wit (each handler folder on its own:
# every one has a module named `handler`).
read -r pyenv _ < <(guest-sdk/python/setup.sh)
bindings=target/python-bindings
"$pyenv/bin/python" guest-sdk/python/build.py --bindings "$bindings" >/dev/null
for dir in guest-sdk/python/tests handlers/*-py; do
    out=$(PYTHONPATH="guest-sdk/python:$bindings:$dir" PYTHONDONTWRITEBYTECODE=1 \
        "$pyenv/bin/python" -m pytest -q -p no:cacheprovider "$dir" 2>&1)
    rc=$?
    echo "$out" | tail -n 15
    summarise "pytest $dir" "$(grep -o '[0-9]* passed' <<<"$out" | tail -1 | cut -d' ' -f1)" \
        "$(grep -oE '[0-9]+ (failed|error)' <<<"$out" | awk '{n += $1} END {print n + 0}')" "$rc"
done

# JavaScript: the SDK's tests and each JavaScript handler's (node --test).
for dir in guest-sdk/js/test handlers/*-js; do
    out=$(cd "$dir" && node --test 2>&1)
    rc=$?
    echo "$out" | grep -E '^(not ok|# (tests|pass|fail))' || true
    summarise "node --test $dir" "$(sed -n 's/^# pass //p' <<<"$out")" \
        "$(sed -n 's/^# fail //p' <<<"$out")" "$rc"
done

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
