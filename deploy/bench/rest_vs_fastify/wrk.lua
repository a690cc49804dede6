-- wrk script of the REST benchmark: GET PATH with `Authorization: Bearer <token>`, the
-- tokens of TOKENS_FILE (one per line) in turn, and one JSON line of results at the end.
--
--   wrk -t1 -c64 -d10s --latency -s wrk.lua http://127.0.0.1:PORT -- TOKENS_FILE PATH
--
-- The requests are formatted once per thread in init(); request() only hands out the next.

local reqs = {}
local n, i = 0, 0

function init(args)
  local tokens, path = args[1], args[2]
  for token in io.lines(tokens) do
    if token ~= "" then
      n = n + 1
      reqs[n] = wrk.format("GET", path, { ["Authorization"] = "Bearer " .. token })
    end
  end
  if n == 0 then
    error("no tokens in " .. tokens)
  end
end

function request()
  i = i % n + 1
  return reqs[i]
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '\n{"requests":%d,"duration_us":%d,"bytes":%d,"connect_errors":%d,"read_errors":%d,'
      .. '"write_errors":%d,"status_errors":%d,"timeouts":%d,"mean_us":%.1f,"p50_us":%d,'
      .. '"p90_us":%d,"p99_us":%d,"p999_us":%d,"max_us":%d}\n',
    summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write, e.status,
    e.timeout, latency.mean, latency:percentile(50), latency:percentile(90),
    latency:percentile(99), latency:percentile(99.9), latency.max))
end
