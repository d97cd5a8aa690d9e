//! generation (in progress)
