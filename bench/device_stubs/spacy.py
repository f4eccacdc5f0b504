"""Stand-in for spaCy on a lent GPU machine (bench/device_stubs/README.md): audiocraft imports it, only its whitespace tokenizer (unused) needs it."""
