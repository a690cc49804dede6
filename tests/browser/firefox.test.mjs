// Browser end to end across engines: Firefox (Debian's firefox-esr, driven by puppeteer-core
// over WebDriver BiDi) and Chromium in one meeting through Hearth's own transport.
//   1. each decodes the other's audio and video;
//   2. renegotiation churn: 20 Chromium participants join and leave one after another while
//      the two stay; both keep decoding and their SDP stays bounded (m-lines are recycled);
//   3. a closed peer connection (DTLS close_notify, no signaling leave) is gone within 1 s,
//      and so is a closed tab;
//   4. a track Firefox cannot decode (H.264: Debian's Firefox has no OpenH264 here) is
//      refused: the negotiation settles, the server stops that track for it, and the rest
//      of the meeting (and later participants) plays.
//
// Firefox gathers no ICE candidates in a namespace that has only loopback, so
// tests/browser/run.sh gives firefox*.test.mjs a veth pair with a default route inside the
// test's own namespace; the node advertises that address (HEARTH_TEST_IP).
//
//   node tests/browser/firefox.test.mjs <path to hearth binary>
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import puppeteer from 'puppeteer-core';
import { counter, launchBrowser, openParticipant, startServer, until } from './lib.mjs';

const binary = process.argv[2] || 'target/debug/hearth';
const FIREFOX = process.env.HEARTH_FIREFOX || '/usr/bin/firefox-esr';
const IP = process.env.HEARTH_TEST_IP || '127.0.0.1';
const MEETING = 'e2e-firefox';
const CHURN = 20;
const logs = [];
const server = await startServer(binary, [
  '--dev', '--media-port', '7882', '--public-ip', IP, '--empty-timeout', '5s',
]);
const chromium = await launchBrowser();
const ffProfile = mkdtempSync(join(tmpdir(), 'hearth-firefox-'));
const firefox = await puppeteer.launch({
  browser: 'firefox',
  executablePath: FIREFOX,
  headless: true,
  userDataDir: ffProfile,
  extraPrefsFirefox: {
    'media.navigator.streams.fake': true,
    'media.navigator.permission.disabled': true,
    'media.peerconnection.ice.loopback': true,
    'media.peerconnection.ice.obfuscate_host_addresses': false,
    'media.autoplay.default': 0,
    'network.dns.disableIPv6': true,
  },
});
let failed = false;
let chromeRef = null;
let foxRef = null;

function log(...args) {
  console.log(`[${new Date().toISOString().slice(11, 23)}]`, ...args);
}

async function openFirefox(name, meeting = MEETING) {
  const page = await firefox.newPage();
  page.on('console', (m) => {
    if (m.type() === 'error' || m.type() === 'warn') logs.push(`[${name}] ${m.type()}: ${m.text()}`);
  });
  page.on('pageerror', (e) => logs.push(`[${name}] pageerror: ${e.message}`));
  await page.goto(`${server.base}/?meeting=${meeting}&name=${name}&autojoin=1`);
  return { name, page, stats: () => page.evaluate(() => window.hearth.stats()) };
}

/** `a` decodes video and receives audio from the participant `id`, and keeps doing so. */
async function decodes(a, id, what) {
  await until(`${a.name} decodes ${what}`, async () => {
    const s = await a.stats();
    return counter(s, id, 'video', 'framesDecoded') > 0 && counter(s, id, 'audio', 'packetsReceived') > 0;
  }, 30000);
  const before = await a.stats();
  await until(`${a.name} keeps decoding ${what}`, async () => {
    const s = await a.stats();
    return counter(s, id, 'video', 'framesDecoded') > counter(before, id, 'video', 'framesDecoded') + 20
      && counter(s, id, 'audio', 'packetsReceived') > counter(before, id, 'audio', 'packetsReceived') + 50;
  }, 20000);
}

try {
  log('server up at', server.base, 'advertising', IP);
  const chrome = await openParticipant(chromium.browser, server.base, MEETING, 'chrome', logs);
  const fox = await openFirefox('firefox');
  chromeRef = chrome;
  foxRef = fox;
  const chromeId = await until('chrome joined', async () => (await chrome.stats()).participantId);
  const foxId = await until('firefox joined', async () => (await fox.stats()).participantId);

  await decodes(chrome, foxId, "firefox's media");
  await decodes(fox, chromeId, "chrome's media");
  log('Chromium and Firefox decode each other');

  // Churn: one participant at a time joins (publishing audio and video) and leaves.
  let maxLines = 0;
  for (let i = 0; i < CHURN; i++) {
    const guest = await openParticipant(chromium.browser, server.base, MEETING, `guest${i}`, logs);
    const guestId = await until(`guest${i} joined`, async () => (await guest.stats()).participantId);
    for (const p of [chrome, fox]) {
      await until(`${p.name} receives guest${i}`, async () =>
        counter(await p.stats(), guestId, 'audio', 'packetsReceived') > 0, 20000);
    }
    await guest.page.evaluate(() => window.hearth.leave());
    await guest.context.close();
    for (const p of [chrome, fox]) {
      await until(`${p.name} sees guest${i} leave`, async () => {
        const s = await p.stats();
        maxLines = Math.max(maxLines, s.mLines || 0);
        return !s.participants.includes(guestId);
      });
    }
  }
  const lines = await Promise.all([chrome, fox].map(async (p) => (await p.stats()).mLines));
  log(`churn of ${CHURN}: m-lines now chrome ${lines[0]}, firefox ${lines[1]}, at most ${maxLines}`);
  // Own audio+video, the other's audio+video, one guest's two slots and two slots waiting
  // to be recycled: without recycling it would be 4 + 2 per guest (44).
  for (const n of lines) assert.ok(n <= 10, `SDP bounded under churn: ${n} m-lines`);
  assert.ok(maxLines <= 10, `SDP bounded during churn: at most ${maxLines} m-lines`);
  await decodes(chrome, foxId, "firefox's media after the churn");
  await decodes(fox, chromeId, "chrome's media after the churn");
  log('both still decode each other after the churn');

  // Firefox closes its peer connection without a signaling leave: the server hears DTLS
  // close_notify and the participant is gone at once.
  const t0 = Date.now();
  await fox.page.evaluate(() => window.hearth.closeMediaOnly());
  await until('chrome sees firefox gone', async () => !(await chrome.stats()).participants.includes(foxId), 5000, 20);
  const gone = Date.now() - t0;
  log(`firefox's closed connection noticed in ${gone} ms`);
  assert.ok(gone <= 1000, `a closed connection is gone within 1 s (took ${gone} ms)`);
  // A Chromium tab closed (page and connection gone together): the others see it gone
  // within 1 s.
  const watcher = await openParticipant(chromium.browser, server.base, MEETING, 'watcher', logs);
  const leaver = await openParticipant(chromium.browser, server.base, MEETING, 'leaver', logs);
  const leaverId = await until('leaver joined', async () => (await leaver.stats()).participantId);
  await until('watcher receives leaver', async () =>
    counter(await watcher.stats(), leaverId, 'audio', 'packetsReceived') > 0, 20000);
  const t1 = Date.now();
  await leaver.context.close();
  await until('watcher sees the closed tab gone', async () =>
    !(await watcher.stats()).participants.includes(leaverId), 5000, 20);
  const tabGone = Date.now() - t1;
  log(`a closed tab is gone for the others in ${tabGone} ms`);
  assert.ok(tabGone <= 1000, `a closed tab is gone within 1 s (took ${tabGone} ms)`);

  // A track Firefox cannot decode (this Firefox has no H.264): its answer has no codec of
  // the sender's, and the server stops the track for it (not allocated, not kept running
  // at the publisher, not offered again); the rest of the meeting plays both ways.
  const H264_MEETING = 'e2e-firefox-h264';
  const fox2 = await openFirefox('firefox2', H264_MEETING);
  foxRef = fox2;
  const h264 = await openParticipant(chromium.browser, server.base, H264_MEETING, 'h264', logs, '&codec=h264&simulcast=0');
  const h264Id = await until('h264 joined', async () => (await h264.stats()).participantId);
  const fox2Id = await until('firefox2 joined', async () => (await fox2.stats()).participantId);
  await until('firefox2 receives the H.264 publisher\'s audio', async () =>
    counter(await fox2.stats(), h264Id, 'audio', 'packetsReceived') > 50, 30000);
  await until('the H.264 publisher decodes firefox2\'s video', async () =>
    counter(await h264.stats(), fox2Id, 'video', 'framesDecoded') > 20, 30000);
  // The server's offers carry a rising session version (o= line): it stops rising.
  const version = () => fox2.page.evaluate(() =>
    ((window.hearth.peerConnection() || {}).remoteDescription || {}).sdp?.match(/^o=\S+ \S+ (\d+)/m)?.[1] || '');
  let lastVersion = await version();
  let since = Date.now();
  await until('firefox2\'s negotiation settles (no offer for 3 s)', async () => {
    const v = await version();
    if (v !== lastVersion) {
      lastVersion = v;
      since = Date.now();
    }
    return Date.now() - since >= 3000;
  }, 20000, 100);
  assert.equal(counter(await fox2.stats(), h264Id, 'video', 'framesDecoded'), 0, 'the refused video is not decoded');
  // The server saw the refusal (Firefox accepts the section with VP8, which the server
  // offers beside the sender's H.264; nothing can be sent on it) and stopped the track.
  await until('the server notes the refused track', async () =>
    server.output.join('').includes('the client refused the track'), 10000);
  // Someone else joins: firefox2 still negotiates and decodes new tracks.
  const third = await openParticipant(chromium.browser, server.base, H264_MEETING, 'third', logs);
  const thirdId = await until('third joined', async () => (await third.stats()).participantId);
  await until('firefox2 decodes the third participant', async () =>
    counter(await fox2.stats(), thirdId, 'video', 'framesDecoded') > 0, 30000);
  log(`a track firefox cannot decode (H.264) was refused; negotiation settled (session version ${lastVersion}); later tracks play`);
  log('PASS firefox.test.mjs');
} catch (e) {
  failed = true;
  console.error('FAIL firefox.test.mjs:', e.stack || e);
  console.error('--- browser console ---\n' + logs.join('\n'));
  for (const [name, p] of [['chrome', chromeRef], ['firefox', foxRef]]) {
    if (p) console.error(`--- ${name} stats ---\n` + JSON.stringify(await p.stats().catch((err) => String(err))));
  }
  console.error('--- server output ---\n' + server.output.join(''));
} finally {
  await firefox.close().catch(() => {});
  rmSync(ffProfile, { recursive: true, force: true });
  await chromium.close();
  await server.stop();
}
process.exit(failed ? 1 : 0);
