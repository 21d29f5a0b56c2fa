-- The download manager through the Lua API: pause, resume and cancel a model's downloads while
-- others go on, over one scheduler.
local t = require "t"
local servers = require "servers"
local core = require "modelget.core"
local modelget = require "modelget"

local MiB = 1024 * 1024

local function size(path) local st = core.stat(path); return st and st.size or 0 end

test("pause holds a model's download, resume completes it, cancel keeps its partial for a resume", function()
  local fx = servers.fixture()
  local a_data, b_data = t.bytes(2 * MiB, 41), t.bytes(2 * MiB, 42)
  local a_url, b_url = fx.put("paused.bin", a_data), fx.put("cancelled.bin", b_data)
  local store = t.tmpdir("store-manager")
  local opts = { store = store, cacert = servers.ca().cert, framework = "other", limit_rate = "800K",
                 retry_wait = 0.05 }
  local sched = modelget.scheduler(opts)
  local a_part = store .. "/partial/other--paused/paused.bin.part"
  local b_part = store .. "/partial/other--cancelled/cancelled.bin.part"
  local results, held, after_cancel = {}, nil, nil
  sched:spawn(function() results.a = table.pack(sched:pull(a_url)) end)
  sched:spawn(function() results.b = table.pack(sched:pull(b_url)) end)
  sched:spawn(function()
    local deadline = core.now() + 30
    while size(a_part) < 300000 or size(b_part) < 300000 do
      if core.now() > deadline then error("the downloads did not start") end
      sched:sleep(0.05)
    end
    t.eq(sched:pause("paused"), 1, "one transfer paused")
    t.eq(sched:cancel("cancelled"), 1, "one transfer cancelled")
    sched:sleep(0.3)
    local before = size(a_part)
    sched:sleep(1.0)
    held = size(a_part) == before
    after_cancel = size(b_part)
    t.eq(sched:resume("paused"), 1, "one transfer resumed")
  end)
  sched:run()
  sched:close()
  t.ok(held, "no bytes arrived while paused")
  t.eq(results.a[1] and results.a[1].sha256, t.sha256(a_data), "the paused model completes, bytes right")
  t.eq(results.b[1], nil, "the cancelled pull fails")
  t.eq(results.b[3], "ECANCEL", "code")
  t.match(results.b[2], "resume", "says the partial is kept")
  t.ok(after_cancel > 0 and after_cancel < #b_data, "partial kept after cancel")
  t.ok(not t.exists(store .. "/models/other/cancelled"), "nothing installed for the cancelled one")

  fx.clear_log()
  local r, err = modelget.pull(b_url, opts)
  t.ok(r, "pulled again: " .. tostring(err))
  t.eq(t.sha256_file(r.path .. "/cancelled.bin"), t.sha256(b_data), "bytes after resume")
  t.match(fx.requests("/f/cancelled.bin")[1].headers.range or "", "^bytes=%d+%-$", "resumed with Range")
end)

-- The progress events on_progress gets for one model paused part-way through and resumed, by when they
-- came: {before=, paused=, after=} (the calls to pause and resume bound the phases). sched_opts: the
-- scheduler's options beyond the usual (connections = 2: the file split over two connections).
local function progress_around_pause(id, size, seed, sched_opts)
  local fx = servers.fixture()
  local data = t.bytes(size, seed)
  local url = fx.put(id .. ".bin", data)
  local seen, phase = { before = {}, paused = {}, after = {} }, "before"
  local opts = { store = t.tmpdir("store-" .. id), cacert = servers.ca().cert, framework = "other",
                 limit_rate = "1M", retry_wait = 0.05,
                 on_progress = function(ev) table.insert(seen[phase], ev) end }
  for k, v in pairs(sched_opts or {}) do opts[k] = v end
  local sched = modelget.scheduler(opts)
  local result
  sched:spawn(function() result = table.pack(sched:pull(url)) end)
  sched:spawn(function()
    local deadline = core.now() + 30
    while #seen.before < 2 or seen.before[#seen.before].completed < 300000 do
      if core.now() > deadline then error("the download did not start") end
      sched:sleep(0.05)
    end
    sched:pause(id)
    phase = "paused"
    -- Paused until three ticks' events have come (not for a fixed 1.25 s: a loaded machine may tick
    -- fewer times in it); 10 s without them, and the count below says so.
    local until_t = core.now() + 10
    while #seen.paused < 3 and core.now() < until_t do sched:sleep(0.05) end
    phase = "after"
    sched:resume(id)
  end)
  sched:run()
  sched:close()
  t.ok(result[1], "the paused model completes: " .. tostring(result[2]))
  t.eq(t.sha256_file(result[1].path .. "/" .. id .. ".bin"), t.sha256(data), "bytes")
  return seen
end

-- What a UI drawing the events shows for a paused model: paused, nothing moving, no time left to
-- guess; then moving again.
local function check_paused_events(seen, file)
  for _, ev in ipairs(seen.before) do t.eq(ev.paused, nil, "not paused before the pause") end
  t.ok(#seen.paused >= 3, "progress events go on while paused (" .. #seen.paused .. ")")
  for _, ev in ipairs(seen.paused) do
    t.eq(ev.file, file, "the file's events")
    t.eq(ev.paused, true, "the event says paused")
    t.eq(ev.speed, 0, "no speed while paused")
    t.eq(ev.eta, nil, "no eta while paused")
  end
  local moving = 0
  for _, ev in ipairs(seen.after) do
    t.eq(ev.paused, nil, "not paused after the resume")
    if ev.speed > 0 then moving = moving + 1 end
  end
  t.ok(moving > 0, "a speed again after the resume")
end

test("progress events of a paused model say paused, with speed 0 and no eta; after resume a speed again", function()
  check_paused_events(progress_around_pause("pausedprog", 2 * MiB, 48), "pausedprog.bin")
end)

test("a paused model split over connections: its progress events say paused, with speed 0 and no eta", function()
  check_paused_events(progress_around_pause("pausedsplit", 4 * MiB, 49, { connections = 2, limit_rate = "2M" }),
    "pausedsplit.bin")
end)

test("options of the wrong kind are misuse: an error naming the option, nothing done", function()
  local store = t.tmpdir("store-bad-options")
  local cases = {
    { { store = 5 }, "bad option 'store': expected a string, got number" },
    { { store = store, jobs = "many" }, "bad option 'jobs': expected an integer, got string" },
    { { store = store, connections = "2" }, "bad option 'connections': expected an integer, got string" },
    { { store = store, sha256 = true }, "bad option 'sha256': expected a string, got boolean" },
    { { store = store, alt = { 1 } }, "bad option 'alt': expected a string or a list of strings, got table" },
    { { store = store, on_event = "print" }, "bad option 'on_event': expected a function, got string" },
    { { store = store, sha = ("ab"):rep(32) }, "unknown option 'sha'" },
    -- Out of range, as the command line has them.
    { { store = store, retries = -1 }, "bad option 'retries': expected a whole number 0 or more, got -1" },
    { { store = store, retry_wait = -3 }, "bad option 'retry_wait': expected a number 0 or more, got -3" },
    { { store = store, stall_timeout = 0 }, "bad option 'stall_timeout': expected a number 1 to 604800, got 0" },
    { { store = store, stall_timeout = 1e300 }, "bad option 'stall_timeout': expected a number 1 to 604800, got 1e+300" },
    { { store = store, connect_timeout = -1 }, "bad option 'connect_timeout': expected a number 1 to 604800, got -1" },
    { { store = store, connect_timeout = 1e300 }, "bad option 'connect_timeout': expected a number 1 to 604800, got 1e+300" },
    { { store = store, jobs = 0 }, "bad option 'jobs': expected a whole number 1 to 256, got 0" },
    { { store = store, connections = 99 }, "bad option 'connections': expected a whole number 1 to 16, got 99" },
    { { store = store, limit_rate = "abc" }, "bad option 'limit_rate': expected a rate (500K, 20M, bytes/s), got abc" },
  }
  for _, c in ipairs(cases) do
    local ok, err = pcall(function() local r = modelget.pull("https://127.0.0.1:1/x.bin", c[1]); return r end)
    t.eq(ok, false, "raised: " .. c[2])
    t.match(err, c[2]:gsub("%p", "%%%0"), "says which option")
    t.match(err, "^tests/test_manager%.lua:%d+: ", "at the caller's line: " .. err)
  end
  t.ok(not t.exists(store .. "/models"), "nothing done")
  -- One registry path is a list of one.
  local recipe = t.write(t.tmpdir("one-registry") .. "/r.lua", 'model "one-path" { framework = "other", url = "https://127.0.0.1:1/o.bin" }')
  t.eq(modelget.info("one-path", { store = store, registry = recipe }).id, "one-path", "registry = PATH")
end)

test("an error raised during a pull lets go of the model: the next pull of it is not refused as busy", function()
  local ng = servers.nginx()
  local data = t.bytes(300000, 43)
  local url = ng.put("manager/raised.bin", data)
  local opts = { store = t.tmpdir("store-raised"), cacert = servers.ca().cert, framework = "other", limit_rate = "400K" }
  local ok, err = pcall(modelget.pull, url, setmetatable({ on_progress = function() error("a bug in the app") end },
    { __index = opts }))
  t.ok(not ok, "the callback's error is raised")
  t.match(tostring(err), "a bug in the app", "that error")
  local r, perr, code = modelget.pull(url, opts)
  t.ok(r, "pulled at once, no collectgarbage needed: " .. tostring(perr) .. " " .. tostring(code))
  t.eq(t.sha256_file(r.path .. "/raised.bin"), t.sha256(data), "bytes")
end)

test("a callback that yields inside a pull is an error naming the rule, not a hang", function()
  local ng = servers.nginx()
  local url = ng.put("manager/yields.bin", t.bytes(50000, 44))
  local store = t.tmpdir("store-yields")
  local co = coroutine.create(function()
    return modelget.pull(url, { store = store, cacert = servers.ca().cert, framework = "other",
      on_event = function(ev) coroutine.yield(ev.event) end })
  end)
  local ok, err = coroutine.resume(co)
  t.ok(not ok, "the pull fails at the yield")
  t.match(tostring(err), "callbacks such as on_event must not yield", "says why")
  t.eq(coroutine.status(co), "dead", "nothing left suspended")
  local r = modelget.pull(url, { store = store, cacert = servers.ca().cert, framework = "other" })
  t.ok(r, "the model is free for the next pull")
  local sched = modelget.scheduler { store = store, cacert = servers.ca().cert, framework = "other", force = true }
  local sok, serr = pcall(sched.pull, sched, url)
  t.ok(not sok, "a pull outside a task is misuse")
  t.match(tostring(serr), "call it from a task %(sched:spawn%)", "says where it belongs")
  sched:close()
  t.ok(not pcall(sched.spawn, sched, function() end), "a closed scheduler takes no task")
end)

test("a cancel stops the pulls running then: a later pull of the id in the same scheduler starts afresh, a backoff ends at once", function()
  local fx = servers.fixture()
  local data = t.bytes(2 * MiB, 45)
  local url = fx.put("recancel.bin", data)
  local down = fx.put("backoff.bin", t.bytes(1000, 46))
  fx.script("backoff.bin", { { status = 503, ["repeat"] = true } })
  local store = t.tmpdir("store-recancel")
  local backing_off = false -- the backoff pull's retry event: it waits out its 8 s from there
  local sched = modelget.scheduler { store = store, cacert = servers.ca().cert, framework = "other",
                                     limit_rate = "800K", retry_wait = 8,
                                     on_event = function(ev)
                                       if ev.event == "retry" and ev.id == "backoff" then backing_off = true end
                                     end }
  local part = store .. "/partial/other--recancel/recancel.bin.part"
  local first, second, waited, backoff = nil, nil, nil, nil
  t.eq(sched:cancel("recancel"), 0, "a cancel with nothing running touches nothing")
  sched:spawn(function() first = table.pack(sched:pull(url)) end)
  sched:spawn(function()
    local deadline = core.now() + 30
    while size(part) < 200000 do
      if core.now() > deadline then error("the download did not start") end
      sched:sleep(0.05)
    end
    sched:cancel("recancel")
    while not first do sched:sleep(0.05) end
    second = table.pack(sched:pull(url))
  end)
  sched:spawn(function()
    local started = core.now()
    backoff = table.pack(sched:pull(down))
    waited = core.now() - started
  end)
  sched:spawn(function()
    -- Cancelled once in its backoff (its 503 seen), not after a fixed 1 s: a slow first answer
    -- made that a cancel of the request, not of the wait.
    local deadline = core.now() + 30
    while not backing_off and core.now() < deadline do sched:sleep(0.05) end
    sched:cancel("backoff")
  end)
  sched:run()
  sched:close()
  t.eq(first[3], "ECANCEL", "the pull running at the cancel stops")
  t.ok(second[1], "the pull after it, in the same scheduler, completes: " .. tostring(second[2]))
  t.eq(t.sha256_file(second[1].path .. "/recancel.bin"), t.sha256(data), "bytes")
  t.ok(backing_off, "the backoff pull got its 503 and waited")
  t.eq(backoff[3], "ECANCEL", "a pull waiting out its backoff is cancelled")
  t.ok(waited < 4, "at once, not after the 8 s backoff: " .. waited)
  t.match(backoff[2], "cancelled before any data arrived", "and says nothing was kept")
end)

test("sizes read back from the store are whole numbers, as they were written", function()
  local ng = servers.nginx()
  local data = t.bytes(7746, 47)
  local url = ng.put("manager/whole.bin", data)
  local opts = { store = t.tmpdir("store-whole"), cacert = servers.ca().cert, framework = "other" }
  t.ok(modelget.pull(url, opts), "pulled")
  local again = modelget.pull(url, opts)
  t.ok(again and again.already, "already installed")
  t.eq(math.type(again.bytes), "integer", "bytes of an installed model")
  t.eq(math.type(again.files[1].size), "integer", "a file's size")
  t.eq(tostring(again.bytes), "7746", "shown as written")
  local listed = modelget.installed(opts)[1]
  t.eq(math.type(listed.bytes), "integer", "installed(): bytes")
  t.eq(math.type(modelget.info("whole", opts).installed_bytes), "integer", "info(): installed_bytes")
end)

test("pull_many: every failure is an error event under the id the target takes; a target named twice gets a whole result", function()
  local ng = servers.nginx()
  local data = t.bytes(20000, 48)
  local a = ng.put("manager/many/twice.bin", data)
  local clash = ng.put("manager/many/other/twice.bin", data)
  local events = {}
  local opts = { store = t.tmpdir("store-many-events"), cacert = servers.ca().cert, framework = "other",
                 on_event = function(ev) if ev.event == "error" then events[#events + 1] = ev end end }
  local out = modelget.pull_many({ a, a, clash, "http://example.com/refused.bin" }, opts)
  t.ok(out[1].ok and out[2].ok, "the target named twice: pulled once, both ok")
  local fields = {}
  for k in pairs(out[2]) do fields[#fields + 1] = k end
  table.sort(fields)
  t.eq(table.concat(fields, " "), "ok result target", "the second's result is a table of its own")
  t.eq(out[2].result.path, out[1].result.path, "the same model")
  t.eq(out[3].code, "EUSAGE", "another target for the same id is refused")
  t.eq(out[4].code, "EPOLICY", "a URL the policy refuses")
  t.eq(#events, 2, "an error event for each failure")
  local by_target = {}
  for _, ev in ipairs(events) do by_target[ev.target] = ev end
  t.eq(by_target[clash] and by_target[clash].id, "twice", "the refused one, under its id")
  t.eq(by_target["http://example.com/refused.bin"] and by_target["http://example.com/refused.bin"].id, "refused",
    "the policy's refusal, under the id the URL takes, not the URL")
end)

test("--limit-rate shares the cap among concurrent downloads: none crawls while another takes it all", function()
  local fx = servers.fixture()
  local size = 16 * MiB
  local a_data, b_data = t.bytes(size, 51), t.bytes(size, 52)
  local urls = { fx.put("share-a.bin", a_data), fx.put("share-b.bin", b_data) }
  local store = t.tmpdir("store-share")
  local last, at_first_end = {}, nil
  local results = modelget.pull_many(urls, {
    store = store, cacert = servers.ca().cert, framework = "other", limit_rate = "40M", quiet = true,
    on_progress = function(ev)
      last[ev.file] = ev.completed
      -- The moment one file is complete: how far the other has come.
      if not at_first_end and ev.total and ev.completed == ev.total then
        at_first_end = { done = ev.file, other = ev.file == "share-a.bin" and last["share-b.bin"] or last["share-a.bin"] }
      end
    end,
  })
  t.ok(results[1].ok and results[2].ok, "both pulled")
  t.eq(t.sha256_file(store .. "/models/other/share-a/share-a.bin"), t.sha256(a_data), "share-a's bytes")
  t.eq(t.sha256_file(store .. "/models/other/share-b/share-b.bin"), t.sha256(b_data), "share-b's bytes")
  t.ok(at_first_end, "one file completed first")
  -- An even share has the other well on its way too (over half, as measured); before, it had a few
  -- percent.
  t.ok((at_first_end.other or 0) >= size // 3, string.format("when %s was complete, the other had %s of %d bytes",
    at_first_end.done, tostring(at_first_end.other), size))
end)
