"""What a search needs before it runs: the supernet's exact weight count and the peak memory of one step.

* :func:`count_weights` builds the supernet on torch's ``meta`` device (shapes only: no memory, no
  arithmetic) and counts its parameters exactly.
* :func:`estimate_search` adds the peak memory of one bilevel step
  (:class:`~darts_core.search.bilevel.DartsSearch`, fp32 on CPU) from a formula over the network's shapes
  and the batch size:

  - **state**: parameters, their gradients and the optimizer states (SGD momentum for the weights, Adam's
    two moments for the alphas): ``4 bytes x (3 x weights + 4 x alphas)``;
  - **saved**: the activations autograd keeps for backward during the largest pass of the step (a pass
    with weight gradients: the weight step, and for the second order also the passes at ``w`` and
    ``w'``), summed cell by cell: per mixed edge, :data:`EDGE_VALUES` values per output element of each
    primitive, plus once per state the ``relu`` (or the state itself) that several primitives read and
    share, plus the two preprocessing operations and the stem;
  - **workspace**: what is alive next to it: the two batches, the gradients of one cell's states during
    backward, and for the second order the two weight-sized tensors ``w'`` and ``v`` of the unrolled step.

  The per-primitive coefficients come from measuring each operation with
  :func:`torch.autograd.graph.saved_tensors_hooks` (:class:`SavedTensorMeter`); :func:`measure_step`
  measures a real step the same way, and the tests check the estimate against it on several sizes.
  On CUDA the worker runs under bf16 autocast, so the fp32 figure is an upper bound there.
* :func:`estimate_training` gives the same figures for a retraining
  (:func:`~darts_core.train.job.run_training_job`): its network is discrete and small next to a
  supernet, so its saved activations are *measured* rather than modelled: one training-mode forward
  pass (and the loss) runs on the ``meta`` device, where only shapes exist, under
  :class:`SavedTensorMeter`. :func:`measure_training_step` measures a real step for the tests.

PC-DARTS (``search_space.partial_channels`` ``K``, ``edge_normalization``): the mixed edges have
``width / K`` channels (weights and saved values shrink about ``K`` times), the bypassed channels add
their max pooling on stride-2 edges and, with edge normalization, ``beta x bypass``; one beta per edge
joins the architecture parameters.
"""

from darts_core.estimate.meter import AllocationMeter, SavedTensorMeter, measure_hessian, measure_step
from darts_core.estimate.search import EDGE_VALUES, SearchEstimate, count_weights, estimate_search
from darts_core.estimate.training import estimate_training, measure_training_step

__all__ = [
    "AllocationMeter",
    "measure_hessian",
    "EDGE_VALUES",
    "SearchEstimate",
    "SavedTensorMeter",
    "count_weights",
    "estimate_search",
    "measure_step",
    "estimate_training",
    "measure_training_step",
]
