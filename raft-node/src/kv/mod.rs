//! The replicated key-value state machine (being written).
