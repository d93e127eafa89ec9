"""Data: images, validation, spatial splits, geocells, augmentation and the run folder."""
