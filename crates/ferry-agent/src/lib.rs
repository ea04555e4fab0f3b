//! ferry-agent (placeholder, being built)
