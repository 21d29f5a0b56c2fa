-- MLX: Hub repos of .safetensors weights with config.json and tokenizer.json (what mlx_lm.load reads).
-- Sizes are estimates; scripts/check_urls.lua confirms them. Hub files are verified against the
-- SHA-256 the Hub lists for them.
framework "mlx"

local WEIGHTS = { "*.json", "*.safetensors", "tokenizer.model" }

model "qwen2.5-0.5b-mlx" {
  name = "Qwen2.5 0.5B Instruct (MLX, 4-bit)",
  hub  = { repo = "mlx-community/Qwen2.5-0.5B-Instruct-4bit", include = WEIGHTS },
  size = "278 MB", memory = "1 GB", tags = { "chat", "small", "qwen" }, license = "apache-2.0",
}

model "llama-3.2-1b-mlx" {
  name = "Llama 3.2 1B Instruct (MLX, 4-bit)",
  hub  = { repo = "mlx-community/Llama-3.2-1B-Instruct-4bit", include = WEIGHTS },
  size = "695 MB", memory = "1.5 GB", tags = { "chat", "small", "llama", "meta" }, license = "llama3.2",
}

model "mistral-7b-mlx" {
  name = "Mistral 7B Instruct v0.3 (MLX, 4-bit)",
  hub  = { repo = "mlx-community/Mistral-7B-Instruct-v0.3-4bit", include = WEIGHTS },
  size = "4.1 GB", memory = "6 GB", tags = { "chat", "mistral" }, license = "apache-2.0",
}

-- Meta's original weights load in mlx_lm as they are; the repo is gated (accept the license on the
-- Hub, then set HF_TOKEN).
model "llama-3.2-1b-instruct-meta" {
  name = "Llama 3.2 1B Instruct (Meta original, bf16)",
  hub  = { repo = "meta-llama/Llama-3.2-1B-Instruct", include = { "*.json", "model.safetensors" } },
  auth = "hf", size = "2.5 GB", memory = "3.5 GB", tags = { "chat", "llama", "meta", "gated" }, license = "llama3.2",
}
