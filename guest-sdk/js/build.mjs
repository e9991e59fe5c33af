#!/usr/bin/env node
// Build a JavaScript handler into a herald component, with componentize-js.
//
//     node build.mjs HANDLER_DIR OUT_DIR
//
// HANDLER_DIR holds `handler.js` (its default export is the handler class,
// see `herald-guest`'s `Handler`) and the manifest `<name>.toml`, named after
// the folder: `handlers/blocking-js` gives `OUT_DIR/blocking-js.wasm` and
// `blocking-js.toml`.
//
// The component imports exactly the capability interfaces that the manifest
// grants (`capabilities`), plus `log` and `config`: this writes a WIT world
// of its own for the handler beside `wit/herald.wit`, as the Rust SDK
// imports only what a handler calls. It is built without componentize-js's
// `http` and `fetch-event` features, which would import `wasi:http`: a
// handler reaches the outside only through herald's capabilities, and herald
// refuses a component that imports `wasi:http`.
//
// The handler and the SDK are bundled into one module (esbuild), which
// componentize-js evaluates at build time (Wizer): every instance the node
// makes starts from that snapshot, with the module evaluated and the handler
// constructed.
//
// Builds are kept in a cache by the digest of everything that goes into them
// (`HERALD_CACHE`, default `~/.cache/herald`), so an unchanged handler is not
// built again.

import { createHash } from 'node:crypto';
import { copyFileSync, existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { homedir, tmpdir } from 'node:os';
import { basename, dirname, join, relative, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

import { componentize } from '@bytecodealliance/componentize-js';
import { build as bundle } from 'esbuild';
import { parse as parseToml } from 'smol-toml';

const SDK = dirname(fileURLToPath(import.meta.url));
const ROOT = resolve(SDK, '..', '..');
const WIT = join(ROOT, 'wit', 'herald.wit');
const PACKAGE = 'herald:coordination@0.2.0';
// Always imported: what every handler may use without a grant.
const ALWAYS = ['log', 'config'];
const CAPABILITIES = ['idle', 'push', 'blocklist', 'certificates', 'publish'];
const DISABLED = ['http', 'fetch-event'];

function fail(message) {
  console.error(`build.mjs: ${message}`);
  process.exit(1);
}

/** A world importing `capabilities` and exporting `handle`. */
function world(name, capabilities) {
  const imports = [...ALWAYS, ...capabilities].map((c) => `    import ${c};\n`).join('');
  return (
    `package ${PACKAGE};\n\n` +
    `/// The handler \`${name}\`: what its manifest grants, and \`handle\`.\n` +
    `world ${name} {\n${imports}` +
    '    use types.{source, event, outcome};\n' +
    '    export handle: func(source: source, events: list<event>) -> list<outcome>;\n' +
    '}\n'
  );
}

/** The module componentize-js builds: the handler, with the real node. */
function entry(handler, capabilities) {
  const imports = [...ALWAYS, ...capabilities]
    .map((c) => `import * as ${c} from '${PACKAGE.replace('@', `/${c}@`)}';\n`)
    .join('');
  return (
    imports +
    `import { WasmHost, handle as run } from ${JSON.stringify(join(SDK, 'src', 'index.js'))};\n` +
    `import Handler from ${JSON.stringify(handler)};\n` +
    // Constructed at build time: in the snapshot every instance starts from.
    `const handler = new Handler();\n` +
    `const imports = { ${[...ALWAYS, ...capabilities].join(', ')} };\n` +
    `export function handle(source, events) {\n` +
    `  return run(handler, new WasmHost(imports), events);\n` +
    `}\n`
  );
}

function manifestCapabilities(manifest) {
  if (!existsSync(manifest)) {
    fail(`${manifest}: no manifest (a handler folder holds \`<folder name>.toml\`)`);
  }
  let data;
  try {
    data = parseToml(readFileSync(manifest, 'utf8'));
  } catch (e) {
    fail(`${manifest}: ${e.message}`);
  }
  const granted = data.capabilities ?? [];
  const unknown = granted.filter((c) => !CAPABILITIES.includes(c) && !ALWAYS.includes(c));
  if (unknown.length) {
    fail(`${manifest}: capabilities: unknown ${unknown.join(', ')} (herald grants ${CAPABILITIES.join(', ')})`);
  }
  return CAPABILITIES.filter((c) => granted.includes(c));
}

/** Every file that goes into the component, in a stable order. */
function sources(handler) {
  const walk = (dir) =>
    readdirSync(dir)
      .sort()
      .flatMap((f) => {
        const path = join(dir, f);
        if (f === 'node_modules' || f === 'test') return [];
        if (statSync(path).isDirectory()) return walk(path);
        return f.endsWith('.js') && !f.endsWith('.test.js') ? [path] : [];
      });
  return [WIT, fileURLToPath(import.meta.url), join(SDK, 'package-lock.json'), ...walk(join(SDK, 'src')), ...walk(handler)];
}

function digest(files, extra) {
  const h = createHash('sha256').update(extra);
  for (const f of files) h.update(`${relative(ROOT, f)}\0`).update(readFileSync(f)).update('\0');
  return h.digest('hex').slice(0, 32);
}

async function build(handlerDir, out) {
  const handler = resolve(handlerDir);
  const name = basename(handler);
  const manifest = join(handler, `${name}.toml`);
  const capabilities = manifestCapabilities(manifest);
  if (!existsSync(join(handler, 'handler.js'))) fail(`${handlerDir}: no handler.js`);
  mkdirSync(out, { recursive: true });
  const target = join(out, `${name}.wasm`);
  const cache = join(process.env.HERALD_CACHE ?? join(homedir(), '.cache', 'herald'), 'guest-builds');
  const key = digest(sources(handler), `${name}\0${capabilities}\0${DISABLED}`);
  const cached = join(cache, `${name}-${key}.wasm`);
  if (existsSync(cached)) {
    console.log(`${target}: unchanged, from ${cached}`);
  } else {
    const tmp = mkdtempSync(join(tmpdir(), 'herald-js-'));
    try {
      const wit = join(tmp, 'wit');
      mkdirSync(wit);
      copyFileSync(WIT, join(wit, 'herald.wit'));
      writeFileSync(join(wit, 'world.wit'), world(name, capabilities));
      writeFileSync(join(tmp, 'entry.js'), entry(join(handler, 'handler.js'), capabilities));
      const bundled = join(tmp, 'bundle.js');
      await bundle({
        entryPoints: [join(tmp, 'entry.js')],
        bundle: true,
        format: 'esm',
        platform: 'neutral',
        outfile: bundled,
        // `herald-guest` as the handler's folder resolves it (its
        // package.json links this SDK).
        absWorkingDir: handler,
        external: ['herald:*', 'wasi:*'],
        logLevel: 'warning',
      });
      console.log(`${target}: componentize-js, imports ${[...ALWAYS, ...capabilities].join(', ')}`);
      const { component } = await componentize({
        sourcePath: bundled,
        witPath: wit,
        worldName: name,
        disableFeatures: DISABLED,
      });
      mkdirSync(cache, { recursive: true });
      writeFileSync(cached, component);
    } finally {
      rmSync(tmp, { recursive: true, force: true });
    }
  }
  copyFileSync(cached, target);
  copyFileSync(manifest, join(out, `${name}.toml`));
}

const args = process.argv.slice(2);
if (args.length !== 2) fail('usage: node build.mjs HANDLER_DIR OUT_DIR');
await build(args[0], args[1]);
