// The tus project's own server (@tus/server + @tus/file-store), for edge's tests.
//
//   node server.js PORT DIR
//
// Listens on 127.0.0.1:PORT (0 picks a free port) and stores uploads in DIR
// (file-store layout: DIR/<id> holds the bytes, DIR/<id>.json the upload info).
// Writes one JSON object per line on stdout, so a test can wait on what the
// server saw instead of sleeping:
//   {"event":"listening","port":N}
//   {"event":"request","method":"PATCH","path":"/files/<id>","upload_offset":"1048576",...}
//   {"event":"response","method":"PATCH","path":"/files/<id>","status":204,"upload_offset":"2097152"}
// Ends on SIGTERM/SIGINT; a test may also SIGKILL it to stand in for a crash.
'use strict';

const http = require('node:http');
const { Server } = require('@tus/server');
const { FileStore } = require('@tus/file-store');

function main(argv) {
  if (argv.length !== 2) {
    process.stderr.write('usage: node server.js PORT DIR\n');
    process.exit(2);
  }
  const port = Number.parseInt(argv[0], 10);
  const directory = argv[1];
  if (!Number.isInteger(port) || port < 0 || port > 65535) {
    process.stderr.write(`bad port: ${argv[0]}\n`);
    process.exit(2);
  }

  const tus = new Server({
    path: '/files',
    datastore: new FileStore({ directory }),
  });

  const emit = (obj) => process.stdout.write(`${JSON.stringify(obj)}\n`);

  const server = http.createServer((req, res) => {
    const path = req.url;
    emit({
      event: 'request',
      method: req.method,
      path,
      upload_offset: req.headers['upload-offset'] ?? null,
      upload_length: req.headers['upload-length'] ?? null,
      upload_metadata: req.headers['upload-metadata'] ?? null,
      content_length: req.headers['content-length'] ?? null,
      tus_resumable: req.headers['tus-resumable'] ?? null,
    });
    res.on('finish', () => {
      emit({
        event: 'response',
        method: req.method,
        path,
        status: res.statusCode,
        upload_offset: res.getHeader('upload-offset') ?? null,
        location: res.getHeader('location') ?? null,
      });
    });
    tus.handle(req, res);
  });

  server.listen({ host: '127.0.0.1', port }, () => {
    emit({ event: 'listening', port: server.address().port });
  });

  const stop = () => {
    server.close(() => process.exit(0));
    // Connections kept alive by a client would hold close() open: drop them.
    server.closeAllConnections();
  };
  process.on('SIGTERM', stop);
  process.on('SIGINT', stop);
}

main(process.argv.slice(2));
