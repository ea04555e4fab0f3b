//! ferry-checks (placeholder, being built)
