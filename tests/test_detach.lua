-- pull --detach: the command returns at once, the download goes on in a background process of its
-- own session, and its output lands in a log inside the store.
local t = require "t"
local servers = require "servers"
local core = require "modelget.core"

local function wait_for(path, seconds)
  for _ = 1, seconds * 10 do
    if core.stat(path) then return true end
    core.sleep(0.1)
  end
end

test("pull --detach returns at once and the model is installed in the background", function()
  local fx = servers.fixture()
  local data = t.bytes(1500000, 51)
  local url = fx.put("detached.bin", data)
  local store = t.tmpdir("store-detach")
  local r = t.status(t.modelget({ "pull", url, "--framework", "other", "--detach", "--limit-rate", "500K",
    "--store", store, "--cacert", servers.ca().cert }), 0, "pull --detach")
  local pid, log = r.stdout:match("pid (%d+)%); its output goes to (%S+)")
  t.ok(pid, "says the background pid and the log: " .. r.stdout)
  t.eq(log:sub(1, #store + 6), store .. "/logs/", "the log is in the store")
  local installed = store .. "/models/other/detached/detached.bin"
  t.ok(not t.exists(installed), "not installed yet when the command returned (500K/s for 1.5 MB)")
  -- Its own session: the terminal's hang-up does not reach it.
  local sid = t.sh("ps -o sid= -p " .. pid).stdout:match("%d+")
  t.eq(sid, pid, "the background pull leads its own session")
  t.defer_case(function() os.execute("kill -9 " .. pid .. " 2>/dev/null") end)
  t.ok(wait_for(installed, 30), "installed in the background")
  t.ok(t.wait(function() return t.sh("kill -0 " .. pid).status ~= 0 end, 10), "the background pull ended")
  t.eq(t.sha256_file(installed), t.sha256(data), "bytes")
  local text = t.read(log)
  t.match(text, "modelget pull " .. url:gsub("%p", "%%%0"), "the log says what it pulls")
  t.match(text, "%(pid " .. pid .. ",", "the log's pid is the one printed")
  t.match(text, "%d+%%", "the log has the progress lines")
  t.match(text, "installed detached %(1%.5 MB%) in " .. (store .. "/models/other/detached"):gsub("%p", "%%%0"),
    "the log reports the outcome")
end)

test("pull --detach of an unknown id fails in the foreground with exit 2", function()
  local store = t.tmpdir("store-detach-unknown")
  local r = t.status(t.modelget({ "pull", "no-such-model", "--detach", "--store", store }), 2, "pull --detach")
  t.match(r.stderr, "unknown model id 'no%-such%-model'", "says why")
  t.ok(not t.exists(store .. "/logs"), "no background process, no log")
end)

test("pull --detach says in the foreground what a pull would refuse before any download", function()
  local fx = servers.fixture()
  local url = fx.put("nofw.bin", t.bytes(1000, 52))
  local store = t.tmpdir("store-detach-refused")
  local base = { "--detach", "--store", store, "--cacert", servers.ca().cert }
  local function pull(args)
    local argv = { "pull" }
    for _, a in ipairs(args) do argv[#argv + 1] = a end
    for _, a in ipairs(base) do argv[#argv + 1] = a end
    return t.modelget(argv)
  end
  local r = t.status(pull { url }, 2, "a URL whose framework cannot be told")
  t.match(r.stderr, "cannot tell the framework of 'nofw%.bin'", "says why")
  r = t.status(pull { url, "--framework", "other", "--id", "a b" }, 2, "a bad id")
  t.match(r.stderr, "not a valid model id", "says why")
  r = t.status(pull { url, "--framework", "other", "--alt", "http://10.0.0.1/x.bin" }, 2, "an --alt the policy refuses")
  t.match(r.stderr, "refused http://10%.0%.0%.1/x%.bin", "says why")
  -- A model another process is pulling.
  local core = require "modelget.core"
  core.mkdirs(store .. "/partial")
  local held = assert(core.lock(store .. "/partial/.locks", "nofw"))
  r = t.status(pull { url, "--framework", "other" }, 1, "a model being pulled elsewhere")
  held:close()
  t.match(r.stderr, "model 'nofw' is in use by another process %(a pull, rm or import of it%); wait for that to end\n$",
    "says why, and what to do")
  t.ok(not t.exists(store .. "/logs"), "no background process, no log")
  t.eq(#fx.requests("/f/nofw.bin"), 0, "nothing asked of the server")
end)
