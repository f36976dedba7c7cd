-- wrk script for benchmarks/v2.py: one Iris inference per request over /v2 (JSON tensors).
-- BENCH_TOKEN (environment) is sent as "Authorization: Bearer ..." when set.
-- done() prints BENCH_JSON {...} like predict.lua.
wrk.method = "POST"
wrk.body = '{"inputs":[{"name":"x","shape":[1,4],"datatype":"FP32","data":[5.1,3.5,1.4,0.2]}]}'
wrk.headers["Content-Type"] = "application/json"
local token = os.getenv("BENCH_TOKEN")
if token ~= nil and token ~= "" then
  wrk.headers["Authorization"] = "Bearer " .. token
end

done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'BENCH_JSON {"requests":%d,"duration_us":%d,"err_status":%d,"err_other":%d,' ..
    '"p50":%d,"p99":%d}\n',
    summary.requests, summary.duration, e.status, e.connect + e.read + e.write + e.timeout,
    latency:percentile(50), latency:percentile(99)))
end
