"""Small helpers with no knowledge of models, data or configs."""
