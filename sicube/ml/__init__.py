"""Machine learning: the sample plan (sample_plan, made from a cube by planner), the channels,
the window reader, the PyTorch Dataset (dataset) and its chunk-grouped stream (stream)."""
