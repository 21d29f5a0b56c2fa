-- The command line: options, commands, help, exit status (SPEC "Command line").
-- The host calls main(arg) inside a protected call and exits with the integer it returns.
-- Every failure is one line on stderr, "modelget: what happened; what to do", and a status from
-- the error code (DESIGN "Error codes and exit status"); --json adds an "error" event on stdout.
local core = require "modelget.core"
local progress = require "modelget.progress"
local util = require "modelget.util"
local download = require "modelget.download"

local M = {}
local PROG = "modelget"

-- Exit status ---------------------------------------------------------------------------------------
M.exit_status = util.exit_status

-- What to do, per error code; the facade's message says what happened.
local HINTS = {
  EUSAGE = "see modelget --help",
  EUNKNOWN = "see modelget list, or modelget search WORDS",
  EPOLICY = "use an https:// URL (plain http:// only to a loopback host)",
  ENET = "check the network and the URL, or give a mirror with --alt URL",
  EHASH = "the bad download was discarded; pull again, or check the sha256 if the model changed upstream",
  ESIZE = "the bad download was discarded; pull again, or check the size if the model changed upstream",
  ESPACE = "free space (see modelget ls, then modelget rm ID) or use another --store",
  EAUTH = "set HF_TOKEN (or $HF_HOME/token) for the Hugging Face Hub, KAGGLE_USERNAME and KAGGLE_KEY"
    .. " (or ~/.kaggle/kaggle.json) for Kaggle, a 'machine HOST login NAME password SECRET' line in ~/.netrc"
    .. " for another host",
  EARCHIVE = "nothing was installed; check that the URL is the right archive, or pull it as it is with --no-unzip",
  EFORMAT = "nothing was installed; check --framework and that the URL is the model file itself",
  EINPUT = "fix the file named above and try again",
  EINTR = "the partial download is kept: the same pull again resumes it",
  EBUSY = "wait for that pull to end, or stop it first",
  EACCES = "check the permissions of the path named (a read-only store: use another with --store)",
}

-- Numbers -------------------------------------------------------------------------------------------
local function whole(min, max)
  return function(s)
    local n = tostring(s):match("^%d+$") and math.tointeger(tonumber(s))
    if n and n >= min and n <= (max or math.maxinteger) then return n end
    if max then return nil, string.format("a whole number from %d to %d", min, max) end
    return nil, string.format("a whole number, %d or more", min)
  end
end

local function seconds(min, max)
  return function(s)
    local n = tonumber(s)
    if n and n == n and n ~= math.huge and n >= min and n <= (max or math.huge) then return n end
    if max then return nil, string.format("a number of seconds from %g to %g", min, max) end
    return nil, string.format("a number of seconds, %g or more", min)
  end
end

local function rate(s)
  local n = util.parse_size(s)
  if n and n > 0 then return n end
  return nil, "a rate such as 500K, 20M, 1.5G or plain bytes per second"
end

-- A path, which an empty value is not (an empty --store would be taken for none given).
local function path_of(what)
  return function(s)
    if s ~= "" then return s end
    return nil, what
  end
end

local function existing_file(s)
  local st = core.stat(s)
  if st and st.type ~= "dir" then return s end
  return nil, st and "a file, not a folder" or "no such file"
end

-- A CA bundle: a file that can be read and holds a PEM certificate (libcurl would only say that
-- every server's certificate failed verification).
local function ca_bundle(s)
  local ok, want = existing_file(s)
  if not ok then return nil, want end
  local text, err = util.read_file(s)
  if not text then return nil, "cannot be read: " .. tostring(err):gsub("^.-: ", "") end
  if not text:find("-----BEGIN [%u ]*CERTIFICATE-----") then return nil, "no PEM certificate in it" end
  return s
end

local function sha256_hex(s)
  if util.is_sha256(s) then return s:lower() end
  return nil, "64 hexadecimal digits"
end

-- Options -------------------------------------------------------------------------------------------
-- key: the facade's option name. global: accepted with every command.
local OPTIONS = {
  { long = "store", arg = "DIR", global = true, check = path_of("a folder"),
    help = "store root (default $MODELGET_HOME, else $XDG_DATA_HOME/modelget, else ~/.local/share/modelget)" },
  { long = "registry", arg = "PATH", global = true, multi = true, check = path_of("a recipe file or folder"),
    help = "an extra recipe file or folder (repeatable; also $MODELGET_REGISTRY_PATH, :-separated)" },
  { long = "cacert", arg = "FILE", global = true, check = ca_bundle,
    help = "CA bundle (default $MODELGET_CA_BUNDLE, $SSL_CERT_FILE, $CURL_CA_BUNDLE, else the system's)" },
  { long = "json", global = true, help = "machine-readable output: one JSON object a line on stdout" },
  { long = "quiet", short = "q", global = true, help = "no progress output, no confirmations: only errors" },
  { long = "jobs", short = "j", arg = "N", global = true, check = whole(1, download.JOBS_MAX), help = "concurrent downloads (default 4)" },
  { long = "connections", short = "x", arg = "N", global = true, check = whole(1, download.CONNECTIONS_MAX),
    help = "connections per file: a big file from a server that serves ranges comes in N segments at once (default 1)" },
  { long = "limit-rate", arg = "RATE", global = true, check = rate, help = "total bandwidth cap: 500K, 20M, 1.5G or bytes/s" },
  { long = "stall-timeout", arg = "S", global = true, check = seconds(1, download.TIMEOUT_MAX), -- the engine's least: a second without a byte
    help = "retry a transfer that receives nothing for S seconds (default 30)" },
  { long = "retries", arg = "N", global = true, check = whole(0), help = "attempts per URL before the next URL (default 5)" },
  { long = "retry-wait", arg = "S", global = true, check = seconds(0),
    help = "base wait before a retry, doubled each time (default 1)" },
  { long = "no-color", global = true, help = "no colour (also when $NO_COLOR is set)" },
  { long = "help", short = "h", global = true, help = "this help, or a command's help after the command" },
  { long = "version", global = true, help = "the program's and the engine's versions" },
  -- Options of some commands (each command lists the ones it takes).
  { long = "framework", arg = "F" }, { long = "installed" },
  { long = "sha256", arg = "HEX", check = sha256_hex }, { long = "id", arg = "ID" }, { long = "name", arg = "FILE" },
  { long = "url", arg = "URL" }, { long = "unzip" }, { long = "no-unzip" }, { long = "auth" }, { long = "alt", arg = "URL", multi = true },
  { long = "force" }, { long = "detach" },
}
local LONG, SHORT = {}, {}
for _, o in ipairs(OPTIONS) do
  o.key = o.long:gsub("-", "_")
  LONG[o.long] = o
  if o.short then SHORT[o.short] = o end
end

-- A usage error: raised while parsing, caught in main (exit 2, one line and a hint).
local Usage = {}
local function usage(fmt, ...)
  error(setmetatable({ message = string.format(fmt, ...) }, Usage), 0)
end

local function set_option(p, o, value, shown)
  if o.check and value ~= nil then
    local v, want = o.check(value)
    if v == nil then usage("bad value for %s: '%s' (%s)", shown, value, want) end
    value = v
  end
  if o.multi then
    p.opts[o.key] = p.opts[o.key] or {}
    table.insert(p.opts[o.key], value)
  else
    value = value == nil and true or value
    -- Two values for what a command acts on (a second --sha256 or --id is a mistake): neither is
    -- silently dropped. A global setting takes the last, as in curl (an alias's -j 8, then -j 2).
    local before = p.opts[o.key]
    if before ~= nil and before ~= value and not o.global then
      usage("--%s given twice ('%s', then '%s'): give it once", o.long, util.shown_url(tostring(before)),
        util.shown_url(tostring(value)))
    end
    p.opts[o.key] = value
  end
  p.given[#p.given + 1] = o
end

-- argv -> {command=, args={…}, opts={key=value…}, given={option…}}. Options may come before or
-- after the command; "--" ends them; for `run`, every word after the script is the script's.
function M.parse(argv)
  local p = { args = {}, opts = {}, given = {} }
  local raw, i = false, 1
  while i <= #argv do
    local a = argv[i]
    if raw or a == "-" or a:sub(1, 1) ~= "-" then
      if not p.command and not raw then p.command = a
      else
        p.args[#p.args + 1] = a
        if p.command == "run" and #p.args == 1 then raw = true end
      end
    elseif a == "--" then
      raw = true
    elseif a:sub(1, 2) == "--" then
      local name, value = a:match("^%-%-([^=]+)=(.*)$")
      name = name or a:sub(3)
      local o = LONG[name]
      if not o then usage("unknown option --%s", name) end
      if o.arg then
        if value == nil then
          i = i + 1
          value = argv[i]
          if value == nil then usage("--%s needs a value (%s)", name, o.arg) end
        end
      elseif value ~= nil then
        usage("--%s takes no value", name)
      end
      set_option(p, o, value, "--" .. name)
    else
      -- Short options: -q, -h, -j N, -j4, and flags together (-qh).
      local k = 2
      while k <= #a do
        local letter = a:sub(k, k)
        local o = SHORT[letter]
        if not o then usage("unknown option -%s", letter) end
        if o.arg then
          local value = a:sub(k + 1)
          if value == "" then
            i = i + 1
            value = argv[i]
            if value == nil then usage("-%s needs a value (%s)", letter, o.arg) end
          end
          set_option(p, o, value, "-" .. letter)
          break
        end
        set_option(p, o, nil, "-" .. letter)
        k = k + 1
      end
    end
    i = i + 1
  end
  return p
end

-- Output helpers ------------------------------------------------------------------------------------
local function one_line(s) return (tostring(s):gsub("%s*\n%s*", " ")) end

local function json_line(obj)
  io.stdout:write(progress.json_line(obj), "\n")
end

-- An entry as shown (text or JSON): its URLs without their credentials (urls export keeps them).
local function shown_entry(e)
  local function copy_of(t)
    local c = {}
    for k, v in pairs(t) do c[k] = v end
    c.url = util.shown_url(t.url)
    for _, key in ipairs { "alt", "alternativeURLs" } do
      if type(t[key]) == "table" then
        c[key] = {}
        for i, u in ipairs(t[key]) do c[key][i] = util.shown_url(u) end
      end
    end
    return c
  end
  local copy = copy_of(e)
  if type(e.files) == "table" then
    copy.files = {}
    for i, f in ipairs(e.files) do copy.files[i] = type(f) == "table" and copy_of(f) or f end
  end
  return copy
end

-- One line per object, each marked with its kind (SPEC: every --json line has an "event").
local function json_lines(list, event)
  for _, obj in ipairs(list) do
    local line = progress.plain_data(obj)
    line.event = event
    json_line(line)
  end
end

-- Text for people: the data in it (names, URLs, messages) never carries a control character.
local shown = util.printable

-- fmt is ours; its string arguments are data.
local function printf(fmt, ...)
  local args = table.pack(...)
  for i = 1, args.n do
    if type(args[i]) == "string" then args[i] = shown(args[i]) end
  end
  io.stdout:write(string.format(fmt, table.unpack(args, 1, args.n)), "\n")
end

-- Left-aligned columns; the last column is not padded.
local function columns(rows, indent)
  local widths = {}
  for _, row in ipairs(rows) do
    for c, cell in ipairs(row) do
      cell = shown(cell)
      row[c] = cell
      widths[c] = math.max(widths[c] or 0, progress.width(cell))
    end
  end
  for _, row in ipairs(rows) do
    local out = {}
    for c, cell in ipairs(row) do
      out[c] = c < #row and (cell .. string.rep(" ", widths[c] - progress.width(cell))) or cell
    end
    io.stdout:write(indent or "", (table.concat(out, "  "):gsub("%s+$", "")), "\n")
  end
end

-- The context of one command: parsed options, the facade's options, failure reporting.
local Ctx = {}
Ctx.__index = Ctx

function Ctx:facade()
  return require "modelget"
end

-- A line saying what a command did or found (a confirmation, a check's verdict), which -q leaves
-- out (README: -q shows only errors); listings asked for (ls, list, info…) print anyway.
function Ctx:say(fmt, ...)
  if not self.opts.quiet then printf(fmt, ...) end
end

-- Messages from the facade that already say what to do get no second hint.
local COMMANDS, ORDER = {}, {} -- filled by command() below

-- Whether a message says what to do itself (a command to run, a variable to set…): then the code's
-- hint is not added. "modelget X" counts when X is a command ("another modelget process" is not).
local function names_command(message)
  for word in message:gmatch("modelget (%l+)") do
    if COMMANDS[word] then return true end
  end
  return false
end
local function has_hint(message)
  message = tostring(message)
  return names_command(message) or message:find("see '") or message:find("; run ") or message:find("pass %-%-")
    or message:find("; use ") or message:find("set HF_TOKEN", 1, true) or message:find("set KAGGLE_USERNAME", 1, true)
    or message:find("asks for a login: add", 1, true) or message:find(" was refused: check it", 1, true)
    or message:find("sent past a redirect to another host", 1, true) or message:find("; wait for that", 1, true)
end

-- Reports a failure: one line on stderr (and an "error" event with --json); returns the status.
-- extra: id (for the event), hint (replaces the code's), event_sent (the facade already sent it).
function Ctx:fail(message, code, extra)
  extra = extra or {}
  code = code or "EIO"
  local hint = extra.hint
  if hint == nil and not has_hint(message) then hint = HINTS[code] end
  if code == "ENET" and hint == HINTS.ENET and message:find("certificate", 1, true) then
    hint = "the server's certificate is not trusted here: give its CA with --cacert FILE (or SSL_CERT_FILE)"
  end
  if code == "EUSAGE" and self.command and hint == HINTS.EUSAGE then
    hint = "see modelget help " .. self.command
  end
  if self.json and not extra.event_sent then
    json_line({ event = "error", id = extra.id, code = code, message = one_line(message) })
    io.stdout:flush()
  end
  io.stderr:write(PROG, ": ", shown(one_line(message)), hint and hint ~= false and ("; " .. hint) or "", "\n")
  io.stderr:flush()
  return util.exit_status(code)
end

function Ctx:usage(fmt, ...)
  return self:fail(string.format(fmt, ...), "EUSAGE")
end

-- Problems met while loading recipes: one warning line each, loading went on.
function Ctx:warn_problems(problems)
  for _, p in ipairs(problems or {}) do
    io.stderr:write(PROG, ": warning: ", shown(one_line(p)), "\n")
  end
end

-- The terminal's columns and rows (the live block must fit both); $COLUMNS, $LINES when unknown.
local function terminal_size()
  local w, h = core.terminal_width()
  if not w or w <= 0 then w = tonumber(os.getenv("COLUMNS")) end
  if not h or h <= 0 then h = tonumber(os.getenv("LINES")) end
  return w and w > 0 and w or 80, h and h > 0 and h or 24
end

function Ctx:reporter()
  local stdout_tty = core.isatty(1)
  local mode = progress.mode(self.opts, stdout_tty)
  return progress.new {
    mode = mode,
    out = io.stdout,
    color = self.color,
    size = terminal_size, -- asked at each draw: the terminal may be resized during a pull
    clock = core.now,
  }
end

-- The catalog, its loading problems shown as warnings; nil and the exit status when it fails.
function Ctx:catalog()
  local catalog, problems, code = self:facade().catalog(self.opts)
  if not catalog then return nil, self:fail(problems, code) end
  self:warn_problems(problems)
  return catalog
end

-- Checks a --framework value against the rules the facade knows.
function Ctx:check_framework(name)
  if not name then return true end
  local names = {}
  for _, rule in ipairs(self:facade().frameworks()) do
    if rule.name == name then return true end
    names[#names + 1] = rule.name
  end
  return nil, string.format("unknown framework '%s' (one of: %s)", name, table.concat(names, ", "))
end

-- Commands ------------------------------------------------------------------------------------------
local function command(name, def)
  def.name = name
  def.options = def.options or {}
  COMMANDS[name] = def
  ORDER[#ORDER + 1] = name
end

-- The installed models, as a set of catalog entries: installed(e) is true when e's model is there
-- under e's framework (an id installed under another framework is another model), and came from the
-- catalog (a URL pulled under the same id is not the entry's model).
local function installed_set(mg, opts)
  local set, from_url = {}, require("modelget.store").from_url
  for _, m in ipairs(mg.installed(opts) or {}) do
    if not from_url(m) then set[m.framework .. "/" .. m.id] = true end
  end
  return function(e) return set[e.framework .. "/" .. e.id] == true end
end

-- The size an entry states (its main file's, else its files'), or nil.
local function stated_size(entry)
  if entry.size then return entry.size end
  local total
  for _, f in ipairs(entry.files or {}) do
    if f.size then total = (total or 0) + f.size end
  end
  return total
end

local function size_of(entry)
  local size = stated_size(entry)
  return size and progress.bytes(size) or "size unknown"
end

local function framework_titles(mg)
  local title = {}
  for _, rule in ipairs(mg.frameworks()) do title[rule.name] = rule.title or rule.name end
  return title
end

-- Prints entries (in the catalog's order: framework, then id) grouped under their framework's
-- title, "*" marking the installed ones.
function Ctx:show_entries(entries, installed)
  local title = framework_titles(self:facade())
  if self.json then
    for _, e in ipairs(entries) do
      local obj = progress.plain_data(shown_entry(e))
      obj.installed = installed(e)
      obj.event = "model"
      json_line(obj)
    end
    return
  end
  local group, rows, any_installed = nil, {}, false
  local function flush()
    if #rows > 0 then columns(rows, "  ") end
    rows = {}
  end
  for _, e in ipairs(entries) do
    if e.framework ~= group then
      flush()
      -- A blank line between groups: written as is, not as data (printf shows a line break as "?").
      if group then io.stdout:write("\n") end
      group = e.framework
      printf("%s (%s)", title[group] or group, group)
    end
    local mark = installed(e) and "*" or " "
    any_installed = any_installed or installed(e)
    rows[#rows + 1] = { mark .. " " .. e.id, e.name or "", size_of(e), e.auth and "auth" or "" }
  end
  flush()
  if any_installed then printf("\n* installed") end
end

command("list", {
  usage = "list [--framework F] [--installed]",
  summary = "the catalog, grouped by framework",
  options = { framework = "only this framework's entries", installed = "only the installed entries" },
  max = 0,
  run = function(ctx)
    local mg = ctx:facade()
    local ok, err = ctx:check_framework(ctx.opts.framework)
    if not ok then return ctx:usage("%s", err) end
    local catalog, status = ctx:catalog()
    if not catalog then return status end
    local installed = installed_set(mg, ctx.opts)
    local shown = {}
    for _, e in ipairs(catalog:entries(ctx.opts.framework)) do
      if not ctx.opts.installed or installed(e) then
        shown[#shown + 1] = e
      end
    end
    if #shown == 0 and not ctx.json then
      -- Models pulled from a URL are no catalog entries: ls lists every installed model.
      printf(ctx.opts.installed and "no installed catalog entries (modelget ls lists every installed model)" or "no entries")
      return 0
    end
    ctx:show_entries(shown, installed)
    return 0
  end,
})

command("info", {
  usage = "info ID",
  summary = "one entry: name, framework, URLs, size, sha256, files, auth, install state",
  min = 1, max = 1, ids = true,
  run = function(ctx)
    local mg = ctx:facade()
    local id = ctx.args[1]
    local catalog, status = ctx:catalog() -- its problems shown as warnings
    if not catalog then return status end
    local e, err, code = mg.info(id, setmetatable({ catalog = catalog }, { __index = ctx.opts }))
    if not e then return ctx:fail(err, code, { id = id }) end
    if ctx.json then
      json_lines({ shown_entry(e) }, "model")
      return 0
    end
    -- Each URL as a pull fetches it: on HF_ENDPOINT when that names a mirror of the Hub.
    local hub = require "modelget.hub"
    local function shown(u) return util.shown_url(hub.rewrite(u)) end
    local rows = { { "id", e.id }, { "name", e.name or "" }, { "framework", e.framework or "" } }
    local mirror = hub.endpoint() ~= hub.DEFAULT and (" on " .. util.shown_url(hub.endpoint())) or ""
    local main = e.url and shown(e.url) or (e.hub and e.hub.repo and ("hub: " .. e.hub.repo .. mirror))
    if main then rows[#rows + 1] = { "url", main } end -- none for side files alone, or an import
    for _, u in ipairs(e.alt or {}) do rows[#rows + 1] = { "alternative", shown(u) } end
    -- What the catalog states; else, for an installed model, what its manifest recorded.
    local stated = stated_size(e)
    rows[#rows + 1] = { "size", stated and progress.bytes(stated)
      or e.installed_bytes and (progress.bytes(e.installed_bytes) .. " installed") or "size unknown" }
    rows[#rows + 1] = { "sha256", e.sha256 or e.installed_sha256 and (e.installed_sha256 .. " (recorded at install)")
      or e.installed and "recorded for each file (modelget verify checks them)"
      or "not stated (verified only if the server states one)" }
    if e.unzip then rows[#rows + 1] = { "archive", "extracted after download" } end
    for _, f in ipairs(e.files or {}) do
      rows[#rows + 1] = { "file", f.name .. (f.optional and " (optional)" or "") .. (f.url and ("  " .. shown(f.url)) or "") }
      for _, u in ipairs(f.alt or {}) do rows[#rows + 1] = { "", "  or " .. shown(u), bare = true } end
    end
    for _, f in ipairs(not e.in_catalog and e.installed_files or {}) do
      rows[#rows + 1] = { "file", f.path .. "  " .. progress.bytes(f.size) }
    end
    rows[#rows + 1] = { "auth", e.auth and tostring(e.auth == true and "required" or e.auth) or "none" }
    if e.tags and #e.tags > 0 then rows[#rows + 1] = { "tags", table.concat(e.tags, ", ") } end
    if e.memory then rows[#rows + 1] = { "memory", progress.bytes(e.memory) .. " to run" } end
    if e.description then rows[#rows + 1] = { "description", one_line(e.description) } end
    if e.source then rows[#rows + 1] = { "source", e.source } end
    if not e.in_catalog then
      local store = require "modelget.store"
      rows[#rows + 1] = { "catalog", store.from_url(e) and "not a catalog model: pulled from a URL"
        or store.from_import(e) and "not a catalog model: imported"
        or "no longer defines it (its recipe or custom URL is gone, or did not load)" }
    end
    rows[#rows + 1] = { "installed", e.installed and ("yes, in " .. (e.path or "?")) or "no" }
    for _, r in ipairs(rows) do r[1] = r.bare and r[1] or r[1] .. ":" end
    columns(rows)
    return 0
  end,
})

command("search", {
  usage = "search WORDS",
  summary = "entries whose id, name, tags or framework match every word",
  min = 1,
  run = function(ctx)
    local mg = ctx:facade()
    local catalog, status = ctx:catalog()
    if not catalog then return status end
    local found = catalog:search(table.concat(ctx.args, " "))
    if #found == 0 then
      return ctx:fail("nothing matches '" .. table.concat(ctx.args, " ") .. "'", "ENOMATCH",
        { hint = "see modelget list" })
    end
    ctx:show_entries(found, installed_set(mg, ctx.opts))
    return 0
  end,
})

command("frameworks", {
  store = false, -- never reads or writes the store
  usage = "frameworks",
  summary = "the frameworks and their rules",
  max = 0,
  run = function(ctx)
    local rules = ctx:facade().frameworks()
    if ctx.json then
      for _, r in ipairs(rules) do
        json_line({ event = "framework", name = r.name, title = r.title, extensions = r.extensions,
                    describe = r.describe })
      end
      return 0
    end
    local rows = {}
    for _, r in ipairs(rules) do
      local exts = r.extensions and #r.extensions > 0 and table.concat(r.extensions, " ") or "any file"
      rows[#rows + 1] = { r.name, r.title or "", exts, r.describe and one_line(r.describe) or "" }
    end
    columns(rows)
    return 0
  end,
})

-- pull ----------------------------------------------------------------------------------------------
local PULL_ONE_TARGET = { "sha256", "id", "name", "alt" }

local function pull_options(ctx)
  local o = {}
  for k, v in pairs(ctx.opts) do o[k] = v end
  return o
end

-- The "done" line (or event) of a pull, unless the facade's own "done" event said it already.
local function report_pulled(reporter, target, res)
  local id = res.id or target
  if not reporter.done[id] then
    reporter:event({ event = "done", id = id, path = res.path, sha256 = res.sha256, bytes = res.bytes,
      already = res.already })
  end
end

local function pull_failed(ctx, reporter, target, err, code)
  return ctx:fail(err, code, { id = util.shown_url(target), event_sent = reporter.failed[err] })
end

-- pull --detach: what a pull would refuse before any download is said here (an unknown id, a URL
-- whose framework cannot be told, a bad option, a model another process is pulling); then the pull
-- goes on in a background process whose output goes to a log in the store. Returns the exit status
-- in the foreground, nil in the child.
local function detach(ctx, mg)
  local catalog
  local opts = pull_options(ctx)
  local root = mg.store_root(ctx.opts)
  for _, target in ipairs(ctx.args) do
    if (not util.is_url(target) or opts.id) and not catalog then
      local status
      catalog, status = ctx:catalog()
      if not catalog then return status end
    end
    local entry, err, code = require("modelget.pull").resolve(target, opts, catalog)
    if not entry then return ctx:fail(err, code) end
    local lock
    lock, err, code = require("modelget.store").lock(root, entry.id)
    if not lock then return ctx:fail(err, code) end
    lock:close()
  end
  local dir = root .. "/logs"
  local ok, err, code = core.mkdirs(dir)
  if not ok then return ctx:fail(err, code) end
  -- Named by time and a random tag, not a pid: the pid printed is the background process's.
  local log = string.format("%s/pull-%s-%04x.log", dir, os.date("!%Y%m%dT%H%M%SZ"), math.random(0, 0xffff))
  io.stdout:flush()
  local pid
  pid, err, code = core.detach(log)
  if not pid then return ctx:fail(err, code) end
  if pid > 0 then
    if ctx.json then
      json_line({ event = "detached", pid = pid, log = log })
    elseif not ctx.opts.quiet then
      printf("pulling in the background (pid %d); its output goes to %s", pid, log)
    end
    return 0
  end
  ctx.color = false
  ctx.log = log
  local shown = {}
  for i, a in ipairs(ctx.args) do shown[i] = util.shown_url(a) end
  printf("modelget pull %s (pid %d, started %s)", table.concat(shown, " "), core.getpid(), os.date("!%Y-%m-%d %H:%M:%SZ"))
  io.stdout:flush() -- before any error line the pull writes to stderr, in the same log
end

-- The pull itself: the targets downloaded, each reported; the exit status.
local function pull_targets(ctx, mg)
  local reporter = ctx:reporter()
  local opts = pull_options(ctx)
  opts.on_event = function(ev) reporter:event(ev) end
  if #ctx.args == 1 then
    local target = ctx.args[1]
    local res, err, code = mg.pull(target, opts)
    reporter:close()
    if not res then return pull_failed(ctx, reporter, target, err, code) end
    report_pulled(reporter, target, res)
    return 0
  end
  local results = mg.pull_many(ctx.args, opts)
  reporter:close()
  -- Targets that failed alike (a Ctrl-C before their first bytes came, say: a list of hundreds)
  -- are one line naming them, each still its own error event.
  local status, alike, order = 0, {}, {}
  for i, r in ipairs(results) do
    local target = r.target or ctx.args[i]
    if r.ok then
      report_pulled(reporter, target, r.result)
    else
      local code, err = r.code or "EIO", tostring(r.err)
      local key = code .. "\0" .. err
      if not alike[key] then
        alike[key] = { err = err, code = code, targets = {} }
        order[#order + 1] = alike[key]
      end
      table.insert(alike[key].targets, target)
    end
  end
  for _, a in ipairs(order) do
    local s
    if #a.targets == 1 then
      s = pull_failed(ctx, reporter, a.targets[1], a.err, a.code)
    else
      -- Named as pull_failed names one (a URL's credentials hidden), each name once.
      local ids, named_once, sent = {}, {}, reporter.failed[a.err]
      for _, target in ipairs(a.targets) do
        local shown_target = util.shown_url(target)
        if ctx.json and not sent then
          json_line({ event = "error", id = shown_target, code = a.code, message = one_line(a.err) })
        end
        local id = util.shown_url(mg.target_id(target, ctx.opts))
        if not named_once[id] then named_once[id] = true; ids[#ids + 1] = id end
      end
      local named = #ids > 4 and string.format("%s and %d more", table.concat(ids, ", ", 1, 3), #ids - 3)
        or table.concat(ids, ", ")
      s = ctx:fail(string.format("%s: %s", named, a.err), a.code, { event_sent = true })
    end
    if status == 0 then status = s end
  end
  return status
end

command("pull", {
  usage = "pull ID|URL… [--sha256 HEX] [--framework F] [--id ID] [--name FILE] [--unzip|--no-unzip] [--alt URL]… [--auth] [--force] [--detach]",
  summary = "download, verify, extract, fetch side files, install",
  options = {
    sha256 = "the file's expected SHA-256 (a URL's; a recipe states its own)",
    framework = "the framework of a URL (default: from the extension)",
    id = "the id to install a URL under (default: the file name without extension)",
    name = "the file name to save a URL as",
    unzip = "the URL is an archive: extract it (the default for a .zip, .tar.gz, … name)",
    no_unzip = "install an archive as it is, not extracted",
    alt = "an alternative URL, tried when the first fails (repeatable)",
    auth = "the URL needs a login: its host's in ~/.netrc is sent (the Hub's and Kaggle's credentials go anyway)",
    force = "download again even when installed and verified",
    detach = "go on in the background, past the terminal's end; output to <store>/logs/",
  },
  min = 1, ids = true,
  run = function(ctx)
    local mg = ctx:facade()
    if #ctx.args > 1 then
      for _, k in ipairs(PULL_ONE_TARGET) do
        if ctx.opts[k] then return ctx:usage("--%s applies to one target; pull those one at a time", k) end
      end
    end
    local ok, ferr = ctx:check_framework(ctx.opts.framework)
    if not ok then return ctx:usage("%s", ferr) end
    if ctx.opts.detach then
      local status = detach(ctx, mg)
      if status then return status end
    end
    -- Known as pulling its ids while it runs, so that 'status' shows its pid and 'stop' finds it
    -- (a store it cannot register in still pulls).
    local ids = {}
    for _, target in ipairs(ctx.args) do ids[#ids + 1] = mg.target_id(target, ctx.opts) end
    local registered = mg.register_pull(ids, ctx.log, ctx.opts)
    local status = pull_targets(ctx, mg)
    if registered then registered.close() end
    return status
  end,
})

-- verify's verdicts, a line (or event) each; the models that failed, as "id: files" and as ids, and
-- what gets each again.
local function say_verdicts(ctx, list)
  local bad, bad_ids, agains = {}, {}, {}
  for _, m in ipairs(list) do
    if ctx.json then
      json_line({ event = "verified", id = m.id, framework = m.framework, ok = m.ok, bad = m.bad,
                  outdated = m.outdated, again = m.again })
    elseif m.ok and m.outdated then
      ctx:say("ok      %s (the catalog now states another version: modelget pull %s downloads it)", m.id, m.id)
    elseif m.ok then
      ctx:say("ok      %s", m.id)
    else
      ctx:say("FAILED  %s: %s", m.id, table.concat(m.bad or {}, ", "))
    end
    if not m.ok then
      bad[#bad + 1] = m.id .. ": " .. table.concat(m.bad or { "?" }, ", ")
      bad_ids[#bad_ids + 1] = m.id
      -- What gets it again: a catalog id's pull, else the URL or the folder it came from.
      agains[#agains + 1] = (#list > 1 and m.id .. ": " or "")
        .. (m.again or "modelget rm " .. m.id .. ", then pull or import it again")
    end
  end
  return bad, bad_ids, agains
end

command("verify", {
  usage = "verify [ID…]",
  summary = "re-hash installed models (all, or the ones named)",
  ids = true,
  run = function(ctx)
    local mg = ctx:facade()
    local reporter = ctx:reporter()
    local opts = pull_options(ctx)
    opts.on_event = function(ev) reporter:event(ev) end
    local list, err, code, checked = mg.verify(#ctx.args > 0 and ctx.args or nil, opts)
    reporter:close()
    if not list then
      -- A Ctrl-C: the verdicts reached before it are said all the same.
      if checked then say_verdicts(ctx, checked) end
      -- The error event names the model when it is one (SPEC: error has id, code, message).
      return ctx:fail(err, code, { id = #ctx.args == 1 and ctx.args[1] or nil })
    end
    local bad, bad_ids, agains = say_verdicts(ctx, list)
    if #list == 0 and not ctx.json then ctx:say("no models installed") end
    if #bad > 0 then
      return ctx:fail("verification failed: " .. table.concat(bad, "; "), "EHASH",
        { hint = table.concat(agains, "; "), id = #bad_ids == 1 and bad_ids[1] or nil })
    end
    return 0
  end,
})

-- Verified at install; still the same sizes now? (verify re-hashes; ls stays quick on big models)
-- "ok", "changed", or nil for a model another process removed meanwhile (one it replaced is
-- looked at as it is now).
local function state_of(m)
  local bad = require("modelget.store").check_installed(m.path, false)
  return bad and (#bad == 0 and "ok" or "changed")
end

command("ls", {
  usage = "ls",
  summary = "installed models: framework, size on disk, state (verified at install, sizes unchanged)",
  max = 0,
  run = function(ctx)
    local mg = ctx:facade()
    -- A model folder whose manifest cannot be read (damaged) is no model to list, but it is there.
    local list, damaged, code = mg.installed(ctx.opts)
    if not list then return ctx:fail(damaged, code) end
    if ctx.json then
      local shown = {}
      for i, m in ipairs(list) do shown[i] = shown_entry(m) end
      json_lines(shown, "installed")
      json_lines(damaged, "damaged")
      return 0
    end
    local rows, total = { { "ID", "FRAMEWORK", "SIZE", "STATE", "PATH" } }, 0
    for _, m in ipairs(list) do
      local state = state_of(m)
      if state then
        total = total + (m.bytes or 0)
        rows[#rows + 1] = { m.id, m.framework or "", progress.bytes(m.bytes), state, m.path or "" }
      end
    end
    for _, d in ipairs(damaged) do rows[#rows + 1] = { d.id, d.framework, "?", "damaged", d.path } end
    if #rows == 1 then
      printf("no models installed in %s", mg.store_root(ctx.opts))
      return 0
    end
    columns(rows)
    printf("%d model%s, %s in %s", #rows - 1, #rows == 2 and "" or "s", progress.bytes(total), mg.store_root(ctx.opts))
    printf("ok: verified at install, sizes unchanged (modelget verify re-hashes every file)")
    if #damaged > 0 then
      printf("damaged: its record (%s) cannot be read: modelget verify says why, modelget rm ID removes it",
        require("modelget.store").MANIFEST)
    end
    return 0
  end,
})

command("status", {
  usage = "status",
  summary = "downloads in progress, or stopped part-way (pull again to resume)",
  max = 0,
  run = function(ctx)
    local mg = ctx:facade()
    local list = mg.partials(ctx.opts)
    local pid_of = {} -- id -> the pid of the process pulling it
    for _, r in ipairs(mg.running(ctx.opts)) do
      for _, id in ipairs(type(r.ids) == "table" and r.ids or {}) do pid_of[id] = r.pid end
    end
    if ctx.json then
      for _, p in ipairs(list) do
        json_line({ event = "partial", id = p.id, framework = p.framework, completed = p.bytes, kept = p.kept, total = p.total,
                    active = p.active, path = p.path, pid = p.active and pid_of[p.id] or nil })
      end
      return 0
    end
    if #list == 0 then
      printf("no downloads in progress or stopped part-way in %s", mg.store_root(ctx.opts))
      return 0
    end
    local rows = { { "ID", "FRAMEWORK", "STATE", "DOWNLOADED" } }
    for _, p in ipairs(list) do
      -- A running download shows what it has; a stopped one what a pull resumes from.
      local n = p.active and p.bytes or p.kept
      local done = progress.bytes(n)
      if p.total and p.total > 0 then
        done = string.format("%s of %s (%d%%)", done, progress.bytes(p.total), math.floor(100 * n / p.total))
      end
      -- Active with nothing yet: waiting for its turn (-j) or for its first bytes.
      local doing = p.active and ((p.bytes or 0) > 0 and "downloading" or "waiting")
      local state = doing and (pid_of[p.id] and string.format("%s (pid %d)", doing, pid_of[p.id]) or doing) or "stopped"
      rows[#rows + 1] = { p.id, p.framework, state, done }
    end
    columns(rows)
    local stopped = false
    for _, p in ipairs(list) do stopped = stopped or not p.active end
    if stopped then
      printf("stopped: the same pull again resumes it (the same ID or URL, and options); "
        .. "'modelget rm ID' drops its partial data")
    end
    if next(pid_of) then printf("downloading: 'modelget stop ID' stops it, its partial data kept") end
    return 0
  end,
})

command("stop", {
  usage = "stop [ID…]",
  summary = "stop pulls running in the background or another terminal (all, or those of the ids); their partial data is kept",
  ids = true,
  run = function(ctx)
    local mg = ctx:facade()
    local stopped, err, code = mg.stop(ctx.args, ctx.opts)
    if not stopped then return ctx:fail(err, code) end
    if #stopped == 0 and not ctx.json then ctx:say("no pulls running in %s", mg.store_root(ctx.opts)) end
    local status = 0
    for _, p in ipairs(stopped) do
      local ids = table.concat(type(p.ids) == "table" and p.ids or {}, " ")
      if ctx.json then
        json_line({ event = "stopped", pid = p.pid, ids = p.ids, ended = p.ended, finished = p.finished })
      elseif p.ended then
        if #p.ids > 0 then
          ctx:say("stopped %s (pid %d): %s partial data is kept; the same pull again resumes it", ids, p.pid,
            #p.ids > 1 and "their" or "its")
        end
        if p.finished then
          ctx:say("%s (pid %d) had ended before the stop reached it", table.concat(p.finished, " "), p.pid)
        end
      end
      if not p.ended then
        local interrupted = core.interrupted() -- Ctrl-C while it waited: not a failure of the stop
        status = ctx:fail(string.format("pid %d (%s) was asked to stop and has not ended yet%s", p.pid, ids,
          interrupted and " (the wait for it interrupted)" or ""), interrupted and "EINTR" or "EIO",
          { hint = false })
      end
    end
    return status
  end,
})

command("rm", {
  usage = "rm ID…",
  summary = "remove installed models (or the partial data of a stopped download)",
  min = 1, ids = true,
  run = function(ctx)
    local mg = ctx:facade()
    local status = 0
    for i, id in ipairs(ctx.args) do
      local ok, err, code = mg.remove(id, ctx.opts)
      if ok then
        if ctx.json then json_line({ event = "removed", id = id })
        else ctx:say("removed %s", id) end
      elseif code == "EINTR" then
        -- Ctrl-C: this id and those after it stay installed.
        local left = table.concat(ctx.args, " ", i)
        return ctx:fail(string.format("rm interrupted before removing %s; modelget rm %s removes %s", left, left,
          i == #ctx.args and "it" or "them"), code, { id = id })
      else
        local s = ctx:fail(err, code, { id = id })
        if status == 0 then status = s end
      end
    end
    return status
  end,
})

-- urls ----------------------------------------------------------------------------------------------
local URLS = {}

function URLS.list(ctx)
  local list, err, code = ctx:facade().urls.list(ctx.opts)
  if not list then return ctx:fail(err, code) end
  if ctx.json then
    local shown = {}
    for i, e in ipairs(list) do shown[i] = shown_entry(e) end
    json_lines(shown, "custom")
    return 0
  end
  if #list == 0 then printf("no custom URLs (add one with modelget urls add)") return 0 end
  local rows = {}
  for _, e in ipairs(list) do
    local notes = {}
    if e.sha256 then notes[#notes + 1] = "sha256" end
    if e.requiresUnzip or e.unzip then notes[#notes + 1] = "unzip" end
    if e.requiresAuth or e.auth then notes[#notes + 1] = "auth" end
    local alts = e.alternativeURLs or e.alt or {}
    if #alts > 0 then notes[#notes + 1] = #alts .. " alternative" .. (#alts == 1 and "" or "s") end
    rows[#rows + 1] = { e.id, e.name or "", util.shown_url(e.url or ""), table.concat(notes, ", ") }
  end
  columns(rows)
  return 0
end

function URLS.add(ctx)
  for _, k in ipairs({ "id", "name", "url" }) do
    if not ctx.opts[k] then return ctx:usage("urls add needs --%s", k) end
  end
  local ok, ferr = ctx:check_framework(ctx.opts.framework)
  if not ok then return ctx:usage("%s", ferr) end
  -- Neither --unzip nor --no-unzip: the name decides (an archive's is extracted), as for a pull.
  local unzip
  if ctx.opts.unzip then unzip = true elseif ctx.opts.no_unzip then unzip = false end
  local fields = {
    id = ctx.opts.id, name = ctx.opts.name, url = ctx.opts.url, sha256 = ctx.opts.sha256,
    framework = ctx.opts.framework, requiresUnzip = unzip,
    requiresAuth = ctx.opts.auth or false, alternativeURLs = ctx.opts.alt or {},
  }
  local res, err, code = ctx:facade().urls.add(fields, ctx.opts)
  if not res then return ctx:fail(err, code, { id = fields.id }) end
  if ctx.json then json_line({ event = "added", id = fields.id })
  else ctx:say("added %s (modelget pull %s downloads it)", fields.id, fields.id) end
  return 0
end

function URLS.rm(ctx)
  local id = ctx.args[2]
  local res, err, code = ctx:facade().urls.remove(id, ctx.opts)
  if not res then return ctx:fail(err, code, { id = id }) end
  if ctx.json then json_line({ event = "removed", id = id }) else ctx:say("removed custom URL %s", id) end
  return 0
end

function URLS.export(ctx)
  local file = ctx.args[2]
  local res, err, code = ctx:facade().urls.export(file, ctx.opts)
  if not res then return ctx:fail(err, code) end
  if file then
    if ctx.json then json_line({ event = "exported", file = file })
    else ctx:say("exported custom URLs to %s", file) end
  elseif ctx.json then
    -- One line, an "export" event holding the schema's "custom" list: the exported text with its
    -- layout taken out (no string in it holds a newline), so an empty list stays [] (a decoded and
    -- encoded one would come back as {}).
    io.stdout:write('{"event":"export",', (res:gsub("\n%s*", "")):sub(2), "\n")
  else
    io.stdout:write(res, res:sub(-1) == "\n" and "" or "\n")
  end
  return 0
end

function URLS.import(ctx)
  local file = ctx.args[2]
  local res, err, code = ctx:facade().urls.import(file, ctx.opts)
  if not res then return ctx:fail(err, code) end
  -- An entry of an id already there is replaced whole by the file's: said, not done silently.
  if ctx.json then
    json_line({ event = "imported", file = file, count = res.count, added = res.added, replaced = res.replaced })
  else
    ctx:say("imported %d custom URL%s from %s%s", res.count, res.count == 1 and "" or "s", file,
      #res.replaced > 0 and (" (replaced: " .. table.concat(res.replaced, ", ") .. ")") or "")
  end
  return 0
end

local URLS_ARGS = { list = { 1, 1 }, add = { 1, 1 }, rm = { 2, 2 }, export = { 1, 2 }, import = { 2, 2 } }

command("urls", {
  usage = "urls list|add|rm ID|export [FILE]|import FILE",
  needs = "a subcommand: list, add, rm, export or import",
  summary = "custom model URLs (the JSON schema of the guide)",
  detail = "add takes --id ID --name FILE --url URL [--sha256 HEX] [--framework F] [--unzip|--no-unzip] [--auth] [--alt URL]…",
  options = {
    id = "add: the entry's id", name = "add: the file name (with its extension)", url = "add: the download URL",
    sha256 = "add: the file's expected SHA-256", framework = "add: the framework (default: from the extension)",
    unzip = "add: the URL is an archive to extract (the default for a .zip, .tar.gz, … name)",
    no_unzip = "add: install an archive as it is, not extracted", auth = "add: the URL needs credentials",
    alt = "add: an alternative URL (repeatable)",
  },
  min = 1, max = 2,
  run = function(ctx)
    local sub = ctx.args[1]
    local n = URLS_ARGS[sub]
    if not n then return ctx:usage("unknown urls command '%s' (list, add, rm, export, import)", sub) end
    if #ctx.args < n[1] then return ctx:usage("urls %s needs %s", sub, sub == "rm" and "an ID" or "a FILE") end
    if #ctx.args > n[2] then return ctx:usage("too many arguments for urls %s", sub) end
    if sub ~= "add" then
      for _, o in ipairs(ctx.given) do
        if not o.global then return ctx:usage("--%s applies to urls add only", o.long) end
      end
    end
    return URLS[sub](ctx)
  end,
})

command("import", {
  usage = "import DIR --id ID --framework F",
  summary = "adopt a local folder (a git clone of a model repo, say) into the store",
  detail = "Copies the folder's files, not .git/ nor the .cache/ at its top (huggingface-cli download"
    .. " --local-dir's metadata); a link to a file is copied as that file. Under a catalog id (a local clone"
    .. " of that model) --framework must be the catalog's.",
  options = { id = "the id to install it under", framework = "its framework" },
  min = 1, max = 1,
  run = function(ctx)
    for _, k in ipairs({ "id", "framework" }) do
      if not ctx.opts[k] then return ctx:usage("import needs --%s", k) end
    end
    local ok, ferr = ctx:check_framework(ctx.opts.framework)
    if not ok then return ctx:usage("%s", ferr) end
    local res, err, code = ctx:facade().import_dir(ctx.args[1], ctx.opts)
    if not res then
      return ctx:fail(err, code, { id = ctx.opts.id,
        hint = code == "EFORMAT" and "nothing was installed; check --framework and the folder's files" or nil })
    end
    if ctx.json then
      json_line({ event = "done", id = res.id or ctx.opts.id, path = res.path, sha256 = res.sha256,
        bytes = res.bytes })
    else
      ctx:say("imported %s (%s) into %s", res.id or ctx.opts.id, progress.bytes(res.bytes), res.path or "?")
    end
    return 0
  end,
})

-- run -----------------------------------------------------------------------------------------------
command("run", {
  store = false, -- never reads or writes the store
  usage = "run SCRIPT.lua [ARGS…]",
  summary = "run a Lua script with the engine and the facade loaded",
  detail = "The script sees its arguments in arg (arg[0] is the script) and in ...; require \"modelget\""
    .. " and require \"modelget.core\" work. Its integer return value (or os.exit) is the exit status;"
    .. " an error stops it with status 9 and file:line: message.",
  min = 1,
  run = function(ctx)
    local script = ctx.args[1]
    local args = { [0] = script, table.unpack(ctx.args, 2) }
    local chunk, err = loadfile(script)
    if not chunk then
      if not core.stat(script) then return ctx:fail("cannot open " .. script, "EUSAGE", { hint = false }) end
      return ctx:fail(err, "EINPUT", { hint = false })
    end
    _G.arg = args
    local debug_on = os.getenv("MODELGET_DEBUG")
    local ok, res = xpcall(chunk, function(e)
      if type(e) == "table" or e == nil then return e end
      local msg = tostring(e)
      return debug_on and debug.traceback(msg, 2) or msg
    end, table.unpack(args))
    if not ok then
      if type(res) == "table" then
        -- An error table of the facade's shape ({message=, code=}) keeps its code; any other is
        -- a script error like the rest (said by its __tostring, when it has one).
        local code = type(res.code) == "string" and res.code:match("^E%u+$") and res.code or "EINPUT"
        local shown = getmetatable(res) and getmetatable(res).__tostring and tostring(res)
        local msg = type(res.message) == "string" and res.message or shown
          or "(an error object that is a table, with no message)"
        return ctx:fail(script .. ": " .. msg, code, { hint = false })
      elseif res == nil then
        return ctx:fail(script .. ": (an error with no message: error(nil))", "EINPUT", { hint = false })
      end
      return ctx:fail(res, "EINPUT", { hint = false })
    end
    if type(res) == "number" then
      local n = math.tointeger(res)
      if n and n >= 0 and n <= 255 then return n end
      return ctx:fail(string.format("%s returned %s: an exit status is a whole number, 0 to 255", script, tostring(res)),
        "EINPUT", { hint = false })
    end
    if res == false then return 1 end
    return 0
  end,
})

command("help", {
  store = false, -- never reads or writes the store
  usage = "help [COMMAND]",
  summary = "this help, or one command's",
  max = 1,
  run = function(ctx)
    local name = ctx.args[1]
    if not name then io.stdout:write(M.help()) return 0 end
    if not COMMANDS[name] then return ctx:usage("unknown command '%s'", name) end
    io.stdout:write(M.command_help(name))
    return 0
  end,
})

-- Help ----------------------------------------------------------------------------------------------
local function option_rows(filter, describe)
  local rows = {}
  for _, o in ipairs(OPTIONS) do
    local text = describe(o)
    if filter(o) and text then
      local flag = (o.short and ("-" .. o.short .. ", ") or "    ") .. "--" .. o.long .. (o.arg and (" " .. o.arg) or "")
      rows[#rows + 1] = { flag, text }
    end
  end
  return rows
end

local function render(rows, indent)
  local w = 0
  for _, r in ipairs(rows) do w = math.max(w, utf8.len(r[1])) end
  local out = {}
  for _, r in ipairs(rows) do
    out[#out + 1] = indent .. r[1] .. string.rep(" ", w - utf8.len(r[1]) + 2) .. r[2]
  end
  return table.concat(out, "\n") .. "\n"
end

function M.help()
  local cmds = {}
  for _, name in ipairs(ORDER) do
    cmds[#cmds + 1] = "  " .. COMMANDS[name].usage .. "\n      " .. COMMANDS[name].summary .. "\n"
  end
  return "usage: modelget [OPTIONS] COMMAND [ARGS]\n\n"
    .. "Downloads machine-learning models: resumable, verified (SHA-256), checked against their\n"
    .. "framework, installed under the store. Options may come before or after the command.\n\n"
    .. "commands:\n" .. table.concat(cmds)
    .. "\noptions:\n" .. render(option_rows(function(o) return o.global end, function(o) return o.help end), "  ")
    .. "\nmodelget help COMMAND (or COMMAND --help) shows a command's options.\n"
    .. "exit status: 0 done, 1 other failure, 2 usage or unknown id or refused URL, 3 network, 4 integrity,\n"
    .. "5 insufficient storage, 6 authentication, 7 unsafe or corrupt archive, 8 not compatible with its\n"
    .. "framework, 9 bad input file, 130 interrupted (partial data kept).\n"
end

function M.command_help(name)
  local c = COMMANDS[name]
  local text = "usage: modelget [OPTIONS] " .. c.usage .. "\n\n" .. c.summary .. "\n"
  if c.detail then text = text .. c.detail .. "\n" end
  local rows = option_rows(function(o) return c.options[o.key] ~= nil end, function(o) return c.options[o.key] end)
  if #rows > 0 then text = text .. "\noptions:\n" .. render(rows, "  ") end
  return text .. "\nglobal options (--store, --json, -q, -j, …): see modelget --help\n"
end

function M.version()
  local ok, mg = pcall(require, "modelget")
  local v = ok and type(mg) == "table" and mg.version or "?"
  return string.format("modelget %s (%s, %s)\n", v, core.version(), _VERSION)
end

-- Main ----------------------------------------------------------------------------------------------
local function check_arity(c, args)
  if c.min and #args < c.min then
    local what = c.needs or c.usage:match("^%S+%s+(%S+)") or "an argument"
    return string.format("%s needs %s", c.name, what)
  end
  if c.max and #args > c.max then
    return string.format("%s takes %s", c.name,
      c.max == 0 and "no arguments" or string.format("at most %d argument%s", c.max, c.max == 1 and "" or "s"))
  end
  -- An empty word names no id, URL or file (a script's own arguments are its business).
  for i, a in ipairs(args) do
    if a == "" and not (c.name == "run" and i > 1) then return string.format("%s: argument %d is empty", c.name, i) end
  end
end

function M.main(argv)
  local ok, p = pcall(M.parse, argv)
  local ctx = setmetatable({ opts = {}, given = {}, args = {} }, Ctx)
  if not ok then
    if getmetatable(p) ~= Usage then error(p, 0) end
    -- --json may have come before the bad word: the error event is still owed.
    for _, a in ipairs(argv) do if a == "--json" then ctx.json = true end end
    return ctx:fail(p.message, "EUSAGE")
  end
  ctx.opts, ctx.given, ctx.args = p.opts, p.given, p.args
  ctx.json = p.opts.json and true or false
  ctx.color = not p.opts.no_color and os.getenv("NO_COLOR") == nil and core.isatty(1)
  p.opts.no_color, p.opts.help, p.opts.version = nil, nil, nil

  local given = {}
  for _, o in ipairs(p.given) do given[o.long] = true end
  if given.version then io.stdout:write(M.version()) return 0 end
  if p.command == nil then
    if given.help then io.stdout:write(M.help()) return 0 end
    return ctx:fail("no command given", "EUSAGE")
  end
  local c = COMMANDS[p.command]
  if not c then return ctx:fail(string.format("unknown command '%s'", p.command), "EUSAGE") end
  ctx.command = c.name
  if given.help then io.stdout:write(M.command_help(c.name)) return 0 end
  for _, o in ipairs(p.given) do
    if not o.global and c.options[o.key] == nil then
      return ctx:usage("--%s does not apply to %s", o.long, c.name)
    end
  end
  if p.opts.unzip and p.opts.no_unzip then return ctx:usage("--unzip and --no-unzip: one or the other") end
  local bad = check_arity(c, p.args)
  if bad then return ctx:fail(bad, "EUSAGE") end
  if c.store ~= false then
    local problem = require("modelget.store").root_problem(p.opts)
    if problem then return ctx:fail(problem, "EUSAGE", { hint = "name a folder with --store DIR (or $MODELGET_HOME)" }) end
  end
  if c.name ~= "run" then core.catch_interrupt() end
  return c.run(ctx)
end

return M
