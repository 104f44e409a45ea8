"""Test-time data for label propagation: filelists, frames as the encoder sees them, DAVIS/VIP and JHMDB
videos, your own video and masks, and the sinks that write the results (outputs)."""
