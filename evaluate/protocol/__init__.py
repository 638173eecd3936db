"""The downstream protocol: the task's images and splits, the class-balanced loss, training and scoring."""
