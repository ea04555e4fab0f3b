//! ferry-core (placeholder, being built)
