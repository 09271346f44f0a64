"""From files to a cube: the pure build plan, ingest, quality, mask, the fill stage and the
build/update orchestration."""
