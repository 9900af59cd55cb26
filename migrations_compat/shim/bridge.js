'use strict';
/**
 * migrunner's node bridge: runs unmodified Sequelize migrations while the Python runner executes
 * every statement they issue on its own connection, inside its own transaction.
 *
 * Started once per run, either as
 *   node bridge.js <protocol-fd> <sequelize-dir> <pg-dir>     (migrations_compat/bridge.py), or
 * by session.js (migrations_compat/node_session.py) in the node that evaluated the app's config,
 * once the runner knows a JS migration is pending: one node per run.
 * The protocol is JSON lines over the socket on <protocol-fd>, never stdout: migrations print to
 * stdout/stderr, and the runner forwards those lines to its log.
 *
 * Python -> node: {t:'init', sequelizeOptions, floating} first message (kept out of argv / ps)
 *                 {t:'run', id, path, dir, sv, dbv, dry, chk}
 *                                                      run up()/down() of one migration file;
 *                                                      chk: unless it declares useTransaction:
 *                                                      false (then only {t:'done', skip: true})
 *                 {t:'meta', id, path}                  read a file's `useTransaction` flag
 *                 {t:'pool', id, path, dir, dbv, conn}  run it in pool mode (./pool.js)
 *                 {t:'rows', id, i, f, rows}            a chunk of rows of result i of query `id`
 *                 {t:'r', id, r|e}                      result (or error) of query `id`; a result
 *                                                       {s: true} has its rows in the chunks
 * node -> Python: {t:'ready', version, path, pgPath}  once sequelize is loaded
 *                 {t:'q', id, c, sql, p, fl}           execute a statement (client c, params p;
 *                                                       fl: issued after up()/down() resolved)
 *                 {t:'done', id, ok, err, running, late, own, uf, lf}  (uf: its
 *                                                      useTransaction; lf: it failed to load)
 *                 {t:'meta', id, useTransaction, err}
 *                 {t:'late', file, dir, sql}           a query after its migration finished
 * MIGRUNNER_BRIDGE_DEBUG=1 echoes every protocol line to stderr (and so to the run log).
 */
const path = require('path');
const { pathToFileURL } = require('url');
const { Channel } = require('./channel');
const { createPgShim } = require('./pg-shim');
const { runInPool } = require('./pool');

// Set by startBridge(): the sequelize and pg directories resolved by the Python side (app's
// node_modules first, shim's as fallback); NODE_PATH points at the same node_modules so a
// migration's own require('sequelize') gets this very copy.
let Sequelize = null;
let pgMainPath = null;
let realPg = null;

/**
 * The parts of pg the shim needs — type parsers, DatabaseError, defaults, escaping — without
 * pg's Client, Pool and protocol stack: ~12 ms less on the bridge's start-up, which is on the
 * critical path of every run with a JS migration. Falls back to the whole module when the
 * app's pg is older than the layout relied on (utils.escapeIdentifier arrived in pg 8.11).
 */
function loadPgParts(mainPath) {
  try {
    const dir = path.dirname(mainPath);
    const types = require(require.resolve('pg-types', { paths: [dir] }));
    const { DatabaseError } = require(require.resolve('pg-protocol', { paths: [dir] }));
    const utils = require(path.join(dir, 'utils.js'));
    const defaults = require(path.join(dir, 'defaults.js'));
    if (typeof utils.escapeIdentifier !== 'function' || typeof DatabaseError !== 'function') {
      return require(mainPath);
    }
    return {
      types,
      DatabaseError,
      defaults,
      Client: {
        prototype: {
          escapeIdentifier: (str) => utils.escapeIdentifier(str),
          escapeLiteral: (str) => utils.escapeLiteral(str),
        },
      },
    };
  } catch (err) {
    return require(mainPath);
  }
}

// Floating queries (issued without await, or still running when up()/down() resolves) belong
// to the migration: it is finished only once quiescent — nothing pending (a Sequelize call not
// yet settled, or a statement in flight) and nothing new for SETTLE_QUIET_TURNS event-loop
// turns. Promise chains (`.then(() => qi.bulkUpdate(...))`) continue in microtasks, which all
// run before the next turn, so a chain is seen before the turns run out. Event-driven: while
// something is pending the loop sleeps until a completion wakes it. After a floating query,
// one short timer pass also lets `setTimeout(0)`-deferred work show up.
const SETTLE_QUIET_TURNS = 5;
const SETTLE_TIMER_MS = 2;

/** One migration's up()/down(): its own Sequelize instance, clients and query bookkeeping. */
class Run {
  constructor(bridge, msg) {
    this.bridge = bridge;
    this.id = msg.id;
    this.file = msg.path;
    this.dir = msg.dir;
    this.serverVersionText = msg.sv;
    this.dry = Boolean(msg.dry);
    this.state = 'running'; // -> 'settling' (up()/down() resolved) -> 'closed'
    this.inflight = new Map(); // statements sent to Python and not answered yet
    this.calls = 0; // Sequelize calls (query, transaction) not settled yet
    this.activity = 0; // bumped by every call, statement and completion
    this.late = []; // strict mode: statements refused because they floated
    this.asyncErrors = [];
    this.ownConnections = 0; // real pg connections the migration opened itself
    this.waiter = null;
    this.timedOut = false;
  }

  get strict() {
    return this.bridge.floating.strict;
  }

  /** Wrap a Sequelize call (query, transaction) so that it counts as pending until it settles. */
  track(start, sql) {
    if (this.state === 'closed' || (this.state === 'settling' && this.strict)) {
      return Promise.reject(this.lateError(sql));
    }
    this.calls++;
    this.activity++;
    let promise;
    try {
      promise = start();
    } catch (err) {
      this.completed();
      throw err;
    }
    if (!promise || typeof promise.then !== 'function') {
      this.completed();
      return promise;
    }
    // A promise of our own, so a rejection nobody handles stays unhandled (and fails the
    // migration) exactly as it would on the original one. An async function, not a
    // `new Promise`, so V8's async stack trace still reaches the migration's own line.
    return this.settled(promise);
  }

  async settled(promise) {
    try {
      return await promise;
    } finally {
      this.completed();
    }
  }

  completed() {
    this.calls--;
    this.activity++;
    this.wake();
  }

  pending() {
    return this.calls + this.inflight.size;
  }

  wake() {
    const waiter = this.waiter;
    if (waiter && (this.pending() === 0 || this.timedOut)) {
      this.waiter = null;
      waiter();
    }
  }

  request(msg, onRows) {
    if (this.state === 'closed' || (this.state === 'settling' && this.strict)) {
      return Promise.reject(this.lateError(msg.sql));
    }
    const floating = this.state === 'settling';
    return new Promise((resolve, reject) => {
      const id = this.bridge.nextQueryId++;
      this.inflight.set(id, msg.sql);
      this.activity++;
      this.bridge.pending.set(id, {
        onRows,
        onReply: (reply) => {
          this.inflight.delete(id);
          this.activity++;
          resolve(reply);
          this.wake();
        },
      });
      try {
        this.bridge.channel.send(floating ? { ...msg, id, fl: true } : { ...msg, id });
      } catch (e) {
        this.inflight.delete(id);
        this.bridge.pending.delete(id);
        reject(e);
      }
    });
  }

  /**
   * Wait until the migration is quiescent (see SETTLE_QUIET_TURNS), at most timeoutMs.
   * Returns false when the settle timeout expired first.
   */
  async settle(timeoutMs) {
    const timer = setTimeout(() => {
      this.timedOut = true;
      this.wake();
    }, timeoutMs);
    let floated = this.pending() > 0;
    let timerPassDone = false;
    let quiet = 0;
    let seen = this.activity;
    while (!this.timedOut) {
      if (this.pending() > 0) {
        floated = true;
        await new Promise((resolve) => {
          this.waiter = resolve;
          this.wake();
        });
        quiet = 0;
        seen = this.activity;
        continue;
      }
      await new Promise((resolve) => setImmediate(resolve));
      if (this.activity !== seen) {
        floated = true;
        seen = this.activity;
        quiet = 0;
        continue;
      }
      if (++quiet < SETTLE_QUIET_TURNS) continue;
      if (!floated || timerPassDone) break;
      timerPassDone = true;
      quiet = 0;
      await new Promise((resolve) => setTimeout(resolve, SETTLE_TIMER_MS));
    }
    clearTimeout(timer);
    return !this.timedOut;
  }

  lateError(sql) {
    const text = typeof sql === 'string' ? sql : String(sql && sql.query ? sql.query : sql);
    if (this.state === 'closed') {
      this.bridge.channel.send({ t: 'late', file: this.file, dir: this.dir, sql: text });
      return new Error(
        `query issued after ${path.basename(this.file)}'s ${this.dir}() had finished and its ` +
          `transaction ended; not executed: ${text.split('\n')[0].slice(0, 200)}`,
      );
    }
    this.late.push(text);
    return new Error(
      `query issued after ${this.dir}() resolved: ${text.split('\n')[0].slice(0, 200)} — ` +
        'missing await? (--strict-await)',
    );
  }

  clientOpened() {
    if (this.state === 'closed' || (this.state === 'settling' && this.strict)) {
      return this.lateError('(new connection)');
    }
    return null;
  }

  serverVersion() {
    return this.serverVersionText;
  }
}

/** Sequelize options from the app's config, minus anything about reaching the database. */
function sequelizeOptions(base, pgShim, dbVersion) {
  const opts = { ...base };
  for (const key of [
    'host', 'port', 'username', 'password', 'database', 'url', 'use_env_variable', 'replication',
    'dialectModule', 'dialectModulePath', 'native', 'pool', 'logging', 'benchmark',
  ]) {
    delete opts[key];
  }
  return {
    ...opts,
    dialect: 'postgres',
    dialectModule: pgShim,
    databaseVersion: dbVersion,
    host: 'migrunner-bridge',
    database: 'migrunner',
    username: 'migrunner',
    logging: false,
    // All clients share the runner's one session; a small pool only lets Sequelize overlap
    // acquisitions (transactions hold their own client), queries are serialised in Python.
    pool: { max: 5, min: 0, idle: 60000, acquire: 60000, evict: 60000 },
  };
}

function locationIn(stack, file) {
  if (!stack) return null;
  for (const line of String(stack).split('\n')) {
    const idx = line.indexOf(file + ':');
    if (idx >= 0) {
      const m = /:(\d+)(?::(\d+))?/.exec(line.slice(idx + file.length));
      if (m) return Number(m[1]);
    }
  }
  return null;
}

/** The pg error behind a Sequelize error, if any (Sequelize wraps it as .original/.parent). */
function pgErrorOf(err) {
  const seen = new Set();
  let e = err;
  while (e && typeof e === 'object' && !seen.has(e)) {
    seen.add(e);
    if (typeof e.code === 'string' && /^[0-9A-Z]{5}$/.test(e.code)) return e;
    e = e.original || e.parent || e.cause;
  }
  return null;
}

function describeError(err, file) {
  if (!(err instanceof Error)) {
    return { kind: 'exception', name: 'Error', message: `non-Error value thrown: ${String(err)}` };
  }
  const out = { kind: err.migrunnerKind || 'exception', name: err.name, message: err.message };
  if (err instanceof SyntaxError && err.stack) {
    // require() puts "<file>:<line>" on the first line of a SyntaxError's stack.
    const m = /^(.*):(\d+)\n/.exec(err.stack);
    if (m) {
      out.kind = 'syntax';
      out.file = m[1];
      out.line = Number(m[2]);
    }
  }
  const pgErr = pgErrorOf(err);
  if (pgErr) {
    out.code = pgErr.code;
    out.message = pgErr.message;
    if (pgErr.detail) out.detail = pgErr.detail;
    out.sql = pgErr.migrunnerSql || err.sql;
    // Not from the bridge: the migration's own connection (a second Sequelize, the app's models).
    if (pgErr.migrunnerSql === undefined) out.external = true;
  } else if (err.sql) {
    out.sql = err.sql;
  }
  if (Array.isArray(err.errors) && err.errors.length && !pgErr) {
    // Sequelize ValidationError: the useful part is in .errors.
    out.message += ': ' + err.errors.map((e) => e.message).join('; ');
  }
  if (out.line === undefined) {
    const line = locationIn(err.stack, file);
    if (line) out.line = line;
  }
  return out;
}

// CommonJS, ESM and TypeScript migrations (shim/load-migration.js).
const { loadMigration } = require('./load-migration');

class Bridge {
  constructor(channel) {
    // Type OIDs learnt by the first migration's Sequelize instance (its pg_type query),
    // handed to later instances as sequelize-cli's single instance would keep them.
    this.typeOids = null;
    this.sequelizeOptions = {};
    // Files whose up()/down() already ran here: a retry (lock timeout, deadlock, re-run outside
    // a transaction) loads them afresh, as a new sequelize-cli process would.
    this.ranFiles = new Set();
    this.nextQueryId = 1;
    this.pending = new Map();
    // strict: refuse floating queries; settleMs: how long to wait for them (see Run.settle).
    this.floating = { strict: false, settleMs: 120000 };
    this.basePgOptions = process.env.PGOPTIONS;
    this.dryRun = false;
    this.ownOutsideRuns = 0;
    watchOwnConnections(this);
    this.current = null;
    this.queue = Promise.resolve();
    this.channel = channel;
    channel.onMessage = (msg) => this.onMessage(msg);
    process.on('unhandledRejection', (reason) => this.asyncFailure(reason));
    process.on('uncaughtException', (err) => this.asyncFailure(err));
  }

  asyncFailure(err) {
    // A stray rejection must not kill the bridge (node's default) but must fail the migration.
    if (this.current && this.current.state !== 'closed') {
      this.current.asyncErrors.push(err);
    } else {
      const text = err instanceof Error ? err.stack || err.message : String(err);
      process.stderr.write(`migrunner bridge: error outside any migration: ${text}\n`);
    }
  }

  onMessage(msg) {
    if (msg.t === 'rows') {
      const entry = this.pending.get(msg.id);
      if (entry && entry.onRows) entry.onRows(msg);
      return;
    }
    if (msg.t === 'r') {
      const entry = this.pending.get(msg.id);
      if (entry) {
        this.pending.delete(msg.id);
        entry.onReply(msg);
      }
      return;
    }
    if (msg.t === 'init') {
      this.sequelizeOptions = msg.sequelizeOptions || {};
      this.floating = { ...this.floating, ...(msg.floating || {}) };
      if (msg.dry) {
        // A dry run: from now on (module loading included) own connections are read-only.
        this.dryRun = true;
        this.setReadOnly(true);
      }
      return;
    }
    if (msg.t === 'pool') {
      this.queue = this.queue.then(() => runInPool(msg, this.poolDeps()));
      return;
    }
    // Runs and metadata reads are strictly sequential.
    this.queue = this.queue.then(() => (msg.t === 'run' ? this.run(msg) : this.meta(msg)));
  }

  poolDeps() {
    return {
      Sequelize,
      pgMainPath,
      sequelizeOptions: this.sequelizeOptions,
      loadMigration,
      describeError,
      forget: (file) => {
        if (this.ranFiles.has(file)) delete require.cache[file];
        this.ranFiles.add(file);
      },
      send: (m) => this.channel.send(m),
      pooling: (on) => {
        this.pooling = on;
      },
    };
  }

  adoptTypeOids(sequelize) {
    const cm = sequelize.connectionManager;
    if (!this.typeOids || !cm.nameOidMap || !Sequelize.DataTypes.postgres) return;
    cm.nameOidMap = this.typeOids.nameOidMap;
    cm.enumOids = this.typeOids.enumOids;
    cm.refreshTypeParser(Sequelize.DataTypes.postgres);
  }

  keepTypeOids(sequelize) {
    const cm = sequelize.connectionManager;
    if (cm.nameOidMap && Object.keys(cm.nameOidMap).length) {
      this.typeOids = { nameOidMap: cm.nameOidMap, enumOids: cm.enumOids };
    }
  }

  async meta(msg) {
    try {
      const flag = useTransactionOf(await loadMigration(msg.path));
      this.channel.send({ t: 'meta', id: msg.id, useTransaction: flag });
    } catch (err) {
      this.channel.send({ t: 'meta', id: msg.id, err: describeError(err, msg.path) });
    }
  }

  async run(msg) {
    const run = new Run(this, msg);
    this.current = run;
    this.setReadOnly(run.dry || this.dryRun);
    // connections opened while its file was loaded (the `meta` request just before)
    run.ownConnections += this.ownOutsideRuns;
    this.ownOutsideRuns = 0;
    let error = null;
    let sequelize = null;
    let flag;
    try {
      if (this.ranFiles.has(run.file)) delete require.cache[run.file];
      let migration;
      try {
        migration = await loadMigration(run.file);
      } catch (err) {
        run.loadFailed = true; // reported as "failed to load", as a 'meta' request would
        throw err;
      }
      flag = useTransactionOf(migration);
      if (msg.chk && flag === false) {
        // It runs outside a transaction (pool mode): the runner rolls its BEGIN back and asks
        // again; the module stays loaded for that run, as after a 'meta'.
        this.current = null;
        this.channel.send({ t: 'done', id: run.id, ok: true, skip: true, uf: false });
        return;
      }
      this.ranFiles.add(run.file);
      // umzug v2's lookup, as sequelize-cli runs it.
      let fun = migration[run.dir];
      if (migration.default) fun = migration.default[run.dir] || migration[run.dir];
      if (!fun) {
        const e = new Error('Could not find migration method: ' + run.dir);
        e.migrunnerKind = 'missing-method';
        throw e;
      }
      const pgShim = createPgShim(realPg, pgMainPath, run);
      sequelize = new Sequelize(sequelizeOptions(this.sequelizeOptions, pgShim, msg.dbv));
      this.adoptTypeOids(sequelize);
      const query = sequelize.query.bind(sequelize);
      sequelize.query = (sql, options) => run.track(() => query(sql, options), sql);
      const transaction = sequelize.transaction.bind(sequelize);
      sequelize.transaction = (options, autoCallback) =>
        run.track(() => transaction(options, autoCallback), '(transaction)');
      const result = fun.apply(migration, [sequelize.getQueryInterface(), Sequelize]);
      if (!result || typeof result.then !== 'function') {
        throw new Error(`Migration ${path.basename(run.file)} (or wrapper) didn't return a promise`);
      }
      await result;
    } catch (err) {
      error = err;
    }
    const running = [...run.inflight.values()];
    run.state = 'settling';
    const settled = await run.settle(this.floating.settleMs);
    run.state = 'closed';
    if (!error && run.asyncErrors.length) error = run.asyncErrors[0];
    if (!error && !settled) {
      const busy = [...run.inflight.values()];
      error = new Error(
        `not finished ${Math.round(this.floating.settleMs / 1000)} s after ${run.dir}() ` +
          'resolved: queries nobody awaited are still ' +
          (busy.length ? `running (${String(busy[0]).split('\n')[0].slice(0, 200)})` : 'pending') +
          '; raise --settle-timeout, or await them',
      );
      error.migrunnerKind = 'settle-timeout';
    }
    if (sequelize) {
      this.keepTypeOids(sequelize);
      // Idle clients only; a client still held by unfinished code is refused from now on.
      sequelize.connectionManager.pool.destroyAllNow().catch(() => {});
    }
    this.current = null;
    this.channel.send({
      t: 'done',
      id: run.id,
      ok: !error,
      err: error ? describeError(error, run.file) : null,
      running,
      late: run.late,
      own: run.ownConnections,
      uf: flag === undefined ? null : flag,
      lf: Boolean(run.loadFailed),
    });
  }

  /**
   * During a dry run every connection a migration opens itself is read-only: PGOPTIONS for
   * anything started from here (pg, psql), and the hook in watchOwnConnections for pg clients
   * whose config overrides PGOPTIONS.
   */
  setReadOnly(on) {
    const base = this.basePgOptions;
    if (on) {
      const ro = '-c default_transaction_read_only=on';
      process.env.PGOPTIONS = base ? `${base} ${ro}` : ro;
    } else if (base === undefined) {
      delete process.env.PGOPTIONS;
    } else {
      process.env.PGOPTIONS = base;
    }
  }
}

/**
 * Notice the real pg clients a migration connects itself (a second Sequelize from
 * DATABASE_URL, the app's own models): they run outside the runner's transaction, so a dry run
 * cannot rehearse them and must not let them write. pg is patched where it is loaded, so the
 * bridge itself still never loads pg's client stack.
 */
function watchOwnConnections(bridge) {
  const Module = require('module');
  const patched = new WeakSet();
  const patch = (pg) => {
    const Client = pg && pg.Client;
    if (typeof Client !== 'function' || patched.has(Client.prototype)) return;
    patched.add(Client.prototype);
    const connect = Client.prototype.connect;
    Client.prototype.connect = function migrunnerConnect(callback) {
      // pool mode (./pool.js): the migration's own real connections, as sequelize-cli's
      if (bridge.pooling) return connect.call(this, callback);
      const run = bridge.current;
      if (run) run.ownConnections++;
      else bridge.ownOutsideRuns++;
      if (!bridge.dryRun && !(run && run.dry)) return connect.call(this, callback);
      // Dry run: make the session read-only before anyone can use it.
      const ready = connect
        .call(this)
        .then(() => this.query('SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY'))
        .then(() => this);
      if (typeof callback === 'function') {
        ready.then(() => callback(null, this), (err) => callback(err));
        return undefined;
      }
      return ready;
    };
  };
  const load = Module._load;
  Module._load = function migrunnerLoad(request, parent, isMain) {
    const exported = load.call(this, request, parent, isMain);
    if (request === 'pg' || /[\\/]node_modules[\\/]pg(?:[\\/]lib(?:[\\/]index(?:\.js)?)?)?$/.test(request)) {
      patch(exported);
    }
    return exported;
  };
}

/** A migration module's `useTransaction` export: true, false, or null when it has none. */
function useTransactionOf(mod) {
  let flag = mod.useTransaction;
  if (flag === undefined && mod.default) flag = mod.default.useTransaction;
  return flag === undefined ? null : Boolean(flag);
}

/**
 * Load sequelize and pg's parts, then serve `channel`: announced by a 'ready' message. Called at
 * start-up (`node bridge.js <fd> <sequelize-dir> <pg-dir>`), or by session.js once the runner
 * knows a JS migration is pending.
 */
function startBridge(channel, sequelizeDir, pgDir) {
  Sequelize = require(sequelizeDir);
  pgMainPath = require.resolve(pgDir);
  realPg = loadPgParts(pgMainPath);
  const bridge = new Bridge(channel);
  channel.send({
    t: 'ready',
    version: Sequelize.version || require(path.join(sequelizeDir, 'package.json')).version,
    path: sequelizeDir,
    pgPath: pgDir,
  });
  return bridge;
}

module.exports = { startBridge };

if (require.main === module) {
  startBridge(new Channel(Number(process.argv[2])), process.argv[3], process.argv[4]);
}
