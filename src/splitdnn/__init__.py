"""splitdnn: split a Keras model across ordered tiers (device → edge → cloud) and keep the split good."""

__version__ = "0.1.0"
