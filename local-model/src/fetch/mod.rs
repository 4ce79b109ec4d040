//! Model and runtime artifacts: where they live in the cache and how `tandem models fetch` gets them.
