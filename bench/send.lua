-- wrk script: POST /v1/send-sms, each request to another destination, with the credentials of
-- a sender as Wavy's clients write them. Environment: WAVY_BENCH_USER, WAVY_BENCH_TOKEN, and
-- WAVY_BENCH_PAUSE_MS: each connection pauses a random 0 to twice that between requests (a
-- fixed pause would bring the connections back in step, in waves no sender makes).

local pause = tonumber(os.getenv("WAVY_BENCH_PAUSE_MS") or "0")

function init(args)
  turn = 0
  wrk.method = "POST"
  wrk.headers["Content-Type"] = "application/json"
  wrk.headers["username"] = os.getenv("WAVY_BENCH_USER")
  wrk.headers["authenticationtoken"] = os.getenv("WAVY_BENCH_TOKEN")
end

function request()
  turn = turn + 1
  local body = string.format(
    '{"destination": "5521%09d", "messageText": "Seu pedido saiu para entrega", "correlationId": "b-%d"}',
    turn % 1000000000, turn)
  return wrk.format(nil, nil, nil, body)
end

function delay()
  if pause == 0 then return 0 end
  return math.random(0, 2 * pause)
end
