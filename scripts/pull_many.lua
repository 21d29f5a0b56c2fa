-- Pulls several models at once from coroutines, with its own progress lines: an example of the
-- Lua API (README "The Lua API").
--   modelget run scripts/pull_many.lua [--store DIR] [--registry PATH] [--cacert FILE] [--jobs N]
--                                      [--limit-rate RATE] ID|URL…
--   lua5.4 scripts/pull_many.lua …      (LUA_PATH and LUA_CPATH pointing at an installed modelget)
-- Each target is a task of one scheduler: the downloads share one engine session (--jobs transfers
-- at once); a task may do anything between its pulls. Exit status: 0, or the first failure's.
local modelget = require "modelget"
local core = require "modelget.core"

-- The exit status, under `modelget run` and a stock lua5.4 alike (the latter ignores a chunk's return).
local function exit(status) os.exit(status, true) end

local opts, targets = {}, {}
local i = 1
while i <= #arg do
  local a = arg[i]
  local key = ({ ["--store"] = "store", ["--registry"] = "registry", ["--cacert"] = "cacert", ["--jobs"] = "jobs",
                 ["--limit-rate"] = "limit_rate" })[a]
  if key then
    local value = arg[i + 1]
    if not value then io.stderr:write("pull_many: ", a, " needs a value\n") exit(2) end
    if key == "registry" then
      opts.registry = opts.registry or {}
      table.insert(opts.registry, value)
    else
      opts[key] = key == "jobs" and math.tointeger(tonumber(value)) or value
    end
    i = i + 2
  else
    targets[#targets + 1] = a
    i = i + 1
  end
end
if #targets == 0 then
  io.stderr:write("usage: modelget run scripts/pull_many.lua [--store DIR] [--jobs N] ID|URL…\n")
  exit(2)
end

-- Progress: a line per file each time it passes another quarter, and when a model is done.
local quarter = {}
opts.on_progress = function(ev)
  if not ev.total or ev.total == 0 then return end
  local key = ev.id .. "/" .. (ev.file or "")
  local q = math.floor(4 * ev.completed / ev.total)
  if q > (quarter[key] or 0) then
    quarter[key] = q
    print(string.format("[%s] %-20s %3d%%  %d of %d bytes", ev.id, ev.file or "", 25 * q, ev.completed, ev.total))
  end
end
opts.on_event = function(ev)
  if ev.event == "retry" then
    print(string.format("[%s] %s: retrying (attempt %d)", ev.id, ev.file or "", ev.attempt or 0))
  end
end

core.catch_interrupt() -- Ctrl-C ends the transfers cleanly; partial files are kept for a resume
local sched = modelget.scheduler(opts)
local failures = {}
for _, target in ipairs(targets) do
  sched:spawn(function()
    local started = core.now()
    local res, err, code = sched:pull(target)
    if res then
      print(string.format("[%s] %s in %s (%d bytes, %.1fs)", res.id, res.already and "already installed" or "installed",
        res.path, res.bytes, core.now() - started))
    else
      failures[#failures + 1] = { target = target, err = err, code = code }
    end
  end)
end
sched:run()
sched:close()

for _, f in ipairs(failures) do
  io.stderr:write(string.format("pull_many: %s: %s (%s)\n", f.target, f.err, f.code))
end
exit(#failures > 0 and require("modelget.util").exit_status(failures[1].code) or 0)
