#!/usr/bin/env node
'use strict';

// Copy packages (default: sequelize and pg) and everything they require at run time from an
// app's node_modules into another node_modules, keeping node's resolution layout.
//
// Why: migrunner must run migrations with the app's OWN sequelize (a second copy can differ in
// defaults). Copying only node_modules/sequelize is not enough: npm hoists its dependencies
// (lodash, moment, pg-connection-string, ...) next to it. Copying the whole node_modules works
// but drags the app's hundreds of MB into the runner image. This copies the closure only.
//
// Usage: node collect-node-modules.js SRC_NODE_MODULES DEST_NODE_MODULES [PACKAGE...]

const fs = require('fs');
const path = require('path');

function main(argv) {
  if (argv.length < 2 || argv.includes('-h') || argv.includes('--help')) {
    process.stderr.write(
      'usage: collect-node-modules.js SRC_NODE_MODULES DEST_NODE_MODULES [PACKAGE...]\n',
    );
    return argv.length < 2 ? 2 : 0;
  }
  const src = path.resolve(argv[0]);
  const dest = path.resolve(argv[1]);
  const roots = argv.length > 2 ? argv.slice(2) : ['sequelize', 'pg'];
  if (!fs.existsSync(src)) {
    process.stderr.write(`collect-node-modules: ${src} does not exist\n`);
    return 2;
  }

  // Where node finds `name` when required from `fromDir`: the nearest node_modules/name,
  // walking up, never above the source tree.
  const top = path.dirname(src);
  function locate(name, fromDir) {
    let dir = fromDir;
    for (;;) {
      const base = path.basename(dir) === 'node_modules' ? dir : path.join(dir, 'node_modules');
      const candidate = path.join(base, name);
      if (fs.existsSync(path.join(candidate, 'package.json'))) return candidate;
      if (dir === top || dir === path.dirname(dir)) return null;
      dir = path.dirname(dir);
    }
  }

  const copied = new Set();
  const missing = [];
  const queue = roots.map((name) => ({ name, from: src, required: true }));
  while (queue.length) {
    const { name, from, required } = queue.shift();
    const dir = locate(name, from);
    if (!dir) {
      if (required) missing.push(name);
      continue;
    }
    const real = fs.realpathSync(dir);
    if (copied.has(real)) continue;
    copied.add(real);
    const target = path.join(dest, path.relative(src, dir));
    fs.mkdirSync(path.dirname(target), { recursive: true });
    fs.cpSync(real, target, { recursive: true });
    const pkg = JSON.parse(fs.readFileSync(path.join(real, 'package.json'), 'utf8'));
    for (const dep of Object.keys(pkg.dependencies || {})) {
      queue.push({ name: dep, from: dir, required: true });
    }
    // Optional and peer dependencies count when installed (pg-native, pg-hstore, ...).
    for (const dep of Object.keys({ ...pkg.optionalDependencies, ...pkg.peerDependencies })) {
      queue.push({ name: dep, from: dir, required: false });
    }
  }
  if (missing.length) {
    process.stderr.write(`collect-node-modules: not installed in ${src}: ${missing.join(', ')}\n`);
    return 1;
  }
  process.stdout.write(`collect-node-modules: ${copied.size} packages copied to ${dest}\n`);
  return 0;
}

process.exitCode = main(process.argv.slice(2));
