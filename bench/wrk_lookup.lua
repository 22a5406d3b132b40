-- wrk script for bench/api_lookup.py: GET /v1/stores/<store>/customers/<id> with a
-- uniformly random id among the loaded customers (ids are zero-padded to 12 digits,
-- like redis-benchmark's __rand_int__, so both tools read the same keys).
--
--   CF_API_KEY=... CF_STORE=bench CF_CUSTOMERS=1000000 \
--     wrk -t2 -c64 -d20s -s bench/wrk_lookup.lua http://127.0.0.1:PORT
--
-- done() prints `name value unit` lines that bench/api_lookup.py parses.

local store = os.getenv("CF_STORE") or "bench"
local customers = tonumber(os.getenv("CF_CUSTOMERS") or "1000000")
local auth = "Bearer " .. (os.getenv("CF_API_KEY") or "")
local threads = 0

function setup(thread)
  threads = threads + 1
  thread:set("thread_number", threads)
end

function init(args)
  math.randomseed(1000003 * (thread_number or 0) + os.time())
end

function request()
  local id = string.format("%012d", math.random(0, customers - 1))
  return wrk.format("GET", "/v1/stores/" .. store .. "/customers/" .. id,
                    { ["Authorization"] = auth })
end

function done(summary, latency, requests)
  local seconds = summary.duration / 1e6
  io.write(string.format("wrk_requests %d requests\n", summary.requests))
  io.write(string.format("wrk_seconds %.3f s\n", seconds))
  io.write(string.format("wrk_rps %.1f requests/s\n", summary.requests / seconds))
  io.write(string.format("wrk_non2xx %d responses\n", summary.errors.status))
  io.write(string.format("wrk_socket_errors %d errors\n",
    summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout))
  for _, p in ipairs({ 50, 90, 99, 99.9 }) do
    io.write(string.format("wrk_p%s_ms %.3f ms\n", (tostring(p):gsub("%.", "_")),
      latency:percentile(p) / 1000.0))
  end
  io.write(string.format("wrk_mean_ms %.3f ms\n", latency.mean / 1000.0))
  io.write(string.format("wrk_max_ms %.3f ms\n", latency.max / 1000.0))
end
