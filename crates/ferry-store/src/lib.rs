//! ferry-store (placeholder, being built)
