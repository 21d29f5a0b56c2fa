-- The recipe language: model declarations in Lua, loaded into a sandbox that holds only the language
-- and a few pure helpers (the ALLOWED list below). A recipe file reads like this:
--
--   framework "llamacpp"                 -- the framework of the models below (may change again)
--   model "tinyllama-1.1b-gguf" {
--     name = "TinyLlama 1.1B Chat (Q4_K_M)",
--     url  = hf "TheBloke/TinyLlama-1.1B-Chat-v1.0-GGUF" "tinyllama-1.1b-chat-v1.0.Q4_K_M.gguf",
--     size = "669 MB", tags = {"chat", "small"},
--   }
--
-- Loading a file gives normalized entries (the shape in docs/DESIGN.md) and problems, each
-- "file:line: message"; a bad model or a failing file is reported and the rest still loads.
local util = require "modelget.util"
local rules = require "modelget.rules"
local hub = require "modelget.hub"

local recipe = {}

-- What a recipe runs under: a bounded number of VM instructions and of memory growth, so a runaway
-- recipe stops with a message instead of hanging or exhausting the program.
recipe.MAX_INSTRUCTIONS = 5 * 1000 * 1000
recipe.MAX_MEMORY = 64 * 1024 * 1024
local HOOK_EVERY = 10 -- instructions between checks: a string doubling in a loop cannot outrun it far
local MAX_REP = 1024 * 1024 -- string.rep result cap in recipes

-- Read-only views of the pure libraries: a recipe can use them but not change them for the program
-- or for the next recipe.
local function readonly(name, lib, without)
  local view = {}
  for k, v in pairs(lib) do view[k] = v end
  for _, k in ipairs(without or {}) do view[k] = nil end
  return setmetatable({}, {
    __index = view,
    __newindex = function(_, k) error(("'%s.%s' cannot be changed in recipes"):format(name, tostring(k)), 2) end,
    __metatable = false,
  })
end

local string_view = { rep = function(s, n, sep)
  local len = #tostring(s) * math.max(0, n or 0) + #tostring(sep or "") * math.max(0, (n or 0) - 1)
  if len > MAX_REP then error(("string.rep: result too large for a recipe (%.0f bytes)"):format(len), 2) end
  return string.rep(s, n, sep)
end }
-- The count hook cannot stop a C function: a backtracking pattern or a huge table.move or concat
-- would run (or allocate) for as long as it likes. Their inputs are bounded instead.
local MAX_SUBJECT, MAX_QUANTIFIERS, MAX_MOVE = 1024, 2, 100000
local gsub, getinfo = string.gsub, debug.getinfo
local running_chunk -- "@file" of the recipe being run: only its own calls are bounded (the program's
                    -- code run meanwhile reaches the same view through the string metatable)
-- Raises msg at the recipe's line that is running (a limit can fire inside one of the views' own
-- functions, whose place is none of the recipe writer's business).
local function raise_in_recipe(msg)
  for level = 3, 100 do
    local info = getinfo(level, "Sl")
    if not info then break end
    if info.source == running_chunk and (info.currentline or 0) > 0 then
      error(("%s:%d: %s"):format(running_chunk:sub(2), info.currentline, msg), 0)
    end
  end
  error(msg, 0)
end
-- Whether the view's function (the caller of this) was called by the recipe: its caller is the
-- recipe's code, or it was tail-called by the recipe's main chunk (its last `return s:gsub(…)`
-- leaves the function that runs the chunk as the caller).
local running_main -- the function of bounded() that calls the recipe's main chunk
local function from_recipe()
  local caller = getinfo(3, "Sf")
  if caller.source == running_chunk then return true end
  return running_main ~= nil and caller.func == running_main and getinfo(2, "t").istailcall
end
local function check_pattern(fname, s, pattern)
  local q = select(2, gsub(gsub(pattern, "%%.", ""), "[%*%+%-]", ""))
  if #tostring(s) > MAX_SUBJECT or q > MAX_QUANTIFIERS then
    raise_in_recipe(("string.%s: a pattern over more than %d characters, or with more than %d repetitions, "
      .. "is not for recipes"):format(fname, MAX_SUBJECT, MAX_QUANTIFIERS))
  end
end
local function bounded_pattern(fname, fn)
  return function(s, pattern, ...)
    local plain = fname == "find" and select(2, ...)
    if not plain and type(pattern) == "string" and from_recipe() then check_pattern(fname, s, pattern) end
    return fn(s, pattern, ...)
  end
end
for k, v in pairs(string) do
  if k ~= "dump" and k ~= "rep" then string_view[k] = v end
end
for _, k in ipairs { "find", "match", "gmatch" } do string_view[k] = bounded_pattern(k, string[k]) end

local function too_large(fname, len)
  if len > MAX_REP then raise_in_recipe(("string.%s: result too large for a recipe (over %d bytes)"):format(fname, MAX_REP)) end
end
-- gsub's replacements are a C function's work too: a string one is bounded before (each match at
-- most the replacement with its captures, %0 to %9, each at most the subject); what a function or
-- table gives is counted as it comes.
function string_view.gsub(s, pattern, repl, n)
  if not from_recipe() then return gsub(s, pattern, repl, n) end
  if type(pattern) == "string" then check_pattern("gsub", s, pattern) end
  local len = #tostring(s)
  local matches = math.min(len + 1, math.tointeger(n) or len + 1)
  if type(repl) == "string" or type(repl) == "number" then
    repl = tostring(repl)
    too_large("gsub", len + matches * (#repl + select(2, gsub(repl, "%%%d", "")) * len))
  elseif type(repl) == "table" or type(repl) == "function" then
    local given, total = repl, 0
    repl = function(...)
      local v
      if type(given) == "table" then v = given[(...)] else v = given(...) end
      if type(v) == "string" or type(v) == "number" then
        total = total + #tostring(v)
        too_large("gsub", total)
      end
      return v
    end
  end
  return gsub(s, pattern, repl, n)
end
-- string.format's result is at most its format and each argument quoted (%q doubles), with its width.
function string_view.format(fmt, ...)
  if from_recipe() then
    local len = #tostring(fmt)
    for i = 1, select("#", ...) do
      local v = select(i, ...)
      len = len + 2 * ((type(v) == "string" or type(v) == "number") and #tostring(v) or 0) + 128
    end
    too_large("format", len)
  end
  return string.format(fmt, ...)
end
local safe_string = readonly("string", string_view)

local table_view = {}
for k, v in pairs(table) do table_view[k] = v end
function table_view.move(a1, f, e, t, a2)
  if type(f) == "number" and type(e) == "number" and e - f > MAX_MOVE then
    error(("table.move: more than %d elements is not for recipes"):format(MAX_MOVE), 2)
  end
  return table.move(a1, f, e, t, a2)
end
function table_view.concat(list, sep, i, j)
  if type(list) == "table" then
    local len, last = 0, j or #list
    if last - (i or 1) > MAX_MOVE then error("table.concat: too many elements for a recipe", 2) end
    for k = i or 1, last do
      local v = list[k]
      len = len + ((type(v) == "string" or type(v) == "number") and #tostring(v) or 0) + #tostring(sep or "")
      if len > MAX_REP then error(("table.concat: result too large for a recipe (over %d bytes)"):format(MAX_REP), 2) end
    end
  end
  return table.concat(list, sep, i, j)
end

-- The one list of what a recipe may name, besides the language itself (framework, model, hf) and the
-- globals it defines for itself. Everything else (os, io, require, load, loadfile, dofile, debug,
-- rawset, setmetatable, collectgarbage, pcall, print, coroutine, package, _G) is "not available".
local LIBRARIES = {
  ipairs = ipairs, pairs = pairs, next = next, select = select, type = type,
  tonumber = tonumber, tostring = tostring, error = error, assert = assert,
  string = safe_string,
  table = readonly("table", table_view),
  math = readonly("math", math, { "random", "randomseed" }),
  utf8 = readonly("utf8", utf8),
}
local function allowed_names()
  local env = {}
  for k, v in pairs(LIBRARIES) do env[k] = v end
  return env
end
recipe.ALLOWED = {}
for k in pairs(allowed_names()) do recipe.ALLOWED[#recipe.ALLOWED + 1] = k end
table.sort(recipe.ALLOWED)

-- Fields ----------------------------------------------------------------------------------------

local FIELDS = { "name", "framework", "url", "file", "alt", "sha256", "size", "unzip", "auth", "files", "hub",
  "tags", "memory", "description", "license", "homepage" }
local is_field = {}
for _, f in ipairs(FIELDS) do is_field[f] = true end
recipe.FIELDS = FIELDS


-- A field check raises {field=, msg=} through this; normalize() turns it into one problem line.
local function bad(field, fmt, ...)
  error({ field = field, msg = string.format(fmt, ...) }, 0)
end

local function check_url(field, v)
  if type(v) ~= "string" then bad(field, "expected a URL string, got %s", type(v)) end
  if not util.check_url(v) then
    if not util.parse_url(v) then bad(field, "not a URL: %q", v) end
    bad(field, "must be https:// (or http:// to a loopback host), got %q", v)
  end
  return v
end
recipe.check_url = check_url

local function check_string(field, v, pattern, what)
  if type(v) ~= "string" then bad(field, "expected a string, got %s", type(v)) end
  if pattern and not v:find(pattern) then bad(field, "%q is not %s", v, what) end
  return v
end

local function check_size(field, v)
  local n = util.parse_size(v)
  if not n then bad(field, "expected bytes or a size like \"669 MB\", got %s", type(v) == "string" and ("%q"):format(v) or type(v)) end
  return n
end

local function check_sha(field, v)
  if type(v) ~= "string" then bad(field, "expected 64 hex digits, got %s", type(v)) end
  if not util.is_sha256(v) then bad(field, "expected 64 hex digits, got %q", v) end
  return v:lower()
end

local function check_list(field, v, each)
  if type(v) == "string" then v = { v } end
  if type(v) ~= "table" then bad(field, "expected a list, got %s", type(v)) end
  local out = {}
  for k in pairs(v) do
    if math.type(k) ~= "integer" or k < 1 or k > #v then bad(field, "expected a list, found key %s", tostring(k)) end
  end
  for i, x in ipairs(v) do out[i] = each(field .. "[" .. i .. "]", x) end
  return out
end

local function check_bool(field, v)
  if type(v) ~= "boolean" then bad(field, "expected true or false, got %s", type(v)) end
  return v
end

local function check_auth(field, v)
  if v == true or v == "hf" or v == "kaggle" then return v end
  if v == false then return nil end
  bad(field, "expected \"hf\", \"kaggle\" or true, got %s", type(v) == "string" and ("%q"):format(v) or type(v))
end

local function check_relpath(field, v)
  check_string(field, v)
  if not util.safe_relpath(v) then bad(field, "%q is not a safe relative path", v) end
  if util.reserved_name(v) then bad(field, "%q is the name of the store's record of a model", v) end
  return v
end

local function check_table(field, v, known)
  if type(v) ~= "table" then bad(field, "expected a table, got %s", type(v)) end
  for k in pairs(v) do
    if not known[k] then bad(field, "unknown field '%s'", tostring(k)) end
  end
  return v
end

local FILE_FIELDS = { name = true, url = true, alt = true, sha256 = true, size = true, optional = true }
local function check_file(field, v)
  check_table(field, v, FILE_FIELDS)
  if v.url == nil then bad(field, "missing url") end
  local f = {
    url = check_url(field .. ".url", v.url),
    -- Tried in order when url fails, as the model's own alt: a mirror of the model serves its
    -- tokenizer too, and a side file that cannot be had fails a model its main file's alt saved.
    alt = v.alt ~= nil and check_list(field .. ".alt", v.alt, check_url) or nil,
    name = v.name ~= nil and check_relpath(field .. ".name", v.name) or nil,
    sha256 = v.sha256 ~= nil and check_sha(field .. ".sha256", v.sha256) or nil,
    size = v.size ~= nil and check_size(field .. ".size", v.size) or nil,
    size_exact = math.type(v.size) == "integer" or nil,
    optional = v.optional ~= nil and check_bool(field .. ".optional", v.optional) or nil,
  }
  f.name = f.name or util.url_filename(f.url)
  if not util.safe_relpath(f.name) then bad(field, "no file name in %s; give name=", f.url) end
  if util.reserved_name(f.name) then bad(field, "%q is the name of the store's record of a model; give name=", f.name) end
  return f
end

local HUB_FIELDS = { repo = true, revision = true, dir = true, include = true, exclude = true }
local function check_hub(field, v)
  if type(v) == "string" then v = { repo = v } end
  check_table(field, v, HUB_FIELDS)
  local h = {
    repo = check_string(field .. ".repo", v.repo, "^[%w][%w._-]*/[%w][%w._-]*$", "a Hub repo (owner/name)"),
    revision = v.revision ~= nil and check_string(field .. ".revision", v.revision, "^[^/%s][^%s]*$", "a revision")
      or "main",
    dir = v.dir ~= nil and check_relpath(field .. ".dir", v.dir) or nil,
    include = v.include ~= nil and check_list(field .. ".include", v.include, check_string) or nil,
    exclude = v.exclude ~= nil and check_list(field .. ".exclude", v.exclude, check_string) or nil,
  }
  return h
end

-- Normalizes one declaration (fields from the recipe) into a catalog entry, or raises {field=, msg=}.
local function normalize(id, fields, default_framework)
  for k in pairs(fields) do
    if type(k) ~= "string" or not is_field[k] then
      bad(tostring(k), "unknown field (fields: %s)", table.concat(FIELDS, ", "))
    end
  end
  local e = { id = id }
  e.name = fields.name ~= nil and check_string("name", fields.name) or id
  e.url = fields.url ~= nil and check_url("url", fields.url) or nil
  e.alt = fields.alt ~= nil and check_list("alt", fields.alt, check_url) or {}
  e.sha256 = fields.sha256 ~= nil and check_sha("sha256", fields.sha256) or nil
  e.size = fields.size ~= nil and check_size("size", fields.size) or nil
  -- A plain integer is the exact byte count (verified on download); "669 MB" is an estimate for
  -- listings and the free-space check only.
  e.size_exact = math.type(fields.size) == "integer" or nil
  e.memory = fields.memory ~= nil and check_size("memory", fields.memory) or nil
  e.auth = fields.auth ~= nil and check_auth("auth", fields.auth) or nil
  e.files = fields.files ~= nil and check_list("files", fields.files, check_file) or {}
  e.hub = fields.hub ~= nil and check_hub("hub", fields.hub) or nil
  e.tags = fields.tags ~= nil and check_list("tags", fields.tags, check_string) or {}
  e.description = fields.description ~= nil and check_string("description", fields.description) or nil
  e.license = fields.license ~= nil and check_string("license", fields.license) or nil
  e.homepage = fields.homepage ~= nil and check_url("homepage", fields.homepage) or nil

  if not e.url and not e.hub and #e.files == 0 then bad("url", "missing (give url, hub or files)") end
  if #e.alt > 0 and not e.url then bad("alt", "alternative URLs need a url") end
  if e.sha256 and not e.url then bad("sha256", "applies to url, which is missing (give files their own sha256)") end

  if fields.file ~= nil then
    e.file = check_string("file", fields.file)
    if not util.safe_component(e.file) then bad("file", "%q is not a file name", e.file) end
  elseif e.url then
    e.file = util.url_filename(e.url)
    if not util.safe_component(e.file) then bad("file", "no file name in %s; give file=", e.url) end
  end
  if util.reserved_name(e.file) then bad("file", "%q is the name of the store's record of a model; give file=", e.file) end

  -- Every file of the model has a place of its own: no two with one name (letter case aside, for
  -- the file systems that ignore it), and none where another's name needs a folder.
  local names, order = {}, {}
  if e.file then names[e.file:lower()] = "the main file"; order[1] = { "file", e.file } end
  for i, f in ipairs(e.files) do
    local field, key = ("files[%d].name"):format(i), f.name:lower()
    if names[key] then bad(field, "%q is also the name of %s: every file needs a name of its own", f.name, names[key]) end
    names[key] = ("files[%d]"):format(i)
    order[#order + 1] = { field, f.name }
  end
  for _, o in ipairs(order) do
    local dir = o[2]:lower():match("^(.*)/[^/]*$")
    while dir do
      if names[dir] then bad(o[1], "%q would be inside %s, which is a file", o[2], names[dir]) end
      dir = dir:match("^(.*)/[^/]*$")
    end
  end

  local fw = fields.framework or default_framework
  if fw == nil then
    fw = rules.framework_for_name(e.file or "")
    if not fw then bad("framework", "missing, and the file name does not imply one (write framework \"…\")") end
  end
  check_string("framework", fw)
  if not rules.is_framework(fw) then bad("framework", "unknown '%s' (one of: %s)", fw, table.concat(rules.NAMES, ", ")) end
  e.framework = fw

  if fields.unzip ~= nil then e.unzip = check_bool("unzip", fields.unzip)
  else e.unzip = e.file ~= nil and util.is_archive(e.file) end
  return e
end
recipe.normalize = normalize

-- The language --------------------------------------------------------------------------------

-- hf "owner/repo" "path/in/repo.gguf"        → https://huggingface.co/owner/repo/resolve/main/path/in/repo.gguf
-- hf "owner/repo@rev" "file"                 → … /resolve/rev/file
-- hf "owner/repo" {"tokenizer.json", …}      → files = {{name=, url=}…} for the files field
-- hf("owner/repo", "file", "rev")            → the same, in one call
local function hf(repo, what, revision)
  if type(repo) ~= "string" or not repo:find("^[%w][%w._-]*/[%w][%w._-]*") then
    error("hf: expected a Hub repo \"owner/name\", got " .. (type(repo) == "string" and ("%q"):format(repo) or type(repo)), 2)
  end
  local r, rev = repo:match("^([^@]+)@(.+)$")
  if r then repo, revision = r, revision or rev end
  local function of(path)
    if type(path) == "string" then
      if not util.safe_relpath(path) then error("hf: " .. ("%q"):format(path) .. " is not a path in the repo", 2) end
      return hub.resolve_url(repo, revision, path)
    elseif type(path) == "table" then
      local files = {}
      for i, p in ipairs(path) do
        if type(p) ~= "string" or not util.safe_relpath(p) then error("hf: files[" .. i .. "] is not a path in the repo", 2) end
        files[i] = { name = p:match("[^/]*$"), url = hub.resolve_url(repo, revision, p) }
      end
      return files
    end
    error("hf: expected a file path or a list of them, got " .. type(path), 2)
  end
  if what ~= nil then return of(what) end
  return of
end

-- Where the recipe called from (the line of `model "id"`): level 3 = the recipe's function.
local function caller_line()
  local info = debug.getinfo(3, "Sl")
  return info and info.currentline or 0
end

-- Builds the environment of one recipe file; declarations go to `sink(id, fields, line, framework)`.
local function make_env(chunkname, sink, problem)
  local env = allowed_names()
  local state = { framework = nil, pending = {} }

  env.framework = function(name)
    if type(name) ~= "string" or not rules.is_framework(name) then
      error(("framework: unknown %s (one of: %s)"):format(type(name) == "string" and ("'" .. name .. "'") or type(name),
        table.concat(rules.NAMES, ", ")), 2)
    end
    state.framework = name
  end

  env.model = function(id)
    local line = caller_line()
    if type(id) == "table" then -- model { id = "x", … }
      local fields = {}
      for k, v in pairs(id) do if k ~= "id" then fields[k] = v end end
      sink(id.id, fields, line, state.framework)
      return
    end
    if type(id) ~= "string" then error("model: expected an id string, got " .. type(id), 2) end
    local p = { id = id, line = line }
    state.pending[p] = true
    return function(fields)
      state.pending[p] = nil
      if type(fields) ~= "table" then error("model '" .. id .. "': expected a table of fields, got " .. type(fields), 2) end
      sink(id, fields, line, state.framework)
    end
  end

  env.hf = hf

  setmetatable(env, {
    __index = function(_, k)
      error(("'%s' is not available in recipes"):format(tostring(k)), 2)
    end,
  })
  return env, function()
    for p in pairs(state.pending) do
      problem(p.line, ("model '%s' has no fields (write model \"%s\" { … })"):format(p.id, p.id))
    end
  end
end


-- Runs fn() under the instruction and memory limits; returns pcall's results.
local function bounded(fn)
  local old = table.pack(debug.gethook())
  local base = collectgarbage("count") * 1024
  local budget = recipe.MAX_INSTRUCTIONS
  local string_mt = getmetatable("")
  local old_index = string_mt.__index
  string_mt.__index = safe_string -- ("x"):rep(n) reaches the string table through here
  -- The limits raise only while the recipe runs: once it has returned (or failed) a check firing
  -- before the hook is taken off must not raise outside the protected call.
  local inside = false
  debug.sethook(function()
    if not inside then return end
    budget = budget - HOOK_EVERY
    if budget < 0 then
      budget = HOOK_EVERY * 100 -- let the error unwind; the next check fires again if it is caught
      raise_in_recipe(("recipe runs too long (more than %d instructions)"):format(recipe.MAX_INSTRUCTIONS))
    end
    if collectgarbage("count") * 1024 - base > recipe.MAX_MEMORY then
      collectgarbage()
      if collectgarbage("count") * 1024 - base > recipe.MAX_MEMORY then
        raise_in_recipe(("recipe uses too much memory (more than %d MB)"):format(recipe.MAX_MEMORY // (1024 * 1024)))
      end
    end
  end, "", HOOK_EVERY)
  local function main()
    inside = true
    local r = table.pack(fn())
    inside = false
    return r
  end
  local outer_main = running_main
  running_main = main
  local ok, res = xpcall(main, function(e)
    inside = false
    return e
  end)
  running_main = outer_main
  debug.sethook(table.unpack(old, 1, old.n))
  string_mt.__index = old_index
  if not ok then return false, res end
  return true, table.unpack(res, 1, res.n)
end

-- Loads recipe source text. chunkname is the file's name as shown in messages. Returns entries (in
-- declaration order) and problems ("file:line: message").
function recipe.load_string(src, chunkname)
  local entries, problems = {}, {}
  local function problem(line, msg)
    problems[#problems + 1] = ("%s:%s: %s"):format(chunkname, line or "?", msg)
  end
  local function sink(id, fields, line, framework)
    if type(id) ~= "string" then problem(line, "model: expected an id string, got " .. type(id)) return end
    local id_bad = util.id_problem(id)
    if id_bad then
      problem(line, ("model '%s': the id must be %s"):format(util.abbrev(id), id_bad))
      return
    end
    local ok, e = pcall(normalize, id, fields, framework)
    if ok then
      e.source = chunkname .. ":" .. line
      entries[#entries + 1] = e
    elseif type(e) == "table" and e.field then
      problem(line, ("model '%s': field '%s': %s"):format(id, e.field, e.msg))
    else
      problem(line, ("model '%s': %s"):format(id, tostring(e)))
    end
  end
  local env, finish = make_env(chunkname, sink, problem)
  local chunk, err = load(src, "@" .. chunkname, "t", env)
  if not chunk then
    problems[#problems + 1] = err
    return {}, problems
  end
  running_chunk = "@" .. chunkname
  local ok, rerr = bounded(chunk)
  running_chunk = nil
  if not ok then
    entries = {} -- a file that fails to run contributes nothing, as one that fails to compile
    local msg = tostring(rerr)
    if not msg:find("^" .. chunkname:gsub("%p", "%%%0") .. ":%d+:") then msg = chunkname .. ": " .. msg end
    problems[#problems + 1] = msg
  else
    finish()
  end
  return entries, problems
end

function recipe.load_file(path, display)
  local src, err = util.read_file(path)
  if not src then return {}, { (display or path) .. ": " .. tostring(err):gsub("^.-: ", "") } end -- its own name, once
  return recipe.load_string(src, display or path)
end

return recipe
