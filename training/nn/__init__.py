"""Plain-torch building blocks shared by the landmark and identity models (no torchvision)."""
