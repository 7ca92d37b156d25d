-- wrk script: POST DLRs with unique ids and remember exactly which requests were acknowledged.
-- Run with as many threads as connections (-tN -cN): each thread then has one connection,
-- so its requests and responses strictly alternate and a response answers the request built
-- last. A request lost to a broken connection (a killed worker, a restart) never gets a
-- response, so it is never counted as acknowledged. Acknowledged request numbers are kept as
-- ranges ("3-900,905-2000"): one range per thread in a calm run, a few when faults strike.
-- Environment: WAVY_BENCH_RUN (id prefix), WAVY_BENCH_BATCH (1 = single objects, else
-- array size), WAVY_BENCH_OUT (where done() writes one JSON line per thread), WAVY_BENCH_KEY
-- (a webhook key to send, if any), WAVY_BENCH_SCATTER ("1": each id starts with a hash of its
-- thread and number, so new ids land all over the indexes as Wavy's UUIDs do, instead of next
-- to the thread's previous one, and each DLR goes to its own phone number instead of all to
-- one; bench/ingest.py's count_missing computes the same hash). Each thread also counts the
-- answers that were a server error other than 503 (never expected: an outage is a 503).

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
  server_errors = 0
  acked = {}
  range_start = 0
  range_end = 0
  wrk.method = "POST"
  wrk.headers["Content-Type"] = "application/json"
  scatter = os.getenv("WAVY_BENCH_SCATTER") == "1"
  -- "N": ids shaped as UUIDs, as Wavy's are, from run number N (the lean reference route
  -- validates a UUID); acknowledgements are then not tracked (any thread count). With many
  -- connections per thread, answers that a server gives in batches come back out of request
  -- order, so tracking them would close a range per answer: work in wrk, on the cores the
  -- server shares, that answers in request order (the lean route's) never cost.
  uuid_run = tonumber(os.getenv("WAVY_BENCH_UUID_RUN") or "")
  local key = os.getenv("WAVY_BENCH_KEY") or ""
  if key ~= "" then
    wrk.headers["X-Webhook-Key"] = key
  end
end

local template = '{"id":"%s","correlationId":"c-%s","carrierId":5,"carrierName":"TIM",'
  .. '"destination":"%s","sentStatusCode":2,"sentStatus":"SENT_SUCCESS",'
  .. '"sentStatusAt":1420732929252,"sentStatusDate":"2015-01-08T16:02:09Z",'
  .. '"deliveredStatusCode":4,"deliveredStatus":"DELIVERED_SUCCESS",'
  .. '"deliveredAt":1420732954000,"deliveredDate":"2015-01-08T16:02:34Z","campaignId":1234}'

local ONE_PHONE = "5519900001111"

-- Knuth's multiplicative hash of an item's number, each thread's shifted by a 64th of the
-- range, as 10 decimal digits. Exact in doubles: the sum stays below 2^53 for runs of under 3
-- million items per thread.
local function scattered(n)
  return string.format("%010.0f", (n * 2654435761 + tid * 67108864) % 4294967296)
end

local function dlr(id, hash)
  if hash then
    return string.format(template, hash .. "-" .. id, hash .. "-" .. id, "55" .. hash)
  end
  return string.format(template, id, id, ONE_PHONE)
end

function request()
  sent = sent + 1
  local base = run_id .. "-" .. tid .. "-" .. sent
  local body
  if uuid_run then
    return wrk.format(nil, nil, nil, dlr(string.format("%08x-%04x-4000-8000-%012x", uuid_run, tid, sent)))
  end
  if batch <= 1 then
    body = dlr(base, scatter and scattered(sent))
  else
    local parts = {}
    for i = 1, batch do
      parts[i] = dlr(base .. "-" .. i, scatter and scattered((sent - 1) * batch + i))
    end
    body = "[" .. table.concat(parts, ",") .. "]"
  end
  return wrk.format(nil, nil, nil, body)
end

function response(status, headers, body)
  if status >= 500 and status ~= 503 then
    server_errors = server_errors + 1
  end
  if status ~= 200 or uuid_run then
    return
  end
  if range_end > 0 and sent == range_end + 1 then
    range_end = sent
  else
    if range_end > 0 then
      acked[#acked + 1] = range_start .. "-" .. range_end  -- joined once, in done()
    end
    range_start = sent
    range_end = sent
  end
end

function done(summary, latency, requests)
  local out = io.open(os.getenv("WAVY_BENCH_OUT"), "w")
  for _, t in ipairs(threads) do
    local ranges = t:get("acked")
    if t:get("range_end") > 0 then
      ranges[#ranges + 1] = t:get("range_start") .. "-" .. t:get("range_end")
    end
    ranges = table.concat(ranges, ",")
    out:write(string.format('{"tid":%d,"acked":"%s","server_errors":%d}\n', t:get("tid"),
      ranges, t:get("server_errors")))
  end
  out:write(string.format(
    '{"summary":true,"requests":%d,"duration_us":%d,"p50_us":%d,"p99_us":%d,"p999_us":%d,'
    .. '"connect_errors":%d,"read_errors":%d,"write_errors":%d,"timeouts":%d,"non_2xx":%d}\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99),
    latency:percentile(99.9),
    summary.errors.connect, summary.errors.read, summary.errors.write, summary.errors.timeout,
    summary.errors.status))
  out:close()
end
