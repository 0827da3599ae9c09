"""The seed CNN in Keras 3, as the original Python seed defined it, with our weights.

The seed's model took the resized uint8 image as is and scaled it by 1/255 in a Rescaling
layer; its convolutions used Keras' default "valid" padding, ours pad by 1, so "same" here
(for a 3x3 stride-1 convolution that is exactly 1 on each side).
"""

import keras
from keras import layers
from safetensors.numpy import load_file

INPUT_SIZE = 128
CHANNELS = (32, 64, 128)


def build(logits=False):
    """The seed CNN; its output is p_dog, or the dog logit with `logits` (for training)."""
    inputs = keras.Input(shape=(INPUT_SIZE, INPUT_SIZE, 3))
    x = layers.Rescaling(1.0 / 255)(inputs)
    for i, ch in enumerate(CHANNELS, 1):
        x = layers.Conv2D(ch, 3, padding="same", activation="relu", name=f"conv{i}")(x)
        x = layers.MaxPooling2D()(x)
    x = layers.GlobalAveragePooling2D()(x)
    x = layers.Dropout(0.5)(x)
    outputs = layers.Dense(1, activation=None if logits else "sigmoid", name="fc")(x)
    return keras.Model(inputs, outputs, name="seed_cnn")


def load_ours(model, safetensors_path):
    """Copies our model.safetensors (PyTorch layouts, BatchNorm folded) into `model`.

    Conv kernels go from PyTorch's OIHW to Keras' HWIO; the dense kernel is fc.weight^T.
    """
    w = load_file(safetensors_path)
    for i in range(1, len(CHANNELS) + 1):
        model.get_layer(f"conv{i}").set_weights([w[f"conv{i}.weight"].transpose(2, 3, 1, 0), w[f"conv{i}.bias"]])
    model.get_layer("fc").set_weights([w["fc.weight"].T, w["fc.bias"]])
    return model
