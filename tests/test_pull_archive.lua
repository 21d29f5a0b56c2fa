-- pull --unzip end to end: the archive is downloaded and verified, extracted into a staging folder,
-- and renamed into the store in one step; hostile or broken archives install nothing.
local t = require "t"
local servers = require "servers"
local archives = require "archives"
local core = require "modelget.core"
local cjson = require "cjson"

local MiB = 1024 * 1024

local function pull(store, args)
  local argv = { "pull", "--store", store, "--cacert", servers.ca().cert, "--retry-wait", "0.05" }
  for _, a in ipairs(args) do argv[#argv + 1] = a end
  return t.modelget(argv)
end

local function serve_archive(kind, name, entries)
  local path = archives.make(kind, t.tmpdir("archive") .. "/" .. name, entries)
  return servers.nginx().put("archives/" .. name, t.read(path)), path
end

local function no_staging(store)
  for _, f in ipairs(t.tree(store .. "/partial")) do t.nomatch(f, "staging", "staging left: " .. f) end
end

local good = {
  { path = "model/" },
  { path = "model/weights/" },
  { path = "model/weights/big.bin", data = t.bytes(3 * MiB, 31) },
  { path = "model/weights/small.bin", data = t.bytes(1000, 32) },
  { path = "model/config.json", data = '{"layers": 2}' },
}

for _, kind in ipairs(archives.kinds) do
  test("--unzip installs a " .. kind .. " archive's files byte for byte, without the archive", function()
    local name = "bundle-" .. kind:gsub("%.", "-") .. "." .. kind
    local url, local_path = serve_archive(kind, name, good)
    local store = t.tmpdir("store-" .. kind)
    t.status(pull(store, { url, "--framework", "other", "--unzip", "--sha256", t.sha256_file(local_path), "-q" }),
      0, "pull --unzip")
    local id = name:gsub("%.tar%.%w+$", ""):gsub("%.%w+$", "")
    local dir = store .. "/models/other/" .. id
    for _, e in ipairs(good) do
      if e.data then t.eq(t.sha256_file(dir .. "/" .. e.path), t.sha256(e.data), e.path) end
    end
    t.ok(not t.exists(dir .. "/" .. name), "the archive itself is not kept")
    local manifest = cjson.decode(t.read(dir .. "/.modelget.json"))
    for _, f in ipairs(manifest.files) do
      t.eq(f.sha256, t.sha256_file(dir .. "/" .. f.path), "manifest digest of " .. f.path)
    end
    t.eq(#manifest.files, 3, "every extracted file in the manifest")
    no_staging(store)
  end)
end

test("a hostile archive: exit 7 naming the entry, nothing installed, nothing written outside", function()
  local url = serve_archive("tar.gz", "evil.tar.gz", {
    { path = "ok.txt", data = "fine" },
    { path = "../../escaped.txt", data = "owned" },
  })
  local outer = t.tmpdir("outer-evil")
  local store = outer .. "/store"
  local r = t.status(pull(store, { url, "--framework", "other", "--unzip", "-q" }), 7, "pull")
  t.match(r.stderr, "%.%./%.%./escaped%.txt", "names the entry")
  t.ok(not t.exists(store .. "/models/other/evil"), "no model folder")
  for _, f in ipairs(t.tree(outer)) do t.nomatch(f, "escaped", "written outside: " .. f) end
  no_staging(store)
end)

test("an archive holding anything named like the store's record of a model: exit 7, nothing installed", function()
  local model = t.bytes(5000, 33)
  local cases = {
    file = { { path = "model.bin", data = model }, { path = ".modelget.json", data = '{"files": []}' } },
    link = { { path = "model.bin", data = model }, { path = ".modelget.json", type = "symlink", target = "model.bin" } },
    folder = { { path = "model.bin", data = model }, { path = ".Modelget.json/x", data = "x" } },
  }
  for kind, entries in pairs(cases) do
    local url = serve_archive("tar.gz", "record-" .. kind .. ".tar.gz", entries)
    local store = t.tmpdir("store-record-" .. kind)
    local r = t.status(pull(store, { url, "--framework", "other", "--unzip", "-q" }), 7, "pull, " .. kind)
    t.match(r.stderr, "the archive holds '%.[Mm]odelget%.json'", "names the entry: " .. kind)
    t.ok(not t.exists(store .. "/models/other/record-" .. kind), "no model folder: " .. kind)
    no_staging(store)
    t.eq(#t.tree(store .. "/partial/other--record-" .. kind), 0, "the unusable archive is not kept: " .. kind)
  end
end)

test("a symlink planted to the outside: exit 7", function()
  local url = serve_archive("tar", "link.tar", {
    { path = "weights", type = "symlink", target = "/etc" },
  })
  local store = t.tmpdir("store-link")
  local r = t.status(pull(store, { url, "--framework", "other", "--unzip", "-q" }), 7, "pull")
  t.match(r.stderr, "weights", "names the entry")
  t.ok(not t.exists(store .. "/models/other/link"), "no model folder")
end)

test("a truncated archive: exit 7, nothing installed", function()
  local path = archives.make("tar.xz", t.tmpdir("trunc") .. "/full.tar.xz", good)
  local data = t.read(path)
  local url = servers.nginx().put("archives/cut.tar.xz", data:sub(1, #data // 2))
  local store = t.tmpdir("store-trunc")
  t.status(pull(store, { url, "--framework", "other", "--unzip", "-q" }), 7, "pull")
  t.ok(not t.exists(store .. "/models/other/cut"), "no model folder")
  no_staging(store)
end)

test("a pull killed during extraction leaves no model folder; the next pull completes", function()
  local entries = {}
  for i = 1, 20000 do entries[#entries + 1] = { path = string.format("shard/%05d.bin", i), data = t.bytes(512, i) } end
  local url = serve_archive("tar", "many.tar", entries)
  local store = t.tmpdir("store-killx")
  local job = t.spawn({ "pull", url, "--store", store, "--cacert", servers.ca().cert, "--framework", "other",
                        "--unzip", "-q" })
  local pid = job.pid
  local pdir = store .. "/partial/other--many"
  local staged, waited = false, 0
  while waited < 30 and not staged do
    for _, name in ipairs(core.listdir(pdir) or {}) do
      if name:match("^staging") and #(core.listdir(pdir .. "/" .. name) or {}) > 0 then staged = true end
    end
    if not staged then core.sleep(0.005); waited = waited + 0.005 end
  end
  os.execute("kill -9 " .. pid .. " 2>/dev/null")
  t.ok(staged, "the extraction had started")
  t.eq(t.wait(job.status, 10), 137, "killed (not a guessed 0.2 s: what it left is looked at once it is gone)")
  t.ok(not t.exists(store .. "/models/other/many"), "no model folder after the kill")
  t.status(pull(store, { url, "--framework", "other", "--unzip", "-q" }), 0, "the next pull")
  local dir = store .. "/models/other/many"
  t.eq(t.sha256_file(dir .. "/shard/00001.bin"), t.sha256(t.bytes(512, 1)), "first file")
  t.eq(t.sha256_file(dir .. "/shard/20000.bin"), t.sha256(t.bytes(512, 20000)), "last file")
  t.eq(#core.listdir(dir .. "/shard"), 20000, "every file")
  no_staging(store)
end)

test("a URL named like an archive is extracted without --unzip; --no-unzip installs it as it is", function()
  local url, local_path = serve_archive("tar.gz", "byname.tar.gz", good)
  local store = t.tmpdir("store-byname")
  t.status(pull(store, { url, "--framework", "other", "-q" }), 0, "pull, no --unzip")
  local dir = store .. "/models/other/byname"
  t.eq(t.sha256_file(dir .. "/model/weights/small.bin"), t.sha256(good[4].data), "extracted")
  t.ok(not t.exists(dir .. "/byname.tar.gz"), "the archive itself is not kept")
  local kept = t.tmpdir("store-kept")
  t.status(pull(kept, { url, "--framework", "other", "--no-unzip", "-q" }), 0, "pull --no-unzip")
  t.eq(t.sha256_file(kept .. "/models/other/byname/byname.tar.gz"), t.sha256_file(local_path), "the archive as it is")
  local r = t.status(pull(t.tmpdir("store-both"), { url, "--framework", "other", "--unzip", "--no-unzip" }), 2, "both")
  t.match(r.stderr, "%-%-unzip and %-%-no%-unzip: one or the other", "says so")
end)
