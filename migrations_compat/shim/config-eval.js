'use strict';
// Evaluates an app's `.sequelizerc` and Sequelize config file the way sequelize-cli 6.6.5 does,
// requiring no npm package (it runs on every pod start). Selection of the environment, `url` /
// `use_env_variable` handling and validation happen in Python (migrations_compat/config.py), so
// they are unit-testable. Used by load-config.js (a node of its own, answering on stdout) and by
// session.js (the run's one node, answering on its protocol socket).
//
// The request: {rcPath: string|null, configPath: string|null, skipConfig: bool}
//   rcPath      absolute path of the rc file (`--options-path` or `<cwd>/.sequelizerc`)
//   configPath  absolute `--config` from the command line, or null
//   skipConfig  true when `--url` was given: sequelize-cli then never reads the config file
// The answer: {ok: true, rc, configPath, configExists, config, nodeEnv, envVars}
//          or {ok: false, error: {phase, message, name, file, line}}

const fs = require('fs');
const path = require('path');
const { pathToFileURL } = require('url');

// file and line of the error, preferring a frame inside the file being evaluated
function locate(err, currentFile) {
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
  const user = frames.find((f) => !f.file.startsWith(__dirname + path.sep) && !f.file.startsWith('node:'));
  if (user) return user;
  // "Cannot find module 'x'\nRequire stack:\n- /app/config.js"
  const req = /Require stack:\n- (.*)/.exec(err && err.message ? String(err.message) : '');
  if (req) return { file: req[1], line: null };
  return { file: currentFile, line: null };
}

function fromUrl(p) {
  return p.startsWith('file://') ? decodeURIComponent(new URL(p).pathname) : p;
}

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

/**
 * One evaluation. `deliver(answer)` is called exactly once: with the result, or with the error
 * of the first failure (`fail()`, which callers also give uncaught errors of the app's files),
 * or, when node exits first, with `exitAnswer(code)` (the caller's 'exit' hook).
 */
class Evaluation {
  constructor(req, deliver) {
    this.req = req;
    this.deliver = deliver;
    this.done = false;
    this.phase = 'rc';
    this.currentFile = null;
  }

  finish(answer) {
    if (this.done) return false;
    this.done = true;
    this.deliver(answer);
    return true;
  }

  fail(err) {
    const where = locate(err, this.currentFile);
    const message =
      err && err.message !== undefined ? String(err.message).split('\n')[0] : String(err);
    return this.finish({
      ok: false,
      error: {
        phase: this.phase,
        name: err && err.name ? String(err.name) : 'Error',
        message,
        file: where.file,
        line: where.line,
      },
    });
  }

  exitAnswer(code) {
    return {
      ok: false,
      error: {
        phase: this.phase,
        name: 'Exit',
        message:
          `node exited (code ${code}) before the file was evaluated: process.exit() in it, ` +
          'or an exported promise that can never settle',
        file: this.currentFile,
        line: null,
      },
    };
  }

  run() {
    this.evaluate().then(
      (result) => this.finish(result),
      (err) => this.fail(err),
    );
  }

  async evaluate() {
    const req = this.req;
    let rc = null;
    if (req.rcPath && fs.existsSync(req.rcPath)) {
      this.currentFile = req.rcPath;
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
        this.phase = 'config';
        this.currentFile = configPath;
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
    return result;
  }
}

module.exports = { Evaluation };
