//! Drafters for speculative decoding that need no shared model: n-gram lookup and cross-tokenizer drafting.
