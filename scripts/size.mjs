// `make size`: what the browser downloads (the WASM and JS of the console, raw, gzip and
// brotli, and what the server really sends; for the first page and for each page whose
// code is a lazily loaded chunk), and how long the server takes to render the pages. Starts the release binary on a free port with a fresh data dir.
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import zlib from 'node:zlib';
import net from 'node:net';
import { spawn, spawnSync } from 'node:child_process';

const TARGET_BROTLI = 250 * 1024;
const pkg = 'target/site/pkg';
const bin = 'target/release/doppel';
const kb = (n) => `${(n / 1024).toFixed(1)} KiB`;

// Every page needs the main module and its JS; other pages' code comes in chunks
// (`tools/wasm-split`), listed per page in __wasm_split_manifest.json.
const measure = (name) => {
  const raw = fs.readFileSync(path.join(pkg, name));
  return {
    name,
    raw: raw.length,
    gzip: zlib.gzipSync(raw, { level: 9 }).length,
    brotli: zlib.brotliCompressSync(raw, { params: { [zlib.constants.BROTLI_PARAM_QUALITY]: 11 } }).length,
  };
};
const main = ['doppel.wasm', 'doppel.js', ...fs.readdirSync(pkg).filter((f) => /^__wasm_split.*\.js$/.test(f))];
const rows = [...main, 'doppel.css'].map(measure);
const sum = (files) => files.map(measure).reduce(
  (t, r) => ({ raw: t.raw + r.raw, gzip: t.gzip + r.gzip, brotli: t.brotli + r.brotli }),
  { raw: 0, gzip: 0, brotli: 0 },
);
const total = sum(main);
const manifestFile = path.join(pkg, '__wasm_split_manifest.json');
const manifest = fs.existsSync(manifestFile) ? JSON.parse(fs.readFileSync(manifestFile, 'utf8')) : {};
const pages = Object.entries(manifest).map(([split, chunks]) => {
  const page = split.replace(/^__/, '').replace(/_route_view_\d+$/, '');
  const extra = sum(chunks.map((c) => `${c}.wasm`));
  return { page, extra, all: { raw: total.raw + extra.raw, gzip: total.gzip + extra.gzip, brotli: total.brotli + extra.brotli } };
});

const port = await new Promise((resolve) => {
  const s = net.createServer().listen(0, '127.0.0.1', () => {
    const p = s.address().port;
    s.close(() => resolve(p));
  });
});
const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'doppel-size-'));
const env = { ...process.env, DOPPEL_DATA_DIR: path.join(tmp, 'data'), LEPTOS_SITE_ROOT: 'target/site' };
const server = spawn(bin, ['serve', '--addr', `127.0.0.1:${port}`], { env, stdio: 'ignore' });
const base = `http://127.0.0.1:${port}`;
try {
  for (let i = 0; ; i++) {
    try {
      if ((await fetch(`${base}/healthz`)).ok) break;
    } catch {}
    if (i > 240) throw new Error('doppel did not start');
    await new Promise((r) => setTimeout(r, 250));
  }
  const password = 'size-script-password';
  spawnSync(bin, ['user', 'set-password', 'admin'], { env, input: `${password}\n` });
  const login = await fetch(`${base}/auth/login`, {
    method: 'POST',
    redirect: 'manual',
    headers: { 'content-type': 'application/x-www-form-urlencoded', origin: base },
    body: `username=admin&password=${password}`,
  });
  const cookie = (login.headers.get('set-cookie') ?? '').split(';')[0];
  if (!cookie) throw new Error(`login failed: ${login.status}`);

  // What the server sends to a browser that accepts brotli.
  const sent = {};
  for (const { name } of rows) {
    const r = await fetch(`${base}/pkg/${name}`, { headers: { 'accept-encoding': 'br, gzip' } });
    const body = Buffer.from(await r.arrayBuffer());
    // fetch decodes the body; the bytes on the wire are the Content-Length.
    sent[name] = { encoding: r.headers.get('content-encoding') ?? 'none', bytes: Number(r.headers.get('content-length') ?? body.length) };
  }

  console.log('| file | raw | gzip | brotli | served as |');
  console.log('|---|---|---|---|---|');
  for (const r of rows) {
    console.log(`| ${r.name} | ${kb(r.raw)} | ${kb(r.gzip)} | ${kb(r.brotli)} | ${sent[r.name].encoding}, ${kb(sent[r.name].bytes)} |`);
  }
  console.log(`| WASM + JS, first page | ${kb(total.raw)} | ${kb(total.gzip)} | ${kb(total.brotli)} | |`);
  for (const p of pages) {
    console.log(`| WASM + JS, ${p.page} page (+${kb(p.extra.brotli)} brotli in chunks) | ${kb(p.all.raw)} | ${kb(p.all.gzip)} | ${kb(p.all.brotli)} | |`);
  }

  const times = {};
  for (const page of ['/containers', '/sync-status', '/jobs']) {
    const ms = [];
    let size = 0;
    for (let i = 0; i < 25; i++) {
      const t0 = performance.now();
      const r = await fetch(`${base}${page}`, { headers: { cookie } });
      const html = await r.text();
      ms.push(performance.now() - t0);
      if (r.status !== 200) throw new Error(`${page}: ${r.status}`);
      size = html.length;
    }
    ms.sort((a, b) => a - b);
    times[page] = { p50: ms[12], p90: ms[22], size };
    console.log(`render ${page}: p50 ${ms[12].toFixed(1)} ms, p90 ${ms[22].toFixed(1)} ms (${kb(size)} of HTML, 25 requests)`);
  }
  const heaviest = pages.reduce((m, p) => Math.max(m, p.all.brotli), total.brotli);
  console.log(`wasm_js_brotli_kib_first_page ${(total.brotli / 1024).toFixed(1)}`);
  console.log(`wasm_js_brotli_kib_heaviest_page ${(heaviest / 1024).toFixed(1)}`);
  console.log(`wasm_js_brotli_target_kib ${(TARGET_BROTLI / 1024).toFixed(0)} (first page: ${total.brotli <= TARGET_BROTLI ? 'met' : 'not met'}; heaviest page: ${heaviest <= TARGET_BROTLI ? 'met' : 'not met'})`);
  console.log(`containers_page_render_ms_p50 ${times['/containers'].p50.toFixed(1)}`);
} finally {
  server.kill();
  fs.rmSync(tmp, { recursive: true, force: true });
}
