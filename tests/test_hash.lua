-- SHA-256 from the engine, against a file of known content.
local t = require "t"
local core = require "modelget.core"

test("sha256_file hashes a whole file", function()
  local dir = t.tmpdir("hash")
  local data = t.bytes(3 * 1024 * 1024 + 17, 7)
  t.write(dir .. "/f", data)
  t.eq(core.sha256_file(dir .. "/f"), t.sha256(data), "sha256 of 3 MiB + 17")
  t.write(dir .. "/empty", "")
  t.eq(core.sha256_file(dir .. "/empty"), "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
    "sha256 of an empty file")
  local _, msg, code = core.sha256_file(dir .. "/missing")
  t.eq(code, "ENOENT", "code")
  t.match(msg, "missing", "message names the file")
end)

test("the streaming hasher matches a known digest", function()
  t.eq(core.hasher():update("a"):update("bc"):hex(),
    "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad", "sha256('abc')")
end)

test("Ctrl-C stops a long hash (the one a split download ends with): EINTR, no digest", function()
  local dir = t.tmpdir("hashint")
  t.write(dir .. "/f", t.bytes(3 * 1024 * 1024, 8))
  local script = t.write(dir .. "/hash.lua", [[
    local core = require "modelget.core"
    core.catch_interrupt()
    local before = core.sha256_file(...)
    -- (system() ignores SIGINT while its child runs: the signal comes from the background)
    os.execute("(sleep 0.1; kill -INT " .. core.getpid() .. ") &")
    for _ = 1, 100 do if core.interrupted() then break end core.sleep(0.05) end
    local after, msg, code = core.sha256_file(...)
    local job = core.fs_start { { "sha256", ... } }
    local _, jmsg, jcode = job:result()
    job:close()
    print(before and #before, after, code, jcode, jmsg)
  ]])
  local r = t.status(t.modelget { "run", script, dir .. "/f" }, 0, "the script")
  t.eq(r.stdout, "64\tnil\tEINTR\tEINTR\tcannot hash " .. dir .. "/f: Interrupted system call\n",
    "a digest before the signal; after it, the file function and the job step both stop with EINTR")
end)
