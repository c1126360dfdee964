"""The fused, low-memory loss kernels, one concern per module.

- :mod:`.runtime`: when a kernel is compiled, the kernel caches, row chunks, the compute dtype.
- :mod:`.sigmoid`, :mod:`.focal`, :mod:`.qfl`, :mod:`.dfl`: the per-element (per-row) math and its
  closed-form gradients, plain tensor functions.
- :mod:`.elementwise`: the autograd Function of the element-wise losses (focal, QFL).
- :mod:`.rows`: the autograd Function of the per-row losses (IoU family, DFL).

The public losses in :mod:`lightning_losses.functional` call these; users need not.
"""
