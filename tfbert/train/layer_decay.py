"""Layer-wise learning-rate decay (LLRD) for fine-tuning BERT.

ELECTRA / BEiT style: the task head and the pooler learn at the full rate, transformer
layer i (0 = the lowest of L) at `decay ** (L - i)`, the embeddings at `decay ** (L + 1)`,
so the layers nearest the input, which hold the most general features, move least.

  optimizer = layerwise(keras.optimizers.AdamW)(learning_rate=schedule, weight_decay=0.01)
  optimizer.set_learning_rate_scales(layer_scales(model, decay=0.9))

Gradients cannot simply be scaled instead: Adam divides the update by the gradient's
own RMS, so a scaled gradient gives the same step. The rate itself is scaled, per
variable, inside `update_step`, and so is the decoupled weight decay (variable -= lr *
wd * variable), as in PyTorch's per-parameter-group AdamW. Works with any Keras 3
optimizer with an `update_step` (AdamW, Lamb, Adam, SGD), under tf.distribute and inside
a LossScaleOptimizer, and the optimizer's variables (its checkpoint) are unchanged.
"""

import functools

from keras import ops


class LayerwiseLearningRateMixin:
    """Multiplies the learning rate (and weight decay step) per variable.

    Mixed in front of a Keras optimizer class by `layerwise(cls)`. Scales are set with
    `set_learning_rate_scales({variable: scale})`; variables not named keep scale 1.
    """

    def set_learning_rate_scales(self, scales):
        """`scales`: {variable: float} or [(variable, float)] for model variables."""
        items = scales.items() if hasattr(scales, "items") else scales
        self._lr_scales = {self._var_key(v): float(s) for v, s in items}

    def learning_rate_scale(self, variable):
        return getattr(self, "_lr_scales", {}).get(self._var_key(variable), 1.0)

    def _apply_weight_decay(self, variables):
        # Done per variable in update_step, with the variable's own rate.
        return

    def update_step(self, gradient, variable, learning_rate):
        scale = self.learning_rate_scale(variable)
        learning_rate = ops.multiply(ops.cast(learning_rate, variable.dtype), scale)
        if self.weight_decay is not None and self._use_weight_decay(variable):
            wd = ops.cast(self.weight_decay, variable.dtype)
            self.assign_sub(variable, ops.multiply(variable, wd * learning_rate))
        return super().update_step(gradient, variable, learning_rate)


@functools.cache
def layerwise(optimizer_class):
    """`optimizer_class` (e.g. keras.optimizers.AdamW) with per-variable rate scales."""
    return type(
        f"Layerwise{optimizer_class.__name__}",
        (LayerwiseLearningRateMixin, optimizer_class),
        {"__module__": __name__},
    )


def layer_depths(model):
    """{variable: depth} for a tfbert task model (or encoder).

    Depth 0 is the embeddings, i + 1 is transformer layer i, and L + 1 is everything else
    (pooler, task heads).
    """
    encoder = getattr(model, "encoder", model)
    num_layers = len(encoder.transformer_layers)
    depths = {}
    for variable in encoder.embeddings.trainable_weights:
        depths[id(variable)] = 0
    for i, layer in enumerate(encoder.transformer_layers):
        for variable in layer.trainable_weights:
            depths[id(variable)] = i + 1
    return [(v, depths.get(id(v), num_layers + 1)) for v in model.trainable_weights], num_layers


def layer_scales(model, decay):
    """[(variable, decay ** (L + 1 - depth))] for every trainable variable of `model`."""
    if not 0.0 < decay <= 1.0:
        raise ValueError(f"layer decay must be in (0, 1], got {decay}")
    depths, num_layers = layer_depths(model)
    return [(v, decay ** (num_layers + 1 - depth)) for v, depth in depths]
