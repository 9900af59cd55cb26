'use strict';
/**
 * A pg-compatible module whose Client sends every query to the Python runner.
 *
 * Sequelize is given this module as `dialectModule`, so a migration's SQL runs on the runner's
 * own psycopg connection, inside the runner's transaction. Only the surface Sequelize 6 (and
 * hand-written code holding a raw connection) uses is implemented: an EventEmitter Client with a
 * `connection` EventEmitter that reports `parameterStatus`, callback and promise forms of
 * connect/query/end, pg's Result shape, and pg-style DatabaseErrors. Values come back as the
 * server's text plus type OIDs and are parsed by the type parsers Sequelize registers, exactly
 * as the real pg does, so dates, JSONB, arrays and enums come out identical.
 */
const { EventEmitter } = require('events');
const path = require('path');

const COMMAND_TAG = /^([A-Za-z]+)(?: (\d+))?(?: (\d+))?/;

/** pg's own parameter serialisation (Dates, arrays, JSON, Buffers), or a faithful fallback. */
function loadPrepareValue(pgMainPath) {
  try {
    return require(path.join(path.dirname(pgMainPath), 'utils.js')).prepareValue;
  } catch (_) {
    return (val) => {
      if (val == null) return null;
      if (Buffer.isBuffer(val)) return val;
      if (val instanceof Date) return val.toISOString();
      if (typeof val === 'object') return JSON.stringify(val);
      return val.toString();
    };
  }
}

/** pg's field descriptions for [[name, oid], ...]. */
function makeFields(raw) {
  return raw.map(([name, oid]) => ({
    name,
    tableID: 0,
    columnID: 0,
    dataTypeID: oid,
    dataTypeSize: -1,
    dataTypeModifier: -1,
    format: 'text',
  }));
}

/** Parse rows of text values (as the server sent them) onto `out`, as pg's parsers would. */
function appendRows(out, fields, rawRows, types, rowMode) {
  const parsers = fields.map((f) => types.getTypeParser(f.dataTypeID, 'text'));
  const asArray = rowMode === 'array';
  // As pg does: every row object is a copy of one with exactly these properties, so all rows
  // share one shape with no spare property slots (16 bytes a row less than `{}` + adds).
  const empty = {};
  if (!asArray) for (const f of fields) empty[f.name] = null;
  for (let r = 0; r < rawRows.length; r++) {
    const values = rawRows[r];
    const row = asArray ? new Array(values.length) : { ...empty };
    for (let i = 0; i < values.length; i++) {
      const v = values[i];
      const parsed = v === null ? null : parsers[i](v);
      if (asArray) row[i] = parsed;
      else row[fields[i].name] = parsed;
    }
    out.push(row);
  }
  return out;
}

/**
 * Build the Result pg would return for one statement. `streamed`: rows already parsed from
 * the chunks that preceded the reply (a large result travels in bounded pieces); the reply's
 * own rows follow them.
 */
function makeResult(raw, types, rowMode, streamed) {
  const fields = makeFields(raw.f);
  const rows = appendRows(streamed || [], fields, raw.rows, types, rowMode);
  const asArray = rowMode === 'array';
  const result = { command: null, rowCount: null, oid: null, rows, fields, rowAsArray: asArray };
  const match = COMMAND_TAG.exec(raw.c || '');
  if (match) {
    result.command = match[1];
    if (match[3]) {
      result.oid = parseInt(match[2], 10);
      result.rowCount = parseInt(match[3], 10);
    } else if (match[2]) {
      result.rowCount = parseInt(match[2], 10);
    }
  }
  return result;
}

/**
 * @param {object} realPg the resolved pg module (types, DatabaseError, escaping helpers)
 * @param {string} pgMainPath its resolved main file (to reuse pg's prepareValue)
 * @param {object} session {request(msg, onRows) -> Promise<reply>, clientOpened(), serverVersion()}
 */
function createPgShim(realPg, pgMainPath, session) {
  const prepareValue = loadPrepareValue(pgMainPath);
  const PgDatabaseError = realPg.DatabaseError || class DatabaseError extends Error {};
  let nextClientId = 0;

  function toDatabaseError(e, sql) {
    const err = new PgDatabaseError(e.message, 0, 'error');
    for (const key of [
      'severity', 'code', 'detail', 'hint', 'position', 'internalPosition', 'internalQuery',
      'where', 'schema', 'table', 'column', 'dataType', 'constraint', 'file', 'line', 'routine',
    ]) {
      err[key] = e[key] === null ? undefined : e[key];
    }
    // The runner names the failing statement in its report; keep the text it saw.
    Object.defineProperty(err, 'migrunnerSql', { value: sql, enumerable: false });
    return err;
  }

  function encodeParam(v) {
    const p = prepareValue(v);
    if (Buffer.isBuffer(p)) return { b: p.toString('base64') };
    return p;
  }

  class Client extends EventEmitter {
    constructor(config) {
      super();
      this.config = config || {};
      this.connection = new EventEmitter();
      this._types = (config && config.types) || realPg.types;
      this._id = ++nextClientId;
      this._connected = false;
      this._ending = false;
      this.processID = null;
    }

    connect(callback) {
      const done = new Promise((resolve, reject) => {
        process.nextTick(() => {
          const refusal = session.clientOpened(this);
          if (refusal) {
            reject(refusal);
            return;
          }
          this.connection.emit('parameterStatus', {
            parameterName: 'server_version',
            parameterValue: session.serverVersion(),
          });
          this.connection.emit('parameterStatus', {
            parameterName: 'standard_conforming_strings',
            parameterValue: 'on',
          });
          this._connected = true;
          this.emit('connect');
          resolve(this);
        });
      });
      if (typeof callback === 'function') {
        done.then(() => callback(null, this), (err) => callback(err));
        return undefined;
      }
      return done;
    }

    query(config, values, callback) {
      let text;
      let rowMode;
      let types = this._types;
      if (typeof config === 'string') {
        text = config;
      } else if (config && typeof config === 'object') {
        text = config.text;
        rowMode = config.rowMode;
        if (config.types) types = config.types;
        if (config.values !== undefined && typeof values !== 'function') values = config.values;
        if (typeof config.callback === 'function' && !callback) callback = config.callback;
      }
      if (typeof values === 'function') {
        callback = values;
        values = undefined;
      }
      if (typeof text !== 'string') {
        const err = new TypeError('Client was passed a null or undefined query');
        if (callback) {
          process.nextTick(() => callback(err));
          return undefined;
        }
        return Promise.reject(err);
      }
      const params = Array.isArray(values) && values.length ? values.map(encodeParam) : null;
      // Rows of a large result arrive in chunks before the reply; parse each as it comes, so
      // only parsed rows accumulate (as with the real pg).
      const streamed = [];
      const onRows = (chunk) => {
        const out = streamed[chunk.i] || (streamed[chunk.i] = []);
        appendRows(out, makeFields(chunk.f), chunk.rows, types, rowMode);
      };
      const done = session
        .request({ t: 'q', c: this._id, sql: text, p: params }, onRows)
        .then((reply) => {
          if (reply.e) throw toDatabaseError(reply.e, text);
          const results = reply.r.map((raw, i) =>
            makeResult(raw, types, rowMode, raw.s ? streamed[i] : null),
          );
          return results.length === 1 ? results[0] : results;
        });
      if (typeof callback === 'function') {
        done.then((res) => callback(null, res), (err) => callback(err));
        return undefined;
      }
      return done;
    }

    end(callback) {
      this._ending = true;
      const done = new Promise((resolve) => {
        process.nextTick(() => {
          this.emit('end');
          resolve();
        });
      });
      if (typeof callback === 'function') {
        done.then(() => callback());
        return undefined;
      }
      return done;
    }

    escapeIdentifier(str) {
      return realPg.Client.prototype.escapeIdentifier.call(this, str);
    }

    escapeLiteral(str) {
      return realPg.Client.prototype.escapeLiteral.call(this, str);
    }

    ref() {}

    unref() {}
  }

  return {
    Client,
    types: realPg.types,
    DatabaseError: PgDatabaseError,
    defaults: realPg.defaults,
    native: null,
  };
}

module.exports = { createPgShim };
