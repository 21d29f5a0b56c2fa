-- The framework rules: one file per framework under modelget/rules/, each a table of small functions
-- (side files, layout, format check). This module finds them and holds the pieces they share.
local core = require "modelget.core"
local util = require "modelget.util"
local hub = require "modelget.hub"

local rules = {}

-- Every framework, in the order they are shown. A new framework is one file and one name here.
rules.NAMES = { "coreml", "mlx", "onnx", "tflite", "llamacpp", "other" }

local known = {}
for _, n in ipairs(rules.NAMES) do known[n] = true end

function rules.is_framework(name) return known[name] == true end

-- The rule table of a framework, or nil, msg, "EUSAGE" for an unknown one.
function rules.get(fw)
  if not known[fw] then
    return util.fail("EUSAGE", "unknown framework '%s' (one of: %s)", tostring(fw), table.concat(rules.NAMES, ", "))
  end
  return require("modelget.rules." .. fw)
end

function rules.list()
  local out = {}
  for _, n in ipairs(rules.NAMES) do out[#out + 1] = rules.get(n) end
  return out
end

local ARCHIVE_SUFFIX = { "%.zip$", "%.tar$", "%.tar%.%w+$", "%.tgz$", "%.tbz2?$", "%.txz$" }

-- The framework a file name implies by its extension (SPEC: .gguf → llamacpp, .onnx/.ort → onnx,
-- .tflite → tflite, .mlmodel/.mlpackage → coreml), looking through an archive suffix
-- ("Model.mlpackage.zip"); nil when nothing is implied. Rules with infer = false (MLX's
-- .safetensors, which any framework may hold) are not consulted.
function rules.framework_for_name(filename)
  if type(filename) ~= "string" then return nil end
  local name = filename:lower():gsub("[?#].*$", "")
  for _ = 1, 2 do
    for _, r in ipairs(rules.list()) do
      if r.infer ~= false then
        for _, ext in ipairs(r.extensions) do
          if name:sub(-#ext) == ext then return r.name end
        end
      end
    end
    local stripped = name
    for _, pat in ipairs(ARCHIVE_SUFFIX) do stripped = stripped:gsub(pat, "") end
    if stripped == name then break end
    name = stripped
  end
  return nil
end

-- Side files ------------------------------------------------------------------------------------

-- The repo (and the folder in it) an entry's files come from: from entry.hub, or a Hub resolve URL.
function rules.repo_of(entry)
  if entry.hub then return entry.hub.repo, entry.hub.revision or "main", entry.hub.dir end
  local repo, rev, path = hub.parse(entry.url)
  if not repo then return nil end
  return repo, rev, path:match("^(.*)/[^/]*$")
end

-- Does the entry already bring a file of this name (its own files, its Hub include patterns)?
local function provided(entry, name)
  for _, f in ipairs(entry.files or {}) do
    if f.name == name then return true end
  end
  if entry.hub and hub.matches(name, entry.hub.include, entry.hub.exclude) then return true end
  return false
end

-- Side files named `names`, from the entry's repo, as {name=, url=, alt=, optional=}: those the entry
-- does not already bring. Each is looked for in the model's folder in the repo, then in each folder
-- above it up to the root (a repo keeps its tokenizer at the root and its ONNX files in onnx/). Without
-- a repo there is nowhere to fetch them from: they must come with the model (inside its archive), and
-- a required one missing fails the format check.
function rules.repo_files(entry, names, optional)
  local repo, rev, dir = rules.repo_of(entry)
  local out = {}
  if not repo then return out end
  for _, name in ipairs(names) do
    if not provided(entry, name) then
      local urls, at = {}, dir ~= "" and dir or nil
      while at do
        urls[#urls + 1] = hub.resolve_url(repo, rev, at .. "/" .. name)
        at = at:match("^(.*)/[^/]*$")
      end
      urls[#urls + 1] = hub.resolve_url(repo, rev, name)
      out[#out + 1] = { name = name, url = urls[1], alt = #urls > 1 and { table.unpack(urls, 2) } or nil,
                        optional = optional or nil, searching = #urls > 1 or nil }
    end
  end
  return out
end

function rules.no_side_files() return {} end

-- The first of files ({path=, size=}… in dir) that is a Git LFS pointer: the few lines a clone holds
-- in a file's place until `git lfs pull` brings it (or a link to a repo's page serves). nil if none.
local LFS_POINTER = "version https://git-lfs.github.com/spec/"
function rules.lfs_pointer(dir, files)
  for _, f in ipairs(files) do
    if f.size and f.size < 1024 and f.size >= #LFS_POINTER then
      local h = io.open(dir .. "/" .. f.path, "rb")
      local head = h and h:read(#LFS_POINTER)
      if h then h:close() end
      if head == LFS_POINTER then return f.path end
    end
  end
end

local function flat_layout() return { strip_components = 0, bundle = false } end

-- A rule table from its data: name, title, extensions, describe, formats (see check_path) and, when
-- they differ from "none" and "files as they come", side_files and layout.
function rules.define(r)
  r.side_files = r.side_files or rules.no_side_files
  r.layout = r.layout or flat_layout
  local formats = r.formats
  r.check = r.check or function(path, entry) return rules.check_path(path, formats, entry and entry.file) end
  return r
end

-- Format checks ---------------------------------------------------------------------------------

local function fail_format(fmt, ...) return util.fail("EFORMAT", fmt, ...) end

local function ext_of(name, list)
  local lower = name:lower()
  for _, ext in ipairs(list) do
    if lower:sub(-#ext) == ext then return ext end
  end
  return nil
end

local function keys(t)
  local out = {}
  for k in pairs(t) do out[#out + 1] = k end
  table.sort(out)
  return out
end

-- Checks a file, or every model file of a staged model folder, against a framework's formats:
--   spec.files    = { [".ext"] = sniffer } — files checked by content (sniffers of modelget.formats)
--   spec.bundles  = { [".ext"] = sniffer } — folders checked as one unit (a .mlpackage)
--   spec.default  = sniffer for a lone file whose extension says nothing (a pulled URL's odd name)
--   spec.required = { "config.json", … } — names the folder must hold
-- A folder must hold at least one file or bundle of spec.files/spec.bundles other than ".json".
-- Dot-files and dot-folders (.git of an imported clone) are not looked at.
-- main: the name of the model file itself when it is known (a pulled URL's file); a lone file of an
-- unknown extension is checked with spec.default only when it is that one.
function rules.check_path(path, spec, main)
  local st = core.stat(path)
  if not st then return fail_format("%s: not found", path) end
  local file_exts, bundle_exts = keys(spec.files or {}), keys(spec.bundles or {})

  local function check_one(full, rel, sniff)
    local ok, why = sniff(full)
    if not ok then return fail_format("%s: %s", rel, why) end
    return true
  end

  if st.type ~= "dir" or (ext_of(path, bundle_exts) and spec.bundles) then
    local base = util.basename(path)
    local ext = st.type == "dir" and ext_of(path, bundle_exts) or ext_of(path, file_exts)
    local sniff = ext and ((spec.bundles or {})[ext] or spec.files[ext]) or spec.default
    if not sniff then return fail_format("%s: not a model file of this framework", base) end
    return check_one(path, base, sniff)
  end

  local models, seen, odd = 0, {}, {}
  local function walk(dir, rel)
    local names, err = core.listdir(dir)
    if not names then return fail_format("%s: %s", rel ~= "" and rel or path, err) end
    for _, name in ipairs(names) do
      if name:sub(1, 1) ~= "." then
        local full, r = dir .. "/" .. name, rel == "" and name or (rel .. "/" .. name)
        seen[r] = true
        local est = core.stat(full)
        local bext = ext_of(name, bundle_exts)
        if est and est.type == "dir" and bext then
          local ok, msg, code = check_one(full, r, spec.bundles[bext])
          if not ok then return nil, msg, code end
          models = models + 1
        elseif est and est.type == "dir" then
          local ok, msg, code = walk(full, r)
          if not ok then return nil, msg, code end
        elseif est and est.type == "file" then
          local fext = ext_of(name, file_exts)
          if fext then
            local ok, msg, code = check_one(full, r, spec.files[fext])
            if not ok then return nil, msg, code end
            if fext ~= ".json" then models = models + 1 end
          else
            odd[#odd + 1] = { full = full, rel = r }
          end
        end
      end
    end
    return true
  end
  local ok, msg, code = walk(path, "")
  if not ok then return nil, msg, code end
  for _, name in ipairs(spec.required or {}) do
    if not seen[name] then return fail_format("required file %s missing", name) end
  end
  -- A pulled URL with an odd name (model.bin --framework llamacpp): the lone such file is the model,
  -- checked by the framework's default sniffer.
  if models == 0 and spec.default and #odd == 1 and odd[1].rel == main then
    local dok, dmsg, dcode = check_one(odd[1].full, odd[1].rel, spec.default)
    if not dok then return nil, dmsg, dcode end
    models = 1
  end
  if models == 0 then
    local wanted = {}
    for _, e in ipairs(file_exts) do if e ~= ".json" then wanted[#wanted + 1] = e end end
    for _, e in ipairs(bundle_exts) do wanted[#wanted + 1] = e end
    return fail_format("no model file (%s) among the files", table.concat(wanted, ", "))
  end
  return true
end

return rules
