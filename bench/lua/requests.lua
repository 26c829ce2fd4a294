-- wrk script: cycle through prepared requests, report figures as one JSON line.
--
--   wrk -t1 -c32 -d10s -s requests.lua http://127.0.0.1:8000 -- <lines file> <METHOD> [token]
--
-- Each line of the file is a path, or a path, a TAB and a body. Requests are formatted once
-- in init(), so request() costs a table lookup: the generator stays cheap. A body holding
-- @SEQ@ (a create that must never repeat, e.g. a referral id) is formatted per request with a
-- value unique to this run instead.

local reqs = {}
local templates = {}
local n = 0
local i = 0
local seq = 0
local run_id = ""

function init(args)
  local file = assert(io.open(args[1], "r"))
  local method = args[2] or "GET"
  local headers = { ["Accept"] = "application/fhir+json" }
  if args[3] and args[3] ~= "" then
    headers["Authorization"] = "Bearer " .. args[3]
  end
  if method == "POST" or method == "PUT" then
    headers["Content-Type"] = "application/fhir+json"
  end
  for line in file:lines() do
    local path, body = line:match("^([^\t]*)\t(.*)$")
    if not path then
      path, body = line, nil
    end
    n = n + 1
    if body and body:find("@SEQ@", 1, true) then
      templates[n] = { method, path, headers, body }
    else
      reqs[n] = wrk.format(method, path, headers, body)
    end
  end
  file:close()
  assert(n > 0, "no requests in " .. args[1])
  math.randomseed(os.time() + (tonumber(tostring({}):match("0x(%x+)"), 16) or 0))
  i = math.random(n) - 1
  run_id = string.format("%x%x", os.time(), math.random(0, 0xFFFFFF))
end

function request()
  i = i % n + 1
  local t = templates[i]
  if t then
    seq = seq + 1
    local body = t[4]:gsub("@SEQ@", run_id .. "-" .. seq)
    return wrk.format(t[1], t[2], t[3], body)
  end
  return reqs[i]
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'BENCH_JSON {"requests":%d,"duration_us":%d,"bytes":%d,"connect":%d,"read":%d,' ..
    '"write":%d,"status":%d,"timeout":%d,"p50_us":%.1f,"p90_us":%.1f,"p99_us":%.1f,' ..
    '"p999_us":%.1f,"max_us":%.1f,"mean_us":%.1f}\n',
    summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write, e.status,
    e.timeout, latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency:percentile(99.9), latency.max, latency.mean))
end
