// Browser end to end: three Chromium pages meet through Hearth, one leaves, a fourth joins
// late. Run inside a network namespace with only loopback (tests/browser/run.sh does that).
//
//   node tests/browser/meeting.test.mjs <path to hearth binary>
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { counter, launchBrowser, openParticipant, startServer, until } from './lib.mjs';

const binary = process.argv[2] || 'target/debug/hearth';
const MEETING = 'e2e-standup';
const logs = [];
const server = await startServer(binary, ['--dev', '--media-port', '7882', '--empty-timeout', '5s']);
const chromium = await launchBrowser();
let failed = false;

function log(...args) {
  console.log(`[${new Date().toISOString().slice(11, 23)}]`, ...args);
}

/** Every page receives audio and video from every other page, and the counters grow. */
async function expectMeshFlowing(people, seconds) {
  const ids = {};
  for (const p of people) {
    ids[p.name] = (await until(`${p.name} joined`, async () => (await p.stats()).participantId)) || '';
  }
  for (const p of people) {
    for (const other of people.filter((o) => o !== p)) {
      await until(`${p.name} decodes video from ${other.name}`, async () => {
        const s = await p.stats();
        return counter(s, ids[other.name], 'video', 'framesDecoded') > 0
          && counter(s, ids[other.name], 'audio', 'packetsReceived') > 0;
      }, 20000);
    }
  }
  const before = await Promise.all(people.map((p) => p.stats()));
  const t0 = Date.now();
  // Counters keep growing over `seconds`: poll until each pair has advanced by enough.
  for (const [i, p] of people.entries()) {
    for (const other of people.filter((o) => o !== p)) {
      const id = ids[other.name];
      await until(`${p.name}: media from ${other.name} keeps flowing`, async () => {
        if (Date.now() - t0 < seconds * 1000) return false;
        const s = await p.stats();
        const frames = counter(s, id, 'video', 'framesDecoded') - counter(before[i], id, 'video', 'framesDecoded');
        const audio = counter(s, id, 'audio', 'bytesReceived') - counter(before[i], id, 'audio', 'bytesReceived');
        // Chromium's fake camera runs at 30 fps; demand well over 5 fps sustained.
        return frames > seconds * 5 && audio > seconds * 1000;
      }, seconds * 1000 + 15000);
    }
  }
  return ids;
}

try {
  log('server up at', server.base);
  const alice = await openParticipant(chromium.browser, server.base, MEETING, 'alice', logs);
  const bob = await openParticipant(chromium.browser, server.base, MEETING, 'bob', logs);
  const carol = await openParticipant(chromium.browser, server.base, MEETING, 'carol', logs);

  const ids = await expectMeshFlowing([alice, bob, carol], 4);
  log('three-way mesh flowing', ids);

  for (const p of [alice, bob, carol]) {
    const s = await p.stats();
    assert.deepEqual([...s.participants].sort(), Object.values(ids).sort(), `${p.name} sees everyone`);
  }

  // Carol leaves: the others' participant lists drop her and her media stops.
  await carol.page.evaluate(() => window.hearth.leave());
  for (const p of [alice, bob]) {
    await until(`${p.name} sees carol leave`, async () => {
      const s = await p.stats();
      return !s.participants.includes(ids.carol) && !s.remote.some((r) => r.participant === ids.carol);
    });
  }
  log('carol left; lists updated');

  // Dave joins late and decodes video from alice and bob within 2 s of his media starting.
  const dave = await openParticipant(chromium.browser, server.base, MEETING, 'dave', logs);
  const daveId = await until('dave joined', async () => (await dave.stats()).participantId);
  const started = await until('dave receives media', async () => {
    const s = await dave.stats();
    const got = s.remote.some((r) => r.kind === 'video' && r.packetsReceived > 0);
    return got ? Date.now() : 0;
  }, 20000);
  for (const [name, id] of [['alice', ids.alice], ['bob', ids.bob]]) {
    await until(`dave decodes ${name}'s video`, async () =>
      counter(await dave.stats(), id, 'video', 'framesDecoded') > 0, 20000);
  }
  const keyframeDelay = Date.now() - started;
  log(`dave decoded video ${keyframeDelay} ms after his first video packet`);
  assert.ok(keyframeDelay <= 2000, `late joiner got video in ${keyframeDelay} ms (limit 2000)`);
  for (const p of [alice, bob]) {
    await until(`${p.name} receives dave`, async () =>
      counter(await p.stats(), daveId, 'video', 'framesDecoded') > 0, 20000);
  }

  // The app sends a message over REST (an admin token minted offline with the dev node's
  // generated key pair); every page shows it in its chat panel, as text.
  const out = server.output.join('');
  const key = out.match(/API key\s+(\S+)/)?.[1];
  const secret = out.match(/API secret\s+(\S+)/)?.[1];
  assert.ok(key && secret, 'the dev node prints its generated key pair');
  const admin = execFileSync(binary, ['token', '--admin', '--identity', 'e2e-app',
    '--api-key', key, '--api-secret', secret], { encoding: 'utf8' }).trim().split('\n').pop();
  const text = 'Break in 5 minutes <b>not bold</b>';
  const res = await fetch(`${server.base}/v1/meetings/${MEETING}/messages`, {
    method: 'POST',
    headers: { authorization: `Bearer ${admin}`, 'content-type': 'application/json' },
    body: JSON.stringify({ text, from: 'Host' }),
  });
  assert.equal(res.status, 202, await res.clone().text());
  assert.equal((await res.json()).delivered, 3);
  for (const p of [alice, bob, dave]) {
    await until(`${p.name} shows the message`, () => p.page.evaluate((t) => {
      const items = [...document.querySelectorAll('#chat-list .chat-item')];
      return items.some((li) => li.querySelector('.chat-text').textContent === t
        && li.querySelector('b') === null && li.textContent.includes('Host'));
    }, text));
  }
  log('app message shown in every chat panel');

  // The server's metrics agree: one meeting, three participants.
  const metrics = await (await fetch(`${server.base}/metrics`)).text();
  assert.match(metrics, /^hearth_meetings 1$/m);
  assert.match(metrics, /^hearth_participants 3$/m);
  log('PASS meeting.test.mjs');
} catch (e) {
  failed = true;
  console.error('FAIL meeting.test.mjs:', e.stack || e);
  console.error('--- browser console ---\n' + logs.join('\n'));
  console.error('--- server output ---\n' + server.output.join(''));
} finally {
  await chromium.close();
  await server.stop();
}
process.exit(failed ? 1 : 0);
