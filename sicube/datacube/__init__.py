"""The cube on disk: its layout and opening, store access (locks, atomic writes), the cube's
record of attributes."""
