// Writes brotli (.br) and gzip (.gz) copies of the built JS, WASM and CSS next to them, so
// the server sends the compressed bytes without compressing on every request.
// Usage: node scripts/precompress.mjs [target/site/pkg]
import fs from 'node:fs';
import path from 'node:path';
import zlib from 'node:zlib';

const dir = process.argv[2] ?? 'target/site/pkg';
for (const name of fs.readdirSync(dir)) {
  if (!/\.(js|wasm|css)$/.test(name)) continue;
  const file = path.join(dir, name);
  const raw = fs.readFileSync(file);
  const br = zlib.brotliCompressSync(raw, {
    params: {
      [zlib.constants.BROTLI_PARAM_QUALITY]: 11,
      [zlib.constants.BROTLI_PARAM_SIZE_HINT]: raw.length,
    },
  });
  fs.writeFileSync(`${file}.br`, br);
  fs.writeFileSync(`${file}.gz`, zlib.gzipSync(raw, { level: 9 }));
  console.log(`${name}: ${raw.length} B, brotli ${br.length} B`);
}
