"""Semantic segmentation on frozen features (pure PyTorch): ADE20K / Pascal VOC 2012, protocols ``linear``,
``ms`` (last 4 layers + multi-scale/flip sliding-window inference) and the training-free ``knn``/prototype."""
