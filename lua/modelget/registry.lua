-- The catalog: every model the recipes declare, from (in order) the built-in registry/ folder, the
-- user's <store>/registry/*.lua, --registry paths and $MODELGET_REGISTRY_PATH, then the custom URLs of
-- <store>/registry/custom.json. A source that fails is a problem line; the rest still loads.
local core = require "modelget.core"
local recipe = require "modelget.recipe"
local custom = require "modelget.custom"
local rules = require "modelget.rules"
local util = require "modelget.util"

local registry = {}

-- "a/b/../c/./d" → "a/c/d", for messages that name files.
local function tidy(path)
  local abs = path:sub(1, 1) == "/"
  local parts = {}
  for part in path:gmatch("[^/]+") do
    if part == ".." and #parts > 0 and parts[#parts] ~= ".." then parts[#parts] = nil
    elseif part ~= "." then parts[#parts + 1] = part end
  end
  return (abs and "/" or "") .. table.concat(parts, "/")
end
registry.tidy = tidy

-- The built-in registry folder: where the host found it, else next to this file's source tree
-- (lua/modelget/registry.lua → registry/), for a stock lua5.4 with package.path set.
function registry.builtin_dir()
  local paths = package.loaded["modelget.paths"]
  if type(paths) == "table" and type(paths.registry_dir) == "string" and paths.registry_dir ~= "" then
    return tidy(paths.registry_dir)
  end
  -- Used from a stock lua5.4: next to these files in the source tree (lua/modelget/ → registry/),
  -- or in an installed prefix (share/lua/5.4/modelget/ → share/modelget/registry/).
  local src = debug.getinfo(1, "S").source
  local dir = src:match("^@(.*)/[^/]*$") or "."
  for _, rel in ipairs { "/../../registry", "/../../../modelget/registry" } do
    local st = core.stat(dir .. rel)
    if st and st.type == "dir" then return tidy(dir .. rel) end
  end
  return tidy(dir .. "/../../registry")
end

local function lua_files(dir)
  local names = core.listdir(dir) or {}
  local out = {}
  for _, n in ipairs(names) do
    local path = dir .. "/" .. n
    -- A folder named like a recipe is none: passed over.
    if n:match("%.lua$") and n:sub(1, 1) ~= "." and (core.stat(path) or {}).type ~= "dir" then out[#out + 1] = path end
  end
  return out
end

-- Catalog ---------------------------------------------------------------------------------------
local Catalog = {}
Catalog.__index = Catalog

function registry.new_catalog()
  return setmetatable({ by_id = {}, list = {}, problems = {} }, Catalog)
end

-- Adds an entry; an id already taken is a problem naming both places, and the first one stays.
function Catalog:add(e)
  local had = self.by_id[e.id]
  if had then
    self.problems[#self.problems + 1] = ("%s: model '%s' is already defined at %s"):format(e.source, e.id, had.source)
    return false
  end
  self.by_id[e.id] = e
  self.list[#self.list + 1] = e
  return true
end

function Catalog:get(id) return self.by_id[id] end

-- A catalog id names the entry's model, of the entry's framework: list and info look for it there.
-- true, or a usage failure naming the catalog's framework when framework is another.
function Catalog:framework_agrees(id, framework)
  local e = self.by_id[id]
  if not e or e.framework == framework then return true end
  return util.fail("EUSAGE", "'%s' is a catalog model for %s (%s), not %s; use --framework %s, or another --id",
    id, e.framework, tostring(e.source), framework, e.framework)
end

-- The failure for an id the catalog lacks: unknown (EUNKNOWN); or, when recipe files had problems
-- loading, a bad input file (EINPUT, exit 9): the id may be in a file that did not load.
function Catalog:unknown(id)
  local lost = {} -- problems that may have cost entries (not an id defined twice: the first one stands)
  for _, p in ipairs(self.problems or {}) do
    if not p:find(" is already defined at ", 1, true) then lost[#lost + 1] = p end
  end
  if #lost > 0 then
    -- The problem most likely to be why: one naming this model, else one that cost a whole file (it
    -- names no model), else the first.
    local shown
    for _, p in ipairs(lost) do
      if p:find("model '" .. id .. "'", 1, true) then shown = p break end
    end
    for _, p in ipairs(shown and {} or lost) do
      if not p:find("model '", 1, true) then shown = p break end
    end
    return util.fail("EINPUT", "unknown model id '%s', and the catalog has %d problem%s (%s%s): fix the recipe, "
      .. "or see 'modelget list'", id, #lost, #lost == 1 and "" or "s", shown or lost[1], #lost > 1 and "; …" or "")
  end
  return util.fail("EUNKNOWN", "unknown model id '%s': see 'modelget list' or 'modelget search WORDS'", id)
end

-- Every entry (or those of one framework), sorted by framework, then id.
function Catalog:entries(framework)
  local out = {}
  for _, e in ipairs(self.list) do
    if not framework or e.framework == framework then out[#out + 1] = e end
  end
  table.sort(out, util.by_framework_then_id)
  return out
end

-- Entries where every word (case-insensitive, plain text) is found in the id, the name, a tag or the
-- framework's name. words: a list, or a string of words.
function Catalog:search(words)
  if type(words) == "string" then
    local list = {}
    for w in words:gmatch("%S+") do list[#list + 1] = w end
    words = list
  end
  local out = {}
  for _, e in ipairs(self:entries()) do
    local hay = { e.id:lower(), e.name:lower(), e.framework }
    for _, tag in ipairs(e.tags or {}) do hay[#hay + 1] = tag:lower() end
    local all = true
    for _, w in ipairs(words) do
      local lw, found = w:lower(), false
      for _, h in ipairs(hay) do
        if h:find(lw, 1, true) then found = true break end
      end
      if not found then all = false break end
    end
    if all then out[#out + 1] = e end
  end
  return out
end

-- The frameworks in their display order: {{name=, title=, count=}…}, count = entries in the catalog.
function Catalog:frameworks()
  local out = {}
  for _, r in ipairs(rules.list()) do
    local n = 0
    for _, e in ipairs(self.list) do if e.framework == r.name then n = n + 1 end end
    out[#out + 1] = { name = r.name, title = r.title, count = n }
  end
  return out
end

-- Loading ---------------------------------------------------------------------------------------

local function getenv(env, name)
  if env then return env[name] end
  return os.getenv(name)
end

-- The recipe files of every source, in order: {path…}; problems for paths that are not there.
function registry.sources(opts)
  local files, problems = {}, {}
  local function add_path(p, must_exist)
    local st = core.stat(p)
    if st and st.type == "link" then st = core.stat((core.realpath and core.realpath(p)) or p) end
    if not st then
      if must_exist then problems[#problems + 1] = tidy(p) .. ": no such recipe file or folder" end
      return
    end
    if st.type == "dir" then
      for _, f in ipairs(lua_files(p)) do files[#files + 1] = f end
    else
      files[#files + 1] = p
    end
  end
  add_path(opts.builtin_dir or registry.builtin_dir(), false)
  if opts.store then add_path(opts.store .. "/registry", false) end
  for _, p in ipairs(opts.paths or {}) do add_path(p, true) end
  local envpath = getenv(opts.env, "MODELGET_REGISTRY_PATH")
  if envpath then
    for p in envpath:gmatch("[^:]+") do add_path(p, true) end
  end
  return files, problems
end

-- registry.load{store=, paths={…}, env=, builtin_dir=} -> catalog, problems
-- (env: a table standing in for os.getenv; builtin_dir: another built-in folder, for tests).
function registry.load(opts)
  opts = opts or {}
  local catalog = registry.new_catalog()
  local files, problems = registry.sources(opts)
  catalog.problems = problems
  local seen = {}
  for _, path in ipairs(files) do
    local shown = tidy(path)
    if not seen[shown] then -- a folder named twice (--registry and the environment) loads once
      seen[shown] = true
      local entries, probs = recipe.load_file(path, shown)
      for _, p in ipairs(probs) do problems[#problems + 1] = p end
      for _, e in ipairs(entries) do catalog:add(e) end
    end
  end
  if opts.store then
    local entries, err = custom.entries(opts.store)
    if not entries then
      problems[#problems + 1] = err
    else
      for _, e in ipairs(entries) do catalog:add(e) end
    end
  end
  return catalog, problems
end

return registry
