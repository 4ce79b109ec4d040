//! Verify protocols: remote targets that score draft tokens after a prefix (vLLM, SGLang, Tandem).
