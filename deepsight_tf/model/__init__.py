"""The network: backbone registry, the flat classifier, fast convolutions, preprocessing."""
