"""Landmark model post-processing shared by training and the device (PIPNet decoder, crops)."""
