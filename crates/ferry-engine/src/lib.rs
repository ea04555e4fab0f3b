//! ferry-engine (placeholder, being built)
