// Browser end to end: H264 and VP8 in one meeting. Alice's page prefers H264 for what it
// sends (`?codec=h264`), Bob's sends VP8; each decodes the other's video, in the codec its
// publisher chose (the SFU forwards, it never transcodes). The same for AV1 and VP9. And
// H.264 simulcast: a small tile gets the small layer, told apart by the size in the layers'
// SPS. (AV1 and VP9 go out as one scalable stream, the web client's default for them;
// svc.test.mjs drops their layers per subscriber.)
//
//   node tests/browser/codec.test.mjs <path to hearth binary>
import assert from 'node:assert/strict';
import { counter, launchBrowser, openParticipant, receivedWidth, startServer, until, SMALL_TILES } from './lib.mjs';

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
  // AV1 and VP9 go out as one scalable stream (not simulcast): a viewer's large tile gets
  // the camera's full size (640 px wide), its top spatial layer.
  const single = (c) => c === 'av1' || c === 'vp9';
  for (const [viewer, from, name, codec] of [[b, aId, first.name, first.codec], [a, bId, second.name, second.codec]]) {
    if (!single(codec)) continue;
    await viewer.page.evaluate(() => window.hearth.setStatsOverlay(true));
    await until(`${name}'s camera arrives at full size`, async () => (await receivedWidth(viewer, from)) >= 640, 20000);
  }
  await a.context.close();
  await b.context.close();
}

/**
 * Simulcast in `codec`: the layers' sizes come from their keyframes (H.264's SPS, AV1's
 * sequence header), so a small tile gets the small layer and a large one the full layer,
 * as with VP8.
 */
async function simulcastIn(codecName, meeting) {
  const alice = await openParticipant(chromium.browser, server.base, meeting, 'alice', logs, `&codec=${codecName}`);
  const aliceId = await until('alice joined', async () => (await alice.stats()).participantId);
  const bob = await openParticipant(chromium.browser, server.base, meeting, 'bob', logs);
  const carol = await openParticipant(chromium.browser, server.base, meeting, 'carol', logs);
  await carol.page.addStyleTag({ content: SMALL_TILES });
  const layers = await until(`alice sends two ${codecName} layers`, async () => {
    const l = await alice.page.evaluate(() => window.hearth.outboundLayers());
    return l.filter((x) => x.bytesSent > 0 && x.width > 0).length >= 2 ? l : null;
  }, 20000);
  const top = Math.max(...layers.map((x) => x.width));
  for (const p of [bob, carol]) await p.page.evaluate(() => window.hearth.setStatsOverlay(true));
  await until('bob receives the top layer', async () => (await receivedWidth(bob, aliceId)) >= top, 30000);
  const small = await until('carol receives a smaller layer', async () => {
    const w = await receivedWidth(carol, aliceId);
    return w > 0 && w < top ? w : null;
  }, 30000);
  const codec = (await carol.stats()).remote.find((r) => r.participant === aliceId && r.kind === 'video')?.codec;
  assert.equal(codec?.toLowerCase(), `video/${codecName}`, `carol receives ${codecName}`);
  console.log(`${codecName} simulcast: alice sends ${JSON.stringify(layers.map((x) => `${x.rid} ${x.width}x${x.height}`))}; bob gets ${top} px wide, carol's small tile ${small}`);
  for (const p of [alice, bob, carol]) await p.context.close();
}

try {
  await simulcastIn('h264', 'codecs-3');
  await pair('codecs-1', { name: 'alice', codec: 'h264' }, { name: 'bob', codec: 'vp8' });
  console.log('H264 publisher first, then VP8: both forwarded and decoded');
  await pair('codecs-2', { name: 'carol', codec: 'vp8' }, { name: 'dave', codec: 'h264' });
  console.log('VP8 publisher first, then H264: both forwarded and decoded');
  await pair('codecs-4', { name: 'erin', codec: 'av1' }, { name: 'frank', codec: 'vp9' });
  console.log('AV1 publisher first, then VP9 (SVC): both forwarded and decoded');
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
