-- One pull: target → entry → file plan → downloads (resumable, verified) → extraction → format
-- check → atomic install. Runs as a task of a download scheduler, so many pulls share one Session.
local core = require "modelget.core"
local util = require "modelget.util"
local store = require "modelget.store"
local rules = require "modelget.rules"
local auth = require "modelget.auth"
local hub = require "modelget.hub"

local pull = {}

local function framework_names()
  local names = {}
  for _, r in ipairs(rules.list()) do names[#names + 1] = r.name end
  return table.concat(names, ", ")
end

-- The entry for a URL given on the command line (or through the API).
local function entry_for_url(url, opts)
  url = hub.rewrite(url)
  local ok, err, code = util.check_url(url)
  if not ok then return nil, err, code end
  local name = opts.name or util.url_filename(url)
  local problem = not opts.name and util.file_name_problem(name) -- a --name given is checked already
  if problem and not util.safe_component(name) then
    return util.fail("EUSAGE", "cannot name a file after %s: pass --name FILE", util.shown_url(url))
  elseif problem then
    return util.fail("EUSAGE", "cannot name a file after %s: its name %s; pass --name FILE",
      util.abbrev(util.shown_url(url)), problem)
  elseif util.reserved_name(name) then
    return util.fail("EUSAGE", "'%s' is the name of the store's record of a model: pass --name FILE", name)
  end
  local framework = opts.framework or rules.framework_for_name(name)
  if not framework then
    return util.fail("EUSAGE", "cannot tell the framework of '%s' from its extension: pass --framework (%s)",
      name, framework_names())
  end
  local id = opts.id or util.id_from_name(name)
  if not id then return util.fail("EUSAGE", "cannot make a model id of '%s': pass --id ID", name) end
  -- An archive by its name is extracted, as a recipe's is, unless asked otherwise.
  local unzip = opts.unzip and true or (not opts.no_unzip and util.is_archive(name))
  return { id = id, name = name, file = name, framework = framework, url = url, alt = {},
           unzip = unzip, auth = opts.auth or nil, source = "command line" }
end

-- The command that pulls `url` into model `id` of `framework`, its file named `file`: the URL and
-- the options that give the same model again (its framework, file name and id, each when the URL
-- alone would give another; an archive's extraction follows its name, as it did). Also whether
-- the URL shown hides credentials.
local function pull_command(url, id, framework, file, force)
  local words = { force and "modelget pull --force" or "modelget pull", util.shell_quote(util.shown_url(url)) }
  if rules.framework_for_name(file) ~= framework then words[#words + 1] = "--framework " .. framework end
  if util.url_filename(url) ~= file then words[#words + 1] = "--name " .. util.shell_quote(file) end
  if util.id_from_name(file) ~= id then words[#words + 1] = "--id " .. id end
  return table.concat(words, " "), util.shown_url(url) ~= url
end

-- A model pulled from a URL and stopped part-way is not a catalog id: the URL its partial download
-- records (resume state or split plan) is what resumes it. The command that does, or nil.
local function resume_hint(target, opts)
  if not util.valid_id(target) then return nil end
  for _, p in ipairs(store.partials(store.root(opts))) do
    local f = p.id == target and #p.files == 1 and p.files[1]
    if f and f.url then return pull_command(f.url, target, p.framework, f.path) end
  end
end

-- What gets an installed model that is no catalog id again, from the record its install left
-- (m: store.installed's): the pull of the URL it came from, or the import of its folder. The
-- command, what it does ("downloads" or "copies"), and whether the URL shown hides credentials;
-- nil when the record says neither (an older store's import of a relative path, say).
function pull.again(m)
  local rec = m.manifest or {}
  if store.from_url(rec) and type(rec.url) == "string" and type(rec.name) == "string" then
    local cmd, hidden = pull_command(rec.url, m.id, m.framework, rec.name, true)
    -- Extracted or not, as it was: an archive installed as it is holds its own file, an extracted
    -- one its entries.
    local kept_whole = false
    for _, f in ipairs(rec.files or {}) do kept_whole = kept_whole or f.path == rec.name end
    if util.is_archive(rec.name) and kept_whole then cmd = cmd .. " --no-unzip"
    elseif not util.is_archive(rec.name) and not kept_whole then cmd = cmd .. " --unzip" end
    return cmd, "downloads", hidden
  end
  local dir = store.from_import(rec) and rec.source:sub(8)
  if dir and dir:sub(1, 1) == "/" then
    return string.format("modelget import %s --id %s --framework %s", util.shell_quote(dir), m.id, m.framework),
      "copies"
  end
end

-- Resolves an id or URL into an entry, with the pull's options laid over it.
function pull.resolve(target, opts, catalog)
  local entry, err, code
  local problem = opts.name and util.file_name_problem(opts.name)
  if problem then return util.fail("EUSAGE", "--name: '%s' %s", util.abbrev(opts.name), problem) end
  if util.is_url(target) then
    entry, err, code = entry_for_url(target, opts)
    if not entry then return nil, err, code end
    local taken = opts.id and catalog and catalog:get(opts.id)
    if taken then
      return util.fail("EUSAGE", "'%s' is already a catalog model (%s): pull the URL under another --id", opts.id,
        tostring(taken.source))
    end
  else
    local found = catalog and catalog:get(target)
    if not found then
      local resume, hidden = resume_hint(target, opts)
      if resume then
        return util.fail("EUNKNOWN", "'%s' is not a catalog id: its partial download came from a URL; %s resumes it%s",
          target, resume, hidden and " (with the URL's credentials, not shown here)" or "")
      end
      -- Installed from a URL or a folder: what gets it again.
      local installed = util.valid_id(target) and store.find(store.root(opts), target)
      local again, does, ahidden
      if installed then again, does, ahidden = pull.again(installed) end
      if again then
        return util.fail("EUNKNOWN", "'%s' is not a catalog id: it was installed from %s; %s %s it again%s", target,
          does == "copies" and "a folder" or "a URL", again, does, ahidden and " (with the URL's credentials, not shown here)" or "")
      end
      if catalog then return catalog:unknown(target) end
      return util.fail("EUNKNOWN", "unknown model id '%s': see 'modelget list' or 'modelget search WORDS'", target)
    end
    entry = setmetatable({}, { __index = found })
    if opts.id then entry.id = opts.id end
    if opts.name then entry.file = opts.name end
    if opts.unzip then entry.unzip = true end
    if opts.no_unzip then entry.unzip = false end
  end
  if opts.sha256 then
    if not util.is_sha256(opts.sha256) then
      return util.fail("EUSAGE", "--sha256: expected 64 hex digits, got '%s'", opts.sha256)
    end
    entry.sha256 = opts.sha256:lower()
    entry.sha256_from = "the SHA-256 given"
  end
  if opts.framework and not util.is_url(target) then entry.framework = opts.framework end
  if not rules.get(entry.framework) then
    return util.fail("EUSAGE", "unknown framework '%s' (known: %s)", entry.framework, framework_names())
  end
  if catalog and not util.is_url(target) then
    local agrees, aerr, acode = catalog:framework_agrees(entry.id, entry.framework)
    if not agrees then return nil, aerr, acode end
  end
  local id_bad = util.id_problem(entry.id)
  if id_bad then
    return util.fail("EUSAGE", "not a valid model id: '%s' (%s)", util.abbrev(tostring(entry.id)), id_bad)
  end
  local alts = {}
  for _, u in ipairs(entry.alt or {}) do alts[#alts + 1] = u end
  for _, u in ipairs(opts.alt or {}) do alts[#alts + 1] = u end
  for _, u in ipairs(alts) do
    local ok, err, code = util.check_url(hub.rewrite(u))
    if not ok then return nil, err, code end
  end
  entry.alt = alts
  return entry
end

-- The file name the main download gets: the entry's file, its name when that is a file name, else the
-- URL's last segment.
local function main_file_name(entry)
  if entry.file then return entry.file end
  local name = entry.name
  if name and not name:find("%s") and name:find("%.%w+$") and util.safe_component(name) then return name end
  return util.url_filename(entry.url)
end

local function rewrite_all(urls)
  local out = {}
  for _, u in ipairs(urls) do out[#out + 1] = hub.rewrite(u) end
  return out
end

-- The files of a pull: {{path=, urls={…}, sha256=, size=, optional=, main=, archive=}…}
local function plan_files(sched, entry, rule, ctx)
  local files = {}
  if entry.url then
    local name = main_file_name(entry)
    local urls = { hub.rewrite(entry.url) }
    for _, u in ipairs(rewrite_all(entry.alt or {})) do urls[#urls + 1] = u end
    -- A recipe's size is an estimate ("669 MB") unless it was given in exact bytes (size_exact).
    files[#files + 1] = { path = name, urls = urls, sha256 = entry.sha256, sha256_from = entry.sha256_from, main = true,
                          size = entry.size_exact and entry.size or nil, estimate = entry.size,
                          archive = entry.unzip or nil }
  end
  if entry.hub then
    local listed, err, code = hub.list_files(entry, function(url) return sched:fetch_json(url, ctx) end)
    if not listed then return nil, err, code end
    if #listed == 0 then
      return util.fail("EUNKNOWN", "%s: no file of the Hub repo %s matches the include patterns", entry.id, entry.hub.repo)
    end
    for _, f in ipairs(listed) do
      files[#files + 1] = { path = f.path, urls = { hub.rewrite(f.url) }, listed_sha256 = f.sha256, size = f.size,
                            main = not entry.url and #files == 0, from_hub = true }
    end
  end
  -- The recipe's own side files, then the framework's (a name taken already is passed over). A
  -- recipe's file named like one of its Hub repo's takes that file's place: its URL and SHA-256 are
  -- the ones the recipe states.
  local at = {}
  for i, f in ipairs(files) do at[f.path] = i end
  local function side(f, from_recipe)
    local path = f.path or f.name
    local i = at[path]
    if i and not (from_recipe and files[i].from_hub) then return end
    local urls = { hub.rewrite(f.url) }
    for _, u in ipairs(rewrite_all(f.alt or {})) do urls[#urls + 1] = u end
    local main = i and files[i].main
    i = i or #files + 1
    at[path] = i
    files[i] = { path = path, urls = urls, sha256 = f.sha256, size = f.size_exact and f.size or nil,
                 estimate = util.parse_size(f.size), optional = f.optional, side = not main, main = main,
                 searching = f.searching }
  end
  for _, f in ipairs(entry.files or {}) do side(f, true) end
  for _, f in ipairs(rule.side_files and rule.side_files(entry) or {}) do side(f, false) end
  if #files == 0 then return util.fail("EINPUT", "%s: the entry has no url, hub repo or files", entry.id) end
  for _, f in ipairs(files) do
    if not util.safe_relpath(f.path) then
      return util.fail("EINPUT", "%s: unsafe file path '%s'", entry.id, tostring(f.path))
    end
    if util.reserved_name(f.path) then
      return util.fail("EINPUT", "%s: a file may not be named '%s' (the store's record of a model)", entry.id, f.path)
    end
    for _, u in ipairs(f.urls) do
      local ok, err, code = util.check_url(u)
      if not ok then return nil, err, code end
    end
  end
  return files
end

-- Partial files live flat under the pull's partial folder; nested paths are flattened.
local function partial_path(pdir, path) return pdir .. "/" .. path:gsub("/", "%%2F") .. ".part" end

-- Whether a name in a partial folder is resumable data: a partial file, its state or a split plan.
local function resumable(name)
  return name:match("%.part$") or name:match("%.part%.state$") or name:match("%.part%.split$")
end

local function remove_partial(path)
  os.remove(path)
  os.remove(path .. ".state")
  os.remove(path .. ".split")
end

-- What the server said of the bytes it sent, when that explains bytes that are not the file: a web
-- page (a login or error page served with 200), or the file compressed on the wire unasked (its
-- bytes are kept as sent, as curl and wget keep them: an Apache serving a .tar.gz says
-- Content-Encoding: gzip of the very file). msg with that clause added (name: the file, else "it").
local function with_served_as(msg, r, name)
  local h = r and r.headers or {}
  local encoding = h["content-encoding"]
  local ctype = r and r.content_type or h["content-type"] or ""
  if encoding and encoding:lower() ~= "identity" then
    return string.format("%s; the server sent %s compressed (Content-Encoding: %s): not the file's own bytes", msg,
      name or "it", util.abbrev(encoding))
  elseif ctype:lower():match("^%s*text/html") or ctype:lower():match("^%s*application/xhtml") then
    return string.format("%s; the server sent a web page (Content-Type: %s)%s: an error or login page, not the file",
      msg, util.abbrev(ctype), name and " for " .. name or "")
  end
  return msg
end

local function verify_file(f, r, emit, id)
  local expected, source = f.sha256, f.sha256_from or "the recipe"
  if not expected and util.is_sha256(r.linked_etag) then expected, source = r.linked_etag:lower(), "the server" end
  if not expected and f.listed_sha256 then expected, source = f.listed_sha256, "the Hub listing" end
  local stated_size = f.size or r.linked_size
  if f.size and r.bytes ~= f.size then
    return util.fail("ESIZE", "%s", with_served_as(string.format("verification failed for %s: expected %d bytes, got %d",
      f.path, f.size, r.bytes), r))
  end
  if r.linked_size and r.bytes ~= r.linked_size then
    return util.fail("ESIZE", "%s", with_served_as(string.format("verification failed for %s: the server stated %d bytes, got %d",
      f.path, r.linked_size, r.bytes), r))
  end
  if expected and expected:lower() ~= r.sha256 then
    emit { event = "verify", id = id, file = f.path, sha256 = r.sha256, expected = expected, ok = false }
    return util.fail("EHASH", "%s", with_served_as(string.format("verification failed for %s: SHA-256 %s, expected %s (from %s)",
      f.path, r.sha256, expected, source), r))
  end
  emit { event = "verify", id = id, file = f.path, sha256 = r.sha256, expected = expected, ok = true,
         checked = expected ~= nil, bytes = stated_size and r.bytes }
  return true
end

-- Extracts a verified archive into the staging folder under the framework's layout. Free space
-- is the extractor's own check, entry by entry (ESPACE), so the archive is read only once.
local function extract(archive, staging, entry, rule, emit, archive_size)
  local layout = rule.layout and rule.layout(entry) or {}
  local r, err, code = core.extract(archive, staging, {
    strip_components = layout.strip_components, strip = layout.strip,
    max_bytes = math.max(100 * archive_size, 64 * 1024 * 1024), free_reserve = 0,
    name = entry.file or entry.id,
    on_progress = function(p)
      emit { event = "extract", id = entry.id, entries = p.entries, completed = p.bytes, total = p.total }
    end,
  })
  if not r then return nil, err, code end
  emit { event = "extract", id = entry.id, entries = r.entries, completed = r.bytes, total = r.bytes, done = true }
  return r
end

-- Whether what entry states now is not the installed model m (its manifest): a SHA-256 of the main
-- file that is not the installed one's, a side file the recipe states another SHA-256 of, or one
-- it now lists that the model lacks (an optional one aside).
function pull.outdated(entry, m)
  if entry.sha256 and m.sha256 and entry.sha256:lower() ~= m.sha256:lower() then return true end
  local have = {}
  for _, f in ipairs(m.files or {}) do have[f.path] = f end
  for _, f in ipairs(entry.files or {}) do
    local got = have[f.path or f.name]
    if got and f.sha256 and got.sha256 and f.sha256:lower() ~= got.sha256:lower() then return true end
    if not got and not f.optional then return true end
  end
  return false
end

-- Is the model already installed, intact, and the version asked for? Re-hashes its files against the
-- manifest. nil, its folder, why not: "changed" (on disk) or "version" (pull.outdated: a SHA-256
-- stated now that is not the installed file's, or a side file it lacks: the recipe, or --sha256,
-- names another version).
local function installed_ok(root, entry, m, dir)
  dir = dir or store.model_dir(root, entry.framework, entry.id)
  if not m then return nil end
  if pull.outdated(entry, m) then return nil, dir, "version" end
  -- Another model under the same id: one pulled from a URL where the catalog's is asked for, or from
  -- another URL. Not "installed": the one asked for replaces it. (A URL onto a model that did not
  -- come from a URL is refused before: see pull.run.)
  if store.from_url(m) ~= store.from_url(entry) or (store.from_url(entry) and m.url ~= entry.url) then
    return nil, dir, "source"
  end
  local bad = store.check(dir, m, true)
  if not bad then return nil, dir, "interrupted" end
  if #bad > 0 then return nil, dir, "changed" end
  local bytes = 0
  for _, f in ipairs(m.files) do bytes = bytes + f.size end
  return { id = entry.id, framework = entry.framework, path = dir, files = m.files, bytes = bytes,
           sha256 = m.sha256, already = true }
end

-- What a pull of entry would resume from, as status counts it (a split's bytes from its plan, not
-- its file's length): the file at path's, or the whole model's.
local function kept(root, entry, path)
  local p = store.partial(root, entry.framework, entry.id) or { kept = 0, files = {} }
  if not path then return p.kept end
  for _, f in ipairs(p.files) do
    if f.path == path then return f.kept end
  end
  return 0
end

-- A pull stopped by Ctrl-C (or modelget stop) says what of the model is kept for the next pull, and
-- claims nothing kept when nothing is. during: what it was doing ("while listing the files of ID").
local function interrupted(root, entry, during)
  local have = kept(root, entry)
  if have == 0 then return util.fail("EINTR", "interrupted %s; run the same pull again", during or "before any data arrived") end
  return util.fail("EINTR", "interrupted%s: %s of partial data kept in %s; run the same pull again to resume",
    during and (" " .. during) or "", util.human(have), store.partial_dir(root, entry.framework, entry.id))
end

-- The pull itself, inside a scheduler task. ctx: {root=, opts=, emit=}
function pull.run(sched, entry, ctx)
  local root, opts, emit = ctx.root, ctx.opts, ctx.emit
  local rule = rules.get(entry.framework)
  -- Let go however the pull ends: returned, failed, or its task closed part-way.
  local lock <close>, lerr, lcode = store.lock(root, entry.id, store.LOCK_WAIT)
  if not lock then return nil, lerr, lcode end

  local result, err, code = (function()
    local free, ferr, fcode = store.id_free(root, entry.id, entry.framework)
    if not free then return nil, ferr, fcode end
    -- A URL never replaces, forced or not, a model that came from the catalog or an import under the
    -- same id (the id its file name gave): that model would be lost under its own name.
    local m = store.read_manifest(store.model_dir(root, entry.framework, entry.id))
    if m and store.from_url(entry) and not store.from_url(m) then
      return util.fail("EUSAGE", "'%s' is installed from %s, not from a URL: pull the URL under another --id, "
        .. "or 'modelget rm %s' first", entry.id, tostring(m.source), entry.id)
    end
    local pdir = store.partial_dir(root, entry.framework, entry.id)
    -- A partial folder from an earlier pull (none for most pulls: nothing more to look at then).
    local earlier = core.stat(pdir) ~= nil
    if not opts.force then
      local done, broken, why = installed_ok(root, entry, m)
      if done then
        -- Partial data beside an installed, intact model is nobody's (a pull killed after its
        -- install, or a forced one given up): it goes, rather than wait to be resumed.
        if earlier then core.rmtree(pdir) end
        return done
      end
      if why == "interrupted" then return interrupted(root, entry, "while checking the installed " .. entry.id) end
      if broken then emit { event = "repair", id = entry.id, path = broken, reason = why } end
      -- A pull killed after its manifest was written, before the rename into place, left the model
      -- assembled under partial/: checked like an installed one, it is put in place, nothing fetched.
      local places = earlier and { pdir } or {}
      for _, name in ipairs(earlier and core.listdir(pdir) or {}) do
        if name:match("^staging%.%d+$") then places[#places + 1] = pdir .. "/" .. name end
      end
      for _, dir in ipairs(places) do
        local am = store.read_manifest(dir)
        local ready = am and am.id == entry.id and am.framework == entry.framework and installed_ok(root, entry, am, dir)
        if ready then
          local dest, ierr, icode = store.install(root, dir, entry, am.files,
            { sha256 = am.sha256, run = function(ops) return sched:fs(ops) end })
          if not dest then return nil, ierr, icode end
          core.rmtree(pdir)
          ready.path, ready.already = dest, nil
          return ready
        end
      end
    end
    local aok, aerr, acode = auth.require(entry, entry.url or (entry.hub and hub.endpoint()))
    if not aok then return nil, aerr, acode end

    local fctx = {
      id = entry.id,
      -- A netrc login goes only with a model marked as needing one (--auth, auth = true, requiresAuth):
      -- one kept for a host's other uses (a git token for github.com) does not ride on every download.
      auth_for = function(url) return auth.for_url(url, nil, entry.auth ~= nil and entry.auth ~= false) end,
      auth_hint = function(url, status, where)
        return auth.hint(hub.rewrite(url or entry.url) or hub.endpoint(), nil, entry.auth, status, where) -- the Hub's host
      end,
    }
    local files, perr, pcode = plan_files(sched, entry, rule, fctx)
    if pcode == "EINTR" then return interrupted(root, entry, "while listing the files of " .. entry.id) end
    if not files then return nil, perr, pcode end

    -- A partial folder from an earlier pull may hold a staging folder left by a pull that was
    -- killed: ours to clear, we hold the lock. A new one holds nothing but what this pull writes.
    local ok, merr, mcode = true, nil, nil
    if earlier then
      -- Only resumable data is kept: partial files, their states and split plans. Anything else (a
      -- staging folder, files renamed into place by a pull killed before its install) goes.
      for _, name in ipairs(core.listdir(pdir) or {}) do
        if not resumable(name) then core.rmtree(pdir .. "/" .. name) end
      end
    else
      -- The folder and its empty partial files are made off the event loop (making a folder is
      -- the dearest step of a small download).
      local ops = { { "mkdirs", pdir } }
      for _, f in ipairs(files) do ops[#ops + 1] = { "write", partial_path(pdir, f.path), "" } end
      ok, merr, mcode = sched:fs(ops)
      if not ok then return nil, merr, mcode end
    end

    -- Storage: what is still to come (times two for an archive) against free space, before any body.
    local need = 0
    for _, f in ipairs(files) do
      local size = f.size or f.estimate
      if size then
        local have = earlier and (core.stat(partial_path(pdir, f.path)) or {}).size or 0
        need = need + math.max(0, size - have) + (f.archive and size or 0)
      end
    end
    local free = need > 0 and core.free_space(pdir)
    if free and need > free then
      return util.fail("ESPACE", "insufficient storage for %s: need %s, %s free in %s", entry.id,
        util.human(need), util.human(free), root)
    end

    emit { event = "start", id = entry.id, framework = entry.framework, files = #files,
           url = files[1].urls[1], total = entry.size }

    -- One file's download from urls (its own, or those left after one served bad bytes).
    local function fetch(f, urls)
      return sched:fetch {
        id = entry.id, file = f.path, urls = urls, partial = partial_path(pdir, f.path), size = f.size,
        sha256 = f.sha256 or f.listed_sha256, -- to be checked after: a complete split needs no HEAD
        searching = f.searching,
        space_factor = f.archive and 2 or 1, space_path = pdir,
        fresh = not earlier, -- a partial folder this pull made holds no plan or state of an earlier one
        fsync = false, -- made durable with the rest of the model at its install, off the event loop
        -- A file that waits for others of its model goes on its way to the disk at its end, so the
        -- install's sync finds it written; a model of one file is synced right after it anyway.
        writeback = #files > 1,
        auth_for = fctx.auth_for, auth_hint = fctx.auth_hint,
      }
    end
    local jobs = {}
    for i, f in ipairs(files) do jobs[i] = function() return fetch(f, f.urls) end end
    local results = sched:all(jobs)

    -- The URLs of a file after the one that served it (none when that is unknown or the last).
    local function after(urls, served)
      for k, u in ipairs(urls) do
        if u == served then return { table.unpack(urls, k + 1) } end
      end
      return {}
    end

    -- Every file verified before anything is assembled.
    local fetched = {}
    for i, f in ipairs(files) do
      local r, ferr, fcode = table.unpack(results[i], 1, 3)
      if not r then
        if fcode == "ECANCEL" then return nil, ferr, fcode end
        if fcode == "EINTR" then return interrupted(root, entry) end
        if f.optional and fcode ~= "ESPACE" then
          emit { event = "skip", id = entry.id, file = f.path, reason = ferr }
        else
          -- A side file's failure is the model's, with its own cause (a dead URL is a network failure).
          if f.side then ferr = string.format("%s: required file %s could not be fetched: %s", entry.id, f.path, ferr) end
          local have = fcode == "ENET" and kept(root, entry, f.path) or 0
          if have > 0 then ferr = string.format("%s; %s kept: the same pull again resumes", ferr, util.human(have)) end
          return nil, ferr, fcode
        end
      else
        local vok, verr, vcode = verify_file(f, r, emit, entry.id)
        -- Bytes that are not the file stated: the bad download goes, and the next URL is tried
        -- (a stale or broken mirror), until one serves the file or none is left.
        local left = after(f.urls, r.url)
        while not vok and (vcode == "EHASH" or vcode == "ESIZE") and #left > 0 do
          remove_partial(partial_path(pdir, f.path))
          emit { event = "fallback", id = entry.id, file = f.path, from = r.url, to = left[1], reason = verr }
          local again, aerr, acode = fetch(f, left)
          if not again then
            if acode == "EINTR" or acode == "ECANCEL" then return nil, aerr, acode end
            -- Bad bytes first, then no file at all: the bad bytes are the failure, the rest said too.
            remove_partial(partial_path(pdir, f.path))
            return nil, string.format("%s (from %s); then %s", verr, util.shown_url(r.url), aerr), vcode
          end
          r = again
          vok, verr, vcode = verify_file(f, r, emit, entry.id)
          left = after(left, r.url)
        end
        if not vok then
          remove_partial(partial_path(pdir, f.path))
          return nil, verr, vcode
        end
        fetched[#fetched + 1] = { file = f, result = r }
      end
    end

    -- The model is assembled in a folder on the store's file system and renamed into place whole.
    -- Plain files are assembled where they were downloaded: the partial folder becomes the model
    -- (nothing to create or delete per file). An archive is extracted into a staging folder beside
    -- its download, as is a file whose name a partial file could take.
    local in_place = true
    for _, item in ipairs(fetched) do
      local lower = item.file.path:lower()
      if item.file.archive or resumable(lower) or lower:match("%.tmp$") then in_place = false end
    end
    local staging = in_place and pdir or (pdir .. "/staging." .. core.getpid())
    if not in_place then
      core.rmtree(staging)
      ok, merr, mcode = core.mkdirs(staging)
      if not ok then return nil, merr, mcode end
    end
    local manifest_files, main_sha, total = {}, nil, 0
    local known = {} -- path -> sha256, from the transfers and the extractor: nothing is read again
    local function fail_staged(...)
      core.rmtree(staging)
      return ...
    end
    for _, item in ipairs(fetched) do
      local f, r = item.file, item.result
      local src = partial_path(pdir, f.path)
      if f.archive then
        local xr, xerr, xcode = extract(src, staging, entry, rule, emit, r.bytes)
        if not xr then
          if xcode == "EARCHIVE" then remove_partial(src) end
          return fail_staged(nil, xerr, xcode)
        end
        -- Whatever it is (a file, a folder, a symbolic link), nothing may take the manifest's place.
        for _, name in ipairs(core.listdir(staging) or {}) do
          if util.reserved_name(name) then
            remove_partial(src)
            return fail_staged(util.fail("EARCHIVE", "%s: the archive holds '%s', the name of the store's record of a model",
              entry.id, name))
          end
        end
        for _, x in ipairs(xr.files) do known[x.path] = x.sha256 end
        main_sha = main_sha or r.sha256
      else
        local dest = staging .. "/" .. f.path
        if f.path:find("/", 1, true) then core.mkdirs(util.dirname(dest)) end
        local rok, rerr, rcode = core.rename(src, dest)
        if not rok then return fail_staged(nil, rerr, rcode) end
        known[f.path] = r.sha256
        if f.main then main_sha = r.sha256 end
      end
    end
    -- A folder this pull made holds nothing else unless a file was skipped, a state file was
    -- written or a split planned.
    local others = earlier or #fetched < #files or (sched.opts.connections or 1) > 1
    for _, item in ipairs(fetched) do others = others or item.result.state_file end
    if in_place and others then
      -- What else the partial folder holds (resume states, a split download's leftovers, files of
      -- an earlier plan or skipped, a staging folder or a manifest left by a killed pull) is not
      -- part of the model.
      local keep = {}
      for _, item in ipairs(fetched) do keep[item.file.path:match("^[^/]+")] = true end
      for _, name in ipairs(core.listdir(pdir) or {}) do
        if not keep[name] then core.rmtree(pdir .. "/" .. name) end
      end
    end
    -- The manifest: every installed file with its size and hash (a folder of plain files holds
    -- exactly the fetched ones; an extracted archive is walked).
    local installed_files = {}
    if in_place then
      for _, item in ipairs(fetched) do
        installed_files[#installed_files + 1] = { path = item.file.path, size = item.result.bytes }
      end
      table.sort(installed_files, function(a, b) return a.path < b.path end)
    else
      for _, f in ipairs(store.walk(staging)) do
        if f.type == "file" then installed_files[#installed_files + 1] = f end
      end
    end
    for _, f in ipairs(installed_files) do
      local sha = known[f.path]
      if not sha then
        local herr, hcode
        sha, herr, hcode = core.sha256_file(staging .. "/" .. f.path)
        if not sha then return fail_staged(nil, herr, hcode) end
      end
      manifest_files[#manifest_files + 1] = { path = f.path, size = f.size, sha256 = sha }
      total = total + f.size
    end

    local pointer = rules.lfs_pointer(staging, installed_files)
    if pointer then
      for _, item in ipairs(fetched) do remove_partial(partial_path(pdir, item.file.path)) end
      return fail_staged(util.fail("EFORMAT", "%s: %s is a Git LFS pointer, not the file: use the file's download URL "
        .. "(on the Hub, /resolve/ rather than /blob/ or /raw/)", entry.id, pointer))
    end
    local cok, cerr = rule.check(staging, entry)
    if not cok then
      for _, item in ipairs(fetched) do remove_partial(partial_path(pdir, item.file.path)) end
      local msg = string.format("model not compatible with %s: %s", rule.title or entry.framework, cerr)
      for _, item in ipairs(fetched) do msg = with_served_as(msg, item.result, item.file.path) end
      return fail_staged(util.fail("EFORMAT", "%s", msg))
    end

    local dest, ierr, icode = store.install(root, staging, entry, manifest_files,
      { sha256 = main_sha, run = function(ops) return sched:fs(ops) end })
    if not dest then return fail_staged(nil, ierr, icode) end
    if not in_place then core.rmtree(pdir) end -- the archives and state files left there
    local res = { id = entry.id, framework = entry.framework, path = dest, bytes = total,
                  sha256 = main_sha, files = manifest_files }
    return res
  end)()

  if not result then
    -- A failure that kept nothing leaves no empty partial file or folder behind.
    local pdir = store.partial_dir(root, entry.framework, entry.id)
    local names, left = core.listdir(pdir), 0
    for _, name in ipairs(names or {}) do
      local path = pdir .. "/" .. name
      local st = name:match("%.part$") and core.stat(path)
      if st and st.type == "file" and st.size == 0 and not core.stat(path .. ".state") then os.remove(path)
      else left = left + 1 end
    end
    if names and left == 0 then os.remove(pdir) end
  end
  return result, err, code
end

return pull
