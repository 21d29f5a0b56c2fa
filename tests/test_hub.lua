-- The Hub helpers (endpoint, resolve URLs, tree listings, include patterns) and credentials per host.
local t = require "t"
local hub = require "modelget.hub"
local auth = require "modelget.auth"

test("HF_ENDPOINT replaces https://huggingface.co, and only that host", function()
  local env = { HF_ENDPOINT = "https://127.0.0.1:8443/" }
  t.eq(hub.endpoint(env), "https://127.0.0.1:8443", "trailing slash dropped")
  t.eq(hub.rewrite("https://huggingface.co/org/m/resolve/main/x.gguf", env),
    "https://127.0.0.1:8443/org/m/resolve/main/x.gguf", "rewritten")
  t.eq(hub.rewrite("https://huggingface.co", env), "https://127.0.0.1:8443", "bare host")
  t.eq(hub.rewrite("https://huggingface.co.example.com/x", env), "https://huggingface.co.example.com/x", "another host")
  t.eq(hub.rewrite("https://cdn-lfs.huggingface.co/x", env), "https://cdn-lfs.huggingface.co/x", "a subdomain")
  t.eq(hub.rewrite("https://example.com/huggingface.co/x", env), "https://example.com/huggingface.co/x", "in a path")
  t.eq(hub.rewrite("https://huggingface.co/x", {}), "https://huggingface.co/x", "no endpoint: unchanged")
  t.eq(hub.tree_url("org/m", "main", env), "https://127.0.0.1:8443/api/models/org/m/tree/main?recursive=true", "tree")
  t.eq(hub.tree_url("org/m", "main", {}, "cpu and mobile/int4"),
    "https://huggingface.co/api/models/org/m/tree/main/cpu%20and%20mobile/int4?recursive=true", "one folder")
  t.eq(hub.tree_url("org/m", "refs/pr/1", {}), "https://huggingface.co/api/models/org/m/tree/refs%2Fpr%2F1?recursive=true",
    "revision encoded")
end)

test("hub.parse splits resolve URLs into repo, revision and path", function()
  local repo, rev, path = hub.parse("https://huggingface.co/TheBloke/M-GGUF/resolve/main/sub/m%20q4.gguf?download=true", {})
  t.eq(repo, "TheBloke/M-GGUF", "repo")
  t.eq(rev, "main", "revision")
  t.eq(path, "sub/m q4.gguf", "path decoded, query dropped")
  repo, rev, path = hub.parse("https://huggingface.co/gpt2/resolve/refs%2Fpr%2F3/vocab.json", {})
  t.eq(repo, "gpt2", "a one-word legacy repo")
  t.eq(rev, "refs/pr/3", "revision decoded")
  t.eq(path, "vocab.json", "path")
  t.eq(hub.parse("https://127.0.0.1:9/o/r/resolve/v1/a.onnx", { HF_ENDPOINT = "https://127.0.0.1:9" }), "o/r", "on the endpoint")
  t.eq(hub.parse("https://example.com/o/r/resolve/main/a", {}), nil, "not the Hub")
  t.eq(hub.parse("https://huggingface.co/o/r/blob/main/a", {}), nil, "a blob page is no resolve URL")
  t.eq(hub.resolve_url("o/r", "main", "dir/a b.json"), "https://huggingface.co/o/r/resolve/main/dir/a%20b.json", "resolve_url")
end)

test("include and exclude patterns: * and ? within a folder, ** across folders", function()
  local cases = {
    { "*.json", "config.json", true }, { "*.json", "sub/config.json", false }, { "**/*.json", "sub/config.json", true },
    { "**/*.json", "config.json", true }, { "X.mlpackage/**", "X.mlpackage/Data/com.apple.CoreML/model.mlmodel", true },
    { "X.mlpackage/**", "Y.mlpackage/Manifest.json", false }, { "model-?????-of-00002.safetensors",
      "model-00001-of-00002.safetensors", true }, { "?.bin", "ab.bin", false }, { "*", "a/b", false },
    { "tokenizer.json", "tokenizer.json", true }, { "tokenizer.json", "tokenizer_json", false },
    { "a*b*c", "aXXbYYc", true }, { "a*b*c", "aXXbYY", false }, { "sub/**/x", "sub/x", true }, { "sub/**/x", "sub/a/b/x", true },
    { "[x].json", "[x].json", true }, { "%d.json", "%d.json", true }, { "%d.json", "5.json", false },
  }
  for _, c in ipairs(cases) do
    t.eq(hub.glob_match(c[1], c[2]), c[3], c[1] .. " ~ " .. c[2])
  end
  t.eq(hub.matches("a.json", nil, nil), true, "no include: all")
  t.eq(hub.matches("a.json", { "*.json" }, { "a.*" }), false, "excluded")
  t.eq(hub.matches("b.json", { "*.json" }, { "a.*" }), true, "included")
end)

-- A listing as the Hub (and the fixture Hub) returns it.
local SHA_A = ("a"):rep(64)
local TREE = {
  { type = "directory", path = "onnx", oid = "d1", size = 0 },
  { type = "file", path = "README.md", oid = "0123456789abcdef0123456789abcdef01234567", size = 120 },
  { type = "file", path = "config.json", oid = "1123456789abcdef0123456789abcdef01234567", size = 600 },
  { type = "file", path = "model.safetensors", oid = "2123456789abcdef0123456789abcdef01234567", size = 134,
    lfs = { oid = SHA_A, size = 5000000, pointerSize = 134 } },
  { type = "file", path = "onnx/model.onnx", oid = "3123", size = 134, lfs = { oid = ("B"):rep(64), size = 700 } },
  { type = "file", path = "onnx/tokenizer.json", oid = "4123", size = 90 },
  { type = "file", path = "onnx/../../escape.json", oid = "5123", size = 1 },
}

test("a tree listing becomes the entry's files, with the Hub's LFS hashes", function()
  local files = assert(hub.select(TREE, { repo = "org/m", revision = "main", include = { "*.json", "*.safetensors" } }))
  t.eq(#files, 2, "config.json and model.safetensors")
  t.eq(files[1].path, "config.json", "sorted")
  t.eq(files[1].sha256, nil, "a plain git file states no SHA-256")
  t.eq(files[1].size, 600, "size")
  t.eq(files[1].url, "https://huggingface.co/org/m/resolve/main/config.json", "canonical URL")
  t.eq(files[2].sha256, SHA_A, "LFS oid")
  t.eq(files[2].size, 5000000, "LFS size, not the pointer's")
  local sub = assert(hub.select(TREE, { repo = "org/m", revision = "v2", dir = "onnx" }))
  t.eq(#sub, 2, "the folder's files, the escaping path dropped")
  t.eq(sub[1].path, "model.onnx", "relative to the folder")
  t.eq(sub[1].repo_path, "onnx/model.onnx", "repo path")
  t.eq(sub[1].url, "https://huggingface.co/org/m/resolve/v2/onnx/model.onnx", "URL in the repo")
  t.eq(sub[1].sha256, ("b"):rep(64), "hash lower-cased")
  local _, _, code = hub.select({ error = "Repository not found" }, { repo = "org/m" })
  t.eq(code, "EIO", "not a list")
end)

test("list_files asks the caller's fetch_json for the tree and passes its failure on", function()
  local asked
  local files = assert(hub.list_files({ id = "m", hub = { repo = "org/m", revision = "main", include = { "*.json" } } },
    function(url) asked = url return TREE end, { HF_ENDPOINT = "https://127.0.0.1:7" }))
  t.eq(asked, "https://127.0.0.1:7/api/models/org/m/tree/main?recursive=true", "tree URL on the endpoint")
  t.eq(#files, 1, "config.json")
  local none = assert(hub.list_files({ id = "m", hub = { repo = "org/m", include = { "*.gguf" } } }, function() return TREE end, {}))
  t.eq(#none, 0, "nothing matches: an empty list")
  local ok, msg, code = hub.list_files({ id = "m", hub = { repo = "org/m" } },
    function() return nil, "401 Unauthorized", "EAUTH" end, {})
  t.eq(ok, nil, "failed")
  t.eq(code, "EAUTH", "code passed on")
  t.eq(msg, "401 Unauthorized", "message passed on")
end)

test("a paged listing: every page is followed by its Link, and a page named twice is refused", function()
  local pages = {
    ["https://127.0.0.1:7/api/models/org/m/tree/main?recursive=true"] =
      { { { type = "file", path = "a.json", size = 1 } }, { link = '<https://127.0.0.1:7/p2>; rel="next"' } },
    ["https://127.0.0.1:7/p2"] =
      { { { type = "file", path = "b.json", size = 1 } }, { link = '<https://127.0.0.1:7/p0>; rel="prev", </p3>; rel=next' } },
    ["https://127.0.0.1:7/p3"] = { { { type = "file", path = "c.json", size = 1 } }, {} },
  }
  local asked = {}
  local env = { HF_ENDPOINT = "https://127.0.0.1:7" }
  local files = assert(hub.list_files({ id = "m", hub = { repo = "org/m", revision = "main" } },
    function(url) asked[#asked + 1] = url; return table.unpack(pages[url]) end, env))
  t.eq(#asked, 3, "three pages asked for")
  t.eq(asked[3], "https://127.0.0.1:7/p3", "a relative Link is on the endpoint")
  local paths = {}
  for _, f in ipairs(files) do paths[#paths + 1] = f.path end
  t.eq(table.concat(paths, ","), "a.json,b.json,c.json", "the files of every page")
  pages["https://127.0.0.1:7/p3"][2] = { link = '<https://127.0.0.1:7/p2>; rel="next"' }
  local ok, msg, code = hub.list_files({ id = "m", hub = { repo = "org/m", revision = "main" } },
    function(url) return table.unpack(pages[url]) end, env)
  t.eq(ok, nil, "a loop of pages fails")
  t.eq(code, "EIO", "code")
  t.match(msg, "names a page it already gave", "message")
  -- Pages that overlap (the listing changed between them) give each path once.
  pages["https://127.0.0.1:7/p3"] = { { { type = "file", path = "b.json", size = 1 }, { type = "file", path = "c.json", size = 1 } }, {} }
  local again = assert(hub.list_files({ id = "m", hub = { repo = "org/m", revision = "main" } },
    function(url) return table.unpack(pages[url]) end, env))
  t.eq(#again, 3, "b.json once")
  -- A later page that is not a list fails the listing: the pages before it are not silently all.
  pages["https://127.0.0.1:7/p3"] = { { error = "Internal" }, {} }
  local bad, bmsg, bcode = hub.list_files({ id = "m", hub = { repo = "org/m", revision = "main" } },
    function(url) return table.unpack(pages[url]) end, env)
  t.eq(bad, nil, "a later page that is not a list fails")
  t.eq(bcode, "EIO", "its code")
  t.match(bmsg, "page 3 %(https://127%.0%.0%.1:7/p3%) is not a list of files", "its message")
  t.eq(hub.next_link('<https://x/1>; rel="prev"'), nil, "no next")
  t.eq(hub.next_link(nil), nil, "no header")
end)

test("the Hub token goes to the Hub's host only", function()
  local env = { HF_TOKEN = "hf_SECRET" }
  local a = auth.for_url("https://huggingface.co/org/m/resolve/main/x.gguf", env)
  t.eq(a.header, "Authorization: Bearer hf_SECRET", "header")
  t.eq(a.host, "huggingface.co", "host")
  t.eq(a.port, 443, "port")
  t.eq(a.scheme, "https", "scheme")
  for _, url in ipairs({ "https://cdn-lfs.huggingface.co/x", "https://example.com/x", "https://huggingface.co.evil.com/x",
      "http://huggingface.co/x", "https://huggingface.co:8443/x" }) do
    t.eq(auth.for_url(url, env), nil, "no token to " .. url)
  end
  env.HF_ENDPOINT = "https://127.0.0.1:8443"
  a = auth.for_url("https://127.0.0.1:8443/api/models/o/r/tree/main", env)
  t.eq(a.host, "127.0.0.1", "the endpoint's host")
  t.eq(a.port, 8443, "the endpoint's port")
  t.eq(auth.for_url("https://localhost:8443/cdn/abc", env), nil, "not to another host name of the same machine")
  t.eq(auth.for_url("https://127.0.0.1:9443/x", env), nil, "not to another port")
  t.eq(auth.for_url("http://127.0.0.1:8443/x", env), nil, "not over plain http:// to the same host and port")
  t.eq(auth.for_url("https://huggingface.co/x", env), nil, "not to the Hub itself when another endpoint is set")
  t.eq(auth.for_url("https://huggingface.co/x", {}), nil, "no token set: nothing")
end)

test("the Hub token file: HF_TOKEN_PATH, $HF_HOME/token, else ~/.cache/huggingface/token", function()
  local home = t.tmpdir("home")
  t.write(home .. "/.cache/huggingface/token", "hf_from_home\n")
  t.eq(auth.for_url("https://huggingface.co/x", { HOME = home }).header, "Authorization: Bearer hf_from_home", "default file")
  local hf_home = t.tmpdir("hfhome")
  t.write(hf_home .. "/token", "  hf_from_hf_home  \n")
  t.eq(auth.for_url("https://huggingface.co/x", { HOME = home, HF_HOME = hf_home }).header,
    "Authorization: Bearer hf_from_hf_home", "$HF_HOME/token, trimmed")
  t.eq(auth.for_url("https://huggingface.co/x", { HOME = home, HF_HOME = hf_home, HF_TOKEN = "hf_env" }).header,
    "Authorization: Bearer hf_env", "HF_TOKEN first")
  local path = t.write(t.tmpdir("tp") .. "/tok", "hf_path")
  t.eq(auth.for_url("https://huggingface.co/x", { HOME = home, HF_TOKEN_PATH = path }).header,
    "Authorization: Bearer hf_path", "HF_TOKEN_PATH")
  t.write(path, "hf_pa\r\nsted\n")
  t.eq(auth.for_url("https://huggingface.co/x", { HOME = home, HF_TOKEN_PATH = path }).header,
    "Authorization: Bearer hf_pasted", "a token pasted across lines: one header line")
  t.eq(auth.for_url("https://huggingface.co/x", { HOME = t.tmpdir("nohome") }), nil, "no file, no token")
end)

test("a Kaggle key goes to kaggle.com only, as Basic", function()
  local env = { KAGGLE_USERNAME = "alice", KAGGLE_KEY = "k3y" }
  local a = auth.for_url("https://www.kaggle.com/api/v1/models/x/download", env)
  t.eq(a.header, "Authorization: Basic YWxpY2U6azN5", "base64 of alice:k3y")
  t.eq(a.host, "www.kaggle.com", "host")
  t.eq(auth.for_url("https://kaggle.com/x", env).host, "kaggle.com", "bare domain")
  t.eq(auth.for_url("https://storage.googleapis.com/kaggle-models/x", env), nil, "not to the storage it redirects to")
  t.eq(auth.for_url("https://notkaggle.com/x", env), nil, "not to a look-alike")
  t.eq(auth.for_url("https://huggingface.co/x", env), nil, "not to the Hub")
  local home = t.tmpdir("khome")
  t.write(home .. "/.kaggle/kaggle.json", '{"username":"bob","key":"0123"}')
  t.eq(auth.for_url("https://www.kaggle.com/x", { HOME = home }).header, "Authorization: Basic " .. auth.base64("bob:0123"),
    "kaggle.json")
  t.eq(auth.base64(""), "", "base64 empty")
  t.eq(auth.base64("a"), "YQ==", "base64 one byte")
  t.eq(auth.base64("ab"), "YWI=", "base64 two bytes")
end)

test("netrc: a machine's login, quoted values, macros passed over, a value that is a keyword's word", function()
  local file = t.write(t.tmpdir("netrc") .. "/netrc", 'machine a.example login eve password "two words"\n'
    .. 'macdef init\nmachine b.example login mallory password macro\n\n'
    .. 'machine b.example login bob password macdef\nmachine c.example login carol password pw\n'
    .. 'default login any password thing\n')
  local env = { NETRC = file }
  t.eq(table.concat({ auth.netrc_login("A.example", env) }, " "), "eve two words", "quoted, letter case aside")
  t.eq(table.concat({ auth.netrc_login("b.example", env) }, " "), "bob macdef", "the macro's lines are passed over; a value may be 'macdef'")
  t.eq(table.concat({ auth.netrc_login("c.example", env) }, " "), "carol pw", "the entry after it")
  t.eq(auth.netrc_login("other.example", env), nil, "no 'default' for another host")
  t.eq(auth.for_url("https://c.example/m.bin", env), nil, "sent only for a model marked as needing a login")
  t.eq(auth.for_url("https://c.example/m.bin", env, true).header, "Authorization: Basic " .. auth.base64("carol:pw"),
    "as Basic when marked")
end)

test("auth.require names what to set, and never the credential", function()
  local home = t.tmpdir("home")
  local entry = { id = "gated", auth = "hf", url = "https://huggingface.co/meta-llama/L/resolve/main/m.safetensors" }
  local ok, msg, code = auth.require(entry, entry.url, { HOME = home })
  t.eq(ok, nil, "refused without a token")
  t.eq(code, "EAUTH", "code")
  t.match(msg, "^model 'gated' needs a Hugging Face token: set HF_TOKEN, or write the token to "
    .. home:gsub("%p", "%%%0") .. "/%.cache/huggingface/token", "message")
  t.eq(auth.require(entry, entry.url, { HOME = home, HF_TOKEN = "hf_SECRET" }), true, "with a token")
  t.eq(auth.require({ id = "open" }, "https://huggingface.co/x", {}), true, "an open model needs nothing")
  -- A token is only ever sent to the Hub: "hf" on another host's URL asks for none.
  t.eq(auth.require({ id = "elsewhere", auth = "hf", url = "https://example.com/m.gguf" }, nil, { HOME = home }), true,
    "auth = \"hf\" on another host")
  ok, _, code = auth.require(entry, entry.url, { HOME = home, HF_ENDPOINT = "https://hf-mirror.example" })
  t.eq(code, "EAUTH", "a Hub URL under a mirror endpoint still needs the token")
  ok, msg, code = auth.require({ id = "k", auth = true }, "https://www.kaggle.com/m", { HOME = home })
  t.eq(code, "EAUTH", "kaggle code")
  t.match(msg, "needs a Kaggle API key: set KAGGLE_USERNAME and KAGGLE_KEY, or write .*/%.kaggle/kaggle%.json", "kaggle")
  local hint = auth.hint("https://huggingface.co/x", { HF_TOKEN = "hf_SECRET" })
  t.match(hint, "token was refused", "hint with a token")
  t.nomatch(hint, "SECRET", "no credential in the hint")
  t.match(auth.hint("https://huggingface.co/x", { HOME = home }), "set HF_TOKEN", "hint without")
  t.match(auth.hint("https://example.com/x", { HF_TOKEN = "x" }, true),
    "^the server asks for a login: add 'machine example%.com login NAME password SECRET' to ~/%.netrc$",
    "another host: no word of the Hub token, the netrc line to add")
  t.match(auth.hint("https://example.com/x", {}), ", and pull with %-%-auth %(a recipe: auth = true%)$",
    "a model not marked as needing a login: how to mark it")
  t.eq(auth.hint("https://example.com/x", {}, true, 403), nil, "a 403 is no login's matter")
  -- Past a redirect to the Hub or Kaggle: that service's credential, never a netrc line (the Hub and
  -- Kaggle take none); one host's two ports are told apart by their ports.
  local henv = { HOME = home, HF_ENDPOINT = "http://127.0.0.1:18432" }
  local past = auth.hint("http://127.0.0.1:18431/r", henv, nil, 401, "http://127.0.0.1:18432/org/m/resolve/main/m.gguf?sig=S")
  t.match(past, "^127%.0%.0%.1:18432, where 127%.0%.0%.1:18431 redirected, asks for a login", "the ports named")
  t.match(past, "pull http://127%.0%.0%.1:18432/org/m/resolve/main/m%.gguf itself, and set HF_TOKEN", "the Hub's token")
  t.nomatch(past, "netrc", "no netrc line for the Hub")
  past = auth.hint("https://example.com/m", { HOME = home }, nil, 401, "https://www.kaggle.com/api/v1/m/download")
  t.match(past, "^www%.kaggle%.com, where example%.com redirected, .* itself, and set KAGGLE_USERNAME", "Kaggle's key")
  t.nomatch(past, "netrc", "no netrc line for Kaggle")
end)
