// Scalable video: Alice's camera goes out as one stream with spatial layers
// (`&svc=L3T3_KEY`; Chromium sends as many as the capture size allows), first in VP9 (the
// layers named by its payload descriptor), then in AV1 (named by the dependency descriptor
// header extension, which the server negotiates, reads and forwards). The server drops the
// layers each subscriber does not need: Bob's large tile receives the full picture, Carol's
// thumbnail a smaller one at a lower rate; when Carol's tile grows she moves up (at a
// keyframe), and when it shrinks again she moves down and keeps decoding.
// Run inside a network namespace with only loopback (tests/browser/run.sh does that).
//
//   node tests/browser/svc.test.mjs <path to hearth binary>
import assert from 'node:assert/strict';
import { counter, launchBrowser, openParticipant, receivedWidth, startServer, until, SMALL_TILES } from './lib.mjs';

const binary = process.argv[2] || 'target/debug/hearth';
const logs = [];
const server = await startServer(binary, ['--dev', '--media-port', '7882', '--empty-timeout', '2s']);
const chromium = await launchBrowser();
let failed = false;

function log(...args) {
  console.log(`[${new Date().toISOString().slice(11, 23)}]`, ...args);
}


/** Video bytes `viewer` received from `from` per second, over two seconds (polled). */
async function receivedKbps(viewer, from) {
  const bytes = async () => counter(await viewer.stats(), from, 'video', 'bytesReceived');
  const [b0, t0] = [await bytes(), Date.now()];
  await until('two seconds of receiving', () => Date.now() - t0 >= 2000, 5000, 100);
  return Math.round(((await bytes()) - b0) * 8 / (Date.now() - t0));
}

async function scenario(codec) {
  const MEETING = `e2e-svc-${codec}`;
  log(`--- ${codec}`);
  const alice = await openParticipant(chromium.browser, server.base, MEETING, 'alice', logs, `&codec=${codec}&svc=L3T3_KEY`);
  const bob = await openParticipant(chromium.browser, server.base, MEETING, 'bob', logs);
  const carol = await openParticipant(chromium.browser, server.base, MEETING, 'carol', logs);
  const aliceId = await until('alice joined', async () => (await alice.stats()).participantId);
  const smallStyle = await carol.page.addStyleTag({ content: SMALL_TILES });
  for (const p of [bob, carol]) {
    await p.page.evaluate(() => window.hearth.setStatsOverlay(true));
    await until(`${p.name} decodes alice`, async () =>
      counter(await p.stats(), aliceId, 'video', 'framesDecoded') > 0, 30000);
    const got = (await p.stats()).remote.find((r) => r.participant === aliceId && r.kind === 'video')?.codec;
    assert.equal(got?.toLowerCase(), `video/${codec}`, `${p.name} receives ${codec}`);
  }
  // Her encoder starts small while her uplink's estimate ramps up: wait for the camera's size.
  const capture = await until('alice\'s camera runs', () => alice.page.evaluate(() => {
    const v = [...document.querySelectorAll('#grid .tile.self video')][0];
    return v ? v.videoWidth : 0;
  }));
  const [sent] = await until('alice sends a scalable stream at her camera\'s size', async () => {
    const l = await alice.page.evaluate(() => window.hearth.outboundLayers());
    return l.length === 1 && l[0].width >= capture && /^L[23]T/.test(l[0].scalabilityMode) ? l : null;
  }, 30000);
  log('alice sends', JSON.stringify(sent));

  // Bob's large tile: the full picture. Carol's thumbnail: a smaller layer, fewer bits.
  const full = await until('bob receives alice\'s full picture', async () => {
    const w = await receivedWidth(bob, aliceId);
    return w >= sent.width ? w : null;
  }, 30000);
  const small = await until('carol receives a smaller spatial layer', async () => {
    const w = await receivedWidth(carol, aliceId);
    return w > 0 && w < full ? w : null;
  }, 30000);
  log(`bob receives alice at ${full} px wide, carol at ${small}`);

  // Carol's tiles grow: she moves up to the full picture.
  await smallStyle.evaluate((el) => el.remove());
  const t0 = Date.now();
  await until('carol moves up to the full picture', async () => (await receivedWidth(carol, aliceId)) >= full, 20000);
  log(`carol's tile grew: full picture after ${Date.now() - t0} ms`);

  // Shrinks again: she moves down at once and keeps decoding.
  await carol.page.addStyleTag({ content: SMALL_TILES });
  const t1 = Date.now();
  await until('carol moves down again', async () => {
    const w = await receivedWidth(carol, aliceId);
    return w > 0 && w < full;
  }, 20000);
  log(`carol's tile shrank: smaller layer after ${Date.now() - t1} ms`);
  const decoded = counter(await carol.stats(), aliceId, 'video', 'framesDecoded');
  await until('carol keeps decoding the smaller layer', async () =>
    counter(await carol.stats(), aliceId, 'video', 'framesDecoded') > decoded + 40, 15000);
  const bobDecoded = counter(await bob.stats(), aliceId, 'video', 'framesDecoded');
  await until('bob keeps decoding the full picture', async () =>
    counter(await bob.stats(), aliceId, 'video', 'framesDecoded') > bobDecoded + 40, 15000);
  assert.ok((await receivedWidth(bob, aliceId)) >= full, 'bob stays on the full picture');
  // Over the same two seconds (Alice's encoder has ramped up by now): the thumbnail's
  // layer costs less than the full picture.
  const [bobKbps, carolKbps] = await Promise.all([receivedKbps(bob, aliceId), receivedKbps(carol, aliceId)]);
  log(`same two seconds: bob receives ${bobKbps} kbit/s, carol ${carolKbps} kbit/s`);
  assert.ok(carolKbps < bobKbps * 0.8, `the thumbnail costs less: ${carolKbps} < 0.8 x ${bobKbps} kbit/s`);
  assert.deepEqual(logs.filter((l) => l.includes('pageerror')), []);
  await Promise.all([alice, bob, carol].map((p) => p.context.close()));
}

try {
  await scenario('vp9');
  await scenario('av1');
  console.log('PASS svc.test.mjs');
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
