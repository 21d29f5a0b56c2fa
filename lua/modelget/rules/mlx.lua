-- MLX: a folder of .safetensors weights with config.json and tokenizer.json (both required); a tarball
-- with one top folder is unpacked without it.
local rules = require "modelget.rules"
local formats = require "modelget.formats"

local REQUIRED = { "config.json", "tokenizer.json" }

return rules.define {
  name = "mlx",
  title = "MLX",
  extensions = { ".safetensors", ".npz" },
  infer = false, -- a .safetensors file alone says nothing of the framework
  describe = "a folder of .safetensors weights with config.json and tokenizer.json (required)",
  formats = {
    files = { [".safetensors"] = formats.safetensors, [".npz"] = formats.zip, [".json"] = formats.json },
    default = formats.safetensors,
    required = REQUIRED,
  },
  side_files = function(entry)
    local out = rules.repo_files(entry, REQUIRED, false)
    for _, f in ipairs(rules.repo_files(entry, { "tokenizer_config.json" }, true)) do out[#out + 1] = f end
    return out
  end,
  layout = function() return { strip = "auto", bundle = false } end,
}
