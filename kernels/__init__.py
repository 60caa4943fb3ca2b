"""Triton kernels, nothing else: the fused FEED loss (`feed_loss.py`) and its launchers, whose launch geometry
(block sizes, grids, the weight-gradient split, warps) is plain Python in `tiling.py`, read by the launch plans
and, without triton, by `feed_fast.ops.backend_choice`'s cost model.

Imported as `feed_fast.kernels`: the folder sits at the top of the repository (the project's layout names
what lives where) and pyproject.toml's package-dir mapping installs it inside the `feed_fast` namespace, so no
generic top-level `kernels` import name is claimed. Importing `feed_loss` needs triton; `tiling` and
`feed_fast` do not.
"""
