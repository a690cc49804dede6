// Data channels through Hearth: two Chromium participants (the web client) exchange
// ordered text on `chat` (every message, in order, attributed to its sender) and unordered
// binary on `lossy`; a chat message typed into the page shows in the other's chat panel; a
// message the app sends over REST arrives on both pages' `chat` channel; an oversize message
// and a flood over the per-participant rate limit are cut (counted by the server), and the
// other participant keeps receiving afterwards. Also the web client's stats overlay: each
// tile shows the resolution, codec, bitrate and loss it receives.
// Run inside a network namespace with only loopback (tests/browser/run.sh does that).
//
//   node tests/browser/datachannel.test.mjs <path to hearth binary>
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { launchBrowser, openParticipant, startServer, until } from './lib.mjs';

const binary = process.argv[2] || 'target/debug/hearth';
const MEETING = 'e2e-data';
const logs = [];
const server = await startServer(binary, ['--dev', '--media-port', '7882', '--empty-timeout', '2s']);
const chromium = await launchBrowser();
let failed = false;

function log(...args) {
  console.log(`[${new Date().toISOString().slice(11, 23)}]`, ...args);
}

const received = (p) => p.page.evaluate(() => window.hearth.dataReceived);

async function metric(name) {
  const text = await (await fetch(`${server.base}/metrics`)).text();
  const line = text.split('\n').find((l) => l.startsWith(name));
  return line ? Number(line.split(' ').pop()) : 0;
}

try {
  const alice = await openParticipant(chromium.browser, server.base, MEETING, 'alice', logs);
  const bob = await openParticipant(chromium.browser, server.base, MEETING, 'bob', logs);
  const aliceId = await until('alice joined', async () => (await alice.stats()).participantId);
  const bobId = await until('bob joined', async () => (await bob.stats()).participantId);
  for (const p of [alice, bob]) {
    await until(`${p.name}'s channels open`, async () =>
      (await p.page.evaluate(() => window.hearth.dataChannelsOpen)).length === 2, 20000);
  }
  log('both pages have their chat and lossy channels open');

  // Ordered text: every message, in order, from alice.
  const N = 50;
  await alice.page.evaluate((n) => {
    for (let i = 0; i < n; i++) window.hearth.sendData('chat', `m${i}`);
  }, N);
  const texts = await until('bob receives every chat message', async () => {
    const got = (await received(bob)).filter((d) => d.label === 'chat' && d.from === aliceId);
    return got.length >= N ? got : null;
  });
  assert.deepEqual(texts.map((d) => d.text), Array.from({ length: N }, (_, i) => `m${i}`));
  assert.ok(texts.every((d) => d.name === 'alice' && d.identity.startsWith('alice')), JSON.stringify(texts[0]));
  log(`bob got alice's ${N} ordered messages, in order, attributed to her`);

  // Unordered binary on the lossy channel (nothing is lost on loopback).
  await bob.page.evaluate(() => {
    for (let i = 0; i < 20; i++) window.hearth.sendData('lossy', new Uint8Array([i, 255 - i]).buffer);
  });
  const bins = await until('alice receives bob\'s binary messages', async () => {
    const got = (await received(alice)).filter((d) => d.label === 'lossy' && d.binary);
    return got.length >= 20 ? got : null;
  });
  assert.ok(bins.every((d) => d.from === bobId && d.bytes.length === 2 && d.bytes[0] + d.bytes[1] === 255));
  assert.equal(new Set(bins.map((d) => d.bytes[0])).size, 20);
  log('alice got bob\'s 20 unordered binary messages');

  // The chat panel: typed by bob, shown on alice's page under bob's name.
  await bob.page.fill('#chat-input', 'hello from the form');
  await bob.page.click('#chat-send');
  await until('alice shows bob\'s chat message', () => alice.page.evaluate(() =>
    [...document.querySelectorAll('#chat-list .chat-item')].some((li) =>
      li.textContent.includes('hello from the form') && li.textContent.includes('bob'))));
  log('a message typed into the chat form shows on the other page');

  // The app's message (REST) arrives on both pages' chat channel.
  const out = server.output.join('');
  const key = out.match(/API key\s+(\S+)/)?.[1];
  const secret = out.match(/API secret\s+(\S+)/)?.[1];
  const admin = execFileSync(binary, ['token', '--admin', '--identity', 'e2e-app', '--api-key', key, '--api-secret', secret],
    { encoding: 'utf8' }).trim().split('\n').pop();
  const res = await fetch(`${server.base}/v1/meetings/${MEETING}/messages`, {
    method: 'POST',
    headers: { authorization: `Bearer ${admin}`, 'content-type': 'application/json' },
    body: JSON.stringify({ text: 'from the app', from: 'Host' }),
  });
  assert.equal(res.status, 202, await res.clone().text());
  for (const p of [alice, bob]) {
    await until(`${p.name} gets the app message on its data channel`, async () =>
      (await received(p)).some((d) => d.label === 'chat' && d.from === '' && d.name === 'Host' && d.text === 'from the app'));
  }
  log('the app\'s message arrived on both data channels');

  // Oversize: 20 KiB is over the 16 KiB relay limit: dropped and counted, not relayed.
  const tooLargeBefore = await metric('hearth_data_dropped_total{reason="too_large"}');
  await alice.page.evaluate(() => window.hearth.sendData('chat', `big${'x'.repeat(20 * 1024)}`));
  await until('the server drops the oversize message', async () =>
    (await metric('hearth_data_dropped_total{reason="too_large"}')) === tooLargeBefore + 1);
  await alice.page.evaluate(() => window.hearth.sendData('chat', 'small again'));
  await until('the next message is relayed', async () => (await received(bob)).some((d) => d.text === 'small again'));
  assert.ok(!(await received(bob)).some((d) => d.text && d.text.startsWith('big')));
  log('an oversize message was dropped and counted; the next one was relayed');

  // A flood: 1,000 messages at once; the server relays its burst and drops the rest.
  const droppedBefore = await metric('hearth_data_dropped_total{reason="rate"}');
  await alice.page.evaluate(() => {
    for (let i = 0; i < 1000; i++) window.hearth.sendData('chat', `flood${i}`);
  });
  // Every one of the 1,000 is accounted for once the server has dropped its share and bob
  // has received the rest (the channel is reliable, so relayed ones are still in flight
  // when the drop counter settles).
  const { dropped, flooded } = await until('each flood message is either dropped or at bob', async () => {
    const d = (await metric('hearth_data_dropped_total{reason="rate"}')) - droppedBefore;
    const f = (await received(bob)).filter((m) => m.text && m.text.startsWith('flood')).length;
    return d + f === 1000 ? { dropped: d, flooded: f } : null;
  });
  log(`flood of 1000: ${dropped} dropped by the rate limit, bob got ${flooded}`);
  assert.ok(flooded >= 100 && flooded <= 500, `bob got the burst only (${flooded})`);
  // ...and once the bucket refills, alice is heard again.
  await until('alice is relayed again after the flood', async () => {
    await alice.page.evaluate(() => window.hearth.sendData('chat', 'after the flood'));
    return (await received(bob)).some((d) => d.text === 'after the flood');
  }, 10000, 500);
  log('relayed again once the rate limit refilled');

  // The stats overlay on bob's page: alice's tile shows her video as bob receives it.
  await bob.page.evaluate(() => window.hearth.setStatsOverlay(true));
  const overlay = await until('the stats overlay shows alice\'s video', async () => {
    const lines = await bob.page.evaluate(() => window.hearth.statsOverlay());
    const video = lines.find((l) => l.participant === aliceId && l.kind === 'video');
    return video && video.width > 0 && video.kbps > 0 ? video : null;
  });
  const shown = await bob.page.evaluate(() =>
    [...document.querySelectorAll('#grid .tile-stats')].filter((s) => !s.hidden).map((s) => s.textContent));
  assert.ok(shown.some((t) => t.includes('kbit/s') && t.includes('rtt')), JSON.stringify(shown));
  log('stats overlay:', JSON.stringify(overlay));
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
