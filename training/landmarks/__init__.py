"""PIPNet facial landmarks: model, targets, loss, data, training, evaluation, export."""
