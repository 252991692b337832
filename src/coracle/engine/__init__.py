"""The daemon's core: container records, their state machine and lifecycle."""
