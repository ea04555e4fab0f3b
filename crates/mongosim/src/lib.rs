//! mongosim (placeholder, being built)
