"""Offline tools (trip, plot, service, udev); never imported by the daemon."""
