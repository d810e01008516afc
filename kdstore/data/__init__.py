"""Images: datasets by name, held-out splits, the augmentations, FFCV's .beton files, and a split
decoded once into memory."""
