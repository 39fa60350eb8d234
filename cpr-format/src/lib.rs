//! The live-update (CPR) image format.
