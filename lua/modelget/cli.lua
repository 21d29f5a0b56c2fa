-- placeholder: the command line lands in its own change
local M = {}
function M.main(arg)
  if arg[1] == "run" then
    local script = arg[2]
    local args = { [0] = script }
    for i = 3, #arg do args[#args + 1] = arg[i] end
    _G.arg = args
    local chunk, err = loadfile(script)
    if not chunk then io.stderr:write("modelget: ", err, "\n") return 9 end
    local r = chunk(table.unpack(args))
    return math.type(r) == "integer" and r or 0
  end
  io.stderr:write("modelget: not yet\n")
  return 2
end
return M
