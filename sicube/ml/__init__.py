"""Machine learning: the sample plan, the window reader, the PyTorch Dataset and stream."""
