-- What a person sees while models download. One reporter takes the facade's events (SPEC "--json
-- events") and shows them in one of four ways:
--   "tty"    one line per active file and a total line, redrawn in place (ANSI), at most ~10 times/s
--   "plain"  occasional whole lines (start, every 10 % or few seconds per file, done): logs and pipes
--   "json"   every event as one JSON object a line
--   "quiet"  nothing
-- Failures are the command line's to report (one line on stderr); the reporter only draws.
local util = require "modelget.util"

local M = {}

local REDRAW_EVERY = 0.1   -- seconds between two redraws on a terminal
local PLAIN_EVERY = 5      -- seconds between two plain lines for one file (besides every 10 %)

-- Formatting ---------------------------------------------------------------------------------------
-- Decimal units, as the Hub and the recipes state sizes: 1500000 -> "1.5 MB"; nil -> "?".
function M.bytes(n)
  if type(n) ~= "number" then return "?" end
  return util.human(math.floor(n))
end

function M.rate(n)
  if type(n) ~= "number" or n <= 0 then return "" end
  return M.bytes(n) .. "/s"
end

-- seconds -> "0:05", "12:30", "1:02:03"; unknown -> "--:--"
function M.duration(s)
  if type(s) ~= "number" or s ~= s or s < 0 or s == math.huge then return "--:--" end
  s = math.floor(s + 0.5)
  local h, m = s // 3600, (s % 3600) // 60
  if h > 0 then return string.format("%d:%02d:%02d", h, m, s % 60) end
  return string.format("%d:%02d", m, s % 60)
end

-- The columns a character takes on a terminal: 2 for the wide ones (East Asian Wide and Fullwidth:
-- CJK, Hangul, kana, fullwidth forms, emoji), 0 for combining marks and joiners, else 1. A line's width
-- in columns, not characters, is what decides whether it wraps (and a wrapped line breaks the redraw
-- in place).
local WIDE = { -- ranges, in order
  { 0x1100, 0x115F }, { 0x231A, 0x231B }, { 0x2329, 0x232A }, { 0x23E9, 0x23EC }, { 0x23F0, 0x23F0 },
  { 0x23F3, 0x23F3 }, { 0x25FD, 0x25FE }, { 0x2614, 0x2615 }, { 0x2648, 0x2653 }, { 0x267F, 0x267F },
  { 0x2693, 0x2693 }, { 0x26A1, 0x26A1 }, { 0x26AA, 0x26AB }, { 0x26BD, 0x26BE }, { 0x26C4, 0x26C5 },
  { 0x26CE, 0x26CE }, { 0x26D4, 0x26D4 }, { 0x26EA, 0x26EA }, { 0x26F2, 0x26F3 }, { 0x26F5, 0x26F5 },
  { 0x26FA, 0x26FA }, { 0x26FD, 0x26FD }, { 0x2705, 0x2705 }, { 0x270A, 0x270B }, { 0x2728, 0x2728 },
  { 0x274C, 0x274C }, { 0x274E, 0x274E }, { 0x2753, 0x2755 }, { 0x2757, 0x2757 }, { 0x2795, 0x2797 },
  { 0x27B0, 0x27B0 }, { 0x27BF, 0x27BF }, { 0x2B1B, 0x2B1C }, { 0x2B50, 0x2B50 }, { 0x2B55, 0x2B55 },
  { 0x2E80, 0x303E }, { 0x3041, 0x4DBF }, { 0x4E00, 0xA4CF }, { 0xA960, 0xA97F }, { 0xAC00, 0xD7A3 },
  { 0xF900, 0xFAFF }, { 0xFE10, 0xFE19 }, { 0xFE30, 0xFE6F }, { 0xFF00, 0xFF60 }, { 0xFFE0, 0xFFE6 },
  { 0x16FE0, 0x16FE4 }, { 0x17000, 0x18CFF }, { 0x1B000, 0x1B2FF }, { 0x1F004, 0x1F004 }, { 0x1F0CF, 0x1F0CF },
  { 0x1F18E, 0x1F18E }, { 0x1F191, 0x1F19A }, { 0x1F200, 0x1F2FF }, { 0x1F300, 0x1F64F }, { 0x1F680, 0x1F6FF },
  { 0x1F7E0, 0x1F7EB }, { 0x1F900, 0x1F9FF }, { 0x1FA70, 0x1FAFF }, { 0x20000, 0x3FFFD },
}

local function char_width(c)
  if c < 0x300 then return 1 end
  if c <= 0x36F or (c >= 0x200B and c <= 0x200F) or (c >= 0xFE00 and c <= 0xFE0F) or (c >= 0x1AB0 and c <= 0x1AFF)
    or (c >= 0x1DC0 and c <= 0x1DFF) or (c >= 0x20D0 and c <= 0x20FF) or (c >= 0xFE20 and c <= 0xFE2F) then
    return 0
  end
  if c < 0x1100 then return 1 end
  local lo, hi = 1, #WIDE -- a binary search of the ranges
  while lo <= hi do
    local mid = (lo + hi) // 2
    local r = WIDE[mid]
    if c < r[1] then hi = mid - 1 elseif c > r[2] then lo = mid + 1 else return 2 end
  end
  return 1
end

local function width_of(s)
  if not utf8.len(s) then return #s end
  local w = 0
  for _, c in utf8.codes(s) do w = w + char_width(c) end
  return w
end
M.width = width_of

-- s cut to at most n columns, an ellipsis marking the cut.
local function cut(s, n)
  if width_of(s) <= n then return s end
  if not utf8.len(s) then return s:sub(1, math.max(0, n - 1)) .. "…" end
  local out, w = {}, 0
  for _, c in utf8.codes(s) do
    local cw = char_width(c)
    if w + cw > n - 1 then break end
    out[#out + 1] = utf8.char(c)
    w = w + cw
  end
  return table.concat(out) .. "…"
end

-- Cuts s to at most n columns (an ellipsis marks the cut) and pads it to n.
local function fit(s, n)
  s = cut(s, n)
  return s .. string.rep(" ", n - width_of(s))
end

-- The columns and rows a block may take (80 x 24 when unknown).
local function fit_size(width, height)
  return math.max(2, width or 80), math.max(1, height or 24)
end

local function percent(completed, total)
  if type(total) ~= "number" or total <= 0 then return nil end
  return math.min(100, math.floor(100 * (completed or 0) / total))
end

-- Colour -------------------------------------------------------------------------------------------
local SGR = { green = "32", yellow = "33", cyan = "36", bold = "1" }

local Reporter = {}
Reporter.__index = Reporter

function Reporter:paint(colour, s)
  if not self.color then return s end
  return "\27[" .. SGR[colour] .. "m" .. s .. "\27[0m"
end

-- Lines that stay (start, retry, done) ---------------------------------------------------------------
local function label(ev)
  if ev.file and ev.file ~= "" and ev.file ~= ev.id then return ev.id .. ": " .. ev.file end
  return ev.id or ev.file or "?"
end

-- The sentence for one event, or nil when the event only moves a bar (or says nothing).
function Reporter:sentence(ev)
  local kind, id = ev.event, ev.id or "?"
  if kind == "start" then
    local parts = {}
    if ev.files and ev.files > 1 then parts[#parts + 1] = ev.files .. " files" end
    if ev.total then parts[#parts + 1] = M.bytes(ev.total) end
    return "downloading " .. id .. (#parts > 0 and (" (" .. table.concat(parts, ", ") .. ")") or "")
  elseif kind == "retry" then
    -- A wait shorter than the tenth of a second the line could show (Retry-After: 0) is none.
    local wait = not ev.delay and "retrying" or ev.delay < 0.05 and "retrying now"
      or string.format("retrying in %.1fs", ev.delay)
    local attempt = ev.attempt and string.format(" (attempt %d)", ev.attempt) or ""
    return self:paint("yellow", label(ev) .. (ev.reason and (": " .. ev.reason) or "") .. "; " .. wait .. attempt)
  elseif kind == "fallback" then
    if ev.searching then return nil end -- not in one of the places it is looked for: no failure
    -- The same URL again: a split download given up for one connection (the reason says why).
    if ev.from and ev.from == ev.to then
      return self:paint("yellow", label(ev) .. ": " .. (ev.reason or "the split was given up") .. " (" .. ev.to .. ")")
    end
    -- The reason is the failure of the URL left (from), not of the one tried next.
    local left = (ev.from or "the URL") .. (ev.reason and (" (" .. ev.reason .. ")") or "")
    return self:paint("yellow", label(ev) .. ": " .. left .. " failed; trying " .. (ev.to or "the next URL"))
  elseif kind == "verify" then
    if ev.ok == false then return nil end
    local sum = ev.sha256 and ev.sha256:sub(1, 16) .. "…" or "?"
    if ev.checked == false then
      return label(ev) .. ": no SHA-256 stated to check against (sha256 " .. sum .. " recorded)"
    end
    return "verified " .. label(ev) .. " (sha256 " .. sum .. ")"
  elseif kind == "hash" then
    return label(ev) .. ": all segments in; computing its SHA-256 (one read of " .. M.bytes(ev.bytes) .. ")"
  elseif kind == "extract" then
    if ev.done then
      return string.format("extracted %s: %s entries, %s", id, tostring(ev.entries or "?"), M.bytes(ev.completed))
    end
    if self.extracting[id] then return nil end
    self.extracting[id] = true
    return "extracting " .. id
  elseif kind == "repair" then
    if ev.reason == "version" then
      return self:paint("yellow", id .. ": the installed file's SHA-256 is not the one stated now; downloading that version")
    elseif ev.reason == "source" then
      return self:paint("yellow", id .. ": the installed model came from elsewhere; downloading this one to replace it")
    end
    return self:paint("yellow", id .. ": the installed files changed on disk; downloading again")
  elseif kind == "skip" then
    return label(ev) .. ": optional file skipped" .. (ev.reason and (" (" .. ev.reason .. ")") or "")
  elseif kind == "done" then
    if ev.already then
      return id .. " is already installed and verified in " .. (ev.path or "?") .. " (--force downloads it again)"
    end
    return self:paint("green", "installed " .. id) .. " (" .. M.bytes(ev.bytes) .. ") in " .. (ev.path or "?")
  end
  return nil
end

-- Files in flight ----------------------------------------------------------------------------------
-- A file is tracked from its first progress event (every file that downloads has one, at its end
-- if not before): live, drawn, until its verify or its model's end, then only counted in the totals.
-- A list of thousands of models is thousands of files: finishing one, or drawing, costs what is
-- live, not what has been.
function Reporter:file(ev)
  local key = (ev.id or "") .. "\0" .. (ev.file or "")
  local f = self.files[key]
  if not f then
    f = { key = key, id = ev.id, file = ev.file, name = ev.file or ev.id or "?", completed = 0 }
    self.files[key] = f
    self.count = self.count + 1
    self.live[#self.live + 1] = f
    local id = ev.id or ""
    local of = self.of_model[id]
    if not of then
      of = {}
      self.of_model[id] = of
    end
    of[#of + 1] = f
  end
  return f
end

function Reporter:track(ev)
  local f = self:file(ev)
  if f.finished then return f end -- counted in the totals as it ended
  if ev.total then f.total = ev.total end
  if ev.completed then f.completed = ev.completed end
  f.speed, f.eta = ev.speed, ev.eta
  return f
end

-- A file leaves the live block (whole when ok: verified, or its model installed) for the totals.
function Reporter:finish_file(f, ok)
  if f.finished then return end
  f.finished = true
  if ok and f.total then f.completed = f.total end
  f.speed, f.eta = nil, nil
  self.ended_completed = self.ended_completed + (f.completed or 0)
  if f.total then self.ended_total = self.ended_total + f.total else self.ended_unknown = true end
  for i, g in ipairs(self.live) do
    if g == f then
      table.remove(self.live, i)
      break
    end
  end
end

-- Marks every file of a model finished (done) or gone (error).
function Reporter:finish_model(id, ok)
  for _, f in ipairs(self.of_model[id or ""] or {}) do self:finish_file(f, ok) end
  self.of_model[id or ""] = nil
end

function Reporter:totals()
  local done, total, speed, known = self.ended_completed, self.ended_total, 0, not self.ended_unknown
  for _, f in ipairs(self.live) do
    done = done + (f.completed or 0)
    if f.total then total = total + f.total else known = false end
    speed = speed + (f.speed or 0)
  end
  return done, known and total or nil, speed
end

-- Terminal drawing ---------------------------------------------------------------------------------
-- The numbers after a name, in the widest form that leaves a name room on the line: all of them;
-- without the speed; only the percentage (or the bytes, when the total is unknown). Each form has
-- a fixed width, so every line of a block takes the same one and the columns stay aligned.
local TAILS = {
  function(pct, amount, speed, eta)
    return string.format(" %4s %21s %12s %7s", pct and (pct .. "%") or "", amount, M.rate(speed), M.duration(eta))
  end,
  function(pct, amount, _, eta)
    return string.format(" %4s %21s %7s", pct and (pct .. "%") or "", amount, M.duration(eta))
  end,
  function(pct, _, _, _, completed) return string.format(" %9s", pct and (pct .. "%") or M.bytes(completed)) end,
}
local MIN_NAME = 8 -- the fewest characters of a name worth showing
local MAX_BAR = 30

-- One line of at most width - 1 characters (a line that wraps would break the redraw in place,
-- which moves up one row a line): the name (cut or padded to name_w), a bar filling what the
-- width leaves, the numbers.
function Reporter:bar_line(name, completed, total, speed, eta, name_w)
  local pct = percent(completed, total)
  local amount = total and (M.bytes(completed) .. " / " .. M.bytes(total)) or M.bytes(completed)
  local limit = self.width - 1
  local tail
  for _, form in ipairs(TAILS) do
    tail = form(pct, amount, speed, eta, completed)
    if limit - #tail >= MIN_NAME then break end
  end
  local room = limit - #tail -- for the name and the bar
  name_w = math.min(name_w, math.max(12, room - 13))
  local bar_w = math.min(MAX_BAR, room - name_w - 3)
  local bar = ""
  if bar_w >= 5 then
    local filled = pct and math.floor(bar_w * pct / 100) or 0
    bar = " [" .. self:paint("cyan", string.rep("=", filled)) .. string.rep(" ", bar_w - filled) .. "]"
  else
    name_w = room
  end
  if name_w < 1 then -- narrower than any form: the line itself is cut
    return cut(fit(name, 1) .. tail, limit)
  end
  return fit(name, name_w) .. bar .. tail
end

function Reporter:live_lines()
  local live = self.live
  if #live == 0 then return {} end
  local total_name = string.format("total (%d file%s)", self.count, self.count == 1 and "" or "s")
  local name_w = width_of(total_name)
  for _, f in ipairs(live) do name_w = math.max(name_w, width_of(f.name)) end
  -- The block and the cursor under it fit the screen (the redraw cannot move above its top):
  -- past that, the first files and a line for the others.
  local shown = #live
  if #live + 2 > self.height then shown = math.max(0, self.height - 3) end
  local lines = {}
  for i = 1, shown do
    local f = live[i]
    lines[#lines + 1] = self:bar_line(f.name, f.completed, f.total, f.speed, f.eta, name_w)
  end
  if shown < #live and self.height >= 3 then
    local more = #live - shown
    lines[#lines + 1] = cut(string.format("… and %d more file%s", more, more == 1 and "" or "s"), self.width - 1)
  end
  local done, total, speed = self:totals()
  local eta = total and speed > 0 and (total - done) / speed or nil
  lines[#lines + 1] = self:paint("bold", self:bar_line(total_name, done, total, speed, eta, name_w))
  return lines
end

-- Moves up over the block drawn last time and clears it.
function Reporter:erase()
  if self.drawn > 0 then
    self.out:write(string.format("\r\27[%dA", self.drawn))
    for _ = 1, self.drawn do self.out:write("\27[2K\n") end
    self.out:write(string.format("\27[%dA", self.drawn))
  end
  self.drawn = 0
end

function Reporter:redraw(now)
  self.last_draw = now or self.clock()
  -- The terminal may have been resized since the last draw: its lines fit the size it has now.
  if self.size then self.width, self.height = fit_size(self.size()) end
  local lines = self:live_lines()
  local out = { string.format(self.drawn > 0 and "\r\27[%dA" or "", self.drawn) }
  for _, line in ipairs(lines) do out[#out + 1] = "\27[2K" .. line .. "\n" end
  -- Lines left over from a taller block are cleared, then the cursor comes back under the new one.
  local extra = self.drawn - #lines
  if extra > 0 then
    for _ = 1, extra do out[#out + 1] = "\27[2K\n" end
    out[#out + 1] = string.format("\27[%dA", extra)
  end
  self.out:write(table.concat(out))
  self.out:flush()
  self.drawn = #lines
end

-- A line that stays: printed above the live block, which is drawn again under it.
function Reporter:say(line)
  if self.mode == "tty" then
    self:erase()
    self.out:write(line, "\n")
    self:redraw()
  else
    self.out:write(line, "\n")
    self.out:flush()
  end
end

-- Plain lines ---------------------------------------------------------------------------------------
function Reporter:plain_progress(f, now)
  local pct = percent(f.completed, f.total)
  local step = pct and pct // 10 or nil
  if (f.completed or 0) == 0 then return end -- queued behind others: nothing to say yet
  -- Whole at its first event (between two ticks): its verify line says it, a 100 % line would not.
  local whole = f.total ~= nil and f.completed >= f.total
  if whole and not f.said then return end
  local due = (step and step > (f.step or -1)) or now - (f.said or 0) >= PLAIN_EVERY
  if not due then return end
  f.step, f.said = step or f.step, now
  local amount = f.total and (M.bytes(f.completed) .. " of " .. M.bytes(f.total)) or M.bytes(f.completed)
  local parts = { label(f) }
  if pct then parts[#parts + 1] = pct .. "%" end
  parts[#parts + 1] = amount
  if f.speed and f.speed > 0 then parts[#parts + 1] = M.rate(f.speed) end
  if f.eta and not whole then parts[#parts + 1] = M.duration(f.eta) .. " left" end
  self.out:write(table.concat(parts, "  "), "\n")
  self.out:flush()
end

-- Events --------------------------------------------------------------------------------------------
-- The fields that hold lists: empty, they are written [] (an empty Lua table could be either).
local LIST_FIELDS = { alt = true, alternativeURLs = true, files = true, tags = true, extensions = true,
                      include = true, exclude = true, bad = true, urls = true, added = true, replaced = true }
-- Stands for [] until the line is encoded: a marker no data of this process can hold by chance.
local EMPTY_LIST = string.format("\0modelget:empty-list:%08x%08x\0", math.random(0, 0x7fffffff),
  math.random(0, 0x7fffffff))
local EMPTY_LIST_JSON = '"' .. EMPTY_LIST:gsub("\0", "\\u0000") .. '"'
local EMPTY_LIST_PATTERN = EMPTY_LIST_JSON:gsub("%p", "%%%0")

-- Only data crosses into JSON: functions and userdata are dropped, cycles are cut.
local function plain_data(v, seen, key)
  local kind = type(v)
  if kind ~= "table" then
    if kind == "string" or kind == "number" or kind == "boolean" then return v end
    return nil
  end
  if LIST_FIELDS[key] and next(v) == nil then return EMPTY_LIST end
  seen = seen or {}
  if seen[v] then return nil end
  seen[v] = true
  local out = {}
  for k, x in pairs(v) do
    if type(k) == "string" or type(k) == "number" then out[k] = plain_data(x, seen, k) end
  end
  seen[v] = nil
  return out
end
M.plain_data = function(v) return plain_data(v) end

-- One JSON object on one line.
function M.json_line(obj)
  local line = util.json_encode(plain_data(obj))
  -- Most lines (every progress event) hold no empty list: a plain search rules them out cheaply.
  if not line:find(EMPTY_LIST_JSON, 1, true) then return line end
  return (line:gsub(EMPTY_LIST_PATTERN, "[]"))
end

-- The event with its text made safe for a terminal (util.printable): names and messages come from
-- URLs, recipes and servers. JSON keeps the data as it is (its encoding escapes every control).
local function printable_event(ev)
  local copy = {}
  for k, v in pairs(ev) do copy[k] = type(v) == "string" and util.printable(v) or v end
  return copy
end

function Reporter:event(ev)
  local mode, kind = self.mode, ev.event
  if kind == "done" and ev.id then self.done[ev.id] = true end
  if kind == "error" and ev.message then self.failed[ev.message] = true end
  if mode == "json" then
    self.out:write(M.json_line(ev), "\n")
    self.out:flush()
    return
  end
  if mode == "quiet" and kind ~= "warning" then return end
  ev = printable_event(ev)
  if kind == "warning" then
    -- Recipe problems: worth a line even with -q, on stderr like every message.
    self.err:write("modelget: warning: ", tostring(ev.message), "\n")
    return
  end
  if kind == "progress" then
    local f = self:track(ev)
    local now = self.clock()
    if mode == "plain" then
      self:plain_progress(f, now)
    elseif now - self.last_draw >= REDRAW_EVERY then
      self:redraw(now)
    end
    return
  end
  if kind == "done" then self:finish_model(ev.id, true) end
  if kind == "verify" and ev.ok then
    local f = self.files[(ev.id or "") .. "\0" .. (ev.file or "")]
    if f then self:finish_file(f, true) end
  end
  if kind == "error" then
    self:finish_model(ev.id, false)
    if mode == "tty" then self:redraw() end
    return
  end
  local line = self:sentence(ev)
  if line then self:say(line) end
end

-- A message line from the command itself ("already installed"), placed like the event lines.
function Reporter:note(line)
  if self.mode == "quiet" or self.mode == "json" then return end
  self:say(util.printable(line))
end

-- Clears the live block; called once when the command ends.
function Reporter:close()
  if self.mode == "tty" then self:erase(); self.out:flush() end
end

-- opts: mode ("tty"|"plain"|"json"|"quiet"), out (file, default io.stdout), err (io.stderr), color (bool),
-- width (columns), height (rows), or size (a function giving both, asked again at each draw), clock
-- (seconds function).
function M.new(opts)
  opts = opts or {}
  local width, height = opts.width, opts.height
  if opts.size then width, height = opts.size() end
  width, height = fit_size(width, height)
  local r = setmetatable({
    mode = opts.mode or "plain",
    out = opts.out or io.stdout,
    err = opts.err or io.stderr,
    color = opts.color and true or false,
    width = width, height = height, size = opts.size,
    clock = opts.clock or require("modelget.core").now, -- wall time (os.clock is CPU time)
    files = {}, count = 0, live = {}, of_model = {}, drawn = 0, last_draw = -math.huge,
    ended_completed = 0, ended_total = 0, ended_unknown = false, -- the files finished, summed
    done = {}, failed = {}, extracting = {},
  }, Reporter)
  return r
end

-- The mode for a command line's options and stdout: json > quiet > tty > plain.
function M.mode(opts, isatty)
  if opts.json then return "json" end
  if opts.quiet then return "quiet" end
  return isatty and "tty" or "plain"
end

return M
