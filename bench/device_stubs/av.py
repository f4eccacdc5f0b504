"""Stand-in for PyAV on a lent GPU machine (bench/device_stubs/README.md): audiocraft imports it, the benches never read a file through it."""
