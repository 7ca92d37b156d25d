-- wrk script: POST DLRs with unique ids and remember which requests were acknowledged.
-- Run with as many threads as connections (-tN -cN): each thread then has one connection,
-- so its requests and responses strictly alternate and a response answers the request built
-- last. (wrk may call request() once without sending it, so counters can start at 2: the
-- answered range is recorded as first..last rather than assumed to start at 1.)
-- Environment: WAVY_BENCH_RUN (id prefix), WAVY_BENCH_BATCH (1 = single objects, else
-- array size), WAVY_BENCH_OUT (where done() writes one JSON line per thread).

local threads = {}
local next_tid = 1

function setup(thread)
  thread:set("tid", next_tid)
  next_tid = next_tid + 1
  table.insert(threads, thread)
end

function init(args)
  run_id = os.getenv("WAVY_BENCH_RUN")
  batch = tonumber(os.getenv("WAVY_BENCH_BATCH") or "1")
  sent = 0
  first = 0
  last = 0
  failed = ""
  wrk.method = "POST"
  wrk.headers["Content-Type"] = "application/json"
end

local template = '{"id":"%s","correlationId":"c-%s","carrierId":5,"carrierName":"TIM",'
  .. '"destination":"5519900001111","sentStatusCode":2,"sentStatus":"SENT_SUCCESS",'
  .. '"sentStatusAt":1420732929252,"sentStatusDate":"2015-01-08T16:02:09Z",'
  .. '"deliveredStatusCode":4,"deliveredStatus":"DELIVERED_SUCCESS",'
  .. '"deliveredAt":1420732954000,"deliveredDate":"2015-01-08T16:02:34Z","campaignId":1234}'

function request()
  sent = sent + 1
  local base = run_id .. "-" .. tid .. "-" .. sent
  local body
  if batch <= 1 then
    body = string.format(template, base, base)
  else
    local parts = {}
    for i = 1, batch do
      local id = base .. "-" .. i
      parts[i] = string.format(template, id, id)
    end
    body = "[" .. table.concat(parts, ",") .. "]"
  end
  return wrk.format(nil, nil, nil, body)
end

function response(status, headers, body)
  if first == 0 then
    first = sent
  end
  last = sent
  if status ~= 200 then
    failed = failed .. sent .. ","
  end
end

function done(summary, latency, requests)
  local out = io.open(os.getenv("WAVY_BENCH_OUT"), "w")
  for _, t in ipairs(threads) do
    out:write(string.format('{"tid":%d,"first":%d,"last":%d,"failed":"%s"}\n',
      t:get("tid"), t:get("first"), t:get("last"), t:get("failed")))
  end
  out:write(string.format(
    '{"summary":true,"requests":%d,"duration_us":%d,"p50_us":%d,"p99_us":%d,'
    .. '"connect_errors":%d,"read_errors":%d,"write_errors":%d,"timeouts":%d,"non_2xx":%d}\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99),
    summary.errors.connect, summary.errors.read, summary.errors.write, summary.errors.timeout,
    summary.errors.status))
  out:close()
end
