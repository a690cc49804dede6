// Browser end to end: active speaker detection and mute. Alice's fake microphone plays a
// steady tone, Bob's plays silence; both pages must highlight Alice as the active speaker.
// When Alice mutes, the server stops forwarding her audio and the highlight goes; when
// she unmutes, both come back.
//
//   node tests/browser/speaker.test.mjs <path to hearth binary>
import { writeFileSync, mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { counter, launchBrowser, openParticipant, startServer, until } from './lib.mjs';

/** A 16-bit mono 48 kHz WAV: a sine at `amplitude` (0..1), or silence. */
function wav(path, seconds, amplitude) {
  const rate = 48000;
  const samples = rate * seconds;
  const buf = Buffer.alloc(44 + samples * 2);
  buf.write('RIFF', 0); buf.writeUInt32LE(36 + samples * 2, 4); buf.write('WAVE', 8);
  buf.write('fmt ', 12); buf.writeUInt32LE(16, 16); buf.writeUInt16LE(1, 20); buf.writeUInt16LE(1, 22);
  buf.writeUInt32LE(rate, 24); buf.writeUInt32LE(rate * 2, 28); buf.writeUInt16LE(2, 32); buf.writeUInt16LE(16, 34);
  buf.write('data', 36); buf.writeUInt32LE(samples * 2, 40);
  for (let i = 0; i < samples; i++) {
    buf.writeInt16LE(Math.round(amplitude * 32767 * Math.sin((2 * Math.PI * 440 * i) / rate)), 44 + i * 2);
  }
  writeFileSync(path, buf);
}

const binary = process.argv[2] || 'target/debug/hearth';
const dir = mkdtempSync(join(tmpdir(), 'hearth-audio-'));
wav(join(dir, 'tone.wav'), 5, 0.5);
wav(join(dir, 'silence.wav'), 5, 0);
const logs = [];
const server = await startServer(binary, ['--dev', '--media-port', '7882']);
const loud = await launchBrowser([`--use-file-for-fake-audio-capture=${join(dir, 'tone.wav')}`]);
const quiet = await launchBrowser([`--use-file-for-fake-audio-capture=${join(dir, 'silence.wav')}`]);
let failed = false;

try {
  const speakers = (p) => p.page.evaluate(() => [...window.hearth.activeSpeakers]);
  const alice = await openParticipant(loud.browser, server.base, 'speakers', 'alice', logs);
  const aliceId = await until('alice joined', async () => (await alice.stats()).participantId);
  // Alice speaks alone first; Bob, joining later, must be told who speaks right away
  // (speaker lists are sent on change, so a newcomer needs the current one).
  await until('alice sees herself speaking', async () => (await speakers(alice))[0] === aliceId, 15000);
  const bob = await openParticipant(quiet.browser, server.base, 'speakers', 'bob', logs);
  const bobId = await until('bob joined', async () => (await bob.stats()).participantId);
  await until('bob hears alice', async () => counter(await bob.stats(), aliceId, 'audio', 'packetsReceived') > 50, 20000);

  for (const p of [alice, bob]) {
    await until(`${p.name} sees alice as the active speaker`, async () => {
      const list = await speakers(p);
      return list[0] === aliceId && !list.includes(bobId);
    }, 15000);
  }
  console.log('alice is the active speaker on both pages');

  // Mute: the server stops forwarding alice's audio, and she stops being a speaker.
  await alice.page.evaluate(() => window.hearth.setMicMuted(true));
  await until('alice drops out of the active speakers', async () => (await speakers(bob)).length === 0, 15000);
  let last = -1;
  await until('alice\'s audio stops reaching bob', async () => {
    const now = counter(await bob.stats(), aliceId, 'audio', 'packetsReceived');
    const stopped = now === last;
    last = now;
    return stopped;
  }, 15000, 1000);
  console.log('muted: audio stopped and the highlight went');

  await alice.page.evaluate(() => window.hearth.setMicMuted(false));
  const before = counter(await bob.stats(), aliceId, 'audio', 'packetsReceived');
  await until('alice\'s audio reaches bob again', async () =>
    counter(await bob.stats(), aliceId, 'audio', 'packetsReceived') > before + 50, 15000);
  await until('alice is the active speaker again', async () => (await speakers(bob))[0] === aliceId, 15000);
  console.log('PASS speaker.test.mjs');
} catch (e) {
  failed = true;
  console.error('FAIL speaker.test.mjs:', e.stack || e);
  console.error('--- browser console ---\n' + logs.join('\n'));
  console.error('--- server output ---\n' + server.output.join(''));
} finally {
  await loud.close();
  await quiet.close();
  await server.stop();
}
process.exit(failed ? 1 : 0);
