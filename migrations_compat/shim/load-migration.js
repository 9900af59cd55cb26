'use strict';
/**
 * Loads one migration or seeder file for the bridge: CommonJS, ESM and TypeScript, on any node
 * migrunner supports (18 in the image, 20+ elsewhere).
 *
 * - CommonJS (`.js`, `.cjs`): `require`, exactly as sequelize-cli (umzug v2) loads it.
 * - ESM (`.mjs`, or `.js` in a `"type": "module"` package): `import()`. sequelize-cli cannot
 *   load these at all. Named `up`/`down` exports and a default export both work (the bridge
 *   looks in `default` first, as umzug does).
 * - TypeScript (`.ts`, `.cts`, `.mts`) without a build step: the types are stripped and
 *   `import`/`export` turned into CommonJS by sucrase (pinned in the shim's package.json), the
 *   way ts-node/tsx run a CommonJS project. Line numbers are kept, so errors point at the
 *   `.ts` line. Types are not checked (as with tsx). A `.ts` helper the migration imports is
 *   compiled the same way. The same transpiler is used on every node version, so a folder
 *   behaves the same on Node 18, 20 and 22+ (whose own type stripping would leave ESM syntax
 *   to the package's module type). Not supported in TypeScript migrations: top-level await and
 *   `import.meta` (they need ESM output); import ESM-only packages with `await import()`.
 */
const fs = require('fs');
const path = require('path');
const Module = require('module');
const { pathToFileURL } = require('url');

const TS_EXTENSIONS = ['.ts', '.cts', '.mts'];
let sucrase = null;

function compileTypeScript(source, filename) {
  if (!sucrase) sucrase = require('sucrase');
  try {
    return sucrase.transform(source, {
      transforms: ['typescript', 'imports'],
      filePath: filename,
      production: true,
    }).code;
  } catch (err) {
    // "<file>:<line>" first in the stack: the bridge reports it like node's own SyntaxErrors
    const line = err && err.loc ? err.loc.line : 1;
    const message = String(err && err.message ? err.message : err)
      .replace(/^Error transforming .*?: /, '')
      .replace(/ \(\d+:\d+\)$/, '');
    const e = new SyntaxError(`${message} (TypeScript)`);
    e.stack = `${filename}:${line}\n${e.name}: ${e.message}`;
    throw e;
  }
}

// Registered once: require() of a TypeScript file (the migration, or a helper it imports)
// compiles it. The app's own hooks, if any were loaded, are not overridden for other files.
for (const ext of TS_EXTENSIONS) {
  Module._extensions[ext] = function loadTypeScript(module, filename) {
    module._compile(compileTypeScript(fs.readFileSync(filename, 'utf8'), filename), filename);
  };
}

const esmImports = new Map(); // file -> how many times it was imported

/**
 * import() an ESM migration and leave its namespace in require's cache, so that the bridge's
 * "load afresh on a re-run" (it deletes the file from require.cache) works for ESM too: the
 * next load then imports a new instance (a query string makes node's ESM loader treat it as
 * another module), as a new sequelize-cli process would.
 */
async function importFresh(file) {
  const count = esmImports.get(file) || 0;
  esmImports.set(file, count + 1);
  const url = pathToFileURL(file).href + (count ? `?migrunner-run=${count}` : '');
  const namespace = await import(url);
  const cached = new Module(file, null);
  cached.filename = file;
  cached.loaded = true;
  cached.exports = namespace;
  require.cache[file] = cached;
  return namespace;
}

/** The module a migration file exports (a CommonJS `module.exports` or an ESM namespace). */
async function loadMigration(file) {
  if (path.extname(file) === '.mjs' && !require.cache[file]) return importFresh(file);
  try {
    return require(file);
  } catch (err) {
    const code = err && err.code;
    if (code === 'ERR_REQUIRE_ESM' || code === 'ERR_REQUIRE_ASYNC_MODULE') {
      return importFresh(file);
    }
    throw err;
  }
}

module.exports = { loadMigration, compileTypeScript };
