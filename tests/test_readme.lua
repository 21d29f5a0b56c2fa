-- The README's recipe example is a real recipe: it loads without a problem, has a model for every
-- framework, and each is the built-in catalog's own entry.
local t = require "t"
local recipe = require "modelget.recipe"
local modelget = require "modelget"

local function recipe_block()
  local readme = assert(t.read(t.root .. "/README.md"))
  local section = assert(readme:match("\n## Writing a recipe\n(.-)\n## "), "a 'Writing a recipe' section")
  return assert(section:match("```lua\n(.-)```"), "a lua block in it")
end

test("the README's recipe example loads, one model per framework, as the catalog has them", function()
  local entries, problems = recipe.load_string(recipe_block(), "README.md")
  t.eq(#problems, 0, "problems: " .. table.concat(problems, "; "))
  local catalog = modelget.catalog { store = t.tmpdir("readme-store") }
  local seen = {}
  for _, e in ipairs(entries) do
    seen[e.framework] = true
    local built_in = catalog:get(e.id)
    t.ok(built_in, "README's " .. e.id .. " is in the catalog")
    t.eq(e.url, built_in.url, e.id .. " url")
    t.eq(e.hub and e.hub.repo, built_in.hub and built_in.hub.repo, e.id .. " hub repo")
    t.eq(e.framework, built_in.framework, e.id .. " framework")
  end
  for _, fw in ipairs { "llamacpp", "onnx", "mlx", "coreml", "tflite" } do
    t.ok(seen[fw], "an example for " .. fw)
  end
end)
