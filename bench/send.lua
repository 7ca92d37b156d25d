-- wrk script: POST /v1/send-sms, each request to another destination, with the credentials of
-- a sender as Wavy's clients write them. Environment: WAVY_BENCH_USER, WAVY_BENCH_TOKEN.

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
