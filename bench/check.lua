-- wrk script: POST /v1/optouts/check with bodies read from a file (one JSON body a line),
-- taken in turn, so that each request checks other numbers. Environment:
-- WAVY_BENCH_BODIES (the file), WAVY_BENCH_USER and WAVY_BENCH_TOKEN (read-API credentials).

function init(args)
  bodies = {}
  for line in io.lines(os.getenv("WAVY_BENCH_BODIES")) do
    table.insert(bodies, line)
  end
  turn = 0
  wrk.method = "POST"
  wrk.headers["Content-Type"] = "application/json"
  wrk.headers["UserName"] = os.getenv("WAVY_BENCH_USER")
  wrk.headers["AuthenticationToken"] = os.getenv("WAVY_BENCH_TOKEN")
end

function request()
  turn = turn % #bodies + 1
  return wrk.format(nil, nil, nil, bodies[turn])
end
