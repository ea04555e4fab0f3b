//! ferry-testkit (placeholder, being built)
