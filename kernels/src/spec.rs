//! Speculative acceptance arithmetic: greedy prefix match and rejection sampling with the residual.
