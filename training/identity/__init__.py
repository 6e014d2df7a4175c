"""Pose-robust identity embedding: PoseFace (pose branch + orthogonality), the Pose-Adaptive
ArcFace margin, RegularFace, and their training, evaluation and export."""
