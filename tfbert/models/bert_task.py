import keras

from tfbert import features


class BertTask(keras.Model):
    """Shared plumbing of the task models: an encoder first, then scalar task arguments.

    Subclasses build their functional graph over `encoder_inputs(encoder)` and call
    `super().__init__(encoder, task_args, inputs=..., outputs=...)`; `get_config` echoes
    the encoder (serialised) and the task arguments.
    """

    def __init__(self, encoder, task_args, inputs, outputs, **kwargs):
        super().__init__(inputs=inputs, outputs=outputs, **kwargs)
        self.encoder = encoder
        self.task_args = dict(task_args)
        # task.json's other entries (label names, seq length, ...) once loaded from or
        # saved to a model directory.
        self.task_info = {}
        for key, value in task_args.items():
            setattr(self, key, value)

    @staticmethod
    def encoder_inputs():
        return {
            name: keras.Input(shape=(None,), dtype="int32", name=name)
            for name in features.MODEL_INPUTS
        }

    def get_config(self):
        return {
            "name": self.name,
            "trainable": self.trainable,
            "encoder": keras.saving.serialize_keras_object(self.encoder),
            **self.task_args,
        }

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["encoder"] = keras.saving.deserialize_keras_object(config["encoder"])
        return cls(**config)

    @classmethod
    def from_preset(cls, directory, dtype=None):
        """Loads a fine-tuned model directory (config.json, task.json, model.weights.h5)."""
        from tfbert.models import presets

        model = presets.load_task_model(directory, dtype=dtype)
        if not isinstance(model, cls):
            raise ValueError(
                f"{directory}: task.json holds a {type(model).__name__}, not a {cls.__name__}"
            )
        return model

    def save_to_preset(self, directory, vocabulary, lowercase=True, **task_info):
        """Writes the model directory: config.json, vocab.txt, model.weights.h5, task.json.

        `task_info` goes into task.json beside the task name and arguments: label_names,
        seq_length and the others of `presets.TASK_INFO_KEYS` (an unknown one raises
        ValueError). Entries of a model loaded with `from_preset` are kept unless given
        anew.
        """
        from tfbert.models import presets

        presets.save_preset(self, directory, vocabulary=vocabulary, lowercase=lowercase, **task_info)
        self.task_info = {**dict(self.task_info), **task_info}
