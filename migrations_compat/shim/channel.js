'use strict';
/**
 * Line-oriented JSON transport on the socket inherited from the Python runner (its fd number is
 * argv[2] of both bridge.js and session.js). `onMessage` may be replaced while messages arrive:
 * a session hands the channel to the bridge between two lines of one chunk.
 * MIGRUNNER_BRIDGE_DEBUG=1 echoes every protocol line to stderr (and so to the run log).
 */
const net = require('net');
const { StringDecoder } = require('string_decoder');

class Channel {
  constructor(fd, onMessage) {
    this.fd = fd;
    this.onMessage = onMessage;
    this.sock = new net.Socket({ fd, readable: true, writable: true });
    // what setEncoding('utf8') would do, also for bytes read before the stream existed
    this.decoder = new StringDecoder('utf8');
    // Pieces of a line not yet complete; only new data is scanned, so a 50 MB reply costs
    // linear time.
    this.parts = [];
    this.sock.on('data', (bytes) => this.feedBytes(bytes));
    // The runner closed its end (finished, or died): nothing left to do.
    this.sock.on('end', () => process.exit(0));
    this.sock.on('error', () => process.exit(0));
  }

  /** Bytes from the socket (a character split between reads waits for its rest). */
  feedBytes(bytes) {
    this.feed(this.decoder.write(bytes));
  }

  /** Lines of `chunk` (text) to onMessage; a partial line waits for the rest. */
  feed(chunk) {
    let parts = this.parts;
    {
      let start = 0;
      let nl;
      while ((nl = chunk.indexOf('\n', start)) >= 0) {
        parts.push(chunk.slice(start, nl));
        const line = parts.length === 1 ? parts[0] : parts.join('');
        parts = [];
        start = nl + 1;
        if (line) {
          if (process.env.MIGRUNNER_BRIDGE_DEBUG) process.stderr.write(`<< ${line.slice(0, 200)}\n`);
          this.onMessage(JSON.parse(line));
        }
      }
      if (start < chunk.length) parts.push(chunk.slice(start));
    }
    this.parts = parts;
  }

  send(msg) {
    const line = JSON.stringify(msg);
    if (process.env.MIGRUNNER_BRIDGE_DEBUG) process.stderr.write(`>> ${line.slice(0, 200)}\n`);
    this.sock.write(line + '\n');
  }
}

module.exports = { Channel };
