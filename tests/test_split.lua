-- Downloads split over several connections (pull -x N): segments asked for with Range and If-Range
-- on one version of the file, written in place, each resumable from the saved plan, the file hashed
-- once at the end; given up for one connection when the server will not serve ranges. Against the fixture server, which logs every
-- request.
local t = require "t"
local servers = require "servers"
local cjson = require "cjson"

local MiB = 1024 * 1024

local function pull(store, args, opts)
  local argv = { "pull", "--store", store, "--cacert", servers.ca().cert, "--retry-wait", "0.05",
                 "--framework", "other" }
  for _, a in ipairs(args) do argv[#argv + 1] = a end
  return t.modelget(argv, opts)
end

local function installed(store, id) return store .. "/models/other/" .. id .. "/" .. id .. ".bin" end

-- id.bin of size bytes (from seed) on the fixture server, and a store for it: fx, data, url, store.
local function served(id, size, seed)
  local fx = servers.fixture()
  local data = t.bytes(size, seed)
  return fx, data, fx.put(id .. ".bin", data), t.tmpdir(id)
end

-- id.bin of size bytes on the fixture server (its log cleared), pulled with the arguments given;
-- checks it was installed byte for byte. Returns the server, the bytes, the store and the result.
local function split_pull(id, size, seed, args, script)
  local fx, data, url, store = served(id, size, seed)
  if script then fx.script(id .. ".bin", script) end
  fx.clear_log()
  local argv = { url }
  for _, a in ipairs(args) do argv[#argv + 1] = a end
  local r = t.status(pull(store, argv), 0, "pull " .. table.concat(args, " "))
  t.eq(t.sha256_file(installed(store, id)), t.sha256(data), "installed bytes")
  return fx, data, store, r
end

-- The names in a model folder, sorted and joined.
local function model_files(store, id)
  local names = t.tree(store .. "/models/other/" .. id)
  table.sort(names)
  return table.concat(names, " ")
end

-- The GET requests' ranges, as {from, to} pairs sorted by from.
local function ranges_asked(fx, pattern)
  local out = {}
  for _, r in ipairs(fx.requests(pattern)) do
    if r.method == "GET" then
      local a, b = (r.headers.range or ""):match("^bytes=(%d+)%-(%d*)$")
      out[#out + 1] = { tonumber(a), tonumber(b), if_range = r.headers["if-range"], status = r.status }
    end
  end
  table.sort(out, function(x, y) return (x[1] or -1) < (y[1] or -1) end)
  return out
end

test("pull -x 4: four ranges at once, with If-Range, written in place into the verified file; nothing left over", function()
  local size = 5 * MiB + 123
  local fx, data, store = split_pull("split4", size, 91, { "-x", "4", "--sha256", t.sha256(t.bytes(size, 91)), "-q" })
  local asked = ranges_asked(fx, "^/f/split4%.bin$")
  t.eq(#asked, 4, "four segments")
  t.eq(asked[1][1], 0, "the first starts at 0")
  for i = 2, 4 do t.eq(asked[i][1], asked[i - 1][2] + 1, "segment " .. i .. " follows the one before") end
  t.eq(asked[4][2], #data - 1, "the last ends at the end")
  for i = 1, 4 do
    t.eq(asked[i].status, 206, "segment " .. i .. " answered with 206")
    t.ok(asked[i].if_range and asked[i].if_range:sub(1, 1) == '"', "segment " .. i .. " asked with If-Range: an ETag")
  end
  local heads = 0
  for _, r in ipairs(fx.requests("^/f/split4%.bin$")) do if r.method == "HEAD" then heads = heads + 1 end end
  t.eq(heads, 1, "one HEAD to plan the split")
  t.eq(model_files(store, "split4"), ".modelget.json split4.bin", "the model folder holds the file and its manifest")
  t.eq(#t.tree(store .. "/partial"), 1, "nothing left under partial/ but the lock file")
end)

test("a split pull's progress counts the whole file: one line of events for it, never past its size, the last one complete", function()
  local size = 4 * MiB
  local _, _, _, r = split_pull("splitprog", size, 96, { "-x", "4", "--json", "--limit-rate", "4M" })
  local seen, hash_at, last_progress, last = 0, nil, nil, nil
  for i, ev in ipairs(t.events(r.stdout)) do
    if ev.event == "progress" then
      seen, last_progress, last = seen + 1, i, ev
      t.eq(ev.file, "splitprog.bin", "the file's name")
      t.eq(ev.total, size, "the whole file's size, not a segment's")
      t.ok(ev.completed >= 0 and ev.completed <= size, "completed within the file: " .. ev.completed)
    elseif ev.event == "hash" then
      hash_at = i
      t.eq(ev.bytes, size, "the read-back is said, with its size")
    end
  end
  t.ok(seen >= 2, "progress events while it downloads (" .. seen .. ")")
  t.eq(last.completed, size, "the last progress event has every segment in")
  t.ok(hash_at and hash_at > last_progress, "a hash event once the segments are in")
end)

test("a segment cut part-way is resumed from where it stopped; the others are not asked again", function()
  -- The HEAD takes the first behaviour, the first segment asked for the cut.
  local fx = split_pull("splitcut", 4 * MiB, 92, { "-x", "2", "-q" }, { {}, { cut = 300000 } })
  local asked = ranges_asked(fx, "^/f/splitcut%.bin$")
  t.eq(#asked, 3, "two segments and one resume")
  local starts = {}
  for _, a in ipairs(asked) do starts[#starts + 1] = a[1] end
  local half = 2 * MiB
  t.ok((starts[1] == 0 and starts[2] == 300000) or (starts[2] == half and starts[3] == half + 300000),
    "the cut segment was asked again from 300000 bytes in: " .. table.concat(starts, ","))
end)

-- What the saved plan of id's split says is on disk, range by range.
local function segment_bytes(store, id)
  local plan = cjson.decode(t.read(string.format("%s/partial/other--%s/%s.bin.part.split", store, id, id)) or "{}")
  local n = 0
  for _, r in ipairs(plan.ranges or {}) do n = n + math.tointeger(r[3]) end
  return n
end

test("a split that fails part-way says what its segments hold, not its file's length", function()
  -- The HEAD, then two segments cut 600000 bytes in; then every request fails.
  local fx, _, url, store = served("splitfail", 5000000, 95)
  fx.script("splitfail.bin", { { method = "HEAD" }, { cut = 600000 }, { cut = 600000 }, { status = 503, ["repeat"] = true } })
  local r = t.status(pull(store, { url, "-x", "4", "--retries", "2", "-q" }), 3, "pull")
  local held = segment_bytes(store, "splitfail")
  t.ok(held >= 1200000 and held < 5000000, "the plan holds the two cut segments' bytes: " .. held)
  t.match(r.stderr, "; " .. require("modelget.util").human(held):gsub("%.", "%%.") .. " kept: the same pull again resumes", "says what is kept")
end)

-- Starts pull URL -x 3 (1 MB/s) and kills it (-9) once its segments hold more than 1 MiB; returns
-- what the plan says they hold.
local function kill_split_part_way(url, store, id)
  local bg = t.spawn { "pull", url, "--store", store, "--cacert", servers.ca().cert, "--framework", "other",
                       "-q", "-x", "3", "--limit-rate", "1M" }
  t.ok(t.wait(function() return segment_bytes(store, id) > 1 * MiB end, 20), "the segments are filling")
  os.execute("kill -9 " .. bg.pid)
  t.ok(t.wait(function() return bg.status() ~= nil end, 10), "killed")
  return segment_bytes(store, id)
end

test("kill -9 during a split pull: the next pull resumes every segment from its plan", function()
  local fx, data, url, store = served("splitkill", 6 * MiB, 93)
  local kept = kill_split_part_way(url, store, "splitkill")
  local status = t.status(t.modelget { "status", "--store", store, "--json" }, 0, "status")
  t.match(status.stdout, '"completed":' .. kept .. "[,}]", "status counts the segments' bytes")
  fx.clear_log()
  t.status(pull(store, { url, "-x", "3", "-q" }), 0, "the second pull")
  t.eq(t.sha256_file(installed(store, "splitkill")), t.sha256(data), "installed bytes")
  local resumed, heads = 0, 0
  for _, r in ipairs(fx.requests("^/f/splitkill%.bin$")) do
    if r.method == "HEAD" then heads = heads + 1 end
    local a = tonumber((r.headers.range or ""):match("^bytes=(%d+)%-"))
    if a and a % (2 * MiB) ~= 0 then resumed = resumed + 1 end
  end
  t.eq(heads, 0, "the plan was kept: no new HEAD")
  t.ok(resumed >= 1, "segments asked again from where they stopped")
end)

test("a split file's speed is its own bytes over time: a segment that ends does not drop it", function()
  local download = require "modelget.download"
  local split, rate = {}, 52e6
  t.eq(download.split_speed(split, 0, 10.0, 40e6), 40e6, "the first estimate: the segments' speeds")
  local speeds = {}
  for i = 1, 12 do
    -- the file goes on at 52 MB/s; at tick 5 a segment ends, and the sum of the others' moving
    -- averages reads 12 MB/s for a while
    speeds[i] = download.split_speed(split, rate * 0.25 * i, 10.0 + 0.25 * i, i < 5 and 52e6 or 12e6)
  end
  for i = 5, 12 do
    t.ok(math.abs(speeds[i] - rate) < 0.1 * rate, string.format("tick %d: %.1f MB/s", i, speeds[i] / 1e6))
  end
  -- and it follows a real change: the file slows to 13 MB/s
  local s
  for i = 13, 30 do s = download.split_speed(split, rate * 0.25 * 12 + 13e6 * 0.25 * (i - 12), 10.0 + 0.25 * i, 13e6) end
  t.ok(math.abs(s - 13e6) < 0.1 * 13e6, string.format("slowed: %.1f MB/s", s / 1e6))
end)

test("a pull without -x resumes the segments a split pull kept", function()
  local fx, data, url, store = served("splitresume", 6 * MiB, 95)
  local before = kill_split_part_way(url, store, "splitresume")
  fx.clear_log()
  t.status(pull(store, { url, "-q" }), 0, "the same pull without -x")
  t.eq(t.sha256_file(installed(store, "splitresume")), t.sha256(data), "installed bytes")
  local asked = 0
  for _, r in ipairs(fx.requests("^/f/splitresume%.bin$")) do
    t.ok(r.headers["if-range"], "each request a range of the kept version")
    local a, b = (r.headers.range or ""):match("^bytes=(%d+)%-(%d*)$")
    t.ok(a, "a range: " .. tostring(r.headers.range))
    asked = asked + ((tonumber(b) or #data - 1) - tonumber(a or 0) + 1)
  end
  t.ok(#fx.requests("^/f/splitresume%.bin$") >= 1, "segments were asked for")
  t.ok(asked <= #data - before, string.format("only what was missing came again (%d bytes, %d kept)", asked, before))

  -- Killed again part-way, and the file changes on the server meanwhile: the segments' If-Range
  -- gets the whole new file; the kept bytes are dropped, said so, and the new version installed.
  t.status(t.modelget { "rm", "splitresume", "--store", store }, 0, "rm")
  kill_split_part_way(url, store, "splitresume")
  local newer = t.bytes(6 * MiB, 96)
  fx.put("splitresume.bin", newer)
  local r = t.status(pull(store, { url, "-x", "3", "--json" }), 0, "the pull after the change")
  local said
  for _, ev in ipairs(t.events(r.stdout)) do
    if ev.event == "fallback" then said = ev.reason end
  end
  t.match(said or "", "the file changed on the server", "the fallback says why")
  t.eq(t.sha256_file(installed(store, "splitresume")), t.sha256(newer), "the new version installed")
end)

test("a server that will not serve ranges: the split is given up, the file comes on one connection", function()
  local _, _, store, r = split_pull("norange", 3 * MiB, 94, { "-x", "3", "--json" },
    { {}, { ignore_range = true, ["repeat"] = true } })
  local fell = false
  for _, ev in ipairs(t.events(r.stdout)) do
    if ev.event == "fallback" and (ev.reason or ""):find("one connection") then fell = true end
  end
  t.ok(fell, "a fallback event says so")
  t.eq(model_files(store, "norange"), ".modelget.json norange.bin", "no segment file was installed")
end)

-- What a split pull of id.bin (3 MiB, two ranges) killed once every range was in leaves: a partial
-- holding bytes, and a plan saying all is done, on a version whose validator is "x".
local function complete_plan(store, id, url, bytes)
  local part = string.format("%s/partial/other--%s/%s.bin.part", store, id, id)
  t.write(part, bytes)
  t.write(part .. ".split", cjson.encode { url = url, validator = '"x"', total = 3 * MiB,
    ranges = { { 0, 1572863, 1572864 }, { 1572864, 3145727, 1572864 } } })
end

test("a kept plan with every range in is checked with the server first: another version drops it, partial and all", function()
  local fx, data, url, store = served("stale", 3 * MiB, 99)
  local pdir = store .. "/partial/other--stale"
  complete_plan(store, "stale", url, string.rep("\0", 3 * MiB))
  -- Then a pull: the plan says every range is in, so nothing would ask the server (no If-Range); a
  -- HEAD does, and the server has another version ("x" is not its validator): plan and partial go,
  -- and the file comes on one connection (cut part-way here).
  fx.clear_log()
  fx.script("stale.bin", { {}, { cut = 1000000 } })
  t.status(pull(store, { url, "-q", "--retries", "1" }), 3, "the single-connection pull, cut")
  t.eq(fx.requests("^/f/stale%.bin$")[1].method, "HEAD", "the server was asked first")
  t.ok(not t.exists(pdir .. "/stale.bin.part.split"), "the plan is gone")
  -- A split pull after it must not take the partial's old zeros for done ranges.
  t.status(pull(store, { url, "-x", "2", "-q" }), 0, "pull -x 2")
  t.eq(t.sha256_file(installed(store, "stale")), t.sha256(data), "the right bytes")
end)

test("a kept plan with every range in and a SHA-256 to check: no request, the hash decides", function()
  local fx, data, url, store = served("whole", 3 * MiB, 98)
  local pdir = store .. "/partial/other--whole"
  complete_plan(store, "whole", url, data)
  fx.clear_log()
  t.status(pull(store, { url, "--sha256", t.sha256(data), "-q" }), 0, "the pull finds the file whole")
  t.eq(#fx.requests("^/f/whole%.bin$"), 0, "no request: the hash checks the version")
  t.eq(t.sha256_file(installed(store, "whole")), t.sha256(data), "installed bytes")
  -- Whole but another version's bytes: the hash refuses them, and they go.
  t.status(t.modelget { "rm", "whole", "--store", store }, 0, "rm")
  complete_plan(store, "whole", url, string.rep("\0", 3 * MiB))
  t.status(pull(store, { url, "--sha256", t.sha256(data), "-q" }), 4, "the hash refuses them")
  t.ok(not t.exists(pdir .. "/whole.bin.part"), "the bad bytes are gone")
  t.ok(not t.exists(store .. "/models/other/whole"), "nothing installed")
end)

test("killed at the end of a split, between the file's rename and the plan's removal: the next pull installs the file", function()
  for _, args in ipairs { {}, { "--sha256", "SHA" } } do
    local fx, data, url, store = served("splitend", 3 * MiB, 99)
    for i, a in ipairs(args) do if a == "SHA" then args[i] = t.sha256(data) end end
    -- The shim kills the process at its first removal of a file: the plan's, once the file is whole.
    local argv = { url, "-x", "3", "-q" }
    for _, a in ipairs(args) do argv[#argv + 1] = a end
    local r = pull(store, argv, { env = t.fault_env { KILL_AT_UNLINK = "1" } })
    t.eq(r.status, 137, "killed")
    t.ok(t.exists(store .. "/partial/other--splitend/splitend.bin.part.split"), "the plan was left behind")
    t.status(pull(store, argv), 0, "the next pull " .. table.concat(args, " "))
    t.eq(t.sha256_file(installed(store, "splitend")), t.sha256(data), "installed bytes")
    t.ok(not t.exists(store .. "/partial/other--splitend"), "nothing of it left in partial/")
    fx.clear_log()
  end
end)

test("a file that grows on the server, its ETag kept, while its segments come: said as changed, fetched whole", function()
  local fx, _, url, store = served("grows", 3 * MiB, 100)
  local v2 = t.bytes(4 * MiB, 101)
  fx.put("grows-v2.bin", v2)
  fx.script("grows.bin", { { method = "HEAD", etag = '"E"' }, { cut = 100000, etag = '"E"' },
                           { content = "grows-v2.bin", etag = '"E"', ["repeat"] = true } })
  local r = t.status(pull(store, { url, "-x", "3", "--json" }), 0, "pull")
  t.eq(t.sha256_file(installed(store, "grows")), t.sha256(v2), "the file as it is now, whole")
  local fb = t.last_event(t.events(r.stdout), "fallback")
  t.ok(fb, "the split was given up")
  t.match(fb.reason, "the file changed on the server since its segments began", "said as a change, not as ranges refused")
  -- The line a person reads: the same URL is not said to fail and then be tried.
  local _, _, url2, store2 = served("grows2", 3 * MiB, 102)
  fx.put("grows2-v2.bin", v2)
  fx.script("grows2.bin", { { method = "HEAD", etag = '"F"' }, { cut = 100000, etag = '"F"' },
                            { content = "grows2-v2.bin", etag = '"F"', ["repeat"] = true } })
  r = t.status(pull(store2, { url2, "-x", "3" }), 0, "pull, as a person sees it")
  t.match(r.stdout, "grows2: grows2%.bin: the file changed on the server since its segments began: all of it again, on one connection %("
    .. url2:gsub("%p", "%%%0") .. "%)", "one line saying what happens")
  t.nomatch(r.stdout, "failed; trying", "no failure of the URL it goes on with")
end)

test("-j 2 -x 4 with many small files: two files at a time, not eight", function()
  local fx = servers.fixture()
  local store = t.tmpdir("places")
  local argv, datas = { "-j", "2", "-x", "4", "-q" }, {}
  for i = 1, 6 do
    datas[i] = t.bytes(300000 + i, 90 + i)
    argv[#argv + 1] = fx.put(string.format("places%d.bin", i), datas[i])
    -- Each request answered after a pause, so that requests asked at once meet at the server.
    fx.script(string.format("places%d.bin", i), { { delay = 0.3, ["repeat"] = true } })
  end
  fx.clear_log()
  t.status(pull(store, argv), 0, "pull -j 2 -x 4")
  for i = 1, 6 do
    t.eq(t.sha256_file(installed(store, "places" .. i)), t.sha256(datas[i]), "file " .. i .. " installed")
  end
  -- A request is answered 0.3 s after it arrives, and a file's next request waits for its answer:
  -- two files at a time means no more than two requests within any 0.25 s.
  local times = {}
  for _, r in ipairs(fx.requests("^/f/places%d%.bin$")) do times[#times + 1] = r.time end
  table.sort(times)
  t.eq(#times, 12, "a HEAD and a GET per file")
  local most = 0
  for i = 1, #times do
    local n = 0
    for j = i, #times do if times[j] - times[i] < 0.25 then n = n + 1 end end
    most = math.max(most, n)
  end
  t.eq(most, 2, "the server was asked for two files at a time, never more")
end)

test("a file too small to split comes whole, on one connection", function()
  -- Under 2 MiB nothing is split: the HEAD that found its size, then one GET for the whole file.
  local fx = split_pull("small-x", 1 * MiB + 7, 95, { "-x", "4", "-q" })
  local asked = ranges_asked(fx, "^/f/small%-x%.bin$")
  t.eq(#asked, 1, "one GET")
  t.eq(asked[1][1], nil, "without Range")
end)

test("the split's server fails: the alternative URL brings the file, and no segment is installed", function()
  local fx = servers.fixture()
  local data = t.bytes(3 * MiB, 97)
  local url = fx.put("splitdead.bin", data)
  local alt = fx.put("splitalt.bin", data)
  -- The HEAD answers; every GET after it fails with 503.
  fx.script("splitdead.bin", { {}, { status = 503, ["repeat"] = true } })
  local store = t.tmpdir("splitdead")
  local r = t.status(pull(store, { url, "--alt", alt, "-x", "3", "--retries", "2", "--json" }), 0, "pull -x 3 --alt")
  t.eq(t.sha256_file(installed(store, "splitdead")), t.sha256(data), "installed bytes, from the alternative")
  local to_alt = false
  for _, ev in ipairs(t.events(r.stdout)) do
    if ev.event == "fallback" and ev.to == alt then to_alt = true end
  end
  t.ok(to_alt, "a fallback event names the alternative")
  t.eq(model_files(store, "splitdead"), ".modelget.json splitdead.bin", "the model folder holds the file and its manifest")
end)

test("a split pull onto a disk too small for the whole file: exit 5 before any segment, the whole size named", function()
  local fx, _, url, store = served("splitfull", 5000000, 97)
  local partial = store .. "/partial/other--splitfull/splitfull.bin.part"
  -- 3 MB free (tests/fixtures/diskfault.c): room for a segment of 1.25 MB, not for the 5 MB file.
  local env = t.fault_env { FREE_BYTES = "3000000" }
  fx.clear_log()
  local split = t.status(pull(store, { url, "-x", "4", "-q" }, { env = env }), 5, "pull -x 4")
  t.match(split.stderr, "need 5 MB, 3 MB free on ", "the whole file's size against what is free")
  for _, r in ipairs(fx.requests("^/f/splitfull%.bin$")) do
    t.eq(r.method, "HEAD", "no segment was asked for, only the HEAD that planned the split")
  end
  local st = require("modelget.core").stat(partial)
  t.ok(st == nil or st.size == 0, "no body byte written")
  t.ok(not t.exists(installed(store, "splitfull")), "nothing installed")
  local whole = t.status(pull(store, { url, "-q" }, { env = env }), 5, "pull on one connection")
  t.eq(split.stderr, whole.stderr, "the same message as on one connection")
end)

test("two split pulls at once where only one fits: the second is refused before writing, counting the first", function()
  local fx = servers.fixture()
  local a, b = t.bytes(3000000, 98), t.bytes(3000000, 99)
  local url_a, url_b = fx.put("splitpair-a.bin", a), fx.put("splitpair-b.bin", b)
  -- Both HEADs answered at once, every segment held until the second pull has been checked: the
  -- first split holds its whole 3 MB then, however late the second's HEAD comes (a pace set with
  -- --limit-rate was a guess: a HEAD a quarter of a second late found the first split all but done).
  for _, name in ipairs { "splitpair-a.bin", "splitpair-b.bin" } do
    fx.script(name, { { method = "GET", gate = "splitpair", ["repeat"] = true } })
  end
  local store = t.tmpdir("splitpair")
  local out = t.tmpdir("splitpair-out") .. "/events"
  -- 5 MB "free" (the shim keeps saying so: what is written does not lower it): room for one 3 MB file.
  local bg = t.spawn({ "pull", url_a, url_b, "--store", store, "--cacert", servers.ca().cert, "--framework", "other",
                       "-x", "4", "-j", "2", "--json" }, { stdout = out, env = t.fault_env { FREE_BYTES = "5000000" } })
  -- The second one checked: refused (an error event), or (broken) its segments under way too.
  local function checked()
    local text = t.read(out) or ""
    return text:find('"event":"error"', 1, true)
      or (text:find('"file":"splitpair%-a%.bin"') and text:find('"file":"splitpair%-b%.bin"'))
  end
  t.wait(checked, 30)
  fx.open_gate("splitpair")
  t.ok(t.wait(bg.status, 30), "the pull ended")
  t.eq(bg.status(), 5, "exit status")
  t.match(t.read(bg.stderr) or "", "need 3 MB, 5 MB free on .*, of which 3 MB is still to come for 1 other download",
    "counts the other split: all of it, as none of its segments has begun")
  local installed_n = 0
  for _, id in ipairs { "splitpair-a", "splitpair-b" } do
    if t.exists(installed(store, id)) then installed_n = installed_n + 1 end
  end
  t.eq(installed_n, 1, "one of them installed")
end)

test("a split's held space counts what its ranges have written: a download checked meanwhile is not refused for it", function()
  local fx = servers.fixture()
  local a, b = t.bytes(6000000, 100), t.bytes(1000000, 101)
  local url_a, url_b = fx.put("held-a.bin", a), fx.put("held-b.bin", b)
  -- a's four ranges stall 300000 bytes in, none of them in, until b has been checked and pulled;
  -- b's HEAD is held until a's plan says so. Events, not a pace (b's HEAD 3 s late, a at 1 MB/s).
  local stalled = {}
  for i = 1, 4 do stalled[i] = { method = "GET", stall = 300000, gate = "held-a" } end
  fx.script("held-a.bin", stalled)
  fx.script("held-b.bin", { { method = "HEAD", gate = "held-b" } })
  local store = t.tmpdir("held")
  local out = t.tmpdir("held-out") .. "/events"
  -- 6.5 MB "free" (the shim keeps saying so): a's 6 MB counted whole would leave no room for b.
  local bg = t.spawn({ "pull", url_a, url_b, "--store", store, "--cacert", servers.ca().cert, "--framework", "other",
                       "-x", "4", "-j", "2", "--retry-wait", "0.05", "--json" },
                     { stdout = out, env = t.fault_env { FREE_BYTES = "6500000" } })
  -- (b fits once a has written more than 0.5 MB: 1 MiB of the 1.2 MB sent, however the engine
  -- gathers its writes)
  t.ok(t.wait(function() return segment_bytes(store, "held-a") >= 1 * MiB end, 30), "a's ranges hold 1 MiB")
  fx.open_gate("held-b")
  -- b checked (and pulled, or refused), a's ranges still stalled: then they go on.
  t.wait(function()
    for line in (t.read(out) or ""):gmatch("[^\n]+\n") do -- whole lines only
      local ev = cjson.decode(line)
      if ev.event == "error" or (ev.event == "done" and ev.id == "held-b") then return true end
    end
  end, 30)
  fx.open_gate("held-a")
  t.ok(t.wait(bg.status, 30), "the pull ended")
  t.eq(bg.status(), 0, "both pulled: " .. (t.read(bg.stderr) or ""))
  t.eq(t.sha256_file(installed(store, "held-a")), t.sha256(a), "a")
  t.eq(t.sha256_file(installed(store, "held-b")), t.sha256(b), "b")
end)
