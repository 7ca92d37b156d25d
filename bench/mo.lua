-- wrk script: POST MOs with unique ids, as a campaign's replies arrive. One reply in 20 is an
-- opt-out keyword ("Sair"), one in 50 an opt-in ("voltar"), the rest other short texts, each
-- from its own phone number. Environment: WAVY_BENCH_RUN (id prefix).

local next_tid = 1

function setup(thread)
  thread:set("tid", next_tid)
  next_tid = next_tid + 1
end

function init(args)
  run_id = os.getenv("WAVY_BENCH_RUN")
  sent = 0
  wrk.method = "POST"
  wrk.headers["Content-Type"] = "application/json"
end

local template = '{"id":"%s-%d-%d","subAccount":"acme","campaignAlias":"promo","carrierId":1,'
  .. '"carrierName":"VIVO","source":"55119%08d","shortCode":"28128","messageText":"%s",'
  .. '"receivedAt":1764000000000}'

function request()
  sent = sent + 1
  local text = "Quero saber mais"
  if sent % 20 == 0 then
    text = "Sair"
  elseif sent % 50 == 0 then
    text = "voltar"
  elseif sent % 3 == 0 then
    text = "ok"
  end
  local phone = (tid * 7919 + sent * 104729) % 100000000
  return wrk.format(nil, nil, nil, string.format(template, run_id, tid, sent, phone, text))
end
