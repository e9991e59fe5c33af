//! Linking the plug: no WASI adapter (without std nothing calls WASI, and the
//! default adapter would bring its own world, `wasi:io@0.2.6`, into the
//! component's type), and a 64 KiB stack instead of 1 MiB, since every
//! function traps at once: the memory each Python instance carries for it
//! stays small.

fn main() {
    if std::env::var("CARGO_CFG_TARGET_ARCH").as_deref() == Ok("wasm32") {
        println!("cargo:rustc-link-arg=--wasi-adapter=none");
        println!("cargo:rustc-link-arg=-zstack-size=65536");
    }
}
