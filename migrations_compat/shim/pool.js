'use strict';
/**
 * Pool mode: run one migration exactly as sequelize-cli runs it — the app's Sequelize with the
 * real pg driver, every transaction and every query without one on a real connection of its
 * own — for the migrations the bridge's atomic mode cannot represent (see bridge_pool.py).
 *
 * Python -> node: {t:'pool', id, path, dir, dbv, conn: {host, port, user, password, database,
 *                   ssl, applicationName, options}}
 * node -> Python: {t:'done', id, ok, err, stuck}
 * The connection settings travel on the protocol socket only (never argv or the environment).
 */
const fs = require('fs');

// After up()/down() settles, how long Sequelize may take to hand back its connections (queries
// nobody awaited finish meanwhile); a connection still checked out after that is abandoned
// and Python stops node, which closes it (sequelize-cli exits the same way).
const CLOSE_TIMEOUT_MS = 30000;

const NOT_FROM_CONFIG = [
  'host', 'port', 'username', 'password', 'database', 'url', 'use_env_variable', 'replication',
  'dialectModule', 'dialectModulePath', 'native', 'logging', 'benchmark',
];

function sslOption(ssl) {
  if (!ssl || typeof ssl !== 'object') return ssl;
  const out = { rejectUnauthorized: ssl.rejectUnauthorized !== false };
  if (ssl.ca) out.ca = fs.readFileSync(ssl.ca);
  if (ssl.cert) out.cert = fs.readFileSync(ssl.cert);
  if (ssl.key) out.key = fs.readFileSync(ssl.key);
  if (ssl.verifyHost === false) out.checkServerIdentity = () => undefined;
  return out;
}

/** The app's Sequelize options with the runner's connection (as the runner resolved it). */
function poolOptions(base, conn, pg, dbVersion) {
  const opts = { ...base };
  for (const key of NOT_FROM_CONFIG) delete opts[key];
  const dialectOptions = { ...(opts.dialectOptions || {}) };
  if (dialectOptions.ssl === undefined && conn.ssl !== undefined && conn.ssl !== null) {
    dialectOptions.ssl = sslOption(conn.ssl);
  }
  if (conn.applicationName) dialectOptions.application_name = conn.applicationName;
  if (conn.options) dialectOptions.options = conn.options;
  return {
    ...opts,
    dialect: 'postgres',
    dialectModule: pg,
    databaseVersion: dbVersion,
    host: conn.host,
    port: conn.port,
    username: conn.user,
    password: conn.password,
    database: conn.database,
    dialectOptions,
    logging: false,
  };
}

function withTimeout(promise, ms) {
  let timer;
  const expired = new Promise((resolve) => {
    timer = setTimeout(() => resolve('timeout'), ms);
  });
  return Promise.race([promise.then(() => 'closed'), expired]).finally(() => clearTimeout(timer));
}

/**
 * @param {object} msg the 'pool' request
 * @param {object} deps {Sequelize, pgMainPath, sequelizeOptions, loadMigration(file),
 *   forget(file), describeError(err, file), send(msg), pooling(on)}
 */
async function runInPool(msg, deps) {
  let error = null;
  let sequelize = null;
  let stuck = false;
  deps.pooling(true); // its real connections are neither "own connections" nor read-only
  try {
    deps.forget(msg.path); // a fresh module, as a new sequelize-cli process would load it
    const migration = await deps.loadMigration(msg.path);
    // umzug v2's lookup, as sequelize-cli runs it.
    let fun = migration[msg.dir];
    if (migration.default) fun = migration.default[msg.dir] || migration[msg.dir];
    if (!fun) {
      const e = new Error('Could not find migration method: ' + msg.dir);
      e.migrunnerKind = 'missing-method';
      throw e;
    }
    const pg = require(deps.pgMainPath);
    sequelize = new deps.Sequelize(poolOptions(deps.sequelizeOptions, msg.conn, pg, msg.dbv));
    const result = fun.apply(migration, [sequelize.getQueryInterface(), deps.Sequelize]);
    if (!result || typeof result.then !== 'function') {
      throw new Error(`Migration ${msg.path.split('/').pop()} (or wrapper) didn't return a promise`);
    }
    await result;
  } catch (err) {
    error = err;
  }
  if (sequelize) {
    try {
      stuck = (await withTimeout(sequelize.close(), CLOSE_TIMEOUT_MS)) === 'timeout';
    } catch (err) {
      if (!error) error = err;
    }
  }
  deps.pooling(false);
  deps.send({
    t: 'done',
    id: msg.id,
    ok: !error,
    err: error ? deps.describeError(error, msg.path) : null,
    stuck,
  });
}

module.exports = { runInPool, poolOptions };
