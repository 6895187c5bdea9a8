"""The network: backbone registry, the flat classifier, fast convolutions, preprocessing.

Importing this package registers deepsight's Keras layers, so that plain
`keras.saving.load_model` reads a run's model.keras after `import deepsight_tf.model`.
"""

from deepsight_tf.model import layers  # noqa: F401
