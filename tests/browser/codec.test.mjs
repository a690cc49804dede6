// Browser end to end: H264 and VP8 in one meeting. Alice's page prefers H264 for what it
// sends (`?codec=h264`), Bob's sends VP8; each decodes the other's video, in the codec its
// publisher chose (the SFU forwards, it never transcodes).
//
//   node tests/browser/codec.test.mjs <path to hearth binary>
import assert from 'node:assert/strict';
import { counter, launchBrowser, openParticipant, startServer, until } from './lib.mjs';

const binary = process.argv[2] || 'target/debug/hearth';
const logs = [];
const server = await startServer(binary, ['--dev', '--media-port', '7882']);
const chromium = await launchBrowser();
let failed = false;

/** `first` joins, then `second`; each must decode the other in the codec it asked for. */
async function pair(meeting, first, second) {
  const a = await openParticipant(chromium.browser, server.base, meeting, first.name, logs, `&codec=${first.codec}`);
  const aId = await until(`${first.name} joined`, async () => (await a.stats()).participantId);
  const b = await openParticipant(chromium.browser, server.base, meeting, second.name, logs, `&codec=${second.codec}`);
  const bId = await until(`${second.name} joined`, async () => (await b.stats()).participantId);
  await until(`${second.name} decodes ${first.name}`, async () => counter(await b.stats(), aId, 'video', 'framesDecoded') > 30, 20000);
  await until(`${first.name} decodes ${second.name}`, async () => counter(await a.stats(), bId, 'video', 'framesDecoded') > 30, 20000);
  const codecOf = (stats, from) => stats.remote.find((r) => r.participant === from && r.kind === 'video')?.codec;
  assert.equal(codecOf(await b.stats(), aId)?.toLowerCase(), `video/${first.codec}`, `${first.name} sends ${first.codec}`);
  assert.equal(codecOf(await a.stats(), bId)?.toLowerCase(), `video/${second.codec}`, `${second.name} sends ${second.codec}`);
  await a.context.close();
  await b.context.close();
}

try {
  await pair('codecs-1', { name: 'alice', codec: 'h264' }, { name: 'bob', codec: 'vp8' });
  console.log('H264 publisher first, then VP8: both forwarded and decoded');
  await pair('codecs-2', { name: 'carol', codec: 'vp8' }, { name: 'dave', codec: 'h264' });
  console.log('VP8 publisher first, then H264: both forwarded and decoded');
  console.log('PASS codec.test.mjs');
} catch (e) {
  failed = true;
  console.error('FAIL codec.test.mjs:', e.stack || e);
  console.error('--- browser console ---\n' + logs.join('\n'));
  console.error('--- server output ---\n' + server.output.join(''));
} finally {
  await chromium.close();
  await server.stop();
}
process.exit(failed ? 1 : 0);
