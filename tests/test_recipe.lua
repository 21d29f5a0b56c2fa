-- The recipe language and its sandbox, the catalog's sources and search, and the built-in catalog.
local t = require "t"
local registry = require "modelget.registry"
local recipe = require "modelget.recipe"

-- Loads only the recipe files written here (no built-in registry, no environment).
local function load_dir(files, opts)
  local dir = t.tmpdir("recipes")
  for name, src in pairs(files) do t.write(dir .. "/" .. name, src) end
  opts = opts or {}
  local cat, problems = registry.load { builtin_dir = dir, env = opts.env or {}, store = opts.store, paths = opts.paths }
  return cat, problems, dir
end

local function find(problems, pattern)
  for _, p in ipairs(problems) do
    if p:find(pattern) then return p end
  end
  error("no problem matches " .. pattern .. "; problems:\n  " .. table.concat(problems, "\n  "), 2)
end

local GOOD = [[
framework "llamacpp"
model "good-one" {
  name = "Good One",
  url  = hf "org/repo" "good.gguf",
  size = "669 MB", tags = { "chat", "small" },
}
]]

test("the built-in catalog loads without problems and has every model of the guide", function()
  local cat, problems = registry.load { env = {} }
  t.eq(#problems, 0, "problems: " .. table.concat(problems, "; "))
  local guide = { "phi-3-mini-onnx", "tinyllama-1.1b-gguf", "phi-3-mini-gguf", "llama-3.2-3b-gguf", "mistral-7b-gguf",
    "gpt2-tokenizer", "bert-tokenizer" }
  for _, id in ipairs(guide) do t.ok(cat:get(id), "catalog has " .. id) end
  local per = {}
  for _, e in ipairs(cat:entries()) do
    per[e.framework] = (per[e.framework] or 0) + 1
    local urls = { e.url }
    for _, f in ipairs(e.files) do urls[#urls + 1] = f.url end
    for _, u in ipairs(urls) do t.match(u, "^https://", e.id .. " URL") end
    t.ok(e.url or e.hub or #e.files > 0, e.id .. " has something to download")
    t.match(e.source, "registry/%w+%.lua:%d+$", e.id .. " source")
  end
  for _, fw in ipairs({ "coreml", "mlx", "tflite", "onnx" }) do t.ok((per[fw] or 0) >= 2, "two or more " .. fw .. " models") end
  t.ok(per.llamacpp >= 6, "GGUF models beyond the guide's")
  local phi = cat:get("phi-3-mini-onnx")
  t.eq(phi.hub.repo, "microsoft/Phi-3-mini-4k-instruct-onnx", "Phi-3 ONNX repo")
  t.eq(cat:get("tinyllama-1.1b-gguf").url,
    "https://huggingface.co/TheBloke/TinyLlama-1.1B-Chat-v1.0-GGUF/resolve/main/tinyllama-1.1b-chat-v1.0.Q4_K_M.gguf", "url")
  local gpt2 = cat:get("gpt2-tokenizer")
  t.eq(#gpt2.files, 3, "GPT-2 tokenizer files")
  t.eq(gpt2.files[3].url, "https://huggingface.co/openai-community/gpt2/resolve/main/merges.txt", "merges.txt")
  t.eq(cat:get("llama-3.2-1b-instruct-meta").auth, "hf", "Meta's original weights are gated")
  for _, e in ipairs(cat:entries("mlx")) do t.ok(e.hub, e.id .. " is a Hub repo") end
end)

test("the example recipe file loads cleanly, one model per framework and more", function()
  local entries, problems = recipe.load_file(t.root .. "/scripts/custom_recipe.lua")
  t.eq(#problems, 0, "problems: " .. table.concat(problems, "; "))
  local fws = {}
  for _, e in ipairs(entries) do fws[e.framework] = true end
  for _, fw in ipairs({ "llamacpp", "onnx", "mlx", "coreml", "tflite" }) do t.ok(fws[fw], "an example for " .. fw) end
  t.ok(#entries >= 7, "a loop declares several")
end)

test("a recipe reaching for os is refused with file:line, the other files still load", function()
  local cat, problems = load_dir {
    ["a.lua"] = GOOD,
    ["b.lua"] = 'framework "onnx"\nmodel "b1" { url = "https://h.example/b.onnx" }\nos.execute("touch /tmp/pwned")\n',
  }
  t.eq(#problems, 1, "one problem")
  t.match(problems[1], "/b%.lua:3: 'os' is not available in recipes$", "message")
  t.ok(cat:get("good-one"), "the other file loaded")
  t.eq(cat:get("b1"), nil, "a file that fails contributes nothing")
end)

test("a syntax error is named with its line, the rest loads", function()
  local cat, problems = load_dir { ["a.lua"] = GOOD, ["broken.lua"] = 'model "x" {\n  url = "https://h/x.gguf"\n  size = 1\n}\n' }
  t.eq(#problems, 1, "one problem")
  t.match(problems[1], "/broken%.lua:3: '}' expected %(to close '{' at line 1%)", "message")
  t.ok(cat:get("good-one"), "the rest loaded")
end)

test("every name outside the recipe language is unavailable", function()
  for _, name in ipairs({ "require", "io", "load", "loadfile", "dofile", "debug", "rawset", "setmetatable",
      "getmetatable", "collectgarbage", "pcall", "package", "_G", "print", "coroutine" }) do
    local _, problems = recipe.load_string("local x = 1\nlocal f = " .. name .. "\n", "r/" .. name .. ".lua")
    t.eq(problems[1], ("r/%s.lua:2: '%s' is not available in recipes"):format(name, name), name)
  end
  -- the pure helpers are there
  local entries, problems = recipe.load_string([[
    local ids = {}
    for i, size in ipairs({ "1 MB", "2 MB" }) do
      model (string.format("m%d", i)) { framework = "other", url = "https://h/" .. i, size = size, tags = { table.concat({ "a", "b" }, "-") } }
    end
  ]], "r/helpers.lua")
  t.eq(#problems, 0, "no problems: " .. table.concat(problems, "; "))
  t.eq(#entries, 2, "two models from a loop")
  t.eq(entries[2].tags[1], "a-b", "table.concat works")
end)

test("a recipe cannot change the libraries, nor see another file's globals", function()
  local cat, problems = load_dir {
    ["a.lua"] = 'table.concat = nil\n',
    ["b.lua"] = 'my_default = "other"\nmodel "b1" { framework = my_default, url = "https://h/b" }\n',
    ["c.lua"] = 'local v = my_default\n',
  }
  t.eq(table.concat({ "a", "b" }), "ab", "table.concat still there")
  t.match(find(problems, "a%.lua"), "a%.lua:1: 'table%.concat' cannot be changed in recipes$", "libraries are read-only")
  t.eq(cat:get("b1").framework, "other", "a file's own globals work")
  t.match(find(problems, "c%.lua"), "c%.lua:1: 'my_default' is not available in recipes$", "globals stay in their file")
  local _, sproblems = recipe.load_string('string.format = nil\n', "r/s.lua")
  t.match(sproblems[1], "^r/s%.lua:1: 'string%.format' cannot be changed", "string too")
  t.eq(("%d"):format(7), "7", "string methods still there")
end)

test("an id defined twice is an error naming both files and lines", function()
  local _, problems, dir = load_dir {
    ["a.lua"] = GOOD,
    ["b.lua"] = '\n\nmodel "good-one" { framework = "llamacpp", url = "https://h/other.gguf" }\n',
  }
  t.eq(#problems, 1, "one problem")
  t.eq(problems[1], dir .. "/b.lua:3: model 'good-one' is already defined at " .. dir .. "/a.lua:2", "message")
end)

test("a runaway recipe is stopped, by instructions or by memory", function()
  local _, problems = recipe.load_string('model "a" { framework = "other", url = "https://h/a" }\nwhile true do end\n', "r/loop.lua")
  t.match(problems[1], "^r/loop%.lua:2: recipe runs too long", "loop")
  _, problems = recipe.load_string('local s = "x"\nwhile true do s = s .. s end\n', "r/grow.lua")
  t.match(problems[1], "^r/grow%.lua:2: recipe uses too much memory", "memory")
  -- Stopped inside a function of the recipes' own string view: still the recipe's line.
  _, problems = recipe.load_string('local t = {}\nfor i = 1, 1e9 do\n  t[i] = ("x"):rep(3) .. i\nend\n', "r/busy.lua")
  t.match(problems[1], "^r/busy%.lua:3: recipe runs too long", "the recipe's line, not modelget's")
  _, problems = recipe.load_string('local s = ("x"):rep(1 << 40)\n', "r/rep.lua")
  t.match(problems[1], "^r/rep%.lua:1: string%.rep: result too large", "rep through the string metatable")
  -- C functions the count hook cannot interrupt: their inputs are bounded.
  _, problems = recipe.load_string('local s = ("a"):rep(200)\nlocal x = s:find(("a*"):rep(6) .. "b")\n', "r/regex.lua")
  t.match(problems[1], "^r/regex%.lua:2: string%.find: a pattern over", "a backtracking pattern")
  _, problems = recipe.load_string('table.move({}, 1, 1 << 40, 1, {})\n', "r/move.lua")
  t.match(problems[1], "^r/move%.lua:1: table%.move: more than", "a huge table.move")
  _, problems = recipe.load_string('local big, list = ("x"):rep(1 << 20), {}\nfor i = 1, 200 do list[i] = big end\n'
    .. 'local all = table.concat(list)\n', "r/concat.lua")
  t.match(problems[1], "^r/concat%.lua:3: table%.concat: result too large", "a huge table.concat")
  -- gsub's replacements and string.format's arguments multiply what they are given.
  local before = collectgarbage("count")
  _, problems = recipe.load_string('local s, r = ("x"):rep(1024), ("y"):rep(1 << 20)\nlocal a = s:gsub("x", r)\n', "r/gsub.lua")
  t.match(problems[1], "^r/gsub%.lua:2: string%.gsub: result too large", "a replacement string times each match")
  _, problems = recipe.load_string('local s, r = ("x"):rep(1024), ("y"):rep(1 << 20)\nreturn s:gsub("x", r)\n', "r/gsubtail.lua")
  -- (a tail call leaves no line of the recipe's to name: the file is)
  t.match(problems[1], "^r/gsubtail%.lua:.-string%.gsub: result too large", "tail-called by the main chunk too")
  _, problems = recipe.load_string('return ("a"):rep(200):find(("a*"):rep(6) .. "b")\n', "r/findtail.lua")
  t.match(problems[1], "^r/findtail%.lua:.-string%.find: a pattern over", "a pattern tail-called by the main chunk")
  _, problems = recipe.load_string('local s, r = ("x"):rep(1024), ("y"):rep(1 << 20)\n'
    .. 'local a = s:gsub("x", function() return r end)\n', "r/gsubf.lua")
  t.match(problems[1], "^r/gsubf%.lua:2: string%.gsub: result too large", "what a function gives, counted")
  _, problems = recipe.load_string('local r = ("y"):rep(1 << 20)\nlocal a = ("x"):rep(1000):gsub(".", { x = r })\n', "r/gsubt.lua")
  t.match(problems[1], "^r/gsubt%.lua:2: string%.gsub: result too large", "what a table gives, counted")
  _, problems = recipe.load_string('local r, t = ("y"):rep(1 << 20), {}\nfor i = 1, 100 do t[i] = r end\n'
    .. 'local a = string.format(("%s"):rep(100), table.unpack(t))\n', "r/format.lua")
  t.match(problems[1], "^r/format%.lua:3: string%.format: result too large", "format's arguments")
  t.ok(collectgarbage("count") - before < 64 * 1024, "stopped before the memory was taken")
  local entries
  entries, problems = recipe.load_string('local q = ("Q4_K_M"):gsub("_", "-")\n'
    .. 'local v = ("v%d"):format(2) .. ("a.b"):gsub("%.", { ["."] = "-" }) .. ("x"):gsub("x", function(c) return c:upper() end)\n'
    .. 'model ("m-" .. q:lower() .. "-" .. v) { framework = "other", url = "https://h/" .. table.concat({ "a", "b" }, "/") }\n', "r/ok.lua")
  t.eq(#problems, 0, "ordinary string and table use still works: " .. table.concat(problems, "; "))
  t.eq(entries[1].id, "m-q4-k-m-v2a-bX", "the id built with gsub and format")
  t.eq(("ab"):rep(3), "ababab", "the program's string.rep is back")
  t.eq(debug.gethook(), nil, "no hook left behind")
end)

test("field checks name the file, line, model and field", function()
  local cases = {
    { 'model "m" { framework = "llamacpp", url = "http://example.com/m.gguf" }',
      "field 'url': must be https:// %(or http:// to a loopback host%), got \"http://example.com/m.gguf\"" },
    { 'model "m" { framework = "llamacpp", url = "https://h/m.gguf", sha256 = "abc" }',
      "field 'sha256': expected 64 hex digits, got \"abc\"" },
    { 'model "m" { framework = "tensorflow", url = "https://h/m.gguf" }', "field 'framework': unknown 'tensorflow'" },
    { 'model "m" { url = "https://h/m.bin" }', "field 'framework': missing, and the file name does not imply one" },
    { 'model "m" { framework = "llamacpp", url = "https://h/m.gguf", colour = "red" }', "field 'colour': unknown field" },
    { 'model "m" { framework = "llamacpp", url = "https://h/m.gguf", size = "big" }',
      "field 'size': expected bytes or a size like" },
    { 'model "m" { framework = "llamacpp", url = "https://h/m.gguf", tags = 3 }', "field 'tags': expected a list, got number" },
    { 'model "m" { framework = "llamacpp", url = "https://h/m.gguf", unzip = "yes" }', "field 'unzip': expected true or false" },
    { 'model "m" { framework = "llamacpp", url = "https://h/m.gguf", auth = "github" }', "field 'auth': expected \"hf\"" },
    { 'model "m" { framework = "llamacpp" }', "field 'url': missing %(give url, hub or files%)" },
    { 'model "m" { framework = "mlx", hub = { repo = "no-owner" } }', "field 'hub.repo': \"no%-owner\" is not a Hub repo" },
    { 'model "m" { framework = "other", files = { { name = "../x", url = "https://h/x" } } }',
      "field 'files%[1%]%.name': \"%.%./x\" is not a safe relative path" },
    { 'model "m" { framework = "other", url = "ftp://h/x" }', "field 'url': must be https://" },
    { 'model "m" { framework = "other", url = "https://h/m.bin", files = { { name = "M.bin", url = "https://h/2" } } }',
      "field 'files%[1%]%.name': \"M%.bin\" is also the name of the main file" },
    { 'model "m" { framework = "other", files = { { name = "a.json", url = "https://h/1" }, { name = "a.json", url = "https://h/2" } } }',
      "field 'files%[2%]%.name': \"a%.json\" is also the name of files%[1%]" },
    { 'model "m" { framework = "other", files = { { name = "a", url = "https://h/1" }, { name = "a/b", url = "https://h/2" } } }',
      "field 'files%[2%]%.name': \"a/b\" would be inside files%[1%], which is a file" },
    { 'model "m" { framework = "other", url = "https://h/x.bin", file = ".modelget.json" }',
      "field 'file': \"%.modelget%.json\" is the name of the store's record of a model" },
    { 'model "m" { framework = "other", url = "https://h/x.bin", files = { { url = "https://h/.Modelget.json" } } }',
      "field 'files%[1%]': \"%.Modelget%.json\" is the name of the store's record of a model; give name=" },
    { 'model "m" { framework = "other", url = "https://h/x.bin", files = { { name = ".modelget.json/x", url = "https://h/y" } } }',
      "field 'files%[1%]%.name': \"%.modelget%.json/x\" is the name of the store's record of a model" },
    { 'model "../m" { framework = "other", url = "https://h/x" }', "model '%.%./m': the id must be" },
    { 'model "m"', "model 'm' has no fields" },
  }
  for i, c in ipairs(cases) do
    local entries, problems = recipe.load_string("\n" .. c[1] .. "\n", "reg/f.lua")
    t.eq(#entries, 0, "case " .. i .. " refused")
    t.eq(#problems, 1, "case " .. i .. " one problem")
    t.match(problems[1], "^reg/f%.lua:2: ", "case " .. i .. " file:line")
    t.match(problems[1], c[2], "case " .. i)
  end
  local entries, problems = recipe.load_string('model "m" { framework = "other", url = "http://127.0.0.1:8080/m" }', "f.lua")
  t.eq(#problems, 0, "http to loopback is fine")
  t.eq(entries[1].url, "http://127.0.0.1:8080/m", "loopback url kept")
end)

test("entries are normalized to the catalog's shape", function()
  local entries, problems = recipe.load_string([[
framework "llamacpp"
model "tiny" {
  name = "Tiny", url = hf "org/repo" "sub dir/tiny.gguf", size = "669 MB", memory = "1 GiB",
  alt = "https://mirror.example/tiny.gguf", sha256 = "]] .. ("AB"):rep(32) .. [[",
}
model "exact" { url = hf "org/repo@v1.0" "e.gguf", size = 1234 }
model "zipped" { framework = "coreml", url = "https://h/Model.mlpackage.zip" }
model "snap" { framework = "mlx", hub = { repo = "mlx-community/x", include = { "*.json", "*.safetensors" } } }
model "tok" { framework = "other", files = hf "openai-community/gpt2" { "tokenizer.json", "vocab.json" } }
model { id = "table-form", framework = "onnx", url = "https://h/m.onnx" }
]], "reg/n.lua")
  t.eq(#problems, 0, "no problems: " .. table.concat(problems, "; "))
  local by = {}
  for _, e in ipairs(entries) do by[e.id] = e end
  local tiny = by.tiny
  t.eq(tiny.url, "https://huggingface.co/org/repo/resolve/main/sub%20dir/tiny.gguf", "hf url, path encoded")
  t.eq(tiny.file, "tiny.gguf", "file from the url")
  t.eq(tiny.size, 669000000, "size parsed")
  t.eq(tiny.size_exact, nil, "\"669 MB\" is an estimate")
  t.eq(tiny.memory, 1024 * 1024 * 1024, "memory parsed")
  t.eq(tiny.alt[1], "https://mirror.example/tiny.gguf", "one alt becomes a list")
  t.eq(tiny.sha256, ("ab"):rep(32), "sha256 lower-cased")
  t.eq(tiny.unzip, false, "a .gguf is not unzipped")
  t.eq(tiny.source, "reg/n.lua:2", "source")
  t.eq(by.exact.url, "https://huggingface.co/org/repo/resolve/v1.0/e.gguf", "revision")
  t.eq(by.exact.size, 1234, "exact size")
  t.eq(by.exact.size_exact, true, "an integer size is exact")
  t.eq(by.zipped.unzip, true, "an archive is unzipped")
  t.eq(by.snap.hub.revision, "main", "default revision")
  t.eq(by.snap.url, nil, "a snapshot has no url")
  t.eq(by.tok.files[2].name, "vocab.json", "files from hf")
  t.eq(by.tok.files[2].url, "https://huggingface.co/openai-community/gpt2/resolve/main/vocab.json", "file url")
  t.eq(by["table-form"].framework, "onnx", "model { id = … } form")
  t.eq(by["table-form"].name, "table-form", "name defaults to the id")
end)

test("search: every word matches the id, the name or a tag, in any case", function()
  local cat = load_dir {
    ["a.lua"] = GOOD .. [[
model "big-one" { name = "Big Model", url = "https://h/big.gguf", tags = { "chat" } }
model "vision" { framework = "tflite", name = "Small Vision", url = "https://h/v.tflite", tags = { "vision" } }
]],
  }
  local function ids(list)
    local out = {}
    for _, e in ipairs(list) do out[#out + 1] = e.id end
    return table.concat(out, ",")
  end
  t.eq(ids(cat:search("CHAT")), "big-one,good-one", "tag, any case")
  t.eq(ids(cat:search("chat small")), "good-one", "every word must match")
  t.eq(ids(cat:search({ "small" })), "good-one,vision", "name or tag")
  t.eq(ids(cat:search("nothing-like-it")), "", "no match")
  t.eq(ids(cat:entries()), "big-one,good-one,vision", "sorted by framework, then id")
  local fws = {}
  for _, f in ipairs(cat:frameworks()) do fws[f.name] = f.count end
  t.eq(fws.llamacpp, 2, "llamacpp count")
  t.eq(fws.tflite, 1, "tflite count")
  t.eq(fws.coreml, 0, "coreml count")
end)

test("sources load in order: built-in, the store's, --registry paths, MODELGET_REGISTRY_PATH, custom URLs", function()
  local store = t.tmpdir("store")
  t.write(store .. "/registry/user.lua", 'model "user-model" { framework = "onnx", url = "https://h/u.onnx" }\n')
  t.write(store .. "/registry/custom.json", '{"custom":[{"id":"custom-1","name":"C.gguf","url":"https://h/c.gguf"}]}')
  t.write(store .. "/registry/notes.lua/readme.txt", "a folder named like a recipe is none\n")
  local extra = t.tmpdir("extra")
  t.write(extra .. "/one.lua", 'model "extra-file" { framework = "onnx", url = "https://h/e.onnx" }\n')
  local envdir = t.tmpdir("envpath")
  t.write(envdir .. "/two.lua", 'model "env-model" { framework = "onnx", url = "https://h/v.onnx" }\n'
    .. 'model "good-one" { framework = "onnx", url = "https://h/dup.onnx" }\n')
  local cat, problems = load_dir({ ["a.lua"] = GOOD }, {
    store = store, paths = { extra .. "/one.lua", extra .. "/missing.lua" },
    env = { MODELGET_REGISTRY_PATH = envdir .. ":" .. extra },
  })
  for _, id in ipairs({ "good-one", "user-model", "extra-file", "env-model", "custom-1" }) do
    t.ok(cat:get(id), "loaded " .. id)
  end
  t.eq(cat:get("good-one").url, "https://huggingface.co/org/repo/resolve/main/good.gguf", "the built-in one wins")
  t.eq(cat:get("custom-1").framework, "llamacpp", "custom entry framework from its name")
  t.eq(cat:get("custom-1").custom, true, "custom entry marked")
  t.eq(#problems, 2, "two problems: " .. table.concat(problems, "; "))
  find(problems, "missing%.lua: no such recipe file or folder")
  find(problems, "two%.lua:2: model 'good%-one' is already defined at .*/a%.lua:2")
end)

test("a bad custom.json is one problem; the recipes still load", function()
  local store = t.tmpdir("store")
  t.write(store .. "/registry/custom.json", '{"custom": [ {"id": "x", ')
  local cat, problems = load_dir({ ["a.lua"] = GOOD }, { store = store })
  t.ok(cat:get("good-one"), "recipes loaded")
  t.eq(#problems, 1, "one problem")
  t.match(problems[1], "custom%.json: not valid JSON", "message")
end)

test("the allowed names are one sorted list", function()
  t.eq(table.concat(recipe.ALLOWED, " "),
    "assert error ipairs math next pairs select string table tonumber tostring type utf8", "allowed")
end)
