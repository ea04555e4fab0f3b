//! ferry-coordinator (placeholder, being built)
