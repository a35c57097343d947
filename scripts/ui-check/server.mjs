// The web server the UI is served by during the check: the UI's built `dist/` as static files
// (unknown paths fall back to index.html, as a single-page app needs) and `/api/…`, `/health/…`
// proxied to iotsupport — the deployment the UI expects (same origin, `/api` on the backend).
//
// Every proxied request is logged, because the browser's own request events miss the UI's
// SharedWorker (it holds the `/api/sse/stream` connection). Bodies are streamed both ways.
//
// One option: `adminToken` adds `Authorization: Bearer <token>` to admin requests, as an
// authenticating reverse proxy would (the UI itself never sends a token). Without it the browser
// signs in itself (its session cookie passes through). Responses are passed through untouched;
// requests get `X-Forwarded-Host`/`X-Forwarded-Proto` as from any reverse proxy.

import http from 'node:http';
import fs from 'node:fs';
import path from 'node:path';

const TYPES = {
  '.html': 'text/html; charset=utf-8',
  '.js': 'text/javascript; charset=utf-8',
  '.mjs': 'text/javascript; charset=utf-8',
  '.css': 'text/css; charset=utf-8',
  '.json': 'application/json',
  '.svg': 'image/svg+xml',
  '.png': 'image/png',
  '.ico': 'image/x-icon',
  '.woff': 'font/woff',
  '.woff2': 'font/woff2',
  '.ttf': 'font/ttf',
  '.wasm': 'application/wasm',
  '.txt': 'text/plain; charset=utf-8',
};

function serveStatic(dist, req, res) {
  const url = new URL(req.url, 'http://x');
  let file = path.normalize(path.join(dist, decodeURIComponent(url.pathname)));
  if (!file.startsWith(dist)) {
    res.writeHead(400).end();
    return;
  }
  if (!fs.existsSync(file) || fs.statSync(file).isDirectory()) {
    file = path.join(dist, 'index.html');
  }
  res.writeHead(200, {
    'content-type': TYPES[path.extname(file)] ?? 'application/octet-stream',
    'cache-control': 'no-store',
  });
  fs.createReadStream(file).pipe(res);
}

function proxy(backend, options, log, req, res) {
  const started = Date.now();
  const target = new URL(req.url, backend);
  // As a reverse proxy tells the backend which host the browser addressed (sign-in callbacks
  // and the CSRF check of cookie-authenticated writes depend on it).
  const headers = {
    ...req.headers,
    host: target.host,
    'x-forwarded-host': req.headers.host ?? '',
    'x-forwarded-proto': 'http',
  };
  if (options.adminToken && !target.pathname.startsWith('/api/iot/')) {
    headers.authorization = `Bearer ${options.adminToken}`;
  }
  const entry = { method: req.method, path: req.url, status: 0, ms: 0 };
  log.push(entry);
  const upstream = http.request(target, { method: req.method, headers }, (up) => {
    entry.status = up.statusCode;
    entry.contentType = up.headers['content-type'] ?? '';
    res.writeHead(up.statusCode, up.headers);
    up.pipe(res);
    up.on('end', () => (entry.ms = Date.now() - started));
  });
  upstream.on('error', (e) => {
    entry.status = 502;
    entry.error = e.message;
    if (!res.headersSent) res.writeHead(502, { 'content-type': 'text/plain' });
    res.end(`proxy error: ${e.message}`);
  });
  req.pipe(upstream);
  res.on('close', () => upstream.destroy());
}

/**
 * Starts the server on 127.0.0.1 (a free port) and returns `{ url, log, close }`.
 * `log` collects `{method, path, status, ms, contentType, error?}` per proxied request.
 */
export async function startServer({ dist, backend, adminToken }) {
  const log = [];
  const root = path.resolve(dist);
  const server = http.createServer((req, res) => {
    const pathname = new URL(req.url, 'http://x').pathname;
    if (pathname.startsWith('/api/') || pathname === '/api' || pathname.startsWith('/health/')) {
      proxy(backend, { adminToken }, log, req, res);
    } else {
      serveStatic(root, req, res);
    }
  });
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address();
  return {
    url: `http://127.0.0.1:${port}`,
    log,
    close: () =>
      new Promise((resolve) => {
        server.closeAllConnections();
        server.close(resolve);
      }),
  };
}
