"""Sources: threads that read the car and the sky and publish readings."""
