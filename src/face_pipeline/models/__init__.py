"""Keras 3 face models: SE and ECA attention, the ArcFace head and loss, and the model builders."""
