-- wrk script for scripts/bench.sh: POSTs the file named by $BENCH_BODY as JSON, with
-- `Authorization: Bearer $BENCH_KEY`, and ends with one machine-readable line:
-- BENCH requests=… non2xx=… socket_errors=… seconds=… p50_us=… p90_us=… p99_us=…
local file = assert(io.open(os.getenv("BENCH_BODY"), "rb"))
wrk.method = "POST"
wrk.body = file:read("*a")
file:close()
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer " .. (os.getenv("BENCH_KEY") or "")

function done(summary, latency, requests)
   local e = summary.errors
   io.write(string.format(
      "BENCH requests=%d non2xx=%d socket_errors=%d seconds=%.3f p50_us=%d p90_us=%d p99_us=%d\n",
      summary.requests, e.status, e.connect + e.read + e.write + e.timeout,
      summary.duration / 1e6, latency:percentile(50), latency:percentile(90),
      latency:percentile(99)))
end
