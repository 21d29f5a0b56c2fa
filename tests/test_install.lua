-- make install PREFIX=…: the installed host runs from the prefix alone, and a stock lua5.4 finds
-- modelget and modelget.core there through LUA_PATH / LUA_CPATH.
local t = require "t"
local servers = require "servers"
local core = require "modelget.core"

local q = t.shquote
local prefix

-- One install for the file's tests, from a build of its own: the normal flags (a stock lua5.4 cannot
-- load a sanitizer build), and the suite's own binaries are never relinked under it.
local function installed()
  if not prefix then
    prefix = t.tmpdir("prefix")
    local build = t.tmpdir("install-build")
    -- Under make test-san, MAKEFLAGS carries SAN=1 down to this make: dropped, and SAN= said outright.
    t.status(t.sh(string.format("make -s -j2 -C %s install SAN= BUILD=%s PREFIX=%s >/dev/null", q(t.root), q(build),
      q(prefix)), { env = { MAKEFLAGS = false, MFLAGS = false, MAKELEVEL = false } }), 0, "make install")
  end
  return prefix
end

-- Runs a command from a folder outside the source tree, with no pointer back into it.
local function outside(cmdline, env)
  env = env or {}
  env.MODELGET_LUA_DIR = "" -- empty counts as unset, and mixes with the variables set here
  env.MODELGET_REGISTRY_PATH = ""
  return t.sh("sh -c " .. q("cd " .. q(t.tmpdir("elsewhere")) .. " && " .. cmdline), { env = env })
end

test("make install puts the host, the module, the Lua files and the registry under PREFIX", function()
  local p = installed()
  for _, f in ipairs { "bin/modelget", "lib/lua/5.4/modelget/core.so", "share/lua/5.4/modelget/init.lua",
                       "share/lua/5.4/modelget/cli.lua", "share/lua/5.4/modelget/progress.lua",
                       "share/lua/5.4/modelget/rules/llamacpp.lua", "share/modelget/registry/llamacpp.lua",
                       "share/modelget/scripts/pull_many.lua" } do
    t.ok(t.exists(p .. "/" .. f), "installed: " .. f)
  end
end)

test("the installed host finds its Lua files and the built-in registry, and pulls", function()
  local p = installed()
  local bin = q(p .. "/bin/modelget")
  t.match(t.status(outside(bin .. " --version"), 0, "--version").stdout, "^modelget ", "version")
  local function ids(stdout)
    local out = {}
    for id in stdout:gmatch('"id":"([^"]*)"') do out[#out + 1] = id end
    table.sort(out)
    return table.concat(out, " ")
  end
  local from_tree = ids(t.status(t.modelget { "--json", "list" }, 0, "list from the tree").stdout)
  local r = t.status(outside(bin .. " --json list"), 0, "installed list")
  t.ok(#from_tree > 0, "the built-in catalog has entries")
  t.eq(ids(r.stdout), from_tree, "the installed host lists the same built-in catalog")
  local ng = servers.nginx()
  local data = "GGUF" .. string.pack("<I4I8I8", 3, 0, 0) .. t.bytes(50000, 9)
  local url = ng.put("install/host.gguf", data)
  local store = t.tmpdir("install-store")
  t.status(outside(bin .. " pull -q --store " .. q(store) .. " --cacert " .. q(servers.ca().cert) .. " " .. q(url)),
    0, "installed host pulls")
  t.eq(t.sha256_file(store .. "/models/llamacpp/host/host.gguf"), t.sha256(data), "bytes")
end)

test("a stock lua5.4 loads modelget and modelget.core from PREFIX and pulls", function()
  local p = installed()
  local ng = servers.nginx()
  local data = t.bytes(70000, 10)
  local url = ng.put("install/stock.bin", data)
  local store = t.tmpdir("stock-store")
  local script = t.write(t.tmpdir("stock") .. "/embed.lua", string.format([[
local modelget = require "modelget"
local core = require "modelget.core"
print(package.searchpath("modelget.core", package.cpath))
local res, err, code = modelget.pull(%q, { store = %q, cacert = %q, framework = "other", quiet = true })
if not res then io.stderr:write(err, " ", code, "\n") os.exit(1) end
print(res.path, core.sha256_file(res.path .. "/stock.bin"))
]], url, store, servers.ca().cert))
  local env = {
    LUA_PATH = p .. "/share/lua/5.4/?.lua;" .. p .. "/share/lua/5.4/?/init.lua;;",
    LUA_CPATH = p .. "/lib/lua/5.4/?.so;;",
  }
  local r = t.status(outside("lua5.4 " .. q(script), env), 0, "stock lua5.4")
  local lines = {}
  for line in r.stdout:gmatch("[^\n]+") do lines[#lines + 1] = line end
  t.eq(lines[1], p .. "/lib/lua/5.4/modelget/core.so", "modelget.core from PREFIX")
  t.eq(lines[2], store .. "/models/other/stock\t" .. t.sha256(data), "pulled through the embedded API")
end)

test("the installed example scripts/pull_many.lua under a stock lua5.4: its exit status is the pull's", function()
  local p = installed()
  local env = {
    LUA_PATH = p .. "/share/lua/5.4/?.lua;" .. p .. "/share/lua/5.4/?/init.lua;;",
    LUA_CPATH = p .. "/lib/lua/5.4/?.so;;",
  }
  local script = q(p .. "/share/modelget/scripts/pull_many.lua")
  local ng = servers.nginx()
  local store = t.tmpdir("stock-many-store")
  local missing = ng.url .. "/install/no-such-file.gguf"
  local r = outside("lua5.4 " .. script .. " --store " .. q(store) .. " --cacert " .. q(servers.ca().cert) .. " " .. q(missing), env)
  t.eq(r.status, 3, "a dead URL: the network's exit status")
  t.match(r.stderr, "no%-such%-file", "named")
  t.eq(outside("lua5.4 " .. script, env).status, 2, "no target: a usage error")
end)

test("a stock lua5.4 finds the installed built-in catalog by itself", function()
  local p = installed()
  local script = t.write(t.tmpdir("stock-catalog") .. "/catalog.lua", [[
local catalog, problems = require("modelget").catalog { store = os.getenv("STORE") }
local e = catalog:get("tinyllama-1.1b-gguf")
print(e and e.framework, e and e.source:match("^(.*)/[^/]*$"), #problems)
]])
  local r = t.status(outside("lua5.4 " .. q(script), {
    LUA_PATH = p .. "/share/lua/5.4/?.lua;" .. p .. "/share/lua/5.4/?/init.lua;;",
    LUA_CPATH = p .. "/lib/lua/5.4/?.so;;",
    STORE = t.tmpdir("stock-catalog-store"),
  }), 0, "stock lua5.4")
  t.eq(r.stdout, "llamacpp\t" .. p .. "/share/modelget/registry\t0\n", "the catalog, from PREFIX")
end)

test("the rockspec builds every engine source and installs every Lua module", function()
  local spec = {}
  local chunk = assert(loadfile(t.root .. "/modelget-scm-1.rockspec", "t", spec))
  chunk()
  t.eq(spec.package, "modelget", "package")
  local modules = spec.build.modules
  local listed = {}
  for _, src in ipairs(modules["modelget.core"].sources) do listed[src] = true end
  for _, name in ipairs(core.listdir(t.root .. "/engine")) do
    if name:match("%.c$") and name ~= "host.c" then
      t.ok(listed["engine/" .. name], "modelget.core builds engine/" .. name)
    end
  end
  local function walk(dir, prefix)
    for _, name in ipairs(core.listdir(t.root .. "/" .. dir)) do
      local path = dir .. "/" .. name
      if core.stat(t.root .. "/" .. path).type == "dir" then
        walk(path, prefix .. name .. ".")
      elseif name:match("%.lua$") then
        local mod = name == "init.lua" and prefix:sub(1, -2) or prefix .. name:sub(1, -5)
        t.eq(modules[mod], path, "the rockspec's module " .. mod)
      end
    end
  end
  walk("lua/modelget", "modelget.")
end)
