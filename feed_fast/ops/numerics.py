"""The FEED op's numeric constants, one definition each: the reference, the kernels and the API read them here.

No torch or triton import, so `feed_fast.kernels` can take them without pulling in the reference.
"""

DEFAULT_EPS = 1e-12  # the floor on both L2 norms, as F.normalize (docs/method.md)
# Running norms are kept as scale * sqrt(sum (x / scale)^2) with scale = max|x|, floored here so an all-zero
# map divides by a tiny positive number instead of 0 (the result is still exactly 0).
NORM_SCALE_FLOOR = 1e-30
