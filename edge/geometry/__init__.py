"""Geometry shared by training and the device: landmark schemes, alignment, head pose."""
