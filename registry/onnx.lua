-- ONNX Runtime: .onnx models with their external data and the repo's tokenizer.
-- Sizes are estimates; scripts/check_urls.lua confirms them. Hub files are verified against the
-- SHA-256 the Hub lists for them.
framework "onnx"

model "phi-3-mini-onnx" {
  name = "Phi-3 Mini 4K Instruct (ONNX, CPU INT4)",
  hub  = { repo = "microsoft/Phi-3-mini-4k-instruct-onnx", dir = "cpu_and_mobile/cpu-int4-rtn-block-32-acc-level-4",
           include = { "*.onnx", "*.onnx.data", "*.json", "tokenizer.model" } },
  size = "2.7 GB", memory = "4 GB", tags = { "chat", "phi", "microsoft", "genai" }, license = "mit",
  description = "Phi-3 Mini optimized for ONNX Runtime GenAI on CPU (int4)",
}

model "all-minilm-l6-v2-onnx" {
  name  = "all-MiniLM-L6-v2 sentence embeddings (ONNX, quantized)",
  url   = hf "Xenova/all-MiniLM-L6-v2" "onnx/model_quantized.onnx",
  file  = "model_quantized.onnx",
  files = hf "Xenova/all-MiniLM-L6-v2" { "tokenizer.json", "tokenizer_config.json", "config.json" },
  size  = "23 MB", tags = { "embeddings", "small", "sentence-transformers" }, license = "apache-2.0",
}

model "distilbert-sst2-onnx" {
  name  = "DistilBERT SST-2 sentiment (ONNX, quantized)",
  url   = hf "Xenova/distilbert-base-uncased-finetuned-sst-2-english" "onnx/model_quantized.onnx",
  files = hf "Xenova/distilbert-base-uncased-finetuned-sst-2-english" { "tokenizer.json", "config.json" },
  size  = "67 MB", tags = { "classification", "sentiment", "bert" }, license = "apache-2.0",
}
