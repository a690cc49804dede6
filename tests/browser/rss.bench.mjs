// Benchmark (not a test): server RSS and CPU with three browser participants in one meeting.
//   tests/browser/run.sh rss.bench.mjs target/release/hearth
import { readFileSync } from 'node:fs';
import { counter, launchBrowser, openParticipant, startServer, until } from './lib.mjs';

const binary = process.argv[2] || 'target/release/hearth';
const logs = [];
const server = await startServer(binary, ['--dev', '--media-port', '7882']);
const chromium = await launchBrowser();

const status = (pid) => readFileSync(`/proc/${pid}/status`, 'utf8');
const rssMiB = (pid) => Number(/VmRSS:\s+(\d+)/.exec(status(pid))[1]) / 1024;
const hwmMiB = (pid) => Number(/VmHWM:\s+(\d+)/.exec(status(pid))[1]) / 1024;
const cpuSeconds = (pid) => {
  const fields = readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1].split(' ');
  return (Number(fields[11]) + Number(fields[12])) / 100; // utime + stime, in clock ticks
};

try {
  const pid = server.proc.pid;
  const idle = rssMiB(pid);
  const people = [];
  for (const name of ['alice', 'bob', 'carol']) {
    people.push(await openParticipant(chromium.browser, server.base, 'bench', name, logs));
  }
  const ids = [];
  for (const p of people) ids.push(await until('joined', async () => (await p.stats()).participantId));
  for (const [i, p] of people.entries()) {
    for (const id of ids.filter((_, j) => j !== i)) {
      await until('video flowing', async () => counter(await p.stats(), id, 'video', 'framesDecoded') > 60, 30000);
    }
  }
  const metrics0 = await (await fetch(`${server.base}/metrics`)).text();
  const cpu0 = cpuSeconds(pid);
  const t0 = Date.now();
  await new Promise((r) => setTimeout(r, 20000)); // a fixed measurement window, not a wait for a condition
  const cpu1 = cpuSeconds(pid);
  const metrics1 = await (await fetch(`${server.base}/metrics`)).text();
  const secs = (Date.now() - t0) / 1000;
  const metric = (text, name) => Number((new RegExp(`^${name} (\\S+)$`, 'm').exec(text) || [0, 0])[1]);
  const pktsOut = (metric(metrics1, 'hearth_media_packets_out_total') - metric(metrics0, 'hearth_media_packets_out_total')) / secs;
  const pktsIn = (metric(metrics1, 'hearth_media_packets_in_total') - metric(metrics0, 'hearth_media_packets_in_total')) / secs;
  console.log(`idle RSS before joins: ${idle.toFixed(1)} MiB`);
  console.log(`RSS with 3 browser participants (after 20 s of media): ${rssMiB(pid).toFixed(1)} MiB (peak ${hwmMiB(pid).toFixed(1)} MiB)`);
  console.log(`server CPU: ${((cpu1 - cpu0) / secs * 100).toFixed(1)}% of one core; ${pktsIn.toFixed(0)} packets/s in, ${pktsOut.toFixed(0)} packets/s out`);
} catch (e) {
  console.error('bench failed:', e.stack || e);
  console.error(logs.join('\n'));
  process.exitCode = 1;
} finally {
  await chromium.close();
  await server.stop();
}
