-- Model formats recognised by content: each sniffer reads only the bytes it needs and answers
-- true, or nil and what it found instead. The framework rules (modelget.rules.<fw>) pick which
-- sniffers apply to which files; this module knows nothing of frameworks.
local core = require "modelget.core"

local M = {}

local MAX_JSON = 64 * 1024 * 1024        -- a config or tokenizer file larger than this is not one
local MAX_SAFETENSORS_HEADER = 100 * 1024 * 1024 -- the safetensors reference reader's own limit

local function open(path)
  local f, err = io.open(path, "rb")
  if not f then return nil, err end
  return f
end

local function file_size(f)
  local size = f:seek("end")
  f:seek("set", 0)
  return size
end

-- "47 47 55 46" style dump of the first bytes, for "expected …, found …" messages.
local function show_bytes(s)
  if #s == 0 then return "an empty file" end
  local hex = s:sub(1, 8):gsub(".", function(c) return string.format("%02x ", c:byte()) end)
  local text = s:sub(1, 8):gsub("[^%g ]", ".")
  return string.format("bytes %s(%q)", hex, text)
end
M.show_bytes = show_bytes

local function head(path, n)
  local f, err = open(path)
  if not f then return nil, err end
  local s = f:read(n) or ""
  f:close()
  return s
end

-- GGUF: magic "GGUF", then the format version as a little-endian uint32 (2 or 3 in use today).
function M.gguf(path)
  local s, err = head(path, 8)
  if not s then return nil, err end
  if s:sub(1, 4) ~= "GGUF" then
    return nil, "not a GGUF file (expected magic \"GGUF\", found " .. show_bytes(s) .. ")"
  end
  if #s < 8 then return nil, "not a GGUF file (truncated after the magic)" end
  local version = string.unpack("<I4", s, 5)
  if version ~= 2 and version ~= 3 then
    return nil, string.format("unsupported GGUF version %d (expected 2 or 3)", version)
  end
  return true
end

-- FlatBuffer with a file identifier at bytes 4..8 (TFLite "TFL3", ONNX Runtime's .ort "ORTM");
-- the root table offset in bytes 0..4 must land inside the file.
local function flatbuffer(path, ident, what)
  local f, err = open(path)
  if not f then return nil, err end
  local size = file_size(f)
  local s = f:read(8) or ""
  f:close()
  if #s < 8 or s:sub(5, 8) ~= ident then
    return nil, string.format("not a %s file (expected identifier %q at bytes 4..8, found %s)", what, ident,
      show_bytes(s))
  end
  local root = string.unpack("<I4", s)
  if root < 8 or root >= size then
    return nil, string.format("not a %s file (root table offset %d outside the file of %d bytes)", what, root, size)
  end
  return true
end

function M.tflite(path) return flatbuffer(path, "TFL3", "TensorFlow Lite") end
function M.ort(path) return flatbuffer(path, "ORTM", "ONNX Runtime (.ort)") end

-- Protocol buffers: walks the top-level fields of a message file, reading only keys and lengths
-- (length-delimited values are skipped with seek, so a multi-gigabyte graph costs a few reads).
-- `fields` maps a field number to its wire type; unknown numbers pass when well formed (newer
-- producers add fields). Returns the set of field numbers seen, or nil and why not.
local WIRE_NAMES = { [0] = "varint", [1] = "64-bit", [2] = "length-delimited", [5] = "32-bit" }

local function read_varint(f)
  local value, shift = 0, 0
  for _ = 1, 10 do
    local c = f:read(1)
    if not c then return nil end
    local b = c:byte()
    value = value | ((b & 0x7f) << shift)
    if b < 0x80 then return value end
    shift = shift + 7
  end
  return nil -- longer than any 64-bit varint
end

function M.protobuf_fields(path, fields, what)
  local f, err = open(path)
  if not f then return nil, err end
  local size = file_size(f)
  local first = f:read(8) or ""
  f:seek("set", 0)
  local seen = {}
  local function bad(why)
    f:close()
    return nil, string.format("not a%s %s file (%s; found %s)", what:match("^[AEIOU]") and "n" or "",
      what, why, show_bytes(first))
  end
  if size == 0 then return bad("empty") end
  while true do
    local pos = f:seek()
    if pos == size then break end
    local key = read_varint(f)
    if not key then return bad("truncated field key at byte " .. pos) end
    local number, wire = key >> 3, key & 7
    if number == 0 or not WIRE_NAMES[wire] then
      return bad(string.format("invalid field key 0x%x at byte %d", key, pos))
    end
    if fields[number] and fields[number] ~= wire then
      return bad(string.format("field %d is %s, expected %s", number, WIRE_NAMES[wire], WIRE_NAMES[fields[number]]))
    end
    local skip
    if wire == 0 then
      if not read_varint(f) then return bad("truncated varint at byte " .. pos) end
      skip = 0
    elseif wire == 1 then skip = 8
    elseif wire == 5 then skip = 4
    else
      skip = read_varint(f)
      if not skip then return bad("truncated length at byte " .. pos) end
    end
    local here = f:seek()
    if skip > size - here then
      return bad(string.format("field %d at byte %d runs past the end of the file", number, pos))
    end
    f:seek("set", here + skip)
    seen[number] = true
  end
  f:close()
  return seen
end

-- ONNX ModelProto (onnx.proto): ir_version = 1 (varint), producer_name 2, producer_version 3,
-- domain 4, doc_string 6 (strings), model_version 5 (varint), graph 7, opset_import 8,
-- metadata_props 14, training_info 20, functions 25, configuration 26 (messages).
local ONNX_FIELDS = { [1] = 0, [2] = 2, [3] = 2, [4] = 2, [5] = 0, [6] = 2, [7] = 2, [8] = 2, [14] = 2,
  [20] = 2, [25] = 2, [26] = 2 }

function M.onnx(path)
  local seen, err = M.protobuf_fields(path, ONNX_FIELDS, "ONNX")
  if not seen then return nil, err end
  if not seen[1] then return nil, "not an ONNX file (no ir_version field)" end
  if not seen[7] then return nil, "not an ONNX file (no graph field)" end
  return true
end

-- Core ML Model (Model.proto): specificationVersion = 1 (varint), description 2 (message),
-- isUpdatable 10 (varint), then exactly the model type: one message field numbered 200 and up.
local MLMODEL_FIELDS = { [1] = 0, [2] = 2, [10] = 0 }

function M.mlmodel(path)
  local seen, err = M.protobuf_fields(path, setmetatable({}, { __index = function(_, n)
    return MLMODEL_FIELDS[n] or (n >= 200 and 2 or nil)
  end }), "Core ML model")
  if not seen then return nil, err end
  if not seen[1] then return nil, "not a Core ML model (no specificationVersion field)" end
  local typed = false
  for n in pairs(seen) do if n >= 200 then typed = true end end
  if not typed then return nil, "not a Core ML model (no model type field)" end
  return true
end

function M.json(path)
  local f, err = open(path)
  if not f then return nil, err end
  local size = file_size(f)
  if size > MAX_JSON then f:close() return nil, "not a JSON file (" .. size .. " bytes)" end
  local text = f:read("a")
  f:close()
  local ok, doc = pcall(require("cjson").decode, text)
  if not ok then return nil, "not valid JSON (" .. tostring(doc):gsub("^.-:%d+: ", "") .. ")" end
  if type(doc) ~= "table" then return nil, "not a JSON object" end
  return doc
end

-- safetensors: an 8-byte little-endian header length N, then N bytes of a JSON object.
function M.safetensors(path)
  local f, err = open(path)
  if not f then return nil, err end
  local size = file_size(f)
  local s = f:read(9) or ""
  if #s < 9 then f:close() return nil, "not a safetensors file (only " .. size .. " bytes)" end
  local n = string.unpack("<I8", s)
  if n < 2 or n > MAX_SAFETENSORS_HEADER or n > size - 8 or s:sub(9, 9) ~= "{" then
    f:close()
    return nil, string.format("not a safetensors file (header length %d in a file of %d bytes, found %s)",
      n, size, show_bytes(s))
  end
  f:seek("set", 8)
  local header = f:read(n)
  f:close()
  local ok, doc = pcall(require("cjson").decode, header)
  if not ok or type(doc) ~= "table" then return nil, "not a safetensors file (header is not a JSON object)" end
  return true
end

-- A zip archive (NumPy's .npz weights are one): local file header "PK\3\4", or an empty archive's
-- end record "PK\5\6".
function M.zip(path)
  local s, err = head(path, 4)
  if not s then return nil, err end
  if s ~= "PK\3\4" and s ~= "PK\5\6" then
    return nil, "not a zip (.npz) file (expected \"PK\\3\\4\", found " .. show_bytes(s) .. ")"
  end
  return true
end

-- A Core ML package: a folder with Manifest.json; its model spec, when present, must parse too.
function M.mlpackage(path)
  local st = core.stat(path)
  if not st or st.type ~= "dir" then return nil, "not a Core ML package (not a folder)" end
  local manifest, err = M.json(path .. "/Manifest.json")
  if not manifest then return nil, "not a Core ML package (Manifest.json: " .. err .. ")" end
  if type(manifest.itemInfoEntries) ~= "table" then
    return nil, "not a Core ML package (Manifest.json has no itemInfoEntries)"
  end
  local spec = path .. "/Data/com.apple.CoreML/model.mlmodel"
  if core.stat(spec) then
    local ok, why = M.mlmodel(spec)
    if not ok then return nil, "Data/com.apple.CoreML/model.mlmodel: " .. why end
  end
  return true
end

-- A compiled Core ML model (.mlmodelc): a folder the runtime loads as is.
function M.mlmodelc(path)
  local st = core.stat(path)
  if not st or st.type ~= "dir" then return nil, "not a compiled Core ML model (not a folder)" end
  if not core.stat(path .. "/coremldata.bin") then return nil, "not a compiled Core ML model (no coremldata.bin)" end
  return true
end

return M
