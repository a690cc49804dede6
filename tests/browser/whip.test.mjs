// WHIP ingest and WHEP playback from two independent WebRTC stacks, into and out of a
// meeting whose Chromium participant (the web client) watches:
//  1. a Chromium page publishes with plain RTCPeerConnection and fetch (RFC 9725's exchange),
//     then restarts ICE with a PATCH (new credentials both ways) and keeps publishing;
//  2. aiortc (Python) publishes a test pattern and audio the same way, and so does GStreamer
//     (webrtcbin with libnice, the stack of GStreamer-based streaming tools); the web client
//     decodes all three;
//  3. a Chromium page plays the web client's camera and microphone over WHEP, and aiortc
//     plays the Chromium WHIP publisher over WHEP; both decode;
//  4. DELETE ends the Chromium publisher: it leaves the meeting, and the aiortc player
//     watching it is ended with it; aiortc's own DELETE ends its publisher.
// aiortc's ICE ignores loopback, so this test gets the veth namespace of the Firefox test
// (tests/browser/run.sh) and the node advertises HEARTH_TEST_IP.
//
//   HEARTH_WHIP_PYTHON=<python with aiortc> node tests/browser/whip.test.mjs <hearth binary>
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import { counter, launchBrowser, openParticipant, startServer, until } from './lib.mjs';

const binary = process.argv[2] || 'target/debug/hearth';
const PYTHON = process.env.HEARTH_WHIP_PYTHON;
const CLIENT = fileURLToPath(new URL('../whip/aiortc_client.py', import.meta.url));
// Debian's python, which has PyGObject and GStreamer's introspection data (tests/run.sh).
const GST_PYTHON = process.env.HEARTH_GST_PYTHON || '/usr/bin/python3';
const GST_CLIENT = fileURLToPath(new URL('../whip/gst_whip.py', import.meta.url));
const IP = process.env.HEARTH_TEST_IP || '127.0.0.1';
const MEETING = 'e2e-whip';
const logs = [];
if (!PYTHON) throw new Error('HEARTH_WHIP_PYTHON must name a python with aiortc (tests/run.sh sets it)');
const server = await startServer(binary, [
  '--dev', '--media-port', '7882', '--public-ip', IP, '--empty-timeout', '5s',
]);
const chromium = await launchBrowser();
const children = [];
let failed = false;

function log(...args) {
  console.log(`[${new Date().toISOString().slice(11, 23)}]`, ...args);
}

async function devToken(name) {
  const res = await fetch(`${server.base}/v1/dev/token?meeting=${MEETING}&name=${name}`);
  assert.equal(res.status, 200);
  return (await res.json()).token;
}

/** Runs aiortc_client.py; its JSON lines arrive in `events`. */
function aiortc(mode, url, token) {
  return pythonClient(`aiortc ${mode}`, PYTHON, [CLIENT, mode, url, token]);
}

/** Runs gst_whip.py (GStreamer's webrtcbin) as a WHIP publisher. */
function gstreamer(url, token) {
  return pythonClient('gstreamer publish', GST_PYTHON, [GST_CLIENT, url, token]);
}

/** A client script printing JSON lines (see aiortc_client.py): its events and controls. */
function pythonClient(what, python, args) {
  const proc = spawn(python, args, { stdio: ['pipe', 'pipe', 'pipe'] });
  const events = [];
  const stderr = [];
  // A missing interpreter is an error event of the child, not a crash of the test.
  proc.on('error', (e) => events.push({ event: 'error', message: `${what}: ${e.message}` }));
  createInterface({ input: proc.stdout }).on('line', (line) => {
    try { events.push(JSON.parse(line)); } catch { stderr.push(line); }
  });
  proc.stderr.on('data', (d) => stderr.push(d.toString()));
  const child = {
    what,
    proc,
    events,
    stderr,
    last: (event) => events.filter((e) => e.event === event).at(-1),
    failIfError() {
      const error = events.find((e) => e.event === 'error');
      if (error) throw new Error(`${what}: ${JSON.stringify(error)}`);
      if (proc.exitCode !== null && proc.exitCode !== 0) {
        throw new Error(`${what} exited ${proc.exitCode}: ${stderr.join('')}`);
      }
    },
    /** Closes stdin: the client DELETEs its resource and exits. */
    async finish() {
      proc.stdin.end();
      await until(`${what} exits`, () => proc.exitCode !== null, 20000);
      return child.last('deleted');
    },
  };
  children.push(child);
  return child;
}

/** Waits for `child`'s `started` event; returns it. */
async function started(child, what) {
  return until(`${what} started`, () => {
    child.failIfError();
    return child.last('started');
  }, 30000);
}

/** A Chromium page on the server's origin with no web client: plain RTCPeerConnection. */
async function plainPage(name) {
  const context = await chromium.browser.newContext({ permissions: ['camera', 'microphone'] });
  const page = await context.newPage();
  page.on('console', (m) => {
    if (m.type() === 'error') logs.push(`[${name}] ${m.type()}: ${m.text()}`);
  });
  page.on('pageerror', (e) => logs.push(`[${name}] pageerror: ${e.message}`));
  await page.goto(`${server.base}/healthz`);
  return { page, context };
}

/** `viewer` decodes video and receives audio from participant `id`, and keeps doing so. */
async function decodes(viewer, id, what) {
  await until(`viewer decodes ${what}`, async () => {
    const s = await viewer.stats();
    return counter(s, id, 'video', 'framesDecoded') > 0 && counter(s, id, 'audio', 'packetsReceived') > 0;
  }, 30000);
  const before = await viewer.stats();
  await until(`viewer keeps decoding ${what}`, async () => {
    const s = await viewer.stats();
    return counter(s, id, 'video', 'framesDecoded') > counter(before, id, 'video', 'framesDecoded') + 20
      && counter(s, id, 'audio', 'packetsReceived') > counter(before, id, 'audio', 'packetsReceived') + 50;
  }, 20000);
}

const idOf = (location) => location.split('/').at(-1);

try {
  log('server up at', server.base, 'advertising', IP);
  const viewer = await openParticipant(chromium.browser, server.base, MEETING, 'viewer', logs);
  const viewerId = await until('viewer joined', async () => (await viewer.stats()).participantId);

  // 1. Chromium publishes over WHIP with nothing but the platform's APIs.
  const publisher = await plainPage('chrome-whip');
  const whip = await publisher.page.evaluate(async ({ meeting, token }) => {
    const stream = await navigator.mediaDevices.getUserMedia({ audio: true, video: true });
    const pc = new RTCPeerConnection();
    for (const track of stream.getTracks()) pc.addTransceiver(track, { direction: 'sendonly' });
    await pc.setLocalDescription(await pc.createOffer());
    const res = await fetch(`/whip/${meeting}`, {
      method: 'POST',
      headers: { 'content-type': 'application/sdp', authorization: `Bearer ${token}` },
      body: pc.localDescription.sdp,
    });
    const body = await res.text();
    if (res.status !== 201) return { status: res.status, body };
    await pc.setRemoteDescription({ type: 'answer', sdp: body });
    window.__pc = pc;
    window.__token = token;
    return { status: res.status, location: res.headers.get('location'), links: res.headers.get('link') };
  }, { meeting: MEETING, token: await devToken('chrome-whip') });
  assert.equal(whip.status, 201, JSON.stringify(whip));
  assert.match(whip.links || '', /rel="ice-server"/);
  const chromePublisherId = idOf(whip.location);
  await decodes(viewer, chromePublisherId, "Chromium's WHIP stream");
  log('the web client decodes the Chromium WHIP publisher', chromePublisherId);

  // ICE restart over PATCH: new credentials both ways; the media moves to the new session.
  const restart = await publisher.page.evaluate(async (location) => {
    const pc = window.__pc;
    pc.restartIce();
    const offer = await pc.createOffer();
    await pc.setLocalDescription(offer);
    const pick = (sdp, key) => sdp.match(new RegExp(`a=${key}:(.*)\r\n`))[1];
    const ufrag = pick(offer.sdp, 'ice-ufrag');
    const res = await fetch(location, {
      method: 'PATCH',
      headers: {
        'content-type': 'application/trickle-ice-sdpfrag', 'if-match': '*',
        authorization: `Bearer ${window.__token}`,
      },
      body: `a=ice-ufrag:${ufrag}\r\na=ice-pwd:${pick(offer.sdp, 'ice-pwd')}\r\n`,
    });
    const body = await res.text();
    if (res.status !== 200) return { status: res.status, body };
    const [serverUfrag, serverPwd] = [pick(body, 'ice-ufrag'), pick(body, 'ice-pwd')];
    const answer = pc.currentRemoteDescription.sdp
      .replace(/a=ice-ufrag:.*\r\n/g, `a=ice-ufrag:${serverUfrag}\r\n`)
      .replace(/a=ice-pwd:.*\r\n/g, `a=ice-pwd:${serverPwd}\r\n`);
    await pc.setRemoteDescription({ type: 'answer', sdp: answer });
    return { status: res.status, ufrag, serverUfrag, etag: res.headers.get('etag') };
  }, whip.location);
  assert.equal(restart.status, 200, JSON.stringify(restart));
  await until('the publisher\'s media runs on the restarted ICE session', () => publisher.page.evaluate(async (ufrag) => {
    const report = [...(await window.__pc.getStats()).values()];
    const byId = new Map(report.map((s) => [s.id, s]));
    const transport = report.find((s) => s.type === 'transport' && s.selectedCandidatePairId);
    const pair = transport && byId.get(transport.selectedCandidatePairId);
    const local = pair && byId.get(pair.localCandidateId);
    return Boolean(local && local.usernameFragment === ufrag && pair.state === 'succeeded');
  }, restart.ufrag), 20000);
  await decodes(viewer, chromePublisherId, "Chromium's WHIP stream after the ICE restart");
  log('ICE restarted over PATCH (server ufrag', restart.serverUfrag + '); the viewer still decodes');

  // 2. aiortc publishes over WHIP.
  const aiortcPublisher = aiortc('publish', `${server.base}/whip/${MEETING}`, await devToken('aiortc-whip'));
  const aiortcPublisherId = idOf((await started(aiortcPublisher, 'aiortc WHIP publisher')).location);
  await decodes(viewer, aiortcPublisherId, "aiortc's WHIP stream");
  const seen = await viewer.stats();
  assert.ok(seen.participants.includes(chromePublisherId) && seen.participants.includes(aiortcPublisherId),
    'WHIP publishers are participants like any other');
  log('the web client decodes the aiortc WHIP publisher', aiortcPublisherId);

  // 2b. GStreamer (webrtcbin, libnice) publishes over WHIP, as a streaming tool built on it
  // would; non-trickle: its offer carries every candidate.
  const gstPublisher = gstreamer(`${server.base}/whip/${MEETING}`, await devToken('gst-whip'));
  const gstPublisherId = idOf((await started(gstPublisher, 'GStreamer WHIP publisher')).location);
  await decodes(viewer, gstPublisherId, "GStreamer's WHIP stream");
  log('the web client decodes the GStreamer WHIP publisher', gstPublisherId);

  // 3a. Chromium plays the web client's camera and microphone over WHEP.
  const player = await plainPage('chrome-whep');
  const whep = await player.page.evaluate(async ({ meeting, source, token }) => {
    const pc = new RTCPeerConnection();
    pc.addTransceiver('video', { direction: 'recvonly' });
    pc.addTransceiver('audio', { direction: 'recvonly' });
    await pc.setLocalDescription(await pc.createOffer());
    const res = await fetch(`/whep/${meeting}/${source}`, {
      method: 'POST',
      headers: { 'content-type': 'application/sdp', authorization: `Bearer ${token}` },
      body: pc.localDescription.sdp,
    });
    const body = await res.text();
    if (res.status !== 201) return { status: res.status, body };
    await pc.setRemoteDescription({ type: 'answer', sdp: body });
    window.__pc = pc;
    return { status: res.status, location: res.headers.get('location') };
  }, { meeting: MEETING, source: viewerId, token: await devToken('chrome-whep') });
  assert.equal(whep.status, 201, JSON.stringify(whep));
  const inbound = () => player.page.evaluate(async () => {
    const out = { video: 0, audio: 0, width: 0 };
    (await window.__pc.getStats()).forEach((r) => {
      if (r.type !== 'inbound-rtp') return;
      if (r.kind === 'video') { out.video += r.framesDecoded || 0; out.width = r.frameWidth || 0; }
      if (r.kind === 'audio') out.audio += r.packetsReceived || 0;
    });
    return out;
  });
  const played = await until('Chromium WHEP player decodes', async () => {
    const s = await inbound();
    return s.video > 30 && s.audio > 100 && s.width > 0 ? s : null;
  }, 30000);
  log('Chromium WHEP player decodes the web client:', JSON.stringify(played));

  // 3b. aiortc plays the Chromium WHIP publisher over WHEP.
  const aiortcPlayer = aiortc('play', `${server.base}/whep/${MEETING}/${chromePublisherId}`, await devToken('aiortc-whep'));
  const aiortcPlayerId = idOf((await started(aiortcPlayer, 'aiortc WHEP player')).location);
  const frames = await until('aiortc WHEP player decodes', () => {
    aiortcPlayer.failIfError();
    const f = aiortcPlayer.last('frames');
    return f && f.video > 30 && f.audio > 50 && f.width > 0 ? f : null;
  }, 30000);
  log('aiortc WHEP player decodes the Chromium publisher:', JSON.stringify(frames));

  // 4. DELETE ends the Chromium publisher, and the aiortc player watching it.
  const deleted = await publisher.page.evaluate(async (location) => {
    const res = await fetch(location, { method: 'DELETE', headers: { authorization: `Bearer ${window.__token}` } });
    return res.status;
  }, whip.location);
  assert.equal(deleted, 200);
  await until('the Chromium publisher and its player are gone', async () => {
    const p = (await viewer.stats()).participants;
    return !p.includes(chromePublisherId) && !p.includes(aiortcPlayerId);
  }, 10000);
  log('DELETE ended the Chromium publisher and the WHEP session watching it');
  const gone = await aiortcPublisher.finish();
  assert.equal(gone && gone.status, 200, 'aiortc DELETEs its resource');
  await until('the aiortc publisher is gone', async () =>
    !(await viewer.stats()).participants.includes(aiortcPublisherId), 10000);
  log('aiortc ended its WHIP session with DELETE');
  const gstGone = await gstPublisher.finish();
  assert.equal(gstGone && gstGone.status, 200, 'GStreamer\'s publisher DELETEs its resource');
  await until('the GStreamer publisher is gone', async () =>
    !(await viewer.stats()).participants.includes(gstPublisherId), 10000);
  log('GStreamer ended its WHIP session with DELETE');
  assert.deepEqual(logs.filter((l) => l.includes('pageerror')), []);
} catch (e) {
  failed = true;
  console.error('FAILED:', e);
  for (const c of children) console.error(`${c.what} stderr:`, c.stderr.join('').slice(-3000));
  console.error(logs.join('\n'));
  console.error(server.output.join('').slice(-6000));
} finally {
  for (const c of children) if (c.proc.exitCode === null) c.proc.kill('SIGKILL');
  await chromium.close();
  await server.stop();
}
process.exit(failed ? 1 : 0);
