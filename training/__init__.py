"""Training side of poseface-edge (torch). Imports shared pre/post-processing from edge/."""
