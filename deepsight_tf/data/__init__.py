"""Obtain, scrub and explore: reading sources, the stored data set, its checks and statistics."""
