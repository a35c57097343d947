// Drives the unmodified IoTSupportUI (built from its own repository, outside ours) against a
// running iotsupport through headless Chromium, prints one PASS/FAIL line per check, then every
// API call the UI made with what went wrong: failed calls and responses whose shape differs from
// the UI's generated types. Started by scripts/ui-check.sh, which prepares everything; see there
// for the environment variables. Exit status 0 only when every check passes and no call failed
// or mismatched (calls to endpoints SPEC leaves out are reported, not counted).

import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { chromium } from 'playwright-core';
import { startServer } from './server.mjs';
import { loadOpenApi, checkResponse, excludedReason } from './shapes.mjs';

const env = (name, fallback) => {
  const v = process.env[name] ?? fallback;
  if (v === undefined) {
    console.error(`error: ${name} is not set (run scripts/ui-check.sh)`);
    process.exit(2);
  }
  return v;
};

const UI_SRC = env('UI_SRC');
const BACKEND = env('IOTSUPPORT_URL');
const OUT = env('UI_CHECK_OUT');
const BUNDLE = env('UI_CHECK_BUNDLE');
const CODE = env('UI_CHECK_MODEL_CODE');
const FW_VERSION = env('UI_CHECK_FIRMWARE_VERSION');
const DUMP = env('UI_CHECK_DUMP');
const CHIP = env('UI_CHECK_CHIP');
const MQTT_PORT = env('UI_CHECK_MQTT_PORT');
const MOSQUITTO_PUB = env('MOSQUITTO_PUB');
// Our own setup calls (seeding, reading back) authenticate with it; the browser does not.
const ADMIN_TOKEN = process.env.UI_CHECK_ADMIN_TOKEN || '';
// What the proxy adds to the browser's admin requests (token mode), if anything.
const PROXY_TOKEN = process.env.UI_CHECK_PROXY_TOKEN || '';
const AUTH = process.env.UI_CHECK_AUTH || 'open';
const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';
const WAIT = Number(process.env.UI_CHECK_TIMEOUT_MS || 20000);

fs.mkdirSync(OUT, { recursive: true });
const api = loadOpenApi(path.join(UI_SRC, 'openapi-cache', 'openapi.json'));
const monacoDir = path.join(UI_SRC, 'node_modules', 'monaco-editor', 'min', 'vs');

// ---------------------------------------------------------------------------------------------
// Direct calls to iotsupport (seeding data the UI has no form for, reading back results)

async function backend(method, p, { body, headers = {}, admin = true } = {}) {
  const h = { ...headers };
  if (admin && ADMIN_TOKEN) h.authorization = `Bearer ${ADMIN_TOKEN}`;
  const r = await fetch(new URL(p, BACKEND), { method, body, headers: h });
  const text = await r.text();
  let json;
  try {
    json = JSON.parse(text);
  } catch {
    json = text;
  }
  return { status: r.status, json };
}

// ---------------------------------------------------------------------------------------------
// Browser, recording every API response the page sees

const server = await startServer({
  dist: path.join(UI_SRC, 'dist'),
  backend: BACKEND,
  adminToken: PROXY_TOKEN,
});
const browser = await chromium.launch({ executablePath: CHROMIUM, args: ['--no-sandbox'] });
const context = await browser.newContext({ baseURL: server.url, viewport: { width: 1440, height: 900 } });
const page = await context.newPage();

const bodies = []; // {method, path, status, body}
const pending = [];
const blocked = new Set();
let current = 'start';
const pageErrors = []; // {check, message}

context.on('response', (resp) => {
  const url = new URL(resp.url());
  if (url.origin !== server.url || !url.pathname.startsWith('/api/')) return;
  const type = resp.headers()['content-type'] ?? '';
  const rec = { method: resp.request().method(), path: url.pathname + url.search, status: resp.status() };
  bodies.push(rec);
  if (type.startsWith('application/json')) {
    pending.push(
      resp.text().then(
        (t) => {
          try {
            rec.body = JSON.parse(t);
          } catch {
            rec.bodyError = 'not JSON';
          }
        },
        () => {},
      ),
    );
  }
});
page.on('pageerror', (e) => pageErrors.push({ check: current, message: e.message }));

// The UI's code editor (Monaco) loads from cdn.jsdelivr.net at run time. The check runs
// offline: those requests are answered from the UI's own node_modules/monaco-editor (the same
// version), everything else off 127.0.0.1 is refused and listed.
await context.route('**/*', async (route) => {
  const url = new URL(route.request().url());
  if (url.hostname === '127.0.0.1') return route.continue();
  const m = url.hostname === 'cdn.jsdelivr.net' && url.pathname.match(/^\/npm\/monaco-editor@[^/]+\/min\/vs\/(.*)$/);
  if (m) {
    const file = path.join(monacoDir, m[1]);
    if (file.startsWith(monacoDir) && fs.existsSync(file)) return route.fulfill({ path: file });
  }
  blocked.add(`${url.origin}${url.pathname}`);
  return route.abort();
});

// ---------------------------------------------------------------------------------------------
// Checks

const results = [];
let shot = 0;

async function check(name, fn) {
  current = name;
  const errorsBefore = pageErrors.length;
  let error = null;
  try {
    await fn();
  } catch (e) {
    error = e;
  }
  let crash = null;
  if (error) crash = await routerError();
  const file = path.join(OUT, `${String(++shot).padStart(2, '0')}-${name.replace(/[^a-z0-9]+/gi, '-').toLowerCase()}.png`);
  await page.screenshot({ path: file, fullPage: true }).catch(() => {});
  const newErrors = pageErrors.slice(errorsBefore).map((e) => e.message);
  results.push({ name, ok: !error, error, pageErrors: newErrors, screenshot: file });
  const suffix = '';
  if (!error) {
    console.log(`PASS  ${name}${suffix}`);
  } else {
    const reason = String(error.message ?? error).split('\n')[0];
    console.log(`FAIL  ${name}${suffix}: ${reason}`);
    if (crash) console.log(`        the UI crashed ("Something went wrong!"): ${crash}`);
    for (const m of [...new Set(newErrors)].slice(0, 3)) console.log(`        page error: ${m}`);
  }
  return !error;
}

/** The message of TanStack Router's error screen, when the UI shows it instead of the page. */
async function routerError() {
  try {
    const heading = page.getByText('Something went wrong!');
    if (!(await heading.count())) return null;
    const button = page.getByRole('button', { name: 'Show Error' });
    if (await button.count()) await button.click({ timeout: 2000 });
    const pre = page.locator('pre');
    return (await pre.count()) ? (await pre.first().innerText()).split('\n')[0] : 'no message shown';
  } catch {
    return null;
  }
}

function fail(message) {
  throw new Error(message);
}

const byTestId = (id) => page.locator(`[data-testid="${id}"]`);

/** Text a Monaco editor inside `container` shows (its rendered lines). */
async function monacoText(container) {
  const lines = container.locator('.view-lines');
  await lines.first().waitFor({ timeout: WAIT });
  return (await lines.first().innerText()).replace(/\u00a0/g, ' ');
}

async function waitForMonacoText(container, needle) {
  const deadline = Date.now() + WAIT;
  let text = '';
  while (Date.now() < deadline) {
    text = await monacoText(container).catch(() => '');
    if (text.includes(needle)) return text;
    await page.waitForTimeout(200);
  }
  fail(`editor does not show ${JSON.stringify(needle)} (shows ${JSON.stringify(text.slice(0, 80))})`);
}

const MODEL_NAME = 'UI check sensor';
const SEEDED_CODE = 'seeded_by_api';
const DEVICE_NAME = 'ui-check-device';
// One line: typed newlines would make Monaco auto-indent and auto-close around the text.
const ENTITY_ID = 'sensor.ui_check';
const DEVICE_CONFIG = JSON.stringify({ deviceName: DEVICE_NAME, deviceEntityId: ENTITY_ID, enableOTA: true });
let modelId;
let device; // the POST /api/devices response body
let coredumpId;

// A model created through the API first, so the list has a row before the form adds another.
{
  const r = await backend('POST', '/api/device-models', {
    body: JSON.stringify({ code: SEEDED_CODE, name: 'Seeded by API' }),
    headers: { 'content-type': 'application/json' },
  });
  if (r.status !== 201) console.log(`note  seeding a model through the API answered ${r.status}: ${JSON.stringify(r.json)}`);
}

if (AUTH === 'oidc') {
  await check('signs in through the OIDC provider (authorization code with PKCE)', async () => {
    await page.goto('/device-models');
    // 401 from /api/auth/self → /api/auth/login → the provider → /api/auth/callback → back here.
    await byTestId('app-shell.root').waitFor({ timeout: WAIT });
    await page.waitForURL(/\/device-models$/, { timeout: WAIT });
    const steps = server.log.map((e) => `${e.method} ${new URL(e.path, 'http://x').pathname} ${e.status}`);
    for (const want of ['GET /api/auth/login 302', 'GET /api/auth/callback 303']) {
      if (!steps.includes(want)) fail(`no ${want} among the proxied requests: ${steps.slice(0, 12).join(', ')}`);
    }
    const cookies = await context.cookies();
    const session = cookies.find((c) => c.name === 'iotsupport_session');
    if (!session) fail('no session cookie');
    if (!session.httpOnly || session.sameSite !== 'Lax') fail(`cookie attributes: ${JSON.stringify(session)}`);
    const user = byTestId('app-shell.topbar.user');
    await user.waitFor({ timeout: WAIT });
    const name = (await user.innerText()).trim();
    if (!name.includes('Ada Lovelace')) fail(`the top bar names ${JSON.stringify(name)}`);
  });
}

await check('app shell renders (GET /api/auth/self, live stream)', async () => {
  await page.goto('/device-models');
  await byTestId('app-shell.root').waitFor({ timeout: WAIT });
  await page.waitForFunction(() => !document.querySelector('[data-testid="auth.gate.loading"]'), null, { timeout: WAIT });
  for (const id of ['auth.gate.error', 'auth.gate.forbidden']) {
    if (await byTestId(id).count()) fail(`auth gate shows ${id}`);
  }
  // (Signing in starts with a 401 there; what counts is that it answers once signed in.)
  const self = server.log.filter((e) => e.path.startsWith('/api/auth/self')).at(-1);
  if (!self || self.status !== 200) fail(`GET /api/auth/self answered ${self?.status ?? 'nothing'}`);
  const deadline = Date.now() + WAIT;
  while (!server.log.some((e) => e.path.startsWith('/api/sse/stream') && e.status === 200)) {
    if (Date.now() > deadline) fail('the UI opened no /api/sse/stream that answered 200');
    await page.waitForTimeout(200);
  }
});

await check('device-models list renders', async () => {
  await page.goto('/device-models');
  await page.getByRole('heading', { name: 'Device Models' }).waitFor({ timeout: WAIT });
  await byTestId('device-models.list.table').waitFor({ timeout: WAIT });
  if (await byTestId('device-models.list.error').count()) fail(await byTestId('device-models.list.error').innerText());
  const row = page.locator(`[data-testid="device-models.list.row"][data-model-code="${SEEDED_CODE}"]`);
  await row.waitFor({ timeout: WAIT });
});

await check('create a device model through its form', async () => {
  await page.goto('/device-models');
  await byTestId('device-models.list.header.new-model').click();
  await byTestId('device-models.editor').waitFor({ timeout: WAIT });
  await byTestId('device-models.editor.code-input').fill(CODE);
  await byTestId('device-models.editor.name-input').fill(MODEL_NAME);
  // The UI's own template: a JSON Schema requiring deviceName and deviceEntityId.
  await byTestId('device-models.editor.insert-template').click();
  await waitForMonacoText(byTestId('device-models.editor.schema-editor'), 'deviceEntityId');
  const [resp] = await Promise.all([
    page.waitForResponse((r) => r.url().endsWith('/api/device-models') && r.request().method() === 'POST', { timeout: WAIT }),
    byTestId('device-models.editor.save').click(),
  ]);
  if (resp.status() !== 201) fail(`POST /api/device-models answered ${resp.status()}: ${await resp.text()}`);
  modelId = (await resp.json()).id;
  await page.waitForURL(/\/device-models$/, { timeout: WAIT });
  const row = page.locator(`[data-testid="device-models.list.row"][data-model-code="${CODE}"]`);
  await row.waitFor({ timeout: WAIT });
  if (!(await row.innerText()).includes('Defined')) fail('the new row does not show its config schema as "Defined"');
});

await check('device-model editor shows the stored schema', async () => {
  if (!modelId) fail('no model was created');
  await page.goto(`/device-models/${modelId}`);
  await byTestId('device-models.editor.code-display').waitFor({ timeout: WAIT });
  await waitForMonacoText(byTestId('device-models.editor.schema-editor'), '"deviceEntityId"');
  const state = await byTestId('device-models.editor.schema-editor').getAttribute('data-state');
  if (state !== 'valid') fail(`schema editor state is ${state}`);
});

await check('create a device through its form', async () => {
  if (!modelId) fail('no model was created');
  await page.goto('/devices/new');
  await byTestId('devices.editor').waitFor({ timeout: WAIT });
  await byTestId('devices.editor.model-select').click();
  await page.getByRole('option', { name: new RegExp(`\\(${CODE}\\)`) }).click();
  const editor = byTestId('devices.editor.json-editor');
  await waitForMonacoText(editor, 'deviceName');
  await editor.locator('.view-lines').first().click();
  await page.keyboard.press('Control+A');
  await page.keyboard.insertText(DEVICE_CONFIG);
  // Monaco auto-closes the first quote and brace after the cursor: drop what follows the text.
  await page.keyboard.press('Control+Shift+End');
  await page.keyboard.press('Delete');
  await waitForMonacoText(editor, DEVICE_NAME);
  const [resp] = await Promise.all([
    page.waitForResponse((r) => r.url().endsWith('/api/devices') && r.request().method() === 'POST', { timeout: WAIT }),
    byTestId('devices.editor.save').click(),
  ]);
  if (resp.status() !== 201) fail(`POST /api/devices answered ${resp.status()}: ${await resp.text()}`);
  device = await resp.json();
  await page.waitForURL(/\/devices$/, { timeout: WAIT });
});

await check('devices list renders the new device', async () => {
  if (!device) fail('no device was created');
  await page.goto('/devices');
  await byTestId('devices.list.table').waitFor({ timeout: WAIT });
  const row = byTestId('devices.list.row').filter({ hasText: device.key });
  await row.waitFor({ timeout: WAIT });
  if (!(await row.innerText()).includes(DEVICE_NAME)) fail('the row does not show the device name');
});

await check('device configuration tab shows the stored config', async () => {
  if (!device) fail('no device was created');
  await page.goto(`/devices/${device.id}/edit`);
  await byTestId('devices.detail.header.device-key').waitFor({ timeout: WAIT });
  await waitForMonacoText(byTestId('devices.editor.json-editor'), DEVICE_NAME);
});

await check('devices list shows the rotation badge', async () => {
  if (!device) fail('no device was created');
  await page.goto('/devices');
  const row = byTestId('devices.list.row').filter({ hasText: device.key });
  await row.waitFor({ timeout: WAIT });
  const state = await row.getAttribute('data-rotation-state');
  if (state !== 'OK') fail(`data-rotation-state is ${JSON.stringify(state)}, expected "OK"`);
  const badge = (await row.locator('[data-testid="devices.list.row.rotation-state"]').innerText()).trim();
  if (badge !== 'OK') fail(`the badge says ${JSON.stringify(badge)}`);
});

await check('device page shows the rotation badge', async () => {
  if (!device) fail('no device was created');
  await page.goto(`/devices/${device.id}/edit`);
  const badge = byTestId('devices.detail.header.rotation-badge');
  await badge.waitFor({ timeout: WAIT });
  const text = (await badge.innerText()).trim();
  if (!text.includes('OK')) fail(`the header badge says ${JSON.stringify(text)}`);
});

/** The dashboard row of `id`, opening its panel if it is collapsed. */
async function dashboardRow(id) {
  const row = page.locator(`[data-testid="rotation.dashboard.row"][data-device-id="${id}"]`);
  if (!(await row.count())) {
    const header = byTestId('rotation.dashboard.panel.healthy.header');
    if (await header.count()) await header.click();
  }
  await row.waitFor({ timeout: WAIT });
  return row;
}

async function waitForRowState(id, want) {
  const deadline = Date.now() + WAIT;
  let state = null;
  while (Date.now() < deadline) {
    const row = page.locator(`[data-testid="rotation.dashboard.row"][data-device-id="${id}"]`);
    state = (await row.count()) ? await row.getAttribute('data-rotation-state') : null;
    if (state === want) return;
    await page.waitForTimeout(200);
  }
  fail(`the dashboard row of device ${id} shows ${JSON.stringify(state)}, not ${want}`);
}

await check('rotation dashboard renders', async () => {
  if (!device) fail('no device was created');
  await page.goto('/rotation');
  await byTestId('rotation.dashboard').waitFor({ timeout: WAIT });
  await byTestId('rotation.dashboard.panels').waitFor({ timeout: WAIT });
  if (await byTestId('rotation.dashboard.error').count()) fail(await byTestId('rotation.dashboard.error').innerText());
  const count = (await byTestId('rotation.dashboard.panel.healthy.count').innerText()).trim();
  if (parseInt(count, 10) !== 1) fail(`the healthy panel counts ${JSON.stringify(count)}`);
  const row = await dashboardRow(device.id);
  if ((await row.getAttribute('data-rotation-state')) !== 'OK') fail('the row is not OK');
});

await check('dashboard triggers a fleet rotation: the device goes PENDING, then OK when it completes', async () => {
  if (!device) fail('no device was created');
  if (!(await byTestId('rotation.dashboard').count())) await page.goto('/rotation');
  await dashboardRow(device.id);
  await byTestId('rotation.dashboard.trigger-button').click();
  const dialog = byTestId('rotation.dashboard.confirm-dialog');
  await dialog.waitFor({ timeout: WAIT });
  const [resp] = await Promise.all([
    page.waitForResponse((r) => r.url().endsWith('/api/rotation/trigger') && r.request().method() === 'POST', { timeout: WAIT }),
    dialog.getByRole('button', { name: 'Trigger Rotation' }).click(),
  ]);
  if (resp.status() !== 200) fail(`POST /api/rotation/trigger answered ${resp.status()}`);
  await waitForRowState(device.id, 'PENDING');
  // The device does its part through the API, as its firmware would after the nudge: fetch a
  // package with its current secret, then authenticate with the new one.
  const current = `${device.key}.${device.device_secret}`;
  const pkg = await backend('GET', '/api/iot/provisioning', { admin: false, headers: { authorization: `Bearer ${current}` } });
  if (pkg.status !== 200) fail(`GET /api/iot/provisioning answered ${pkg.status}: ${JSON.stringify(pkg.json)}`);
  const fresh = `${device.key}.${pkg.json.client_secret}`;
  const cfg = await backend('GET', '/api/iot/config', { admin: false, headers: { authorization: `Bearer ${fresh}` } });
  if (cfg.status !== 200) fail(`GET /api/iot/config with the new secret answered ${cfg.status}`);
  device.device_secret = pkg.json.client_secret;
  // No reload: the UI learns of it from the rotation-updated event on its live stream.
  await waitForRowState(device.id, 'OK');
});

// ---------------------------------------------------------------------------------------------
// Device logs: lines a device publishes to iotsupport/logsink over the real broker

/** Publishes NDJSON log documents of the check's device with mosquitto_pub. */
function publishLogs(...messages) {
  const payload = messages.map((message) => JSON.stringify({ entity_id: ENTITY_ID, message })).join('\n');
  const r = spawnSync(MOSQUITTO_PUB, ['-h', '127.0.0.1', '-p', MQTT_PORT, '-q', '1', '-t', 'iotsupport/logsink', '-m', payload]);
  if (r.status !== 0) fail(`mosquitto_pub failed: ${r.stderr}`);
}

/** The messages iotsupport has stored for the device (its history API). */
async function storedLogs() {
  const r = await backend('GET', `/api/devices/${device.id}/logs`);
  return r.status === 200 ? r.json.logs.map((l) => l.message) : [];
}

await check("device's logs tab shows history, then live lines without a reload", async () => {
  if (!device) fail('no device was created');
  // Until the service's subscription is granted, lines go nowhere: probe until one is stored.
  const deadline = Date.now() + WAIT;
  for (let n = 0; !(await storedLogs()).length; n++) {
    if (Date.now() > deadline) fail('no published line was stored: is the log intake subscribed?');
    publishLogs(`I (${n}) ui-check: probe`);
    await page.waitForTimeout(300);
  }
  const history = 'I (100) ui-check: history line';
  publishLogs(`\u001b[0;32m${history}\u001b[0m`);
  while (!(await storedLogs()).includes(history)) {
    if (Date.now() > deadline) fail('the history line was not stored (with its colours removed)');
    await page.waitForTimeout(200);
  }

  const subscribed = page.waitForResponse((r) => r.url().endsWith('/api/device-logs/subscribe'), { timeout: WAIT });
  await page.goto(`/devices/${device.id}/logs`);
  const entries = byTestId('devices.logs.entry');
  await entries.filter({ hasText: history }).first().waitFor({ timeout: WAIT });
  const shown = await entries.allInnerTexts();
  if (!shown.includes(history)) fail(`the entry is not exactly the line: ${JSON.stringify(shown)}`);
  const sub = await subscribed;
  if (sub.status() !== 200) fail(`POST /api/device-logs/subscribe answered ${sub.status()}`);

  // Live: published now, shown without the page asking for history again.
  let historyFetches = 0;
  const countFetches = (r) => {
    if (new URL(r.url()).pathname === `/api/devices/${device.id}/logs`) historyFetches += 1;
  };
  page.on('request', countFetches);
  const live = `W (200) ui-check: live line ${Date.now()}`;
  publishLogs(live);
  await entries.filter({ hasText: live }).first().waitFor({ timeout: WAIT });
  page.off('request', countFetches);
  if (historyFetches) fail(`the live line came with ${historyFetches} history request(s), not over the live stream`);
  const count = Number(await byTestId('devices.logs.container').getAttribute('data-log-count'));
  if (count < 2) fail(`data-log-count is ${count}`);
});

// Firmware for the model and a real core dump from the device, through the API: the UI has no
// form for either (CI pipelines upload firmware, devices upload dumps).
if (device) {
  const fw = await backend('POST', `/api/device-models/${modelId}/firmware`, {
    body: fs.readFileSync(BUNDLE),
    headers: { 'content-type': 'application/zip' },
  });
  console.log(`setup firmware ${FW_VERSION} for ${CODE}: ${fw.status}${fw.status === 200 ? '' : ' ' + JSON.stringify(fw.json)}`);
  const dump = await backend(
    'POST',
    `/api/iot/coredump?chip=${encodeURIComponent(CHIP)}&firmware_version=${encodeURIComponent(FW_VERSION)}`,
    {
      admin: false,
      body: fs.readFileSync(DUMP),
      headers: { 'content-type': 'application/octet-stream', authorization: `Bearer ${device.key}.${device.device_secret}` },
    },
  );
  coredumpId = dump.json?.coredump_id;
  console.log(`setup core dump ${path.basename(path.dirname(DUMP))}/${path.basename(DUMP)} uploaded as device ${device.key}: ${dump.status}`);
  let status = 'PENDING';
  const deadline = Date.now() + 60000;
  while (coredumpId && status === 'PENDING' && Date.now() < deadline) {
    await new Promise((r) => setTimeout(r, 300));
    status = (await backend('GET', `/api/devices/${device.id}/coredumps/${coredumpId}`)).json?.parse_status;
  }
  console.log(`setup core dump ${coredumpId}: ${status}`);
}

await check("device's core dumps list", async () => {
  if (!coredumpId) fail('no core dump was uploaded');
  await page.goto(`/devices/${device.id}/coredumps`);
  const row = page.locator(`[data-testid="coredumps.table.row"][data-coredump-id="${coredumpId}"]`);
  await row.waitFor({ timeout: WAIT });
  const text = await row.innerText();
  for (const want of [FW_VERSION, 'PARSED']) if (!text.includes(want)) fail(`the row does not show ${want}: ${JSON.stringify(text)}`);
  // The row's download link (a plain link, fetched by the browser through the proxy).
  const href = await row.locator('[data-testid="coredumps.table.row.download"]').getAttribute('href');
  const download = await page.request.get(href);
  const size = fs.statSync(DUMP).size;
  const got = (await download.body()).length;
  if (download.status() !== 200 || got !== size) fail(`${href} answered ${download.status()} with ${got} bytes, expected ${size}`);
});

await check('parsed core-dump report', async () => {
  if (!coredumpId) fail('no core dump was uploaded');
  const row = page.locator(`[data-testid="coredumps.table.row"][data-coredump-id="${coredumpId}"]`);
  if (!(await row.count())) {
    await page.goto(`/devices/${device.id}/coredumps`);
    await row.waitFor({ timeout: WAIT });
  }
  await row.click();
  await byTestId('coredumps.accordion.expanded').waitFor({ timeout: WAIT });
  const meta = await byTestId('coredumps.accordion.metadata').innerText({ timeout: WAIT });
  if (!meta.includes(CHIP)) fail(`metadata does not show chip ${CHIP}: ${JSON.stringify(meta)}`);
  await waitForMonacoText(byTestId('coredumps.accordion.editor'), 'Crashed task');
  // A deep link opens the same report.
  await page.goto(`/devices/${device.id}/coredumps/${coredumpId}`);
  await waitForMonacoText(byTestId('coredumps.accordion.editor'), 'CORE DUMP START');
});

if (AUTH === 'oidc') {
  await check('signing out ends the session (at the provider too) and signing in again works', async () => {
    const before = (await context.cookies()).find((c) => c.name === 'iotsupport_session')?.value;
    await page.goto('/device-models');
    await byTestId('app-shell.topbar.user').click();
    await byTestId('app-shell.topbar.user.logout').click();
    // The provider signs the same person in again at once (it has no password page).
    await page.waitForURL((u) => u.pathname === '/' || u.pathname.startsWith('/device-models'), { timeout: WAIT });
    await byTestId('app-shell.topbar.user').waitFor({ timeout: WAIT });
    const steps = server.log.map((e) => `${e.method} ${new URL(e.path, 'http://x').pathname} ${e.status}`);
    if (!steps.includes('GET /api/auth/logout 303')) fail('no GET /api/auth/logout 303');
    const after = (await context.cookies()).find((c) => c.name === 'iotsupport_session')?.value;
    if (!after || after === before) fail('no new session after signing in again');
    const old = await fetch(new URL('/api/auth/self', BACKEND), { headers: { cookie: `iotsupport_session=${before}` } });
    if (old.status !== 401) fail(`the signed-out session still answers ${old.status}`);
  });
}

// ---------------------------------------------------------------------------------------------
// Report: every API call, failures and shape differences

await Promise.allSettled(pending);
await browser.close();
await server.close();

console.log('');
console.log(`API calls the UI made (through the proxy; bodies checked against ${path.join(UI_SRC, 'openapi-cache/openapi.json')}):`);
const groups = new Map();
for (const e of server.log) {
  const pathname = new URL(e.path, 'http://x').pathname;
  const route = api.routes.find((r) => r.re.test(pathname));
  const key = `${e.method} ${route?.template ?? pathname} ${e.status}`;
  const g = groups.get(key) ?? { method: e.method, pathname, template: route?.template ?? pathname, status: e.status, count: 0, results: [] };
  g.count += 1;
  const rec = bodies.find((b) => b.method === e.method && b.path === e.path && b.status === e.status && !b.used);
  if (rec) {
    rec.used = true;
    if (rec.body !== undefined) g.results.push(checkResponse(api, e.method, pathname, e.status, rec.body));
  }
  groups.set(key, g);
}
let unexpected = 0;
let excludedCalls = 0;
for (const g of groups.values()) {
  const excluded = excludedReason(g.pathname);
  const problems = [...new Set(g.results.flatMap((r) => r.problems))];
  const unmodelled = [...new Set(g.results.flatMap((r) => r.unmodelled))];
  const extra = [...new Set(g.results.flatMap((r) => r.extra))];
  const failed = g.status >= 400 || g.status === 0;
  // Not signed in yet: the UI's first question, which sends the browser to sign in.
  const signInStep = AUTH === 'oidc' && g.method === 'GET' && g.template === '/api/auth/self' && g.status === 401;
  let verdict;
  if (signInStep) {
    verdict = 'expected: before signing in';
  } else if (failed && excluded) {
    verdict = `not in SPEC: ${excluded}`;
    excludedCalls += g.count;
  } else if (failed || problems.length) {
    verdict = 'MISMATCH';
    unexpected += 1;
  } else {
    verdict = g.results.length ? 'shape ok' : 'ok';
  }
  console.log(`  ${g.method.padEnd(6)} ${g.template} -> ${g.status} x${g.count}  [${verdict}]`);
  for (const p of problems) console.log(`           problem: ${p}`);
  for (const u of unmodelled) console.log(`           absent, not modelled: ${u}`);
  if (extra.length) console.log(`           extra fields (unknown to the UI): ${extra.join(', ')}`);
}
fs.writeFileSync(
  path.join(OUT, 'api-calls.json'),
  JSON.stringify({ proxied: server.log, seenByThePage: bodies.map(({ used, ...b }) => b) }, null, 2),
);
if (blocked.size) {
  console.log('Requests off 127.0.0.1 the page tried (refused; the check runs offline):');
  for (const b of blocked) console.log(`  ${b}`);
}

const failedChecks = results.filter((r) => !r.ok).length;
console.log('');
console.log(
  `ui-check: ${results.length - failedChecks}/${results.length} checks passed; ` +
    `${unexpected} API call group(s) failed or mismatched; ${excludedCalls} call(s) to endpoints SPEC leaves out; ` +
    `screenshots and api-calls.json in ${OUT}`,
);
process.exit(failedChecks || unexpected ? 1 : 0);
