-- ONNX Runtime: .onnx protobuf models (with their external-data files) or .ort FlatBuffers; the
-- tokenizer of the model's repo comes along when the repo has one.
local rules = require "modelget.rules"
local formats = require "modelget.formats"

local TOKENIZER = { "tokenizer.json", "tokenizer_config.json" }

return rules.define {
  name = "onnx",
  title = "ONNX Runtime",
  extensions = { ".onnx", ".ort" },
  describe = ".onnx (protobuf ModelProto) or .ort (FlatBuffer \"ORTM\"); the repo's tokenizer files when present",
  formats = {
    files = { [".onnx"] = formats.onnx, [".ort"] = formats.ort, [".json"] = formats.json },
    default = formats.onnx,
  },
  side_files = function(entry) return rules.repo_files(entry, TOKENIZER, true) end,
}
