// Browser end to end: screen sharing. Alice clicks "Share screen"; Bob sees her share as a
// tile of its own (her camera keeps its tile) and decodes it; stopping the share (the
// button, then the browser's own "stop sharing", i.e. the track's `ended` event) removes
// the tile. Afterwards the ledger has Alice's share as `screen_track_ms`.
// Headless Chromium has no screen to capture: an init script of this test replaces
// getDisplayMedia with an animated 800x600 (4:3) canvas; the fake camera is 640x360 (16:9).
// Run inside a network namespace with only loopback (tests/browser/run.sh does that).
//
//   node tests/browser/screen.test.mjs <path to hearth binary>
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { counter, launchBrowser, startServer, until } from './lib.mjs';

const binary = process.argv[2] || 'target/debug/hearth';
const MEETING = 'e2e-screens';
const logs = [];
const server = await startServer(binary, ['--dev', '--media-port', '7882', '--empty-timeout', '2s']);
const chromium = await launchBrowser();
let failed = false;

function log(...args) {
  console.log(`[${new Date().toISOString().slice(11, 23)}]`, ...args);
}

/** Page init script: getDisplayMedia gives a canvas that changes 30 times a second. */
function fakeDisplayMedia() {
  window.__screenTracks = [];
  navigator.mediaDevices.getDisplayMedia = async (constraints) => {
    if (!constraints || !constraints.video) throw new TypeError('video required');
    const canvas = Object.assign(document.createElement('canvas'), { width: 800, height: 600 });
    const ctx = canvas.getContext('2d');
    let n = 0;
    const draw = () => {
      n += 1;
      ctx.fillStyle = `hsl(${(n * 7) % 360} 70% 50%)`;
      ctx.fillRect(0, 0, 800, 600);
      ctx.fillStyle = '#fff';
      ctx.font = '48px sans-serif';
      ctx.fillText(`slide ${n}`, 40, 100);
    };
    draw();
    const timer = setInterval(draw, 33);
    const stream = canvas.captureStream(30);
    const [track] = stream.getVideoTracks();
    track.addEventListener('ended', () => clearInterval(timer));
    window.__screenTracks.push(track);
    return stream;
  };
}

/** Sum of a counter over the remote entries from `from` of `kind` declared `source`. */
function bySource(stats, from, kind, source, field) {
  return stats.remote
    .filter((r) => r.participant === from && r.kind === kind && r.source === source)
    .reduce((sum, r) => sum + (r[field] || 0), 0);
}

/** The tiles of a page: label, whether a screen share, the size its video decodes at. */
const tiles = (page) => page.evaluate(() => [...document.querySelectorAll('#grid .tile')].map((t) => ({
  label: t.querySelector('.name').textContent,
  screen: t.classList.contains('screen'),
  self: t.classList.contains('self'),
  width: t.querySelector('video').videoWidth,
  height: t.querySelector('video').videoHeight,
  frames: t.querySelector('video').getVideoPlaybackQuality().totalVideoFrames,
})));

const buttonText = (page) => page.evaluate(() => {
  const b = document.getElementById('screen-button');
  return b.hidden ? '(hidden)' : b.textContent;
});

/** Bob sees Alice's share as its own tile, decoding at 4:3, with her camera still in hers. */
async function expectShareShown(bob, aliceId) {
  await until('bob shows a screen tile for alice', async () => {
    const t = await tiles(bob.page);
    const screens = t.filter((x) => x.screen);
    return screens.length === 1 && screens[0].label === 'alice (screen)' && screens[0].width > 0;
  }, 20000);
  const before = await bob.stats();
  const framesBefore = bySource(before, aliceId, 'video', 'SCREEN', 'framesDecoded');
  const tilesBefore = await tiles(bob.page);
  await until('bob decodes alice\'s screen, frames advancing', async () => {
    const s = await bob.stats();
    return bySource(s, aliceId, 'video', 'SCREEN', 'framesDecoded') - framesBefore > 20;
  }, 20000);
  const t = await tiles(bob.page);
  const share = t.find((x) => x.screen);
  const camera = t.find((x) => !x.screen && x.label === 'alice');
  assert.ok(camera, `alice keeps her camera tile: ${JSON.stringify(t)}`);
  assert.ok(Math.abs(share.width / share.height - 4 / 3) < 0.05, `the screen tile plays the share: ${JSON.stringify(share)}`);
  assert.ok(Math.abs(camera.width / camera.height - 16 / 9) < 0.05, `the camera tile plays the camera: ${JSON.stringify(camera)}`);
  assert.ok(share.frames > tilesBefore.find((x) => x.screen).frames, 'the screen tile renders new frames');
  const s = await bob.stats();
  assert.ok(counter(s, aliceId, 'video', 'framesDecoded') > bySource(s, aliceId, 'video', 'SCREEN', 'framesDecoded'),
    'bob decodes alice\'s camera as well');
}

async function expectShareGone(bob, aliceId, what) {
  await until(`bob's screen tile goes away (${what})`, async () => {
    const t = await tiles(bob.page);
    return !t.some((x) => x.screen) && t.some((x) => x.label === 'alice');
  });
  // Her camera keeps flowing.
  const before = counter(await bob.stats(), aliceId, 'video', 'framesDecoded');
  await until('alice\'s camera keeps flowing to bob', async () =>
    counter(await bob.stats(), aliceId, 'video', 'framesDecoded') - before > 20, 15000);
}

/** lib.mjs's openParticipant, with an init script in the page before the app loads. */
async function openParticipant(browser, base, meeting, name, logs, extraQuery = '', initScript = null) {
  const context = await browser.newContext({ permissions: ['camera', 'microphone'] });
  if (initScript) await context.addInitScript(initScript);
  const page = await context.newPage();
  page.on('console', (m) => {
    if (m.type() === 'error' || m.type() === 'warning') logs.push(`[${name}] ${m.type()}: ${m.text()}`);
  });
  page.on('pageerror', (e) => logs.push(`[${name}] pageerror: ${e.message}`));
  await page.goto(`${base}/?meeting=${encodeURIComponent(meeting)}&name=${encodeURIComponent(name)}&autojoin=1${extraQuery}`);
  return { name, page, context, stats: () => page.evaluate(() => window.hearth.stats()) };
}

try {
  log('server up at', server.base);
  const alice = await openParticipant(chromium.browser, server.base, MEETING, 'alice', logs, '', fakeDisplayMedia);
  const bob = await openParticipant(chromium.browser, server.base, MEETING, 'bob', logs);
  const aliceId = await until('alice joined', async () => (await alice.stats()).participantId);
  const bobId = await until('bob joined', async () => (await bob.stats()).participantId);
  await until('bob decodes alice\'s camera', async () =>
    counter(await bob.stats(), aliceId, 'video', 'framesDecoded') > 0, 20000);
  assert.equal(await buttonText(alice.page), 'Share screen');
  log('both joined', { aliceId, bobId });

  // Share, stop with the button.
  await alice.page.click('#screen-button');
  await until('alice\'s button turns into "Stop sharing"', async () => (await buttonText(alice.page)) === 'Stop sharing');
  await until('alice previews her share', async () =>
    (await tiles(alice.page)).some((x) => x.screen && x.label === 'alice (you, screen)'));
  await expectShareShown(bob, aliceId);
  log('bob sees and decodes alice\'s screen share in its own tile');
  await alice.page.click('#screen-button');
  assert.equal(await buttonText(alice.page), 'Share screen');
  assert.ok(!(await tiles(alice.page)).some((x) => x.screen), 'alice\'s preview goes');
  await expectShareGone(bob, aliceId, 'stopped with the button');
  log('share stopped with the button: tile gone');

  // Share again, stop from the browser's side (the captured track ends).
  await alice.page.click('#screen-button');
  await expectShareShown(bob, aliceId);
  await alice.page.evaluate(() => {
    const track = window.__screenTracks.at(-1);
    track.stop();
    track.dispatchEvent(new Event('ended')); // what the browser's "Stop sharing" fires
  });
  await until('alice\'s button is back to "Share screen"', async () => (await buttonText(alice.page)) === 'Share screen');
  await expectShareGone(bob, aliceId, 'the track ended');
  log('share stopped by the browser: tile gone');

  // Without getDisplayMedia (older or mobile browsers) there is no button.
  const bare = await chromium.browser.newContext();
  await bare.addInitScript(() => { delete MediaDevices.prototype.getDisplayMedia; });
  const barePage = await bare.newPage();
  await barePage.goto(`${server.base}/`);
  assert.equal(await buttonText(barePage), '(hidden)', 'no screen button without getDisplayMedia');
  await bare.close();

  // The ledger metered the shares as screen_track_ms (rows are written when a track ends).
  await alice.page.evaluate(() => window.hearth.leave());
  await bob.page.evaluate(() => window.hearth.leave());
  await until('the meeting ends', async () =>
    /^hearth_meetings 0$/m.test(await (await fetch(`${server.base}/metrics`)).text()), 20000);
  const out = server.output.join('');
  const key = out.match(/API key\s+(\S+)/)?.[1];
  const secret = out.match(/API secret\s+(\S+)/)?.[1];
  assert.ok(key && secret, 'the dev node prints its generated key pair');
  const admin = execFileSync(binary, ['token', '--admin', '--identity', 'e2e-app',
    '--api-key', key, '--api-secret', secret], { encoding: 'utf8' }).trim().split('\n').pop();
  const sum = (rows, meter, participant) => rows
    .filter((r) => r.meter === meter && r.participant === participant)
    .reduce((total, r) => total + r.quantity, 0);
  const rows = await until('the ledger has alice\'s screen_track_ms and the meeting\'s rows', async () => {
    const res = await fetch(`${server.base}/v1/usage/events?limit=10000`, {
      headers: { authorization: `Bearer ${admin}`, accept: 'application/json' },
    });
    assert.equal(res.status, 200, await res.clone().text());
    const { events } = await res.json();
    const done = sum(events, 'screen_track_ms', aliceId) > 0 && events.some((r) => r.meter === 'meeting_ms');
    return done && events;
  }, 20000, 250);
  const screenMs = sum(rows, 'screen_track_ms', aliceId);
  log('ledger:', { aliceScreenMs: screenMs, aliceVideoMs: sum(rows, 'video_track_ms', aliceId),
    bobScreenMs: sum(rows, 'screen_track_ms', bobId) });
  assert.ok(screenMs > 1000, `alice shared for over a second: ${screenMs} ms`);
  assert.ok(sum(rows, 'video_track_ms', aliceId) > screenMs, 'her camera is metered as video, longer than her shares');
  assert.equal(sum(rows, 'screen_track_ms', bobId), 0, 'bob shared nothing');
  if (process.env.HEARTH_TEST_VERBOSE) console.log('--- browser console ---\n' + logs.join('\n'));
  log('PASS screen.test.mjs');
} catch (e) {
  failed = true;
  console.error('FAIL screen.test.mjs:', e.stack || e);
  console.error('--- browser console ---\n' + logs.join('\n'));
  console.error('--- server output ---\n' + server.output.join(''));
} finally {
  await chromium.close();
  await server.stop();
}
process.exit(failed ? 1 : 0);
