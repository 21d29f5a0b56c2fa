-- Writes a small, valid GGUF (version 3) file for the demo: a few metadata keys and one F32 tensor.
--   modelget run scripts/demo/make_gguf.lua OUT.gguf [MIB]
-- Layout (GGUF v3): "GGUF", version u32, tensor count u64, metadata count u64, the metadata
-- (key string, value type u32, value), the tensor infos (name, dims, type, offset), padding to the
-- alignment (32), then the tensor data. Strings are a u64 length and the bytes.
local out, mib = arg[1], tonumber(arg[2] or "8")
if not out or not mib or mib <= 0 then
  io.stderr:write("usage: modelget run scripts/demo/make_gguf.lua OUT.gguf [MIB]\n")
  return 2
end

local GGUF_UINT32, GGUF_STRING, GGML_F32 = 4, 8, 0
local ALIGNMENT = 32

local function str(s) return string.pack("<I8", #s) .. s end
local function kv_string(key, value) return str(key) .. string.pack("<I4", GGUF_STRING) .. str(value) end
local function kv_u32(key, value) return str(key) .. string.pack("<I4I4", GGUF_UINT32, value) end

local count = mib * 1024 * 1024 // 4 -- F32 values
local metadata = {
  kv_string("general.architecture", "modelget-demo"),
  kv_string("general.name", "modelget demo tensor"),
  kv_u32("general.alignment", ALIGNMENT),
}
local tensor_info = str("demo.weight") .. string.pack("<I4I8I4I8", 1, count, GGML_F32, 0)
local head = "GGUF" .. string.pack("<I4I8I8", 3, 1, #metadata) .. table.concat(metadata) .. tensor_info
head = head .. string.rep("\0", (ALIGNMENT - #head % ALIGNMENT) % ALIGNMENT)

local f = assert(io.open(out, "wb"))
f:write(head)
-- A smooth, deterministic signal: the same bytes on every run, so the demo's sha256 is stable.
local chunk, values = 65536, {}
for base = 0, count - 1, chunk do
  local n = math.min(chunk, count - base)
  for i = 1, n do values[i] = math.sin((base + i) * 0.001) end
  f:write(string.pack("<" .. string.rep("f", n), table.unpack(values, 1, n)))
end
assert(f:close())
return 0
