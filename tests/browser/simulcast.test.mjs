// Simulcast and adaptive streaming: Alice's camera goes out in simulcast layers (the web
// client's default); Bob's large tile receives the top layer while Carol's small tile
// receives a smaller one; when Carol's tiles grow, she moves up; when she hides Alice's
// tile, nothing of Alice's video is sent to her (her audio still is), and showing it again
// brings the picture back. Dynacast: when no tile shows Alice large (and when nobody is
// left), her browser stops encoding the top layer; a large tile brings it back.
// Run inside a network namespace with only loopback (tests/browser/run.sh does that).
//
//   node tests/browser/simulcast.test.mjs <path to hearth binary>
import assert from 'node:assert/strict';
import { counter, launchBrowser, openParticipant, receivedWidth, startServer, until, SMALL_TILES } from './lib.mjs';

const binary = process.argv[2] || 'target/debug/hearth';
const MEETING = 'e2e-simulcast';
const logs = [];
const server = await startServer(binary, ['--dev', '--media-port', '7882', '--empty-timeout', '2s']);
const chromium = await launchBrowser();
let failed = false;

function log(...args) {
  console.log(`[${new Date().toISOString().slice(11, 23)}]`, ...args);
}

try {
  const alice = await openParticipant(chromium.browser, server.base, MEETING, 'alice', logs);
  const bob = await openParticipant(chromium.browser, server.base, MEETING, 'bob', logs);
  const carol = await openParticipant(chromium.browser, server.base, MEETING, 'carol', logs);
  const aliceId = await until('alice joined', async () => (await alice.stats()).participantId);
  const smallStyle = await carol.page.addStyleTag({ content: SMALL_TILES });
  for (const p of [bob, carol]) {
    await p.page.evaluate(() => window.hearth.setStatsOverlay(true));
    await until(`${p.name} decodes alice`, async () =>
      counter(await p.stats(), aliceId, 'video', 'framesDecoded') > 0, 30000);
  }
  const tileHeight = (p) => p.page.evaluate((id) => {
    const tile = [...document.querySelectorAll('#grid .tile')].find((t) => t.querySelector('video').srcObject
      && t.querySelector('.name').textContent.startsWith('alice'));
    return tile ? Math.round(tile.getBoundingClientRect().height) : 0;
  }, aliceId);
  log(`alice's tile: ${await tileHeight(bob)} px high at bob, ${await tileHeight(carol)} px at carol`);
  const layers = await until('alice sends her layers', async () => {
    const l = await alice.page.evaluate(() => window.hearth.outboundLayers());
    return l.filter((x) => x.bytesSent > 0).length >= 2 ? l : null;
  }, 20000);
  log('alice sends', JSON.stringify(layers));
  // Both layers go out, the top one at the camera's own size.
  assert.equal(layers.filter((x) => x.bytesSent > 0).length, 2, JSON.stringify(layers));
  const capture = await alice.page.evaluate(() => {
    const v = [...document.querySelectorAll('#grid .tile.self video')][0];
    return v ? v.videoWidth : 0;
  });
  const top = Math.max(...layers.filter((x) => x.bytesSent > 0).map((x) => x.width));
  assert.equal(top, capture, `the top layer is the camera's size (${capture})`);

  // Bob's large tile: the full layer. Carol's thumbnail: a smaller one.
  let seen = 0;
  const full = await until('bob receives alice\'s top layer', async () => {
    const w = await receivedWidth(bob, aliceId);
    if (w !== seen) log(`bob receives alice at ${(seen = w)} px wide`);
    return w >= top ? w : null;
  }, 30000);
  const small = await until('carol receives a smaller layer', async () => {
    const w = await receivedWidth(carol, aliceId);
    return w > 0 && w < full ? w : null;
  }, 30000);
  log(`bob receives alice at ${full} px wide, carol at ${small}`);

  // Carol's tiles grow: she moves up to the full layer.
  await smallStyle.evaluate((el) => el.remove());
  const grown = await until('carol moves up to the top layer', async () => {
    const w = await receivedWidth(carol, aliceId);
    return w >= full ? w : null;
  }, 20000);
  log(`carol's tile grew: she now receives ${grown} px wide`);

  // Carol hides Alice's tile: no video is sent to her; audio goes on.
  await carol.page.addStyleTag({ content: '#grid .tile:not(.self) { display: none !important; }' });
  let last = -1;
  await until('no more of alice\'s video reaches carol', async () => {
    const bytes = counter(await carol.stats(), aliceId, 'video', 'bytesReceived');
    const still = bytes === last;
    last = bytes;
    return still;
  }, 10000, 400);
  const before = await carol.stats();
  await until('alice\'s audio keeps flowing to carol', async () =>
    counter(await carol.stats(), aliceId, 'audio', 'packetsReceived') > counter(before, aliceId, 'audio', 'packetsReceived') + 100);
  const after = await carol.stats();
  const videoBytes = counter(after, aliceId, 'video', 'bytesReceived') - counter(before, aliceId, 'video', 'bytesReceived');
  log(`hidden tile: ${videoBytes} video bytes while 100+ audio packets arrived`);
  assert.ok(videoBytes < 20_000, `a hidden tile costs (almost) nothing: ${videoBytes} bytes`);

  // Shown again: the picture comes back.
  await carol.page.evaluate(() => document.querySelectorAll('style').forEach((s) => {
    if (s.textContent.includes('display: none')) s.remove();
  }));
  const resumed = counter(await carol.stats(), aliceId, 'video', 'framesDecoded');
  await until('carol decodes alice again', async () =>
    counter(await carol.stats(), aliceId, 'video', 'framesDecoded') > resumed + 20, 20000);
  log('shown again: carol decodes alice\'s video again');

  // Dynacast: once nobody shows Alice's camera large, her browser stops encoding the top
  // layer (the server tells it to); a large tile again, and it comes back.
  const topRid = layers.reduce((a, b) => (b.width > a.width ? b : a)).rid;
  const topLayer = async () => (await alice.page.evaluate(() => window.hearth.outboundLayers()))
    .find((x) => x.rid === topRid);
  // What Alice's camera sends over all its layers, kbit/s over 2 s (polled, not slept).
  const cameraKbps = async () => {
    const sent = async () => (await alice.page.evaluate(() => window.hearth.outboundLayers()))
      .reduce((sum, x) => sum + x.bytesSent, 0);
    const [b0, t0] = [await sent(), Date.now()];
    await until('two seconds of sending', () => Date.now() - t0 >= 2000, 5000, 100);
    return Math.round(((await sent()) - b0) * 8 / (Date.now() - t0));
  };
  const watched = await cameraKbps();
  const bobSmall = await bob.page.addStyleTag({ content: SMALL_TILES });
  await carol.page.addStyleTag({ content: SMALL_TILES });
  const t0 = Date.now();
  await until('alice pauses her top layer', async () => (await topLayer()).active === false, 20000);
  let sent = -1;
  await until('alice\'s top layer sends nothing', async () => {
    const bytes = (await topLayer()).bytesSent;
    const still = bytes === sent;
    sent = bytes;
    return still;
  }, 10000, 500);
  log(`small tiles everywhere: alice paused her top layer after ${Date.now() - t0} ms`);
  const thumbnails = await cameraKbps();
  log(`alice's camera sends ${watched} kbit/s with a large tile watching, ${thumbnails} kbit/s with thumbnails only`);
  assert.ok(thumbnails < watched, `pausing the top layer saves uplink: ${thumbnails} < ${watched}`);
  const decodedSmall = counter(await bob.stats(), aliceId, 'video', 'framesDecoded');
  await until('bob still decodes alice (the small layer)', async () =>
    counter(await bob.stats(), aliceId, 'video', 'framesDecoded') > decodedSmall + 20, 15000);
  await bobSmall.evaluate((el) => el.remove());
  const t1 = Date.now();
  await until('alice resumes her top layer', async () => (await topLayer()).active === true, 15000);
  await until('bob receives alice\'s top layer again', async () => (await receivedWidth(bob, aliceId)) >= full, 20000);
  log(`bob's tile grew: top layer back at bob ${Date.now() - t1} ms later`);

  // Nobody left to watch: only the lowest layer keeps going.
  await bob.context.close();
  await carol.context.close();
  await until('alone, alice pauses her top layer', async () => (await topLayer()).active === false, 20000);
  const lowest = (await alice.page.evaluate(() => window.hearth.outboundLayers())).filter((x) => x.rid !== topRid);
  assert.ok(lowest.length >= 1 && lowest.every((x) => x.active), JSON.stringify(lowest));
  log('alone: alice sends only', JSON.stringify(lowest.map((x) => x.rid)));
  assert.deepEqual(logs.filter((l) => l.includes('pageerror')), []);
} catch (e) {
  failed = true;
  console.error('FAILED:', e);
  console.error(logs.join('\n'));
  console.error(server.output.join('').slice(-6000));
} finally {
  await chromium.close();
  await server.stop();
}
process.exit(failed ? 1 : 0);
