# herald: every developer and CI entry point.
#   just demo    build everything and watch a node handle events (no install needed)
#   just test    build everything and run every test
#   just lint    formatting, clippy and rustdoc, warnings as errors
#   just bench   sandbox and end-to-end benchmarks

set shell := ["bash", "-euo", "pipefail", "-c"]

root := justfile_directory()
target := env_var_or_default("CARGO_TARGET_DIR", root / "target")
# Built components and their manifests land here (inside the checkout, so
# the README's paths hold whatever CARGO_TARGET_DIR is).
out := root / "target" / "handlers"
handlers := "mailbox push blocking certificate"
fixtures := "spin hog panic ungranted flaky sleeper logflood hugereason outcomes republish overreach badcert"

default:
    @just --list

# Install the pinned toolchain and the wasm32-wasip2 target (rust-toolchain.toml).
setup:
    rustup toolchain install
    rustup target list --installed | grep -qx wasm32-wasip2 || rustup target add wasm32-wasip2

# Build herald and the handler components (target/handlers/*.wasm + manifests).
build: setup
    cargo build --release -p herald
    cargo build --release --target wasm32-wasip2 \
        {{ replace_regex(handlers, '(\S+)', '-p herald-handler-$1') }} \
        {{ replace_regex(fixtures, '(\S+)', '-p herald-fixture-$1') }}
    mkdir -p {{ out }}/fixtures
    for h in {{ handlers }}; do \
        cp {{ target }}/wasm32-wasip2/release/herald_handler_$h.wasm {{ out }}/$h.wasm; \
        cp handlers/$h/$h.toml {{ out }}/$h.toml; \
    done
    for f in {{ fixtures }}; do \
        cp {{ target }}/wasm32-wasip2/release/herald_fixture_$f.wasm {{ out }}/fixtures/$f.wasm; \
        cp handlers/fixtures/$f/$f.toml {{ out }}/fixtures/$f.toml; \
    done
    @echo "herald: {{ target }}/release/herald"
    @echo "handlers: {{ out }}"

# Build everything and run a node on an embedded Kafka cluster, with sample events.
demo: build
    {{ target }}/release/herald demo --handlers {{ out }}

# Run every test: unit tests (host and, natively, the handlers), then the
# end-to-end tests against a real broker (nisshi, built once and cached).
test: build
    tests/broker.sh install
    cargo test --release --workspace --exclude herald-tests
    HERALD_BIN={{ target }}/release/herald tests/broker.sh run cargo test --release -p herald-tests

# Formatting, clippy (every target, natively) and rustdoc, warnings as
# errors; also builds every benchmark so that none rots unnoticed.
lint: setup
    cargo fmt --all --check
    cargo clippy --release --workspace --all-targets -- -D warnings
    RUSTDOCFLAGS="-D warnings" cargo doc --release --workspace --no-deps --document-private-items
    cargo bench --workspace --no-run

# Benchmarks; figures are ratios against baselines measured in the same run.
bench: build
    tests/broker.sh install
    cargo bench -p herald --bench sandbox
    tests/broker.sh run cargo bench -p herald-tests --bench end_to_end

# Fuzz the Stalwart decoder (nightly; SECONDS=600 for a long run).
fuzz seconds="60":
    command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
    cd runtime && cargo +nightly fuzz run stalwart_decode -- -max_total_time={{ seconds }}
