-- Core ML: a .mlpackage folder (usually zipped; kept whole), a compiled .mlmodelc folder, or a legacy
-- .mlmodel protobuf; the tokenizer of the model's repo comes along when the repo has one.
local rules = require "modelget.rules"
local formats = require "modelget.formats"

local TOKENIZER = { "tokenizer.json", "tokenizer_config.json" }

return rules.define {
  name = "coreml",
  title = "Core ML",
  extensions = { ".mlpackage", ".mlmodel", ".mlmodelc" },
  describe = ".mlpackage bundles (Manifest.json), .mlmodelc or .mlmodel; zipped bundles are unzipped and kept whole",
  formats = {
    files = { [".mlmodel"] = formats.mlmodel, [".json"] = formats.json },
    bundles = { [".mlpackage"] = formats.mlpackage, [".mlmodelc"] = formats.mlmodelc },
    default = formats.mlmodel,
  },
  side_files = function(entry) return rules.repo_files(entry, TOKENIZER, true) end,
  layout = function() return { strip_components = 0, bundle = true } end,
}
