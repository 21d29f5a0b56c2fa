-- Other: any file (tokenizers, vocabularies, weights of other runtimes); no format check.
local rules = require "modelget.rules"

return rules.define {
  name = "other",
  title = "Other",
  extensions = {},
  describe = "any file; no format check, no side files",
  check = function() return true end,
}
