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
  t.match(stopped, "the same pull again resumes it %(the same ID or URL, and options%)", "how to resume it")
  -- Its id is not a catalog id: a pull of it says which command resumes it.
  local r = t.status(t.modelget({ "pull", "partly", "--store", store }), 2, "pull of the id")
  t.match(r.stderr, "'partly' is not a catalog id: its partial download came from a URL; modelget pull "
    .. url:gsub("%p", "%%%0") .. " %-%-framework other resumes it", "names the command that resumes it")

  -- rm drops the partial data of a stopped download.
  r = t.status(t.modelget({ "rm", "partly", "--store", store }), 0, "rm of a partial")
  t.match(r.stdout, "removed partly", "says so")
  t.ok(not t.exists(partial), "partial data gone")
  t.match(status(store).stdout, "no downloads in progress", "nothing left")
end)

test("status says of a stopped download what a pull resumes from: what its state vouches for", function()
  local store = t.tmpdir("store-vouched")
  local dir = store .. "/partial/other--killed"
  -- Killed between two checkpoints: 900 KB on disk, the state saved at 300 KB.
  t.write(dir .. "/killed.bin.part", ("x"):rep(900000))
  t.write(dir .. "/killed.bin.part.state", "modelget-partial 1\nurl https://127.0.0.1:9/killed.bin\netag \"v1\"\n"
    .. "total 2000000\nrange 0 2000000 300000\n")
  -- Killed before its first checkpoint: nothing to resume from.
  t.write(store .. "/partial/other--early/early.bin.part", ("x"):rep(100000))
  local r = status(store)
  t.match(r.stdout, "killed +other +stopped +300 KB of 2%.0 MB %(15%%%)", "the vouched bytes")
  t.match(r.stdout, "early +other +stopped +0 B", "none for the early one")
  local by = {}
  for _, ev in ipairs(t.events(status(store, true).stdout)) do by[ev.id] = ev end
  t.eq(by.killed.kept, 300000, "kept in JSON")
  t.eq(by.killed.completed, 900000, "completed: what is on disk")
end)

test("rm ID drops the id's partial data under every framework it was begun as", function()
  local store = t.tmpdir("store-rm-both")
  t.write(store .. "/partial/other--both/both.bin.part", ("x"):rep(1000))
  t.write(store .. "/partial/onnx--both/both.onnx.part", ("x"):rep(1000))
  local r = t.status(t.modelget { "rm", "both", "--store", store }, 0, "rm")
  t.match(r.stdout, "removed both", "says so")
  t.ok(not t.exists(store .. "/partial/other--both"), "the other framework's partial folder is gone")
  t.ok(not t.exists(store .. "/partial/onnx--both"), "the onnx one is gone")
  t.match(status(store).stdout, "no downloads in progress", "nothing left to resume")
end)

test("two status at once: neither takes the other's look at a stopped download for a pull", function()
  local store = t.tmpdir("store-two-status")
  t.write(store .. "/partial/other--idle/idle.bin.part", ("x"):rep(1000))
  t.write(store .. "/partial/.locks", "") -- the pull that began it made the file of locks
  -- One status stays (tests/fixtures/diskfault.c) just after it took its look at idle's lock.
  local dir = t.tmpdir("pause")
  local bg = t.spawn({ "status", "--store", store, "--json" }, { stdout = dir .. "/out",
    env = t.fault_env { PAUSE_AFTER_LOCK = "/partial/.locks", PAUSE_DIR = dir } })
  t.ok(t.wait(function() return t.exists(dir .. "/paused") end, 20), "the first status is looking")
  local now = cjson.decode(status(store, true).stdout)
  t.eq(now.active, false, "the other status: not downloading")
  t.match(status(store).stdout, "idle%s+other%s+stopped", "the table says stopped")
  t.write(dir .. "/go", "")
  t.eq(t.wait(bg.status, 20), 0, "the first status ends")
  t.eq(cjson.decode(t.read(dir .. "/out")).active, false, "and says stopped too")
end)

test("the command that resumes a URL's stopped pull gives back its --id, --name and --framework", function()
  local store = t.tmpdir("store-hint")
  local url = "https://127.0.0.1:9/files/big1.bin"
  local dir = store .. "/partial/other--my.id"
  t.write(dir .. "/weights.gguf.part", ("x"):rep(1000))
  t.write(dir .. "/weights.gguf.part.state", "modelget-partial 1\nurl " .. url .. "\ntotal 5000\n")
  local r = t.status(t.modelget({ "pull", "my.id", "--store", store }), 2, "pull of the id")
  t.match(r.stderr, "; modelget pull " .. url:gsub("%p", "%%%0") .. " %-%-framework other %-%-name weights%.gguf %-%-id my%.id resumes it",
    "every option that made it")
  -- A URL the shell would cut is quoted; one with credentials is said without them, and so.
  local signed = "https://me:s3cret@127.0.0.1:9/f/m.gguf?a=1&b=2"
  dir = store .. "/partial/llamacpp--m"
  t.write(dir .. "/m.gguf.part", ("x"):rep(1000))
  t.write(dir .. "/m.gguf.part.state", "modelget-partial 1\nurl " .. signed .. "\ntotal 5000\n")
  r = t.status(t.modelget({ "pull", "m", "--store", store }), 2, "pull of the other id")
  t.match(r.stderr, "; modelget pull 'https://me:%*%*%*@127%.0%.0%.1:9/f/m%.gguf%?a=1&b=2' resumes it "
    .. "%(with the URL's credentials, not shown here%)", "quoted, and without the password")
  t.nomatch(r.stderr, "s3cret", "no password")
end)

test("stop ID stops a pull running elsewhere: exit 130 there, partial data kept; status names its pid", function()
  local fx = servers.fixture()
  local data = t.bytes(2 * 1024 * 1024, 62)
  local url = fx.put("stopme.bin", data)
  local store = t.tmpdir("store-stop")
  local bg = t.spawn { "pull", url, "--store", store, "--cacert", servers.ca().cert, "--framework", "other", "-q",
                       "--limit-rate", "200K" }
  local partial = store .. "/partial/other--stopme/stopme.bin.part"
  t.ok(t.wait(function() local st = core.stat(partial); return st and st.size > 100000 end, 20), "under way")
  local running = cjson.decode(status(store, true).stdout)
  t.eq(math.tointeger(running.pid), math.tointeger(tonumber(bg.pid)), "status --json names the pid pulling it")
  t.match(status(store).stdout, "stopme%s+other%s+downloading %(pid " .. bg.pid .. "%)", "and the table")

  local r = t.status(t.modelget { "stop", "nothing-like-it", "--store", store }, 2, "stop an id nobody pulls")
  t.match(r.stderr, "no pull of 'nothing%-like%-it' is running", "says so")
  t.eq(bg.status(), nil, "and stopped nothing")

  r = t.status(t.modelget { "stop", "stopme", "--store", store }, 0, "stop stopme")
  t.match(r.stdout, "stopped stopme %(pid " .. bg.pid .. "%): its partial data is kept", "says so")
  t.eq(t.wait(bg.status, 10), 130, "the pull ended as after Ctrl-C")
  local kept = core.stat(partial)
  t.ok(kept and kept.size > 0, "its partial data kept")
  t.match(status(store).stdout, "stopme%s+other%s+stopped", "status: stopped")
  t.match(t.status(t.modelget { "stop", "--store", store }, 0, "stop with nothing running").stdout,
    "no pulls running", "nothing left to stop")
  fx.clear_log()
  t.status(t.modelget { "pull", url, "--store", store, "--cacert", servers.ca().cert, "--framework", "other", "-q" }, 0,
    "the same pull resumes")
  t.eq(t.sha256_file(store .. "/models/other/stopme/stopme.bin"), t.sha256(data), "bytes")
  local asked = fx.requests("/f/stopme.bin")
  t.match(asked[1].headers.range or "", "^bytes=[1-9]%d*%-$", "resumed where it stopped, with Range")
  t.ok(asked[1].headers["if-range"], "and If-Range")

  -- A pull killed outright leaves its registration behind: never taken for a live process.
  bg = t.spawn { "pull", url, "--store", store, "--cacert", servers.ca().cert, "--framework", "other", "-q",
                 "--limit-rate", "200K", "--force" }
  local function registrations()
    local n = 0
    for _, name in ipairs(core.listdir(store .. "/partial") or {}) do
      if name:match("^%.pull%-") then n = n + 1 end
    end
    return n
  end
  t.ok(t.wait(function() return registrations() > 0 end, 10), "registered")
  os.execute("kill -9 " .. bg.pid)
  t.ok(t.wait(function() return bg.status() ~= nil end, 10), "killed")
  r = t.status(t.modelget { "stop", "stopme", "--store", store }, 2, "stop after the pull died")
  t.match(r.stderr, "no pull of 'stopme' is running", "the dead process is not signalled")
  t.eq(registrations(), 0, "its registration removed")

  -- A registration left by a dead pull whose pid now belongs to another program: never signalled,
  -- also while another stop or status holds a probe of it.
  local pidfile = t.tmpdir("sleeper") .. "/pid"
  os.execute("sleep 30 & echo $! > " .. pidfile)
  local other = math.tointeger(tonumber(t.read(pidfile)))
  t.write(store .. "/partial/.pull-" .. other, "")
  t.write(store .. "/partial/.pull-" .. other .. ".json", cjson.encode { pid = other, ids = { "ghost" } })
  t.write(store .. "/partial/.pull-" .. other .. ".tmp", "{\"pid\":") -- killed while registering again
  local probe = assert(core.lock(store .. "/partial/.pull-" .. other, nil, "shared"))
  r = t.status(t.modelget { "stop", "ghost", "--store", store }, 2, "stop of a dead pull's id")
  probe:close()
  t.match(r.stderr, "no pull of 'ghost' is running", "says so")
  t.eq(os.execute("kill -0 " .. other .. " 2>/dev/null"), true, "the other program lives on")
  t.eq(registrations(), 0, "the dead registration removed, its half-written successor too")
  os.execute("kill " .. other)
end)

test("Ctrl-C in a stop waiting for a pull to end: exit 130 at once, the stop sent; the pull then ends", function()
  local fx = servers.fixture()
  local url = fx.put("held-stop.bin", t.bytes(2 * 1024 * 1024, 63))
  local store
  -- A pull held (SIGSTOP) part-way: a stop's SIGTERM waits for it, pending, and so does the stop.
  -- Each in a store of its own: bytes in the partial file are this pull's, not a stopped one's.
  local function held_pull()
    store = t.tmpdir("store-held-stop")
    local bg = t.spawn { "pull", url, "--store", store, "--cacert", servers.ca().cert, "--framework", "other", "-q",
                         "--limit-rate", "200K" }
    local partial = store .. "/partial/other--held-stop/held-stop.bin.part"
    t.ok(t.wait(function() local st = core.stat(partial); return st and st.size > 0 end, 20), "under way")
    os.execute("kill -STOP " .. bg.pid)
    t.defer_case(function() os.execute("kill -CONT " .. bg.pid .. " 2>/dev/null") end)
    return bg
  end
  -- Ctrl-C to a stopper once its SIGTERM is pending at the pull; the pull then ends as stopped.
  local function interrupt_stopper(bg, stopper)
    t.ok(t.wait(function()
      local s = t.read("/proc/" .. bg.pid .. "/status") or ""
      return (tonumber(s:match("ShdPnd:%s*(%x+)") or "0", 16) or 0) & (1 << 14) ~= 0
    end, 20), "the stop sent its SIGTERM")
    os.execute("kill -INT " .. stopper.pid)
    t.eq(t.wait(stopper.status, 30), 130, "the stop, interrupted")
    os.execute("kill -CONT " .. bg.pid)
    t.eq(t.wait(bg.status, 10), 130, "the pull ends as after Ctrl-C")
  end
  local bg = held_pull()
  local stop = t.spawn { "stop", "held-stop", "--store", store }
  interrupt_stopper(bg, stop)
  t.eq(t.read(stop.stderr), "modelget: pid " .. bg.pid .. " (held-stop) was asked to stop and has not ended yet "
    .. "(the wait for it interrupted)\n", "says the stop was sent")
  -- The facade's stop waiting as long as it is told: the Ctrl-C ends the wait, not the time.
  local script = t.write(t.tmpdir("held-stop") .. "/stop.lua", [[
    local core, mg = require "modelget.core", require "modelget"
    core.catch_interrupt()
    local r = mg.stop({ "held-stop" }, { store = ..., wait = 600 })
    os.exit(core.interrupted() and not r[1].ended and 130 or 1)
  ]])
  bg = held_pull()
  interrupt_stopper(bg, t.spawn { "run", script, store })
end)

test("stop ID of one of several models a pull is downloading stops only that one; the others complete", function()
  local fx = servers.fixture()
  local data, urls = {}, {}
  for i = 1, 3 do
    data[i] = t.bytes(2 * 1024 * 1024, 70 + i)
    urls[i] = fx.put("m" .. i .. ".bin", data[i])
  end
  local store = t.tmpdir("store-stop-one")
  local bg = t.spawn { "pull", urls[1], urls[2], urls[3], "--store", store, "--cacert", servers.ca().cert,
                       "--framework", "other", "-q", "--limit-rate", "1M" }
  local partial = store .. "/partial/other--m2/m2.bin.part"
  t.ok(t.wait(function() local st = core.stat(partial); return st and st.size > 100000 end, 20), "under way")

  local r = t.status(t.modelget { "stop", "m2", "--store", store }, 0, "stop m2")
  t.match(r.stdout, "^stopped m2 %(pid " .. bg.pid .. "%): its partial data is kept", "says it stopped m2 only")
  t.nomatch(r.stdout, "%f[%w]m[13]%f[%W]", "and not the others")
  local now = status(store).stdout
  t.match(now, "m2%s+other%s+stopped", "status: m2 stopped")
  t.match(now, "m1%s+other%s+downloading %(pid " .. bg.pid .. "%)", "m1 still downloading")
  t.match(now, "m3%s+other%s+downloading %(pid " .. bg.pid .. "%)", "m3 still downloading")

  t.eq(t.wait(bg.status, 30), 130, "the pull ends as interrupted: one of its models was")
  for _, i in ipairs { 1, 3 } do
    t.eq(t.sha256_file(store .. "/models/other/m" .. i .. "/m" .. i .. ".bin"), t.sha256(data[i]), "m" .. i .. " installed")
  end
  t.ok(not t.exists(store .. "/models/other/m2"), "m2 not installed")
  local kept = core.stat(partial)
  t.ok(kept and kept.size > 0 and kept.size < #data[2], "m2's partial data kept")
  local err = t.read(bg.stderr)
  t.match(err, "modelget: m2: stopped by modelget stop: [%d.]+ [KM]B of partial data kept", "the pull says m2 was stopped")
  t.nomatch(err, "%f[%w]m[13]%f[%W]", "and nothing went wrong with the others")

  fx.clear_log()
  t.status(t.modelget { "pull", urls[2], "--store", store, "--cacert", servers.ca().cert, "--framework", "other", "-q" },
    0, "the same pull of m2 resumes")
  t.eq(t.sha256_file(store .. "/models/other/m2/m2.bin"), t.sha256(data[2]), "m2's bytes")
  t.match(fx.requests("/f/m2.bin")[1].headers.range or "", "^bytes=[1-9]%d*%-$", "resumed where it stopped, with Range")
end)

test("stop of pulls whose process ends before it says how: one that installed its model had ended, one that kept data was stopped", function()
  local ng = servers.nginx()
  local store = t.tmpdir("store-stop-evidence")
  local url = ng.put("evidence/done1.bin", t.bytes(20000, 77))
  t.status(t.modelget { "pull", url, "--store", store, "--cacert", servers.ca().cert, "--framework", "other", "-q" },
    0, "done1 installed")
  t.write(store .. "/partial/other--part1/part1.bin.part", t.bytes(5000, 78))
  -- A process pulling done1, part1 and other1 that ends as soon as a stop is asked of it, without a
  -- word: as one whose pulls ended just then (done1 installing, part1 cut short) would.
  local script = t.write(t.tmpdir("evidence-script") .. "/pretend.lua", [[
local modelget, core = require "modelget", require "modelget.core"
local store = arg[1]
modelget.register_pull({ "done1", "part1", "other1" }, nil, { store = store })
local stop = store .. "/partial/.pull-" .. core.getpid() .. ".stop"
local deadline = core.now() + 20
while not core.stat(stop) and core.now() < deadline do core.sleep(0.02) end
os.exit(0)
]])
  local bg = t.spawn { "run", script, store }
  t.ok(t.wait(function() return t.exists(store .. "/partial/.pull-" .. bg.pid .. ".json") end, 10), "registered")
  local r = t.status(t.modelget { "stop", "done1", "part1", "--store", store }, 0, "stop done1 part1")
  t.match(r.stdout, "stopped part1 %(pid " .. bg.pid .. "%)", "the one with kept data was stopped")
  t.match(r.stdout, "done1 %(pid " .. bg.pid .. "%) had ended before the stop reached it", "the installed one had ended")
  t.nomatch(r.stdout, "stopped done1", "not said to be stopped")
end)

test("status tells a model waiting its turn (-j 1) from one downloading", function()
  local fx = servers.fixture()
  local first, second = fx.put("turn-a.bin", t.bytes(1024 * 1024, 63)), fx.put("turn-b.bin", t.bytes(1024 * 1024, 64))
  local store = t.tmpdir("store-turn")
  local bg = t.spawn { "pull", first, second, "-j", "1", "--store", store, "--cacert", servers.ca().cert,
                       "--framework", "other", "-q", "--limit-rate", "200K" }
  local partial = store .. "/partial/other--turn-a/turn-a.bin.part"
  t.ok(t.wait(function() local st = core.stat(partial); return st and st.size > 100000 end, 20), "the first under way")
  local out = status(store).stdout
  t.match(out, "turn%-a%s+other%s+downloading %(pid " .. bg.pid .. "%)", "the first downloading")
  t.match(out, "turn%-b%s+other%s+waiting %(pid " .. bg.pid .. "%)%s+0 B", "the second waiting its turn")
  t.status(t.modelget { "stop", "--store", store }, 0, "stop")
  t.eq(t.wait(bg.status, 10), 130, "stopped")
end)

test("stop ID of a model whose pull has not begun yet: it does not begin", function()
  local fx = servers.fixture()
  local first, later = fx.put("first.bin", t.bytes(1024 * 1024, 65)), fx.put("later.bin", t.bytes(20000, 66))
  local store = t.tmpdir("store-stop-later")
  local out = t.tmpdir("stop-later-out") .. "/result"
  -- A program pulling first, then later, one after the other in one task.
  local script = t.write(t.tmpdir("stop-later-script") .. "/two.lua", string.format([[
local modelget = require "modelget"
local opts = { store = %q, cacert = %q, framework = "other", limit_rate = "200K" }
local reg = modelget.register_pull({ "first", "later" }, nil, opts)
local sched = modelget.scheduler(opts)
local lines = {}
sched:spawn(function()
  for _, url in ipairs { %q, %q } do
    local r, err, code = sched:pull(url)
    lines[#lines + 1] = (r and "ok" or code) .. " " .. tostring(r and r.id or err)
  end
end)
sched:run()
sched:close()
reg.close()
local f = io.open(%q, "w")
f:write(table.concat(lines, "\n"), "\n")
f:close()
]], store, servers.ca().cert, first, later, out))
  local bg = t.spawn { "run", script }
  local partial = store .. "/partial/other--first/first.bin.part"
  t.ok(t.wait(function() local st = core.stat(partial); return st and st.size > 100000 end, 20), "the first under way")
  local r = t.status(t.modelget { "stop", "later", "--store", store }, 0, "stop later")
  t.match(r.stdout, "stopped later", "said stopped")
  t.eq(t.wait(bg.status, 30), 0, "the program ends")
  local lines = t.read(out) or ""
  t.match(lines, "^ok first\n", "the first completes")
  t.match(lines, "\nEINTR later: stopped by modelget stop before any data arrived\n$", "the later one never began")
  t.ok(not t.exists(store .. "/models/other/later"), "and is not installed")
end)
