"""Props for tests, benchmarks and studies, not used by the product: the tiny random Qwen3 and its
tokenizer, Qwen3's real tokenizer rebuilt offline, and the S4 toy task."""
