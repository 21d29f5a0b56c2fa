-- LuaRocks: the modelget.core module (the C engine) and the Lua facade, for a stock Lua 5.4.
--   luarocks make --local modelget-scm-1.rockspec
-- On Debian, curl's header is in the multiarch folder:
--   luarocks make --local modelget-scm-1.rockspec CURL_INCDIR=/usr/include/$(gcc -print-multiarch)
-- The bundled host program comes with `make install` (README "Install"); the built-in registry is
-- copied into the rock's folder: MODELGET_REGISTRY_PATH=$(luarocks show --rock-dir modelget)/registry.
rockspec_format = "3.0"
package = "modelget"
version = "scm-1"
source = {
   url = "git+file:///work/main",
   branch = "main",
}
description = {
   summary = "Download machine-learning models: resumable, verified, installed by framework",
   detailed = [[
modelget downloads models (GGUF, ONNX, TFLite, Core ML, MLX) over HTTPS with resume, retries,
alternative URLs, SHA-256 verification, safe archive extraction and per-framework format checks.
The engine is C (libcurl, OpenSSL, libarchive) exposed as modelget.core; require "modelget" is
the facade: modelget.pull(id_or_url, opts) -> result | nil, message, code.
]],
   -- The repository has no license file yet: nothing is granted until it has one.
   license = "UNLICENSED",
   labels = { "download", "machine-learning", "curl" },
}
dependencies = {
   "lua >= 5.4, < 5.5",
   "lua-cjson",
}
external_dependencies = {
   CURL = { header = "curl/curl.h", library = "curl" },
   ARCHIVE = { header = "archive.h", library = "archive" },
   OPENSSL = { header = "openssl/evp.h", library = "crypto" },
   ZLIB = { header = "zlib.h", library = "z" },
}
build = {
   type = "builtin",
   modules = {
      ["modelget.core"] = {
         sources = { "engine/core.c", "engine/fs.c", "engine/jobs.c", "engine/hash.c", "engine/transfer.c", "engine/extract.c" },
         defines = { "_GNU_SOURCE" },
         incdirs = { "engine", "$(CURL_INCDIR)", "$(ARCHIVE_INCDIR)", "$(OPENSSL_INCDIR)", "$(ZLIB_INCDIR)" },
         libdirs = { "$(CURL_LIBDIR)", "$(ARCHIVE_LIBDIR)", "$(OPENSSL_LIBDIR)", "$(ZLIB_LIBDIR)" },
         libraries = { "curl", "archive", "ssl", "crypto", "z", "pthread" },
      },
      ["modelget"] = "lua/modelget/init.lua",
      ["modelget.auth"] = "lua/modelget/auth.lua",
      ["modelget.cli"] = "lua/modelget/cli.lua",
      ["modelget.custom"] = "lua/modelget/custom.lua",
      ["modelget.download"] = "lua/modelget/download.lua",
      ["modelget.formats"] = "lua/modelget/formats.lua",
      ["modelget.hub"] = "lua/modelget/hub.lua",
      ["modelget.progress"] = "lua/modelget/progress.lua",
      ["modelget.pull"] = "lua/modelget/pull.lua",
      ["modelget.recipe"] = "lua/modelget/recipe.lua",
      ["modelget.registry"] = "lua/modelget/registry.lua",
      ["modelget.rules"] = "lua/modelget/rules.lua",
      ["modelget.rules.coreml"] = "lua/modelget/rules/coreml.lua",
      ["modelget.rules.llamacpp"] = "lua/modelget/rules/llamacpp.lua",
      ["modelget.rules.mlx"] = "lua/modelget/rules/mlx.lua",
      ["modelget.rules.onnx"] = "lua/modelget/rules/onnx.lua",
      ["modelget.rules.other"] = "lua/modelget/rules/other.lua",
      ["modelget.rules.tflite"] = "lua/modelget/rules/tflite.lua",
      ["modelget.store"] = "lua/modelget/store.lua",
      ["modelget.util"] = "lua/modelget/util.lua",
   },
   copy_directories = { "registry" },
}
