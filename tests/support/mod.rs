//! Shared helpers for the end-to-end tests: where the built components and
//! the `herald` binary are.
//!
//! The tests use what `just build` produced (real `.wasm` components from
//! `handlers/`, the real binary); they fail, naming the missing file, rather
//! than skip when it is absent.

use std::path::{Path, PathBuf};

/// The workspace root.
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// `target/handlers`, or `$HERALD_HANDLERS`.
pub fn handlers_dir() -> PathBuf {
    std::env::var_os("HERALD_HANDLERS")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("target").join("handlers"))
}

/// A built component, e.g. `handler("blocking")` or `handler("fixtures/spin")`.
pub fn handler(name: &str) -> PathBuf {
    let path = handlers_dir().join(format!("{name}.wasm"));
    assert!(
        path.exists(),
        "{} is missing: run `just build` first",
        path.display()
    );
    path
}

/// A compile cache the tests share (`XDG_CACHE_HOME` for the `herald`
/// commands they run): a Python or JavaScript component takes 15 s or more
/// of both cores to compile, so each is compiled once, not once per test.
/// In the target directory, where the build's own cache lives; entries are
/// keyed by the component's digest and the engine, so a stale one is never
/// used.
pub fn compile_cache() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("target"))
        .join("test-compile-cache")
}

/// Compile `wasm` into [`compile_cache`] (once per test process, one at a
/// time) and return its cache files: the compiled code and its record.
pub fn compiled(wasm: &Path) -> Vec<PathBuf> {
    use std::os::unix::fs::DirBuilderExt;
    static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());
    // herald names a compiled file after the wasm's SHA-256.
    let sha = ring::digest::digest(&ring::digest::SHA256, &std::fs::read(wasm).unwrap());
    let digest: String = sha.as_ref().iter().map(|b| format!("{b:02x}")).collect();
    let dir = compile_cache().join("herald").join("components");
    let found = || -> Vec<PathBuf> {
        std::fs::read_dir(&dir)
            .map(|d| {
                d.map(|e| e.unwrap().path())
                    .filter(|p| {
                        p.file_name()
                            .unwrap()
                            .to_string_lossy()
                            .starts_with(&digest)
                    })
                    .collect()
            })
            .unwrap_or_default()
    };
    let _guard = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    if found().is_empty() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(compile_cache())
            .unwrap();
        let out = std::process::Command::new(herald_bin())
            .args(["handler", "inspect"])
            .arg(wasm)
            .env("XDG_CACHE_HOME", compile_cache())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "compiling {}: {out:?}",
            wasm.display()
        );
    }
    found()
}

/// What `herald handler test` printed (one JSON value per line), what it
/// said on stderr, and whether it succeeded.
pub struct HandlerRun {
    pub lines: Vec<serde_json::Value>,
    pub stderr: String,
    pub ok: bool,
}

/// `herald handler test` on the built component `wasm` (e.g. "blocking",
/// "fixtures/hostile-py") with `events`, and with `manifest` (its text) in
/// place of the shipped one if given, compiling into [`compile_cache`].
pub fn handler_test(
    wasm: &str,
    events: &[serde_json::Value],
    manifest: Option<&str>,
) -> HandlerRun {
    let dir = tempfile::tempdir().unwrap();
    let file = write_events(dir.path(), "events.jsonl", events);
    let mut cmd = std::process::Command::new(herald_bin());
    cmd.args(["handler", "test"]).arg(handler(wasm)).arg(&file);
    if let Some(text) = manifest {
        let path = dir.path().join("manifest.toml");
        std::fs::write(&path, text).unwrap();
        cmd.arg("--manifest").arg(path);
    }
    let out = cmd.env("XDG_CACHE_HOME", compile_cache()).output().unwrap();
    HandlerRun {
        lines: String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        ok: out.status.success(),
    }
}

/// The `herald` binary, or `$HERALD_BIN`.
pub fn herald_bin() -> PathBuf {
    let path = std::env::var_os("HERALD_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            let target = std::env::var_os("CARGO_TARGET_DIR")
                .map(PathBuf::from)
                .unwrap_or_else(|| root().join("target"));
            target.join("release").join("herald")
        });
    assert!(
        path.exists(),
        "{} is missing: run `just build` first",
        path.display()
    );
    path
}

/// Write `lines` as a JSON-lines file in `dir`.
pub fn write_events(dir: &Path, name: &str, lines: &[serde_json::Value]) -> PathBuf {
    let path = dir.join(name);
    let text: Vec<String> = lines.iter().map(|l| l.to_string()).collect();
    std::fs::write(&path, text.join("\n") + "\n").unwrap();
    path
}

/// An ip-block event in the public JSON form: the one builder every test
/// uses (`action` is "block" or "unblock").
pub fn ip_block(id: &str, ip: &str, action: &str, reason: &str) -> serde_json::Value {
    serde_json::json!({"v":1,"id":id,"kind":"ip-block","origin":"test","ts":1795690000000u64,
        "body":{"ip":ip,"action":action,"reason":reason}})
}

/// A certificate-test fixture (`handlers/certificate/tests/fixtures`), e.g.
/// `ec.crt` (mail.example.com and *.example.org) and its key `ec.key`.
pub fn cert_fixture(name: &str) -> String {
    let path = root()
        .join("handlers/certificate/tests/fixtures")
        .join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// A tls-certificate event for mail.example.com with the `ec` fixture pair
/// (or another key, to test a mismatch).
pub fn ec_certificate(id: &str, key: &str) -> serde_json::Value {
    serde_json::json!({"v":1,"id":id,"kind":"tls-certificate","origin":"test","ts":1,
        "body":{"domains":["mail.example.com"],"certificatePem":cert_fixture("ec.crt"),
                "privateKeyPem":cert_fixture(key),"notAfter":1}})
}

pub mod api;
pub mod cluster;
pub mod stalwart_api;
