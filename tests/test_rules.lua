-- Framework rules: format checks on real and built files, side files, layouts, framework by name.
local t = require "t"
local core = require "modelget.core"
local rules = require "modelget.rules"

local ONNX_DIR = "/usr/share/libonnx-testdata/data/node"

local function check(fw, path, entry)
  return rules.get(fw).check(path, entry or { id = "m", framework = fw })
end

local function refused(fw, path, pattern, what)
  local ok, msg, code = check(fw, path)
  t.eq(ok, nil, what .. ": refused")
  t.eq(code, "EFORMAT", what .. ": code")
  t.match(msg, pattern, what .. ": message")
  return msg
end

local function gguf(version) return "GGUF" .. string.pack("<I4", version) .. string.pack("<I8I8", 0, 0) end

local function flatbuffer(ident) return string.pack("<I4", 16) .. ident .. string.rep("\0", 40) end

local function safetensors(header) return string.pack("<I8", #header) .. header .. string.rep("\0", 8) end

-- A protobuf field: key varint then the value.
local function varint(n)
  local out = {}
  repeat
    local b = n & 0x7f
    n = n >> 7
    out[#out + 1] = string.char(n > 0 and (b | 0x80) or b)
  until n == 0
  return table.concat(out)
end
local function ld(field, bytes) return varint(field << 3 | 2) .. varint(#bytes) .. bytes end
local function vi(field, n) return varint(field << 3) .. varint(n) end

test("every ONNX model Debian ships passes; a tensor file and text do not", function()
  local names = assert(core.listdir(ONNX_DIR), "libonnx-testdata is installed")
  local n = 0
  for _, name in ipairs(names) do
    local path = ONNX_DIR .. "/" .. name .. "/model.onnx"
    if core.stat(path) then
      local ok, msg = check("onnx", path)
      t.ok(ok, name .. ": " .. tostring(msg))
      n = n + 1
    end
  end
  t.ok(n > 500, "hundreds of models checked (" .. n .. ")")
  refused("onnx", ONNX_DIR .. "/test_add/test_data_set_0/input_0.pb", "input_0%.pb: not an ONNX file %(", "TensorProto")
  local dir = t.tmpdir("onnx")
  refused("onnx", t.write(dir .. "/model.onnx", "<html>Sign in to continue</html>\n"),
    "^model%.onnx: not an ONNX file .*found bytes 3c 68 74 6d 6c", "an HTML page saved as .onnx")
  refused("onnx", t.write(dir .. "/empty.onnx", ""), "^empty%.onnx: not an ONNX file %(empty", "empty")
  -- a model truncated in the middle of its graph
  local whole = t.read(ONNX_DIR .. "/test_conv_with_strides_padding/model.onnx")
  refused("onnx", t.write(dir .. "/cut.onnx", whole:sub(1, #whole - 7)), "runs past the end of the file", "truncated")
end)

test("an .ort file is checked by its FlatBuffer identifier", function()
  local dir = t.tmpdir("ort")
  t.ok(check("onnx", t.write(dir .. "/m.ort", flatbuffer("ORTM"))), "ORTM")
  refused("onnx", t.write(dir .. "/x.ort", flatbuffer("TFL3")), 'expected identifier "ORTM" at bytes 4%.%.8, found bytes', "TFL3 as .ort")
end)

test("GGUF: magic and version 2 or 3; a text file named .gguf is not compatible", function()
  local dir = t.tmpdir("gguf")
  t.ok(check("llamacpp", t.write(dir .. "/v3.gguf", gguf(3))), "version 3")
  t.ok(check("llamacpp", t.write(dir .. "/v2.gguf", gguf(2))), "version 2")
  refused("llamacpp", t.write(dir .. "/v1.gguf", gguf(1)), "^v1%.gguf: unsupported GGUF version 1 %(expected 2 or 3%)", "v1")
  refused("llamacpp", t.write(dir .. "/fake.gguf", "Entry not found\n"),
    '^fake%.gguf: not a GGUF file %(expected magic "GGUF", found bytes 45 6e 74 72 79 20 6e 6f %("Entry no"%)%)$', "text")
  refused("llamacpp", t.write(dir .. "/short.gguf", "GGUF"), "truncated", "magic only")
end)

test("a staged folder: every model file is checked, and one must be there", function()
  local dir = t.tmpdir("staged")
  t.write(dir .. "/ok/model.gguf", gguf(3))
  t.write(dir .. "/ok/README.md", "# notes\n")
  t.write(dir .. "/ok/.git/objects/x", "not looked at")
  t.ok(check("llamacpp", dir .. "/ok"), "a folder with a GGUF")
  t.write(dir .. "/two/a.gguf", gguf(3))
  t.write(dir .. "/two/sub/b.gguf", "oops")
  refused("llamacpp", dir .. "/two", "^sub/b%.gguf: not a GGUF file", "the bad one named by its path in the folder")
  t.write(dir .. "/none/README.md", "# nothing\n")
  refused("llamacpp", dir .. "/none", "no model file %(%.gguf%) among the files", "no model file")
  -- a lone file with an unexpected name is checked as the framework's format
  t.ok(check("llamacpp", t.write(dir .. "/model.bin", gguf(3))), "GGUF named .bin")
  refused("tflite", t.write(dir .. "/model.bin2", gguf(3)), "not a TensorFlow Lite file", "GGUF as tflite")
end)

test("TFLite: identifier TFL3 at bytes 4..8", function()
  local dir = t.tmpdir("tflite")
  t.ok(check("tflite", t.write(dir .. "/m.tflite", flatbuffer("TFL3"))), "TFL3")
  refused("tflite", t.write(dir .. "/bad.tflite", string.pack("<I4", 4000) .. "TFL3" .. "xx"),
    "root table offset 4000 outside the file of 10 bytes", "offset past the end")
  refused("tflite", t.write(dir .. "/g.tflite", gguf(3)), 'expected identifier "TFL3"', "GGUF as tflite")
end)

test("MLX: safetensors headers, config.json and tokenizer.json required and parsed", function()
  local dir = t.tmpdir("mlx")
  local function staged(name, files)
    for file, data in pairs(files) do t.write(dir .. "/" .. name .. "/" .. file, data) end
    return dir .. "/" .. name
  end
  local st = safetensors('{"w":{"dtype":"F16","shape":[2],"data_offsets":[0,4]}}')
  t.ok(check("mlx", staged("ok", { ["model.safetensors"] = st, ["config.json"] = '{"model_type":"llama"}',
    ["tokenizer.json"] = '{"version":"1.0"}' })), "complete")
  refused("mlx", staged("notok", { ["model.safetensors"] = st, ["config.json"] = "{}" }),
    "^required file tokenizer%.json missing$", "no tokenizer")
  refused("mlx", staged("badtok", { ["model.safetensors"] = st, ["config.json"] = "{}", ["tokenizer.json"] = '{"a":' }),
    "^tokenizer%.json: not valid JSON", "tokenizer is not JSON")
  refused("mlx", staged("badst", { ["model.safetensors"] = string.pack("<I8", 1 << 40) .. "{}", ["config.json"] = "{}",
    ["tokenizer.json"] = "{}" }), "^model%.safetensors: not a safetensors file %(header length", "header length too big")
  refused("mlx", staged("notjson", { ["model.safetensors"] = safetensors("{not json}"), ["config.json"] = "{}",
    ["tokenizer.json"] = "{}" }), "header is not a JSON object", "header not JSON")
  refused("mlx", staged("noweights", { ["config.json"] = "{}", ["tokenizer.json"] = "{}" }),
    "no model file %(%.npz, %.safetensors%)", "no weights")
end)

test("Core ML: .mlpackage folders and .mlmodel protobufs", function()
  local dir = t.tmpdir("coreml")
  local spec = vi(1, 7) .. ld(2, ld(1, "input")) .. ld(500, ld(1, "layers"))
  t.write(dir .. "/ok/M.mlpackage/Manifest.json", '{"fileFormatVersion":"1.0.0","itemInfoEntries":{}}')
  t.write(dir .. "/ok/M.mlpackage/Data/com.apple.CoreML/model.mlmodel", spec)
  t.ok(check("coreml", dir .. "/ok"), "a staged folder holding a package")
  t.ok(check("coreml", dir .. "/ok/M.mlpackage"), "the package itself")
  t.write(dir .. "/nomanifest/M.mlpackage/Data/x", "x")
  refused("coreml", dir .. "/nomanifest", "^M%.mlpackage: not a Core ML package %(Manifest%.json:", "no manifest")
  t.write(dir .. "/badspec/M.mlpackage/Manifest.json", '{"itemInfoEntries":{}}')
  t.write(dir .. "/badspec/M.mlpackage/Data/com.apple.CoreML/model.mlmodel", gguf(3))
  refused("coreml", dir .. "/badspec", "model%.mlmodel: not a Core ML model", "bad spec inside")
  t.ok(check("coreml", t.write(dir .. "/m.mlmodel", spec)), ".mlmodel")
  refused("coreml", t.write(dir .. "/untyped.mlmodel", vi(1, 7) .. ld(2, "d")), "no model type field", "no type")
  refused("coreml", t.write(dir .. "/onnx.mlmodel", t.read(ONNX_DIR .. "/test_add/model.onnx")), "not a Core ML model",
    "an ONNX file named .mlmodel")
end)

test("the Other framework takes any file", function()
  local dir = t.tmpdir("other")
  t.ok(check("other", t.write(dir .. "/x.bin", "anything")), "any file")
end)

test("side files: MLX requires config and tokenizer, ONNX and Core ML take the repo's tokenizer", function()
  local mlx = rules.get("mlx")
  local snap = { id = "q", framework = "mlx", hub = { repo = "mlx-community/Q", revision = "main", include = { "*.safetensors" } } }
  local side = mlx.side_files(snap)
  t.eq(#side, 3, "config.json, tokenizer.json, tokenizer_config.json")
  t.eq(side[1].name, "config.json", "first")
  t.eq(side[1].url, "https://huggingface.co/mlx-community/Q/resolve/main/config.json", "from the repo")
  t.eq(side[1].optional, nil, "config.json is required")
  t.eq(side[3].optional, true, "tokenizer_config.json is optional")
  snap.hub.include = { "*.json", "*.safetensors" }
  t.eq(#mlx.side_files(snap), 0, "nothing the include patterns already bring")
  t.eq(#mlx.side_files({ id = "t", framework = "mlx", url = "https://example.com/m.tar.gz" }), 0,
    "a tarball off the Hub brings its own (the check insists)")

  local onnx = rules.get("onnx")
  local e = { id = "o", framework = "onnx", url = "https://huggingface.co/org/m/resolve/v2/onnx/model.onnx" }
  side = onnx.side_files(e)
  t.eq(side[1].url, "https://huggingface.co/org/m/resolve/v2/onnx/tokenizer.json", "the model's folder and revision")
  t.eq(table.concat(side[1].alt or {}, " "), "https://huggingface.co/org/m/resolve/v2/tokenizer.json", "then the repo's root")
  t.eq(side[1].optional, true, "optional")
  e.url = "https://huggingface.co/org/m/resolve/v2/onnx/q/model.onnx"
  t.eq(table.concat(onnx.side_files(e)[1].alt, " "), "https://huggingface.co/org/m/resolve/v2/onnx/tokenizer.json "
    .. "https://huggingface.co/org/m/resolve/v2/tokenizer.json", "every folder above, up to the root")
  e.url = "https://huggingface.co/org/m/resolve/v2/model.onnx"
  t.eq(onnx.side_files(e)[1].alt, nil, "at the root: the root only")
  e.files = { { name = "tokenizer.json", url = "https://huggingface.co/org/m/resolve/main/tokenizer.json" } }
  t.eq(onnx.side_files(e)[1].name, "tokenizer_config.json", "tokenizer.json given by the recipe is not asked twice")
  t.eq(#onnx.side_files({ id = "o", framework = "onnx", url = "https://example.com/m.onnx" }), 0, "off the Hub: none")
  t.eq(#rules.get("coreml").side_files({ id = "c", framework = "coreml", hub = { repo = "apple/x", include = { "X.mlpackage/**" } } }), 2,
    "Core ML asks the repo's tokenizer")
  t.eq(#rules.get("llamacpp").side_files({ id = "g", url = "https://huggingface.co/a/b/resolve/main/x.gguf" }), 0, "GGUF: none")
  t.eq(#rules.get("tflite").side_files({ id = "g", url = "https://huggingface.co/a/b/resolve/main/x.tflite" }), 0, "TFLite: none")
end)

test("layouts: MLX strips one top folder, Core ML keeps bundles whole", function()
  t.eq(rules.get("mlx").layout({}).strip, "auto", "mlx")
  t.eq(rules.get("coreml").layout({}).bundle, true, "coreml")
  t.eq(rules.get("llamacpp").layout({}).strip_components, 0, "llamacpp")
end)

test("the framework follows the file name's extension", function()
  local cases = { ["m.gguf"] = "llamacpp", ["M.ONNX"] = "onnx", ["m.ort"] = "onnx", ["m.tflite"] = "tflite",
    ["M.mlmodel"] = "coreml", ["M.mlpackage"] = "coreml", ["M.mlpackage.zip"] = "coreml", ["m.gguf?download=1"] = "llamacpp" }
  for name, fw in pairs(cases) do t.eq(rules.framework_for_name(name), fw, name) end
  t.eq(rules.framework_for_name("model.safetensors"), nil, "safetensors implies nothing")
  t.eq(rules.framework_for_name("model.bin"), nil, ".bin implies nothing")
  t.eq(rules.framework_for_name("weights.zip"), nil, "a bare archive implies nothing")
end)

test("the rule tables: names, titles, and unknown frameworks", function()
  local titles = {}
  for _, r in ipairs(rules.list()) do
    titles[#titles + 1] = r.name .. "=" .. r.title
    t.eq(type(r.check), "function", r.name .. " check")
    t.eq(type(r.side_files), "function", r.name .. " side_files")
    t.eq(type(r.layout), "function", r.name .. " layout")
    t.eq(type(r.describe), "string", r.name .. " describe")
  end
  t.eq(table.concat(titles, ","), "coreml=Core ML,mlx=MLX,onnx=ONNX Runtime,tflite=TensorFlow Lite,llamacpp=llama.cpp,other=Other",
    "titles")
  local r, msg, code = rules.get("tensorflow")
  t.eq(r, nil, "unknown")
  t.eq(code, "EUSAGE", "code")
  t.match(msg, "unknown framework 'tensorflow' %(one of: coreml, mlx", "message")
end)
