"""Per-node ControlNet: conditioning images (preprocessors) and the weight maps that scale its residuals."""
