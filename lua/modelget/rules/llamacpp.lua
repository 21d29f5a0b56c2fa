-- llama.cpp: one GGUF file, downloaded as is.
local rules = require "modelget.rules"
local formats = require "modelget.formats"

return rules.define {
  name = "llamacpp",
  title = "llama.cpp",
  extensions = { ".gguf" },
  describe = "GGUF files (magic \"GGUF\", version 2 or 3); no unzipping, no side files",
  formats = { files = { [".gguf"] = formats.gguf, [".json"] = formats.json }, default = formats.gguf },
}
