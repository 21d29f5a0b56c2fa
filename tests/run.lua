-- The test runner: runs every tests/test_*.lua (or the files named as arguments) in this process,
-- with the real engine, against real servers on loopback. Ends with "N passed, N failed".
--   build/modelget run tests/run.lua [test_file_or_name …]   (make test TESTS=…)
local here = arg[0]:match("^(.*)/[^/]*$") or "."
package.path = here .. "/lib/?.lua;" .. package.path
local t = require "t"
local core = require "modelget.core"

local files = {}
if #arg > 0 then
  for i = 1, #arg do
    local name = arg[i]
    if not name:find("/") then name = here .. "/" .. (name:match("^test_") and name or "test_" .. name) end
    if not name:match("%.lua$") then name = name .. ".lua" end
    files[#files + 1] = name
  end
else
  for _, name in ipairs(core.listdir(here)) do
    if name:match("^test_.*%.lua$") then files[#files + 1] = here .. "/" .. name end
  end
end

local only = os.getenv("TEST_ONLY") -- a Lua pattern on test names
local passed, failed, failures = 0, 0, {}
local started = core.now()

for _, file in ipairs(files) do
  local cases = {}
  local env = setmetatable({ test = function(name, fn) cases[#cases + 1] = { name = name, fn = fn } end },
    { __index = _G })
  local chunk, err = loadfile(file, "t", env)
  if not chunk then
    failed = failed + 1
    failures[#failures + 1] = file .. ": " .. err
    print("FAIL " .. file .. ": " .. err)
  else
    local ok, lerr = xpcall(chunk, debug.traceback)
    if not ok then
      failed = failed + 1
      failures[#failures + 1] = file .. ": " .. lerr
      print("FAIL " .. file .. " (loading): " .. lerr)
    end
    local short = file:match("([^/]*)%.lua$")
    for _, case in ipairs(cases) do
      if not only or case.name:match(only) then
        local t0 = core.now()
        t.begin_case(short .. ": " .. case.name)
        local cok, cerr = xpcall(case.fn, function(e)
          return debug.traceback(type(e) == "string" and e or tostring(e), 2)
        end)
        t.end_case()
        local secs = string.format("%.2fs", core.now() - t0)
        if cok then
          passed = passed + 1
          print(string.format("ok   %s: %s (%s)", short, case.name, secs))
        else
          failed = failed + 1
          failures[#failures + 1] = short .. ": " .. case.name .. "\n" .. cerr
          print(string.format("FAIL %s: %s (%s)\n%s", short, case.name, secs, cerr))
        end
        io.stdout:flush()
      end
    end
  end
end

-- The fixture servers' own failures (a traceback on their stderr) over the whole run, not just
-- until the file that happens to check them.
for _, fixture in ipairs(package.loaded.servers and package.loaded.servers.fixtures_started or {}) do
  if fixture.errors() ~= "" then
    failed = failed + 1
    failures[#failures + 1] = "the fixture server reported errors:\n" .. fixture.errors()
    print("FAIL the fixture server reported errors of its own")
  end
end

t.shutdown()
if #failures > 0 then
  print("\nFailures:")
  for _, f in ipairs(failures) do print("  " .. f:gsub("\n", "\n    ")) end
end
print(string.format("\n(%.1fs)", core.now() - started))
print(string.format("%d passed, %d failed", passed, failed))
if passed + failed == 0 then print("no test ran (check the file names and TEST_ONLY)") return 1 end
return failed == 0 and 0 or 1
