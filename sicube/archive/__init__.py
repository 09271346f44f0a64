"""The source archive: product and grid facts, reading and checking daily files, downloading,
mirroring, the synthetic sample archive."""
