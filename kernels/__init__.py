"""Triton kernels (imported as `feed_fast.kernels`). Nothing here but kernels and their launchers."""
