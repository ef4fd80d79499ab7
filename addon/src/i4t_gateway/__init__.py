"""The I4T gateway server: the mesh stack that runs as a Home Assistant add-on or standalone."""

__version__ = "0.1.0"
