-- POST the file $MAAS_BODY with the headers in $MAAS_HEADERS ("Name: value" lines)
local f = assert(io.open(os.getenv("MAAS_BODY"), "rb"))
wrk.method = "POST"
wrk.body = f:read("*a")
f:close()
wrk.headers["Content-Type"] = "application/json"
for line in (os.getenv("MAAS_HEADERS") or ""):gmatch("[^\n]+") do
  local name, value = line:match("^([^:]+):%s*(.*)$")
  if name then wrk.headers[name] = value end
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format('{"requests": %d, "errors": %d, "seconds": %.6f, "p50_ms": %.4f, "p99_ms": %.4f}\n',
    summary.requests, e.connect + e.read + e.write + e.status + e.timeout,
    summary.duration / 1e6, latency:percentile(50) / 1000.0, latency:percentile(99) / 1000.0))
end
