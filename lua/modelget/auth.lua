-- Credentials per origin: the Hub's token as "Authorization: Bearer", only to the Hub endpoint's scheme,
-- host and port; a Kaggle key as Basic, only to kaggle.com over https; for any other host, for a model
-- marked as needing a login, the one ~/.netrc gives for it by name (as curl, wget and aria2c read it),
-- as Basic, only to the URL's origin.
-- The engine drops the header on a redirect to any other origin (another host, port or scheme). No
-- message here ever holds a credential: they name the variable or file to set, never its content.
local util = require "modelget.util"
local hub = require "modelget.hub"

local auth = {}

-- env: a table of environment variables standing in for os.getenv (tests), or nil.
local function getenv(env, name)
  local v
  if env then v = env[name] else v = os.getenv(name) end
  if v == "" then return nil end
  return v
end

local function read_trimmed(path)
  local f = io.open(path, "rb")
  if not f then return nil end
  local s = f:read(64 * 1024) or ""
  f:close()
  s = s:match("^%s*(.-)%s*$")
  return s ~= "" and s or nil
end

local function home(env) return getenv(env, "HOME") or "~" end

-- Where the Hub token is looked for, in order, for messages.
function auth.hf_token_file(env)
  local explicit = getenv(env, "HF_TOKEN_PATH")
  if explicit then return explicit end
  local hf_home = getenv(env, "HF_HOME")
  if hf_home then return hf_home .. "/token" end
  local xdg = getenv(env, "XDG_CACHE_HOME")
  return (xdg or (home(env) .. "/.cache")) .. "/huggingface/token"
end

-- A token pasted across lines loses its line breaks (and any other control character), as
-- huggingface_hub reads it: it goes out as one header line, never as headers of its own.
function auth.hf_token(env)
  local token = getenv(env, "HF_TOKEN") or read_trimmed(auth.hf_token_file(env))
  token = token and token:gsub("%c", "")
  return token ~= "" and token or nil
end

function auth.kaggle_file(env)
  local dir = getenv(env, "KAGGLE_CONFIG_DIR")
  return (dir or (home(env) .. "/.kaggle")) .. "/kaggle.json"
end

-- username, key from KAGGLE_USERNAME/KAGGLE_KEY, else kaggle.json.
function auth.kaggle_key(env)
  local user, key = getenv(env, "KAGGLE_USERNAME"), getenv(env, "KAGGLE_KEY")
  if user and key then return user, key end
  local text = read_trimmed(auth.kaggle_file(env))
  if not text then return nil end
  local ok, doc = pcall(require("cjson").decode, text)
  if ok and type(doc) == "table" and type(doc.username) == "string" and type(doc.key) == "string" then
    return doc.username, doc.key
  end
  return nil
end

local B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
local function base64(s)
  return ((s:gsub(".", function(c)
    local b, bits = c:byte(), {}
    for i = 8, 1, -1 do bits[#bits + 1] = (b >> (i - 1)) & 1 end
    return table.concat(bits)
  end) .. "0000"):gsub("%d%d%d?%d?%d?%d?", function(x)
    if #x < 6 then return "" end
    return B64:sub(tonumber(x, 2) + 1, tonumber(x, 2) + 1)
  end) .. ({ "", "==", "=" })[#s % 3 + 1])
end
auth.base64 = base64

-- ~/.netrc (NETRC names another file): "machine HOST login NAME password SECRET" entries, as ftp,
-- curl, wget and aria2c read them; used for a model marked as needing a login. Tokens are separated
-- by white space; a token may be "quoted" (with \" and \\ inside); a macdef's lines, up to an empty
-- line, are passed over (a "macdef" where a value goes is a value).
function auth.netrc_file(env) return getenv(env, "NETRC") or (home(env) .. "/.netrc") end

-- The tokens of a netrc text, each {word, at}: at is where it starts.
local function netrc_tokens(text)
  local tokens, i, n = {}, 1, #text
  while true do
    i = text:find("%S", i)
    if not i then return tokens end
    local token, at = nil, i
    if text:sub(i, i) == '"' then
      local buf, j = {}, i + 1
      while j <= n and text:sub(j, j) ~= '"' do
        if text:sub(j, j) == "\\" and j < n then j = j + 1 end
        buf[#buf + 1] = text:sub(j, j)
        j = j + 1
      end
      token, i = table.concat(buf), j + 1
    else
      local _, e = text:find("^%S+", i)
      token, i = text:sub(i, e), e + 1
    end
    tokens[#tokens + 1] = { token, at }
  end
end

-- login, password that the netrc file gives for host (its first "machine" entry of that name, letter
-- case aside), or nil. A "default" entry is never used: it would send one password to every host a
-- model is pulled from. Read each time it is needed (only for models marked as needing a login): an
-- edit is seen at once.
function auth.netrc_login(host, env)
  local f = host and io.open(auth.netrc_file(env), "rb")
  if not f then return nil end
  local text = f:read(1024 * 1024) or ""
  f:close()
  local tokens, k, entry = netrc_tokens(text), 1, nil
  host = host:lower()
  while tokens[k] do
    local word, value = tokens[k][1], tokens[k + 1] and tokens[k + 1][1]
    if word == "machine" then
      if entry then break end
      if value and value:lower() == host then entry = {} end
      k = k + 2
    elseif word == "default" then
      if entry then break end
      k = k + 1
    elseif word == "login" or word == "password" or word == "account" then
      if entry and value then entry[word] = value end
      k = k + 2
    elseif word == "macdef" then -- a keyword here (not a value): its name, then its lines to an empty one
      local eol = text:find("\n", tokens[k][2])
      local blank = eol and text:find("\n[ \t]*\n", eol)
      if not blank then break end
      k = k + 1
      while tokens[k] and tokens[k][2] <= blank do k = k + 1 end
    else
      k = k + 1
    end
  end
  if entry and entry.login and entry.password then return entry.login, entry.password end
  return nil
end

local function is_kaggle(host)
  return host == "kaggle.com" or (host:sub(-11) == ".kaggle.com")
end

-- Which service a URL belongs to: "hf", "kaggle" or nil.
function auth.service(url, env)
  local u = util.parse_url(url)
  if not u then return nil end
  local scheme, host, port = util.origin(u)
  local hub_host, hub_port, hub_scheme = hub.host(env)
  if host == hub_host and port == hub_port and scheme == hub_scheme then return "hf", u end
  if u.scheme == "https" and is_kaggle(u.host) then return "kaggle", u end
  return nil, u
end

-- The credential to send with a request to url: {header=, scheme=, host=, port=} (the engine sends it
-- only while the request stays on that origin: a redirect to another host, port or scheme drops it),
-- or nil when none applies or none is set.
function auth.for_url(url, env, login)
  local service, u = auth.service(url, env)
  local header
  if service == "hf" then
    local token = auth.hf_token(env)
    if not token then return nil end
    header = "Authorization: Bearer " .. token
  elseif service == "kaggle" then
    local user, key = auth.kaggle_key(env)
    if not user then return nil end
    header = "Authorization: Basic " .. base64(user .. ":" .. key)
  else
    local user, password
    if login then user, password = auth.netrc_login(u and u.host, env) end
    if not user then return nil end
    header, service = "Authorization: Basic " .. base64(user .. ":" .. password), "netrc"
  end
  local scheme, host, port = util.origin(u)
  return { header = header, scheme = scheme, host = host, port = port, service = service }
end

-- How to provide the credential a service needs, for messages.
function auth.how(service, env)
  if service == "kaggle" then
    return "set KAGGLE_USERNAME and KAGGLE_KEY, or write " .. auth.kaggle_file(env)
        .. " (an API token from https://www.kaggle.com/settings)"
  end
  return "set HF_TOKEN, or write the token to " .. auth.hf_token_file(env)
      .. " (a read token from https://huggingface.co/settings/tokens; the model's license may need accepting first)"
end

-- The hint for a refusal that came from where, past a redirect from url to another origin: no
-- credential of ours goes there (the engine drops it), so neither the Hub's token nor url's login
-- is the matter. nil when where is url's origin.
local function redirected_hint(url, where, env, status)
  local u, w = util.parse_url(url or ""), util.parse_url(where or "")
  if not (u and w) then return nil end
  local us, uh, up = util.origin(u)
  local ws, wh, wp = util.origin(w)
  if us == ws and uh:lower() == wh:lower() and up == wp then return nil end
  -- One host's two ports are told apart by their ports.
  local same_host = uh:lower() == wh:lower()
  local from = string.format("%s, where %s redirected,", same_host and (wh .. ":" .. wp) or wh,
    same_host and (uh .. ":" .. up) or uh)
  if status == 403 then return string.format("%s refused access; no credential is sent past a redirect to another host", from) end
  -- A query may be a signature (a presigned URL): never shown.
  local shown = util.shown_url(where):gsub("[?#].*$", "")
  local said = string.format("%s asks for a login, and no login is sent past a redirect to another host: pull %s itself",
    from, shown)
  -- The Hub or Kaggle takes its own credential there, never a netrc login.
  local service = auth.service(where, env)
  if service then return string.format("%s, and %s", said, auth.how(service, env)) end
  return string.format("%s, with 'machine %s login NAME password SECRET' in %s and --auth", said, wh, auth.netrc_file(env))
end

-- What to tell a user whose request to url was refused (401/403), or nil when no credential of ours
-- applies to that host.
-- marked: the model is marked as needing a credential (entry.auth); status: the HTTP status refused;
-- where: the URL that refused, when a redirect led from url to it.
function auth.hint(url, env, marked, status, where)
  if where then
    local hint = redirected_hint(url, where, env, status)
    if hint then return hint end
  end
  local service, u = auth.service(url or "", env)
  if not service then
    -- Another host: its netrc login, for a model marked as needing one. A 403 is no login's matter.
    if not u or status == 403 then return nil end
    if marked and auth.netrc_login(u.host, env) then
      return string.format("the login %s gives for %s was refused: check it", auth.netrc_file(env), u.host)
    end
    return string.format("the server asks for a login: add 'machine %s login NAME password SECRET' to %s%s",
      u.host, auth.netrc_file(env), marked and "" or ", and pull with --auth (a recipe: auth = true)")
  end
  local have
  if service == "hf" then have = auth.hf_token(env) else have = auth.kaggle_key(env) end
  if have then
    return service == "hf" and "the token was refused: check it, and accept the model's license on its Hub page"
        or "the Kaggle key was refused: check it, and accept the model's terms on Kaggle"
  end
  return auth.how(service, env)
end

-- When the entry needs a credential (entry.auth) and none is set for its URL's service:
-- nil, "model 'x' needs …: set …", "EAUTH". Otherwise true.
function auth.require(entry, url, env)
  if not entry or not entry.auth then return true end
  -- The service whose credential would be sent: the URL's (a recipe's auth = "hf" on another host's
  -- URL asks for a token that would never go there: that host's own login is looked for instead).
  url = url or entry.url
  local service = url and auth.service(hub.rewrite(url, env) or url, env) or (entry.hub and "hf") or nil
  if entry.auth ~= true and entry.auth ~= service then service = nil end
  if service ~= "hf" and service ~= "kaggle" then return true end -- a credential we cannot supply
  local have
  if service == "hf" then have = auth.hf_token(env) else have = auth.kaggle_key(env) end
  if have then return true end
  local what = service == "hf" and "a Hugging Face token" or "a Kaggle API key"
  return util.fail("EAUTH", "model '%s' needs %s: %s", entry.id or "?", what, auth.how(service, env))
end

return auth
