//! ferryctl (placeholder, being built)
