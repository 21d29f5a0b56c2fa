-- modelget.core as a module of a stock lua5.4 (no host program): it downloads a file and hashes it.
local t = require "t"
local servers = require "servers"

-- A module built with the sanitizers (make test-san) needs their runtime loaded first in a stock lua5.4.
local function module_env()
  local env = { LUA_CPATH = t.so_dir .. "/?.so" }
  local runtime = t.sh("ldd " .. t.shquote(t.so_dir .. "/modelget.so")).stdout:match("=>%s*(%S*libasan%.so[%.%d]*)")
  if runtime then env.LD_PRELOAD = runtime end
  return env
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
  local r = t.sh(string.format("lua5.4 %s %s %s %s", t.shquote(script), t.shquote(url),
    t.shquote(dir .. "/out/m.bin"), t.shquote(servers.ca().cert)), { env = module_env() })
  t.status(r, 0, "lua5.4 script")
  local streamed, bytes, filed = r.stdout:match("^(%x+)\t(%d+)\t(%x+)\n$")
  t.eq(streamed, t.sha256(data), "sha256 from the transfer")
  t.eq(tonumber(bytes), #data, "bytes")
  t.eq(filed, t.sha256(data), "sha256_file of what landed")
  t.eq(t.read(dir .. "/out/m.bin"), data, "bytes on disk")
end)
