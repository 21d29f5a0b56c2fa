-- modelget: the facade. Defaults, option tables and policy over the engine (modelget.core).
-- Every function returns its result, or nil, "context: message", CODE for failures of the world;
-- a wrong argument type raises.
local core = require "modelget.core"
local util = require "modelget.util"
local store = require "modelget.store"
local download = require "modelget.download"
local pull = require "modelget.pull"
local rules = require "modelget.rules"
-- The catalog's modules are loaded when a catalog is first wanted: a pull of URLs never needs them.
local function registry() return require "modelget.registry" end
local function custom() return require "modelget.custom" end

local modelget = { core = core, version = "0.1.0" }

-- The options the facade reads, by kind: a wrong kind is misuse (an error), not a value to ignore.
local OPTION_KINDS = {
  store = "string", cacert = "string", framework = "string", sha256 = "string", id = "string", name = "string",
  url = "string", limit_rate = "rate", registry = "list", alt = "list", jobs = "integer", connections = "integer",
  retries = "integer", stall_timeout = "number", retry_wait = "number", connect_timeout = "number",
  json = "boolean", quiet = "boolean", unzip = "boolean", no_unzip = "boolean", auth = "boolean", force = "boolean",
  on_event = "function", on_progress = "function",
}
-- The least (and most) a number option may be, as the command line's checks have it.
local LIMITS = { jobs = { 1, download.JOBS_MAX }, connections = { 1, download.CONNECTIONS_MAX }, retries = { 0 },
                 stall_timeout = { 1, download.TIMEOUT_MAX }, retry_wait = { 0 },
                 connect_timeout = { 1, download.TIMEOUT_MAX } }
-- Options taken as they are (the command line's own, stop's wait, info's catalog): known, not checked.
local OTHER_OPTIONS = { wait = true, catalog = true, no_color = true, installed = true, help = true, version = true,
                        detach = true }

local function list_of_strings(v)
  if type(v) ~= "table" then return false end
  for _, x in ipairs(v) do if type(x) ~= "string" then return false end end
  return true
end

local function options(opts, level)
  if opts == nil then return {} end
  if type(opts) ~= "table" then error("bad argument: options must be a table, got " .. type(opts), level or 3) end
  for key in pairs(opts) do
    if type(key) == "string" and not OPTION_KINDS[key] and not OTHER_OPTIONS[key] then
      error(string.format("unknown option '%s'", key), level or 3)
    end
  end
  local copy
  for key, kind in pairs(OPTION_KINDS) do
    local v = opts[key]
    if v ~= nil then
      local ok
      if kind == "list" and type(v) == "string" then -- one path or URL: a list of one
        copy = copy or setmetatable({}, { __index = opts })
        copy[key], ok = { v }, true
      elseif kind == "list" then ok = list_of_strings(v)
      elseif kind == "rate" then ok = type(v) == "string" or type(v) == "number"
      elseif kind == "integer" then ok = math.type(v) ~= nil and math.tointeger(v) ~= nil
      else ok = type(v) == kind end
      if not ok then
        local want = kind == "list" and "a string or a list of strings" or kind == "rate" and "a rate (500K, 20M, bytes/s)"
          or ("a" .. (kind == "integer" and "n " or " ") .. kind)
        error(string.format("bad option '%s': expected %s, got %s", key, want, type(v)), level or 3)
      end
      local range = LIMITS[key]
      if range and (v ~= v or v < range[1] or (range[2] and v > range[2])) then
        error(string.format("bad option '%s': expected %s %d%s, got %s", key, kind == "integer" and "a whole number" or "a number",
          range[1], range[2] and (" to " .. range[2]) or " or more", tostring(v)), level or 3)
      end
      if kind == "rate" and not util.parse_size(v) then
        error(string.format("bad option '%s': expected a rate (500K, 20M, bytes/s), got %s", key, tostring(v)), level or 3)
      end
    end
  end
  return copy or opts
end

local function emitter(opts)
  local on_event, on_progress = opts.on_event, opts.on_progress
  return function(ev)
    -- What is said of a URL never holds its credentials: a pulled URL is an error's target, and
    -- its id when no file name could be made of it.
    for _, k in ipairs { "url", "from", "to", "target", "id" } do
      if util.is_url(ev[k]) then ev[k] = util.shown_url(ev[k]) end
    end
    if on_event then on_event(ev) end
    if on_progress and ev.event == "progress" then on_progress(ev) end
  end
end

-- The CA bundle: --cacert, else MODELGET_CA_BUNDLE, SSL_CERT_FILE, CURL_CA_BUNDLE, else the system's.
local function cacert(opts)
  if opts.cacert and opts.cacert ~= "" then return opts.cacert end
  for _, name in ipairs { "MODELGET_CA_BUNDLE", "SSL_CERT_FILE", "CURL_CA_BUNDLE" } do
    local v = os.getenv(name)
    if v and v ~= "" then return v end
  end
end
modelget.cacert = cacert

function modelget.store_root(opts) return store.root(options(opts)) end

function modelget.catalog(opts)
  opts = options(opts)
  return registry().load { store = store.root(opts), paths = opts.registry }
end

function modelget.frameworks() return rules.list() end

-- A scheduler for running many pulls at once from coroutines: sched:spawn(fn) starts a task,
-- sched:pull(target, opts) (inside a task) pulls, sched:run() drives them all, sched:close().
function modelget.scheduler(opts)
  opts = options(opts)
  local emit = emitter(opts)
  local sched = download.scheduler {
    jobs = opts.jobs, connections = opts.connections, limit_rate = opts.limit_rate, cacert = cacert(opts),
    retries = opts.retries,
    retry_wait = opts.retry_wait, stall_timeout = opts.stall_timeout, emit = emit,
  }
  -- Stop requests from other processes (modelget stop of some of the ids this process registered
  -- as pulling): looked for at each tick; those pulls are cancelled, their partial data kept.
  local root = store.root(opts)
  store.sweep_discarded(root) -- what a killed rm or forced pull left behind
  sched.on_tick = function(self)
    local reg = store.registration(root)
    if not reg then return end
    for _, id in ipairs(reg.requested()) do self:cancel(id) end
    reg.flush()
  end
  local catalog
  function sched.pull(self, target, popts)
    if type(target) ~= "string" then error("bad argument #1 to 'pull': expected an id or URL", 2) end
    popts = options(popts)
    local merged = setmetatable({}, { __index = function(_, k)
      if popts[k] ~= nil then return popts[k] end
      return opts[k]
    end })
    -- A URL pulled under an id of its choosing needs the catalog too: that id may not be a catalog
    -- model's (a later pull of the catalog's would take this one for it).
    if (not util.is_url(target) or merged.id) and not catalog then
      local problems
      catalog, problems = modelget.catalog(opts)
      for _, p in ipairs(problems or {}) do emit { event = "warning", message = p } end
    end
    local entry, err, code = pull.resolve(target, merged, catalog)
    local result
    local reg = store.registration(store.root(merged))
    if entry then
      -- A cancel is of the pulls of an id running then: one that begins later starts afresh. Not a
      -- stop asked from another process: that holds for a pull still to start (queued) too.
      local id, pulling = entry.id, self.pulling
      local function afresh()
        if not pulling[id] and not (reg and reg.asked(id)) then self.cancelled[id] = nil end
      end
      afresh()
      pulling[id] = (pulling[id] or 0) + 1
      -- Counted down however the pull ends (a callback's error too).
      local _ <close> = setmetatable({}, { __close = function()
        pulling[id] = pulling[id] > 1 and pulling[id] - 1 or nil
        afresh()
      end })
      result, err, code = pull.run(self, entry, { root = store.root(merged), opts = merged, emit = emit })
    end
    if reg then
      local id = entry and entry.id or modelget.target_id(target, merged)
      local stopped = code == "ECANCEL" and reg.asked(id)
      if stopped then
        -- Stopped from another process: for this pull, as if by Ctrl-C (exit 130 on the command line).
        local kept = entry and store.partial(store.root(merged), entry.framework, entry.id)
        err, code = kept and string.format("%s: stopped by modelget stop: %s of partial data kept in %s; "
          .. "run the same pull again to resume", id, util.human(kept.kept), kept.path)
          or string.format("%s: stopped by modelget stop before any data arrived", id), "EINTR"
      end
      reg.ended(id, stopped)
    end
    if result then
      emit { event = "done", id = result.id, path = result.path, sha256 = result.sha256, bytes = result.bytes,
             already = result.already }
      return result
    end
    emit { event = "error", id = entry and entry.id or modelget.target_id(target, merged), target = target, code = code,
           message = err }
    return nil, err, code
  end
  return sched
end

-- Runs a scheduler's tasks to their end and closes it, even when a task raised (a bug).
local function drive(sched)
  local ok, err = pcall(sched.run, sched)
  sched:close()
  if not ok then error(err, 0) end
end

function modelget.pull(target, opts)
  if type(target) ~= "string" then error("bad argument #1 to 'pull': expected an id or URL", 2) end
  opts = options(opts)
  local sched = modelget.scheduler(opts)
  local r
  sched:spawn(function() r = table.pack(sched:pull(target)) end)
  drive(sched)
  return table.unpack(r, 1, 3)
end

-- Pulls every target concurrently (jobs transfers at once); one outcome per target, in order.
-- The model id a pull target takes: --id; else a catalog id is itself, and a URL's is its file name
-- (--name, else the URL's) without the extension.
function modelget.target_id(target, opts)
  opts = opts or {}
  if opts.id then return opts.id end
  if not util.is_url(target) then return target end
  return util.id_from_name(opts.name or util.url_filename(target)) or target
end

-- Registers this process as pulling ids (log: where its output goes, if a file) until the handle's
-- close(): 'running' lists it and 'stop' can stop it. A handle, or nil, err, code.
function modelget.register_pull(ids, log, opts)
  return store.register_pull(store.root(options(opts)), ids, log)
end

-- Pulls running now in modelget processes on this store: {{pid=, ids={…}, started=, log=}…}.
function modelget.running(opts)
  return store.running_pulls(store.root(options(opts)))
end

-- Stops the pulls of ids (all of them when ids is nil or empty) running in other processes. A
-- process asked to stop everything it is still pulling gets SIGTERM, which it takes as Ctrl-C
-- (partial data kept, exit 130). One asked to stop some of its ids only is sent a stop request
-- (store.request_stop): it cancels those pulls as Ctrl-C would, their partial data kept, and goes
-- on with the others. Each is waited for (up to opts.wait seconds, default 10): the process to end,
-- or the ids to end in it. -> {{pid=, ids=, ended=bool, finished={…}|nil}…}: ids, those stopped;
-- finished, those named that ended otherwise before the request reached them (installed, or
-- failed). An id that no pull is running: nil, err, "EUNKNOWN", nothing stopped.
function modelget.stop(ids, opts)
  if ids ~= nil and type(ids) ~= "table" then error("bad argument #1 to 'stop': expected a list of ids or nil", 2) end
  opts = options(opts)
  local root = store.root(opts)
  local every = not ids or #ids == 0
  local chosen, found = {}, {}
  for _, p in ipairs(store.running_pulls(root)) do
    local named, pulling, pulled = {}, {}, 0
    for _, id in ipairs(p.ids) do
      if not pulling[id] then pulling[id], pulled = true, pulled + 1 end
    end
    for _, id in ipairs(ids or {}) do
      if pulling[id] then
        if found[id] ~= p then named[#named + 1] = id end
        found[id] = p
      end
    end
    -- Stopped whole (SIGTERM) when every id it pulls is named (named holds each of them once).
    local whole = every or (#named > 0 and #named == pulled)
    if (whole or #named > 0) and p.pid ~= core.getpid() then
      chosen[#chosen + 1] = { pid = p.pid, ids = whole and p.ids or named, whole = whole }
    end
  end
  for _, id in ipairs(ids or {}) do
    if not found[id] then return util.fail("EUNKNOWN", "no pull of '%s' is running: see 'modelget status'", id) end
  end
  for _, p in ipairs(chosen) do
    local ok, err, code
    if p.whole then
      ok, err, code = core.terminate(p.pid)
    else
      ok, err, code = store.request_stop(root, p.pid, p.ids)
    end
    if ok == nil then return nil, err, code end -- false: it ended meanwhile
  end
  local deadline = core.now() + (opts.wait or 10)
  for _, p in ipairs(chosen) do
    local seen -- the last state of a process asked to stop some ids: how each of them ended
    repeat
      if p.whole then
        p.ended = store.pull_ended(root, p.pid)
      else
        local state = store.pull_state(root, p.pid) -- nil once the process has ended
        seen = state or seen
        p.ended = true
        for _, id in ipairs(state and state.ids or {}) do
          for _, named in ipairs(p.ids) do p.ended = p.ended and id ~= named end
        end
      end
      if not p.ended then core.sleep(0.05) end
    until p.ended or core.now() > deadline or core.interrupted() -- Ctrl-C: the stop is sent, the wait ends
    if p.ended then
      -- How each pull ended: as the process said, when it said. One it still listed when last seen,
      -- the process having ended since (or one stopped whole, or never seen), is judged by what is
      -- left: a pull that ended installed its model and left no partial data; one stopped did not.
      local said, open = {}, {}
      for _, id in ipairs(seen and seen.stopped or {}) do said[id] = true end
      for _, id in ipairs(seen and seen.ids or {}) do open[id] = true end
      local kept
      local stopped, finished = {}, {}
      for _, id in ipairs(p.ids) do
        local was = said[id]
        if not was and (p.whole or open[id] or not seen) then
          if not kept then
            kept = {}
            for _, part in ipairs(store.partials(root)) do kept[part.id] = true end
          end
          was = kept[id] or not store.find(root, id)
        end
        table.insert(was and stopped or finished, id)
      end
      p.ids, p.finished = stopped, #finished > 0 and finished or nil
    end
    p.whole = nil
  end
  return chosen
end

function modelget.pull_many(targets, opts)
  if type(targets) ~= "table" then error("bad argument #1 to 'pull_many': expected a list", 2) end
  opts = options(opts)
  local sched = modelget.scheduler(opts)
  local out = {}
  -- One pull per model id: a target named twice is pulled once (both get its outcome); another
  -- target that would take an id already taken is refused (it would wait on the first's lock).
  local first, same, refused = {}, {}, {}
  local list = {}
  for i, target in ipairs(targets) do
    local id = type(target) == "string" and modelget.target_id(target, opts) or nil
    local j = id and first[id]
    if not j then
      if id then first[id] = i end
      list[#list + 1] = i
    elseif targets[j] == target then
      same[i] = j
    else
      out[i] = { ok = false, target = target, code = "EUSAGE",
        err = string.format("%s would be installed as '%s', as %s is: pull it on its own, with --id", target, id, targets[j]) }
      refused[#refused + 1] = out[i]
    end
  end
  -- A few pulls run ahead of the transfers (their setup overlaps the downloads); the others wait
  -- their turn, so a list of thousands holds a bounded number of locks and files open.
  -- Refused ones are failures like the others: an error event each.
  for _, r in ipairs(refused) do
    sched.emit { event = "error", id = modelget.target_id(r.target, opts), target = r.target, code = r.code, message = r.err }
  end
  local ahead = math.max(4 * (opts.jobs or 4), 32)
  local nexti, running = 1, 0
  local starting = false
  local function start_more()
    -- A pull that ends at once (already installed) ends inside spawn: the loop below goes on, rather
    -- than one call per such pull piling up on the stack.
    if starting then return end
    starting = true
    if sched:interrupted() then
      -- Ctrl-C: what has not started does not start.
      for k = nexti, #list do
        out[list[k]] = { ok = false, target = targets[list[k]], err = "interrupted before it started; run the same pull again", code = "EINTR" }
      end
      nexti = #list + 1
    end
    while running < ahead and nexti <= #list do
      local i = list[nexti]
      local target = targets[i]
      nexti, running = nexti + 1, running + 1
      sched:spawn(function()
        local r, err, code = sched:pull(target)
        out[i] = { ok = r ~= nil, target = target, result = r, err = err, code = code }
        running = running - 1
      end)
    end
    starting = false
  end
  sched.on_task_end = start_more
  start_more()
  drive(sched)
  for i, j in pairs(same) do
    local r = out[j]
    out[i] = { ok = r.ok, target = targets[i], result = r.result, err = r.err, code = r.code }
  end
  return out
end

function modelget.info(id, opts)
  if type(id) ~= "string" then error("bad argument #1 to 'info': expected an id", 2) end
  opts = options(opts)
  local catalog = opts.catalog or modelget.catalog(opts)
  local entry = catalog:get(id)
  local root = store.root(opts)
  local inst = store.find(root, id, entry and entry.framework)
  if not entry and not inst then return catalog:unknown(id) end
  local info = {}
  -- An installed model the catalog does not define (now): what its manifest says of it.
  local m = inst and inst.manifest
  for k, v in pairs(entry or { id = id, framework = inst.framework, name = m.name, url = m.url, source = m.source }) do
    info[k] = v
  end
  info.in_catalog = entry ~= nil
  info.installed = inst ~= nil
  if inst then
    info.path, info.installed_bytes, info.installed_files = inst.path, inst.bytes, inst.files
    -- The main file's SHA-256 as installed (an import records each file's: one file's is the model's).
    info.installed_sha256 = m.sha256 or (#inst.files == 1 and inst.files[1].sha256 or nil)
  end
  return info
end

-- The installed models, and (a second value) the damaged model folders: {{id=, framework=, path=,
-- problem=}…}.
function modelget.installed(opts)
  local list, damaged = store.models(store.root(options(opts)))
  for _, m in ipairs(list) do
    m.source, m.url = m.manifest.source, m.manifest.url -- where it came from: the catalog, a URL, an import
    m.manifest = nil
  end
  return list, damaged
end

-- Re-hashes installed models (all, or the ids given) against their manifests.
-- What gets a model that failed verify again: "COMMAND downloads it again" for a catalog id, or
-- (pull.again) for the URL or folder it came from; nil when nothing says (a damaged record of no
-- catalog model).
local function again(entry, m)
  if entry then return "modelget pull --force " .. m.id .. " downloads it again" end
  local cmd, does, hidden = pull.again(m)
  return cmd and string.format("%s %s it again%s", cmd, does, hidden and " (with the URL's credentials, not shown here)" or "")
end

function modelget.verify(ids, opts)
  if ids ~= nil and type(ids) ~= "table" then error("bad argument #1 to 'verify': expected a list of ids or nil", 2) end
  opts = options(opts)
  local root = store.root(opts)
  local all, damaged = store.models(root)
  local wanted
  if ids and #ids > 0 then
    wanted = {}
    local there = {} -- the ids of the store's model folders, intact or damaged
    for _, list in ipairs { all, damaged } do
      for _, m in ipairs(list) do there[m.id] = true end
    end
    for _, id in ipairs(ids) do
      if not there[id] then
        return util.fail("EUNKNOWN", "model '%s' is not installed: see 'modelget ls'", id)
      end
      wanted[id] = true
    end
  end
  local out = {}
  local catalog = (#all > 0 or #damaged > 0) and modelget.catalog(opts) or nil
  for _, m in ipairs(all) do
    if not wanted or wanted[m.id] then
      -- Checked as it is in place: one another process replaces meanwhile is checked anew, one it
      -- removes is no longer installed.
      local bad, checked, bcode = store.check_installed(m.path, true)
      if not bad and bcode == "EINTR" then -- Ctrl-C: no verdict on this model or the rest
        -- A 4th value: the verdicts reached before it.
        return nil, string.format("verify interrupted while checking %s: no verdict on it or the models after it; "
          .. "run the same verify again", m.id), "EINTR", out
      end
      if not bad and bcode then return nil, checked, bcode end
      if not bad and wanted then
        return util.fail("EUNKNOWN", "model '%s' is not installed: see 'modelget ls'", m.id)
      end
      if bad then
        -- Intact, but not the version the catalog states now (a recipe updated since): outdated.
        local e = catalog and catalog:get(m.id)
        local outdated = e and pull.outdated(e, checked) or nil
        out[#out + 1] = { id = m.id, framework = m.framework, path = m.path, ok = #bad == 0, bad = bad,
                          outdated = outdated, again = #bad > 0 and again(e, m) or nil }
      end
    end
  end
  -- A model folder whose manifest cannot be read has nothing to be checked against: it fails.
  for _, d in ipairs(damaged) do
    if not wanted or wanted[d.id] then
      out[#out + 1] = { id = d.id, framework = d.framework, path = d.path, ok = false, bad = { d.problem },
                        again = again(catalog and catalog:get(d.id), d), damaged = true }
    end
  end
  return out
end

-- Downloads in progress or stopped part-way, each with active = true while a pull holds it.
function modelget.partials(opts)
  local root = store.root(options(opts))
  local list = store.partials(root)
  for _, p in ipairs(list) do p.active = store.pulling(root, p.id) end
  return list
end

-- Removes an installed model and its partial data, or only the partial data of a stopped download.
function modelget.remove(id, opts)
  if type(id) ~= "string" then error("bad argument #1 to 'remove': expected an id", 2) end
  local root = store.root(options(opts))
  local m = store.find(root, id)
  if not m then
    for _, p in ipairs(store.partials(root)) do
      if p.id == id then m = { id = id, framework = p.framework } end
    end
  end
  if not m and util.valid_id(id) then
    -- A partial folder with nothing to resume: what an import killed part-way left (its copy).
    for _, r in ipairs(rules.list()) do
      if core.stat(store.partial_dir(root, r.name, id)) then m = { id = id, framework = r.name } end
    end
    -- A model folder whose manifest cannot be read (verify names it): removed like any other.
    local fw = store.installed_as(root, id)[1]
    if fw then m = { id = id, framework = fw } end
  end
  if not m then return util.fail("EUNKNOWN", "model '%s' is not installed: see 'modelget ls'", id) end
  local lock, err, code = store.lock(root, id, store.LOCK_WAIT)
  if not lock then return nil, err, code end
  -- A Ctrl-C that came before the model leaves its place (meanwhile, or while the lock was waited
  -- for) keeps it: the rename out of models/ is the point of no return.
  if core.interrupted() then
    lock:close()
    return util.fail("EINTR", "rm interrupted: '%s' was not removed", id)
  end
  -- Every folder of the id goes (an id is one model; a store from before that rule may hold two):
  -- first out of models/ in one rename, then deleted, so that a crash meanwhile leaves no half model.
  local ok, rerr, rcode = true, nil, nil
  for _, fw in ipairs(store.installed_as(root, id)) do
    local rok, e, c = store.discard(root, store.model_dir(root, fw, id), fw .. "--" .. id)
    if not rok and ok then ok, rerr, rcode = rok, e, c end
    core.rmtree(root .. "/partial/.old/" .. fw .. "--" .. id) -- a copy a killed forced pull moved aside
  end
  -- Its partial data, under whichever framework it was begun as (one id is one model).
  for _, r in ipairs(rules.list()) do core.rmtree(store.partial_dir(root, r.name, id)) end
  lock:close()
  store.sweep_discarded(root)
  if not ok then return nil, rerr, rcode end
  return true
end

-- What an import leaves out of the folder: Git's own folder (at any depth), the metadata that
-- `huggingface-cli download --local-dir` keeps at its top (.cache/huggingface/: no file of the
-- model), and a file named like the store's manifest.
local function import_skips(rel, name)
  return name == ".git" or rel == ".cache" or util.reserved_name(rel)
end

-- Adopts a local folder (a git clone of a model repo, say): checks it, copies it into the store.
function modelget.import_dir(dir, opts)
  if type(dir) ~= "string" then error("bad argument #1 to 'import_dir': expected a folder path", 2) end
  opts = options(opts)
  if not opts.id or not opts.framework then return util.fail("EUSAGE", "import needs --id ID and --framework F") end
  local id_bad = util.id_problem(opts.id)
  if id_bad then return util.fail("EUSAGE", "not a valid model id: '%s' (%s)", util.abbrev(opts.id), id_bad) end
  local rule = rules.get(opts.framework)
  if not rule then return util.fail("EUSAGE", "unknown framework '%s'", opts.framework) end
  -- A local clone of a catalog model may be imported under its id, as that model: of its framework.
  local agrees, aerr, acode = (opts.catalog or modelget.catalog(opts)):framework_agrees(opts.id, opts.framework)
  if not agrees then return nil, aerr, acode end
  local st = core.stat(dir)
  if not st or st.type ~= "dir" then return util.fail("EUSAGE", "%s: not a folder", dir) end
  local found = {} -- its files and links (a FIFO, socket or device is no model's file)
  for _, f in ipairs(store.walk(dir, import_skips)) do
    if f.type == "file" or f.type == "link" then found[#found + 1] = f end
  end
  if #found == 0 then
    return util.fail("EINPUT", "%s: no file to import (import leaves out .git/ and .cache/); use the folder that "
      .. "holds the model's files", dir)
  end
  local root = store.root(opts)
  -- Recorded as the absolute path: what `verify` and `pull` name to import it again from anywhere.
  local full = core.realpath(dir) or dir
  local entry = { id = opts.id, framework = opts.framework, name = util.basename(full), source = store.import_source(full) }
  local lock, lerr, lcode = store.lock(root, entry.id, store.LOCK_WAIT)
  if not lock then return nil, lerr, lcode end
  local result, err, code = (function()
    local free, ferr, fcode = store.id_free(root, entry.id, entry.framework)
    if not free then return nil, ferr, fcode end
    for _, f in ipairs(rule.side_files and rule.side_files(entry) or {}) do
      local path = f.path or f.name
      if not f.optional and not core.stat(dir .. "/" .. path) then
        return util.fail("EFORMAT", "model not compatible with %s: required file %s missing in %s",
          rule.title or rule.name, path, dir)
      end
    end
    local pdir = store.partial_dir(root, entry.framework, entry.id)
    local staging = pdir .. "/staging." .. core.getpid()
    -- A copy an import killed part-way left (ours to clear, we hold the lock), and an earlier one
    -- of this pid's.
    for _, name in ipairs(core.listdir(pdir) or {}) do
      if name:match("^staging%.%d+$") then core.rmtree(pdir .. "/" .. name) end
    end
    local ok, merr, mcode = core.mkdirs(staging)
    if not ok then return nil, merr, mcode end
    local files, total = {}, 0
    for _, f in ipairs(found) do
      if f.type == "link" then
        -- A link to a file is that file (a Hugging Face cache snapshot links each file to its blob):
        -- its bytes are copied. A link to a folder, or to nothing, is refused by name.
        local target = core.stat(dir .. "/" .. f.path, true)
        if not target then
          core.rmtree(staging)
          return util.fail("EINPUT", "%s: %s is a symbolic link to nothing", dir, f.path)
        end
        if target.type ~= "file" then
          core.rmtree(staging)
          return util.fail("EINPUT", "%s: %s is a symbolic link to a folder: copy the folder in its place", dir, f.path)
        end
        f.type = "file"
      end
      if f.type == "file" then
        local dest = staging .. "/" .. f.path
        core.mkdirs(util.dirname(dest))
        local hasher <close> = core.hasher()
        local n, herr, hcode = util.copy_file(dir .. "/" .. f.path, dest, core.interrupted, hasher)
        local sha = n and hasher:hex()
        if not sha or core.interrupted() then
          core.rmtree(staging)
          if core.interrupted() then
            return util.fail("EINTR", "import interrupted: nothing was installed; run the same import again")
          end
          return nil, herr, hcode
        end
        files[#files + 1] = { path = f.path, size = n, sha256 = sha }
        total = total + n
      end
    end
    local pointer = rules.lfs_pointer(staging, files)
    if pointer then
      core.rmtree(staging)
      return util.fail("EFORMAT", "%s: %s is a Git LFS pointer, not the file: run 'git lfs pull' in the clone first",
        dir, pointer)
    end
    local cok, cerr = rule.check(staging, entry)
    if not cok then
      core.rmtree(staging)
      return util.fail("EFORMAT", "model not compatible with %s: %s", rule.title or rule.name, cerr)
    end
    local dest, ierr, icode = store.install(root, staging, entry, files)
    if not dest then core.rmtree(staging); return nil, ierr, icode end
    core.rmtree(store.partial_dir(root, entry.framework, entry.id))
    return { id = entry.id, framework = entry.framework, path = dest, bytes = total, files = files }
  end)()
  -- A failed import leaves no empty partial folder (one holding a pull's resumable data stays).
  if not result then os.remove(store.partial_dir(root, entry.framework, entry.id)) end
  lock:close()
  return result, err, code
end

-- Custom model URLs (SPEC "Custom URL schema"), kept in <store>/registry/custom.json.
-- An id a recipe defines cannot be a custom URL's: the recipe's entry would win, the URL be ignored.
local function recipe_ids(opts)
  local catalog = modelget.catalog(opts)
  return function(id)
    local e = catalog:get(id)
    return e and not e.custom and e.source or nil
  end
end

modelget.urls = {
  list = function(opts) return custom().list(store.root(options(opts))) end,
  add = function(fields, opts)
    if type(fields) ~= "table" then error("bad argument #1 to 'urls.add': expected a table", 2) end
    local unknown = custom().unknown_field(fields)
    if unknown then error(unknown, 2) end -- said at the caller's line, as options() does
    opts = options(opts)
    return custom().add(store.root(opts), fields, recipe_ids(opts))
  end,
  remove = function(id, opts) return custom().remove(store.root(options(opts)), id) end,
  export = function(file, opts) return custom().export(store.root(options(opts)), file) end,
  import = function(file, opts)
    opts = options(opts)
    return custom().import(store.root(opts), file, recipe_ids(opts))
  end,
}

return modelget
