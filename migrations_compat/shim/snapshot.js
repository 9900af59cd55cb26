'use strict';
/**
 * A V8 startup snapshot of the app's sequelize (and the parts of pg the bridge uses): node
 * starts with them already evaluated instead of spending ~0.15 s of CPU on require() at every
 * run. Built by migrations_compat/snapshot.py as
 *   node --snapshot-blob BLOB <the bridge's node flags> --build-snapshot snapshot.js
 * with MIGRUNNER_SNAPSHOT_SPEC = {"sequelizeDir", "pgDir", "manifest"} in the environment; the
 * list of files evaluated is written to `manifest`, so the runner can tell when one changed.
 *
 * node cannot load user-land modules with its own loader while it builds a snapshot, so this
 * file is a small CommonJS loader of its own (resolution is node's: Module._resolveFilename).
 * When node later starts from the blob (`node --snapshot-blob BLOB ... bridge.js args`), the
 * main function below registers every evaluated module in node's module cache under its file
 * name — the bridge's require(sequelize), a migration's own require('sequelize') or
 * require('sequelize/lib/data-types') all get these very instances — and then runs the script
 * named on the command line as the main module. Modules sequelize loads lazily (pg-hstore,
 * other dialects) go through node's real loader at run time.
 */
const Module = require('module');
const fs = require('fs');
const path = require('path');
const vm = require('vm');

const evaluated = new Map(); // filename -> module record
let running = false; // true once started from the snapshot

function makeRequire(parentFile) {
  const parent = {
    id: parentFile,
    filename: parentFile,
    paths: Module._nodeModulePaths(path.dirname(parentFile)),
  };
  const req = (id) => {
    if (Module.isBuiltin(id)) return require(id);
    if (running) return Module.createRequire(parentFile)(id);
    return load(Module._resolveFilename(id, parent, false));
  };
  req.resolve = (id, opts) =>
    running ? Module.createRequire(parentFile).resolve(id, opts) : Module._resolveFilename(id, parent, false, opts);
  req.cache = Module._cache;
  return req;
}

function load(filename) {
  const hit = evaluated.get(filename);
  if (hit) return hit.exports; // a cycle or a repeat: CommonJS semantics
  const mod = {
    id: filename,
    filename,
    exports: {},
    loaded: false,
    children: [],
    paths: Module._nodeModulePaths(path.dirname(filename)),
  };
  evaluated.set(filename, mod);
  if (filename.endsWith('.json')) {
    mod.exports = JSON.parse(fs.readFileSync(filename, 'utf8'));
  } else if (filename.endsWith('.js') || filename.endsWith('.cjs') || !path.extname(filename)) {
    const req = makeRequire(filename);
    mod.require = req;
    const source = fs.readFileSync(filename, 'utf8').replace(/^#!.*/, '');
    const fn = vm.compileFunction(source, ['exports', 'require', 'module', '__filename', '__dirname'], {
      filename,
    });
    fn.call(mod.exports, mod.exports, req, mod, filename, path.dirname(filename));
  } else {
    throw new Error(`cannot snapshot ${filename} (not CommonJS)`);
  }
  mod.loaded = true;
  return mod.exports;
}

function resolveFrom(dir, id) {
  return Module._resolveFilename(id, { id: dir, filename: path.join(dir, 'x.js'), paths: Module._nodeModulePaths(dir) }, false);
}

const spec = JSON.parse(process.env.MIGRUNNER_SNAPSHOT_SPEC);
load(resolveFrom(path.dirname(spec.sequelizeDir), spec.sequelizeDir));
// What the bridge's loadPgParts() requires; pg's client and pool stay out (loaded on demand).
const pgMain = resolveFrom(path.dirname(spec.pgDir), spec.pgDir);
const pgLib = path.dirname(pgMain);
for (const file of [
  () => resolveFrom(pgLib, 'pg-types'),
  () => resolveFrom(pgLib, 'pg-protocol'),
  () => path.join(pgLib, 'utils.js'),
  () => path.join(pgLib, 'defaults.js'),
]) {
  try {
    load(file());
  } catch (err) {
    // an older pg without that layout: the bridge loads whole pg at run time instead
  }
}
fs.writeFileSync(spec.manifest, JSON.stringify([...evaluated.keys()]));

require('v8').startupSnapshot.setDeserializeMainFunction(() => {
  running = true;
  for (const [filename, rec] of evaluated) {
    const m = new Module(filename, null);
    m.filename = filename;
    m.loaded = true;
    m.exports = rec.exports;
    m.paths = rec.paths;
    Module._cache[filename] = m;
  }
  // `debug` (used by sequelize) read DEBUG when the snapshot was built; read it again now.
  for (const [filename, rec] of evaluated) {
    if (/[\\/]node_modules[\\/]debug[\\/]src[\\/]index\.js$/.test(filename) && rec.exports.enable) {
      rec.exports.enable(rec.exports.load ? rec.exports.load() || '' : process.env.DEBUG || '');
    }
  }
  const script = path.resolve(process.argv[1]);
  process.argv[1] = script;
  Module._load(script, null, true);
});
