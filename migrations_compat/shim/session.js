'use strict';
/**
 * The run's one node process (migrations_compat/node_session.py), started by the runner before
 * its own heavy imports:
 *   node session.js <protocol-fd> <config-request-json>
 * 1. evaluates the app's `.sequelizerc` / config (config-eval.js) and answers on the protocol
 *    socket: {t:'config', ...answer} (the answer load-config.js prints);
 * 2. waits. The runner closes the socket when nothing is pending (node exits: sequelize is never
 *    loaded), or sends
 *      {t:'bridge', sequelizeDir, pgDir, nodePath, pgOptions}
 *    as soon as it knows a JS migration is pending: node then loads sequelize and serves the
 *    bridge protocol (bridge.js) on the same socket, answering 'ready'. `nodePath` is put first
 *    in NODE_PATH; `pgOptions` becomes PGOPTIONS unless the environment has one (both as
 *    bridge.py sets them for a bridge node of its own).
 * While the config is evaluated nothing but the config keeps node alive (the socket is opened as
 * a stream only once the runner asks for the bridge), so a config whose promise can never settle
 * ends node with the same answer as in load-config.js.
 */
const fs = require('fs');
const { Evaluation } = require('./config-eval');

Error.stackTraceLimit = 50;

const fd = Number(process.argv[2]);
let evaluation = null;

function onUncaught(err) {
  if (!evaluation.fail(err)) {
    // after the answer: the app's files left something running that failed; no migration runs
    // yet, so say so on stderr (the run's log once the bridge is up) and carry on
    const text = err instanceof Error ? err.stack || err.message : String(err);
    process.stderr.write(`migrunner: error in the app's config after it was read: ${text}\n`);
  }
}

function onExit(code) {
  if (evaluation.done) return;
  evaluation.done = true;
  fs.writeSync(fd, JSON.stringify({ t: 'config', ...evaluation.exitAnswer(code) }) + '\n');
  process.exitCode = 1;
}

function becomeBridge(channel, msg) {
  process.removeListener('uncaughtException', onUncaught);
  process.removeListener('unhandledRejection', onUncaught);
  process.removeListener('exit', onExit);
  Error.stackTraceLimit = 10; // node's default, as in a bridge node of its own
  const Module = require('module');
  const rest = process.env.NODE_PATH;
  process.env.NODE_PATH = rest ? [msg.nodePath, rest].join(require('path').delimiter) : msg.nodePath;
  Module._initPaths(); // NODE_PATH is read at start-up; read it again
  if (msg.pgOptions && process.env.PGOPTIONS === undefined) process.env.PGOPTIONS = msg.pgOptions;
  require('./bridge').startBridge(channel, msg.sequelizeDir, msg.pgDir);
}

evaluation = new Evaluation(JSON.parse(process.argv[3]), (answer) => {
  fs.writeSync(fd, JSON.stringify({ t: 'config', ...answer }) + '\n');
  // Wait for the runner's word with a blocking read: a no-op run kills node here, having spent
  // no CPU on anything after the answer (not even loading `net` for the channel).
  const first = waitForLine();
  if (first === null) process.exit(0); // the runner closed the socket
  const { Channel } = require('./channel');
  const channel = new Channel(fd, (msg) => {
    if (msg.t === 'bridge') becomeBridge(channel, msg);
    else process.stderr.write(`migrunner session: unexpected ${String(msg.t)} before 'bridge'\n`);
  });
  channel.feedBytes(first); // the 'bridge' line, and whatever followed it in the same read
});

/** Bytes up to and including the first newline (and whatever came with them), or null at EOF. */
function waitForLine() {
  const buf = Buffer.alloc(1 << 16);
  const chunks = [];
  for (;;) {
    let n;
    try {
      n = fs.readSync(fd, buf, 0, buf.length, null);
    } catch (err) {
      if (err.code === 'EAGAIN') continue; // cannot happen on the blocking end; be safe
      if (err.code === 'EINTR') continue;
      return null;
    }
    if (n === 0) return null;
    chunks.push(Buffer.from(buf.subarray(0, n)));
    if (buf.subarray(0, n).includes(10)) return Buffer.concat(chunks);
  }
}
process.on('uncaughtException', onUncaught);
process.on('unhandledRejection', onUncaught);
process.on('exit', onExit);
evaluation.run();
