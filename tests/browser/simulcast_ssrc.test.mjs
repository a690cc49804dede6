// SSRC-group simulcast (`a=ssrc-group:SIM`, the form before rids that older clients and
// SDKs send): a Chromium page publishes over WHIP with plain RTCPeerConnection, its offer
// rewritten the classic way (three primary SSRCs, an RTX for each, one SIM group), from a
// 1280x720 canvas. Bob's 720 px high tile receives the top layer, Carol's thumbnail the
// lowest; when Carol's tile grows she moves up.
//
//   tests/browser/run.sh simulcast_ssrc.test.mjs <path to hearth binary>
import assert from 'node:assert/strict';
import { launchBrowser, openParticipant, receivedWidth, startServer, until, SMALL_TILES } from './lib.mjs';

const binary = process.argv[2] || 'target/debug/hearth';
const MEETING = 'e2e-sim-group';
const logs = [];
const server = await startServer(binary, ['--dev', '--media-port', '7882', '--empty-timeout', '5s']);
const chromium = await launchBrowser();
let failed = false;

function log(...args) {
  console.log(`[${new Date().toISOString().slice(11, 23)}]`, ...args);
}

try {
  const bob = await openParticipant(chromium.browser, server.base, MEETING, 'bob', logs);
  const carol = await openParticipant(chromium.browser, server.base, MEETING, 'carol', logs);
  const carolSmall = await carol.page.addStyleTag({ content: SMALL_TILES });
  // Bob's tile is as high as the top layer (a layer is chosen by the tile's height).
  await bob.page.addStyleTag({ content: '#grid .tile:not(.self) { width: 1280px !important; height: 720px !important; }' });
  for (const p of [bob, carol]) {
    await until(`${p.name} joined`, async () => (await p.stats()).participantId);
    await p.page.evaluate(() => window.hearth.setStatsOverlay(true));
  }

  const token = (await (await fetch(`${server.base}/v1/dev/token?meeting=${MEETING}&name=legacy`)).json()).token;
  const context = await chromium.browser.newContext({ permissions: ['camera', 'microphone'] });
  const page = await context.newPage();
  page.on('pageerror', (e) => logs.push(`[legacy] pageerror: ${e.message}`));
  await page.goto(`${server.base}/healthz`);
  const whip = await page.evaluate(async ({ meeting, token }) => {
    // Three layers the way SDKs did it before rids: more SSRCs in the local offer, each
    // with its RTX, grouped by SIM (lowest first); Chromium then encodes three sizes.
    function munge(sdp) {
      const lines = sdp.split('\r\n');
      const start = lines.findIndex((l) => l.startsWith('m=video'));
      let end = lines.findIndex((l, i) => i > start && l.startsWith('m='));
      if (end < 0) end = lines.length - 1;
      const section = lines.slice(start, end);
      const fid = section.find((l) => l.startsWith('a=ssrc-group:FID ')).split(' ').slice(1).map(Number);
      const of = (ssrc) => section.filter((l) => l.startsWith(`a=ssrc:${ssrc} `)).map((l) => l.slice(`a=ssrc:${ssrc} `.length));
      const [primaryAttrs, rtxAttrs] = [of(fid[0]), of(fid[1])];
      const extra = [];
      const primaries = [fid[0]];
      for (let i = 0; i < 2; i += 1) {
        const p = Math.floor(Math.random() * 0xfffffff) + 1000;
        const r = p + 1;
        primaries.push(p);
        for (const a of primaryAttrs) extra.push(`a=ssrc:${p} ${a}`);
        for (const a of rtxAttrs) extra.push(`a=ssrc:${r} ${a}`);
        extra.push(`a=ssrc-group:FID ${p} ${r}`);
      }
      extra.push(`a=ssrc-group:SIM ${primaries.join(' ')}`);
      lines.splice(end, 0, ...extra);
      return lines.join('\r\n');
    }
    // A 1280x720 camera (the fake device stops at 640x480, too small for three layers):
    // a canvas with moving content, and the fake microphone.
    const canvas = Object.assign(document.createElement('canvas'), { width: 1280, height: 720 });
    const g = canvas.getContext('2d');
    let frame = 0;
    setInterval(() => {
      frame += 1;
      g.fillStyle = `hsl(${(frame * 7) % 360} 60% 50%)`;
      g.fillRect(0, 0, 1280, 720);
      g.fillStyle = '#fff';
      for (let i = 0; i < 40; i += 1) g.fillRect((frame * 9 + i * 97) % 1280, (i * 53 + frame * 3) % 720, 60, 60);
    }, 33);
    const mic = await navigator.mediaDevices.getUserMedia({ audio: true });
    const stream = new MediaStream([...mic.getAudioTracks(), ...canvas.captureStream(30).getVideoTracks()]);
    const pc = new RTCPeerConnection();
    for (const track of stream.getTracks()) pc.addTransceiver(track, { direction: 'sendonly' });
    const offer = await pc.createOffer();
    const sdp = munge(offer.sdp);
    await pc.setLocalDescription({ type: 'offer', sdp });
    // The SIM group made three encodings; SDKs then give them their sizes.
    const sender = pc.getSenders().find((x) => x.track && x.track.kind === 'video');
    const params = sender.getParameters();
    const encodings = params.encodings.length;
    params.encodings.forEach((e, i) => { e.scaleResolutionDownBy = 2 ** (params.encodings.length - 1 - i); });
    await sender.setParameters(params);
    const res = await fetch(`/whip/${meeting}`, {
      method: 'POST',
      headers: { 'content-type': 'application/sdp', authorization: `Bearer ${token}` },
      body: pc.localDescription.sdp,
    });
    const body = await res.text();
    if (res.status !== 201) return { status: res.status, body };
    await pc.setRemoteDescription({ type: 'answer', sdp: body });
    window.__pc = pc;
    const { width, height } = stream.getVideoTracks()[0].getSettings();
    return { status: res.status, location: res.headers.get('location'), sim: (sdp.match(/a=ssrc-group:SIM.*/) || [''])[0], camera: `${width}x${height}`, encodings };
  }, { meeting: MEETING, token });
  assert.equal(whip.status, 201, JSON.stringify(whip));
  const publisherId = whip.location.split('/').at(-1);
  log('legacy publisher', publisherId, whip.camera, `${whip.encodings} encodings`, whip.sim);
  assert.equal(whip.encodings, 3, 'the SIM group made three encodings');

  // Chromium encodes three sizes on the three SSRCs.
  let seen = '';
  const sent = await until('the publisher sends three layers', async () => {
    const stats = await page.evaluate(async () => [...(await window.__pc.getStats()).values()]
      .filter((s) => s.type === 'outbound-rtp' && s.kind === 'video')
      .map((s) => ({ ssrc: s.ssrc, width: s.frameWidth || 0, bytes: s.bytesSent || 0, limit: s.qualityLimitationReason })));
    const now = JSON.stringify(stats.map((s) => [s.ssrc, s.width, s.limit, s.bytes > 0]));
    if (now !== seen) log('publisher layers', (seen = now));
    return stats.filter((s) => s.bytes > 0 && s.width > 0).length >= 3 ? stats : null;
  }, 30000);
  log('the publisher sends', JSON.stringify(sent));
  const widths = sent.map((s) => s.width).sort((a, b) => a - b);
  const [lowest, , top] = widths;

  let bobSaw = -1;
  await until('bob receives the top layer', async () => {
    const w = await receivedWidth(bob, publisherId);
    if (w !== bobSaw) log(`bob receives ${(bobSaw = w)} px wide`);
    return w >= top;
  }, 30000);
  const small = await until('carol receives the lowest layer', async () => {
    const w = await receivedWidth(carol, publisherId);
    return w > 0 && w <= lowest ? w : null;
  }, 30000);
  log(`bob receives ${top} px wide, carol's thumbnail ${small}`);

  await carolSmall.evaluate((el) => el.remove());
  const grown = await until('carol moves up', async () => {
    const w = await receivedWidth(carol, publisherId);
    return w > small ? w : null;
  }, 20000);
  log(`carol's tile grew: she receives ${grown} px wide`);
  assert.deepEqual(logs.filter((l) => l.includes('pageerror')), []);
  await context.close();
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
