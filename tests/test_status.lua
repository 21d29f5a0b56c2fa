-- status: downloads in progress or stopped part-way; rm drops a stopped download's partial data.
local t = require "t"
local servers = require "servers"
local core = require "modelget.core"
local cjson = require "cjson"

local function status(store, json)
  local args = { "status", "--store", store }
  if json then args[#args + 1] = "--json" end
  return t.status(t.modelget(args), 0, "status")
end

test("status shows a running pull, then the stopped one; rm drops its partial data", function()
  local fx = servers.fixture()
  local data = t.bytes(2 * 1024 * 1024, 61)
  local url = fx.put("partly.bin", data)
  local store = t.tmpdir("store-status")
  t.match(status(store).stdout, "no downloads in progress", "nothing at first")

  -- A slow pull in the background.
  local pid = t.spawn({ "pull", url, "--store", store, "--cacert", servers.ca().cert, "--framework", "other", "-q",
                        "--limit-rate", "300K" }).pid
  local partial = store .. "/partial/other--partly/partly.bin.part"
  for _ = 1, 100 do
    local st = core.stat(partial)
    if st and st.size > 400000 and t.exists(partial .. ".state") then break end
    core.sleep(0.1)
  end
  local running = cjson.decode(status(store, true).stdout)
  t.eq(running.id, "partly", "id")
  t.eq(running.active, true, "downloading")
  t.eq(running.total, #data, "total from the resume state")
  t.ok(running.completed > 0 and running.completed < #data, "part of it")
  local table_now = status(store).stdout
  t.match(table_now, "partly%s+other%s+downloading", "the table says downloading")
  t.nomatch(table_now, "resumes", "no advice on resuming a download that is running")

  os.execute("kill -KILL " .. pid)
  local stopped = t.wait(function()
    local out = status(store).stdout
    return out:find("stopped", 1, true) and out
  end, 10) or status(store).stdout
  t.match(stopped, "partly%s+other%s+stopped%s+[%d.]+ [KM]B of 2%.1 MB %(%d+%%%)", "the table says stopped, how far")
  t.match(stopped, "the same pull again %(the ID, or the URL it was pulled from%) resumes it",
    "how to resume a download started from a URL")

  -- rm drops the partial data of a stopped download.
  local r = t.status(t.modelget({ "rm", "partly", "--store", store }), 0, "rm of a partial")
  t.match(r.stdout, "removed partly", "says so")
  t.ok(not t.exists(partial), "partial data gone")
  t.match(status(store).stdout, "no downloads in progress", "nothing left")
end)
