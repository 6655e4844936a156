"""The daemon's core: shared state, worker lifecycle, health, wiring, clock."""
