-- Checks every URL of the catalog: is it there, is its size what the recipe says, does the hash the
-- server states (the Hub's X-Linked-Etag, or its tree listing's LFS oid) match the recipe's sha256.
--   modelget run scripts/check_urls.lua [--json] [--registry PATH]… [--store DIR] [--cacert FILE]
--                                       [--jobs N] [--tolerance PCT] [ID…]
-- HEAD requests (and one tree listing per Hub repo) through the engine, with HF_ENDPOINT and the Hub
-- token applied as for a pull. A size written as an estimate ("669 MB") may differ by --tolerance
-- percent (default 10); an exact one (an integer) may not. Exit status: 0 when every URL answers and
-- agrees, 1 when any is dead or disagrees, 9 when a recipe has a problem, 2 on a usage error.
-- A gated repo that refuses without a token is reported as "gated", not as dead.
local core = require "modelget.core"
local util = require "modelget.util"
local hub = require "modelget.hub"
local auth = require "modelget.auth"
local registry = require "modelget.registry"
local modelget = require "modelget"

local USAGE = "usage: modelget run scripts/check_urls.lua [--json] [--registry PATH]... [--store DIR] "
  .. "[--cacert FILE] [--jobs N] [--tolerance PCT] [ID...]"

local opts = { registry = {}, jobs = 8, tolerance = 10, ids = {} }
do
  local i = 1
  while i <= #arg do
    local a = arg[i]
    local key = ({ ["--registry"] = "registry", ["--store"] = "store", ["--cacert"] = "cacert", ["--jobs"] = "jobs",
                   ["--tolerance"] = "tolerance" })[a]
    if a == "--json" then
      opts.json = true
    elseif key then
      local v = arg[i + 1]
      if not v then io.stderr:write("check_urls: ", a, " needs a value\n", USAGE, "\n") return 2 end
      if key == "registry" then table.insert(opts.registry, v)
      elseif key == "jobs" or key == "tolerance" then
        opts[key] = tonumber(v)
        if not opts[key] or opts[key] < 0 then io.stderr:write("check_urls: ", a, ": not a number\n") return 2 end
      else opts[key] = v end
      i = i + 1
    elseif a:sub(1, 1) == "-" then
      io.stderr:write("check_urls: unknown option ", a, "\n", USAGE, "\n")
      return 2
    else
      opts.ids[#opts.ids + 1] = a
    end
    i = i + 1
  end
end

local function cacert() return modelget.cacert(opts) end

-- Output ---------------------------------------------------------------------------------------
local failures = 0

-- One line per URL: {id=, url=, file=, status=, ok=, size=, expected_size=, stated_sha256=, sha256=, note=}
local function report(r)
  if not r.ok then failures = failures + 1 end
  if opts.json then
    io.stdout:write(util.json_encode(r), "\n")
    return
  end
  local size = r.size and util.human(r.size) or "?"
  if r.expected_size then size = size .. " (recorded " .. util.human(r.expected_size) .. ")" end
  io.stdout:write(string.format("%-4s %-34s %-5s %-24s %s%s\n", r.ok and "ok" or "FAIL", r.id,
    tostring(r.status or "-"), size, r.file or r.url, r.note and ("  — " .. r.note) or ""))
end

-- Requests -------------------------------------------------------------------------------------
local session = core.session { jobs = math.tointeger(opts.jobs) or 8, cacert = cacert(), user_agent = "modelget-check/0.1",
  connect_timeout = 20 }
local pending = {}

-- Starts a request (HEAD, or a small GET into memory); done(result) runs when it finishes and may
-- start more requests.
local function request(url, memory, done)
  local real = hub.rewrite(url)
  local ok, err, code = util.check_url(real)
  if not ok then return done { ok = false, message = err, code = code } end
  local tr = session:add { url = real, head = not memory or nil, memory = memory, auth = auth.for_url(real),
    resume = false, stall_timeout = 30 }
  pending[tr] = done
end

local function drain()
  while next(pending) do
    session:perform(0.5)
    for _, tr in ipairs(session:finished()) do
      local done = pending[tr]
      pending[tr] = nil
      local r = tr:result()
      tr:close()
      done(r)
    end
  end
end

-- Verdicts -------------------------------------------------------------------------------------

local function size_note(got, want, exact)
  if not got or not want then return nil end
  if exact then
    if got ~= want then return string.format("size %d, recorded exactly %d", got, want) end
    return nil
  end
  if math.abs(got - want) > want * opts.tolerance / 100 then
    return string.format("size %s, recorded about %s", util.human(got), util.human(want))
  end
  return nil
end

-- The verdict on one file: r = the engine's result; want = {size=, exact=, sha256=}.
local function judge(entry, file, url, r, want)
  local line = { id = entry.id, url = url, file = file, status = r.status }
  local gated = entry.auth and (r.status == 401 or r.status == 403)
  if not r.ok then
    line.ok = gated and not auth.for_url(hub.rewrite(url)) or false
    line.note = gated and ("gated: " .. (auth.hint(hub.rewrite(url)) or "needs a credential")) or r.message
    return report(line)
  end
  line.size = r.linked_size or r.bytes
  line.stated_sha256 = util.is_sha256(r.linked_etag) and r.linked_etag:lower() or want.stated
  line.sha256 = want.sha256
  line.expected_size = want.size
  local notes = {}
  local sn = size_note(line.size, want.size, want.exact)
  if sn then notes[#notes + 1] = sn end
  if want.sha256 and line.stated_sha256 and want.sha256 ~= line.stated_sha256 then
    notes[#notes + 1] = "the server states sha256 " .. line.stated_sha256 .. ", recorded " .. want.sha256
  end
  if want.stated and util.is_sha256(r.linked_etag) and r.linked_etag:lower() ~= want.stated then
    notes[#notes + 1] = "the Hub lists sha256 " .. want.stated .. " but its download states " .. r.linked_etag:lower()
  end
  line.ok = #notes == 0
  line.note = #notes > 0 and table.concat(notes, "; ") or nil
  report(line)
end

-- A Hub snapshot: list the tree, HEAD every selected file, compare the total with the estimate.
local function check_hub(entry)
  local spec = entry.hub
  local tree_url = hub.tree_url(spec.repo, spec.revision, nil, spec.dir)
  request(tree_url, 16 * 1024 * 1024, function(r)
    local line = { id = entry.id, url = tree_url, file = spec.repo .. " (listing)", status = r.status }
    if not r.ok then
      local gated = entry.auth and (r.status == 401 or r.status == 403)
      line.ok = gated and not auth.for_url(tree_url) or false
      line.note = gated and "gated: " .. (auth.hint(tree_url) or "needs a credential") or r.message
      return report(line)
    end
    local tree = util.json_decode(r.body or "", tree_url)
    local files, err = tree and hub.select(tree, spec) or nil, tree and nil or "not JSON"
    if files and #files == 0 then files, err = nil, "no file matches " .. table.concat(spec.include or { "*" }, ", ") end
    if not files then
      line.ok, line.note = false, err or "not a listing"
      return report(line)
    end
    local total = 0
    for _, f in ipairs(files) do total = total + (f.size or 0) end
    line.size, line.expected_size, line.ok = total, entry.size, true
    line.note = size_note(total, entry.size, entry.size_exact)
    if line.note then line.ok = false end
    line.file = string.format("%s (%d files)", spec.repo, #files)
    report(line)
    for _, f in ipairs(files) do
      request(f.url, nil, function(fr) judge(entry, f.path, f.url, fr, { size = f.size, exact = f.size ~= nil, stated = f.sha256 }) end)
    end
  end)
end

local function check_entry(entry)
  if entry.url then
    local want = { size = entry.size, exact = entry.size_exact, sha256 = entry.sha256 }
    for _, u in ipairs({ entry.url, table.unpack(entry.alt or {}) }) do
      request(u, nil, function(r) judge(entry, util.url_filename(u), u, r, want) end)
    end
  end
  if entry.hub then check_hub(entry) end
  local sizes, total, seen = {}, 0, 0
  for _, f in ipairs(entry.files or {}) do
    request(f.url, nil, function(r)
      judge(entry, f.name, f.url, r, { size = f.size, exact = f.size ~= nil, sha256 = f.sha256 })
      sizes[f.name] = r.ok and (r.linked_size or r.bytes) or nil
      seen = seen + 1
      total = total + (sizes[f.name] or 0)
      if seen == #entry.files and not entry.url and not entry.hub and entry.size then
        local note = size_note(total, entry.size, entry.size_exact)
        if note then report { id = entry.id, file = "(all files)", ok = false, size = total, expected_size = entry.size, note = note } end
      end
    end)
    -- A side file's alternatives are asked too: each must serve the same file.
    for _, u in ipairs(f.alt or {}) do
      request(u, nil, function(r) judge(entry, f.name, u, r, { size = f.size, exact = f.size ~= nil, sha256 = f.sha256 }) end)
    end
  end
end

-- Main -----------------------------------------------------------------------------------------
local catalog, problems = registry.load { store = opts.store, paths = opts.registry }
for _, p in ipairs(problems) do io.stderr:write("check_urls: ", p, "\n") end

local entries = {}
if #opts.ids > 0 then
  for _, id in ipairs(opts.ids) do
    local e = catalog:get(id)
    if not e then io.stderr:write("check_urls: unknown model id '", id, "'\n") return 2 end
    entries[#entries + 1] = e
  end
else
  entries = catalog:entries()
end

for _, e in ipairs(entries) do check_entry(e) end
drain()
session:close()

if not opts.json then
  io.stdout:write(string.format("%d model%s checked, %d problem%s\n", #entries, #entries == 1 and "" or "s",
    failures + #problems, failures + #problems == 1 and "" or "s"))
end
if #problems > 0 then return 9 end
return failures > 0 and 1 or 0
