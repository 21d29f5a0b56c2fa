-- Custom model URLs: <store>/registry/custom.json in SPEC's schema (the guide's "Import URL Registry"),
-- plus an optional "framework" field for names whose extension implies none:
--   { "custom": [ { "id": "custom-model-1", "name": "CustomModel.gguf",
--       "url": "https://example.com/model.gguf", "sha256": null, "requiresUnzip": false,
--       "requiresAuth": false, "alternativeURLs": [], "framework": "llamacpp" } ] }
-- Every change validates the whole result first and is written atomically; a bad file is refused whole,
-- naming the entry and the field, and changes nothing.
local core = require "modelget.core"
local util = require "modelget.util"
local rules = require "modelget.rules"

local custom = {}

local cjson = require("cjson").new()
local enc = util.json_encode

-- The schema's fields in the order they are written.
local ORDER = { "id", "name", "url", "sha256", "requiresUnzip", "requiresAuth", "alternativeURLs", "framework" }
local KNOWN = {}
for _, k in ipairs(ORDER) do KNOWN[k] = true end
-- custom.add takes the command line's names too.
local ADD_NAMES = { unzip = true, auth = true, alt = true }
local ADD_LIST = table.concat(ORDER, ", ") .. ", unzip, auth, alt"

function custom.path(store) return store .. "/registry/custom.json" end

local function einput(fmt, ...) return util.fail("EINPUT", fmt, ...) end

local function is_null(v) return v == nil or v == cjson.null end

-- A value as a message quotes it: JSON, a long one cut short.
local function shown(v) return enc(type(v) == "string" and util.abbrev(v) or v) end

-- "… at character 57" → "… at character 57 (line 3, column 12)"
local function with_position(msg, text)
  local at = tonumber(msg:match("at character (%d+)"))
  if not at then return msg end
  local line, col = 1, at
  for nl in text:sub(1, at - 1):gmatch("()\n") do line = line + 1; col = at - nl end
  return ("%s (line %d, column %d)"):format(msg, line, col)
end

local function decode(text, source)
  -- A byte order mark some editors put first (Windows' Notepad) is no part of the JSON (RFC 8259
  -- lets a parser ignore it): a file that looks right is read, not refused at its character 1.
  text = text:gsub("^\239\187\191", "")
  local ok, doc = pcall(cjson.decode, text)
  if not ok then
    return einput("%s: not valid JSON: %s", source, with_position(tostring(doc):gsub("^.-:%d+: ", ""), text))
  end
  return doc
end

-- Validation --------------------------------------------------------------------------------------

local function check_entry(raw, where)
  local function bad(field, fmt, ...)
    error(("%s: field '%s': " .. fmt):format(where, field, ...), 0)
  end
  if type(raw) ~= "table" or raw[1] ~= nil then error(where .. ": expected an object", 0) end
  for k in pairs(raw) do
    if not KNOWN[k] then bad(tostring(k), "unknown field (fields: %s)", table.concat(ORDER, ", ")) end
  end
  local function str(field, required)
    local v = raw[field]
    if is_null(v) then
      if required then bad(field, "missing") end
      return nil
    end
    if type(v) ~= "string" then bad(field, "expected a string, got %s", type(v) == "userdata" and "null" or type(v)) end
    if required and v == "" then bad(field, "must not be empty") end
    return v
  end
  local function bool(field, default)
    local v = raw[field]
    if is_null(v) then return default or false end
    if type(v) ~= "boolean" then bad(field, "expected true or false, got %s", type(v)) end
    return v
  end
  local function url(field, v)
    if not util.check_url(v) then
      bad(field, "must be https:// (or http:// to a loopback host), got %s", enc(v))
    end
    return v
  end
  local e = {}
  e.id = str("id", true)
  local id_bad = util.id_problem(e.id)
  if id_bad then bad("id", "%s must be %s", shown(e.id), id_bad) end
  e.name = str("name", true)
  if util.reserved_name(e.name) then bad("name", "%s is the name of the store's record of a model", enc(e.name)) end
  e.url = url("url", str("url", true))
  local sha = str("sha256")
  if sha and not util.is_sha256(sha) then bad("sha256", "expected 64 hex digits or null, got %s", enc(sha)) end
  e.sha256 = sha and sha:lower()
  -- Not stated: an archive's name is extracted, as a pull of the URL would (a stated false is kept).
  e.requiresUnzip = bool("requiresUnzip", util.is_archive(custom.file_of(e)))
  e.requiresAuth = bool("requiresAuth")
  local alts = raw.alternativeURLs
  e.alternativeURLs = {}
  if not is_null(alts) then
    if type(alts) ~= "table" or next(alts) ~= nil and alts[1] == nil then
      bad("alternativeURLs", "expected a list of URLs, got %s", type(alts))
    end
    for i, a in ipairs(alts) do
      if type(a) ~= "string" then bad("alternativeURLs", "item %d: expected a string, got %s", i, type(a)) end
      e.alternativeURLs[i] = url("alternativeURLs", a)
    end
  end
  local fw = str("framework")
  if fw then
    if not rules.is_framework(fw) then
      bad("framework", "unknown %s (one of: %s)", enc(fw), table.concat(rules.NAMES, ", "))
    end
    e.framework = fw
  elseif not custom.framework_of(e) then
    bad("framework", "%s does not imply a framework by its extension; give \"framework\" (one of: %s)",
      enc(e.name), table.concat(rules.NAMES, ", "))
  end
  return e
end

-- A new entry's name (urls add, urls import) must be one a file can take: the download is saved
-- under it. A name that is a title ("TinyLlama 1.1B (Q4)") can; one with a folder in it, "." or ".."
-- cannot: the pull would name the file after the URL instead, not as asked. An entry already in the
-- store keeps loading (to_entry names its file after the URL), so that a store written before the
-- rule still works. -> "field 'name': …" or nil.
local function new_name_problem(e)
  local problem = util.file_name_problem(e.name)
  return problem and ("field 'name': %s %s"):format(shown(e.name), problem)
end

-- The framework of a custom entry: its own field, else the name's extension, else the URL's file name.
function custom.framework_of(e)
  return e.framework or rules.framework_for_name(e.name) or rules.framework_for_name(util.url_filename(e.url))
end

-- Checks a decoded document; returns the entries in canonical form (defaults filled in, sha256 lower
-- case), or nil, "<source>: entry 2 (\"id\"): field 'url': …", "EINPUT".
function custom.validate(doc, source)
  source = source or "custom URLs"
  if type(doc) ~= "table" or doc[1] ~= nil then return einput("%s: expected an object {\"custom\": […]}", source) end
  for k in pairs(doc) do
    if k ~= "custom" then return einput("%s: unknown key '%s' (expected {\"custom\": […]})", source, tostring(k)) end
  end
  local list = doc.custom
  if is_null(list) then return einput("%s: missing \"custom\": […]", source) end
  if type(list) ~= "table" or (next(list) ~= nil and list[1] == nil) then
    return einput("%s: \"custom\" must be a list", source)
  end
  local out, first = {}, {}
  for i, raw in ipairs(list) do
    local id = type(raw) == "table" and type(raw.id) == "string" and raw.id or nil
    local where = id and ("entry %d (%s)"):format(i, shown(id)) or ("entry " .. i)
    local ok, e = pcall(check_entry, raw, where)
    if not ok then return einput("%s: %s", source, tostring(e)) end
    if first[e.id] then
      return einput("%s: %s: field 'id': duplicate of entry %d", source, where, first[e.id])
    end
    first[e.id] = i
    out[i] = e
  end
  return out
end

-- Encoding: the schema's field order, two-space indent, stable from run to run.
function custom.encode(list)
  local lines = {}
  for i, e in ipairs(list) do
    local fields = {}
    for _, k in ipairs(ORDER) do
      local v = e[k]
      if k == "sha256" then
        fields[#fields + 1] = ("      %s: %s"):format(enc(k), v and enc(v) or "null")
      elseif k == "alternativeURLs" then
        local items = {}
        for j, a in ipairs(v or {}) do items[j] = enc(a) end
        fields[#fields + 1] = ("      %s: [%s]"):format(enc(k), table.concat(items, ", "))
      elseif v ~= nil then
        fields[#fields + 1] = ("      %s: %s"):format(enc(k), enc(v))
      end
    end
    lines[i] = "    {\n" .. table.concat(fields, ",\n") .. "\n    }"
  end
  if #lines == 0 then return "{\n  \"custom\": []\n}\n" end
  return "{\n  \"custom\": [\n" .. table.concat(lines, ",\n") .. "\n  ]\n}\n"
end

-- The store's file -----------------------------------------------------------------------------------

local function read_doc(path)
  local st = core.stat(path)
  if not st then return { custom = {} }, "" end
  local text, err, code = util.read_file(path)
  if not text then return nil, err, code end -- its message names the file
  local doc, derr, code = decode(text, path)
  if not doc then return nil, derr, code end
  return doc, text
end

-- The store's custom entries (canonical form), or nil, msg, code.
function custom.list(store)
  local path = custom.path(store)
  local doc, err, code = read_doc(path)
  if not doc then return nil, err, code end
  return custom.validate(doc, path)
end

-- Runs change(list) -> list | nil, err, code under the store's lock, validates the result, writes it.
local function update(store, change)
  local dir = store .. "/registry"
  local ok, err, code = core.mkdirs(dir)
  if not ok then return nil, err, code end
  -- Another process's change is a read and a write: waited for.
  local lock, lerr, lcode = require("modelget.store").wait_lock(dir .. "/.custom.lock", nil, 10)
  if not lock then return nil, lerr, lcode end
  local function finish(...)
    lock:close()
    return ...
  end
  local list, lsterr, lstcode = custom.list(store)
  if not list then return finish(nil, lsterr, lstcode) end
  local new, cerr, ccode = change(list)
  if not new then return finish(nil, cerr, ccode) end
  local checked, verr, vcode = custom.validate({ custom = new }, custom.path(store))
  if not checked then return finish(nil, verr, vcode) end
  local wok, werr, wcode = core.write_atomic(custom.path(store), custom.encode(checked))
  if not wok then return finish(nil, werr, wcode) end
  return finish(checked)
end

-- A field custom.add does not take is misuse, as an unknown option is the facade's: the message
-- that names it, or nil.
function custom.unknown_field(fields)
  for k in pairs(fields) do
    if not KNOWN[k] and not ADD_NAMES[k] then return ("unknown field '%s' (fields: %s)"):format(tostring(k), ADD_LIST) end
  end
end

-- Adds one entry. fields take the schema's names or the command line's: id, name, url, sha256,
-- unzip|requiresUnzip, auth|requiresAuth, alt|alternativeURLs, framework; a field of another name
-- raises. name defaults to the URL's file name, id to that name without its extension, unzip to
-- whether the name is an archive's. The fields are arguments, not a file: a bad one is EUSAGE, a URL
-- the policy refuses EPOLICY. An id already there is refused (EUSAGE), and so is one a recipe
-- defines (taken: id -> the recipe's place, or nil): the catalog's would win.
function custom.add(store, fields, taken)
  local url = fields.url
  local name = fields.name or (type(url) == "string" and util.url_filename(url) ~= "" and util.url_filename(url)) or nil
  local raw = {
    id = fields.id or (name and util.id_from_name(name)),
    name = name,
    url = url,
    sha256 = fields.sha256,
    requiresUnzip = fields.requiresUnzip, requiresAuth = fields.requiresAuth,
    alternativeURLs = fields.alternativeURLs or fields.alt,
    framework = fields.framework,
  }
  if fields.unzip ~= nil then raw.requiresUnzip = fields.unzip and true or false end
  if fields.auth ~= nil then raw.requiresAuth = fields.auth and true or false end
  local where = type(raw.id) == "string" and ("custom URL " .. shown(raw.id)) or "custom URL"
  local urls = { { "url", url } }
  for _, u in ipairs(type(raw.alternativeURLs) == "table" and raw.alternativeURLs or {}) do
    urls[#urls + 1] = { "alternativeURLs", u }
  end
  for _, u in ipairs(urls) do
    if type(u[2]) == "string" then
      local uok, uerr, ucode = util.check_url(u[2])
      if not uok then return nil, ("%s: field '%s': %s"):format(where, u[1], uerr), ucode end
    end
  end
  local ok, added = pcall(check_entry, raw, where)
  if not ok then return util.fail("EUSAGE", "%s", added) end
  local name_bad = new_name_problem(added)
  if name_bad then return util.fail("EUSAGE", "%s: %s", where, name_bad) end
  local place = taken and taken(added.id)
  if place then
    return util.fail("EUSAGE", "%s: field 'id': '%s' is already a catalog model (%s); choose another id", where,
      added.id, place)
  end
  local list, uerr, ucode = update(store, function(list)
    for _, e in ipairs(list) do
      if e.id == added.id then
        return util.fail("EUSAGE", "custom URL '%s' already exists (remove it first: modelget urls rm %s)", added.id, added.id)
      end
    end
    list[#list + 1] = added
    return list
  end)
  if not list then return nil, uerr, ucode end
  return added
end

function custom.remove(store, id)
  local list, err, code = update(store, function(list)
    for i, e in ipairs(list) do
      if e.id == id then table.remove(list, i) return list end
    end
    return util.fail("EUNKNOWN", "no custom URL '%s': see 'modelget urls list'", tostring(id))
  end)
  if not list then return nil, err, code end
  return true
end

-- The store's entries as JSON text (file nil), or written to file (atomically) -> true.
function custom.export(store, file)
  local list, err, code = custom.list(store)
  if not list then return nil, err, code end
  local text = custom.encode(list)
  if not file then return text end
  local ok, werr, wcode = core.write_atomic(file, text)
  if not ok then return nil, werr, wcode end
  return true
end

-- Merges a file's entries by id: a new id is added, an id already in the store is replaced by the
-- file's entry (importing a configuration applies it). The file is validated whole first.
-- An id a recipe defines (taken, as for add), or a name no file can take (a folder in it, too long),
-- refuses the file. Returns {added={ids}, replaced={ids}, count=}.
function custom.import(store, file, taken)
  local text, err, code = util.read_file(file)
  if not text then return nil, err, code end -- io.open's message names the file
  local doc, derr, dcode = decode(text, file)
  if not doc then return nil, derr, dcode end
  local incoming, verr, vcode = custom.validate(doc, file)
  if not incoming then return nil, verr, vcode end
  for i, e in ipairs(incoming) do
    local where = ("%s: entry %d (%s)"):format(file, i, shown(e.id))
    local name_bad = new_name_problem(e)
    if name_bad then return einput("%s: %s", where, name_bad) end
    local place = taken and taken(e.id)
    if place then
      return einput("%s: field 'id': '%s' is already a catalog model (%s)", where, e.id, place)
    end
  end
  local report = { added = {}, replaced = {} }
  local list, uerr, ucode = update(store, function(list)
    local at = {}
    for i, e in ipairs(list) do at[e.id] = i end
    for _, e in ipairs(incoming) do
      if at[e.id] then
        list[at[e.id]] = e
        report.replaced[#report.replaced + 1] = e.id
      else
        list[#list + 1] = e
        at[e.id] = #list
        report.added[#report.added + 1] = e.id
      end
    end
    return list
  end)
  if not list then return nil, uerr, ucode end
  report.count = #report.added + #report.replaced
  return report
end

-- Catalog entries --------------------------------------------------------------------------------

-- The name an entry's download is saved under: its name; one no file can take (in an entry stored
-- before new names were checked), the URL's file name.
function custom.file_of(e)
  return not util.file_name_problem(e.name) and e.name or util.url_filename(e.url)
end

-- A canonical custom entry as a catalog entry (docs/DESIGN.md's shape).
function custom.to_entry(e, source)
  local file = custom.file_of(e)
  return {
    id = e.id, name = e.name, framework = custom.framework_of(e), url = e.url, file = file,
    alt = e.alternativeURLs or {}, sha256 = e.sha256, unzip = e.requiresUnzip,
    auth = e.requiresAuth or nil, files = {}, tags = { "custom" }, custom = true, source = source,
    sha256_from = "the custom URL entry",
  }
end

function custom.entries(store)
  local list, err, code = custom.list(store)
  if not list then return nil, err, code end
  local out = {}
  for i, e in ipairs(list) do
    out[i] = custom.to_entry(e, ("%s (entry %d)"):format(custom.path(store), i))
  end
  return out
end

return custom
