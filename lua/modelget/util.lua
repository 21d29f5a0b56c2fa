-- Small helpers shared by the Lua layers: failures, URLs and the network policy, sizes, JSON files.
local util = {}

-- The shape of every failure of the world: nil, "context: message", CODE.
function util.fail(code, fmt, ...)
  return nil, select("#", ...) > 0 and string.format(fmt, ...) or fmt, code
end

-- Exit status for an error code (SPEC "Exit status").
local exit_for = {
  EUSAGE = 2, EUNKNOWN = 2, EPOLICY = 2,
  ENET = 3,
  EHASH = 4, ESIZE = 4,
  ESPACE = 5,
  EAUTH = 6,
  EARCHIVE = 7,
  EFORMAT = 8,
  EINPUT = 9,
  EINTR = 130,
}
function util.exit_status(code) return exit_for[code] or 1 end

-- URLs ------------------------------------------------------------------------------------------
-- {scheme=, host=, port=, path=} of a URL, or nil. The same URL gives the same table (the caller
-- must not change it): a pull asks for its URLs' parts many times.
local parsed, nparsed = {}, 0
local parse_url
function util.parse_url(url)
  local u = parsed[url]
  if u == nil then
    u = parse_url(url) or false
    if nparsed >= 1024 then parsed, nparsed = {}, 0 end
    parsed[url], nparsed = u, nparsed + 1
  end
  return u or nil
end

function parse_url(url)
  local scheme, rest = url:match("^(%a[%w+.-]*)://(.*)$")
  if not scheme then return nil end
  local authority, path = rest:match("^([^/?#]*)(.*)$")
  local hostport = authority:match("@([^@]*)$") or authority
  local host, port
  if hostport:sub(1, 1) == "[" then
    host, port = hostport:match("^%[([^%]]*)%]:?(%d*)$")
  else
    host, port = hostport:match("^([^:]*):?(%d*)$")
  end
  if not host or host == "" then return nil end
  return { scheme = scheme:lower(), host = host:lower(), port = tonumber(port),
           path = path ~= "" and path or "/" }
end

-- The origin a credential is given for (as curl has it): a parsed URL's scheme, host and port, the
-- scheme's default port filled in.
function util.origin(u)
  return u.scheme, u.host, u.port or (u.scheme == "http" and 80 or 443)
end

function util.is_loopback(host)
  host = host and host:lower()
  return host == "localhost" or host == "::1" or (host ~= nil and host:match("^127%.%d+%.%d+%.%d+$") ~= nil)
end

-- SPEC "Network policy": https only; plain http only to loopback hosts.
function util.check_url(url)
  if type(url) ~= "string" then return util.fail("EPOLICY", "not a URL: %s", tostring(url)) end
  if url:find("[%s%c]") then
    return util.fail("EUSAGE", "not a URL: '%s' (a space or control character must be percent-encoded: %%20 for a space)",
      (util.shown_url(url):gsub("%c", "?")))
  end
  local u = util.parse_url(url)
  if not u then return util.fail("EPOLICY", "not a URL: %s", util.shown_url(url)) end
  if u.scheme == "https" then return u end
  if u.scheme == "http" and util.is_loopback(u.host) then return u end
  if u.scheme == "http" then
    return util.fail("EPOLICY", "refused %s: plain http:// is allowed only to loopback hosts; use https://",
      util.shown_url(url))
  end
  return util.fail("EPOLICY", "refused %s: only https:// URLs are allowed", util.shown_url(url))
end

-- Whether a file name is an archive's (.zip, .tar and the compressed tars).
local ARCHIVE = { "%.zip$", "%.tar$", "%.tar%.gz$", "%.tgz$", "%.tar%.xz$", "%.txz$", "%.tar%.zst$",
  "%.tar%.bz2$", "%.tbz2?$" }
function util.is_archive(name)
  local lower = name:lower()
  for _, p in ipairs(ARCHIVE) do if lower:find(p) then return true end end
  return false
end

-- A URL as shown to people (messages, events, listings): the credentials written in it as ***
-- (user:password@ -> user:***@; a token alone, token@ -> ***@), and so the values of query
-- parameters that carry one (a presigned URL's X-Amz-Signature, a ?token=, an api_key…); the rest
-- of the query (?download=true) stays. The URL itself is kept for use.
-- A parameter is secret by its whole name, or by its last word after a '-', '_' or '.'
-- (X-Amz-Signature, access_token, api_key, client_secret): ?author= or ?tokenizer= is no secret.
local SECRET_WORDS = {}
for _, w in ipairs { "sig", "signature", "token", "key", "apikey", "secret", "password", "passwd", "pass",
                     "credential", "credentials", "auth", "authorization", "session", "sessionid", "jwt",
                     "hmac", "hdnts" } do
  SECRET_WORDS[w] = true
end

local function secret_param(name)
  local lower = util.url_decode(name):lower()
  return SECRET_WORDS[lower] or SECRET_WORDS[lower:match("[-_.]([^-_.]+)$") or ""] or false
end

local function shown_query(query)
  return (query:gsub("([^&;=#?]+)=([^&;#]*)", function(name, value)
    if value ~= "" and secret_param(name) then return name .. "=***" end
  end))
end

function util.shown_url(url)
  if type(url) ~= "string" then return url end
  local head, authority, rest = url:match("^(%a[%w+.-]*://)([^/?#]*)(.*)$")
  if not head then return url end
  local path, query, fragment = rest:match("^([^?#]*)(%??[^#]*)(.*)$")
  rest = path .. shown_query(query) .. shown_query(fragment) -- a fragment can carry one (#access_token=)
  local userinfo, host = authority:match("^(.*)@([^@]*)$")
  if not userinfo then return head .. authority .. rest end
  local user = userinfo:match("^([^:]*):")
  return head .. (user and (user .. ":***") or "***") .. "@" .. host .. rest
end

-- A word as a shell reads it back: as it is when plain, else in single quotes.
function util.shell_quote(s)
  if s:match("^[%w%-%._~:/%%+@,=]+$") then return s end
  return "'" .. s:gsub("'", "'\\''") .. "'"
end

-- s as it may be written to a terminal: a file name decoded from a URL (%1b), a recipe's name, a
-- server's message can hold control characters (an ANSI escape would recolour, clear or retitle the
-- user's terminal); each becomes "?". C0, DEL and the C1 range (U+0080–U+009F, 8-bit CSI among them)
-- go; text that is not UTF-8 keeps only its ASCII. Tabs and newlines too: a line stays one line.
function util.printable(s)
  s = tostring(s)
  if not s:find("[%c\128-\255]") then return s end -- the common case: plain ASCII
  if utf8.len(s) then
    return (s:gsub("%c", "?"):gsub("\194[\128-\159]", "?"))
  end
  return (s:gsub("[%c\128-\255]", "?"))
end

-- s cut to at most n characters, an ellipsis marking the cut: a name in a column, or a long value
-- quoted in a message (n defaults to 60 for those: the line stays readable).
function util.abbrev(s, n)
  n = n or 60
  local chars = utf8.len(s)
  if (chars or #s) <= n then return s end
  if n < 2 then return s:sub(1, n) end
  if not chars then return s:sub(1, n - 1) .. "…" end -- not UTF-8: cut by bytes
  return s:sub(1, utf8.offset(s, n) - 1) .. "…"
end

-- Whether a pull target is a URL (scheme://…) rather than a catalog id.
function util.is_url(s) return type(s) == "string" and s:match("^%a[%w+.-]*://") ~= nil end

function util.url_decode(s)
  return (s:gsub("%%(%x%x)", function(h) return string.char(tonumber(h, 16)) end))
end

-- The file name a URL points at: its last path segment, decoded, without query or fragment.
function util.url_filename(url)
  local u = util.parse_url(url)
  local path = u and u.path or url
  path = path:gsub("[?#].*$", "")
  local name = util.url_decode(path:match("([^/]*)/*$") or "")
  return name
end

function util.basename(path) return (path:match("([^/]*)/*$")) end
function util.dirname(path) return path:match("^(.*)/[^/]*$") or "." end
function util.strip_ext(name)
  local base = name:gsub("%.tar%.%w+$", ""):gsub("%.zip$", "")
  return (base:match("^(.+)%.[^.]+$") or base)
end

-- A model id: letters, digits, '.', '_' or '-', starting with a letter or digit, at most ID_MAX bytes.
util.ID_MAX = 128
util.ID_RULE = "letters, digits, '.', '_' or '-', starting with a letter or digit"
-- The part of that rule an id breaks, as what it "must be" (the characters' rule, or the length's);
-- nil for a valid id.
function util.id_problem(id)
  if type(id) ~= "string" or not id:find("^[%w][%w._-]*$") then return util.ID_RULE end
  if #id > util.ID_MAX then return string.format("at most %d bytes long, not %d", util.ID_MAX, #id) end
end
function util.valid_id(id) return util.id_problem(id) == nil end

-- The id a file name gives (a URL's, when no id is given): the name without its extension, each run
-- of other characters made one '-' ("my model.onnx" -> "my-model"); nil when nothing is left.
function util.id_from_name(name)
  local id = util.strip_ext(name):gsub("[^%w._-]+", "-"):gsub("^[^%w]+", ""):sub(1, util.ID_MAX)
  return util.valid_id(id) and id or nil
end

-- The file in each installed model's folder where the store keeps its record of the model (its
-- manifest): no file of a model may take that name (letter case aside, for file systems that ignore it).
util.MANIFEST = ".modelget.json"
function util.reserved_name(path)
  return type(path) == "string" and (path:match("^[^/]*") or ""):lower() == util.MANIFEST
end

-- A name safe as one path component (file names from URLs).
function util.safe_component(name)
  if type(name) ~= "string" or name == "" or name == "." or name == ".." or name:find("[/%z\n\r]") then
    return nil
  end
  return name
end

-- What keeps a name from being the name of one file in a model's folder (the name --name or a
-- custom URL gives the download), as a phrase to follow the name; nil when it can be. NAME_MAX leaves
-- room under the file systems' 255 bytes for what the store adds to a partial download's name
-- (".part.state", ".part.split.tmp", a write's ".tmp.<pid>").
util.NAME_MAX = 200
function util.file_name_problem(name)
  if not util.safe_component(name) then return "is not a file name (no folders)" end
  if #name > util.NAME_MAX then
    return string.format("is %d bytes long, more than the %d a file name may have", #name, util.NAME_MAX)
  end
end

-- A relative path with no empty, "." or ".." parts.
function util.safe_relpath(path)
  if type(path) ~= "string" or path == "" or path:sub(1, 1) == "/" or path:find("[%z\n\r\\]") then return nil end
  for part in path:gmatch("[^/]*") do
    if part == "." or part == ".." then return nil end
  end
  if path:find("//") or path:sub(-1) == "/" then return nil end
  return path
end

-- Sizes -----------------------------------------------------------------------------------------
local units = { [""] = 1, B = 1, K = 1024, KB = 1000, KIB = 1024, M = 1024 ^ 2, MB = 1000 ^ 2,
  MIB = 1024 ^ 2, G = 1024 ^ 3, GB = 1000 ^ 3, GIB = 1024 ^ 3, T = 1024 ^ 4, TB = 1000 ^ 4, TIB = 1024 ^ 4 }

-- "500K", "20M", "1.5G", "669 MB", 1234 -> bytes (integer) or nil.
function util.parse_size(v)
  if math.type(v) == "integer" then return v >= 0 and v or nil end
  if type(v) == "number" then return v >= 0 and math.floor(v) or nil end
  if type(v) ~= "string" then return nil end
  local num, unit = v:match("^%s*(%d+%.?%d*)%s*(%a*)%s*$")
  local mult = unit and units[unit:upper()]
  if not num or not mult then return nil end
  return math.floor(tonumber(num) * mult + 0.5)
end

function util.human(bytes)
  if not bytes then return "?" end
  local names = { "B", "KB", "MB", "GB", "TB" }
  local v, i = bytes + 0.0, 1
  while v >= 1000 and i < #names do v = v / 1000; i = i + 1 end
  if i == 1 then return string.format("%d B", bytes) end
  return string.format(v >= 100 and "%.0f %s" or "%.1f %s", v, names[i])
end

function util.is_sha256(s) return type(s) == "string" and #s == 64 and s:match("^%x+$") ~= nil end

-- Files and JSON --------------------------------------------------------------------------------
function util.read_file(path)
  local f, err = io.open(path, "rb")
  if not f then return nil, err, "EIO" end
  local data, rerr = f:read("a")
  f:close()
  if not data then return nil, string.format("%s: %s", path, tostring(rerr):gsub("^.-: ", "")), "EIO" end
  return data
end

local cjson
local function json()
  if not cjson then
    cjson = require("cjson").new()
    cjson.encode_sparse_array(true)
  end
  return cjson
end

-- cjson gives every number as a float: a whole one is made an integer again (a size read back from a
-- manifest is 7746, as it was written, not 7746.0).
local function whole_numbers(v)
  for k, x in pairs(v) do
    if math.type(x) == "float" then
      local n = math.tointeger(x)
      if n then v[k] = n end
    elseif type(x) == "table" then
      whole_numbers(x)
    end
  end
  return v
end

function util.json_decode(text, source)
  local ok, v = pcall(json().decode, text)
  if not ok then
    return util.fail("EINPUT", "%s: not valid JSON: %s", source or "input", tostring(v):gsub("^.-: ", ""))
  end
  if type(v) == "table" then return whole_numbers(v) end
  return math.type(v) == "float" and math.tointeger(v) or v
end

-- JSON text; slashes left unescaped (cjson escapes every "/", and "\\" stays "\\\\", so
-- turning each "\\/" back into "/" is exact).
function util.json_encode(v) return (json().encode(v):gsub("\\/", "/")) end

-- The order of catalogs and installed lists: by framework, then id.
function util.by_framework_then_id(a, b)
  if a.framework ~= b.framework then return a.framework < b.framework end
  return a.id < b.id
end

-- Copies a file in chunks (import of local folders); returns bytes copied. stop(), when given, is
-- asked before each chunk (core.interrupted: a Ctrl-C ends a copy of many GB at once): true ends the
-- copy with EINTR. hasher (core.hasher()), when given, takes each chunk as it is written: the copy's
-- SHA-256 with no second read of it.
function util.copy_file(from, to, stop, hasher)
  local src, err = io.open(from, "rb")
  if not src then return util.fail("EIO", "%s", err) end
  local dst, derr = io.open(to, "wb")
  if not dst then src:close(); return util.fail("EIO", "%s", derr) end
  local total = 0
  while true do
    if stop and stop() then
      src:close(); dst:close()
      return util.fail("EINTR", "%s: copy interrupted", to)
    end
    local chunk = src:read(1 << 20)
    if not chunk then break end
    local ok, werr = dst:write(chunk)
    if not ok then
      src:close(); dst:close()
      return util.fail(werr:find("No space") and "ESPACE" or "EIO", "%s: %s", to, werr)
    end
    if hasher then hasher:update(chunk) end
    total = total + #chunk
  end
  src:close()
  local ok, cerr = dst:close()
  if not ok then return util.fail("EIO", "%s: %s", to, cerr) end
  return total
end

return util
