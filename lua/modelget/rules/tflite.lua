-- TensorFlow Lite: one .tflite FlatBuffer (identifier "TFL3").
local rules = require "modelget.rules"
local formats = require "modelget.formats"

return rules.define {
  name = "tflite",
  title = "TensorFlow Lite",
  extensions = { ".tflite" },
  describe = ".tflite FlatBuffers (identifier \"TFL3\"); no side files",
  formats = { files = { [".tflite"] = formats.tflite, [".json"] = formats.json }, default = formats.tflite },
}
