"""Pictures of a cube: static and interactive maps, the HTML report."""
