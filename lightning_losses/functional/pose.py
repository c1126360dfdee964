"""SimCC pose losses: Gaussian-smoothed 1-D keypoint labels and the discrete KL divergence over bins."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from lightning_losses.functional.reduction import weight_reduce_loss
from lightning_losses.functional.validation import check_floating, check_ndim, check_tensor, check_weight

__all__ = ["kl_discret_loss", "simcc_gaussian_targets"]


def _pair(value: float | Sequence[float], name: str) -> tuple[float, float]:
    pair = (value, value) if isinstance(value, (int, float)) else tuple(value)
    if len(pair) != 2 or not all(isinstance(v, (int, float)) and v > 0 for v in pair):
        raise ValueError(f"`{name}` must be a positive number or a pair of them, got {value!r}")
    return float(pair[0]), float(pair[1])


def simcc_gaussian_targets(
    keypoints: Tensor,
    visible: Tensor,
    input_size: float | Sequence[float] = (256, 256),
    split_ratio: float = 2.0,
    sigma: float | Sequence[float] = (5.66, 5.66),
    normalize: bool = False,
) -> tuple[Tensor, Tensor, Tensor]:
    r"""SimCC labels: each keypoint as a 1-D Gaussian over ``x`` bins and one over ``y`` bins.

    With :math:`r` the ``split_ratio``, there are :math:`W = \mathrm{round}(w r)` x-bins and
    :math:`H = \mathrm{round}(h r)` y-bins for ``input_size`` :math:`(w, h)`. A keypoint's bin is
    :math:`\mu = \mathrm{round}(p\,r)` (half to even) and its labels are

    .. math::
        t^x_j = \exp\!\Big(-\frac{(j - \mu_x)^2}{2\sigma_x^2}\Big), \quad
        t^y_j = \exp\!\Big(-\frac{(j - \mu_y)^2}{2\sigma_y^2}\Big)

    (divided by :math:`\sigma\sqrt{2\pi}` when ``normalize``). A keypoint with ``visible < 0.5`` gets
    all-zero labels and keeps its ``visible`` value as weight; a labelled keypoint whose
    :math:`\mu \pm 3\sigma` square misses the bins entirely (:math:`\mu - 3\sigma \ge` the bin count, or
    :math:`\mu + 3\sigma + 1 < 0`, on either axis) gets all-zero labels and weight 0. Otherwise the
    weight is ``visible`` as given (not clamped to 1). This is the encoding of NetsPresso Trainer 1.4.1's
    ``rtmcc_loss`` (MMPose 1.x's ``SimCCLabel`` with Gaussian smoothing), batched.

    Args:
        keypoints: ``(N, K, 2)`` keypoint ``(x, y)`` in input pixels.
        visible: ``(N, K)`` visibility, used as the keypoint weight.
        input_size: ``(w, h)`` of the model input (one number: square).
        split_ratio: bins per pixel.
        sigma: ``(σ_x, σ_y)`` in bins (one number: both).
        normalize: divide the labels by :math:`\sigma\sqrt{2\pi}`.

    Returns:
        ``target_x`` ``(N, K, W)``, ``target_y`` ``(N, K, H)`` and the weight ``(N, K)``, float32.

    Example:
        >>> tx, ty, w = simcc_gaussian_targets(torch.tensor([[[1.0, 2.0]]]), torch.ones(1, 1), 4, 1.0, 1.0)
        >>> tx
        tensor([[[0.6065, 1.0000, 0.6065, 0.1353]]])
        >>> w
        tensor([[1.]])

    Reference: Li et al., *SimCC: a Simple Coordinate Classification Perspective for Human Pose
    Estimation*, arXiv:2107.03332; Jiang et al., *RTMPose*, arXiv:2303.07399.
    """
    check_tensor(keypoints, "keypoints")
    check_tensor(visible, "visible")
    check_ndim(keypoints, (3,), "keypoints", "keypoint coordinates of shape (N, K, 2)")
    if keypoints.shape[-1] != 2:
        raise ValueError(f"`keypoints` must have shape (N, K, 2), got {tuple(keypoints.shape)}")
    if visible.shape != keypoints.shape[:2]:
        raise ValueError(f"`visible` must have shape {tuple(keypoints.shape[:2])}, got {tuple(visible.shape)}")
    width, height = _pair(input_size, "input_size")
    sigma_x, sigma_y = _pair(sigma, "sigma")
    if not split_ratio > 0:
        raise ValueError(f"`split_ratio` must be > 0, got {split_ratio}")
    device = keypoints.device
    bins = (round(width * split_ratio), round(height * split_ratio))
    mu = torch.round(keypoints.float() * split_ratio).to(torch.int64)  # (N, K, 2)
    # The 3σ test in float32, as the reference makes it (mu - radius of an int64 and a float32 tensor).
    radius = torch.tensor((sigma_x, sigma_y), dtype=torch.float32, device=device) * 3
    size = torch.tensor(bins, dtype=torch.float32, device=device)
    misses = ((mu - radius) >= size).any(-1) | ((mu + radius + 1) < 0).any(-1)
    visible = visible.float()
    labelled = visible >= 0.5
    weight = torch.where(labelled & misses, 0.0, visible)
    kept = (labelled & ~misses)[..., None]
    targets = []
    for axis, (count, s) in enumerate(zip(bins, (sigma_x, sigma_y), strict=True)):
        grid = torch.arange(count, dtype=torch.float32, device=device)
        gauss = torch.exp(-((grid - mu[..., axis, None]) ** 2) / (2 * s**2))
        if normalize:
            gauss = gauss / (s * math.sqrt(2 * math.pi))
        targets.append(torch.where(kept, gauss, 0.0))
    return targets[0], targets[1], weight


def _axes(value: Tensor | Sequence[Tensor], name: str) -> list[Tensor]:
    axes = [value] if isinstance(value, Tensor) else list(value) if isinstance(value, (list, tuple)) else None
    if not axes:
        raise TypeError(f"`{name}` must be a tensor or a non-empty sequence of per-axis tensors, got {value!r}")
    for i, t in enumerate(axes):
        check_tensor(t, f"{name}[{i}]")
        check_ndim(t, (3,), f"{name}[{i}]", "per-axis logits of shape (N, K, W)")
    return axes


def kl_discret_loss(
    pred: Tensor | Sequence[Tensor],
    target: Tensor | Sequence[Tensor],
    weight: Tensor | None = None,
    beta: float = 1.0,
    label_softmax: bool = False,
    label_beta: float = 10.0,
    reduction: str = "mean",
    avg_factor: float | Tensor | None = None,
) -> Tensor:
    r"""Discrete KL divergence between SimCC labels and predicted bin distributions, summed over axes.

    Per keypoint :math:`(n, k)` and axis :math:`a` with :math:`W_a` bins,

    .. math::
        p = \mathrm{softmax}(\beta\,x), \quad
        q = \begin{cases} \mathrm{softmax}(\beta_l\,t) & \text{label\_softmax} \\ t & \text{else} \end{cases},
        \quad
        \ell_{nk} = \sum_a \frac{1}{W_a} \sum_j q_j (\log q_j - \log p_j)

    (:math:`0 \log 0 = 0`). ``weight`` multiplies :math:`\ell_{nk}`; ``mean`` divides the weighted sum
    by ``avg_factor``, which defaults to ``K`` (MMPose's normaliser: the loss sums over the batch). Half
    precision inputs are computed in float32.

    Args:
        pred: ``(N, K, W_a)`` logits per axis (a tensor for one axis, or a sequence ``(x, y)``).
        target: labels of the same shapes (e.g. from :func:`simcc_gaussian_targets`).
        weight: ``(N, K)`` keypoint weight (MMPose's ``target_weight``).
        beta: temperature of the predicted softmax.
        label_softmax: apply a softmax with temperature ``label_beta`` to the labels.
        label_beta: temperature of the label softmax.
        reduction: ``"none"`` (``(N, K)``), ``"mean"`` or ``"sum"``.
        avg_factor: divisor of ``mean`` (default ``K``).

    Example:
        >>> pred = torch.zeros(1, 1, 4)  # uniform prediction
        >>> kl_discret_loss(pred, torch.tensor([[[0.0, 1.0, 0.0, 0.0]]]))  # (1/4)·log 4
        tensor(0.3466)

    Reference: Li et al., *SimCC*, arXiv:2107.03332; MMPose 1.x ``KLDiscretLoss``.
    """
    preds = _axes(pred, "pred")
    targets = _axes(target, "target")
    if len(preds) != len(targets):
        raise ValueError(f"`pred` has {len(preds)} axes and `target` {len(targets)}")
    for i, (p, t) in enumerate(zip(preds, targets, strict=True)):
        check_floating(p, f"pred[{i}]")
        if p.shape != t.shape:
            raise ValueError(
                f"`pred[{i}]` and `target[{i}]` must have the same shape, got {tuple(p.shape)} and {tuple(t.shape)}"
            )
        if p.shape[:2] != preds[0].shape[:2]:
            raise ValueError(
                f"`pred[{i}]` covers {tuple(p.shape[:2])} keypoints, `pred[0]` {tuple(preds[0].shape[:2])}"
            )
    dtype = torch.promote_types(preds[0].dtype, torch.float32)  # half inputs computed in float32
    loss = None
    for p, t in zip(preds, targets, strict=True):
        log_p = torch.log_softmax(p.to(dtype) * beta, dim=-1)
        q = torch.softmax(t.to(dtype) * label_beta, dim=-1) if label_softmax else t.to(dtype)
        term = F.kl_div(log_p, q, reduction="none").mean(dim=-1)
        loss = term if loss is None else loss + term
    if weight is not None:
        check_weight(weight, loss.shape)
        weight = weight.to(dtype)
    if avg_factor is None and reduction == "mean":
        avg_factor = preds[0].shape[1]
    return weight_reduce_loss(loss, weight, reduction, avg_factor)
