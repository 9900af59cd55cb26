'use strict';
// Evaluates an app's `.sequelizerc` and Sequelize config file the way sequelize-cli 6.6.5 does,
// in ONE node process that requires no npm package (it runs on every pod start), and prints one
// JSON document on stdout. Selection of the environment, `url` / `use_env_variable` handling and
// validation happen in Python (migrations_compat/config.py), so they are unit-testable.
//
// argv[2] is a JSON request: {rcPath: string|null, configPath: string|null, skipConfig: bool}
//   rcPath      absolute path of the rc file (`--options-path` or `<cwd>/.sequelizerc`)
//   configPath  absolute `--config` from the command line, or null
//   skipConfig  true when `--url` was given: sequelize-cli then never reads the config file
// stdout: {ok: true, rc, configPath, configExists, config, nodeEnv, envVars}
//      or {ok: false, error: {phase, message, name, file, line}}
//
// Anything the app's files print to stdout is sent to stderr instead, so stdout stays one
// JSON document.

const fs = require('fs');
const path = require('path');
const { pathToFileURL } = require('url');

Error.stackTraceLimit = 50;

const stdoutWrite = process.stdout.write.bind(process.stdout);
process.stdout.write = process.stderr.write.bind(process.stderr);
for (const name of ['log', 'info', 'debug', 'dir', 'table']) {
  // eslint-disable-next-line no-console
  console[name] = console.error.bind(console);
}

let done = false;
let phase = 'rc';
let currentFile = null;

function emit(doc) {
  if (done) return;
  done = true;
  stdoutWrite(JSON.stringify(doc) + '\n', () => process.exit(doc.ok ? 0 : 1));
}

// file and line of the error, preferring a frame inside the file being evaluated
function locate(err) {
  const stack = err && typeof err.stack === 'string' ? err.stack : '';
  const lines = stack.split('\n');
  // SyntaxError from the CJS loader starts with "<file>:<line>"
  const head = /^(\/.*|file:\/\/.*|[A-Za-z]:\\.*):(\d+)$/.exec(lines[0] || '');
  if (head) return { file: fromUrl(head[1]), line: Number(head[2]) };
  const frames = [];
  for (const l of lines) {
    const m = /\(?((?:file:\/\/)?\/[^():]*|[A-Za-z]:\\[^():]*):(\d+):(\d+)\)?\s*$/.exec(l);
    if (m && /^\s+at /.test(l)) frames.push({ file: fromUrl(m[1]), line: Number(m[2]) });
  }
  const own = frames.find((f) => f.file === currentFile);
  if (own) return own;
  const user = frames.find((f) => f.file !== __filename && !f.file.startsWith('node:'));
  if (user) return user;
  // "Cannot find module 'x'\nRequire stack:\n- /app/config.js"
  const req = /Require stack:\n- (.*)/.exec(err && err.message ? String(err.message) : '');
  if (req) return { file: req[1], line: null };
  return { file: currentFile, line: null };
}

function fromUrl(p) {
  return p.startsWith('file://') ? decodeURIComponent(new URL(p).pathname) : p;
}

function fail(err) {
  const where = locate(err);
  const message =
    err && err.message !== undefined ? String(err.message).split('\n')[0] : String(err);
  emit({
    ok: false,
    error: {
      phase,
      name: err && err.name ? String(err.name) : 'Error',
      message,
      file: where.file,
      line: where.line,
    },
  });
}

process.on('uncaughtException', fail);
process.on('unhandledRejection', fail);
process.on('exit', (code) => {
  if (!done) {
    done = true;
    const doc = {
      ok: false,
      error: {
        phase,
        name: 'Exit',
        message:
          `node exited (code ${code}) before the file was evaluated: process.exit() in it, ` +
          'or an exported promise that can never settle',
        file: currentFile,
        line: null,
      },
    };
    fs.writeSync(1, JSON.stringify(doc) + '\n');
    process.exitCode = 1;
  }
});

// sequelize-cli's path-helper existsSync: readable, not merely present
function readable(p) {
  try {
    fs.accessSync(p, fs.constants.R_OK);
    return true;
  } catch (e) {
    return false;
  }
}

// A JSON-able copy: Buffers (fs.readFileSync of a PEM) become text, functions vanish except
// ssl.checkServerIdentity (its presence decides verify-ca vs verify-full), cycles are cut but
// objects shared between environments are kept.
function plain(value, key, ancestors) {
  if (value === null || typeof value === 'string' || typeof value === 'boolean') return value;
  if (typeof value === 'number') return Number.isFinite(value) ? value : null;
  if (typeof value === 'bigint') return value.toString();
  if (typeof value === 'function') return key === 'checkServerIdentity' ? '[function]' : undefined;
  if (typeof value !== 'object') return undefined;
  if (Buffer.isBuffer(value)) return value.toString('utf8');
  if (value instanceof Date) return value.toJSON();
  if (value instanceof RegExp) return String(value);
  if (ancestors.includes(value)) return undefined;
  ancestors.push(value);
  let out;
  if (Array.isArray(value)) {
    out = value.map((v, i) => {
      const c = plain(v, String(i), ancestors);
      return c === undefined ? null : c;
    });
  } else {
    out = {};
    for (const k of Object.keys(value)) {
      const c = plain(value[k], k, ancestors);
      if (c !== undefined) out[k] = c;
    }
  }
  ancestors.pop();
  return out;
}

// every variable a `use_env_variable` names, read after the files ran (they may load dotenv)
function envVarsOf(config) {
  const vars = {};
  const look = (entry) => {
    if (entry && typeof entry === 'object' && typeof entry.use_env_variable === 'string') {
      const name = entry.use_env_variable;
      if (process.env[name] !== undefined) vars[name] = process.env[name];
    }
  };
  look(config);
  if (config && typeof config === 'object') for (const k of Object.keys(config)) look(config[k]);
  return vars;
}

// sequelize-cli's import-helper uses import() (require for .json). require() gives the same
// module.exports for CommonJS and skips loading node's ESM loader (~4 ms of every pod start),
// so try it first and import() only what require refuses (ESM, top-level await).
async function loadModule(file) {
  try {
    const exported = require(file);
    // node >= 22 can require() ESM and then returns its namespace
    return exported && exported[Symbol.toStringTag] === 'Module' ? exported.default : exported;
  } catch (err) {
    const code = err && err.code;
    if (code !== 'ERR_REQUIRE_ESM' && code !== 'ERR_REQUIRE_ASYNC_MODULE') throw err;
  }
  return (await import(pathToFileURL(file))).default;
}

async function main() {
  const req = JSON.parse(process.argv[2]);
  let rc = null;
  if (req.rcPath && fs.existsSync(req.rcPath)) {
    currentFile = req.rcPath;
    // exactly sequelize-cli's loadRCFile: require, then a JSON round trip
    rc = JSON.parse(JSON.stringify(require(req.rcPath)));
  }
  const rcArgs = rc && typeof rc === 'object' ? rc : {};

  const result = { ok: true, rc, configPath: null, configExists: false, config: null };
  if (!(req.skipConfig || rcArgs.url)) {
    // config-helper getConfigFile: --config (or the rc's `config`), else config/config.js if
    // readable, else config/config.json
    let configPath;
    const given = req.configPath || rcArgs.config;
    if (given) {
      configPath = path.resolve(process.cwd(), String(given));
    } else {
      const json = path.resolve(process.cwd(), 'config', 'config.json');
      const js = json.replace('.json', '.js');
      configPath = readable(js) ? js : json;
    }
    result.configPath = configPath;
    result.configExists = readable(configPath);
    if (result.configExists) {
      phase = 'config';
      currentFile = configPath;
      let config = await loadModule(configPath);
      if (typeof config === 'function') {
        config =
          config.length === 1
            ? await new Promise((resolve, reject) =>
                config((err, value) => (err ? reject(err) : resolve(value))),
              )
            : await config();
      }
      result.config = plain(config, '', []);
      if (result.config === undefined) result.config = null;
      result.envVars = envVarsOf(config);
    }
  }
  result.nodeEnv = process.env.NODE_ENV === undefined ? null : process.env.NODE_ENV;
  emit(result);
}

main().catch(fail);
