-- An example recipe file: copy it to <store>/registry/ (or pass it with --registry) and its models join
-- the catalog. Recipes are data in Lua: `framework`, `model`, `hf` and a few pure helpers (string,
-- table, math, utf8, ipairs, pairs, …) — no os, io, require or load. A mistake is reported as
-- "file:line: model 'id': field 'x': …" and the rest of the catalog still loads.
--
-- Fields: name, framework, url, file, alt, sha256, size, unzip, auth, files, hub, tags, memory,
-- description, license, homepage. Sizes: an integer is the exact byte count (checked on download);
-- "669 MB" is an estimate. `unzip` defaults to true for .zip/.tar.* URLs.
-- Check what these point at: modelget run scripts/check_urls.lua --registry scripts/custom_recipe.lua ID…

-- llama.cpp: one GGUF file from the Hub (hf "owner/repo" "file" is its resolve URL).
model "smollm2-1.7b-gguf" {
  framework = "llamacpp",
  name = "SmolLM2 1.7B Instruct (Q4_K_M)",
  url  = hf "HuggingFaceTB/SmolLM2-1.7B-Instruct-GGUF" "smollm2-1.7b-instruct-q4_k_m.gguf",
  size = "1.06 GB", tags = { "chat", "smollm" },
}

-- ONNX Runtime: a file in a folder of a repo, with the repo's tokenizer beside it.
model "bge-small-onnx" {
  framework = "onnx",
  name  = "BGE small en v1.5 embeddings (ONNX)",
  url   = hf "Xenova/bge-small-en-v1.5" "onnx/model.onnx",
  files = hf "Xenova/bge-small-en-v1.5" { "tokenizer.json", "tokenizer_config.json" },
  tags  = { "embeddings" },
}

-- MLX: a repo snapshot — the files the include patterns select ("*" within a folder, "**" across).
model "smollm2-360m-mlx" {
  framework = "mlx",
  name = "SmolLM2 360M Instruct (MLX)",
  hub  = { repo = "mlx-community/SmolLM2-360M-Instruct", include = { "*.json", "*.safetensors" } },
  tags = { "chat", "tiny" },
}

-- Core ML: an .mlpackage folder of a repo, kept whole.
model "fastvit-ma36-coreml" {
  framework = "coreml",
  name = "FastViT MA36 image classifier (Core ML, F16)",
  hub  = { repo = "apple/coreml-FastViT-MA36", include = { "FastViTMA36F16.mlpackage/**" } },
  tags = { "vision" },
}

-- TensorFlow Lite: any https URL (alt = { … } would list mirrors, tried in turn when it fails).
model "efficientdet-lite0-tflite" {
  framework = "tflite",
  name = "EfficientDet-Lite0 object detector (MediaPipe, int8)",
  url  = "https://storage.googleapis.com/mediapipe-models/object_detector/efficientdet_lite0/int8/1/efficientdet_lite0.tflite",
  tags = { "vision", "detection" },
}

-- A gated repo: pulling needs HF_TOKEN (or the token file) after accepting the license on the Hub.
model "gemma-2-2b-gguf" {
  framework = "llamacpp",
  name = "Gemma 2 2B Instruct (Q4_K_M)",
  url  = hf "google/gemma-2-2b-it-GGUF" "2b_it_v2.gguf",
  auth = "hf", tags = { "chat", "gemma", "gated" },
}

-- Recipes are Lua: a loop can declare a family of quantizations.
for _, q in ipairs({ "q4_k_m", "q8_0" }) do
  model ("qwen2.5-1.5b-" .. q:gsub("_", "-")) {
    framework = "llamacpp",
    name = "Qwen2.5 1.5B Instruct (" .. q:upper() .. ")",
    url  = hf "Qwen/Qwen2.5-1.5B-Instruct-GGUF" ("qwen2.5-1.5b-instruct-" .. q .. ".gguf"),
    tags = { "chat", "qwen" },
  }
end
