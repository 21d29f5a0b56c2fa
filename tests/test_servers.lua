-- The test servers themselves, driven with curl: a fault in the harness shows up here as its own failure.
local t = require "t"
local servers = require "servers"
local cjson = require "cjson"

-- Runs curl against the test CA; returns {status=, code= HTTP status, headers= {lower-case}, body=}.
local function curl(url, ...)
  local dir = t.tmpdir("curl")
  local words = { "curl", "-sS", "--cacert", t.shquote(servers.ca().cert), "-D", dir .. "/h", "-o", dir .. "/b" }
  for _, a in ipairs({ ... }) do words[#words + 1] = t.shquote(a) end
  words[#words + 1] = t.shquote(url)
  local r = t.sh(table.concat(words, " "))
  local headers, code = {}, nil
  for line in (t.read(dir .. "/h") or ""):gmatch("[^\r\n]+") do
    local c = line:match("^HTTP/[%d.]+ (%d+)")
    if c then code, headers = tonumber(c), {} end -- keep the last response's headers only
    local name, value = line:match("^([^:]+):%s*(.*)$")
    if name then headers[name:lower()] = value end
  end
  return { status = r.status, stderr = r.stderr, code = code, headers = headers, body = t.read(dir .. "/b") or "" }
end

-- Git's blob id (no SHA-1 in the engine: coreutils' sha1sum).
local function git_blob_sha1(data)
  local dir = t.tmpdir("sha1")
  t.write(dir .. "/blob", "blob " .. #data .. "\0" .. data)
  return t.sh("sha1sum " .. dir .. "/blob").stdout:match("^(%x+)")
end

test("nginx serves a file whole and by Range over HTTPS and plain HTTP", function()
  local ng = servers.nginx()
  local data = t.bytes(300000, 1)
  local url = ng.put("range/data.bin", data)
  t.eq(url, ng.url .. "/range/data.bin", "put returns the https URL")
  local whole = curl(url)
  t.eq(whole.status, 0, "curl exit")
  t.eq(whole.code, 200, "status")
  t.eq(t.sha256(whole.body), t.sha256(data), "whole body")
  local part = curl(url, "-r", "1000-")
  t.eq(part.code, 206, "range status")
  t.eq(part.body, data:sub(1001), "range body")
  t.eq(part.headers["content-range"], "bytes 1000-299999/300000", "content-range")
  local plain = curl(ng.http_url .. "/range/data.bin", "-r", "5-9")
  t.eq(plain.code, 206, "plain http range status")
  t.eq(plain.body, data:sub(6, 10), "plain http range body")
  local seen
  ng.log(function(log)
    seen = {}
    for _, e in ipairs(log) do
      if e.path == "/range/data.bin" then seen[#seen + 1] = e.status .. " " .. (e.range or "-") end
    end
    return #seen >= 3
  end)
  t.eq(table.concat(seen, ","), "200 -,206 bytes=1000-,206 bytes=5-9", "access log: status and Range")
end)

test("nginx speaks HTTP/2 on its TLS listener", function()
  local ng = servers.nginx()
  local url = ng.put("h2.txt", "two\n")
  local r = t.sh("curl -sS --http2 -o /dev/null -w '%{http_version}' --cacert " .. t.shquote(servers.ca().cert)
    .. " " .. url)
  t.eq(r.stdout, "2", "negotiated HTTP version")
end)

test("the fixture server serves ranges, 416 and If-Range", function()
  local fx = servers.fixture()
  local data = t.bytes(100000, 2)
  local url = fx.put("plain.bin", data)
  t.eq(url, fx.url .. "/f/plain.bin", "put returns the /f/ URL")
  local whole = curl(url)
  t.eq(whole.code, 200, "status")
  t.eq(whole.body, data, "whole body")
  t.eq(whole.headers["accept-ranges"], "bytes", "accept-ranges")
  t.eq(whole.headers["content-length"], "100000", "content-length")
  t.match(whole.headers["etag"], '^"%x+"$', "strong quoted etag")
  t.ok(whole.headers["last-modified"], "last-modified")
  local etag = whole.headers["etag"]

  local tail = curl(url, "-r", "99000-")
  t.eq(tail.code, 206, "open range")
  t.eq(tail.body, data:sub(99001), "open range body")
  t.eq(tail.headers["content-range"], "bytes 99000-99999/100000", "content-range")
  local mid = curl(url, "-r", "10-19")
  t.eq(mid.body, data:sub(11, 20), "closed range body")
  local beyond = curl(url, "-r", "100000-")
  t.eq(beyond.code, 416, "unsatisfiable")
  t.eq(beyond.headers["content-range"], "bytes */100000", "416 content-range")

  local same = curl(url, "-r", "50000-", "-H", "If-Range: " .. etag)
  t.eq(same.code, 206, "If-Range with the current etag")
  t.eq(same.body, data:sub(50001), "If-Range body")
  local stale = curl(url, "-r", "50000-", "-H", 'If-Range: "something-else"')
  t.eq(stale.code, 200, "If-Range with another etag")
  t.eq(stale.body, data, "the whole file instead")
end)

test("a cut closes the connection after N body bytes, then the path is normal again", function()
  local fx = servers.fixture()
  local data = t.bytes(200000, 3)
  local url = fx.put("cut.bin", data)
  fx.script("cut.bin", { { cut = 70000 } })
  local cut = curl(url)
  t.eq(cut.status, 18, "curl: partial file")
  t.eq(cut.code, 200, "status")
  t.eq(cut.headers["content-length"], "200000", "full length announced")
  t.eq(cut.body, data:sub(1, 70000), "the first N bytes arrive")
  local resumed = curl(url, "-r", "70000-")
  t.eq(resumed.status, 0, "next request works")
  t.eq(resumed.body, data:sub(70001), "the rest")
end)

test("a scripted 503 with Retry-After, then normal; repeat is not consumed", function()
  local fx = servers.fixture()
  local url = fx.put("busy.bin", "payload")
  fx.script("busy.bin", { { status = 503, retry_after = 2 }, { status = 429 } })
  local first = curl(url)
  t.eq(first.code, 503, "first")
  t.eq(first.headers["retry-after"], "2", "retry-after")
  t.eq(curl(url).code, 429, "second")
  local third = curl(url)
  t.eq(third.code, 200, "third")
  t.eq(third.body, "payload", "body")
  fx.script("busy.bin", { { status = 500, ["repeat"] = true } })
  t.eq(curl(url).code, 500, "repeat 1")
  t.eq(curl(url).code, 500, "repeat 2")
  fx.script("busy.bin", {})
  t.eq(curl(url).code, 200, "an empty script is normal")
end)

test("stall, announce, ignore_range, changed content, redirect and delay", function()
  local fx = servers.fixture()
  local data = t.bytes(50000, 4)
  local url = fx.put("faults.bin", data)
  fx.put("faults-v2.bin", t.bytes(60000, 5))

  fx.script("faults.bin", { { stall = 1000, seconds = 30 } })
  local stalled = curl(url, "--max-time", "1")
  t.eq(stalled.status, 28, "curl: timeout while stalled")
  t.eq(stalled.body, data:sub(1, 1000), "bytes before the stall")

  fx.script("faults.bin", { { announce = 1000000 } })
  local short = curl(url)
  t.eq(short.status, 18, "curl: partial file")
  t.eq(short.headers["content-length"], "1000000", "announced length")
  t.ok(#short.body > 0 and #short.body < 1000000, "a little body")
  t.eq(short.body, data:sub(1, #short.body), "the little body is the file's start")

  fx.script("faults.bin", { { ignore_range = true } })
  local ignored = curl(url, "-r", "100-")
  t.eq(ignored.code, 200, "range ignored")
  t.eq(ignored.body, data, "whole body")

  local etag = curl(url).headers["etag"]
  fx.script("faults.bin", { { content = "faults-v2.bin" } })
  local changed = curl(url, "-r", "100-", "-H", "If-Range: " .. etag)
  t.eq(changed.code, 200, "changed file: If-Range fails")
  t.eq(changed.body, t.bytes(60000, 5), "the other content")
  t.ok(changed.headers["etag"] ~= etag, "another validator")
  fx.script("faults.bin", { { etag = '"other"' } })
  t.eq(curl(url).headers["etag"], '"other"', "scripted etag")

  fx.script("faults.bin", { { redirect = fx.url_localhost .. "/f/faults-v2.bin", status = 301 } })
  local moved = curl(url)
  t.eq(moved.code, 301, "redirect status")
  t.eq(moved.headers["location"], fx.url_localhost .. "/f/faults-v2.bin", "location")
  fx.script("faults.bin", { { delay = 0.2 } })
  t.eq(curl(url).body, data, "a delayed answer")

  -- A gate holds the answer until the test opens it (curl gives up first: nothing came).
  fx.clear_log()
  fx.script("faults.bin", { { gate = "faults gate", ["repeat"] = true } })
  local held = curl(url, "--max-time", "1")
  t.eq(held.status, 28, "curl: timeout while the gate is shut")
  t.eq(held.body, "", "no byte before the gate opens")
  fx.open_gate("faults gate")
  t.eq(curl(url).body, data, "answered once the gate is open")
  t.ok(t.wait(function() return #fx.requests("^/f/faults%.bin$") == 2 end, 10), "the held request answered then")
  -- With a stall, the bytes before it come at once; the gate ends the stall.
  fx.script("faults.bin", { { stall = 1000, gate = "faults stall" } })
  local stalled_gate = curl(url, "--max-time", "1")
  t.eq(stalled_gate.status, 28, "curl: timeout while stalled at the gate")
  t.eq(stalled_gate.body, data:sub(1, 1000), "the bytes before the stall")
  fx.open_gate("faults stall")
end)

test("the request log records method, path, query, headers, status and host", function()
  local fx = servers.fixture()
  local url = fx.put("logged.bin", "x")
  fx.clear_log()
  curl(url .. "?a=1", "-H", "X-Probe: one")
  curl(fx.url_localhost .. "/f/logged.bin", "-I")
  local reqs = fx.requests("^/f/logged")
  t.eq(#reqs, 2, "two requests")
  t.eq(reqs[1].method, "GET", "method")
  t.eq(reqs[1].query, "a=1", "query")
  t.eq(reqs[1].headers["x-probe"], "one", "a request header, lower-case name")
  t.eq(reqs[1].status, 200, "status")
  t.match(reqs[1].host, "^127%.0%.0%.1:", "host")
  t.eq(reqs[2].method, "HEAD", "second method")
  t.match(reqs[2].host, "^localhost:", "second host")
  t.eq(#fx.requests("^/nothing"), 0, "a pattern that matches nothing")
  local plain = curl(fx.http_url .. "/f/logged.bin")
  t.eq(plain.body, "x", "plain HTTP listener")
end)

-- A small repo: a config (plain git file), a 2 MiB blob and a small .safetensors (LFS), a sub-folder.
local function hub_repo(fx, repo)
  local files = {
    ["config.json"] = '{"model_type":"test"}',
    ["big.dat"] = t.bytes(2 * 1024 * 1024, 6),
    ["model.safetensors"] = t.bytes(1000, 7),
    ["sub/tokenizer.json"] = '{"v":1}',
  }
  for path, data in pairs(files) do fx.hub_put(repo, path, data) end
  fx.hub_put(repo, ".hidden", "never listed")
  return files
end

test("hub tree listing: files, LFS entries, folders, recursion and a sub-folder", function()
  local fx = servers.fixture()
  local files = hub_repo(fx, "org/tree")
  local r = curl(fx.url .. "/api/models/org/tree/tree/main?recursive=1")
  t.eq(r.code, 200, "status")
  local by = {}
  for _, e in ipairs(cjson.decode(r.body)) do by[e.path] = e end
  t.eq(by["sub"].type, "directory", "folder entry")
  t.eq(by[".hidden"], nil, "dot-files are not listed")
  t.eq(by["config.json"].size, #files["config.json"], "size")
  t.eq(by["config.json"].oid, git_blob_sha1(files["config.json"]), "git blob oid")
  t.eq(by["config.json"].lfs, nil, "small file is not LFS")
  t.eq(by["sub/tokenizer.json"].type, "file", "recursive listing reaches the sub-folder")
  t.eq(by["big.dat"].lfs.oid, t.sha256(files["big.dat"]), "LFS sha256 of a 2 MiB file")
  t.eq(by["big.dat"].lfs.size, 2 * 1024 * 1024, "LFS size")
  t.ok(by["big.dat"].lfs.pointerSize > 100, "pointer size")
  t.eq(by["model.safetensors"].lfs.oid, t.sha256(files["model.safetensors"]), "a .safetensors is LFS")

  local top = cjson.decode(curl(fx.url .. "/api/models/org/tree/tree/main").body)
  local names = {}
  for _, e in ipairs(top) do names[#names + 1] = e.path end
  t.eq(table.concat(names, ","), "big.dat,config.json,model.safetensors,sub", "non-recursive: top level only")
  local sub = cjson.decode(curl(fx.url .. "/api/models/org/tree/tree/main/sub?recursive=true").body)
  t.eq(#sub, 1, "sub-folder listing")
  t.eq(sub[1].path, "sub/tokenizer.json", "paths stay repo-relative")

  local missing = curl(fx.url .. "/api/models/org/none/tree/main")
  t.eq(missing.code, 404, "unknown repo")
  t.eq(missing.headers["x-error-code"], "RepoNotFound", "error code")
end)

test("hub resolve: LFS redirects to the CDN on the other host, plain files come directly", function()
  local fx = servers.fixture()
  local files = hub_repo(fx, "org/resolve")
  local sha = t.sha256(files["big.dat"])
  local url = fx.url .. "/org/resolve/resolve/main/big.dat"
  local r = curl(url)
  t.eq(r.code, 302, "LFS file: redirect")
  t.eq(r.headers["location"], fx.url_localhost .. "/cdn/" .. sha, "to the CDN on localhost")
  t.eq(r.headers["x-linked-etag"], '"' .. sha .. '"', "X-Linked-Etag")
  t.eq(r.headers["x-linked-size"], tostring(#files["big.dat"]), "X-Linked-Size")
  t.match(r.headers["x-repo-commit"], "^%x+$", "X-Repo-Commit")
  local back = curl(fx.url_localhost .. "/org/resolve/resolve/main/big.dat", "-I")
  t.eq(back.headers["location"], fx.url .. "/cdn/" .. sha, "from localhost, to 127.0.0.1")

  local followed = curl(url, "-L")
  t.eq(followed.code, 200, "followed")
  t.eq(t.sha256(followed.body), sha, "blob content")
  local ranged = curl(fx.url .. "/cdn/" .. sha, "-r", "2000000-")
  t.eq(ranged.code, 206, "CDN range")
  t.eq(ranged.body, files["big.dat"]:sub(2000001), "CDN range body")

  local plain = curl(fx.url .. "/org/resolve/resolve/main/sub/tokenizer.json")
  t.eq(plain.code, 200, "plain file: direct")
  t.eq(plain.body, files["sub/tokenizer.json"], "plain body")
  t.eq(plain.headers["etag"], '"' .. git_blob_sha1(files["sub/tokenizer.json"]) .. '"', "git sha1 etag")
  local none = curl(fx.url .. "/org/resolve/resolve/main/absent.bin")
  t.eq(none.code, 404, "unknown file")
  t.eq(none.headers["x-error-code"], "EntryNotFound", "error code")
  t.eq(curl(fx.url .. "/org/resolve/resolve/main/.hidden").code, 404, "dot-files are not served")
end)

test("a gated repo wants its token; the CDN does not, and the token stays on the hub's host", function()
  local fx = servers.fixture()
  local files = hub_repo(fx, "org/gated")
  fx.hub_gate("org/gated", "hf_secret")
  local file = fx.url .. "/org/gated/resolve/main/big.dat"
  t.eq(curl(file).code, 401, "no token")
  t.eq(curl(fx.url .. "/api/models/org/gated/tree/main").code, 401, "listing without token")
  local wrong = curl(file, "-H", "Authorization: Bearer hf_wrong")
  t.eq(wrong.code, 403, "wrong token")
  t.eq(wrong.headers["x-error-code"], "GatedRepo", "error code")
  t.eq(curl(fx.url .. "/api/models/org/gated/tree/main", "-H", "Authorization: Bearer hf_secret").code, 200,
    "listing with the token")
  fx.clear_log()
  local got = curl(file, "-L", "-H", "Authorization: Bearer hf_secret")
  t.eq(got.code, 200, "token, then the CDN")
  t.eq(got.body, files["big.dat"], "content")
  local cdn = fx.requests("^/cdn/")
  t.eq(#cdn, 1, "one CDN request")
  t.eq(cdn[1].headers["authorization"], nil, "no credential to the other host")
  fx.hub_gate("org/gated", nil)
  t.eq(curl(file).code, 302, "open again")
end)

test("a lying hub states another sha256 than the content's", function()
  local fx = servers.fixture()
  local files = hub_repo(fx, "org/liar")
  fx.hub_lie("org/liar")
  local r = curl(fx.url .. "/org/liar/resolve/main/big.dat", "-L")
  t.eq(r.body, files["big.dat"], "the content is served")
  local stated = curl(fx.url .. "/org/liar/resolve/main/big.dat").headers["x-linked-etag"]
  t.match(stated, '^"%x+"$', "a well-formed X-Linked-Etag")
  t.ok(stated ~= '"' .. t.sha256(files["big.dat"]) .. '"', "that is not the content's sha256")
end)

test("scripts reach hub paths too", function()
  local fx = servers.fixture()
  hub_repo(fx, "org/scripted")
  fx.script("/api/models/org/scripted/tree/main", { { status = 503, retry_after = 1 } })
  t.eq(curl(fx.url .. "/api/models/org/scripted/tree/main").code, 503, "scripted listing")
  t.eq(curl(fx.url .. "/api/models/org/scripted/tree/main").code, 200, "then normal")
end)

test("a behaviour with a method is left for a request of that method", function()
  local fx = servers.fixture()
  local url = fx.put("method.bin", "body")
  fx.script("method.bin", { { method = "GET", status = 503 } })
  t.eq(curl(url, "-I").code, 200, "HEAD passes by")
  t.eq(curl(url).code, 503, "GET takes it")
  t.eq(curl(url).code, 200, "then normal")
end)

test("many parallel connections, some cut, all answered", function()
  local fx = servers.fixture()
  local data = t.bytes(256 * 1024, 8)
  local words = { "curl", "-sS", "--parallel", "--parallel-max", "16", "--cacert", t.shquote(servers.ca().cert) }
  local dir = t.tmpdir("parallel")
  for i = 1, 40 do
    local name = "par" .. i .. ".bin"
    fx.put(name, data)
    if i % 5 == 0 then fx.script(name, { { cut = 1000 } }) end
    words[#words + 1] = "-o " .. dir .. "/" .. i .. " " .. fx.url .. "/f/" .. name
  end
  t.sh(table.concat(words, " "))
  for i = 1, 40 do
    local got = t.read(dir .. "/" .. i)
    if i % 5 == 0 then t.eq(got, data:sub(1, 1000), "cut " .. i) else t.eq(got, data, "file " .. i) end
  end
  t.eq(curl(fx.url .. "/f/par1.bin").body, data, "the server still answers")
end)

test("the fixture server reported no errors of its own", function()
  t.eq(servers.fixture().errors(), "", "server stderr")
end)
