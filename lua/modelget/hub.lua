-- The Hugging Face Hub: which endpoint (HF_ENDPOINT), resolve URLs, repo tree listings filtered by
-- include/exclude patterns, and the LFS hashes the Hub states for the files it lists.
local util = require "modelget.util"

local hub = {}

hub.DEFAULT = "https://huggingface.co"

local function getenv(env, name)
  if env then return env[name] end
  return os.getenv(name)
end

-- The Hub's base URL: $HF_ENDPOINT (a mirror, or a test hub) without a trailing slash, else the Hub.
function hub.endpoint(env)
  local e = getenv(env, "HF_ENDPOINT")
  if e and e ~= "" then return (e:gsub("/+$", "")) end
  return hub.DEFAULT
end

-- Rewrites https://huggingface.co in a URL to the endpoint (only that exact host, at a path boundary).
function hub.rewrite(url, env)
  local ep = hub.endpoint(env)
  if ep == hub.DEFAULT or type(url) ~= "string" then return url end
  local n = #hub.DEFAULT
  if url:sub(1, n) == hub.DEFAULT and (#url == n or url:sub(n + 1, n + 1):match("[/?#]")) then
    return ep .. url:sub(n + 1)
  end
  return url
end

-- The host (lower-case, no port), port and scheme of the Hub endpoint: credentials go there only.
function hub.host(env)
  local u = util.parse_url(hub.endpoint(env))
  if not u then return nil end
  local scheme, host, port = util.origin(u)
  return host, port, scheme
end

local function encode_segment(s)
  return (s:gsub("[^%w%-%._~]", function(c) return string.format("%%%02X", c:byte()) end))
end

local function encode_path(p)
  return (p:gsub("[^/]+", encode_segment))
end

-- Canonical resolve URL (https://huggingface.co/…): recipes keep these; hub.rewrite applies the endpoint
-- when downloading.
function hub.resolve_url(repo, revision, path)
  return string.format("%s/%s/resolve/%s/%s", hub.DEFAULT, repo, encode_segment(revision or "main"), encode_path(path))
end

-- repo, revision, path of a resolve URL on the Hub or the endpoint (nil otherwise). Repos are "owner/name"
-- or a legacy one-word name ("gpt2").
function hub.parse(url, env)
  if type(url) ~= "string" then return nil end
  local rest
  for _, base in ipairs({ hub.DEFAULT, hub.endpoint(env) }) do
    if url:sub(1, #base + 1) == base .. "/" then rest = url:sub(#base + 2) break end
  end
  if not rest then return nil end
  rest = rest:gsub("[?#].*$", "")
  local repo, revision, path = rest:match("^([^/]+/[^/]+)/resolve/([^/]+)/(.+)$")
  if not repo then repo, revision, path = rest:match("^([^/]+)/resolve/([^/]+)/(.+)$") end
  if not repo then return nil end
  return repo, util.url_decode(revision), util.url_decode(path)
end

-- The tree listing of a repo at a revision (or of one folder of it), every folder deep. Listed paths
-- are the repo's full paths either way.
function hub.tree_url(repo, revision, env, dir)
  return string.format("%s/api/models/%s/tree/%s%s?recursive=true", hub.endpoint(env), repo,
    encode_segment(revision or "main"), dir and ("/" .. encode_path(dir)) or "")
end

-- Glob patterns on repo paths: "*" and "?" stay within one folder, "**" crosses folders and "**/"
-- also matches no folder at all. So "*.json" means the top folder's JSON files, "**/*.json" all of them.
local function glob_at(g, gi, p, pi)
  while gi <= #g do
    if g:sub(gi, gi + 2) == "**/" then
      if glob_at(g, gi + 3, p, pi) then return true end
      for k = pi, #p do
        if p:sub(k, k) == "/" and glob_at(g, gi + 3, p, k + 1) then return true end
      end
      return false
    elseif g:sub(gi, gi + 1) == "**" then
      for k = pi, #p + 1 do
        if glob_at(g, gi + 2, p, k) then return true end
      end
      return false
    end
    local c = g:sub(gi, gi)
    if c == "*" then
      for k = pi, #p + 1 do
        if glob_at(g, gi + 1, p, k) then return true end
        if p:sub(k, k) == "/" then return false end
      end
      return false
    elseif c == "?" then
      local pc = p:sub(pi, pi)
      if pc == "" or pc == "/" then return false end
    elseif c ~= p:sub(pi, pi) then
      return false
    end
    gi, pi = gi + 1, pi + 1
  end
  return pi > #p
end

local function glob_match(glob, path) return glob_at(glob, 1, path, 1) end
hub.glob_match = glob_match

-- Does a path pass the include (nil: everything) and exclude lists?
function hub.matches(path, include, exclude)
  local ok = include == nil or #include == 0
  for _, g in ipairs(include or {}) do
    if glob_match(g, path) then ok = true break end
  end
  if not ok then return false end
  for _, g in ipairs(exclude or {}) do
    if glob_match(g, path) then return false end
  end
  return true
end

-- Turns a decoded tree listing into the files an entry wants:
-- {{path= (in the model folder: relative to hub.dir), repo_path= (in the repo), size=, sha256=, url=}…},
-- sorted by path.
-- The Hub lists LFS files with lfs.oid = their SHA-256; for plain git files the oid is a git blob
-- hash, which is no SHA-256, so those carry no stated hash.
function hub.select(tree, spec)
  if type(tree) ~= "table" or (tree[1] == nil and next(tree) ~= nil) then
    return util.fail("EIO", "the Hub's file listing of %s is not a list", spec.repo)
  end
  local prefix = spec.dir and (spec.dir:gsub("/+$", "") .. "/") or ""
  local files = {}
  for _, item in ipairs(tree) do
    if type(item) == "table" and item.type == "file" and type(item.path) == "string"
        and item.path:sub(1, #prefix) == prefix then
      local name = item.path:sub(#prefix + 1)
      if hub.matches(name, spec.include, spec.exclude) and util.safe_relpath(name) then
        local lfs = type(item.lfs) == "table" and item.lfs or nil
        local sha = lfs and type(lfs.oid) == "string" and lfs.oid:lower() or nil
        files[#files + 1] = {
          path = name, repo_path = item.path,
          size = math.tointeger(lfs and lfs.size or item.size),
          sha256 = util.is_sha256(sha) and sha or nil,
          url = hub.resolve_url(spec.repo, spec.revision, item.path),
        }
      end
    end
  end
  table.sort(files, function(a, b) return a.path < b.path end)
  return files
end

-- The URL a Link header names as rel="next", or nil.
function hub.next_link(link)
  if type(link) ~= "string" then return nil end
  for target, params in link:gmatch("<([^>]*)>([^,]*)") do
    for rel in params:gmatch('[Rr][Ee][Ll]%s*=%s*"?([^";]+)"?') do
      for word in rel:gmatch("%S+") do
        if word:lower() == "next" then return target end
      end
    end
  end
  return nil
end

local MAX_PAGES = 1000

-- Lists an entry's Hub files (possibly none: the caller says what that means). fetch_json(url) ->
-- decoded, headers | nil, msg, code is the caller's (the pull pipeline uses the engine's memory
-- transfers, with the Hub token). A big repo's listing comes in pages: every one is followed (Link:
-- rel="next"), so no file is silently missing from a snapshot.
function hub.list_files(entry, fetch_json, env)
  local spec = entry.hub
  local url = hub.tree_url(spec.repo, spec.revision, env, spec.dir)
  local all, seen, seen_paths = {}, {}, {}
  for n = 1, MAX_PAGES do
    seen[url] = true
    local page, headers_or_err, code = fetch_json(url)
    if not page then return nil, headers_or_err, code end
    if type(page) ~= "table" or (page[1] == nil and next(page) ~= nil) then
      -- Not a list of files: the first page says why (hub.select names it); a later one would
      -- otherwise drop the pages before it.
      if n == 1 then return hub.select(page, spec) end
      return util.fail("EIO", "the Hub's file listing of %s: page %d (%s) is not a list of files", spec.repo, n, url)
    end
    for _, item in ipairs(page) do
      -- Pages that overlap (the listing changed between them) give a path once.
      local key = type(item) == "table" and item.path
      if not key or not seen_paths[key] then
        if key then seen_paths[key] = true end
        all[#all + 1] = item
      end
    end
    local nxt = hub.next_link(type(headers_or_err) == "table" and headers_or_err.link or nil)
    if not nxt then return hub.select(all, spec) end
    if nxt:sub(1, 1) == "/" then nxt = hub.endpoint(env) .. nxt end
    url = hub.rewrite(nxt, env)
    if seen[url] then
      return util.fail("EIO", "the Hub's file listing of %s names a page it already gave (%s)", spec.repo, url)
    end
  end
  return util.fail("EIO", "the Hub's file listing of %s goes on for more than %d pages", spec.repo, MAX_PAGES)
end

return hub
