-- modelget.core as a module of a stock lua5.4 (no host program): it downloads a file and hashes it.
local t = require "t"
local servers = require "servers"

-- A module built with the sanitizers (make test-san) needs their runtime loaded first in a stock lua5.4.
-- The facade comes from lua/; the system's modules (cjson) stay on the default paths.
local function module_env()
  local env = { LUA_CPATH = t.so_dir .. "/?.so;;",
                LUA_PATH = t.root .. "/lua/?.lua;" .. t.root .. "/lua/?/init.lua;;" }
  local runtime = t.sh("ldd " .. t.shquote(t.so_dir .. "/modelget.so")).stdout:match("=>%s*(%S*libasan%.so[%.%d]*)")
  if runtime then env.LD_PRELOAD = runtime end
  return env
end

-- Runs a script with a stock lua5.4 and the arguments given.
local function lua54(script, ...)
  local words = { "lua5.4", t.shquote(script) }
  for _, a in ipairs({ ... }) do words[#words + 1] = t.shquote(a) end
  return t.sh(table.concat(words, " "), { env = module_env() })
end

test("a stock lua5.4 loads modelget.core from the built .so, downloads and hashes", function()
  local ng = servers.nginx()
  local data = t.bytes(1200000, 50)
  local url = ng.put("module/m.bin", data)
  local dir = t.tmpdir("module")
  local script = t.write(dir .. "/get.lua", [[
    local core = require "modelget.core"
    local url, partial, cacert = ...
    local s = core.session { cacert = cacert }
    local tr = s:add { url = url, partial = partial }
    while s:perform(1) > 0 do end
    local r = tr:result()
    s:close()
    if not r.ok then io.stderr:write(r.message, "\n") os.exit(1) end
    print(r.sha256, r.bytes, core.sha256_file(partial))
  ]])
  local r = t.status(lua54(script, url, dir .. "/out/m.bin", servers.ca().cert), 0, "lua5.4 script")
  local streamed, bytes, filed = r.stdout:match("^(%x+)\t(%d+)\t(%x+)\n$")
  t.eq(streamed, t.sha256(data), "sha256 from the transfer")
  t.eq(tonumber(bytes), #data, "bytes")
  t.eq(filed, t.sha256(data), "sha256_file of what landed")
  t.eq(t.read(dir .. "/out/m.bin"), data, "bytes on disk")
end)

-- An app run by a stock lua5.4 in a process of its own (the signal and the handler stay out of the
-- test runner's), pulling a file nginx serves: the app's body has core, modelget, url, store,
-- cacert, and ctrl_c() (a SIGINT from the background, then whether it was caught) at hand.
-- Returns the run's result, the file's bytes and the store.
local function interrupted_app(name, seed, body)
  local data = t.bytes(200000, seed)
  local url = servers.nginx().put("module/" .. name .. ".bin", data)
  local dir = t.tmpdir(name)
  local script = t.write(dir .. "/app.lua", [[
    local core, modelget = require "modelget.core", require "modelget"
    local url, store, cacert = ...
    local function ctrl_c()
      -- (system() ignores SIGINT while its child runs: the signal comes from the background)
      os.execute("(sleep 0.1; kill -INT " .. core.getpid() .. ") &")
      for _ = 1, 100 do if core.interrupted() then break end core.sleep(0.05) end
      return core.interrupted()
    end
    core.catch_interrupt()
]] .. body)
  return t.status(lua54(script, url, dir .. "/store", servers.ca().cert), 0, "lua5.4 app"), data, dir .. "/store"
end

test("an app that caught Ctrl-C clears it with clear_interrupt: its next pull goes ahead, the handler stays", function()
  local r, data, store = interrupted_app("after-interrupt", 51, [[
    local opts = { store = store, cacert = cacert, framework = "other", quiet = true }
    local caught = ctrl_c()
    local _, _, refused = modelget.pull(url, opts)
    local was, now, again = core.clear_interrupt(), core.interrupted(), core.clear_interrupt()
    local res, err, code = modelget.pull(url, opts)
    print(caught, refused, was, now, again, res and res.sha256 or err, code, ctrl_c())
  ]])
  t.eq(r.stdout, table.concat({ "true", "EINTR", "true", "false", "false", t.sha256(data), "nil", "true" }, "\t") .. "\n",
    "Ctrl-C refuses a pull; cleared (true, then false), the next pull installs the file; a new Ctrl-C is caught again")
  t.eq(t.read(store .. "/models/other/after-interrupt/after-interrupt.bin"), data, "bytes installed")
end)

test("a scheduler that saw a Ctrl-C the app has cleared goes on: its next pull installs", function()
  local r, data = interrupted_app("sched-interrupt", 52, [[
    local sched = modelget.scheduler { store = store, cacert = cacert, framework = "other", quiet = true }
    ctrl_c()
    local first, second
    sched:spawn(function() first = table.pack(sched:pull(url)) end)
    sched:run()
    core.clear_interrupt()
    sched:spawn(function() second = table.pack(sched:pull(url)) end)
    sched:run()
    sched:close()
    print(first[3], second[1] and second[1].sha256 or second[2])
  ]])
  t.eq(r.stdout, "EINTR\t" .. t.sha256(data) .. "\n", "interrupted once; after the clear, the same scheduler pulls")
end)

test("an app whose on_progress raises while a model installs: its lock is held until the install has ended", function()
  local ng = servers.nginx()
  local small, big = t.bytes(100000, 53), t.bytes(4 * 1024 * 1024, 54)
  local url_a, url_b = ng.put("module/held-a.bin", small), ng.put("module/held-b.bin", big)
  local dir, pause = t.tmpdir("held"), t.tmpdir("held-pause")
  local store = dir .. "/store"
  -- b comes slowly; a's install waits at the open of its record (tests/fixtures/diskfault.c) while the
  -- event loop goes on, and the next progress event makes the app give up.
  local script = t.write(dir .. "/app.lua", [[
    local modelget = require "modelget"
    local url_a, url_b, store, cacert, pause = ...
    local ok, err = pcall(modelget.pull_many, { url_a, url_b }, { store = store, cacert = cacert,
      framework = "other", quiet = true, jobs = 2, limit_rate = "300K",
      on_progress = function()
        local f = io.open(pause .. "/paused")
        if f then
          f:close()
          io.open(pause .. "/gave-up", "w"):close()
          error("the app gives up", 0)
        end
      end })
    print(ok, err)
  ]])
  local env = module_env()
  local fault = t.fault_env { PAUSE_AT_OPEN = "/partial/other--held-a/.modelget.json", PAUSE_DIR = pause }
  env.LD_PRELOAD = (env.LD_PRELOAD and (env.LD_PRELOAD .. " ") or "") .. fault.LD_PRELOAD
  for k, v in pairs(fault) do if k ~= "LD_PRELOAD" then env[k] = v end end
  local out = dir .. "/out"
  t.sh(string.format("(lua5.4 %s %s %s %s %s %s > %s 2>&1; echo $? > %s) >/dev/null 2>&1 &", t.shquote(script), t.shquote(url_a),
    t.shquote(url_b), t.shquote(store), t.shquote(servers.ca().cert), t.shquote(pause), t.shquote(out),
    t.shquote(dir .. "/status")), { env = env })
  t.ok(t.wait(function() return t.exists(pause .. "/paused") end, 30), "a's install has begun")
  -- The app has given up, and its scheduler's close waits for a's install: a is still its own.
  t.ok(t.wait(function() return t.exists(pause .. "/gave-up") end, 30), "the app gave up")
  require("modelget.core").sleep(0.3)
  t.eq(t.read(dir .. "/status"), nil, "the app waits for the install")
  local r = t.status(t.modelget { "rm", "held-a", "--store", store }, 1, "rm of a meanwhile")
  t.match(r.stderr, "model 'held%-a' is in use by another process", "a is still held: " .. r.stderr)
  t.write(pause .. "/go", "")
  t.ok(t.wait(function() return t.read(dir .. "/status") end, 30), "the app ended")
  t.eq(t.read(out), "false\tthe app gives up\n", "the app's error came back to it")
  t.eq(t.read(store .. "/models/other/held-a/held-a.bin"), small, "a's install ended whole")
  t.status(t.modelget { "verify", "held-a", "--store", store }, 0, "and verifies")
end)
