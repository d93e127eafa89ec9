"""The model: encoders, the GEOPAK module, inference (the mixture) and the losses."""
