-- wrk script of the REST benchmark: GET PATH with `Authorization: Bearer <token>`, the
-- tokens of TOKENS_FILE (one per line) in turn, and one JSON line of results at the end.
--
--   wrk -t1 -c64 -d10s --latency -s wrk.lua http://127.0.0.1:PORT -- TOKENS_FILE PATH [DEPTH]
--
-- The requests are formatted once per thread in init(); request() only hands out the next.
--
-- DEPTH > 1 pipelines (HTTP/1.1): each write on a connection carries DEPTH requests, the
-- next DEPTH tokens in turn, and the connection writes again once all DEPTH answers are in.
-- wrk counts the requests in the first string request() returns (so every batch must hold
-- exactly DEPTH) and counts every answer in `requests` and every answer >= 400 in
-- `status_errors`; its latency is recorded once per batch (write to last answer).

local reqs = {}
local n, i = 0, 0

local function gcd(a, b)
  while b ~= 0 do
    a, b = b, a % b
  end
  return a
end

function init(args)
  local tokens, path, depth = args[1], args[2], tonumber(args[3] or "1")
  for token in io.lines(tokens) do
    if token ~= "" then
      n = n + 1
      reqs[n] = wrk.format("GET", path, { ["Authorization"] = "Bearer " .. token })
    end
  end
  if n == 0 then
    error("no tokens in " .. tokens)
  end
  if depth == nil or depth < 1 or depth ~= math.floor(depth) then
    error("DEPTH must be a positive integer, not " .. tostring(args[3]))
  end
  if depth > 1 then
    -- n / gcd(n, depth) batches use every token the same number of times.
    local single, batches = reqs, {}
    local count = math.floor(n / gcd(n, depth)) -- LuaJIT (Lua 5.1): no //
    for b = 0, count - 1 do
      local parts = {}
      for k = 0, depth - 1 do
        parts[k + 1] = single[(b * depth + k) % n + 1]
      end
      batches[b + 1] = table.concat(parts)
    end
    reqs, n = batches, count
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
