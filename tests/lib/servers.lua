-- Loopback servers for the tests, started lazily once per test run and stopped at its end (t.defer).
-- Only 127.0.0.1, ::1 and localhost are ever used. Each function returns the same table every call.
--
-- servers.ca() -> { cert = CA certificate (pass as --cacert / cacert=), key, dir,
--                   server_cert, server_key }     (tests/fixtures/mkcerts.sh; SANs 127.0.0.1, ::1, localhost)
--
-- servers.nginx() -> Debian's nginx (tests/fixtures/nginx.sh, nginx.conf.in): the ordinary path.
--   url = "https://127.0.0.1:P" (HTTP/2 and HTTP/1.1), url_localhost, http_url = "http://127.0.0.1:P2",
--   port, http_port, root (the docroot), prefix,
--   put(name, data) -> url .. "/" .. name          (name may hold folders; written atomically)
--   log([ready]) -> { {method=, path=, status=, range= (nil when none), bytes=, protocol=, host=}… } oldest first
--       (ready(entries): waits, 10 s at most, until it returns true: the requests the test made are in)
--
-- servers.fixture() -> tests/fixtures/server.py: Range and validators, scripted faults, a fixture Hub.
--   (servers.other_fixture() -> a second one, the same in every way but its ports and root.)
--   url = "https://127.0.0.1:P", url_localhost = "https://localhost:P" (another host to clients),
--   url6 = "https://[::1]:P" (nil when this machine has no ::1: ipv6 = false; a test needing it fails,
--   saying so), http_url = "http://127.0.0.1:P2", port, http_port, root, pid,
--   put(name, data) -> url .. "/f/" .. name        (ROOT/files/<name>)
--   script(name, {behaviour…})  name: a file under /f/ ("x.bin") or any request path ("/org/r/resolve/main/x").
--       Each request to that path takes the first behaviour; {} or an empty list means normal answers.
--       Behaviours (combine where it makes sense):
--         { cut = N }                     headers, N body bytes, then the connection is closed
--         { stall = N, seconds = S }      N body bytes, nothing for S seconds (default 60), then closed
--         { status = 503, retry_after = S } an error status (4xx/5xx), Retry-After when given
--         { ignore_range = true }         200 and the whole body even when Range was asked
--         { etag = '"other"' }, { content = "other-file" }   another validator / other bytes (a changed file)
--         { announce = BYTES }            Content-Length: BYTES, a little body, then closed
--         { redirect = URL, status = 302 }  { delay = S } (seconds before answering)
--         { range_status = 200 }          a range asked for is sent (with its Content-Range) under this status
--         { gzip = true }                 the body gzip-compressed, Content-Encoding: gzip, unasked
--         { chunked = true }              Transfer-Encoding: chunked; with cut, cut at a chunk boundary
--         { content_type = "text/html" }  another Content-Type
--         { content_length = "12abc" }    that Content-Length header text, the body as it would be
--         { headers = {{name, value}…} }  more response headers (after the usual ones)
--         { gate = NAME }                 no answer until open_gate(NAME) (at most 60 s): a request held
--                                         until the test has seen what it waits for, not for a guessed time
--         { stall = N, gate = NAME }      N body bytes, then nothing until open_gate(NAME), then closed
--         ["repeat"] = true               not taken: applies to every request until the script is replaced
--         method = "GET"                  applies only to (and is taken only by) requests of that method
--   requests(pattern) -> logged requests whose path matches the Lua pattern (all when nil), oldest first:
--       { method=, path=, query=, headers = {lower-case names}, status=, host= (Host header), scheme=, time= }
--       A request is logged before its response is sent.
--   clear_log(), errors() -> the server's stderr ("" unless the server has a bug)
--   open_gate(name)             the requests held by { gate = name } are answered (and later ones pass)
--   hub_put(repo, path, data)   ROOT/hub/<org>/<repo>/<path>; the Hub is at HF_ENDPOINT = url
--   hub_gate(repo, token|nil)   401 without "Authorization: Bearer <token>", 403 with another; nil opens it
--   hub_lie(repo[, false])      X-Linked-Etag (and the redirect's ETag) state a wrong sha256
--   Hub routes: /api/models/<org>/<repo>[/revision/<rev>][?blobs=1], /api/models/<org>/<repo>/tree/<rev>[/<dir>]
--   [?recursive=1], /<org>/<repo>/resolve/<rev>/<path> (LFS: 302 to /cdn/<sha256> on the other host name,
--   with X-Linked-Etag, X-Linked-Size, X-Repo-Commit; others: 200, ETag "<git blob sha1>"), /cdn/<sha256>.
--   LFS: files of 1 MiB or more, or named *.safetensors, *.gguf, *.onnx, *.bin. Dot-files never show.
local t = require "t"
local core = require "modelget.core"
local cjson = require "cjson"

local servers = {}
local q = t.shquote

local function fixtures_dir()
  local dir = debug.getinfo(1, "S").source:match("^@(.*)/lib/[^/]*$") or "tests"
  if dir:sub(1, 1) ~= "/" then
    local p = io.popen("pwd")
    dir = p:read("l") .. "/" .. dir
    p:close()
  end
  return dir .. "/fixtures"
end
local FIXTURES = fixtures_dir()

local function run(cmdline, what)
  local r = t.sh(cmdline)
  if r.status ~= 0 then
    error(string.format("%s failed (exit %d): %s%s", what, r.status, r.stdout, r.stderr), 0)
  end
  return r
end

local function alive(pid)
  return os.execute("kill -0 " .. pid .. " 2>/dev/null") == true
end

-- Writes through a temporary name and a rename, so a server never serves a half-written file.
local function put_file(path, data)
  t.write(path .. ".part", data)
  assert(core.rename(path .. ".part", path))
  return path
end

-- Percent-encodes a file name for a URL path (slashes kept).
local function url_path(name)
  return (name:gsub("[^%w_.~/-]", function(c) return string.format("%%%02X", c:byte()) end))
end

-- JSON numbers come back from cjson as floats: whole ones become integers (200, not 200.0).
local function integers(v)
  if type(v) == "table" then
    for k, x in pairs(v) do v[k] = integers(x) end
  elseif math.type(v) == "float" then
    return math.tointeger(v) or v
  end
  return v
end

local function read_json(text) return integers(cjson.decode(text)) end

-- Whole lines only: a line the server is appending just then is read at the next look.
local function read_json_lines(path)
  local out = {}
  for line in (t.read(path) or ""):gmatch("([^\n]+)\n") do out[#out + 1] = read_json(line) end
  return out
end

-- Starts a server once; later calls return the same one, or raise the same startup failure again.
local function once(start)
  local value, failure
  return function()
    if failure then error(failure, 2) end
    if not value then
      local ok, res = pcall(start)
      if not ok then failure = tostring(res); error(failure, 2) end
      value = res
    end
    return value
  end
end

-- The CA -----------------------------------------------------------------------------------------
servers.ca = once(function()
  local dir = t.tmpdir("certs")
  run("sh " .. q(FIXTURES .. "/mkcerts.sh") .. " " .. q(dir), "making the test certificates")
  return { cert = dir .. "/ca.pem", key = dir .. "/ca.key", dir = dir,
           server_cert = dir .. "/server.pem", server_key = dir .. "/server.key" }
end)

-- nginx ------------------------------------------------------------------------------------------
servers.nginx = once(function()
  local ca = servers.ca()
  local prefix = t.tmpdir("nginx")
  local docroot = prefix .. "/docroot"
  local r = run(string.format("sh %s start %s %s %s %d", q(FIXTURES .. "/nginx.sh"), q(prefix), q(docroot),
    q(ca.dir), core.getpid()), "starting nginx")
  local https_port, http_port = r.stdout:match("(%d+) (%d+)")
  t.defer(function() os.execute("sh " .. q(FIXTURES .. "/nginx.sh") .. " stop " .. q(prefix)) end)
  local s = {
    url = "https://127.0.0.1:" .. https_port,
    url_localhost = "https://localhost:" .. https_port,
    http_url = "http://127.0.0.1:" .. http_port,
    port = tonumber(https_port), http_port = tonumber(http_port),
    root = docroot, prefix = prefix,
  }
  function s.put(name, data)
    put_file(docroot .. "/" .. name, data)
    return s.url .. "/" .. url_path(name)
  end
  local function entries(file)
    local out = {}
    for _, e in ipairs(read_json_lines(file)) do
      out[#out + 1] = { method = e.method, path = e.path, status = e.status,
                        range = e.range ~= "" and e.range or nil, bytes = e.bytes, protocol = e.protocol,
                        host = e.host }
    end
    return out
  end
  -- nginx writes a request's line just after the response's last byte, so a client may be done
  -- before it is: with ready, wait until the lines the test looks for are in (a worker slowed by
  -- the machine's load can write it long after); without, until the log has settled.
  function s.log(ready)
    local file, text = prefix .. "/access.log", nil
    if ready then
      local out
      t.wait(function() out = entries(file); return ready(out) end, 10)
      return out
    end
    for _ = 1, 40 do
      local now = t.read(file) or ""
      if now == text then break end
      text = now
      core.sleep(0.05)
    end
    return entries(file)
  end
  return s
end)

-- The fixture server -----------------------------------------------------------------------------
local function script_file(root, path)
  local quoted = path:gsub("[^%w_.~-]", function(c) return string.format("%%%02X", c:byte()) end)
  return root .. "/scripts/" .. quoted .. ".json"
end

-- The fixture servers started, for the runner: it asks each for errors once every test has run.
servers.fixtures_started = {}

local function start_fixture(name)
  local ca = servers.ca()
  local root = t.tmpdir(name)
  local ports_file = root .. "/ports.json"
  local cmd = string.format("python3 %s %s --port-file %s --tls-cert %s --tls-key %s --watch-pid %d",
    q(FIXTURES .. "/server.py"), q(root), q(ports_file), q(ca.server_cert), q(ca.server_key), core.getpid())
  local p = io.popen(cmd .. " </dev/null >" .. q(root .. "/server.out") .. " 2>" .. q(root .. "/server.err")
    .. " & echo $!")
  local pid = tonumber(p:read("l"))
  p:close()
  t.defer(function() os.execute("kill " .. pid .. " 2>/dev/null") end)
  local deadline = core.now() + 20
  while not t.exists(ports_file) do
    if not alive(pid) or core.now() > deadline then
      error("the fixture server did not start: " .. (t.read(root .. "/server.err") or ""), 0)
    end
    core.sleep(0.02)
  end
  local ports = read_json(t.read(ports_file))
  local s = {
    url = "https://127.0.0.1:" .. ports.https,
    url_localhost = "https://localhost:" .. ports.https,
    url6 = ports.ipv6 and ("https://[::1]:" .. ports.https) or nil, ipv6 = ports.ipv6,
    http_url = "http://127.0.0.1:" .. ports.http,
    port = ports.https, http_port = ports.http,
    root = root, pid = pid,
  }
  local log = root .. "/log.jsonl"

  function s.put(name, data)
    put_file(root .. "/files/" .. name, data)
    return s.url .. "/f/" .. url_path(name)
  end

  -- name: a file under /f/ ("model.bin"), or any request path ("/org/repo/resolve/main/x.gguf").
  function s.script(name, list)
    local path = name:sub(1, 1) == "/" and name or ("/f/" .. name)
    put_file(script_file(root, path), #list == 0 and "[]" or cjson.encode(list))
  end

  -- Logged requests whose path matches the Lua pattern (all when nil), oldest first. Each:
  -- {method=, path=, query=, headers={lower-case names}, status=, host=, scheme=, time=}
  function s.requests(pattern)
    local out = {}
    for _, e in ipairs(read_json_lines(log)) do
      if not pattern or e.path:find(pattern) then out[#out + 1] = e end
    end
    return out
  end

  function s.clear_log() io.open(log, "w"):close() end

  -- Lets the requests a { gate = name } behaviour holds go on (ROOT/gates/<name>, as server.py quotes it).
  function s.open_gate(name)
    local quoted = name:gsub("[^%w_.~-]", function(c) return string.format("%%%02X", c:byte()) end)
    t.write(root .. "/gates/" .. quoted, "open")
  end

  -- What the server wrote to stderr: empty unless the server itself has a bug.
  function s.errors() return t.read(root .. "/server.err") or "" end
  servers.fixtures_started[#servers.fixtures_started + 1] = s

  function s.hub_put(repo, path, data) return put_file(root .. "/hub/" .. repo .. "/" .. path, data) end

  -- A token makes the repo gated (401 without it, 403 with another); nil opens it again.
  function s.hub_gate(repo, token)
    local file = root .. "/hub/" .. repo .. "/.gated"
    if token then t.write(file, token) else os.remove(file) end
  end

  -- The repo's tree listing comes in pages of n entries, each naming the next in a Link header.
  function s.hub_page(repo, n) t.write(root .. "/hub/" .. repo .. "/.page-size", tostring(n)) end

  -- The Hub states a wrong SHA-256 (X-Linked-Etag) for the repo's LFS files; false tells the truth again.
  function s.hub_lie(repo, lie)
    local file = root .. "/hub/" .. repo .. "/.lie"
    if lie == false then os.remove(file) else t.write(file, "lie") end
  end
  return s
end

servers.fixture = once(function() return start_fixture("fixture") end)
-- A second fixture server, on ports of its own: the same host (127.0.0.1) at another origin.
servers.other_fixture = once(function() return start_fixture("other-fixture") end)

return servers
