-- The transfer engine (modelget.Session / modelget.Transfer) against real loopback servers:
-- bytes on disk, their SHA-256, the result's fields and the request headers the servers logged.
local t = require "t"
local core = require "modelget.core"
local servers = require "servers"

local function session(opts)
  opts = opts or {}
  if opts.cacert == nil then opts.cacert = servers.ca().cert end
  if opts.cacert == false then opts.cacert = nil end
  local s = core.session(opts)
  t.defer_case(function() s:close() end)
  return s
end

-- Drives the session until every given transfer is done; returns the transfers' results.
local function drive(s, list, limit)
  local deadline = core.now() + (limit or 60)
  local pending = #list
  local finished = {}
  while pending > 0 do
    s:perform(0.2)
    for _, tr in ipairs(s:finished()) do finished[tr] = true; pending = pending - 1 end
    if core.now() > deadline then error("transfers did not finish in time", 2) end
  end
  local results = {}
  for i, tr in ipairs(list) do
    t.ok(finished[tr], "transfer " .. i .. " reported by finished()")
    results[i] = tr:result()
  end
  return results
end

-- Drives the session until cond() holds; fails after limit seconds (30).
local function until_(s, cond, limit)
  local deadline = core.now() + (limit or 30)
  while not cond() do
    s:perform(0.05)
    if core.now() > deadline then error("condition not reached in time", 2) end
  end
end

-- One transfer to its end: its result.
local function fetch(opts, sopts)
  local s = session(sopts)
  local tr = s:add(opts)
  local r = drive(s, { tr })[1]
  tr:close()
  return r
end

local function size_of(path)
  local st = core.stat(path)
  return st and st.size
end

local function read_state(partial)
  local text = t.read(partial .. ".state")
  if not text then return nil end
  local st = { ranges = {} }
  for line in text:gmatch("[^\n]+") do
    local k, v = line:match("^(%S+) (.*)$")
    if k == "range" then
      local a, b, done = v:match("^(%d+) (%S+) (%d+)$")
      st.ranges[#st.ranges + 1] = { start = tonumber(a), stop = b, done = tonumber(done) }
    elseif k then
      st[k] = v
    end
  end
  return st
end

-- Plain download -------------------------------------------------------------------------------

test("a plain download from nginx lands on disk with the right sha256", function()
  local ng = servers.nginx()
  local data = t.bytes(3 * 1024 * 1024 + 5, 11)
  local url = ng.put("plain/transfer-model.bin", data) -- a path no other test asks for
  local dir = t.tmpdir("plain")
  local partial = dir .. "/sub/folder/model.bin.part"
  local r = fetch { url = url, partial = partial }
  t.eq(r.ok, true, "ok")
  t.eq(r.status, 200, "status")
  t.eq(r.code, nil, "no code")
  t.eq(r.bytes, #data, "bytes")
  t.eq(r.sha256, t.sha256(data), "sha256 of the stream")
  t.eq(t.sha256_file(partial), t.sha256(data), "sha256 of the file on disk")
  t.eq(r.resumed_from, 0, "nothing resumed")
  t.eq(r.restart, false, "no restart")
  t.eq(r.effective_url, url, "effective url")
  t.match(r.etag, '^"', "etag")
  t.ok(r.last_modified, "last-modified")
  t.eq(r.headers["content-length"], tostring(#data), "final response headers, lower-case names")
  t.eq(r.state_file, true, "the result says a state file was written")
  local st = read_state(partial)
  t.eq(st.url, url, "state: url")
  t.eq(st.total, tostring(#data), "state: total")
  t.eq(st.ranges[1].done, #data, "state: the whole range done")
  local mine
  ng.log(function(log)
    for _, e in ipairs(log) do if e.path == "/plain/transfer-model.bin" then mine = e end end
    return mine
  end)
  t.ok(mine, "nginx logged the request")
  t.eq(mine.protocol, "HTTP/2.0", "HTTP/2 over TLS")
  t.eq(mine.range, nil, "no Range on a fresh download")
end)

test("plain http:// to loopback works; an empty file too", function()
  local ng = servers.nginx()
  ng.put("plain/empty.bin", "")
  local dir = t.tmpdir("plainhttp")
  local r = fetch { url = ng.http_url .. "/plain/empty.bin", partial = dir .. "/empty" }
  t.eq(r.ok, true, "ok")
  t.eq(r.bytes, 0, "bytes")
  t.eq(r.sha256, t.sha256(""), "sha256 of nothing")
  t.eq(t.read(dir .. "/empty"), "", "an empty file on disk")
  t.eq(r.state_file, false, "a small body in one attempt writes no state file")
  t.ok(not t.exists(dir .. "/empty.state"), "and there is none")
end)

-- Resume ---------------------------------------------------------------------------------------

-- A file of `size` bytes on the fixture server: the server, the bytes, the URL and a partial path.
local function fixture_file(name, size)
  local fx = servers.fixture()
  local data = t.bytes(size, size % 97)
  return fx, data, fx.put(name, data), t.tmpdir(name) .. "/" .. name
end

-- A first attempt on the fixture server cut after `cut` bytes; later requests get the behaviours in ....
local function cut_attempt(name, size, cut, ...)
  local fx, data, url, partial = fixture_file(name, size)
  fx.script(name, { { cut = cut }, ... })
  fx.clear_log()
  local first = fetch { url = url, partial = partial }
  t.eq(first.ok, false, "first attempt fails")
  t.eq(size_of(partial), cut, "the bytes before the cut are kept")
  return fx, data, url, partial, first
end

test("a cut connection, then a new transfer resumes with Range and If-Range", function()
  local fx, data, url, partial, first = cut_attempt("resume.bin", 600000, 200000)
  t.eq(first.code, "ENET", "code")
  t.eq(first.retryable, true, "a cut is retryable")
  t.match(first.message, "^127%.0%.0%.1: connection cut after 200 KB of 600 KB$", "message")
  t.eq(read_state(partial).ranges[1].done, 200000, "state records them")

  local second = fetch { url = url, partial = partial }
  t.eq(second.ok, true, "second attempt")
  t.eq(second.status, 206, "partial content")
  t.eq(second.resumed_from, 200000, "resumed_from")
  t.eq(second.restart, false, "no restart")
  t.eq(second.bytes, #data, "bytes")
  t.eq(second.sha256, t.sha256(data), "sha256 covers the kept prefix too")
  t.eq(second.state_file, true, "a resumed small body has the state file of its first attempt")
  t.eq(t.sha256_file(partial), t.sha256(data), "file on disk")
  local reqs = fx.requests("^/f/resume%.bin$")
  t.eq(#reqs, 2, "two requests")
  t.eq(reqs[1].headers.range, nil, "first: no Range")
  t.eq(reqs[2].headers.range, "bytes=200000-", "second: Range from the kept bytes")
  t.eq(reqs[2].headers["if-range"], first.etag, "second: If-Range with the ETag")
end)

test("a server that ignores Range: the transfer restarts from zero", function()
  local fx, data, url, partial = cut_attempt("ignore.bin", 300000, 100000, { ignore_range = true })
  local r = fetch { url = url, partial = partial }
  t.eq(r.ok, true, "ok")
  t.eq(r.status, 200, "whole body")
  t.eq(r.restart, true, "restart")
  t.eq(r.resumed_from, 0, "nothing resumed")
  t.eq(r.sha256, t.sha256(data), "sha256")
  t.eq(t.read(partial), data, "bytes right, not appended")
  t.eq(fx.requests("^/f/ignore")[2].headers.range, "bytes=100000-", "Range was asked for")
end)

test("the file changed on the server between attempts: If-Range fails, the new file comes whole", function()
  local v2 = t.bytes(250000, 15)
  servers.fixture().put("changing-v2.bin", v2)
  local _, _, url, partial, first = cut_attempt("changing.bin", 300000, 120000, { content = "changing-v2.bin" })
  local r = fetch { url = url, partial = partial }
  t.eq(r.ok, true, "ok")
  t.eq(r.restart, true, "restart")
  t.eq(r.bytes, #v2, "bytes of the new file")
  t.eq(r.sha256, t.sha256(v2), "sha256 of the new file")
  t.eq(t.read(partial), v2, "bytes on disk")
  t.ok(r.etag ~= first.etag, "another etag")
  t.eq(read_state(partial).etag, r.etag, "state holds the new validator")
end)

test("a server that ignores If-Range sends a range of a changed file: detected, dropped, fetched whole", function()
  local v2 = t.bytes(280000, 18)
  servers.fixture().put("broken-v2.bin", v2)
  -- From the second request on, the server has the new version.
  local fx, _, url, partial, first = cut_attempt("broken.bin", 300000, 120000,
    { content = "broken-v2.bin", ignore_if_range = true }, { content = "broken-v2.bin" })
  local second = fetch { url = url, partial = partial }
  t.eq(second.ok, false, "a range of another version is refused")
  t.eq(second.retryable, true, "retryable")
  t.match(second.message, "the file changed on the server", "message")
  t.eq(size_of(partial) or 0, 0, "the kept bytes of the old version are dropped")
  local third = fetch { url = url, partial = partial }
  t.eq(third.ok, true, "the next attempt")
  t.eq(third.status, 200, "asks for the whole file")
  t.eq(third.sha256, t.sha256(v2), "sha256 of the new version, nothing spliced")
  t.eq(t.read(partial), v2, "bytes on disk")
  local reqs = fx.requests("^/f/broken%.bin$")
  t.eq(reqs[2].headers["if-range"], first.etag, "the second asked with the old validator")
  t.eq(reqs[3].headers.range, nil, "the third asked for no range")
end)

test("a ranged transfer fetches bytes a-b of a file into a partial of its own, resumably, and nothing else", function()
  local fx, data, url = fixture_file("ranged.bin", 100000)
  local dir = t.tmpdir("ranged")
  local etag = fetch({ url = url, head = true }).etag
  t.ok(etag, "the file has an ETag")
  local seg = { url = url, partial = dir .. "/seg", range = { 20000, 59999 }, whole_size = 100000, validator = etag }
  fx.script("ranged.bin", { { cut = 10000 } })
  fx.clear_log()
  local first = fetch(seg)
  t.eq(first.ok, false, "cut")
  t.eq(size_of(seg.partial), 10000, "the bytes before the cut are kept")
  local r = fetch(seg)
  t.eq(r.ok, true, "resumed")
  t.eq(r.bytes, 40000, "the range's bytes")
  t.eq(t.read(seg.partial), data:sub(20001, 60000), "bytes 20000-59999 on disk")
  local reqs = fx.requests("^/f/ranged%.bin$")
  t.eq(reqs[1].headers.range, "bytes=20000-59999", "the range asked for")
  t.eq(reqs[1].headers["if-range"], etag, "with the version's validator")
  t.eq(reqs[2].headers.range, "bytes=30000-59999", "the resume asks for the rest of the range only")
  -- A server that ignores Range, or a file that changed (If-Range fails: the whole new file comes).
  fx.script("ranged.bin", { { ignore_range = true } })
  local whole = fetch { url = url, partial = dir .. "/seg2", range = { 0, 49999 }, whole_size = 100000, validator = etag }
  t.eq(whole.ok, false, "a whole body is refused")
  t.eq(whole.range_refused, true, "range_refused")
  t.eq(whole.retryable, false, "not retried: the split is given up")
  local other = fetch { url = url, partial = dir .. "/seg3", range = { 0, 49999 }, whole_size = 100000,
                        validator = '"another-version"' }
  t.eq(other.range_refused, true, "another version is refused")
  t.ok(not pcall(fetch, { url = url, partial = dir .. "/x", range = { 10, 5 } }), "a range backwards is misuse")
end)

test("ranges written in place share one file: each at its offset, a cut one resumed from what is on disk", function()
  local fx, data, url = fixture_file("inplace.bin", 300000)
  local dir = t.tmpdir("inplace")
  local etag = fetch({ url = url, head = true }).etag
  local file = dir .. "/whole"
  local function range(from, to, done)
    return { url = url, partial = file, range = { from, to }, shared = true, done = done, whole_size = 300000,
             validator = etag }
  end
  -- The second range first, and cut: what it wrote is at its own offset, reported as on disk.
  fx.script("inplace.bin", { { cut = 50000 } })
  local cut = fetch(range(150000, 299999, 0))
  t.eq(cut.ok, false, "cut")
  t.eq(cut.on_disk, 50000, "on_disk: the bytes of the range written")
  t.eq(cut.sha256, nil, "a range in place is not hashed")
  local first = fetch(range(0, 149999, 0))
  t.eq(first.ok, true, "the first range")
  t.eq(first.on_disk, 150000, "all of it")
  local rest = fetch(range(150000, 299999, cut.on_disk))
  t.eq(rest.ok, true, "the second range, resumed")
  t.eq(t.read(file), data, "the file, whole, from the two ranges")
  t.ok(not t.exists(file .. ".state"), "no state file: the caller keeps the plan")
  local reqs = fx.requests("^/f/inplace%.bin$")
  t.eq(reqs[#reqs].headers.range, "bytes=200000-299999", "the resume asked from what was on disk")
  t.ok(not pcall(fetch, range(0, 9, 11)), "done past the range is misuse")
  t.ok(not pcall(fetch, { url = url, partial = file, shared = true }), "shared without a range is misuse")
end)

test("a big kept prefix: re-hashed in steps, abandoned on a restart, resumed again", function()
  local fx = servers.fixture()
  local size = 40 * 1000 * 1000
  assert(os.execute("head -c " .. size .. " /dev/urandom > " .. t.shquote(fx.root .. "/files/bigkept.bin")))
  local want = core.sha256_file(fx.root .. "/files/bigkept.bin")
  local url = fx.url .. "/f/bigkept.bin"
  local partial = t.tmpdir("bigkept") .. "/big"
  fx.script("bigkept.bin", { { cut = 36000000 }, { ignore_range = true, cut = 37000000 } })
  t.eq(fetch({ url = url, partial = partial }).ok, false, "cut")
  t.eq(size_of(partial), 36000000, "kept")
  local second = fetch { url = url, partial = partial }
  t.eq(second.ok, false, "cut again")
  t.eq(second.restart, true, "the server ignored Range: the kept prefix was dropped")
  t.eq(size_of(partial), 37000000, "the new bytes")
  fx.clear_log()
  local r = fetch { url = url, partial = partial }
  t.eq(r.ok, true, "ok")
  t.eq(r.resumed_from, 37000000, "resumed")
  t.eq(r.sha256, want, "sha256 over a prefix hashed in steps and the new bytes")
  t.eq(core.sha256_file(partial), want, "file on disk")
  t.eq(fx.requests("^/f/bigkept")[1].headers.range, "bytes=37000000-", "Range")
end)

test("kept bytes the server cannot serve (416): start over, retryable", function()
  local fx, data, url, partial = fixture_file("shrunk.bin", 100000)
  -- A partial from a longer file with the same validator: the server answers bytes=150000- with 416.
  t.write(partial, t.bytes(150000, 16))
  t.write(partial .. ".state", table.concat({ "modelget-partial 1", "url " .. url, 'etag "same"',
    "total 200000", "range 0 200000 150000", "" }, "\n"))
  fx.script("shrunk.bin", { { etag = '"same"' } })
  local r = fetch { url = url, partial = partial }
  t.eq(r.ok, false, "fails")
  t.eq(r.status, 416, "status")
  t.eq(r.retryable, true, "retryable")
  t.eq(r.restart, true, "restart")
  t.match(r.message, "HTTP 416", "message")
  t.eq(t.exists(partial), false, "kept data dropped")
  local again = fetch { url = url, partial = partial }
  t.eq(again.ok, true, "next attempt")
  t.eq(again.sha256, t.sha256(data), "sha256")
end)

test("a state for another URL, or without a validator, starts over", function()
  local fx, data, url, partial = fixture_file("other.bin", 50000)
  for _, state in ipairs {
    { "modelget-partial 1", "url " .. url .. "?other", 'etag "x"', "total 50000", "range 0 50000 20000", "" },
    { "modelget-partial 1", "url " .. url, "total 50000", "range 0 50000 20000", "" },
  } do
    t.write(partial, string.rep("z", 20000))
    t.write(partial .. ".state", table.concat(state, "\n"))
    fx.clear_log()
    local r = fetch { url = url, partial = partial }
    t.eq(r.ok, true, "ok")
    t.eq(r.resumed_from, 0, "nothing resumed")
    t.eq(t.read(partial), data, "fresh bytes")
    t.eq(fx.requests("^/f/other")[1].headers.range, nil, "no Range")
  end
end)

test("a prefix as long as the whole file is checked with the server, not trusted", function()
  -- Past the engine's STATE_MIN (256 KiB): a smaller file finished keeps no state (it is re-fetched).
  local fx, data, url, partial = fixture_file("complete.bin", 300000)
  t.eq(fetch({ url = url, partial = partial }).ok, true, "first download")
  fx.clear_log()
  local r = fetch { url = url, partial = partial }
  t.eq(r.ok, true, "ok")
  t.eq(r.resumed_from, #data - 1, "all but the last byte kept")
  t.eq(r.sha256, t.sha256(data), "sha256")
  local req = fx.requests("^/f/complete")[1]
  t.eq(req.headers.range, "bytes=299999-", "asks for the last byte")
  t.match(req.headers["if-range"], '^"', "with the validator")
end)

test("a small file finished keeps no state; a small prefix cut off is still kept", function()
  local fx, data, url, partial = fixture_file("small-complete.bin", 80000)
  t.eq(fetch({ url = url, partial = partial }).ok, true, "first download")
  t.eq(read_state(partial), nil, "no state for 80 kB")
  fx.clear_log()
  local r = fetch { url = url, partial = partial }
  t.eq(r.resumed_from, 0, "fetched again, whole")
  t.eq(r.sha256, t.sha256(data), "sha256")
  t.eq(fx.requests("^/f/small%-complete")[1].headers.range, nil, "no Range")
end)

-- Failures -------------------------------------------------------------------------------------

test("a stall is retryable and says how long nothing came", function()
  local fx = servers.fixture()
  local url = fx.put("stall.bin", t.bytes(100000, 19))
  fx.script("stall.bin", { { stall = 5000, seconds = 20 } })
  local partial = t.tmpdir("stall") .. "/stall.bin"
  local r = fetch { url = url, partial = partial, stall_timeout = 1 }
  t.eq(r.ok, false, "fails")
  t.eq(r.code, "ENET", "code")
  t.eq(r.retryable, true, "retryable")
  t.eq(r.message, "127.0.0.1: no data for 1 s", "message")
  t.eq(size_of(partial), 5000, "bytes before the stall kept")
end)

test("a response header too large to read is final and said as such, not as memory running out", function()
  local fx = servers.fixture()
  local url = fx.put("bighead.bin", t.bytes(1000, 45))
  fx.script("bighead.bin", { { headers = { { "X-Padding", string.rep("a", 200 * 1024) } } } })
  local r = fetch { url = url, partial = t.tmpdir("bighead") .. "/bighead.bin" }
  t.eq(r.ok, false, "fails")
  t.eq(r.code, "ENET", "code")
  t.eq(r.retryable, false, "the server says the same again")
  t.match(r.message, "^127%.0%.0%.1: a response header too large to read %(", "message")
end)

test("404 is final; 503 and 429 are retryable with Retry-After in seconds or as a date", function()
  local fx = servers.fixture()
  local dir = t.tmpdir("status")
  local missing = fetch { url = fx.url .. "/f/absent.bin", partial = dir .. "/absent" }
  t.eq(missing.ok, false, "404 fails")
  t.eq(missing.status, 404, "status")
  t.eq(missing.code, "ENET", "code")
  t.eq(missing.retryable, false, "not retryable")
  t.eq(missing.message, "127.0.0.1: HTTP 404", "message")
  t.eq(t.exists(dir .. "/absent"), false, "no file for an error")

  local url = fx.put("busy.bin", "payload")
  local when = os.date("!%a, %d %b %Y %H:%M:%S GMT", os.time() + 100)
  fx.script("busy.bin", { { status = 503, retry_after = 7 }, { status = 429, retry_after = when },
    { status = 410 }, { status = 401 }, { status = 403 } })
  local busy = fetch { url = url, partial = dir .. "/busy" }
  t.eq(busy.status, 503, "503")
  t.eq(busy.retryable, true, "503 retryable")
  t.eq(busy.retry_after, 7, "Retry-After seconds")
  t.eq(busy.message, "127.0.0.1: HTTP 503", "message")
  local many = fetch { url = url, partial = dir .. "/busy" }
  t.eq(many.status, 429, "429")
  t.eq(many.retryable, true, "429 retryable")
  t.ok(many.retry_after >= 95 and many.retry_after <= 100, "Retry-After as an HTTP date: " .. many.retry_after)
  local gone = fetch { url = url, partial = dir .. "/busy" }
  t.eq(gone.retryable, false, "410 final")
  local unauth = fetch { url = url, partial = dir .. "/busy" }
  t.eq(unauth.code, "EAUTH", "401 code")
  t.eq(unauth.retryable, false, "401 final")
  local refused = fetch { url = url, partial = dir .. "/busy" }
  t.eq(refused.code, "EAUTH", "403 code")
  t.eq(refused.retryable, false, "403 final")
  t.eq(fetch({ url = url, partial = dir .. "/busy" }).ok, true, "then it works")
  t.eq(t.read(dir .. "/busy"), "payload", "body")
end)

test("more bytes announced than free space: ESPACE before any body byte is written", function()
  local fx = servers.fixture()
  local url = fx.put("huge.bin", t.bytes(5000, 20))
  fx.script("huge.bin", { { announce = 10 ^ 15 // 1 } })
  local dir = t.tmpdir("space")
  local partial = dir .. "/huge.bin"
  local r = fetch { url = url, partial = partial }
  t.eq(r.ok, false, "fails")
  t.eq(r.code, "ESPACE", "code")
  t.eq(r.retryable, false, "not retryable")
  t.match(r.message, "^need 1 PB, [%d.]+ [KMGTP]?B free on " .. dir:gsub("%p", "%%%0") .. "$", "message")
  t.eq(#t.tree(dir), 0, "nothing written")
end)

test("space_factor and space_path take part in the storage check", function()
  local fx = servers.fixture()
  local url = fx.put("factor.bin", t.bytes(4000, 21))
  local dir = t.tmpdir("factor")
  local free = core.free_space(dir)
  local r = fetch { url = url, partial = dir .. "/f.bin", space_factor = free / 1000, space_path = dir .. "/x/y" }
  t.eq(r.code, "ESPACE", "factor × 4000 bytes exceeds what is free")
  t.match(r.message, "free on " .. dir:gsub("%p", "%%%0") .. "/x/y$", "names the space_path")
  t.eq(fetch({ url = url, partial = dir .. "/f.bin", space_factor = 2 }).ok, true, "a sane factor passes")
end)

test("the storage check counts what the session's other downloads still have to write", function()
  local fx = servers.fixture()
  local dir = t.tmpdir("promised")
  local big = math.floor(core.free_space(dir) * 0.6) -- each fits alone, the two together do not
  local url_a = fx.put("promised-a.bin", t.bytes(4000, 31))
  local url_b = fx.put("promised-b.bin", t.bytes(4000, 32))
  fx.script("promised-a.bin", { { announce = big, stall = 512, seconds = 30 } })
  fx.script("promised-b.bin", { { announce = big }, { announce = big } })
  local s = session { jobs = 4 }
  local ta = s:add { url = url_a, partial = dir .. "/a.bin" }
  until_(s, function() return ta:progress().completed >= 512 end, 20) -- the first one has started
  local tb = s:add { url = url_b, partial = dir .. "/b.bin" }
  local rb = drive(s, { tb })[1]
  t.eq(rb.code, "ESPACE", "the second is refused: the first still has most of its bytes to come")
  t.match(rb.message, "of which [%d.]+ [KMGTP]?B is still to come for 1 other download$", "message")
  t.eq(size_of(dir .. "/b.bin") or 0, 0, "nothing of it written")
  tb:close()
  ta:cancel()
  drive(s, { ta })
  ta:close()
  -- Alone, the same announce passes the check (and fails later, as the body is cut short).
  local alone = fetch { url = url_b, partial = dir .. "/b.bin" }
  t.eq(alone.code, "ENET", "alone: past the storage check")
end)

test("a certificate the CA bundle does not vouch for is final", function()
  local ng = servers.nginx()
  local url = ng.put("cert.bin", "x")
  local r = fetch({ url = url, partial = t.tmpdir("cert") .. "/x" }, { cacert = false })
  t.eq(r.ok, false, "fails")
  t.eq(r.code, "ENET", "code")
  t.eq(r.retryable, false, "not retryable")
  t.match(r.message, "^127%.0%.0%.1: certificate verify failed", "message")
end)

-- Policy and credentials -----------------------------------------------------------------------

test("plain http:// to another host is refused before any connection", function()
  local s = session()
  local tr = s:add { url = "http://example.com/model.bin", partial = t.tmpdir("policy") .. "/m" }
  t.eq(tr:progress().state, "done", "finished at once")
  local r = drive(s, { tr }, 5)[1]
  t.eq(r.ok, false, "refused")
  t.eq(r.code, "EPOLICY", "code")
  t.eq(r.retryable, false, "not retryable")
  t.match(r.message, "http://example%.com/model%.bin", "names the URL")
  t.eq(r.status, nil, "no response")
  local ftp = fetch { url = "ftp://127.0.0.1/x", memory = 10 }
  t.eq(ftp.code, "EPOLICY", "other schemes too")
end)

test("plain http:// is allowed to exactly the loopback hosts", function()
  -- Port 1 is closed: an allowed URL fails to connect (ENET), a refused one never tries (EPOLICY).
  local cases = {
    ["http://127.0.0.1:1/x"] = "ENET", ["http://127.8.9.10:1/x"] = "ENET", ["http://[::1]:1/x"] = "ENET",
    ["http://localhost:1/x"] = "ENET", ["http://LOCALHOST:1/x"] = "ENET",
    -- Not a name libcurl resolves itself: the system's resolver (DNS) would say where it is.
    ["http://localhost.:1/x"] = "EPOLICY", ["http://LOCALHOST.:1/x"] = "EPOLICY",
    ["http://128.0.0.1:1/x"] = "EPOLICY", ["http://localhost.example.com:1/x"] = "EPOLICY",
    ["http://127.0.0.1.example.com:1/x"] = "EPOLICY", ["http://[::2]:1/x"] = "EPOLICY",
    ["http://10.0.0.1:1/x"] = "EPOLICY", ["file:///etc/passwd"] = "EPOLICY", ["not a url"] = "EPOLICY",
  }
  local s = session { connect_timeout = 5 }
  local list, urls = {}, {}
  for url in pairs(cases) do
    urls[#urls + 1] = url
    list[#list + 1] = s:add { url = url, memory = 10 }
  end
  for i, r in ipairs(drive(s, list)) do
    t.eq(r.code, cases[urls[i]], urls[i])
  end
end)

test("a redirect the policy refuses: EPOLICY naming where from and where to, credentials and query never shown", function()
  local fx = servers.fixture()
  local cases = {
    { "hop.bin", "http://user:pw@example.com/next?sig=secret",
      "refused http://example%.com/next: plain http:// is allowed only to loopback hosts" },
    { "hop-file.bin", "file://user:pw@/etc/passwd?sig=secret", "refused file:///etc/passwd: not an https:// URL with a host$" },
  }
  for _, c in ipairs(cases) do
    local url = fx.put(c[1], "x")
    fx.script(c[1], { { redirect = c[2] } })
    local r = fetch { url = url, memory = 100 }
    t.eq(r.code, "EPOLICY", "code for " .. c[2])
    t.match(r.message, "^redirect from " .. url:gsub("%p", "%%%0") .. " " .. c[3], "names both ends: " .. c[2])
    t.nomatch(r.message, "pw", "no password")
    t.nomatch(r.message, "secret", "no query")
  end
end)

test("the credential goes to its host only: dropped on a redirect to the other host name", function()
  local fx = servers.fixture()
  local data = t.bytes(70000, 22)
  fx.put("auth-c.bin", data)
  local url = fx.put("auth-a.bin", "first")
  fx.script("auth-a.bin", { { redirect = fx.url .. "/f/auth-b.bin", status = 301 } })
  fx.script("auth-b.bin", { { redirect = fx.url_localhost .. "/f/auth-c.bin", status = 307 } })
  fx.clear_log()
  local r = fetch { url = url, partial = t.tmpdir("auth") .. "/c.bin",
    headers = { "X-Probe: 1" }, auth = { header = "Authorization: Bearer hf_secret", host = "127.0.0.1" } }
  t.eq(r.ok, true, "ok")
  t.eq(r.sha256, t.sha256(data), "the redirected content")
  t.eq(r.effective_url, fx.url_localhost .. "/f/auth-c.bin", "effective url")
  local a, b, c = fx.requests("^/f/auth%-a")[1], fx.requests("^/f/auth%-b")[1], fx.requests("^/f/auth%-c")[1]
  t.eq(a.headers.authorization, "Bearer hf_secret", "first host got it")
  t.eq(b.headers.authorization, "Bearer hf_secret", "same host after a redirect got it")
  t.eq(c.headers.authorization, nil, "the other host did not")
  t.eq(c.headers["x-probe"], "1", "plain headers follow every hop")
  t.match(c.host, "^localhost:", "the other host")
end)

test("IPv6 loopback: fetched from https://[::1]:P and http://[::1]:P; a credential for 127.0.0.1 dropped on a redirect to [::1]", function()
  local fx = servers.fixture()
  -- A machine without ::1 fails this test, saying so: an untested path is not a passed one.
  t.ok(fx.ipv6, "this machine has no IPv6 loopback (::1): the fixture server could not listen there")
  local data = t.bytes(70000, 25)
  fx.put("v6-b.bin", data)
  local url = fx.put("v6-a.bin", "first")
  fx.script("v6-a.bin", { { redirect = fx.url6 .. "/f/v6-b.bin", status = 302 } })
  fx.clear_log()
  local r = fetch { url = url, partial = t.tmpdir("v6") .. "/b.bin",
    auth = { header = "Authorization: Bearer hf_secret", host = "127.0.0.1" } }
  t.eq(r.ok, true, "ok")
  t.eq(r.sha256, t.sha256(data), "the bytes from ::1")
  t.eq(r.effective_url, fx.url6 .. "/f/v6-b.bin", "effective url")
  t.eq(fx.requests("^/f/v6%-a")[1].headers.authorization, "Bearer hf_secret", "127.0.0.1 got it")
  local b = fx.requests("^/f/v6%-b")[1]
  t.eq(b.host, "[::1]:" .. fx.port, "asked of ::1")
  t.eq(b.headers.authorization, nil, "::1 is another host: no credential")
  local plain = fetch { url = "http://[::1]:" .. fx.http_port .. "/f/v6-b.bin", memory = 100000 }
  t.eq(plain.ok, true, "plain http:// to ::1 is loopback")
  t.eq(plain.sha256, t.sha256(data), "its bytes")
end)

test("the credential goes to its origin only: dropped on a redirect to its host on another port or scheme", function()
  local fx, other = servers.fixture(), servers.other_fixture()
  local data = t.bytes(70000, 24)
  -- https://127.0.0.1:P (the credential's) -> http://127.0.0.1:P2 -> https://127.0.0.1:Q (another server)
  local url = fx.put("origin-a.bin", "first")
  fx.put("origin-b.bin", "second")
  local last = other.put("origin-c.bin", data)
  fx.script("origin-a.bin", { { redirect = fx.http_url .. "/f/origin-b.bin", status = 302 } })
  fx.script("origin-b.bin", { { redirect = last, status = 307 } })
  fx.clear_log()
  other.clear_log()
  local r = fetch { url = url, partial = t.tmpdir("origin") .. "/c.bin",
    auth = { header = "Authorization: Bearer hf_secret", scheme = "https", host = "127.0.0.1", port = fx.port } }
  t.eq(r.ok, true, "ok")
  t.eq(r.sha256, t.sha256(data), "the redirected content")
  t.eq(r.effective_url, last, "effective url")
  local a, b, c = fx.requests("^/f/origin%-a")[1], fx.requests("^/f/origin%-b")[1], other.requests("^/f/origin%-c")[1]
  t.eq(a.headers.authorization, "Bearer hf_secret", "its origin got it")
  t.eq(b.scheme .. " " .. b.host, "http 127.0.0.1:" .. fx.http_port, "the second hop: plain http, another port")
  t.eq(b.headers.authorization, nil, "plain http:// to the same host did not")
  t.eq(c.scheme .. " " .. c.host, "https 127.0.0.1:" .. other.port, "the third hop: https, another port")
  t.eq(c.headers.authorization, nil, "the same host on another port did not")
end)

test("a header with CR, LF or NUL in it is misuse: raised, naming the option and entry; nothing is sent", function()
  local fx = servers.fixture()
  local data = t.bytes(5000, 27)
  local url = fx.put("inject.bin", data)
  fx.clear_log()
  local s = session()
  local partial = t.tmpdir("inject") .. "/x.bin"
  for _, case in ipairs { { "CRLF", "\r\n" }, { "LF", "\n" }, { "CR", "\r" }, { "NUL", "\0" } } do
    local name, cut = case[1], case[2]
    local line = "X-A: b" .. cut .. "X-Injected: yes"
    local ok, err = pcall(s.add, s, { url = url, partial = partial, headers = { "X-Probe: 1", line } })
    t.eq(ok, false, name .. " in a header raised")
    t.eq(err, "option 'headers': entry 2 holds CR, LF or NUL (one header a line)", name .. ": message")
    ok, err = pcall(s.add, s, { url = url, partial = partial,
      auth = { header = "Authorization: Bearer x" .. cut .. "X-Injected: yes", host = "127.0.0.1" } })
    t.eq(ok, false, name .. " in the credential raised")
    t.eq(err, "option 'auth': 'header' holds CR, LF or NUL (one header a line)", name .. ": message")
  end
  t.eq(s:active(), 0, "nothing queued")
  s:perform(0.2)
  t.eq(#fx.requests("^/f/inject"), 0, "no request was sent")
  -- The same headers, one a line, go out as given.
  local r = fetch { url = url, partial = partial, headers = { "X-Probe: 1", "X-A: b" } }
  t.eq(r.sha256, t.sha256(data), "fetched")
  local sent = fx.requests("^/f/inject")
  t.eq(#sent, 1, "one request")
  t.eq(sent[1].headers["x-a"], "b", "the header as given")
  t.eq(sent[1].headers["x-injected"], nil, "nothing added")
end)

test("too many redirects is final", function()
  local fx = servers.fixture()
  local url = fx.put("loop.bin", "x")
  fx.script("loop.bin", { { redirect = url, ["repeat"] = true } })
  local r = fetch({ url = url, memory = 100 }, { max_redirects = 3 })
  t.eq(r.ok, false, "fails")
  t.eq(r.retryable, false, "final")
  t.match(r.message, "more than 3 redirects", "message")
  t.eq(#fx.requests("^/f/loop"), 4, "the first request and three hops")
  fx.script("loop.bin", {})
end)

test("Hub redirects: X-Linked-Etag and X-Linked-Size from the hop, the blob from the CDN", function()
  local fx = servers.fixture()
  local data = t.bytes(1500000, 23)
  fx.hub_put("org/linked", "w.gguf", data)
  local r = fetch { url = fx.url .. "/org/linked/resolve/main/w.gguf", partial = t.tmpdir("linked") .. "/w" }
  t.eq(r.ok, true, "ok")
  t.eq(r.linked_etag, t.sha256(data), "linked_etag without quotes")
  t.eq(r.linked_size, #data, "linked_size")
  t.eq(r.sha256, t.sha256(data), "sha256")
  t.match(r.effective_url, "^https://localhost:%d+/cdn/", "CDN url")
end)

-- Control --------------------------------------------------------------------------------------

-- A rate-capped download of `size` bytes from server, driven until more than `past` bytes arrived.
local function slow_download(server, name, size, rate, past)
  local data = t.bytes(size, #name)
  local url = server.put(name, data)
  local partial = t.tmpdir(name) .. "/" .. name
  local s = session { limit_rate = rate }
  local tr = s:add { url = url, partial = partial }
  until_(s, function() return tr:progress().completed > past end)
  return { s = s, tr = tr, data = data, url = url, partial = partial }
end

test("pause holds the bytes, with speed 0 and no eta; resume completes the download", function()
  local d = slow_download(servers.nginx(), "pause.bin", 2000000, 1000000, 100000)
  local s, tr, data, partial = d.s, d.tr, d.data, d.partial
  tr:pause()
  local held = tr:progress().completed
  t.eq(tr:progress().state, "paused", "state")
  local until_t = core.now() + 0.8
  while core.now() < until_t do s:perform(0.1) end
  t.eq(tr:progress().completed, held, "no bytes while paused")
  t.eq(tr:progress().speed, 0, "no speed while paused")
  t.eq(tr:progress().eta, nil, "no eta while paused")
  tr:resume()
  t.eq(tr:progress().state, "running", "running again")
  local r = drive(s, { tr })[1]
  t.eq(r.ok, true, "ok")
  t.eq(r.sha256, t.sha256(data), "sha256")
  t.eq(t.sha256_file(partial), t.sha256(data), "file")
end)

test("cancel keeps the partial for a later resume; cancel(true) removes it", function()
  local fx = servers.fixture()
  local d = slow_download(fx, "cancel.bin", 1000000, 400000, 100000)
  local s, tr, data, url, partial = d.s, d.tr, d.data, d.url, d.partial
  tr:cancel()
  local fin = s:finished()
  t.eq(fin[1], tr, "reported as finished")
  local r = tr:result()
  t.eq(r.ok, false, "not ok")
  t.eq(r.code, "ECANCEL", "code")
  t.eq(r.retryable, false, "not retryable")
  local kept = size_of(partial)
  t.ok(kept and kept > 100000, "partial kept")
  t.eq(read_state(partial).ranges[1].done, kept, "state written at the end of the attempt")
  fx.clear_log()
  local again = fetch { url = url, partial = partial }
  t.eq(again.ok, true, "resumed")
  t.eq(again.resumed_from, kept, "from the kept bytes")
  t.eq(again.sha256, t.sha256(data), "sha256")
  t.eq(fx.requests("^/f/cancel")[1].headers.range, "bytes=" .. kept .. "-", "Range")

  local tr2 = s:add { url = url, partial = partial .. "2" }
  until_(s, function() return tr2:progress().completed > 50000 end)
  tr2:cancel(true)
  t.eq(t.exists(partial .. "2"), false, "partial removed")
  t.eq(t.exists(partial .. "2.state"), false, "state removed")
end)

test("jobs = 2 with five files: two at a time, all right", function()
  local ng = servers.nginx()
  -- Rate-capped so that every transfer is still running at the next look: two at once is seen.
  local s = session { jobs = 2, limit_rate = 1000000 }
  local dir = t.tmpdir("jobs")
  local list, datas = {}, {}
  for i = 1, 5 do
    datas[i] = t.bytes(400000 + i * 1000, 30 + i)
    list[i] = s:add { url = ng.put("jobs/" .. i .. ".bin", datas[i]), partial = dir .. "/" .. i }
  end
  local most, pending = 0, 5
  local deadline = core.now() + 60
  while pending > 0 do
    s:perform(0.01)
    local running = 0
    for _, tr in ipairs(list) do
      if tr:progress().state == "running" then running = running + 1 end
    end
    most = math.max(most, running)
    pending = pending - #s:finished()
    t.ok(core.now() < deadline, "in time")
  end
  t.eq(most, 2, "two at once, never more")
  for i, tr in ipairs(list) do
    local r = tr:result()
    t.eq(r.ok, true, "ok " .. i)
    t.eq(t.sha256_file(dir .. "/" .. i), t.sha256(datas[i]), "file " .. i)
  end
end)

test("a transfer cancelled while its last bytes wait for a busy pool: cancel returns at once, it ends cancelled", function()
  local ng = servers.nginx()
  local dir = t.tmpdir("busypool")
  -- Every worker of the pool (4) blocked: each hashes a FIFO that nobody writes to yet.
  local fifos, jobs = {}, {}
  for i = 1, 4 do
    fifos[i] = dir .. "/fifo" .. i
    t.eq(os.execute("mkfifo " .. t.shquote(fifos[i])), true, "mkfifo")
    jobs[i] = core.fs_start { { "sha256", fifos[i] } }
  end
  -- Released from another process once the test has seen the cancel (the file go), or after 10 s
  -- at the latest: a cancel that waited for the workers would take that long, rather than hang. (A
  -- release after a fixed 3 s came too early for a slow start: the worker free before the cancel.)
  local names = {}
  for i = 1, 4 do names[i] = t.shquote(fifos[i]) end
  local go = dir .. "/go"
  os.execute(string.format("(i=0; while [ ! -e %s ] && [ $i -lt 200 ]; do sleep 0.05; i=$((i+1)); done; "
    .. "for f in %s; do : > \"$f\"; done) >/dev/null 2>&1 &", t.shquote(go), table.concat(names, " ")))
  local s = session { jobs = 2 }
  local data = t.bytes(50000, 17)
  local tr = s:add { url = ng.put("busypool/small.bin", data), partial = dir .. "/small.part" }
  -- The body is all in; its last bytes wait for a worker.
  until_(s, function() return tr:progress().state == "finishing" end, 20)
  local t0 = core.now()
  tr:cancel()
  t.ok(core.now() - t0 < 1, "cancel does not wait for the busy pool")
  t.eq(#s:finished(), 0, "not finished while its worker has not run")
  t.write(go, "")
  for i = 1, 4 do
    t.eq(jobs[i]:result(), true, "the blocked job " .. i .. " ends")
    jobs[i]:close()
  end
  local r = drive(s, { tr })[1]
  t.eq(r.ok, false, "it ends cancelled")
  t.eq(r.code, "ECANCEL", "code")
end)

test("limit_rate caps the total across transfers", function()
  local ng = servers.nginx()
  local dir = t.tmpdir("rate")
  local s = session { limit_rate = 400000 }
  local a = s:add { url = ng.put("rate/a.bin", t.bytes(500000, 40)), partial = dir .. "/a" }
  local b = s:add { url = ng.put("rate/b.bin", t.bytes(500000, 41)), partial = dir .. "/b" }
  local t0 = core.now()
  local other_at_first_end
  until_(s, function()
    local pa, pb = a:progress(), b:progress()
    if pa.state == "done" then other_at_first_end = pb.completed end
    if pb.state == "done" then other_at_first_end = pa.completed end
    return other_at_first_end ~= nil
  end)
  local rs = drive(s, { a, b })
  local took = core.now() - t0
  t.ok(rs[1].ok and rs[2].ok, "both ok")
  t.ok(other_at_first_end > 200000, "both move under the shared cap (the other had "
    .. other_at_first_end .. " of 500000 bytes when the first ended)")
  -- 1 MB at 400 kB/s is 2.5 s; generous bounds on the cap itself
  t.ok(took >= 2.0, "not faster than the cap: " .. took)
  t.ok(took <= 8, "not far slower than the cap: " .. took)
end)

test("progress: completed, total, a recent speed and an eta while running", function()
  local s0 = session()
  local queued = s0:add { url = "https://127.0.0.1:1/x", memory = 10 }
  t.eq(queued:progress().state, "queued", "queued before perform")
  t.eq(queued:result(), nil, "no result before the end")
  local d = slow_download(servers.nginx(), "progress.bin", 1500000, 500000, 600000)
  local s, tr, data = d.s, d.tr, d.data
  local p = tr:progress()
  t.eq(p.state, "running", "state")
  t.eq(p.total, #data, "total")
  t.ok(p.speed > 250000 and p.speed < 1000000, "speed near the cap: " .. p.speed)
  t.ok(p.eta and p.eta > 0 and p.eta < 10, "eta")
  drive(s, { tr })
  t.eq(tr:progress().state, "done", "done")
  t.eq(tr:progress().completed, #data, "completed")
end)

test("memory transfers keep the body; over the cap is an error; HEAD has no body", function()
  local fx = servers.fixture()
  local url = fx.put("api.json", '{"a":1}')
  local r = fetch { url = url, memory = 1000 }
  t.eq(r.ok, true, "ok")
  t.eq(r.body, '{"a":1}', "body")
  t.eq(r.sha256, t.sha256('{"a":1}'), "sha256")
  local big = fx.put("big.json", string.rep("x", 5000))
  local over = fetch { url = big, memory = 1000 }
  t.eq(over.ok, false, "over the cap")
  t.match(over.message, "larger than 1 KB", "message")
  local head = fetch { url = big, head = true }
  t.eq(head.ok, true, "HEAD ok")
  t.eq(head.bytes, 5000, "size from Content-Length")
  t.eq(head.body, nil, "no body")
  local last = fx.requests("^/f/big%.json")
  t.eq(last[#last].method, "HEAD", "a HEAD request")
  local missing = fetch { url = fx.url .. "/f/none.json", memory = 1000 }
  t.eq(missing.status, 404, "error status")
  t.eq(missing.body, "Not Found\n", "an error's body is kept for memory transfers")
end)

test("closing a session with transfers in flight stops them; a closed transfer raises", function()
  local ng = servers.nginx()
  local url = ng.put("closing.bin", t.bytes(1000000, 43))
  local dir = t.tmpdir("closing")
  local s = core.session { cacert = servers.ca().cert, limit_rate = 200000 }
  local a = s:add { url = url, partial = dir .. "/a" }
  local b = s:add { url = url, partial = dir .. "/b" }
  local c = s:add { url = url, partial = dir .. "/c" }
  until_(s, function() return a:progress().completed > 0 end)
  c:close()
  t.ok(not pcall(c.progress, c), "a closed transfer raises")
  s:close()
  t.eq(a:result().code, "ECANCEL", "stopped with the session")
  t.eq(b:result().code, "ECANCEL", "queued one too")
  t.ok(not pcall(s.perform, s, 0), "a closed session raises")
  t.ok(not pcall(s.add, s, { url = url, memory = 1 }), "add on a closed session raises")
  -- unreferenced sessions and transfers in flight are collected cleanly
  local s2 = core.session { cacert = servers.ca().cert }
  s2:add { url = url, partial = dir .. "/d" }
  s2:perform(0.1)
  s2 = nil
  collectgarbage()
  collectgarbage()
end)

test("misuse raises", function()
  local s = session()
  t.ok(not pcall(s.add, s, { partial = "/tmp/x" }), "url required")
  t.ok(not pcall(s.add, s, { url = "https://127.0.0.1/" }), "partial, memory or head required")
  t.ok(not pcall(s.add, s, { url = 5, memory = 1 }), "url must be a string")
  t.ok(not pcall(core.session, { jobs = 0 }), "jobs at least 1")
  t.ok(not pcall(core.session, { limit_rate = "fast" }), "limit_rate a number")
  -- Timeouts are held in a long: one past what it holds raises, never wraps to a negative one.
  t.ok(not pcall(s.add, s, { url = "https://127.0.0.1/", memory = 1, stall_timeout = 1e300 }), "stall_timeout at most a week")
  t.ok(not pcall(core.session, { connect_timeout = 1e300 }), "connect_timeout at most a week")
end)

test("kill -9 in mid-download, then a new transfer resumes from the recorded bytes", function()
  local fx, data, url, partial = fixture_file("killed.bin", 3000000)
  local dir = t.tmpdir("kill9")
  local script = t.write(dir .. "/child.lua", [[
    local core = require "modelget.core"
    local url, partial, cacert = ...
    local s = core.session { cacert = cacert, limit_rate = 300000 }
    s:add { url = url, partial = partial }
    while s:perform(1) > 0 do end
  ]])
  fx.clear_log()
  local p = io.popen(string.format("%s run %s %s %s %s >/dev/null 2>&1 & echo $!", t.shquote(t.bin),
    t.shquote(script), t.shquote(url), t.shquote(partial), t.shquote(servers.ca().cert)))
  local pid = tonumber(p:read("l"))
  p:close()
  t.defer_case(function() os.execute("kill -9 " .. pid .. " 2>/dev/null") end)
  local deadline = core.now() + 30
  repeat
    core.sleep(0.05)
    local st = read_state(partial)
    local done = st and st.ranges[1] and st.ranges[1].done or 0
    t.ok(core.now() < deadline, "the child got going")
  until done > 400000
  os.execute("kill -9 " .. pid)
  os.execute("while kill -0 " .. pid .. " 2>/dev/null; do sleep 0.05; done")
  local on_disk = size_of(partial)
  local recorded = read_state(partial).ranges[1].done
  t.ok(on_disk >= recorded, "the data was written before the state recorded it")
  t.ok(on_disk < #data, "killed before the end")

  local r = fetch { url = url, partial = partial }
  t.eq(r.ok, true, "resumed")
  t.eq(r.resumed_from, recorded, "from the recorded bytes")
  t.eq(r.sha256, t.sha256(data), "sha256 over kept and new bytes")
  t.eq(t.sha256_file(partial), t.sha256(data), "file on disk")
  local reqs = fx.requests("^/f/killed")
  t.eq(#reqs, 2, "two requests")
  t.eq(reqs[2].headers.range, "bytes=" .. recorded .. "-", "Range of the second run")
  t.eq(reqs[2].headers["if-range"], r.etag, "If-Range")
end)
