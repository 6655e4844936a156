"""ECCM: Electronic Centralized Car Monitoring, a car logging daemon for the Raspberry Pi."""
__version__ = "0.1.0"
