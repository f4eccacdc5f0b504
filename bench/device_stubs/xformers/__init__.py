"""Stand-in for xformers on a lent GPU machine (see bench/device_stubs/README.md)."""
