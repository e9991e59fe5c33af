"""Build a Python handler into a herald component, with componentize-py.

    python build.py HANDLER_DIR OUT_DIR --plug NO_SOCKETS.wasm --wac WAC
    python build.py --bindings OUT_DIR       # bindings for unit tests

HANDLER_DIR holds `handler.py` (the module that sets `WitWorld`, see
`herald_guest.export`) and the manifest `<name>.toml`, named after the
folder: `handlers/blocking-py` gives `OUT_DIR/blocking-py.wasm` and
`blocking-py.toml`.

The component imports exactly the capability interfaces that the manifest
grants (`capabilities`), plus `log` and `config`: this writes a WIT world of
its own for the handler beside `wit/herald.wit`, as the Rust SDK imports
only what a handler calls. herald refuses a component that imports more than
its manifest grants.

componentize-py's component imports every `wasi:sockets` interface, whatever
the code does (CPython links wasi-libc's socket functions), and herald
refuses a handler that imports sockets. So the stub `--plug`
(`guest-sdk/python/no-sockets`, every function a trap) is plugged into it
with `wac plug`: the handler imports no sockets, and a socket call fails the
call it is made in.

componentize-py runs the module's top level at build time and keeps the
memory it leaves (its pre-initialised snapshot): every instance the node
makes starts from there, with the imports done and the handler constructed.

Builds are kept in a cache by the digest of everything that goes into them
(`HERALD_CACHE`, default `~/.cache/herald`), so an unchanged handler is not
built again.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

SDK = Path(__file__).resolve().parent
ROOT = SDK.parent.parent
WIT = ROOT / "wit" / "herald.wit"
PACKAGE = "herald:coordination@0.2.0"
# Always imported: what every handler may use without a grant.
ALWAYS = ["log", "config"]
CAPABILITIES = ["idle", "push", "blocklist", "certificates", "publish"]


def world(name: str, capabilities: list[str]) -> str:
    """A world importing `capabilities` and exporting `handle`."""
    imports = "".join(f"    import {c};\n" for c in ALWAYS + capabilities)
    return (
        f"package {PACKAGE};\n\n"
        f"/// The handler `{name}`: what its manifest grants, and `handle`.\n"
        f"world {name} {{\n{imports}"
        "    use types.{source, event, outcome};\n"
        "    export handle: func(source: source, events: list<event>) -> list<outcome>;\n"
        "}\n"
    )


def wit_dir(into: Path, name: str, capabilities: list[str]) -> Path:
    wit = into / "wit"
    wit.mkdir()
    shutil.copy(WIT, wit / "herald.wit")
    (wit / "world.wit").write_text(world(name, capabilities))
    return wit


def componentize_py() -> str:
    return str(Path(sys.executable).parent / "componentize-py")


def manifest_capabilities(manifest: Path) -> list[str]:
    try:
        data = tomllib.loads(manifest.read_text())
    except FileNotFoundError:
        sys.exit(f"build.py: {manifest}: no manifest (a handler folder holds `<folder name>.toml`)")
    except tomllib.TOMLDecodeError as e:
        sys.exit(f"build.py: {manifest}: {e}")
    granted = data.get("capabilities", [])
    unknown = [c for c in granted if c not in CAPABILITIES and c not in ALWAYS]
    if unknown:
        sys.exit(
            f"build.py: {manifest}: capabilities: unknown {unknown} "
            f"(herald grants {', '.join(CAPABILITIES)})"
        )
    return [c for c in CAPABILITIES if c in granted]


def sources(handler: Path) -> list[Path]:
    """Every file that goes into the component, in a stable order."""
    files = [WIT, Path(__file__).resolve()]
    for folder in (SDK / "herald_guest", handler):
        files += sorted(
            p for p in folder.rglob("*.py") if "__pycache__" not in p.parts and not p.name.startswith("test_")
        )
    return files


def digest(files: list[Path], extra: str) -> str:
    h = hashlib.sha256(extra.encode())
    for f in files:
        # Named inside the checkout by their path in it (the plug may be in a
        # target directory elsewhere): the digest is the same in any clone.
        name = f.relative_to(ROOT) if f.is_relative_to(ROOT) else Path(f.name)
        h.update(str(name).encode() + b"\0" + f.read_bytes() + b"\0")
    return h.hexdigest()[:32]


def tool_version() -> str:
    out = subprocess.run([componentize_py(), "--version"], capture_output=True, text=True)
    return out.stdout.strip()


def build(handler: Path, out: Path, plug: Path, wac: str) -> None:
    handler = handler.resolve()
    name = handler.name
    manifest = handler / f"{name}.toml"
    capabilities = manifest_capabilities(manifest)
    if not (handler / "handler.py").exists():
        sys.exit(f"build.py: {handler}: no handler.py")
    out.mkdir(parents=True, exist_ok=True)
    target = out / f"{name}.wasm"
    cache = Path(os.environ.get("HERALD_CACHE", Path.home() / ".cache" / "herald")) / "guest-builds"
    key = digest(sources(handler) + [plug], f"{tool_version()}\0{name}\0{capabilities}")
    cached = cache / f"{name}-{key}.wasm"
    if cached.exists():
        print(f"{target}: unchanged, from {cached}")
    else:
        with tempfile.TemporaryDirectory() as tmp:
            wit = wit_dir(Path(tmp), name, capabilities)
            raw, built = Path(tmp) / "raw.wasm", Path(tmp) / "out.wasm"
            cmd = [
                componentize_py(), "-d", str(wit), "-w", name, "componentize",
                "-p", str(SDK), "-p", str(handler), "handler", "-o", str(raw),
            ]
            print(f"{target}: componentize-py, imports {', '.join(ALWAYS + capabilities)}")
            subprocess.run(cmd, check=True, env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"})
            subprocess.run(
                [wac, "plug", "--plug", str(plug), str(raw), "-o", str(built)],
                check=True, stdout=subprocess.DEVNULL,
            )
            cache.mkdir(parents=True, exist_ok=True)
            shutil.copy(built, cached)
    shutil.copy(cached, target)
    shutil.copy(manifest, out / manifest.name)


def bindings(out: Path) -> None:
    """Bindings of the whole `handler` world, for running handlers natively
    (their imports are stubs there; tests use `testing.RecordingHost`)."""
    if out.exists():
        shutil.rmtree(out)
    subprocess.run(
        [componentize_py(), "-d", str(WIT), "-w", "handler", "bindings", str(out)], check=True
    )


def main(argv: list[str]) -> None:
    args = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    args.add_argument("--bindings", metavar="OUT_DIR", type=Path)
    args.add_argument("handler", nargs="?", type=Path, help="the handler's folder")
    args.add_argument("out", nargs="?", type=Path, help="where the component goes")
    args.add_argument("--plug", type=Path, help="the no-sockets stub component")
    args.add_argument("--wac", default="wac", help="the wac command")
    a = args.parse_args(argv)
    if a.bindings:
        bindings(a.bindings)
    elif a.handler and a.out and a.plug:
        if not a.plug.exists():
            sys.exit(f"build.py: {a.plug}: no such stub (cargo build -p herald-no-sockets)")
        build(a.handler, a.out, a.plug.resolve(), a.wac)
    else:
        args.error("give HANDLER OUT --plug NO_SOCKETS.wasm, or --bindings OUT_DIR")


if __name__ == "__main__":
    main(sys.argv[1:])
