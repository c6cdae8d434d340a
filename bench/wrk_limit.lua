-- bench/run.py's wrk script for a request-count limit (wrk has no -n).
--
--   wrk ... -s bench/wrk_limit.lua URL -- <responses per thread>
--
-- Each wrk thread counts the responses it reads; at the limit it stops its
-- event loop and prints "LIMIT-REACHED".  wrk's main thread only sleeps for
-- -d, so the harness sends wrk SIGINT once every thread has printed that line;
-- wrk then prints its summary, including the exact number of requests that
-- completed, and the BENCH line below (same format as wrk_report.lua).

local limit = 0
local count = 0
local stopped = false

function init(args)
  limit = tonumber(args[1]) or 0
end

function response(status, headers, body)
  count = count + 1
  if limit > 0 and count >= limit and not stopped then
    stopped = true
    wrk.thread:stop()
    io.write("LIMIT-REACHED\n")
    io.stdout:flush()
  end
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format("BENCH %d %d %d %d %d %d %d %d %d %d %d\n",
    summary.duration, summary.requests,
    e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(99), latency.max, math.floor(latency.mean)))
  io.stdout:flush()
end
