"""Analysis of a fraction from recorded data (ground truth, controller events)."""
