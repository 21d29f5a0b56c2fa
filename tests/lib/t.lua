-- Test helpers: assertions, temporary folders, running the host as a user would, files and hashes.
local core = require "modelget.core"

local t = {}
local cleanups = {}
local case_cleanups = {}

t.root = (arg and arg[0] and arg[0]:match("^(.*)/tests/[^/]*$")) or "."
t.bin = os.getenv("MODELGET_BIN") or (t.root .. "/build/modelget")
t.so_dir = os.getenv("MODELGET_SO_DIR") or (t.root .. "/build")

-- Assertions -----------------------------------------------------------------------------------
local function show(v)
  if type(v) == "string" then return string.format("%q", #v > 400 and v:sub(1, 400) .. "…" or v) end
  return tostring(v)
end

function t.eq(got, want, what)
  if got ~= want then
    error(string.format("%s: expected %s, got %s", what or "value", show(want), show(got)), 2)
  end
end

function t.ok(cond, what)
  if not cond then error((what or "condition") .. " does not hold", 2) end
  return cond
end

function t.match(s, pattern, what)
  if type(s) ~= "string" or not s:find(pattern) then
    error(string.format("%s: %s does not match %q", what or "text", show(s), pattern), 2)
  end
end

function t.nomatch(s, pattern, what)
  if type(s) == "string" and s:find(pattern) then
    error(string.format("%s: %s should not match %q", what or "text", show(s), pattern), 2)
  end
end

-- Files ----------------------------------------------------------------------------------------
function t.read(path)
  local f = io.open(path, "rb")
  if not f then return nil end
  local s = f:read("a")
  f:close()
  return s
end

function t.write(path, data)
  local dir = path:match("^(.*)/[^/]*$")
  if dir then core.mkdirs(dir) end
  local f = assert(io.open(path, "wb"))
  f:write(data)
  f:close()
  return path
end

function t.exists(path) return core.stat(path) ~= nil end

function t.sha256(s) return core.hasher():update(s):hex() end

function t.sha256_file(path) return core.sha256_file(path) end

-- Deterministic pseudo-random bytes, so a test can tell every byte's place.
function t.bytes(n, seed)
  local parts, x = {}, seed or 12345
  local chunk = {}
  for i = 1, n do
    x = (x * 1103515245 + 12345) % 2147483648
    chunk[#chunk + 1] = string.char(x >> 16 & 255)
    if #chunk == 4096 then parts[#parts + 1] = table.concat(chunk); chunk = {} end
  end
  parts[#parts + 1] = table.concat(chunk)
  return table.concat(parts)
end

local tmp_root
function t.tmpdir(name)
  if not tmp_root then
    tmp_root = os.getenv("MODELGET_TEST_TMP") or ("/tmp/modelget-test." .. core.getpid())
    core.rmtree(tmp_root)
    assert(core.mkdirs(tmp_root))
    cleanups[#cleanups + 1] = function()
      if not os.getenv("KEEP_TMP") then core.rmtree(tmp_root) end
    end
  end
  t.seq = (t.seq or 0) + 1
  local dir = string.format("%s/%d-%s", tmp_root, t.seq, (name or "tmp"):gsub("[^%w_.-]", "_"))
  assert(core.mkdirs(dir))
  return dir
end

-- Lists every file under dir (relative paths, sorted), for "nothing else was written" checks.
function t.tree(dir)
  local out = {}
  local function walk(rel)
    local full = rel == "" and dir or (dir .. "/" .. rel)
    local names = core.listdir(full)
    if not names then return end
    for _, name in ipairs(names) do
      local r = rel == "" and name or (rel .. "/" .. name)
      local st = core.stat(dir .. "/" .. r)
      if st and st.type == "dir" then out[#out + 1] = r .. "/"; walk(r) else out[#out + 1] = r end
    end
  end
  walk("")
  return out
end

-- Processes --------------------------------------------------------------------------------------
local function shquote(s)
  s = tostring(s)
  if s:match("^[%w%._/=:,@+-]+$") then return s end
  return "'" .. s:gsub("'", "'\\''") .. "'"
end
t.shquote = shquote

-- Runs a shell command line; returns {status=, stdout=, stderr=}.
-- What every command starts from, whatever the developer's or CI's shell holds: a home of its own
-- (so the default store, the Hub token file and ~/.kaggle are the test's), no credentials, no
-- registry path, no CA variables, and no proxy for loopback. A test's opts.env goes on top.
local ISOLATED = {
  MODELGET_HOME = false, XDG_DATA_HOME = false, MODELGET_REGISTRY_PATH = false, MODELGET_LUA_DIR = false,
  HF_TOKEN = false, HF_HOME = false, HF_TOKEN_PATH = false, HF_ENDPOINT = false,
  KAGGLE_USERNAME = false, KAGGLE_KEY = false, KAGGLE_CONFIG_DIR = false,
  MODELGET_CA_BUNDLE = false, SSL_CERT_FILE = false, CURL_CA_BUNDLE = false, DESTDIR = false,
  https_proxy = false, HTTPS_PROXY = false, http_proxy = false, HTTP_PROXY = false,
  all_proxy = false, ALL_PROXY = false,
  NO_PROXY = "127.0.0.1,localhost,::1", no_proxy = "127.0.0.1,localhost,::1",
}

function t.sh(cmdline, opts)
  opts = opts or {}
  local dir = t.tmpdir("sh")
  local errf = dir .. "/stderr"
  t.home = t.home or t.tmpdir("home")
  local env = { HOME = t.home }
  for k, v in pairs(ISOLATED) do env[k] = v end
  for k, v in pairs(opts.env or {}) do env[k] = v end
  -- Shell words, not env(1): the command line may be a builtin or a ( … & ) group.
  local unset, set = {}, {}
  for k, v in pairs(env) do
    if v == false then unset[#unset + 1] = k else set[#set + 1] = k .. "=" .. shquote(v) end
  end
  local prefix = (#unset > 0 and ("unset " .. table.concat(unset, " ") .. "; ") or "")
    .. (#set > 0 and ("export " .. table.concat(set, " ") .. "; ") or "")
  local input = opts.stdin and (" < " .. shquote(t.write(dir .. "/stdin", opts.stdin))) or " < /dev/null"
  local p = io.popen(prefix .. cmdline .. input .. " 2> " .. shquote(errf), "r")
  local out = p:read("a")
  local _, how, code = p:close()
  local status = how == "exit" and code or (128 + code)
  return { status = status, stdout = out, stderr = t.read(errf) or "", cmd = cmdline }
end

-- Runs the modelget host with arguments (a list), as a user would.
function t.modelget(args, opts)
  local words = { shquote(t.bin) }
  for _, a in ipairs(args) do words[#words + 1] = shquote(a) end
  return t.sh(table.concat(words, " "), opts)
end

-- The environment (opts.env) that loads the disk-fault shim (tests/fixtures/diskfault.c) with its
-- variables.
function t.fault_env(vars)
  local asan = os.getenv("ASAN_OPTIONS")
  local env = { LD_PRELOAD = t.so_dir .. "/diskfault.so",
                ASAN_OPTIONS = (asan and asan ~= "" and (asan .. ":") or "") .. "verify_asan_link_order=0" }
  for k, v in pairs(vars) do env[k] = v end
  return env
end

-- Fails with the command's output when the status is not the one expected.
function t.status(r, want, what)
  if r.status ~= want then
    error(string.format("%s: exit %d, expected %d\n  cmd: %s\n  stdout: %s\n  stderr: %s",
      what or "command", r.status, want, r.cmd or "?", r.stdout, r.stderr), 2)
  end
  return r
end

-- Starts the modelget host in the background with arguments (a list), as t.modelget would
-- (opts.stdout: a file for its standard output, else it is dropped; opts.file_size_limit: KiB, as
-- `ulimit -f`, past which a file it writes gets it killed by SIGXFSZ: work it should not do).
-- Returns {pid=, stderr=path, status=function() -> exit status once it has ended, else nil};
-- the process is killed at the end of the test case if it is still running.
function t.spawn(args, opts)
  local dir = t.tmpdir("spawn")
  local words = { shquote(t.bin) }
  for _, a in ipairs(args) do words[#words + 1] = shquote(a) end
  local pidfile, statusfile, errfile = dir .. "/pid", dir .. "/status", dir .. "/stderr"
  local out = opts and opts.stdout and (" >" .. shquote(opts.stdout)) or ""
  local limit = opts and opts.file_size_limit and string.format("ulimit -f %d; ", opts.file_size_limit) or ""
  t.sh(string.format("(%s%s%s 2>%s & echo $! > %s; wait $!; echo $? > %s) >/dev/null 2>&1 &", limit,
    table.concat(words, " "), out, shquote(errfile), shquote(pidfile), shquote(statusfile)), opts)
  local pid = t.wait(function() local s = t.read(pidfile); return s and s:match("%d+") end, 10)
  assert(pid, "the background command started")
  t.defer_case(function() os.execute("kill -9 " .. pid .. " 2>/dev/null") end)
  return {
    pid = pid, stderr = errfile,
    status = function() local s = t.read(statusfile); return s and tonumber(s:match("%d+")) end,
  }
end

-- Runs the modelget host in the background until it reaches a moment the disk-fault shim holds
-- (pause: { PAUSE_AT_OPEN = suffix } or { PAUSE_AFTER_LOCK = suffix }), sends it a signal there
-- ("INT", Ctrl-C, unless named), lets it go on and waits for its end (opts.env goes on top;
-- opts.file_size_limit as for t.spawn).
-- Returns { status=, stdout=, stderr= }; status is nil when the moment never came.
function t.signal_at(args, pause, signal, opts)
  local dir = t.tmpdir("signal-at")
  local vars = { PAUSE_DIR = dir }
  for k, v in pairs(pause) do vars[k] = v end
  for k, v in pairs(opts and opts.env or {}) do vars[k] = v end
  local job = t.spawn(args, { stdout = dir .. "/stdout", env = t.fault_env(vars),
                              file_size_limit = opts and opts.file_size_limit })
  local reached = t.wait(function() return t.exists(dir .. "/paused") end, 20)
  if reached then os.execute("kill -" .. (signal or "INT") .. " " .. job.pid) end
  t.write(dir .. "/go", "")
  return { status = reached and t.wait(job.status, 30), stdout = t.read(dir .. "/stdout") or "",
           stderr = t.read(job.stderr) or "" }
end

-- The JSON objects of a command's output, one a line (--json), in order.
function t.events(stdout)
  local cjson = require "cjson"
  local out = {}
  for line in stdout:gmatch("[^\n]+") do out[#out + 1] = cjson.decode(line) end
  return out
end

-- The last event of a kind in a list of events.
function t.last_event(events, kind)
  local found
  for _, ev in ipairs(events) do if ev.event == kind then found = ev end end
  return found
end

-- Polls cond() every 50 ms until it returns a true value (returned) or the seconds pass (nil).
function t.wait(cond, seconds)
  local deadline = core.now() + (seconds or 10)
  repeat
    local v = cond()
    if v then return v end
    core.sleep(0.05)
  until core.now() > deadline
end

-- Cleanup --------------------------------------------------------------------------------------
function t.defer(fn) cleanups[#cleanups + 1] = fn end
function t.defer_case(fn) case_cleanups[#case_cleanups + 1] = fn end

function t.begin_case(name) t.case = name; case_cleanups = {} end
function t.end_case()
  for i = #case_cleanups, 1, -1 do pcall(case_cleanups[i]) end
  case_cleanups = {}
end

function t.shutdown()
  for i = #cleanups, 1, -1 do pcall(cleanups[i]) end
  cleanups = {}
end

return t
