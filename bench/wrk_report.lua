-- bench/run.py's wrk script for measured runs: prints one machine-readable
-- summary line after the run, so the harness does not parse wrk's text.
-- It defines no request/response hook, so wrk runs at full speed.
--
-- BENCH <duration_us> <requests> <connect> <read> <write> <status> <timeout>
--       <p50_us> <p99_us> <max_us> <mean_us>

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format("BENCH %d %d %d %d %d %d %d %d %d %d %d\n",
    summary.duration, summary.requests,
    e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(99), latency.max, math.floor(latency.mean)))
  io.stdout:flush()
end
