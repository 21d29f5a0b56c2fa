-- Tokenizers: the files a runtime needs to turn text into tokens, fetched side by side.
-- Sizes are estimates; scripts/check_urls.lua confirms them.
framework "other"

model "gpt2-tokenizer" {
  name  = "GPT-2 tokenizer (tokenizer.json, vocab.json, merges.txt)",
  files = hf "openai-community/gpt2" { "tokenizer.json", "vocab.json", "merges.txt" },
  size  = "2.9 MB", tags = { "tokenizer", "gpt2", "bpe" }, license = "mit",
}

model "bert-tokenizer" {
  name  = "BERT base uncased tokenizer (tokenizer.json, vocab.txt)",
  files = hf "google-bert/bert-base-uncased" { "tokenizer.json", "vocab.txt" },
  size  = "0.7 MB", tags = { "tokenizer", "bert", "wordpiece" }, license = "apache-2.0",
}
