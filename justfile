# herald: every developer and CI entry point.
#   just demo    build everything and watch a node handle events (no install needed)
#   just test    build everything and run every test
#   just build-python, just build-js
#                the example handlers in Python and JavaScript (target/handlers/)
#   just lint    formatting, clippy and rustdoc, warnings as errors
#   just package the Debian package, target/debian/herald_<version>-1_<arch>.deb
#   just bench   sandbox, decode, pipeline, trust and end-to-end benchmarks (bench-quick: smaller)

set shell := ["bash", "-euo", "pipefail", "-c"]

root := justfile_directory()
target := env_var_or_default("CARGO_TARGET_DIR", root / "target")
# Built components and their manifests land here (inside the checkout, so
# the README's paths hold whatever CARGO_TARGET_DIR is).
out := root / "target" / "handlers"
handlers := "mailbox push blocking certificate"
# What the .deb takes besides the binary (see [package.metadata.deb] in
# runtime/Cargo.toml, which names these paths), and where it is written.
assets := root / "target" / "package-assets"
debs := root / "target" / "debian"
fixtures := "spin hog panic ungranted flaky sleeper logflood hugereason outcomes republish overreach badcert"
# Handlers written with the Python and JavaScript SDKs (guest-sdk/python,
# guest-sdk/js): each a folder of handlers/ with handler.py or handler.js.
py_handlers := "blocking-py"
js_handlers := "blocking-js"
py_fixtures := "hostile-py"

default:
    @just --list

# Install the pinned toolchain and the wasm32-wasip2 target (rust-toolchain.toml).
setup:
    rustup toolchain install
    rustup target list --installed | grep -qx wasm32-wasip2 || rustup target add wasm32-wasip2

# Build herald and the built-in handler components (target/handlers/*.wasm
# + manifests). The components build first: they are small, and the host's
# build then has both cores to itself.
[doc("Build herald and the built-in handler components into target/handlers/.")]
build: setup
    cargo build --release --target wasm32-wasip2 \
        {{ replace_regex(handlers, '(\S+)', '-p herald-handler-$1') }}
    mkdir -p {{ out }}
    for h in {{ handlers }}; do \
        cp {{ target }}/wasm32-wasip2/release/herald_handler_$h.wasm {{ out }}/$h.wasm; \
        cp handlers/$h/$h.toml {{ out }}/$h.toml; \
    done
    cargo build --release -p herald
    @echo "herald: {{ target }}/release/herald"
    @echo "handlers: {{ out }}"

# The hostile components the tests and benchmarks load (target/handlers/fixtures/).
fixtures: setup
    cargo build --release --target wasm32-wasip2 \
        {{ replace_regex(fixtures, '(\S+)', '-p herald-fixture-$1') }}
    mkdir -p {{ out }}/fixtures
    for f in {{ fixtures }}; do \
        cp {{ target }}/wasm32-wasip2/release/herald_fixture_$f.wasm {{ out }}/fixtures/$f.wasm; \
        cp handlers/fixtures/$f/$f.toml {{ out }}/fixtures/$f.toml; \
    done

# Python handlers, with componentize-py (installed, pinned, into herald's
# cache by guest-sdk/python/setup.sh, as is wac): each imports what its
# manifest grants, with `wasi:sockets` replaced by the trapping stub of
# guest-sdk/python/no-sockets, which herald requires.
[doc("Build the Python handlers (handlers/*-py) into target/handlers/.")]
build-python: setup
    cargo build --release --target wasm32-wasip2 -p herald-no-sockets
    read -r env wac < <(guest-sdk/python/setup.sh) && \
    for h in {{ py_handlers }} {{ replace_regex(py_fixtures, '(\S+)', 'fixtures/$1') }}; do \
        "$env/bin/python" guest-sdk/python/build.py handlers/$h {{ out }}/$(dirname $h) \
            --plug {{ target }}/wasm32-wasip2/release/herald_no_sockets.wasm --wac "$wac"; \
    done

# JavaScript handlers, with componentize-js (npm, pinned by
# guest-sdk/js/package-lock.json; guest-sdk/js/setup.sh installs it).
[doc("Build the JavaScript handlers (handlers/*-js) into target/handlers/.")]
build-js:
    guest-sdk/js/setup.sh {{ replace_regex(js_handlers, '(\S+)', 'handlers/$1') }}
    for h in {{ js_handlers }}; do node guest-sdk/js/build.mjs handlers/$h {{ out }}; done

# Build everything and run a node on an embedded Kafka cluster, with sample
# events. The test broker for `just test` builds meanwhile, at the lowest
# priority (it takes only the CPU the demo's build leaves), if it is not
# built yet.
[doc("Build everything and watch a node handle sample events (nothing to install).")]
demo: broker-idle build
    {{ target }}/release/herald demo --handlers {{ out }}

# Run every test: unit tests (host and, natively, the handlers), then the
# end-to-end tests against a real broker (nisshi, built once and cached,
# while the unit tests build). Every suite runs even if one fails; the last
# line is the total, "N passed, M failed".
[doc("Build everything and run every test; ends with \"N passed, M failed\".")]
test: broker package fixtures build-python build-js
    # The firewall test needs nft and ip: installed when this is root with
    # apt; elsewhere that test prints SKIPPED and why.
    command -v nft >/dev/null && command -v ip >/dev/null || \
        { [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
          { apt-get install -y -qq nftables iproute2 >/dev/null 2>&1 || \
            { apt-get update -qq && apt-get install -y -qq nftables iproute2; }; }; } || \
        echo "just test: nftables not installed; the firewall test will be SKIPPED"
    tests/run.sh {{ target }}/release/herald $(echo {{ debs }}/herald_*.deb)

# The test broker's build (tests/broker.sh), started before everything else
# `just test` builds and waited for before the end-to-end suites.
[private]
broker:
    tests/broker.sh background-now

[private]
broker-idle:
    tests/broker.sh background

# The man page and the shell completions are generated by the binary from
# its CLI definition. cargo-deb runs with --no-build (`build` made the binary;
# its warning that asset paths outside `target/release/` are not built is
# dropped) and --dbgsym (the .deb gets a stripped binary, the debug info goes
# to herald-dbgsym_*.ddeb beside it).
# The Debian package (herald, unit, handlers, example config, man page, completions); prints its path.
package: build
    command -v cargo-deb >/dev/null || cargo install cargo-deb --locked
    rm -rf {{ assets }}
    mkdir -p {{ assets }}/handlers {{ debs }}
    for h in {{ handlers }}; do cp {{ out }}/$h.wasm {{ out }}/$h.toml {{ assets }}/handlers/; done
    {{ target }}/release/herald man > {{ assets }}/herald.1
    {{ target }}/release/herald completions bash > {{ assets }}/herald.bash
    {{ target }}/release/herald completions zsh > {{ assets }}/_herald
    {{ target }}/release/herald completions fish > {{ assets }}/herald.fish
    rm -f {{ debs }}/herald_*.deb {{ debs }}/herald-dbgsym_*.ddeb
    made=$(cargo deb -p herald --no-build --dbgsym --output {{ debs }} \
        2> >(grep -v "are detected as Cargo target dir" >&2)) && \
        echo "debug symbols: $(grep '\.ddeb$' <<<"$made")" && \
        echo "package: $(grep '\.deb$' <<<"$made")"

# Formatting, clippy (every target, natively) and rustdoc, warnings as
# errors; also builds every benchmark so that none rots unnoticed.
[doc("Formatting, clippy and rustdoc, warnings as errors; every benchmark built.")]
lint: setup
    cargo fmt --all --check
    cargo clippy --release --workspace --all-targets -- -D warnings
    RUSTDOCFLAGS="-D warnings" cargo doc --release --workspace --no-deps --document-private-items
    cargo bench --workspace --no-run

# Benchmarks; figures are ratios against baselines measured in the same run.
# `just bench memory` (or throughput, latency; several: latency,memory) runs
# those end-to-end sections only.
[doc("Benchmarks, as ratios against baselines measured in the same run.")]
bench filter="": build fixtures build-python build-js
    tests/broker.sh install
    {{ if filter == "" { "cargo bench -p herald --bench sandbox && cargo bench -p herald --bench decode && cargo bench -p herald --bench pipeline && cargo bench -p herald --bench trust" } else { "true" } }}
    tests/broker.sh run cargo bench -p herald-tests --bench end_to_end -- {{ filter }}

# The same benchmarks, smaller (about 90 s once built): to check a
# change cheaply. Compare its figures with each other, not with the targets.
[doc("The benchmarks, smaller: to compare a change with its parent.")]
bench-quick filter="": build fixtures build-python build-js
    tests/broker.sh install
    {{ if filter == "" { "cargo bench -p herald --bench sandbox -- --quick && cargo bench -p herald --bench decode -- --quick && cargo bench -p herald --bench pipeline -- --quick && cargo bench -p herald --bench trust -- --quick" } else { "true" } }}
    HERALD_BENCH_QUICK=1 tests/broker.sh run cargo bench -p herald-tests --bench end_to_end -- {{ filter }}

# Fuzz the Stalwart decoder (nightly; SECONDS=600 for a long run).
fuzz seconds="60":
    command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
    cd runtime && cargo +nightly fuzz run stalwart_decode -- -max_total_time={{ seconds }}
