-- The store on disk (SPEC "Store"):
--   <root>/models/<framework>/<id>/…   installed models; each holds .modelget.json, its manifest
--   <root>/registry/                   the user's recipes and custom.json
--   <root>/partial/<framework>--<id>/  a pull's partial files; it becomes the model folder, or holds
--                                      the staging folder an archive is extracted into
--   <root>/partial/.locks              a lock per id (a key of the file), held while it is pulled
--   <root>/partial/.old/<fw>--<id>     an installed model being replaced (a forced re-pull)
-- Only complete, verified files ever appear under models/: a pull assembles the model in a folder
-- on the same file system and renames it into place in one step.
local core = require "modelget.core"
local util = require "modelget.util"

local store = {}

store.MANIFEST = util.MANIFEST

-- The store's root, and what named it: --store, $MODELGET_HOME, $XDG_DATA_HOME, else $HOME.
local function locate(opts)
  local root, source = opts and opts.store, "--store"
  if not root or root == "" then root, source = os.getenv("MODELGET_HOME"), "$MODELGET_HOME" end
  if not root or root == "" then
    local xdg = os.getenv("XDG_DATA_HOME")
    if xdg and xdg ~= "" then root, source = xdg .. "/modelget", "$XDG_DATA_HOME"
    else root, source = (os.getenv("HOME") or ".") .. "/.local/share/modelget", "$HOME" end
  end
  return (root:gsub("/+$", "")), source
end

function store.root(opts) return (locate(opts)) end

-- Why the store's root can hold no store, or nil: it is a folder, or one can be made there. A file
-- in its place (or in a folder's place above it), or a link to nothing, would have every command
-- that reads the store find it empty, and every one that writes fail on a folder inside it.
-- -> message (naming the root and what named it), or nil.
function store.root_problem(opts)
  local root, source = locate(opts)
  local path = root
  repeat
    local st = core.stat(path, true)
    if st and st.type == "dir" then return nil end
    local why = st and (path == root and "is not a folder" or ("cannot be made: " .. path .. " is not a folder"))
      or core.stat(path) and (path == root and "is a link to nothing" or ("cannot be made: " .. path .. " is a link to nothing"))
    if why then return string.format("the store %s (from %s) %s", root, source, why) end
    local up = util.dirname(path)
    if up == path then return nil end
    path = up
  until path == ""
end

function store.model_dir(root, framework, id) return root .. "/models/" .. framework .. "/" .. id end
function store.partial_dir(root, framework, id) return root .. "/partial/" .. framework .. "--" .. id end
function store.registry_dir(root) return root .. "/registry" end

-- core.lock(path, key), tried again for up to wait seconds while another process holds it.
function store.wait_lock(path, key, wait)
  local lock, lerr, lcode = core.lock(path, key)
  local deadline = core.now() + (wait or 0)
  while not lock and lcode == "EBUSY" and core.now() < deadline do
    core.sleep(0.02)
    lock, lerr, lcode = core.lock(path, key)
  end
  return lock, lerr, lcode
end

-- How long rm, import and pull try for a lock held by someone else: `status` holds one for an instant.
store.LOCK_WAIT = 0.5

-- Held for the whole pull, rm or import of one id; the others refuse while it is held. wait:
-- seconds to keep trying. Every id's lock is a key of the one file partial/.locks: no file to create
-- per model.
function store.lock(root, id, wait)
  local dir = root .. "/partial"
  local ok, err, code = core.mkdirs(dir)
  if not ok then return nil, err, code end
  local lock, lerr, lcode = store.wait_lock(dir .. "/.locks", id, wait)
  if not lock then
    if lcode == "EBUSY" then return store.busy(root, id) end
    return nil, lerr, lcode
  end
  return lock
end

-- Why id's lock is held, as a failure: a pull of the command line's that lists it (by its pid), or
-- else another process's pull, rm or import of it (an embedding app's pull is not registered).
function store.busy(root, id)
  for _, p in ipairs(store.running_pulls(root)) do
    for _, pulled in ipairs(p.pid ~= core.getpid() and p.ids or {}) do
      if pulled == id then
        return util.fail("EBUSY", "model '%s' is being downloaded by another modelget process (pid %d)", id, p.pid)
      end
    end
  end
  return util.fail("EBUSY", "model '%s' is in use by another process (a pull, rm or import of it); wait for that to end", id)
end

-- Whether a process holds id's lock (a pull, an rm, an import): a shared probe of it, which never
-- blocks another probe (two `status` at once do not take each other for a pull).
function store.pulling(root, id)
  local probe, _, code = core.lock(root .. "/partial/.locks", id, "shared")
  if probe then probe:close() end
  return code == "EBUSY"
end

-- Pull processes (the command line's): partial/.pull-<pid>, locked for the process's life, and
-- partial/.pull-<pid>.json, {"pid":, "ids": [...], "started":, "log":, "stopped": [...]}: ids are
-- those it is still pulling (each goes when its pull ends), stopped those of them a stop request
-- ended. A file whose lock can be had belongs to a process that is gone (killed): it is removed, and
-- never taken for a live one (a pid is reused; a lock is not).
-- partial/.pull-<pid>.stop, {"ids": [...]}: ids other processes asked it to stop (modelget stop of
-- some of its ids); only stoppers write it, each adding its ids under a lock, whole (temp + rename).
local function running_dir(root) return root .. "/partial" end

-- Writes a small file whole as tmp and renames it to path (a reader never sees half of it); not
-- synced: these files only live as long as the process does.
local function replace(path, tmp, text)
  local f, err = io.open(tmp, "w")
  local ok = f and f:write(text)
  ok = f and f:close() and ok
  if ok then ok, err = os.rename(tmp, path) end
  if not ok then
    os.remove(tmp)
    return nil, tostring(err)
  end
  return true
end

local registrations = {} -- root -> this process's registration there

-- Registers this process as pulling ids; a handle, or nil, err, code. The handle:
--   close()             unregisters
--   requested() -> ids  the ids other processes asked to stop since the last call (of those it pulls)
--   asked(id) -> bool   whether a stop of id was asked
--   ended(id, stopped)  the pull of id ended (stopped: by a stop request); said at the next flush,
--                       at once for an id asked to stop (a stop is waiting for it)
--   flush()             rewrites the registration when ids ended since the last
function store.register_pull(root, ids, log)
  local dir = running_dir(root)
  -- Folders made only to register go with the registration when nothing else came into them (a
  -- pull of an unknown id leaves no store behind).
  local made = {} -- innermost first
  if not core.stat(dir) then made[#made + 1] = dir end
  if not core.stat(root) then made[#made + 1] = root end
  local ok, err, code = core.mkdirs(dir)
  if not ok then return nil, err, code end
  local path = dir .. "/.pull-" .. core.getpid()
  local lock, lerr, lcode = core.lock(path)
  if not lock then return nil, lerr, lcode end
  os.remove(path .. ".stop") -- a request to a process gone that had this pid
  local doc = { pid = core.getpid(), ids = {}, started = os.time(), log = log, stopped = {} }
  for i, id in ipairs(ids) do doc.ids[i] = id end
  local wok, werr = replace(path .. ".json", path .. ".tmp", util.json_encode(doc))
  if not wok then
    lock:close()
    os.remove(path)
    return util.fail("EIO", "cannot register the pull in %s: %s", dir, werr)
  end
  local asked, dirty, closed = {}, false, false
  -- The ids still pulling as a set: an id's end is one step, the file's list is made at a flush.
  local order, pulling = doc.ids, {}
  for _, id in ipairs(order) do pulling[id] = true end
  local handle = {}
  function handle.flush()
    if not dirty or closed then return end
    dirty = false
    local left = {}
    for _, id in ipairs(order) do
      if pulling[id] then left[#left + 1] = id end
    end
    doc.ids = left
    replace(path .. ".json", path .. ".tmp", util.json_encode(doc))
  end
  function handle.requested()
    local text = util.read_file(path .. ".stop")
    if closed or not text then return {} end
    local req = util.json_decode(text, path .. ".stop")
    local new = {}
    for _, id in ipairs(type(req) == "table" and type(req.ids) == "table" and req.ids or {}) do
      if type(id) == "string" and pulling[id] and not asked[id] then
        asked[id] = true
        new[#new + 1] = id
      end
    end
    return new
  end
  function handle.asked(id) return asked[id] == true end
  function handle.ended(id, stopped)
    if not pulling[id] then return end
    pulling[id] = nil
    if stopped then doc.stopped[#doc.stopped + 1] = id end
    dirty = true
    if asked[id] then handle.flush() end
  end
  function handle.close()
    if closed then return end
    closed = true
    if registrations[root] == handle then registrations[root] = nil end
    os.remove(path .. ".json")
    os.remove(path .. ".stop")
    os.remove(path)
    lock:close()
    for _, folder in ipairs(made) do os.remove(folder) end -- only when empty
  end
  registrations[root] = handle
  return handle
end

-- This process's registration in the store at root (store.register_pull's handle), or nil.
function store.registration(root) return registrations[root] end

local function live(path)
  local lock, _, code = core.lock(path, nil, "shared")
  if lock then lock:close() end
  return code == "EBUSY", lock ~= nil
end

-- A live pull process's registration: {pid=, ids=, started=, log=, stopped=}, or nil once it ended.
function store.pull_state(root, pid)
  local path = running_dir(root) .. "/.pull-" .. pid
  if not live(path) then return nil end
  local doc = util.json_decode(util.read_file(path .. ".json") or "", path .. ".json")
  if type(doc) ~= "table" or math.tointeger(doc.pid) ~= math.tointeger(pid) then return nil end
  doc.pid = math.tointeger(doc.pid)
  if type(doc.ids) ~= "table" then doc.ids = {} end
  if type(doc.stopped) ~= "table" then doc.stopped = {} end
  return doc
end

-- Asks the pull process pid to stop the pulls of ids (the others go on): adds them to its request
-- file. Stoppers at once each add theirs: one at a time, under a lock. true, or nil, err, code.
function store.request_stop(root, pid, ids)
  local path = running_dir(root) .. "/.pull-" .. pid .. ".stop"
  local lock, err, code = store.wait_lock(running_dir(root) .. "/.locks", ".pull-" .. pid .. ".stop", 5)
  if not lock then
    if code == "EBUSY" then return util.fail("EBUSY", "another stop of pid %d is still writing its request", pid) end
    return nil, err, code
  end
  local req = util.json_decode(util.read_file(path) or "", path)
  local all, seen = {}, {}
  for _, id in ipairs(type(req) == "table" and type(req.ids) == "table" and req.ids or {}) do
    if type(id) == "string" and not seen[id] then all[#all + 1], seen[id] = id, true end
  end
  for _, id in ipairs(ids) do
    if not seen[id] then all[#all + 1], seen[id] = id, true end
  end
  local ok, werr = replace(path, path .. ".tmp", util.json_encode { ids = all })
  lock:close()
  if not ok then return util.fail("EIO", "cannot ask pid %d to stop: %s", pid, werr) end
  return true
end

-- The pull processes running now: {{pid=, ids={…}, started=, log=, stopped={…}}…}; entries of dead
-- ones removed.
function store.running_pulls(root)
  local dir, out = running_dir(root), {}
  local names = core.listdir(dir) or {}
  local present = {}
  for _, name in ipairs(names) do present[name] = true end
  for _, name in ipairs(names) do
    local pid = name:match("^%.pull%-(%d+)$")
    -- A stop request left for a process that had already gone (its registration removed meanwhile).
    local orphan = name:match("^(%.pull%-%d+)%.stop$") or name:match("^(%.pull%-%d+)%.stop%.tmp$")
    if orphan and not present[orphan] then os.remove(dir .. "/" .. name) end
    if pid then
      local path = dir .. "/" .. name
      -- Live only while its pull holds it exclusively (a probe is shared: probes never see each other).
      local alive, gone = live(path)
      if gone then -- nobody holds it: that process is gone (killed while registering, perhaps)
        os.remove(path .. ".json")
        os.remove(path .. ".tmp")
        os.remove(path .. ".stop")
        os.remove(path .. ".stop.tmp")
        os.remove(path)
      elseif alive then
        out[#out + 1] = store.pull_state(root, tonumber(pid))
      end
    end
  end
  return out
end

-- Whether the process that registered pid has ended (no exclusive holder of its lock).
function store.pull_ended(root, pid)
  local lock, _, code = core.lock(running_dir(root) .. "/.pull-" .. pid, nil, "shared")
  if lock then lock:close() end
  return code ~= "EBUSY"
end

-- Partial downloads: {{id=, framework=, path=, bytes=, kept=, total=|nil, files={{path=, bytes=, kept=, total=,
-- url=}…}}…} (bytes: on disk; kept: what a pull resumes from; total and url from each file's resume
-- state or split plan, when it has one).
-- One model's partial download (partial_dir(root, framework, id)), as store.partials lists them,
-- or nil when it holds no partial file.
function store.partial(root, framework, id)
  local dir = store.partial_dir(root, framework, id)
  local entry = { id = id, framework = framework, path = dir, bytes = 0, kept = 0, total = 0, files = {} }
  for _, f in ipairs(core.listdir(dir) or {}) do
    if f:match("%.part$") then
      local bytes = (core.stat(dir .. "/" .. f) or {}).size or 0
      local state = util.read_file(dir .. "/" .. f .. ".state") or ""
      local total = tonumber(state:match("\ntotal (%d+)\n"))
      local url = state:match("\nurl (%S+)\n")
      -- What a pull resumes from: what the state vouches for (a file killed between two checkpoints
      -- holds more, fetched again), nothing without a state.
      local kept = math.min(bytes, math.tointeger(tonumber(state:match("\nrange 0 %S+ (%d+)\n") or "0")) or 0)
      -- A download split over connections: its ranges are in place, their progress in the plan.
      local plan = util.read_file(dir .. "/" .. f .. ".split")
      plan = plan and util.json_decode(plan, f .. ".split")
      if type(plan) == "table" and type(plan.ranges) == "table" then
        bytes, total, url = 0, math.tointeger(plan.total), type(plan.url) == "string" and plan.url or url
        for _, r in ipairs(plan.ranges) do bytes = bytes + (math.tointeger(r[3]) or 0) end
        kept = bytes
      end
      entry.files[#entry.files + 1] = { path = f:gsub("%.part$", ""):gsub("%%2F", "/"), bytes = bytes, total = total,
                                        url = url, kept = kept }
      entry.bytes, entry.kept = entry.bytes + bytes, entry.kept + kept
      entry.total = total and entry.total and entry.total + total or nil
    end
  end
  return #entry.files > 0 and entry or nil
end

function store.partials(root)
  local out = {}
  for _, name in ipairs(core.listdir(root .. "/partial") or {}) do
    local fw, id = name:match("^(.-)%-%-(.+)$")
    out[#out + 1] = fw and store.partial(root, fw, id) or nil
  end
  table.sort(out, util.by_framework_then_id)
  return out
end

-- Removes a folder of the store as one step: renamed out of the way (under partial/.trash/, named
-- after what it was, key) and then deleted, so that a crash meanwhile leaves nothing half-removed
-- where it was. true, or nil, err, code.
function store.discard(root, dir, key)
  local trash = root .. "/partial/.trash"
  local ok = core.mkdirs(trash)
  local away = trash .. "/" .. key .. "." .. core.getpid()
  if ok and core.rename(dir, away) then dir = away end
  return core.rmtree(dir)
end

-- An installed model a forced re-pull moved aside (partial/.old/<fw>--<id>) and that pull killed
-- before it ended: removed when the new one is in place, else put back. Under the id's lock.
function store.settle_old(root, framework, id)
  local old = root .. "/partial/.old/" .. framework .. "--" .. id
  if not core.stat(old) then return end
  local dest = store.model_dir(root, framework, id)
  if core.stat(dest) then core.rmtree(old) else core.rename(old, dest) end
end

-- What killed processes left behind: models being deleted (partial/.trash), models moved aside
-- (partial/.old). Each under its id's lock; one a pull holds is left for later.
function store.sweep_discarded(root)
  local trash = root .. "/partial/.trash"
  for _, name in ipairs(core.listdir(trash) or {}) do
    local id = name:match("^.-%-%-(.+)%.%d+$")
    local lock = id and store.lock(root, id)
    if lock then
      core.rmtree(trash .. "/" .. name)
      lock:close()
    end
  end
  for _, name in ipairs(core.listdir(root .. "/partial/.old") or {}) do
    local fw, id = name:match("^(.-)%-%-(.+)$")
    local lock = id and store.lock(root, id)
    if lock then
      store.settle_old(root, fw, id)
      lock:close()
    end
  end
end

-- Whether an entry (or an installed model's manifest) came from a URL given on the command line or to
-- the facade, rather than from the catalog or an import.
function store.from_url(e) return e.source == "command line" end

-- The source an import records (an entry's, then its manifest's), and whether e's is one.
function store.import_source(dir) return "import " .. dir end
function store.from_import(e) return type(e.source) == "string" and e.source:sub(1, 7) == "import " end

-- The manifest of the model in dir, and its text; nil and what is wrong with it when there is none
-- (or it is not one).
function store.read_manifest(dir)
  local path = dir .. "/" .. store.MANIFEST
  local text, err = util.read_file(path)
  if not text then
    -- Gone, or there and unreadable (a folder in its place, no permission): which, said.
    if not core.stat(path) then return nil, "missing" end
    return nil, (tostring(err):gsub("^.-: ", ""))
  end
  local m = util.json_decode(text, dir .. "/" .. store.MANIFEST)
  if type(m) ~= "table" then return nil, "not valid JSON" end
  if type(m.files) ~= "table" then return nil, "no list of files" end
  return m, text
end

-- Calls fn(dir, framework, id, manifest, problem) for each folder under models/<framework>/, in the
-- order of the listing; problem says what is wrong with its manifest when it has none to read.
local function each_model(root, fn)
  for _, fw in ipairs(core.listdir(root .. "/models") or {}) do
    for _, id in ipairs(core.listdir(root .. "/models/" .. fw) or {}) do
      local dir = store.model_dir(root, fw, id)
      fn(dir, fw, id, store.read_manifest(dir))
    end
  end
end

-- The store's model folders, in one walk: the installed models, from their manifests
-- ({{id=, framework=, path=, bytes=, files=, manifest=}…}), and the damaged ones, whose manifest
-- cannot be read (missing, not JSON, no list of files: damage from outside, as an install writes the
-- manifest before its folder appears): {{id=, framework=, path=, problem=}…}, problem naming the
-- manifest and what is wrong. Each list sorted by framework, then id.
function store.models(root)
  local installed, damaged = {}, {}
  each_model(root, function(dir, fw, id, m, problem)
    if m then
      local bytes = 0
      for _, f in ipairs(m.files) do bytes = bytes + (f.size or 0) end
      installed[#installed + 1] = { id = id, framework = fw, path = dir, bytes = bytes, files = m.files, manifest = m }
      return
    end
    -- Only a folder named as an id can be a model (and be removed by rm ID): a file manager's
    -- .Trash-1000 or a "My Model" put there is no damaged model.
    local st = util.valid_id(id) and core.stat(dir)
    if st and st.type == "dir" then
      damaged[#damaged + 1] = { id = id, framework = fw, path = dir, problem = store.MANIFEST .. ": " .. problem }
    end
  end)
  table.sort(installed, util.by_framework_then_id)
  table.sort(damaged, util.by_framework_then_id)
  return installed, damaged
end

function store.installed(root) return (store.models(root)) end

-- The frameworks under which a model id has a folder in models/ (an id is one model: one lock, one
-- partial folder, one `rm`).
function store.installed_as(root, id)
  local out = {}
  for _, fw in ipairs(core.listdir(root .. "/models") or {}) do
    if core.stat(store.model_dir(root, fw, id)) then out[#out + 1] = fw end
  end
  return out
end

-- An id is one model: true, or a usage failure when the id is installed under another framework.
function store.id_free(root, id, framework)
  for _, fw in ipairs(store.installed_as(root, id)) do
    if fw ~= framework then
      return util.fail("EUSAGE", "id '%s' is already installed as %s/%s: use another --id, or remove it first "
        .. "(modelget rm %s)", id, fw, id, id)
    end
  end
  return true
end

function store.find(root, id, framework)
  for _, m in ipairs(store.installed(root)) do
    if m.id == id and (not framework or m.framework == framework) then return m end
  end
end

-- Files under dir (relative, sorted), leaving out what skip(rel, name) picks (an import's .git, say):
-- a folder picked is not walked into.
function store.walk(dir, skip)
  local out = {}
  local function walk(rel)
    local full = rel == "" and dir or (dir .. "/" .. rel)
    for _, name in ipairs(core.listdir(full) or {}) do
      local r = rel == "" and name or (rel .. "/" .. name)
      if not (skip and skip(r, name)) then
        local st = core.stat(dir .. "/" .. r)
        if st and st.type == "dir" then walk(r)
        elseif st then out[#out + 1] = { path = r, size = st.size, type = st.type } end
      end
    end
  end
  walk("")
  return out
end

-- Compares a model's files with its manifest: the relative paths that are missing, resized or
-- (when rehash) hashed differently.
function store.check(dir, manifest, rehash)
  local bad = {}
  for _, f in ipairs(manifest.files) do
    local path = dir .. "/" .. f.path
    local st = core.stat(path)
    if not st or st.type ~= "file" or st.size ~= f.size then
      bad[#bad + 1] = f.path
    elseif rehash and f.sha256 then
      local got, err, code = core.sha256_file(path)
      -- Ctrl-C stops a hash: that is no mismatch, and the check ends there.
      if code == "EINTR" then return nil, err, code end
      if got ~= f.sha256 then bad[#bad + 1] = f.path end
    end
  end
  return bad
end

-- store.check of the installed model in dir, whose manifest is read here. Another process may
-- replace the model meanwhile (a forced or updated pull renames the new folder into place, then
-- deletes the old one) or remove it (rm): files found missing or changed are a verdict only when the
-- manifest in place is still the one checked against (the same file: each install writes a new one),
-- else the model now in place is checked. -> bad, manifest (the one checked); nil when no model is
-- there any more; nil, err, code (Ctrl-C).
function store.check_installed(dir, rehash)
  local path = dir .. "/" .. store.MANIFEST
  local absent, replaced = 0, 0
  while replaced < 20 do
    -- Which manifest, before it is read: a model replaced in between is only checked once more.
    local st = core.stat(path)
    local m, text
    if st then m, text = store.read_manifest(dir) end
    if m then
      local bad, err, code = store.check(dir, m, rehash)
      if not bad then return nil, err, code end
      -- The same file, and the same text (a file system may give a new file the number of one just
      -- deleted: an rm and a new pull meanwhile).
      local now = core.stat(path)
      if #bad == 0 or (now and now.ino == st.ino and select(2, store.read_manifest(dir)) == text) then return bad, m end
      replaced = replaced + 1
    else
      -- Gone: removed, or for an instant between a replacement's two renames (up to a second, under load).
      absent = absent + 1
      if absent > 50 then return nil end
      core.sleep(0.02)
    end
  end
  -- Replaced again and again while it was checked: what the last check found.
  local m = store.read_manifest(dir)
  if not m then return nil end
  local bad, err, code = store.check(dir, m, rehash)
  if not bad then return nil, err, code end
  return bad, m
end

-- File-system steps (core.fs_start) run to their end here, as a job of one request: the way
-- outside a scheduler.
local function run_here(ops)
  local job = core.fs_start(require("modelget.download").job_steps { { ops = ops } })
  local ok, err, code = job:result(1)
  job:close()
  return ok, err, code
end

-- Writes the manifest into the assembled folder, makes every file and folder of it durable, then
-- renames it into place in one step and makes that durable: one list of steps, run off the event
-- loop by a scheduler (opts.run = its fs: the installs ready at once share their syncs) or here by
-- default. An existing model (a forced re-pull) is moved aside first and removed after.
-- opts.sha256: the main file's, recorded for a later "already installed".
function store.install(root, staging, entry, files, opts)
  opts = opts or {}
  local m = {
    id = entry.id, framework = entry.framework, name = entry.name, url = entry.url,
    source = entry.source, installed = os.time(), sha256 = opts.sha256, files = files,
  }
  local manifest = staging .. "/" .. store.MANIFEST
  local dest = store.model_dir(root, entry.framework, entry.id)
  local parent = util.dirname(dest)
  local ops = { { "write", manifest, util.json_encode(m) }, { "mkdirs", parent } }
  -- Before the rename, the files, the manifest and the folders that hold them are on the disk.
  local durable, dirs = { manifest }, {}
  for _, file in ipairs(files) do
    durable[#durable + 1] = staging .. "/" .. file.path
    local dir = file.path:match("^(.*)/[^/]*$")
    while dir and not dirs[dir] do
      dirs[dir] = true
      durable[#durable + 1] = staging .. "/" .. dir
      dir = dir:match("^(.*)/[^/]*$")
    end
  end
  durable[#durable + 1] = staging
  ops[#ops + 1] = { "barrier", table.unpack(durable) }
  -- An installed model replaced (a forced re-pull) is moved aside to a place no pull uses, and
  -- removed after. One left there by a pull killed in between goes back first, if its place is empty.
  local old = root .. "/partial/.old/" .. entry.framework .. "--" .. entry.id
  store.settle_old(root, entry.framework, entry.id)
  if core.stat(dest) then
    ops[#ops + 1] = { "mkdirs", util.dirname(old) }
    ops[#ops + 1] = { "rename", dest, old }
  else
    old = nil
  end
  ops[#ops + 1] = { "rename", staging, dest }
  -- The rename made durable (a scheduler syncs the parent once for the installs of a batch).
  ops[#ops + 1] = { "barrier", parent }
  local ok, err, code = (opts.run or run_here)(ops)
  if not ok and (core.stat(staging) or not core.stat(dest)) then
    -- The new model did not take its place: the old one goes back.
    if old and not core.stat(dest) then core.rename(old, dest) end
    return nil, err, code
  end
  -- In place (only the parent's sync may have failed: the rename is atomic, and a crash would at
  -- worst leave the model assembled under partial/ for the next pull).
  if old then core.rmtree(old) end
  return dest
end

return store
