-- llama.cpp: GGUF files, one download each, no unzipping.
-- Sizes are the Hub's listing rounded (estimates for listings and the free-space check);
-- scripts/check_urls.lua confirms them, and each download is verified against the SHA-256 the Hub
-- states for it (X-Linked-Etag).
framework "llamacpp"

model "tinyllama-1.1b-gguf" {
  name = "TinyLlama 1.1B Chat (Q4_K_M)",
  url  = hf "TheBloke/TinyLlama-1.1B-Chat-v1.0-GGUF" "tinyllama-1.1b-chat-v1.0.Q4_K_M.gguf",
  size = "669 MB", memory = "1.2 GB", tags = { "chat", "small", "llama" }, license = "apache-2.0",
  description = "Compact chat model, perfect for testing",
}

model "phi-3-mini-gguf" {
  name = "Phi-3 Mini 4K Instruct (Q4)",
  url  = hf "microsoft/Phi-3-mini-4k-instruct-gguf" "Phi-3-mini-4k-instruct-q4.gguf",
  size = "2.39 GB", memory = "3.5 GB", tags = { "chat", "phi", "microsoft" }, license = "mit",
  description = "Microsoft's efficient 3.8B model in GGUF format",
}

model "llama-3.2-3b-gguf" {
  name = "Llama 3.2 3B Instruct (Q4_K_M)",
  url  = hf "bartowski/Llama-3.2-3B-Instruct-GGUF" "Llama-3.2-3B-Instruct-Q4_K_M.gguf",
  size = "2.02 GB", memory = "3 GB", tags = { "chat", "llama", "meta" }, license = "llama3.2",
  description = "Meta's small Llama 3.2 model, quantized",
}

model "llama-3.2-1b-gguf" {
  name = "Llama 3.2 1B Instruct (Q4_K_M)",
  url  = hf "hugging-quants/Llama-3.2-1B-Instruct-Q4_K_M-GGUF" "llama-3.2-1b-instruct-q4_k_m.gguf",
  size = "808 MB", memory = "1.5 GB", tags = { "chat", "small", "llama", "meta" }, license = "llama3.2",
}

model "mistral-7b-gguf" {
  name = "Mistral 7B Instruct v0.2 (Q4_K_M)",
  url  = hf "TheBloke/Mistral-7B-Instruct-v0.2-GGUF" "mistral-7b-instruct-v0.2.Q4_K_M.gguf",
  size = "4.37 GB", memory = "6.5 GB", tags = { "chat", "mistral" }, license = "apache-2.0",
  description = "Popular open-source 7B model",
}

model "qwen2.5-0.5b-gguf" {
  name = "Qwen2.5 0.5B Instruct (Q4_K_M)",
  url  = hf "Qwen/Qwen2.5-0.5B-Instruct-GGUF" "qwen2.5-0.5b-instruct-q4_k_m.gguf",
  size = "491 MB", memory = "1 GB", tags = { "chat", "small", "qwen" }, license = "apache-2.0",
}

model "smollm2-135m-gguf" {
  name = "SmolLM2 135M Instruct (Q8_0)",
  url  = hf "HuggingFaceTB/SmolLM2-135M-Instruct-GGUF" "smollm2-135m-instruct-q8_0.gguf",
  size = "145 MB", memory = "512 MB", tags = { "chat", "tiny", "smollm" }, license = "apache-2.0",
}

model "smollm2-360m-gguf" {
  name = "SmolLM2 360M Instruct (Q8_0)",
  url  = hf "ngxson/SmolLM2-360M-Instruct-Q8_0-GGUF" "smollm2-360m-instruct-q8_0.gguf",
  size = "386 MB", memory = "768 MB", tags = { "chat", "tiny", "smollm" }, license = "apache-2.0",
}
