"""OBD-II through an ELM327 adapter: link, frames, adapter, values, poller."""
