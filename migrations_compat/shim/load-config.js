'use strict';
// A node of its own that evaluates an app's `.sequelizerc` and Sequelize config (see
// config-eval.js) and prints the answer as one JSON document on stdout. Used where no run's node
// session is at hand (session.js is the other user of config-eval.js).
//
// argv[2] is the JSON request (config-eval.js). Anything the app's files print to stdout is sent
// to stderr instead, so stdout stays one JSON document.

const fs = require('fs');
const { Evaluation } = require('./config-eval');

Error.stackTraceLimit = 50;

const stdoutWrite = process.stdout.write.bind(process.stdout);
process.stdout.write = process.stderr.write.bind(process.stderr);
for (const name of ['log', 'info', 'debug', 'dir', 'table']) {
  // eslint-disable-next-line no-console
  console[name] = console.error.bind(console);
}

const evaluation = new Evaluation(JSON.parse(process.argv[2]), (answer) => {
  stdoutWrite(JSON.stringify(answer) + '\n', () => process.exit(answer.ok ? 0 : 1));
});
const fail = (err) => evaluation.fail(err);
process.on('uncaughtException', fail);
process.on('unhandledRejection', fail);
process.on('exit', (code) => {
  if (evaluation.done) return;
  evaluation.done = true;
  fs.writeSync(1, JSON.stringify(evaluation.exitAnswer(code)) + '\n');
  process.exitCode = 1;
});
evaluation.run();
